"""2-D convolution and transposed convolution as im2col + matrix multiply.

Shape shorthand used below:
    N  images in the batch          C  input channels       O  output channels
    H, W   input height / width     Ho, Wo  output height / width
    kh, kw kernel height / width    K = C·kh·kw  (one column's length)

The idea (Chellapilla et al., 2006; Caffe's ``im2col``): copy every kh×kw
patch the kernel visits into one column of a matrix ``cols`` of shape
``(K, Ho·Wo)``. Then the whole convolution of one image is a single matrix
product::

    out (O, Ho·Wo) = weight.reshape(O, K) @ cols (K, Ho·Wo)

which runs at BLAS (or cuBLAS) speed. The backward pass is two more products
and the inverse of im2col, *col2im*, which adds each column back onto the
pixels it came from (patches overlap, so the additions accumulate)::

    d weight (O, K)     = d out (O, Ho·Wo) @ colsᵀ
    d cols   (K, Ho·Wo) = weight(O, K)ᵀ    @ d out      → col2im → d input

Building ``cols`` loops over the kh·kw kernel *taps*, never over pixels: for
tap (i, j), row block ``(C, i, j)`` of ``cols`` is one strided slice of the
padded input. A transposed convolution is exactly the backward-to-input of a
convolution, so it reuses the same two helpers in the opposite order.

For a batch, the columns of all n images sit side by side, ``(K, n·Ho·Wo)``,
so the whole batch is still *one* matrix product. (Many small products — one
per image, or per RoI in the detector's heads — are far slower: each BLAS
call has a fixed cost, and on a busy 2-core machine 64 small GEMMs took 70×
longer than one GEMM doing the same arithmetic.)

Memory: ``cols`` is kh·kw times larger than its image, so it is built for a
*chunk* of images at a time (``COLS_BUDGET_BYTES``), and it is rebuilt in the
backward pass rather than stored — the graph keeps only the input, as
PyTorch does. A 1×1 convolution with stride 1 needs no copy at all.
"""

from __future__ import annotations

from typing import NamedTuple

from minifpn import backend
from minifpn.autograd import Tensor, as_tensor, check_same_kind
from minifpn.backend import get_array_module
from minifpn.functional import conv_fast

#: Upper bound on one chunk's im2col buffer (a single image may exceed it).
#: 64 MiB keeps small-map layers (RoI heads) in few large GEMMs while big maps
#: go one image at a time.
COLS_BUDGET_BYTES = 64 * 2**20


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class ConvGeometry(NamedTuple):
    """Kernel size, stride, padding and dilation along (H, W)."""

    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int

    @classmethod
    def make(cls, kernel, stride, padding, dilation) -> ConvGeometry:
        return cls(*_pair(kernel), *_pair(stride), *_pair(padding), *_pair(dilation))

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        """Output size of a convolution (the same formula as PyTorch's docs)."""
        ho = (h + 2 * self.ph - self.dh * (self.kh - 1) - 1) // self.sh + 1
        wo = (w + 2 * self.pw - self.dw * (self.kw - 1) - 1) // self.sw + 1
        return ho, wo

    def is_pointwise(self) -> bool:
        """A 1×1, stride-1, unpadded conv: cols is the image itself."""
        return (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw) == (1, 1, 1, 1, 0, 0)

    def tap_slices(self, i: int, j: int, ho: int, wo: int):
        """The (rows, cols) of the padded input that kernel tap (i, j) visits."""
        r0, c0 = i * self.dh, j * self.dw
        return (
            slice(r0, r0 + self.sh * (ho - 1) + 1, self.sh),
            slice(c0, c0 + self.sw * (wo - 1) + 1, self.sw),
        )


