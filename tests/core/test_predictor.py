import numpy as np
import pytest
import torch

from biom3d.core.builtins.predictor import FLIPS, SlidingWindowPredictor, hann_window, tile_starts


class Probe(torch.nn.Module):
    """A 'network' whose logits depend on position and flips, and that counts its inputs."""

    def __init__(self, out_channels: int = 2):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, out_channels, 3, padding=1)
        torch.manual_seed(0)
        torch.nn.init.normal_(self.conv.weight)
        self.seen = 0

    def forward(self, x):
        self.seen += x.shape[0]
        return self.conv(x)


def test_flips_are_identity_plus_the_seven_axis_combinations():
    assert len(FLIPS) == 8 and FLIPS[0] == () and len(set(FLIPS)) == 8


@pytest.mark.parametrize(
    "shape, patch, expected",
    [
        ((16, 16, 16), (16, 16, 16), 1),  # no larger than the patch: one tile, not eight
        ((10, 12, 16), (16, 16, 16), 1),
        ((32, 16, 16), (16, 16, 16), 3),  # step 8: starts 0, 8, 16
        ((33, 16, 16), (16, 16, 16), 4),
        ((96, 160, 160), (64, 64, 64), 2 * 4 * 4),  # the benchmark volume: starts 0,32 and 0,32,64,96
    ],
)
def test_tile_counts(shape, patch, expected):
    boxes = tile_starts(shape, patch, 0.5)
    assert len(boxes) == expected
    covered = np.zeros([max(s, p) for s, p in zip(shape, patch, strict=True)], bool)
    for box in boxes:
        covered[box] = True
    assert covered[tuple(slice(0, s) for s in shape)].all()


def reference_blend(model, image, patch, overlap, flips):
    """Plain loops: every tile and flip, unflipped, softmaxed, Hann-weighted, accumulated, normalised."""
    x = torch.as_tensor(image)[None]
    w = hann_window(patch)
    probs = torch.zeros((2, *image.shape[1:]))
    weights = torch.zeros(image.shape[1:])
    for box in tile_starts(image.shape[1:], patch, overlap):
        tile = x[(slice(None), slice(None), *box)]
        acc = 0
        for f in flips:
            dims = [d + 2 for d in f]
            out = model(tile.flip(dims) if f else tile)
            acc = acc + torch.softmax(out.flip(dims) if f else out, 1)[0]
        probs[(slice(None), *box)] += acc / len(flips) * w
        weights[box] += w
    return probs / weights


@pytest.mark.parametrize("tta", [False, True])
def test_matches_a_plain_hann_blend(tta):
    model = Probe().eval()
    image = np.random.default_rng(0).random((1, 20, 24, 28)).astype(np.float32)
    pred = SlidingWindowPredictor((16, 16, 16), overlap=0.5, tta=tta, batch_size=3)
    with torch.inference_mode():
        ours = pred([model], image)
        ref = reference_blend(model, image, (16, 16, 16), 0.5, FLIPS if tta else ((),))
    assert ours.shape == (2, 20, 24, 28)
    assert float((ours - ref).abs().max()) < 1e-4
    assert torch.allclose(ours.sum(0), torch.ones(20, 24, 28), atol=1e-5)


def test_small_volume_is_padded_to_one_tile_and_cropped_back():
    model = Probe().eval()
    image = np.random.default_rng(1).random((1, 5, 9, 11)).astype(np.float32)
    out = SlidingWindowPredictor((8, 16, 16), tta=True)([model], image)
    assert out.shape == (2, 5, 9, 11)
    assert model.seen == 8  # one tile, with its eight flips


def test_flips_are_batched_with_tiles():
    calls = []

    class Spy(Probe):
        def forward(self, x):
            calls.append(x.shape[0])
            return super().forward(x)

    image = np.zeros((1, 32, 16, 16), np.float32)
    SlidingWindowPredictor((16, 16, 16), tta=True, batch_size=16)([Spy()], image)
    assert calls == [16, 8]  # 3 tiles: two tiles' 8 flips fill the first forward pass, the third tile's the next
    calls.clear()
    SlidingWindowPredictor((16, 16, 16), tta=True, batch_size=3)([Spy()], image)
    assert calls == [3, 3, 2] * 3  # one tile per step, its flips in passes of 3


