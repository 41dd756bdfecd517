"""Batched tensor ops behind ``io/batch-augment``: each takes a sub-batch ``(n, C, D, H, W)`` and per-sample
parameters as tensors, and runs in a few kernels on whatever device the batch is on (what depends only on the
drawn parameters, such as the swap's permutation or the blur's matrices, is worked out on the host).

Every op follows the TorchIO transform of ``io/patch-dataset`` it replaces (the tests compare them): same
bias-field polynomial, scipy's Gaussian (truncated at 4 sigma, ``reflect`` borders), TorchIO's anisotropy
geometry (nearest down to ``floor(n / f)`` voxels about the centre, linear back), sign-preserving gamma. Blur
and anisotropy are 1D linear maps along an axis, applied as one batched matmul per axis with a per-sample
matrix, which also folds the border handling in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: scipy.ndimage.gaussian_filter's default kernel radius, in standard deviations
TRUNCATE = 4.0


def resample(image: torch.Tensor, labels: torch.Tensor, samples: torch.Tensor, matrix: torch.Tensor,
             centre: Sequence[float], out_image: torch.Tensor, out_labels: torch.Tensor, *,
             batched: bool | None = None, zero_fill: torch.Tensor | None = None) -> None:
    """:func:`affine_resample` of batch items ``samples``, each the way its device does it fastest. ``batched``
    (default: off a CPU): one ``grid_sample`` for them all (on a GPU a few large kernels beat about fifteen small
    ones per sample). Else one sample at a time: a diagonal map (scalings and flips) separably by
    :func:`axis_resample`, the others through :func:`planar_trilinear`. Both ways give the same result.
    ``zero_fill`` (bool per batch item): those pad with 0 past the input, not the minimum."""
    if image.device.type != "cpu" if batched is None else batched:
        affine_resample(image, labels, samples, matrix, centre, out_image, out_labels, per_sample=False,
                        zero_fill=zero_fill)
        return
    factors = matrix.diagonal(dim1=1, dim2=2)
    diagonal = (matrix == torch.diag_embed(factors)).flatten(1).all(1)
    if diagonal.any():
        axis_resample(image, labels, samples[diagonal].tolist(), factors[diagonal], centre, out_image, out_labels,
                      zero_fill=zero_fill)
    if not diagonal.all():
        affine_resample(image, labels, samples[~diagonal], matrix[~diagonal], centre, out_image, out_labels,
                        per_sample=True, zero_fill=zero_fill)


def affine_resample(image: torch.Tensor, labels: torch.Tensor, samples: torch.Tensor, matrix: torch.Tensor,
                    centre: Sequence[float], out_image: torch.Tensor, out_labels: torch.Tensor, *,
                    per_sample: bool | None = None, zero_fill: torch.Tensor | None = None) -> None:
    """Resample batch items ``samples`` into ``out_*[samples]`` (patch-sized, smaller than the inputs): output
    voxel ``i`` reads input voxel ``centre + matrix @ (i - (patch - 1) / 2)``, trilinear for the image, nearest
    for the labels (so no label value is ever made up). Outside the input the image takes its per-channel
    minimum (TorchIO's ``default_pad_value='minimum'``), or 0 for the items ``zero_fill`` marks; the labels 0.

    ``image`` float (B, C, *in), ``labels`` any dtype (B, K, *in; ``out_labels`` may have another: the values are
    small integers), ``matrix`` (n, 3, 3) in voxel units. The labels are gathered at the rounded points (what
    ``grid_sample``'s nearest mode takes, at a fraction of its cost). The images: one ``grid_sample`` on the
    gathered sub-batch; or, ``per_sample`` (default: on a CPU), each item from its input in place (gathering the
    enlarged crops first costs more there than the sampling) by :func:`planar_trilinear`."""
    patch, spatial = out_image.shape[2:], image.shape[2:]
    matrix = matrix.to(image.device, torch.float32)
    points = _points(matrix, patch, centre)  # (n, 3, P): input voxel coordinates along axes 0, 1, 2
    index = _nearest_index(points, spatial)  # (n, P) flat input voxel
    leaving = _leaves(matrix, patch, centre, spatial).tolist()
    if image.device.type == "cpu" if per_sample is None else per_sample:
        for j, b in enumerate(samples.tolist()):
            out_image[b].copy_(planar_trilinear(image[b], points[j]).view(-1, *patch))
            if labels[b].any():
                flat = labels[b].reshape(len(labels[b]), -1)
                out_labels[b].view(len(flat), -1).copy_(flat.gather(1, index[j].view(1, -1).expand(len(flat), -1)))
            else:  # a background crop stays background: no gather
                out_labels[b].zero_()
            if leaving[j]:
                _pad_outside(out_image[b:b + 1], out_labels[b:b + 1], points[j:j + 1], spatial, image[b:b + 1],
                             None if zero_fill is None else zero_fill[b:b + 1])
        return
    source, source_labels = image.index_select(0, samples), labels.index_select(0, samples)
    out = F.grid_sample(source, _grid(points, patch, spatial), mode="bilinear", padding_mode="border",
                        align_corners=False)
    n, k = source_labels.shape[:2]
    picked = source_labels.reshape(n, k, -1).gather(2, index.view(n, 1, -1).expand(n, k, -1)).view(n, k, *patch)
    if any(leaving):
        _pad_outside(out, picked, points, spatial, source, None if zero_fill is None else zero_fill[samples])
    out_image.index_copy_(0, samples, out)
    out_labels.index_copy_(0, samples, picked.to(out_labels.dtype))


def planar_trilinear(volume: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``grid_sample``'s trilinear interpolation (border padding) of ``volume`` (C, D, H, W) at ``points`` (3, P),
    input voxel coordinates -> (C, P), through its 2D kernel: on a CPU, PyTorch vectorises ``grid_sample`` in 2D
    only, and the 3D one is a scalar loop (a rotated 64^3 sample on one thread: 13-15 ms in 3D, 7 ms this way).

    The D slices are laid out as tiles of a 2D mosaic, each framed by a copy of its edge voxels (the border
    padding, so that no bilinear weight reaches another slice's tile); each point is sampled bilinearly in the
    tiles of its two slices, and the two blended by the fraction along axis 0. The mosaic is about square, its
    side about ``sqrt(D * H * W)``: the result differs from ``grid_sample``'s by the float32 rounding of coordinates
    that large (about 1e-4 voxel for a 110^3 crop)."""
    c, d, h, w = volume.shape
    tile_h, tile_w = h + 2, w + 2
    per_row = min(d, max(1, round(math.sqrt(d * tile_h / tile_w))))
    rows = math.ceil(d / per_row)
    mosaic = _mosaic(volume, rows, per_row)
    mosaic_h, mosaic_w = rows * tile_h, per_row * tile_w
    z = points[0].clamp(0, d - 1)
    low = z.floor().clamp_(max=max(d - 2, 0))
    fraction = z.sub_(low)
    first = low.int()
    # normalised 2D coordinates: (2 * (tile origin + 1 + voxel) + 1) / mosaic size - 1, the origins per slice
    x = points[2].clamp(0, w - 1).mul_(2 / mosaic_w)
    y = points[1].clamp(0, h - 1).mul_(2 / mosaic_h)
    slices = torch.arange(d, device=volume.device, dtype=torch.float64)
    tile_row = (slices / per_row).floor()
    origin_x = (((slices - tile_row * per_row) * tile_w * 2 + 3) / mosaic_w - 1).to(volume.dtype)
    origin_y = ((tile_row * tile_h * 2 + 3) / mosaic_h - 1).to(volume.dtype)
    grid = volume.new_empty((1, 2, len(x), 2))
    for k, index in enumerate((first, (first + 1).clamp_(max=d - 1))):  # the two slices of each point
        torch.add(origin_x.index_select(0, index), x, out=grid[0, k, :, 0])
        torch.add(origin_y.index_select(0, index), y, out=grid[0, k, :, 1])
    both = F.grid_sample(mosaic[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    return torch.lerp(both[:, 0], both[:, 1], fraction)


def _mosaic(volume: torch.Tensor, rows: int, per_row: int) -> torch.Tensor:
    """(C, rows * (H + 2), per_row * (W + 2)): slice s in tile (s // per_row, s % per_row), framed by its edge
    rows and columns repeated once; tiles past the last slice are zeros."""
    c, d, h, w = volume.shape
    tiles = volume.new_empty((c, rows, h + 2, per_row, w + 2))
    inside = tiles[:, :, 1:h + 1, :, 1:w + 1].permute(0, 1, 3, 2, 4)  # (C, rows, per_row, H, W), a view
    full = d // per_row
    inside[:, :full].copy_(volume[:, :full * per_row].reshape(c, full, per_row, h, w))
    rest = d - full * per_row
    if rest:
        inside[:, full, :rest].copy_(volume[:, full * per_row:])
        inside[:, full, rest:].zero_()
    tiles[:, :, 0], tiles[:, :, h + 1] = tiles[:, :, 1], tiles[:, :, h]
    tiles[..., 0], tiles[..., w + 1] = tiles[..., 1], tiles[..., w]
    return tiles.view(c, rows * (h + 2), per_row * (w + 2))


def _points(matrix: torch.Tensor, patch: Sequence[int], centre: Sequence[float]) -> torch.Tensor:
    """(n, 3, P) float32: the input voxel :func:`affine_resample` reads for each output voxel, one contiguous row per
    axis (a broadcast sum of three outer terms written in place: ``F.affine_grid`` multiplies a homogeneous base
    grid, twice as slow here)."""
    n, device = len(matrix), matrix.device
    steps = [torch.arange(p, device=device, dtype=torch.float32) - (p - 1) / 2 for p in patch]
    v0, v1, v2 = steps[0].view(1, -1, 1, 1), steps[1].view(1, 1, -1, 1), steps[2].view(1, 1, 1, -1)
    points = torch.empty((n, 3, *patch), device=device)
    for k in range(3):
        m = matrix[:, k].view(n, 3, 1, 1, 1)
        torch.add(m[:, 2] * v2 + m[:, 1] * v1 + centre[k], m[:, 0] * v0, out=points[:, k])
    return points.view(n, 3, -1)


def _grid(points: torch.Tensor, patch: Sequence[int], spatial: Sequence[int]) -> torch.Tensor:
    """``grid_sample``'s (n, *patch, 3) grid of ``points``: (x, y, z) = axes (2, 1, 0), normalised to [-1, 1]."""
    size = torch.tensor(spatial, device=points.device, dtype=torch.float32).view(1, 3, 1)
    normalised = (points * 2 + 1) / size - 1
    return normalised.flip(1).transpose(1, 2).reshape(len(points), *patch, 3)


def _nearest_index(points: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """(n, P) flat index of the input voxel nearest each point (clamped into the input). Summed in float32 while
    exact (under 2^24 voxels, a 256^3 crop): one conversion to int64 instead of one per axis."""
    exact = math.prod(spatial) < 2**24
    index = None
    for axis, n in enumerate(spatial):
        along = points[:, axis].round().clamp_(0, n - 1)
        if not exact:
            along = along.long()
        index = along if index is None else index.mul_(n).add_(along)
    return index.long() if exact else index


def _leaves(matrix: torch.Tensor, patch: Sequence[int], centre: Sequence[float],
            spatial: Sequence[int]) -> torch.Tensor:
    """Which samples read outside their input: an affine map's image of the patch box is the hull of its 8
    corners (the enlarged crop is made for rotations, so mostly only zoom-outs leave it)."""
    half = torch.tensor([(p - 1) / 2 for p in patch], device=matrix.device)
    corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], device=matrix.device)] * 3) * half  # (8, 3)
    reach = (corners @ matrix.transpose(1, 2)).abs().amax(1)  # (n, 3) voxels from the centre
    room = torch.tensor([min(c + 0.5, s - 0.5 - c) for c, s in zip(centre, spatial, strict=True)], device=matrix.device)
    return (reach > room).any(1)


def _pad_outside(out: torch.Tensor, picked: torch.Tensor, points: torch.Tensor, spatial: Sequence[int],
                 source: torch.Tensor, zero: torch.Tensor | None = None) -> None:
    """TorchIO's padding where a point left the input (beyond half a voxel past its edge, where ``grid_sample``'s
    grid leaves [-1, 1]): the image's per-channel minimum (0 for the items ``zero`` marks), label 0. In place."""
    outside = None
    for axis, n in enumerate(spatial):
        along = _beyond(points[:, axis], n)
        outside = along if outside is None else outside.logical_or_(along)
    outside = outside.view(len(points), 1, *out.shape[2:])
    floor = source.amin(dim=(2, 3, 4), keepdim=True)
    if zero is not None:
        floor = torch.where(zero.view(-1, 1, 1, 1, 1).to(floor.device), torch.zeros_like(floor), floor)
    out.copy_(torch.where(outside, floor, out))
    picked.masked_fill_(outside, 0)


def _beyond(coords: torch.Tensor, size: int) -> torch.Tensor:
    """Coordinates more than half a voxel past an axis of ``size`` voxels: where ``grid_sample``'s normalised grid
    leaves [-1, 1] (align_corners=False), and TorchIO pads."""
    return (coords < -0.5) | (coords > size - 0.5)


def along_axis(x: torch.Tensor, matrices: torch.Tensor, axis: int) -> torch.Tensor:
    """``out[b, ..., i, ...] = sum_j matrices[b, i, j] * x[b, ..., j, ...]`` along spatial ``axis`` (0..2): one
    batched matmul, no transposed copy. ``matrices`` (n, rows, size): the axis becomes ``rows`` long."""
    n, c, *spatial = x.shape
    size, rows = spatial[axis], matrices.shape[1]
    shape = (n, c, *spatial[:axis], rows, *spatial[axis + 1:])
    if axis == 2:
        return (x.reshape(n, -1, size) @ matrices.transpose(1, 2)).reshape(shape)
    before, after = c * math.prod(spatial[:axis]), math.prod(spatial[axis + 1:])
    return (matrices[:, None] @ x.reshape(n, before, size, after)).reshape(shape)


def axis_resample(image: torch.Tensor, labels: torch.Tensor, samples: Sequence[int], factors: torch.Tensor,
                  centre: Sequence[float], out_image: torch.Tensor, out_labels: torch.Tensor, *,
                  zero_fill: torch.Tensor | None = None) -> None:
    """:func:`affine_resample` for diagonal matrices ``diag(factors[j])`` (scalings and flips): the same values,
    separably. Trilinear weights are products of 1D ones, so the image goes through three 1D linear maps per
    sample (:func:`along_axis`, the border clamp folded into the matrices) and the labels through three index
    selections: no grid, no ``grid_sample`` (a 64^3 sample on one CPU thread here: 7.5 ms against 25 ms)."""
    patch, spatial, device = out_image.shape[2:], image.shape[2:], image.device
    for j, b in enumerate(samples):
        coords = [centre[a] + float(factors[j, a]) * (torch.arange(patch[a], dtype=torch.float64) - (patch[a] - 1) / 2)
                  for a in range(3)]
        x = image[b:b + 1]
        for axis in (2, 1, 0):
            x = along_axis(x, _linear_matrix(coords[axis], spatial[axis]).to(device, x.dtype)[None], axis)
        picked = labels[b]
        for axis in range(3):
            nearest = coords[axis].round().clamp(0, spatial[axis] - 1).long().to(device)
            picked = picked.index_select(1 + axis, nearest)
        out = [_beyond(c, n) for c, n in zip(coords, spatial, strict=True)]  # on the host
        if any(bool(o.any()) for o in out):
            outside = (out[0].view(-1, 1, 1) | out[1].view(1, -1, 1) | out[2].view(1, 1, -1)).to(device)
            fill = 0.0 if zero_fill is not None and bool(zero_fill[b]) else image[b:b + 1].amin(dim=(2, 3, 4), keepdim=True)
            x = torch.where(outside, fill, x)
            picked = picked.masked_fill(outside, 0)
        out_image[b].copy_(x[0])
        out_labels[b].copy_(picked)


def _linear_matrix(coords: torch.Tensor, size: int) -> torch.Tensor:
    """(len(coords), size) float64: linear interpolation at ``coords`` (voxels), clamped into the axis as
    ``grid_sample``'s border padding."""
    clamped = coords.clamp(0, size - 1)
    low = clamped.floor().clamp(max=max(size - 2, 0)).long()
    weight = clamped - low
    rows = torch.arange(len(coords))
    out = torch.zeros(len(coords), size, dtype=torch.float64)
    out[rows, low] = 1 - weight
    if size > 1:
        out[rows, low + 1] += weight
    return out


def gaussian_matrices(std: torch.Tensor, size: int) -> torch.Tensor:
    """(n, size, size) Gaussian smoothing along an axis of ``size`` voxels, as scipy.ndimage.gaussian_filter:
    radius ``int(4 * std + 0.5)``, normalised taps, ``reflect`` border (the edge voxel repeated)."""
    radius = (TRUNCATE * std + 0.5).floor()
    reach = int(radius.max()) if len(std) else 0
    taps = torch.arange(-reach, reach + 1, dtype=std.dtype, device=std.device)
    weights = torch.exp(-0.5 * (taps / std[:, None]) ** 2) * (taps.abs() <= radius[:, None])
    weights = weights / weights.sum(1, keepdim=True)
    rows = torch.arange(size, device=std.device)
    cols = _reflect(rows[:, None] + taps.long()[None], size)  # (size, taps)
    out = torch.zeros(len(std), size, size, dtype=std.dtype, device=std.device)
    return out.scatter_add_(2, cols.expand(len(std), -1, -1), weights[:, None].expand(-1, size, -1))


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """scipy's ``reflect`` (d c b a | a b c d | d c b a): period ``2 * size``."""
    index = index.remainder(2 * size)
    return torch.where(index >= size, 2 * size - 1 - index, index)


def anisotropy_matrices(factor: torch.Tensor, size: int) -> torch.Tensor:
    """(n, size, size) simulated anisotropy along an axis, TorchIO's RandomAnisotropy geometry: nearest
    sampling down to ``floor(size / factor)`` voxels of spacing ``factor`` centred on the axis, then linear
    interpolation back. Past the downsampled extent (at most a voxel at each end) the edge value carries on,
    where TorchIO fills zeros, the z-scored mean."""
    n, dtype, device = len(factor), factor.dtype, factor.device
    down = (size / factor).floor().clamp(min=1)[:, None]  # voxels after downsampling
    centre, f = (size - 1) / 2, factor[:, None]
    i = torch.arange(size, dtype=dtype, device=device)[None]
    position = torch.minimum(((i - centre) / f + (down - 1) / 2).clamp(min=0), down - 1)  # in downsampled voxels
    low = position.floor()
    high = torch.minimum(low + 1, down - 1)
    weight = position - low

    def nearest(j: torch.Tensor) -> torch.Tensor:  # the original voxel a downsampled one took
        return (centre + (j - (down - 1) / 2) * f + 0.5).floor().clamp(0, size - 1).long()

    out = torch.zeros(n, size, size, dtype=dtype, device=device)
    out.scatter_add_(2, nearest(low)[..., None], (1 - weight)[..., None])
    return out.scatter_add_(2, nearest(high)[..., None], weight[..., None])


def bias_basis(shape: Sequence[int], order: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(terms, *shape) monomials ``x^i y^j z^k`` (``i + j + k <= order``) over coordinates in [-1, 1], in
    TorchIO's BiasField order, so that coefficients drawn in that order give its field."""
    axes = []
    for n in shape:
        coord = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
        axes.append(coord / ((n - 1) / 2) if n > 1 else coord)
    x, y, z = (axes[0].view(-1, 1, 1), axes[1].view(1, -1, 1), axes[2].view(1, 1, -1))
    terms = [x**i * y**j * z**k for i in range(order + 1) for j in range(order + 1 - i)
             for k in range(order + 1 - i - j)]
    return torch.stack([t.expand(*shape) for t in terms])


def bias_terms(order: int) -> int:
    return math.comb(order + 3, 3)


def swap_blocks(x: torch.Tensor, starts: torch.Tensor, block: Sequence[int]) -> torch.Tensor:
    """TorchIO's RandomSwap on every sample at once: for each iteration ``t``, the blocks at ``starts[:, t, 0]``
    and ``starts[:, t, 1]`` (first voxels, (n, iterations, 2, 3), on the CPU) exchange contents, all channels
    alike. Both blocks are read before either is written (TorchIO copies a view of the first, so overlapping
    blocks come out in its copy order).

    The swaps move voxels whatever their values, so their composition is one permutation, worked out on the host
    from the locations alone; the device then runs a single gather instead of four ops per iteration."""
    n, c, *spatial = x.shape
    order = swap_permutation(spatial, starts, block)
    index = torch.from_numpy(order).to(x.device, non_blocking=True).long()
    return x.reshape(n, c, -1).gather(2, index.unsqueeze(1).expand(n, c, -1)).view(x.shape)


def swap_permutation(spatial: Sequence[int], starts: torch.Tensor, block: Sequence[int]) -> np.ndarray:
    """(n, voxels) int32: output voxel ``i`` of sample ``b`` takes input voxel ``order[b, i]``."""
    n, size = len(starts), math.prod(spatial)
    order = np.broadcast_to(np.arange(size, dtype=np.int32), (n, size)).copy()
    for sample, pairs in enumerate(starts.tolist()):
        grid = order[sample].reshape(spatial)
        for first, second in pairs:
            one = tuple(slice(s, s + k) for s, k in zip(first, block, strict=True))
            two = tuple(slice(s, s + k) for s, k in zip(second, block, strict=True))
            grid[two], grid[one] = grid[one].copy(), grid[two].copy()
    return order


def signed_gamma(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``sign(x) * |x| ** gamma`` per sample and channel (gamma (n, C)): TorchIO's RandomGamma on z-scored
    (signed) intensities, and plain ``x ** gamma`` where x >= 0."""
    return x.abs().pow_(gamma[:, :, None, None, None]).copysign_(x)
