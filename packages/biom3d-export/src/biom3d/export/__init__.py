"""biom3d-export: a trained run as TorchScript, ONNX or a bioimage.io model package (`biom3d export`)."""
