"""RoIAlign and RoIPool: a fixed-size feature map for every region of interest.

Shape shorthand:
    N images, C channels, H × W feature map      K RoIs
    PH × PW  output bins per RoI (7 × 7 for boxes, 14 × 14 for masks)
    GH × GW  sample points per bin (the sampling ratio)

**RoIAlign** (He et al., Mask R-CNN §3). A RoI in image pixels becomes, at
``spatial_scale`` (1/stride), a window on the feature map that is *not*
snapped to the grid. It is split into PH × PW equal bins; in each bin
GH × GW regularly spaced points are sampled by bilinear interpolation of the
four surrounding feature cells, and averaged. No coordinate is ever rounded,
so the pooled features stay aligned with the pixels they describe — which
masks need. Exactly as torchvision:

* ``aligned=False`` (torchvision's default, used by its Mask R-CNN) maps a
  box coordinate c to ``c · scale``; ``aligned=True`` to ``c · scale − 0.5``,
  the half-pixel shift that puts feature *centres* (not corners) at
  integer + ½ pixel positions — the "correct" alignment (Detectron2's default).
* Without ``aligned`` a RoI is at least 1 × 1 feature cells.
* ``sampling_ratio ≤ 0`` is adaptive: ``ceil(RoI height / PH)`` points per
  bin vertically (likewise horizontally), so large RoIs are sampled densely.
* A sample more than one cell outside the map reads 0; within that margin it
  is clamped to the border.

**RoIPool** (Fast R-CNN), for comparison: box coordinates are *rounded* to
feature cells, bins are rounded outward to whole cells, and each bin takes
the maximum. The rounding misaligns features by up to half a cell (2 px on
P2, 16 px on P5) — the "quantisation" RoIAlign removes.

Both ops are vectorised over RoIs, bins and samples: they loop only over
chunks of RoIs (to bound memory) and over the distinct adaptive grid sizes.
The feature map is read channels-last, so every sample is one row of C
values; the backward pass scatters each sample's gradient back onto the
cells it read (``index_add_rows``, a single ``bincount``).
"""

from __future__ import annotations

import numpy as np

from minifpn import backend
from minifpn.autograd import Tensor, as_tensor, raw
from minifpn.backend import get_array_module

#: Bound on one chunk's gathered samples (bytes); RoIs are processed in chunks below it.
GATHER_BUDGET_BYTES = 32 * 2**20


