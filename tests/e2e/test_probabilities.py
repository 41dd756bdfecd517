"""`predict --probabilities DIR`: each image's averaged probabilities, before post-processing, on its own grid."""

import numpy as np
import pytest

from biom3d.core.errors import DataError, InputError
from biom3d.core.stages.predict import predict
from tests.e2e.conftest import SHAPE, SPACING


def test_cli_saves_the_probabilities_the_masks_were_made_from(trained, dataset, tmp_path):
    from typer.testing import CliRunner

    from biom3d.cli.app import app
    from biom3d.core.discovery import get_registry
    from biom3d.core.stages.loading import load_run
    from biom3d.core.stages.predict import predict_image
    from tests.e2e.test_predict_eval import _read

    images, probs = dataset / "test" / "images", tmp_path / "probs"
    result = CliRunner().invoke(app, ["predict", str(trained.run_dir), "-i", str(images), "-o", str(tmp_path / "pred"),
                                      "--probabilities", str(probs), "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in probs.iterdir()) == ["case0.npz", "case1.npz"]
    image = _read(images / "case0.tif")
    expected = predict_image([load_run(trained.run_dir, registry=get_registry(), device="cpu")], image)
    with np.load(probs / "case0.npz") as saved:
        p = saved["probabilities"]
        assert p.dtype == np.float16 and p.shape == (2, *SHAPE)  # background first, on the input's grid
        assert str(saved["activation"]) == "softmax" and saved["spacing"] == pytest.approx(SPACING)
    assert np.allclose(p.astype(np.float32), expected, atol=1e-3) and np.allclose(p.sum(0), 1, atol=2e-3)
    mask = np.asarray(_read(tmp_path / "pred" / "case0.tif").array)
    clear = np.abs(expected[1] - expected[0]) > 1e-2  # float16 may tie two classes within its rounding
    assert clear.mean() > 0.9 and np.array_equal(mask[clear], p.argmax(0)[clear])


def test_probabilities_are_part_of_the_output_for_overwrite_and_skip_existing(trained, dataset, tmp_path):
    images, out, probs = dataset / "test" / "images", tmp_path / "pred", tmp_path / "probs"
    predict([trained.run_dir], images, out, progress=False, tta=False)  # masks only, before
    with pytest.raises(DataError, match="--probabilities"):  # nothing here is lost: the masks exist
        predict([trained.run_dir], images, out, progress=False, tta=False, probabilities=probs)
    assert not probs.exists()
    again = predict([trained.run_dir], images, out, progress=False, tta=False, probabilities=probs, skip_existing=True)
    assert sorted(p.name for p in again) == ["case0.tif", "case1.tif"]  # a mask without its archive is redone
    (probs / "case1.npz").unlink()
    redone = predict([trained.run_dir], images, out, progress=False, tta=False, probabilities=probs, skip_existing=True)
    assert [p.name for p in redone] == ["case1.tif"] and (probs / "case1.npz").is_file()
    assert not list(probs.glob(".*"))  # written through temporaries, none left


def test_a_probabilities_folder_where_masks_or_images_are_read_is_refused(trained, dataset, tmp_path):
    images, out = dataset / "test" / "images", tmp_path / "pred"
    for inside in (out, out / "probs"):  # `biom3d eval --pred out` would read the archives
        with pytest.raises(InputError, match="is the --output folder or inside it"):
            predict([trained.run_dir], images, out, progress=False, probabilities=inside)
    with pytest.raises(InputError, match="inside the input folder"):
        predict([trained.run_dir], images, out, progress=False, probabilities=images / "probs")
    assert not out.exists() and not (images / "probs").exists()
    import shutil

    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(images / "case0.tif", one)
    single = predict([trained.run_dir], one / "case0.tif", out, progress=False, tta=False,
                     probabilities=one / "probs")  # one file: its folder is not scanned
    assert [p.name for p in single] == ["case0.tif"] and (one / "probs" / "case0.npz").is_file()
