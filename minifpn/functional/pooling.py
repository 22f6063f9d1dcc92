"""Max pooling.

Like convolution, pooling visits kh·kw kernel *taps*; for each tap we take
one strided slice of the (padded) input, so the loops run over the taps and
never over pixels. The forward pass remembers which tap won in every output
cell; the backward pass sends each output's gradient to that tap's pixel.
Windows may overlap (kernel 3, stride 2 in the ResNet stem), so a pixel can
win several windows: its gradients are added, one tap at a time.
"""

from __future__ import annotations

from minifpn.autograd import Tensor, as_tensor
from minifpn.backend import get_array_module
from minifpn.functional.conv import ConvGeometry


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False) -> Tensor:
    """2-D max pooling over ``(N, C, H, W)``, as ``torch.nn.functional.max_pool2d``.

    Args:
        kernel_size: int or (kh, kw).
        stride: defaults to ``kernel_size`` (as in PyTorch).
        padding: implicit ``-inf`` padding on each side (at most half the kernel).
        dilation: spacing between kernel taps.
        ceil_mode: only ``False`` is supported.

    When several taps tie for the maximum, the first in row-major kernel order
    wins (the same element PyTorch's CPU kernel picks).
    """
    if ceil_mode:
        raise NotImplementedError("max_pool2d: ceil_mode=True is not supported")
    x = as_tensor(x)
    if x.ndim != 4:
        raise ValueError(f"max_pool2d: input must be (N, C, H, W), got shape {x.shape}")
    xp = get_array_module(x.data)
    stride = kernel_size if stride is None else stride
    geo = ConvGeometry.make(kernel_size, stride, padding, dilation)
    if 2 * geo.ph > geo.kh or 2 * geo.pw > geo.kw:
        raise ValueError("max_pool2d: padding must be at most half the kernel size")
    n, c, h, w = x.shape
    ho, wo = geo.out_size(h, w)
    padded = x.data
    if geo.ph or geo.pw:
        padded = xp.pad(
            x.data, ((0, 0), (0, 0), (geo.ph, geo.ph), (geo.pw, geo.pw)), constant_values=-xp.inf
        )
    taps = [(i, j) for i in range(geo.kh) for j in range(geo.kw)]

    best = winner = None  # running maximum, and the index of the tap that holds it
    for t, (i, j) in enumerate(taps):
        window = padded[(slice(None), slice(None)) + geo.tap_slices(i, j, ho, wo)]
        if best is None:
            best = window.copy()
            winner = xp.zeros(best.shape, dtype=xp.int16)
        else:
            better = window > best
            best = xp.where(better, window, best)
            winner = xp.where(better, t, winner)  # not winner[better] = t: no host sync on a GPU

    def backward(g):
        grad_padded = xp.zeros(padded.shape, dtype=g.dtype)
        for t, (i, j) in enumerate(taps):
            region = (slice(None), slice(None)) + geo.tap_slices(i, j, ho, wo)
            grad_padded[region] += g * (winner == t)
        return (grad_padded[:, :, geo.ph : geo.ph + h, geo.pw : geo.pw + w],)

    return Tensor._make(best, (x,), backward, "max_pool2d")