def convert_boxes_to_roi_format(boxes):
    """``(K, 5)`` rois from either ``(K, 5)`` or a list of per-image ``(K_i, 4)`` boxes."""
    if isinstance(boxes, (list, tuple)):
        parts = [raw(b) for b in boxes]
        xp = get_array_module(*parts) if parts else np
        rois = [
            xp.concatenate([xp.full((len(b), 1), i, dtype=b.dtype), b.reshape(-1, 4)], axis=1)
            for i, b in enumerate(parts)
        ]
        return xp.concatenate(rois) if rois else xp.zeros((0, 5), dtype=np.float32)
    rois = raw(boxes)
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"boxes must be (K, 5) = (batch index, x1, y1, x2, y2), got {rois.shape}")
    return rois


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _chunks(count, bytes_per_roi):
    step = max(1, GATHER_BUDGET_BYTES // max(bytes_per_roi, 1))
    return [slice(s, min(s + step, count)) for s in range(0, count, step)]


def _axis_samples(start, bin_size, bins, grid, size, xp):
    """Bilinear corners of the sample points along one axis, for k RoIs.

    Sample j of bin p sits at ``start + (p + (j + ½)/grid) · bin_size``.
    ``size`` is the map's extent along the axis: a number, or ``(k,)`` — one
    per RoI, for a batch padded from maps of different sizes.
    Returns ``(low, high, w_low, w_high)``, each ``(k, bins, grid)``: the two
    neighbouring cells and their weights (zero for points out of range).
    """
    if not isinstance(size, int):
        size = size[:, None, None]  # (k, 1, 1)
    coord = _sample_coordinates(start, bin_size, bins, grid, xp)
    inside = (coord >= -1.0) & (coord <= size)  # beyond one cell outside: reads 0
    coord = xp.maximum(coord, 0)
    low = xp.floor(coord).astype(xp.int64)
    at_edge = low >= size - 1  # the last row/column: both neighbours are the border
    low = xp.where(at_edge, size - 1, low)
    high = xp.where(at_edge, size - 1, low + 1)
    coord = xp.where(at_edge, low.astype(coord.dtype), coord)
    weight_high = (coord - low) * inside
    weight_low = (1 - (coord - low)) * inside
    return low, high, weight_low, weight_high


def _sample_coordinates(start, bin_size, bins, grid, xp):
    """``(k, bins, grid)``: sample j of bin p at ``start + (p + (j + ½)/grid) · bin_size``."""
    frac = (xp.arange(grid, dtype=start.dtype) + 0.5) / grid
    offsets = xp.arange(bins, dtype=start.dtype)[:, None] + frac[None, :]  # (bins, grid)
    return start[:, None, None] + offsets[None] * bin_size[:, None, None]


def _roi_windows(rois, spatial_scale, aligned, xp):
    """Each RoI's window on the map: ``x1, y1, width, height`` ``(K,)`` in feature cells."""
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # torchvision forces misaligned RoIs to be at least 1×1
        roi_w, roi_h = xp.maximum(roi_w, 1.0), xp.maximum(roi_h, 1.0)
    return x1, y1, roi_w, roi_h


def _adaptive_grid(roi_size, bins, xp):
    """``sampling_ratio ≤ 0``: ``ceil(RoI size / bins)`` points per bin, about one per cell."""
    return xp.ceil(roi_size / bins).astype(xp.int64)


def roi_align_sample_points(box, output_size, spatial_scale=1.0, sampling_ratio=-1,
                            aligned=False):
    """Where :func:`roi_align` samples one box ``(x1, y1, x2, y2)``, for pictures and lessons.

    Returns ``(ys, xs, y_edges, x_edges)`` in feature coordinates (cell j's
    value sits at coordinate j): sample ``(ys[p, i], xs[q, j])`` ``(PH, GH)``,
    ``(PW, GW)`` is point (i, j) of bin (p, q), and bin p spans rows
    ``y_edges[p] … y_edges[p + 1]`` ``(PH + 1,)``. The op computes its samples
    with the same helpers.
    """
    rois = np.asarray([[0.0, *(float(v) for v in box)]])
    ph, pw = _pair(output_size)
    x1, y1, roi_w, roi_h = _roi_windows(rois, spatial_scale, aligned, np)
    if sampling_ratio > 0:
        gh = gw = sampling_ratio
    else:
        gh, gw = int(_adaptive_grid(roi_h, ph, np)[0]), int(_adaptive_grid(roi_w, pw, np)[0])
    ys = _sample_coordinates(y1, roi_h / ph, ph, gh, np)[0]
    xs = _sample_coordinates(x1, roi_w / pw, pw, gw, np)[0]
    y_edges = y1[0] + np.arange(ph + 1) * (roi_h[0] / ph)
    x_edges = x1[0] + np.arange(pw + 1) * (roi_w[0] / pw)
    return ys, xs, y_edges, x_edges


def _roi_align_plan(rois, shape, output_size, spatial_scale, sampling_ratio, aligned,
                    extents=None):
    """Per group of RoIs sharing a sampling grid: their indices, flat cell indices and weights.

    Yields ``(roi_indices, flat (k, PH, PW, S), weights (same))``: for every
    bin its ``S = 4·GH·GW`` reads (4 bilinear corners of GH × GW sample
    points), ``flat`` indexing rows of the channels-last map ``(N·H·W, C)``
    and the weights summing to the bin's average. ``extents``
    (``(K, 2)`` heights and widths, optional) are the maps' own sizes inside a
    padded batch, where each RoI's samples clamp.
    """
    xp = get_array_module(rois)
    n, c, h, w = shape
    ph, pw = output_size
    batch = rois[:, 0].astype(xp.int64)
    x1, y1, roi_w, roi_h = _roi_windows(rois, spatial_scale, aligned, xp)
    if sampling_ratio > 0:  # one grid for all: the groups are slices, nothing leaves the device
        groups = [(sampling_ratio, sampling_ratio, None)]
    else:  # adaptive: about one sample per feature cell
        groups = _adaptive_grid_groups(roi_h, roi_w, ph, pw)
    limit_h, limit_w = (h, w) if extents is None else (extents[:, 0], extents[:, 1])
    for gh, gw, members in groups:
        if gh == 0 or gw == 0:  # an empty RoI: no samples, output 0
            continue
        count = len(rois) if members is None else len(members)
        for part in _chunks(count, 4 * ph * gh * pw * gw * c * 4):
            idx = part if members is None else members[part]
            part_h = limit_h if extents is None else limit_h[idx]
            part_w = limit_w if extents is None else limit_w[idx]
            ylo, yhi, wylo, wyhi = _axis_samples(y1[idx], roi_h[idx] / ph, ph, gh, part_h, xp)
            xlo, xhi, wxlo, wxhi = _axis_samples(x1[idx], roi_w[idx] / pw, pw, gw, part_w, xp)
            row_base = batch[idx][:, None, None] * h  # (k, 1, 1)
            flats, weights = [], []
            for rows, wy in ((ylo, wylo), (yhi, wyhi)):
                for cols, wx in ((xlo, wxlo), (xhi, wxhi)):
                    # (k, PH, 1, GH, 1) and (k, 1, PW, 1, GW) → (k, PH, PW, GH, GW)
                    flats.append(((row_base + rows) * w)[:, :, None, :, None]
                                 + cols[:, None, :, None, :])
                    weights.append(wy[:, :, None, :, None] * wx[:, None, :, None, :] / (gh * gw))
            k = len(flats[0])
            # (k, PH, PW, 4, GH, GW) → (k, PH, PW, S): each bin's reads side by side
            flat = xp.stack(flats, axis=3).reshape(k, ph, pw, -1)
            weight = xp.stack(weights, axis=3).astype(rois.dtype, copy=False)  # the map's dtype
            yield idx, flat, weight.reshape(k, ph, pw, -1)


def _adaptive_grid_groups(roi_h, roi_w, ph, pw):
    """RoIs grouped by adaptive grid ``(ceil(h / PH), ceil(w / PW))``: ``[(GH, GW, indices)]``.

    The grid sizes shape the gathers, so the host must know them: the RoIs
    are sorted by grid on the device and the sorted grids copied over once;
    each group is then a slice of the sorted order.
    """
    if len(roi_h) == 0:
        return []
    xp = get_array_module(roi_h)
    grid_h, grid_w = _adaptive_grid(roi_h, ph, xp), _adaptive_grid(roi_w, pw, xp)
    order = xp.argsort(grid_h * (grid_w.max() + 1) + grid_w, kind="stable")
    grids = backend.to_numpy(xp.stack([grid_h[order], grid_w[order]], axis=1))  # the one copy
    starts = np.flatnonzero(np.any(np.diff(grids, axis=0) != 0, axis=1)) + 1
    bounds = [0, *starts.tolist(), len(grids)]
    return [(int(grids[a, 0]), int(grids[a, 1]), order[a:b])
            for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """RoIAlign with ``torchvision.ops.roi_align``'s semantics (see the module docstring).

    Args:
        input: ``(N, C, H, W)`` Tensor.
        boxes: ``(K, 5)`` rows ``(batch index, x1, y1, x2, y2)`` in input-image
            pixels, or a list of per-image ``(K_i, 4)`` boxes. Constants: no
            gradient flows into the boxes (as in torchvision).
        output_size: ``PH`` or ``(PH, PW)``.
        spatial_scale: feature cells per image pixel (1/stride).
        sampling_ratio: points per bin along each axis; ≤ 0 for adaptive.
        aligned: apply the half-pixel shift.

    Returns:
        ``(K, C, PH, PW)`` Tensor, differentiable with respect to ``input``.
    """
    return roi_align_in_extents(input, boxes, None, output_size, spatial_scale, sampling_ratio,
                                aligned)


def roi_align_in_extents(input, boxes, extents, output_size, spatial_scale=1.0,
                         sampling_ratio=-1, aligned=False):
    """:func:`roi_align` on a batch padded from maps of different sizes.

    ``extents`` ``(K, 2)`` gives, per RoI, the height and width of *its*
    map inside the padded ``input``; samples clamp at that border exactly as
    :func:`roi_align` on the unpadded map would (``None``: the whole input).
    Mask R-CNN uses it to crop the ground-truth masks of every image of a
    batch in one call.
    """
    input = as_tensor(input)
    if input.ndim != 4:
        raise ValueError(f"roi_align: input must be (N, C, H, W), got shape {input.shape}")
    xp = get_array_module(input.data)
    rois = convert_boxes_to_roi_format(boxes).astype(input.dtype, copy=False)
    ph, pw = _pair(output_size)
    n, c, h, w = input.shape
    channels_last = input.data.transpose(0, 2, 3, 1).reshape(-1, c)  # (N·H·W, C)
    plan = list(_roi_align_plan(rois, input.shape, (ph, pw), spatial_scale, sampling_ratio,
                                aligned, extents))

    out = xp.zeros((len(rois), ph, pw, c), dtype=input.dtype)
    for idx, flat, weight in plan:
        bins, reads = flat.shape[0] * ph * pw, flat.shape[-1]
        samples = xp.take(channels_last, flat.reshape(-1), axis=0).reshape(bins, reads, c)
        samples *= weight.reshape(bins, reads, 1)
        out[idx] = samples.sum(axis=1).reshape(-1, ph, pw, c)  # Σ over each bin's reads

    def backward(grad):
        g = grad.transpose(0, 2, 3, 1)  # (K, PH, PW, C)
        grad_input = xp.zeros((n * h * w, c), dtype=grad.dtype)
        for idx, flat, weight in plan:
            bins, reads = flat.shape[0] * ph * pw, flat.shape[-1]
            # each read's share: its bin's gradient × its weight, (bins, S, C)
            share = g[idx].reshape(bins, 1, c) * weight.reshape(bins, reads, 1)
            backend.index_add_rows(n * h * w, flat.reshape(-1), share.reshape(-1, c),
                                   out=grad_input)
        return (grad_input.reshape(n, h, w, c).transpose(0, 3, 1, 2),)

    return Tensor._make(out.transpose(0, 3, 1, 2), (input,), backward, "roi_align")


def _round_half_away(v, xp):
    """C's ``round()``: halves away from zero (NumPy's ``round`` goes to even)."""
    return xp.sign(v) * xp.floor(xp.abs(v) + 0.5)


def _roi_pool_bins(rois, output_size, spatial_scale, map_size, xp):
    """RoIPool's bins: ``((row starts, row stops) (K, PH), (column starts, stops) (K, PW))``.

    The RoI rounded to cells, inclusive of its end cell; bin p covers cells
    ``floor(p·s) … ceil((p+1)·s) − 1`` of it, ``s = RoI size / P``, clipped to the map.
    """
    (ph, pw), (h, w) = output_size, map_size
    x1, y1, x2, y2 = (_round_half_away(rois[:, i] * spatial_scale, xp) for i in range(1, 5))
    roi_h = xp.maximum(y2 - y1 + 1, 1)
    roi_w = xp.maximum(x2 - x1 + 1, 1)

    def windows(start, size, bins, limit):
        p = xp.arange(bins, dtype=size.dtype)
        lo = xp.floor(p * size[:, None] / bins) + start[:, None]
        hi = xp.ceil((p + 1) * size[:, None] / bins) + start[:, None]
        return xp.clip(lo, 0, limit).astype(xp.int64), xp.clip(hi, 0, limit).astype(xp.int64)

    return windows(y1, roi_h, ph, h), windows(x1, roi_w, pw, w)


def roi_pool_bins(box, output_size, spatial_scale, map_size):
    """Which cells :func:`roi_pool` takes the maximum of, for one box, bin by bin.

    Returns ``(rows, cols, cells)``: per bin row (column) its ``(start, stop)``
    cells, and the box rounded to cells, ``(x1, y1, x2, y2)`` inclusive — for
    pictures and lessons; the op uses the same rule.
    """
    rois = np.asarray([[0.0, *(float(v) for v in box)]])
    (hs, he), (ws, we) = _roi_pool_bins(rois, _pair(output_size), spatial_scale, map_size, np)
    cells = tuple(float(_round_half_away(rois[0, i] * spatial_scale, np)) for i in range(1, 5))
    return (list(zip(hs[0].tolist(), he[0].tolist())), list(zip(ws[0].tolist(), we[0].tolist())),
            cells)


def roi_pool(input, boxes, output_size, spatial_scale=1.0):
    """RoIPool with ``torchvision.ops.roi_pool``'s semantics: quantised bins, max inside.

    The RoI is rounded to feature cells (``round(x1 · scale)`` … inclusive of
    the end cell); bin p covers cells ``floor(p·s) … ceil((p+1)·s) − 1`` with
    ``s = RoI size / P``, clipped to the map. Empty bins output 0. The
    gradient goes to the cell holding each bin's maximum (the first, in
    row-major order, when several tie).

    Returns:
        ``(K, C, PH, PW)`` Tensor, differentiable with respect to ``input``.
    """
    input = as_tensor(input)
    xp = get_array_module(input.data)
    rois = convert_boxes_to_roi_format(boxes).astype(input.dtype, copy=False)
    ph, pw = _pair(output_size)
    n, c, h, w = input.shape
    channels_last = input.data.transpose(0, 2, 3, 1).reshape(-1, c)
    batch = rois[:, 0].astype(xp.int64)
    (hs, he), (ws, we) = _roi_pool_bins(rois, (ph, pw), spatial_scale, (h, w), xp)
    # Host sync (one): the tallest and widest windows set the gather's shape.
    mh = mw = 1
    if len(rois):
        mh, mw = (max(v, 1) for v in xp.stack([(he - hs).max(), (we - ws).max()]).tolist())

    out = xp.zeros((len(rois), ph, pw, c), dtype=input.dtype)
    argmax = xp.full((len(rois), ph, pw, c), -1, dtype=xp.int64)
    for part in _chunks(len(rois), ph * mh * pw * mw * c * 4):
        rows = hs[part][:, :, None] + xp.arange(mh)  # (k, PH, MH)
        cols = ws[part][:, :, None] + xp.arange(mw)  # (k, PW, MW)
        valid = (rows < he[part][:, :, None])[:, :, None, :, None] & (
            cols < we[part][:, :, None]
        )[:, None, :, None, :]  # (k, PH, PW, MH, MW)
        flat = (batch[part][:, None, None] * h + xp.minimum(rows, h - 1)) * w  # (k, PH, MH)
        flat = flat[:, :, None, :, None] + xp.minimum(cols, w - 1)[:, None, :, None, :]
        samples = xp.take(channels_last, flat.ravel(), axis=0).reshape(flat.shape + (c,))
        samples = xp.where(valid[..., None], samples, -xp.inf)
        k = samples.shape[0]
        samples = samples.reshape(k, ph, pw, mh * mw, c)
        best = samples.argmax(axis=3)  # (k, PH, PW, C): first maximum wins
        value = xp.take_along_axis(samples, best[:, :, :, None, :], axis=3)[:, :, :, 0]
        nonempty = valid.reshape(k, ph, pw, -1).any(axis=3)[..., None]
        out[part] = xp.where(nonempty, value, 0)
        cell = xp.take_along_axis(flat.reshape(k, ph, pw, -1), best, axis=3)  # (k, PH, PW, C)
        argmax[part] = xp.where(nonempty, cell, -1)

    def backward(grad):
        g = grad.transpose(0, 2, 3, 1)  # (K, PH, PW, C)
        used = argmax >= 0
        flat = (xp.where(used, argmax, 0) * c + xp.arange(c)).ravel()
        sums = xp.bincount(flat, weights=(g * used).ravel(), minlength=n * h * w * c)
        grad_input = sums.reshape(n, h, w, c).astype(grad.dtype).transpose(0, 3, 1, 2)
        return (grad_input,)

    return Tensor._make(out.transpose(0, 3, 1, 2), (input,), backward, "roi_pool")

