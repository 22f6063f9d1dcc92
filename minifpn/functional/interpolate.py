"""Resizing feature maps: nearest-neighbour and bilinear interpolation.

Both modes are *separable*: resizing an ``(N, C, H, W)`` map is a resize of
the H axis followed by a resize of the W axis. Along one axis, every output
position reads one input position (nearest) or blends two (bilinear)::

    out[..., o] = Σ_t  weight_t[o] · in[..., index_t[o]]        t = 1 or 2 terms

so the forward pass is one or two ``take``s along the axis, and the backward
pass is their adjoint: each output gradient is *added* back onto the input
position it was read from. The source positions follow PyTorch exactly, so
the FPN's top-down pathway matches torchvision's number for number.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from minifpn.autograd import Tensor, as_tensor
from minifpn.backend import get_array_module


def _source_scale(in_size, out_size, scale_factor, align_corners):
    """Input pixels per output pixel, as PyTorch's ``area_pixel_compute_scale``."""
    if align_corners:
        return (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    return 1.0 / scale_factor if scale_factor is not None else in_size / out_size


def _axis_terms(in_size, out_size, scale_factor, mode, align_corners):
    """The (index, weight) pairs that build each output position along one axis.

    Returns a list of ``(index (out,), weight (out,) or None)`` host arrays.
    """
    scale = _source_scale(in_size, out_size, scale_factor, align_corners)
    dst = np.arange(out_size, dtype=np.float64)
    if mode == "nearest":
        # PyTorch's legacy 'nearest': floor(dst · scale), clamped to the last pixel.
        # PyTorch holds the scale in a C float and floors the float32 product
        # (``floorf``); float64 rounds differently on a few sizes (e.g. 6 → 74
        # reads row 3 at output 37 where PyTorch reads row 2), so do the same.
        if scale_factor is None:
            scale32 = np.float32(in_size) / np.float32(out_size)
        else:
            scale32 = np.float32(1.0 / scale_factor)
        src = np.floor(dst.astype(np.float32) * scale32)
        index = np.minimum(src.astype(np.int64), in_size - 1)
        return [(index, None)]
    # bilinear: the source coordinate of each output pixel centre.
    src = dst * scale if align_corners else np.maximum((dst + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    return [(lo, 1.0 - frac), (hi, frac)]


def _adjoint_runs(index: np.ndarray, size: int, xp) -> list:
    """How to add gradients back along an axis read at a *sorted* ``index`` (host array).

    The outputs that read input ``k`` form one run (``index`` is sorted);
    the run's j-th members are gathered for all k at once, for j = 0, 1, … up
    to the longest run (2 for a 2× upsampling). Returns per j the output
    positions to gather and the input positions they go to (None: all of
    them, in order) — as device arrays, built once per size.
    """
    counts = np.bincount(index, minlength=size)  # run length of each input position
    starts = np.searchsorted(index, np.arange(size))  # where each run begins
    runs = []
    for j in range(int(counts.max(initial=0))):
        has_jth = np.flatnonzero(counts > j)
        targets = None if len(has_jth) == size else xp.asarray(has_jth)
        runs.append((xp.asarray(starts[has_jth] + j), targets))
    return runs


def take_adjoint(grad, runs, size, axis):
    """Adjoint of ``xp.take(x, index, axis)``, with the runs of :func:`_adjoint_runs`.

    Returns ``r`` with ``r[..., k, ...] = Σ_{o : index[o] = k} grad[..., o, ...]``:
    several times faster than a general scatter-add (``np.add.at``), and exact.
    """
    xp = get_array_module(grad)
    shape = list(grad.shape)
    shape[axis] = size
    out = xp.zeros(shape, dtype=grad.dtype)
    lead = (slice(None),) * axis
    for picks, targets in runs:
        picked = xp.take(grad, picks, axis=axis)
        if targets is None:
            out += picked
        else:
            out[lead + (targets,)] += picked
    return out


@functools.lru_cache(maxsize=512)
def _axis_plan(in_size, out_size, scale_factor, mode, align_corners, xp, dtype):
    """One axis's resize, as device arrays, built once per (sizes, mode, device, dtype).

    Returns ``[(index, weight or None, adjoint runs)]``, one entry per term:
    the forward gathers ``index`` and scales by ``weight``; the backward adds
    back along the runs. Caching keeps the host out of every call: the index
    vectors are built with NumPy and copied over the first time only.
    """
    plan = []
    for index, weight in _axis_terms(in_size, out_size, scale_factor, mode, align_corners):
        device_weight = None if weight is None else xp.asarray(weight, dtype=dtype)
        plan.append((xp.asarray(index), device_weight, _adjoint_runs(index, in_size, xp)))
    return plan


def _broadcastable(weight, ndim, axis):
    shape = [1] * ndim
    shape[axis] = -1
    return weight.reshape(shape)


def _resize_axis(x, plan, axis):
    xp = get_array_module(x)
    out = None
    for index, weight, _ in plan:
        part = xp.take(x, index, axis=axis)
        if weight is not None:
            part = part * _broadcastable(weight, x.ndim, axis)
        out = part if out is None else out + part
    return out


def _resize_axis_backward(grad, plan, in_size, axis):
    out = None
    for _, weight, runs in plan:
        g = grad if weight is None else grad * _broadcastable(weight, grad.ndim, axis)
        part = take_adjoint(g, runs, in_size, axis)
        out = part if out is None else out + part
    return out


def interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None) -> Tensor:
    """Resize ``(N, C, H, W)`` maps, as ``torch.nn.functional.interpolate``.

    Args:
        size: output ``(Ho, Wo)`` (or one int for both).
        scale_factor: multiplier(s) instead of ``size``; output = floor(in · s).
        mode: ``"nearest"`` (PyTorch's legacy nearest: ``floor(dst · scale)``)
            or ``"bilinear"``.
        align_corners: bilinear only (default False, as PyTorch).

    Differs from PyTorch: only 4-D inputs and these two modes; no
    ``recompute_scale_factor`` or antialiasing.
    """
    x = as_tensor(x)
    if x.ndim != 4:
        raise ValueError(f"interpolate: input must be (N, C, H, W), got shape {x.shape}")
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"interpolate: mode must be 'nearest' or 'bilinear', got {mode!r}")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    if mode == "nearest" and align_corners is not None:
        raise ValueError("interpolate: align_corners only applies to mode='bilinear'")
    h, w = x.shape[2:]
    if size is not None:
        out_hw = (size, size) if isinstance(size, int) else tuple(size)
        scales = (None, None)
    else:
        pair = isinstance(scale_factor, (tuple, list))
        scales = tuple(scale_factor) if pair else (scale_factor, scale_factor)
        out_hw = (math.floor(h * scales[0]), math.floor(w * scales[1]))
    xp = get_array_module(x.data)
    plan_h = _axis_plan(h, out_hw[0], scales[0], mode, bool(align_corners), xp, x.dtype)
    plan_w = _axis_plan(w, out_hw[1], scales[1], mode, bool(align_corners), xp, x.dtype)

    out = _resize_axis(_resize_axis(x.data, plan_h, 2), plan_w, 3)

    def backward(g):
        g = _resize_axis_backward(g, plan_w, w, 3)
        return (_resize_axis_backward(g, plan_h, h, 2),)

    return Tensor._make(out, (x,), backward, "interpolate")