def test_ensemble_averages_models():
    a, b = Probe().eval(), Probe().eval()
    torch.nn.init.normal_(b.conv.weight, std=3)
    image = np.random.default_rng(2).random((1, 16, 16, 16)).astype(np.float32)
    pred = SlidingWindowPredictor((16, 16, 16), tta=False)
    both = pred([a, b], image)
    assert torch.allclose(both, (pred([a], image) + pred([b], image)) / 2, atol=1e-6)


def test_fast_mode_grows_tiles_lowers_overlap_and_drops_flips_unless_set_explicitly():
    from biom3d.core.builtins.plugin import PredictorParams
    from biom3d.core.builtins.predictor import FAST, build_predictor
    from biom3d.core.context import RunContext

    ctx = RunContext(num_classes=1, patch_size=(16, 16, 16), num_pools=(2, 3, 3))
    fast = build_predictor(PredictorParams(fast=True), ctx)
    assert (fast.overlap, fast.tta) == (FAST["overlap"], FAST["tta"])
    assert fast._tile_for((20, 40, 100))[0] == (20, 32, 32)  # stride 4 on z: 20 fits; 2x the patch elsewhere
    assert fast._tile_for((10, 12, 16))[0] == (16, 16, 16)  # never smaller than the patch
    explicit = build_predictor(PredictorParams(fast=True, overlap=0.5, tta=True, patch_size=(16, 16, 16)), ctx)
    assert (explicit.overlap, explicit.tta, explicit.grow_stride) == (0.5, True, None)
    plain = build_predictor(PredictorParams(), ctx)
    assert plain._tile_for((20, 40, 100))[0] == (16, 16, 16) and (plain.overlap, plain.tta) == (0.5, True)


def test_fast_mode_runs_fewer_network_voxels_and_blends_grown_tiles_exactly():
    class Pointwise(Probe):  # a 1x1x1 convolution: any tiling gives the same probabilities, so blending shows
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 1)
            torch.nn.init.normal_(self.conv.weight)

    image = np.random.default_rng(0).normal(size=(1, 24, 48, 44)).astype(np.float32)
    slow, fast = Pointwise().eval(), Pointwise().eval()
    fast.load_state_dict(slow.state_dict())
    ref = SlidingWindowPredictor((16, 16, 16), overlap=0.5, tta=False)([slow], image)
    out = SlidingWindowPredictor((16, 16, 16), overlap=0.25, tta=False, grow_stride=(8, 8, 8))([fast], image)
    assert out.shape == ref.shape == (2, 24, 48, 44)
    assert torch.allclose(out, ref, atol=1e-5)
    assert (fast.seen, slow.seen) == (4, 50)  # 1 x 2 x 2 tiles of (24, 32, 32) against 2 x 5 x 5 of 16^3


def test_a_2d_run_skips_the_flips_of_its_one_voxel_depth_and_blends_the_same():
    model = Probe().eval()
    image = np.random.default_rng(2).random((1, 1, 24, 28)).astype(np.float32)
    pred = SlidingWindowPredictor((1, 16, 16), overlap=0.5, tta=True)
    with torch.inference_mode():
        ours = pred([model], image)
        seen = model.seen
        ref = reference_blend(model, image, (1, 16, 16), 0.5, FLIPS)  # all eight: four repeat the other four
    assert len(pred.flips) == 4 and all(0 not in f for f in pred.flips)
    assert seen == 4 * len(tile_starts((1, 24, 28), (1, 16, 16), 0.5))
    assert float((ours - ref).abs().max()) < 1e-4


def test_fast_mode_falls_back_to_the_patch_for_a_network_of_one_input_size(caplog):
    class Fixed(Probe):  # as an ONNX graph of fixed axes, or UNETR: only its patch size goes through
        def forward(self, x):
            if tuple(x.shape[2:]) != (8, 8, 8):
                raise RuntimeError(f"Got: {x.shape[2]} Expected: 8")
            return super().forward(x)

    image = np.random.default_rng(3).random((1, 20, 20, 20)).astype(np.float32)
    grown = SlidingWindowPredictor((8, 8, 8), overlap=0.25, tta=False, grow_stride=(4, 4, 4))
    plain = SlidingWindowPredictor((8, 8, 8), overlap=0.25, tta=False)
    with torch.inference_mode():
        ours = grown([Fixed().eval()], image)
        ref = plain([Probe().eval()], image)
    assert float((ours - ref).abs().max()) < 1e-5
    assert "does not take tiles of [16, 16, 16]" in caplog.text and grown.grow_stride is None
    assert float((grown([Probe().eval()], image) - ref).abs().max()) < 1e-5  # from now on: the patch
