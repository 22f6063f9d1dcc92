"""Normalisation layers: batch norm, frozen batch norm, group norm.

All three compute ``y = γ · (x − μ) / σ + β`` per channel; they differ only
in *where μ and σ come from*:

* **batch norm** (training): statistics over (N, H, W) of the current batch;
  running averages are updated for use in evaluation.
* **frozen batch norm**: fixed statistics and affine parameters from a
  pre-trained checkpoint — with the tiny batches of detection training
  (1–2 images) batch statistics are too noisy to use or to update.
* **group norm** (Wu & He, 2018): statistics over (C/G, H, W) of *each image*,
  so it does not depend on the batch size at all — the default for training
  a detector from scratch (He et al., "Rethinking ImageNet Pre-training").

Batch and group norm share one backward: for x̂ = (x − μ)/σ normalised over a
set of M values, ``dx = (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂)) / σ``.
"""

from __future__ import annotations

import math

from minifpn import backend
from minifpn.autograd import Tensor, as_tensor, check_same_kind, raw
from minifpn.backend import get_array_module


def _normalize_backward(g_hat, x_hat, inv_std, axes):
    """dL/dx for x̂ = (x − mean)·inv_std with mean and std taken over ``axes``."""
    mean_g = g_hat.mean(axis=axes, keepdims=True)
    mean_gx = (g_hat * x_hat).mean(axis=axes, keepdims=True)
    return (g_hat - mean_g - x_hat * mean_gx) * inv_std


def _affine(x_hat, weight, bias, shape):
    out = x_hat
    if weight is not None:
        out = out * weight.data.reshape(shape)
    if bias is not None:
        out = out + bias.data.reshape(shape)
    return out


def _affine_backward(g, x_hat, weight, bias, shape, axes):
    """Gradients of γ·x̂ + β: (dL/dx̂, dγ, dβ)."""
    gw = (g * x_hat).sum(axis=axes) if weight is not None and weight.requires_grad else None
    gb = g.sum(axis=axes) if bias is not None and bias.requires_grad else None
    g_hat = g * weight.data.reshape(shape) if weight is not None else g
    return g_hat, gw, gb


def _parents(x, weight, bias):
    extra = tuple(as_tensor(p) for p in (weight, bias) if p is not None)
    for p in extra:
        check_same_kind(x, p, "normalisation")
    return (x,) + extra


def _pick(grads, weight, bias):
    gx, gw, gb = grads
    return (gx,) + tuple(g for g, p in ((gw, weight), (gb, bias)) if p is not None)


def batch_norm(
    x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
) -> Tensor:
    """Batch normalisation over ``(N, C, H, W)`` or ``(N, C)``, as PyTorch.

    In training mode normalises with the batch mean and *biased* variance and
    updates the running arrays in place (raw arrays, or Tensors whose
    ``.data`` is updated):
    ``running = (1 − momentum)·running + momentum·batch`` (with the *unbiased*
    variance, as PyTorch). In eval mode uses the running statistics, cast to
    the input's dtype (they are constants).
    """
    x = as_tensor(x)
    xp = get_array_module(x.data)
    axes = (0,) + tuple(range(2, x.ndim))  # every axis but channels
    shape = (1, -1) + (1,) * (x.ndim - 2)
    weight = None if weight is None else as_tensor(weight)
    bias = None if bias is None else as_tensor(bias)
    parents = _parents(x, weight, bias)
    running_mean, running_var = raw(running_mean), raw(running_var)
    if training:
        mean = x.data.mean(axis=axes, keepdims=True)
        var = x.data.var(axis=axes, keepdims=True)
        count = x.data.size // x.shape[1]
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean.reshape(-1)
            running_var *= 1 - momentum
            running_var += momentum * var.reshape(-1) * count / max(count - 1, 1)
    else:
        mean = running_mean.reshape(shape).astype(x.dtype, copy=False)
        var = running_var.reshape(shape).astype(x.dtype, copy=False)
    inv_std = 1 / xp.sqrt(var + eps)
    x_hat = (x.data - mean) * inv_std

    def backward(g):
        g_hat, gw, gb = _affine_backward(g, x_hat, weight, bias, shape, axes)
        if training:  # μ and σ depend on x
            gx = _normalize_backward(g_hat, x_hat, inv_std, axes)
        else:  # fixed statistics: a per-channel affine map
            gx = g_hat * inv_std
        return _pick((gx, gw, gb), weight, bias)

    out = _affine(x_hat, weight, bias, shape)
    return Tensor._make(out.astype(x.dtype, copy=False), parents, backward, "batch_norm")


