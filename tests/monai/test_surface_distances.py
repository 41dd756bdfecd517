"""biom3d eval's HD95 and ASSD are MONAI's, on anisotropic random shapes, so published figures compare."""

import numpy as np
import pytest

from biom3d.core.surface import surface_distances

metrics = pytest.importorskip("monai.metrics")


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")  # MONAI's own call, not ours
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_and_assd_equal_monai(seed):
    import torch
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    pred, truth = (ndimage.gaussian_filter(rng.random((18, 30, 26)), 2) > 0.52 for _ in range(2))
    spacing = (2.0, 0.5, 0.7)
    one_hot = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))  # noqa: E731
    hd95 = metrics.compute_hausdorff_distance(one_hot(pred), one_hot(truth), percentile=95, spacing=spacing).item()
    assd = metrics.compute_average_surface_distance(one_hot(pred), one_hot(truth), symmetric=True,
                                                    spacing=spacing).item()
    assert hd95 > 1 and assd > 0.5  # shapes apart, so a wrong axis order or spacing would show
    assert surface_distances(pred, truth, spacing) == pytest.approx({"hd95": hd95, "assd": assd}, rel=1e-5)