def im2col(x, g: ConvGeometry, out_hw=None):
    """Image patches as columns: (n, C, H, W) → (n, C·kh·kw, Ho·Wo).

    ``out_hw`` limits the grid of kernel positions to the first (Ho, Wo)
    (default: every position that fits, ``g.out_size(H, W)``). The result is
    a view of memory laid out as ``(C·kh·kw, n, Ho·Wo)``, so
    :func:`batch_columns` can hand the whole batch to one GEMM without a copy.
    """
    n, c, h, w = x.shape
    ho, wo = out_hw or g.out_size(h, w)
    if g.is_pointwise() and (ho, wo) == (h, w):
        return x.reshape(n, c, h * w)  # a view: no copy at all
    xp = get_array_module(x)
    if g.ph or g.pw:
        x = xp.pad(x, ((0, 0), (0, 0), (g.ph, g.ph), (g.pw, g.pw)))
    cols = xp.empty((c, g.kh, g.kw, n, ho, wo), dtype=x.dtype)
    for i in range(g.kh):
        for j in range(g.kw):
            rows, columns = g.tap_slices(i, j, ho, wo)
            cols[:, i, j] = x[:, :, rows, columns].transpose(1, 0, 2, 3)  # (C, n, Ho, Wo)
    return cols.reshape(c * g.kh * g.kw, n, ho * wo).transpose(1, 0, 2)


def batch_columns(cols):
    """(n, K, L) columns → (K, n·L): every image's columns side by side, for one GEMM.

    Free for :func:`im2col`'s own output (its memory is already in this
    order); a copy for a 1×1 convolution's view of a batch of several images.
    """
    n, k, length = cols.shape
    return cols.transpose(1, 0, 2).reshape(k, n * length)


def unbatch_columns(columns, n: int):
    """(K, n·L) → an (n, K, L) view: the inverse of :func:`batch_columns`."""
    k = columns.shape[0]
    return columns.reshape(k, n, -1).transpose(1, 0, 2)


def col2im(cols, shape, g: ConvGeometry, out_hw=None):
    """The adjoint of :func:`im2col`: (n, C·kh·kw, Ho·Wo) → (n, C, H, W).

    Each column is added back onto the pixels it was copied from; where
    patches overlap, contributions add up. ``out_hw`` as in :func:`im2col`.
    """
    n, c, h, w = shape
    ho, wo = out_hw or g.out_size(h, w)
    if g.is_pointwise() and (ho, wo) == (h, w):
        return cols.reshape(n, c, h, w)
    xp = get_array_module(cols)
    blocks = cols.transpose(1, 0, 2).reshape(c, g.kh, g.kw, n, ho, wo)  # (C, kh, kw, n, Ho, Wo)
    padded = xp.zeros((n, c, h + 2 * g.ph, w + 2 * g.pw), dtype=cols.dtype)
    for i in range(g.kh):
        for j in range(g.kw):
            rows, columns = g.tap_slices(i, j, ho, wo)
            padded[:, :, rows, columns] += blocks[:, i, j].transpose(1, 0, 2, 3)
    return padded[:, :, g.ph : g.ph + h, g.pw : g.pw + w]


class _Paths(NamedTuple):
    """The three products a convolution is made of, done the plain or the fast way.

    For a chunk of images ``x`` ``(n, C, H, W)``, a weight ``(O, C, kh, kw)``
    and geometry ``g`` (no bias):

    * ``forward(x, weight, out, g)``: ``out`` ``(n, O, Ho, Wo)`` ← the convolution;
    * ``weight_gradient(x, grad, g)`` → ∂L/∂weight as ``(O, C·kh·kw)``;
    * ``input_gradient(grad, weight, out, g)``: ``out`` ``(n, C, H, W)`` ← ∂L/∂x.

    The output grid is ``out``'s / ``grad``'s: a transposed convolution may
    use fewer positions than ``g.out_size(H, W)``.
    """

    forward: object
    weight_gradient: object
    input_gradient: object