def frozen_batch_norm(x, weight, bias, running_mean, running_var, eps=1e-5) -> Tensor:
    """Batch norm with every statistic and parameter fixed (torchvision's FrozenBatchNorm2d).

    ``y = x · scale + shift`` with ``scale = weight / sqrt(running_var + eps)``
    and ``shift = bias − running_mean · scale``, all constants (raw arrays or
    Tensors; no gradient), cast to the input's dtype.
    """
    x = as_tensor(x)
    xp = get_array_module(x.data)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    w, b, mean, var = (raw(a) for a in (weight, bias, running_mean, running_var))
    scale = (w / xp.sqrt(var + eps)).reshape(shape)
    shift = b.reshape(shape) - mean.reshape(shape) * scale
    scale, shift = scale.astype(x.dtype, copy=False), shift.astype(x.dtype, copy=False)
    out = x.data * scale + shift
    return Tensor._make(out, (x,), lambda g: (g * scale,), "frozen_batch_norm")


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5) -> Tensor:
    """Group normalisation over ``(N, C, H, W)``, as ``torch.nn.functional.group_norm``.

    The C channels are split into ``num_groups`` groups; each image's group is
    normalised with its own mean and (biased) variance, then a per-channel
    affine ``weight``/``bias`` is applied. Computed by :func:`group_norm_fused`;
    :func:`group_norm_plain` (inside ``backend.plain_reference()``) is the
    textbook version it is tested against.
    """
    x = as_tensor(x)
    n, c = x.shape[:2]
    if c % num_groups:
        raise ValueError(f"group_norm: {c} channels do not split into {num_groups} groups")
    weight = None if weight is None else as_tensor(weight)
    bias = None if bias is None else as_tensor(bias)
    if backend.fast_paths():
        return group_norm_fused(x, num_groups, weight, bias, eps)
    return group_norm_plain(x, num_groups, weight, bias, eps)


def group_norm_plain(x, num_groups, weight, bias, eps) -> Tensor:
    """The textbook group norm: x̂ stored, the shared backward of batch norm."""
    xp = get_array_module(x.data)
    n, c = x.shape[:2]
    parents = _parents(x, weight, bias)
    group_size = c // num_groups * math.prod(x.shape[2:])  # C/G·H·W (explicit: N may be 0)
    grouped = x.data.reshape(n, num_groups, group_size)  # (N, G, C/G·H·W)
    mean = grouped.mean(axis=2, keepdims=True)
    inv_std = 1 / xp.sqrt(grouped.var(axis=2, keepdims=True) + eps)
    x_hat = ((grouped - mean) * inv_std).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    channel_axes = (0,) + tuple(range(2, x.ndim))

    def backward(g):
        g_hat, gw, gb = _affine_backward(g, x_hat, weight, bias, shape, channel_axes)
        gx = _normalize_backward(g_hat.reshape(grouped.shape), x_hat.reshape(grouped.shape),
                                 inv_std, 2)
        return _pick((gx.reshape(x.shape), gw, gb), weight, bias)

    out = _affine(x_hat, weight, bias, shape)
    return Tensor._make(out, parents, backward, "group_norm")


