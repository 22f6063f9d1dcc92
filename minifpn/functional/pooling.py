"""Max pooling.

Like convolution, pooling visits kh·kw kernel *taps*; for each tap we take
one strided slice of the (padded) input, so the loops run over the taps and
never over pixels. The forward pass remembers which tap won in every output
cell; the backward pass sends each output's gradient to that tap's pixel.
Windows may overlap (kernel 3, stride 2 in the ResNet stem), so a pixel can
win several windows: its gradients are added, one tap at a time.

Every (image, channel) map is pooled on its own, so on the CPU the maps are
cut into cache-sized blocks that both cores work through
(``backend.parallel_for``); the result is the same for any split.
"""

from __future__ import annotations

from minifpn import backend
from minifpn.autograd import Tensor, as_tensor
from minifpn.backend import get_array_module
from minifpn.functional.conv import ConvGeometry
from minifpn.functional.conv_fast import tap_windows


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
    # Each tap reads the image only where its window lies inside it (the rest
    # is −inf padding, which never wins): no padded copy of the input.
    taps = [window[2:] for window in tap_windows(geo, h, w, ho, wo)]  # row-major
    planes = n * c  # every (image, channel) map is pooled on its own
    source = x.data.reshape(planes, h, w)
    best = xp.empty((planes, ho, wo), dtype=x.dtype)  # the running maximum …
    winner = xp.empty((planes, ho, wo), dtype=xp.int16)  # … and the tap that holds it

    def pool(part):  # the maps in ``part``
        top, won = best[part], winner[part]
        top[...], won[...] = -xp.inf, 0  # tap 0 wherever it reads padding
        for t, (out_rows, out_cols, in_rows, in_cols) in enumerate(taps):
            here, window = top[:, out_rows, out_cols], source[part, in_rows, in_cols]
            if t == 0:
                here[...] = window
                continue
            better = window > here
            xp.copyto(here, window, where=better)
            xp.copyto(won[:, out_rows, out_cols], t, where=better)  # no host sync on a GPU

    # On the CPU, blocks of maps small enough for the cache, shared between threads.
    work = x.data.size + 2 * best.size
    backend.parallel_for(planes, pool, elements=work, xp=xp, cache_blocks=True)

    def backward(g):
        grad = xp.zeros(source.shape, dtype=g.dtype)
        g_planes = g.reshape(planes, ho, wo)

        def scatter(part):
            for t, (out_rows, out_cols, in_rows, in_cols) in enumerate(taps):
                region = grad[part, in_rows, in_cols]
                wins = winner[part, out_rows, out_cols] == t
                region += g_planes[part, out_rows, out_cols] * wins

        backend.parallel_for(planes, scatter, elements=work, xp=xp, cache_blocks=True)
        return (grad.reshape(x.shape),)

    return Tensor._make(best.reshape(n, c, ho, wo), (x,), backward, "max_pool2d")