def _plain_forward(x, weight, out, g):
    """im2col, then ``(O, K) @ (K, n·L)``: one GEMM for the chunk, reordered into ``out``."""
    n, o = x.shape[0], weight.shape[0]
    cols = batch_columns(im2col(x, g, out.shape[2:]))  # (K, n·L)
    product = weight.reshape(o, -1) @ cols  # (O, n·L)
    out[...] = product.reshape(o, n, *out.shape[2:]).transpose(1, 0, 2, 3)
    return out


def _plain_weight_gradient(x, grad, g):
    """``(K, n·L) @ (n·L, O)``, transposed: the same product as ``grad @ colsᵀ``, in the
    orientation OpenBLAS runs fastest for a long inner dimension."""
    n, o = grad.shape[:2]
    cols = batch_columns(im2col(x, g, grad.shape[2:]))  # (K, n·L)
    return (cols @ batch_columns(grad.reshape(n, o, -1)).T).T


def _plain_input_gradient(grad, weight, out, g):
    """The gradient columns ``Wᵀ @ grad``, added back onto the image by col2im."""
    n, o = grad.shape[:2]
    grad_cols = weight.reshape(o, -1).T @ batch_columns(grad.reshape(n, o, -1))  # (K, n·L)
    out[...] = col2im(unbatch_columns(grad_cols, n), out.shape, g, grad.shape[2:])
    return out


#: The reference: this file's own im2col / col2im and one GEMM per chunk.
PLAIN = _Paths(_plain_forward, _plain_weight_gradient, _plain_input_gradient)
#: The same products, faster on a CPU: no padded copies, both cores, small
#: reused column buffers, no col2im at stride 1, per-image GEMMs on large
#: maps (see :mod:`minifpn.functional.conv_fast`).
FAST = _Paths(conv_fast.forward, conv_fast.weight_gradient, conv_fast.input_gradient)


def _paths() -> _Paths:
    return FAST if backend.fast_paths() else PLAIN


def _chunks(n: int, bytes_per_image: int):
    """Split range(n) into slices whose im2col buffers fit COLS_BUDGET_BYTES."""
    step = max(1, COLS_BUDGET_BYTES // max(bytes_per_image, 1))
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


def _check_conv_inputs(x, weight, bias, in_channels_axis, name):
    if x.ndim != 4:
        raise ValueError(f"{name}: input must be (N, C, H, W), got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"{name}: weight must be 4-D, got shape {weight.shape}")
    check_same_kind(x, weight, name)
    if x.shape[1] != weight.shape[in_channels_axis]:
        raise ValueError(
            f"{name}: input has {x.shape[1]} channels but weight {weight.shape} expects "
            f"{weight.shape[in_channels_axis]}"
        )
    if bias is not None:
        check_same_kind(x, bias, name)


def _images(array, count: int):
    """``(n, C, H, W)`` → its ``(n, C, H·W)`` view: each image as a matrix."""
    return array.reshape(count, array.shape[1], -1)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1) -> Tensor:
    """2-D cross-correlation, as ``torch.nn.functional.conv2d`` (groups=1 only).

    Args:
        x: ``(N, C, H, W)``.
        weight: ``(O, C, kh, kw)`` (OIHW).
        bias: ``(O,)`` or None.
        stride, padding, dilation: int or (h, w) pair; padding is zeros.

    Returns:
        ``(N, O, Ho, Wo)`` with ``Ho = (H + 2·pad − dil·(kh − 1) − 1) // stride + 1``.
    """
    x, weight = as_tensor(x), as_tensor(weight)
    bias = None if bias is None else as_tensor(bias)
    _check_conv_inputs(x, weight, bias, 1, "conv2d")
    xp = get_array_module(x.data)
    geo = ConvGeometry.make(weight.shape[2:], stride, padding, dilation)
    n, c, h, w = x.shape
    o = weight.shape[0]
    ho, wo = geo.out_size(h, w)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"conv2d: input {x.shape} is too small for kernel {weight.shape[2:]}")
    chunks = _chunks(n, weight.data[0].size * ho * wo * x.data.itemsize)  # K·L per image
    paths = _paths()

    out = xp.empty((n, o, ho, wo), dtype=x.dtype)
    for s in chunks:
        paths.forward(x.data[s], weight.data, out[s], geo)
    if bias is not None:
        out += bias.data.reshape(1, o, 1, 1)

    def backward(grad):
        gx = xp.empty_like(x.data) if x.requires_grad else None
        gw = xp.zeros((o, weight.data[0].size), dtype=weight.dtype)
        for s in chunks:  # the columns are rebuilt, not stored: the graph keeps only x
            gw += paths.weight_gradient(x.data[s], grad[s], geo)
            if gx is not None:
                paths.input_gradient(grad[s], weight.data, gx[s], geo)
        gb = None if bias is None else grad.sum(axis=(0, 2, 3))
        return gx, gw.reshape(weight.shape), gb

    parents = (x, weight) if bias is None else (x, weight, bias)
    return Tensor._make(out, parents, backward, "conv2d")