def group_norm_fused(x, num_groups, weight, bias, eps) -> Tensor:
    """Group norm in few passes over memory, keeping nothing but two numbers per group.

    The same results as :func:`group_norm_plain`, computed the way PyTorch's
    kernels do. Rows below are the ``N·G`` (image, group) pairs, each ``M =
    C/G·H·W`` values; μ, σ⁻¹ are per row, w, b per channel.

    Forward: ``y = (x − μ)·σ⁻¹·w + b``, written as ``x − μ`` (into the output),
    its sum of squares (σ), then ``·(σ⁻¹·w)`` and ``+ b`` in place: 5 passes
    instead of ~10, no array x̂ kept for the backward pass (it is recomputed
    from the input, which the graph holds anyway — a full activation less).

    Backward: with per-(image, channel) sums ``Σg`` and ``Σg·x`` over H·W,

    * ``db = Σ_n Σg`` and ``dw = Σ_n σ⁻¹·(Σg·x − μ·Σg)`` (that is, ``Σ g·x̂``);
    * ``dx = σ⁻¹·(g·w − mean(g·w) − x̂·mean(g·w·x̂))``, the group means taken
      from the same sums, is linear in g and x: ``dx = A·g + B·x + C`` with A
      per (image, channel) and B, C per row — 3 passes instead of ~15.

    Both directions work through rows in cache-sized blocks, split between
    the CPU's threads (:func:`minifpn.backend.parallel_for`): every pass over
    a block finds it in the cache.
    """
    xp = get_array_module(x.data)
    n, c = x.shape[:2]
    parents = _parents(x, weight, bias)
    rows, per_group = n * num_groups, c // num_groups  # N·G rows of C/G channels
    hw = math.prod(x.shape[2:])
    m = per_group * hw
    xr = x.data.reshape(rows, per_group, hw)
    w_rows = _per_row(weight, n, num_groups, xp, x.dtype)  # (N·G, C/G)
    b_rows = _per_row(bias, n, num_groups, xp, x.dtype)
    mean = xp.empty((rows, 1, 1), dtype=x.dtype)
    inv_std = xp.empty((rows, 1, 1), dtype=x.dtype)
    out = xp.empty_like(x.data)
    out_r = out.reshape(rows, per_group, hw)

    def forward_rows(r):
        o = out_r[r]
        mean[r] = xr[r].mean(axis=(1, 2), keepdims=True)
        xp.subtract(xr[r], mean[r], out=o)
        variance = xp.einsum("rck,rck->r", o, o) / m
        inv_std[r] = (1 / xp.sqrt(variance + eps))[:, None, None]
        o *= inv_std[r] if w_rows is None else inv_std[r] * w_rows[r][..., None]
        if b_rows is not None:
            o += b_rows[r][..., None]

    backend.parallel_for(rows, forward_rows, elements=x.data.size, xp=xp, cache_blocks=True)

    def backward(g):
        gr = g.reshape(rows, per_group, hw)
        sum_g = xp.empty((rows, per_group), dtype=g.dtype)  # Σ_hw g
        sum_g_xhat = xp.empty((rows, per_group), dtype=g.dtype)  # Σ_hw g·x̂
        gx = xp.empty_like(x.data) if x.requires_grad else None

        def backward_rows(r):
            g3, x3 = gr[r], xr[r]
            sum_g[r] = g3.sum(axis=2)
            sum_g_xhat[r] = (xp.einsum("rck,rck->rc", g3, x3) - mean[r][..., 0] * sum_g[r]) \
                * inv_std[r][..., 0]
            if gx is None:
                return
            w = 1 if w_rows is None else w_rows[r]
            mean_gw = (w * sum_g[r]).sum(axis=1)[:, None, None] / m  # mean(g·w) per row
            mean_gw_xhat = (w * sum_g_xhat[r]).sum(axis=1)[:, None, None] / m
            a = inv_std[r] * (w if w_rows is None else w[..., None])  # per (row, channel)
            b = -inv_std[r] ** 2 * mean_gw_xhat  # per row
            c_ = inv_std[r] * (mean[r] * inv_std[r] * mean_gw_xhat - mean_gw)
            d3 = gx.reshape(rows, per_group, hw)[r]
            xp.multiply(g3, a, out=d3)
            d3 += x3 * b
            d3 += c_

        backend.parallel_for(rows, backward_rows, elements=g.size, xp=xp, cache_blocks=True)
        gw = gb = None
        if weight is not None and weight.requires_grad:
            gw = sum_g_xhat.reshape(n, c).sum(axis=0)
        if bias is not None and bias.requires_grad:
            gb = sum_g.reshape(n, c).sum(axis=0)
        return _pick((gx, gw, gb), weight, bias)

    return Tensor._make(out, parents, backward, "group_norm")


def _per_row(param, n, num_groups, xp, dtype):
    """A per-channel ``(C,)`` parameter as ``(N·G, C/G)``: its values for every row."""
    if param is None:
        return None
    per_group = param.shape[0] // num_groups
    per_image = param.data.reshape(1, num_groups, per_group).astype(dtype, copy=False)
    return xp.broadcast_to(per_image, (n, num_groups, per_group)).reshape(n * num_groups,
                                                                          per_group)