def conv_transpose2d(
    x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1
) -> Tensor:
    """Transposed convolution, as ``torch.nn.functional.conv_transpose2d`` (groups=1).

    The gradient of ``conv2d`` with respect to its input, used as a layer: it
    maps each input pixel to a kh×kw patch of the (larger) output.

    Args:
        x: ``(N, C, H, W)``.
        weight: ``(C, O, kh, kw)`` — in-channels first, as in PyTorch.
        bias: ``(O,)`` or None.
        stride, padding, output_padding, dilation: int or (h, w) pair.

    Returns:
        ``(N, O, Ho, Wo)`` with
        ``Ho = (H − 1)·stride − 2·pad + dil·(kh − 1) + output_padding + 1``.
    """
    x, weight = as_tensor(x), as_tensor(weight)
    bias = None if bias is None else as_tensor(bias)
    _check_conv_inputs(x, weight, bias, 0, "conv_transpose2d")
    xp = get_array_module(x.data)
    geo = ConvGeometry.make(weight.shape[2:], stride, padding, dilation)
    oph, opw = _pair(output_padding)
    if not (oph < max(geo.sh, geo.dh) and opw < max(geo.sw, geo.dw)):
        raise ValueError(
            f"conv_transpose2d: output_padding {output_padding} must be smaller than "
            f"stride or dilation (stride {stride}, dilation {dilation})"
        )
    n, c, h, w = x.shape
    o = weight.shape[1]
    ho = (h - 1) * geo.sh - 2 * geo.ph + geo.dh * (geo.kh - 1) + oph + 1
    wo = (w - 1) * geo.sw - 2 * geo.pw + geo.dw * (geo.kw - 1) + opw + 1
    # A transposed conv is conv2d's input gradient: the (C, O, kh, kw) weight is a
    # conv2d weight with O = C in-channels, mapping an (O, Ho, Wo) map to (C, H, W).
    chunks = _chunks(n, weight.data[0].size * h * w * x.data.itemsize)  # K·H·W per image
    paths = _paths()

    out = xp.empty((n, o, ho, wo), dtype=x.dtype)
    for s in chunks:
        paths.input_gradient(x.data[s], weight.data, out[s], geo)
    if bias is not None:
        out += bias.data.reshape(1, o, 1, 1)

    def backward(grad):
        gx = xp.empty_like(x.data) if x.requires_grad else None
        gw = xp.zeros((c, weight.data[0].size), dtype=weight.dtype)
        for s in chunks:
            gw += paths.weight_gradient(grad[s], x.data[s], geo)  # Σ x @ cols(grad)ᵀ
            if gx is not None:  # the adjoint of the forward pass: a convolution
                paths.forward(grad[s], weight.data, gx[s], geo)
        gb = None if bias is None else grad.sum(axis=(0, 2, 3))
        return gx, gw.reshape(weight.shape), gb

    parents = (x, weight) if bias is None else (x, weight, bias)
    return Tensor._make(out, parents, backward, "conv_transpose2d")
