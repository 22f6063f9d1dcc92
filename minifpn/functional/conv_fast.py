"""The fast paths of :mod:`minifpn.functional.conv`: same numbers, less time.

``conv.py``'s plain path — :func:`~minifpn.functional.conv.im2col`, one GEMM,
:func:`~minifpn.functional.conv.col2im` — is the reference: short, and what a
learner reads. The three functions here (:func:`forward`,
:func:`weight_gradient`, :func:`input_gradient`) compute the same products
(the tests compare them, gradients included, on every device) but avoid
what made the plain path slow on a 2-core CPU, where a 3×3 layer spent ~30 %
of its time copying:

1. **No padded copy of the input.** For kernel tap (i, j) only part of the
   output grid reads pixels inside the image; that *window* is one strided
   slice of the unpadded input, and the rest of the tap's rows of the
   columns are a few thin strips of zeros along the borders (:func:`tap_window`).
2. **Both cores.** The copies are split between threads by channel (or, for
   the 3-channel stem, by kernel tap) with :func:`minifpn.backend.parallel_for`;
   every thread writes only its own rows of the columns, or its own channels
   of the image, so the result does not depend on the thread count.
3. **Small, reused column buffers.** The columns are built for a *band* of
   output rows at a time (at most :data:`BAND_BUDGET_BYTES`; the FPN's 3×3
   conv on P2 of a 512² image needs 151 MB for all of them) in a scratch
   buffer every layer reuses (:func:`minifpn.backend.scratch`): less memory,
   and no fresh pages to fault in on every call.
4. **No col2im at stride 1.** The gradient of a stride-1 convolution with
   respect to its input is itself a convolution — of the output gradient
   with the kernel flipped and transposed, padded by ``dil·(k − 1) − pad`` —
   so :func:`input_gradient` is :func:`forward` again, with im2col's copies
   instead of col2im's slower accumulating adds.
5. **Fewer multiplications for 3×3 layers.** A 3×3, stride-1 convolution
   with at least :data:`WINOGRAD_MIN_CHANNELS` input channels on a map of at
   least :data:`WINOGRAD_MIN_SIDE` pixels a side is computed by Winograd's
   F(2×2, 3×3) (:func:`winograd_forward`, :func:`winograd_weight_gradient`):
   2.25× fewer multiply-adds, for three small linear transforms of tiles.
6. **No transposes around the GEMM when images are large.** A chunk of n
   images is multiplied image by image (n GEMMs straight from and into the
   arrays' own layouts) when each image has at least
   :data:`PER_IMAGE_GEMM_MIN_COLUMNS` output pixels; small maps (the RoI
   heads: 128 RoIs of 7×7) still go through one GEMM over ``(K, n·L)``, and
   a 1×1 convolution of a large batch needs no columns at all.

On CuPy the same code runs unsplit (one call per tap) and the scratch
buffer is an ordinary ``empty`` from CuPy's pool.

Shapes as in ``conv.py``: n images, C channels in, O out, K = C·kh·kw,
L = Ho·Wo (or a band's share of it).
"""

from __future__ import annotations

import functools

import numpy as np

from minifpn import backend
from minifpn.backend import get_array_module

#: From this many output pixels per image (a 32×32 map), a chunk of images is
#: multiplied one image at a time: each GEMM is then large enough to run at
#: full speed, and no operand needs reordering. Below it, per-image GEMMs
#: are dominated by each call's fixed cost (64 RoIs of 7×7: ~70× slower).
PER_IMAGE_GEMM_MIN_COLUMNS = 32 * 32
#: A 3×3 stride-1 conv takes Winograd's path from this many input channels and
#: output maps this many pixels high and wide. Measured forward + backward on
#: the 2-core machine (one thread): 64 channels at 32×32, −28 %; 256 channels
#: on 64 RoIs of 14×14, −37 %; but 7×7 and 8×8 maps, +5–10 % (the tile
#: transforms' fixed costs outweigh the savings), 64 channels at 16×16, even.
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_MIN_SIDE = 12
#: Largest column buffer one band of output rows may fill: the GEMMs stay
#: large (a band of a 3×3 256→256 conv is ≥ 3,600 columns), the buffer small.
BAND_BUDGET_BYTES = 32 * 2**20


def tap_window(out_size: int, in_size: int, offset: int, stride: int):
    """Where one kernel tap reads inside the image, along one axis.

    Output position o reads input position ``o·stride + offset`` (offset =
    tap index · dilation − padding). Returns ``(out_slice, in_slice)``: the
    outputs whose input lies in ``[0, in_size)`` and the inputs they read —
    both empty when none does. Outputs outside ``out_slice`` read padding.
    """
    lo = max(0, -(offset // stride))  # first o with o·stride + offset ≥ 0
    hi = min(out_size, (in_size - 1 - offset) // stride + 1)  # past the last one inside
    if hi <= lo:
        return slice(0, 0), slice(0, 0)
    return slice(lo, hi), slice(lo * stride + offset, (hi - 1) * stride + offset + 1, stride)


def tap_windows(g, h: int, w: int, ho: int, wo: int, first_row: int = 0) -> list:
    """``[(i, j, out_rows, out_cols, in_rows, in_cols)]`` for every kernel tap, row-major.

    For the ``ho`` output rows from ``first_row`` on (a band); ``out_rows``
    counts from the band's first row.
    """
    rows = [tap_window(ho, h, first_row * g.sh + i * g.dh - g.ph, g.sh) for i in range(g.kh)]
    cols = [tap_window(wo, w, j * g.dw - g.pw, g.sw) for j in range(g.kw)]
    return [(i, j, *rows[i][:1], *cols[j][:1], rows[i][1], cols[j][1])
            for i in range(g.kh) for j in range(g.kw)]


def _over_threads(c: int, taps: list, work, elements: int, xp) -> None:
    """Run ``work(channels, taps)`` on parts of the channels (or of the taps) in parallel.

    By channel when there are enough of them; a 3-channel stem is split by
    kernel tap instead (each tap owns its own rows of the columns).
    """
    if c >= 8:
        backend.parallel_for(c, lambda part: work(part, taps), elements=elements, xp=xp)
    else:
        backend.parallel_for(len(taps), lambda part: work(slice(None), taps[part]),
                             elements=elements, xp=xp)


def im2col_fast(x, g, out_hw=None, rows=None):
    """:func:`~minifpn.functional.conv.im2col`'s result, built faster (module docstring).

    ``(n, C, H, W)`` → an ``(n, K, L)`` view of a scratch buffer laid out as
    ``(K, n, L)`` — valid until the next convolution on this thread; never
    keep or return it. ``rows`` (a slice of the output rows) builds the
    columns of that band only.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    ho, wo = out_hw or g.out_size(h, w)
    rows = rows or slice(0, ho)
    band = rows.stop - rows.start
    cols = backend.scratch("im2col", (c, g.kh, g.kw, n, band, wo), x.dtype, xp)
    source = x.transpose(1, 0, 2, 3)  # (C, n, H, W): the columns' channel-major order

    def fill(channels, taps):
        for i, j, out_rows, out_cols, in_rows, in_cols in taps:
            block = cols[channels, i, j]  # (c', n, band, Wo)
            block[..., out_rows, out_cols] = source[channels, :, in_rows, in_cols]
            # Positions that read padding: the strips above, below, left and right.
            block[..., : out_rows.start, :] = 0
            block[..., out_rows.stop :, :] = 0
            block[..., out_rows, : out_cols.start] = 0
            block[..., out_rows, out_cols.stop :] = 0

    _over_threads(c, tap_windows(g, h, w, band, wo, rows.start), fill, cols.size, xp)
    return cols.reshape(c * g.kh * g.kw, n, band * wo).transpose(1, 0, 2)


def col2im_fast(cols, out, g, out_hw=None):
    """:func:`~minifpn.functional.conv.col2im` into ``out`` ``(n, C, H, W)``, faster.

    ``cols`` is ``(n, K, L)`` (any strides). ``out`` is overwritten: it is
    zeroed, then every tap's window is added onto the pixels it came from,
    without a padded buffer, split between threads by channel.
    """
    xp = get_array_module(cols)
    n, c, h, w = out.shape
    ho, wo = out_hw or g.out_size(h, w)
    blocks = cols.transpose(1, 0, 2).reshape(c, g.kh, g.kw, n, ho, wo)  # a view for conv's columns
    target = out.transpose(1, 0, 2, 3)  # (C, n, H, W) view

    def accumulate(part, taps):
        mine = target[part]
        mine[...] = 0
        for i, j, out_rows, out_cols, in_rows, in_cols in taps:
            pixels = mine[:, :, in_rows, in_cols]
            xp.add(pixels, blocks[part, i, j][..., out_rows, out_cols], out=pixels)

    taps = tap_windows(g, h, w, ho, wo)
    # Taps may overlap on the image (stride < kernel): only channels split safely.
    backend.parallel_for(c, lambda part: accumulate(part, taps), elements=cols.size, xp=xp)
    return out


def batched_matmul(a, b, out):
    """``out[i] = a @ b[i]`` for ``a`` ``(M, K)``, ``b`` ``(n, K, L)`` → ``out`` ``(n, M, L)``.

    Image by image when the images are large (n GEMMs, no copies); else one
    GEMM ``a @ (K, n·L)`` — free to form for im2col's columns, whose memory
    is ``(K, n, L)`` — and one transposing copy into ``out``.
    """
    xp = get_array_module(b)
    n, k, length = b.shape
    if n == 1 or length >= PER_IMAGE_GEMM_MIN_COLUMNS:
        return xp.matmul(a, b, out=out)
    side_by_side = b.transpose(1, 0, 2).reshape(k, n * length)  # a view for im2col's columns
    out[...] = (a @ side_by_side).reshape(a.shape[0], n, length).transpose(1, 0, 2)
    return out


def _weight_product(cols, grad):
    """``Σ_i grad[i] @ cols[i]ᵀ`` → ``(M, K)`` for ``grad`` ``(n, M, L)``, ``cols`` ``(n, K, L)``.

    Computed as ``(cols @ gradᵀ)ᵀ``, the orientation OpenBLAS runs fastest
    for a long inner dimension L; image by image for large images (as
    :func:`batched_matmul`), else one GEMM over the columns side by side.
    """
    xp = get_array_module(cols)
    n, k, length = cols.shape
    if n == 1 or length >= PER_IMAGE_GEMM_MIN_COLUMNS:
        return xp.matmul(cols, grad.transpose(0, 2, 1)).sum(axis=0).T
    side_by_side = cols.transpose(1, 0, 2).reshape(k, n * length)
    grad_columns = grad.transpose(1, 0, 2).reshape(grad.shape[1], n * length)  # a copy
    return (side_by_side @ grad_columns.T).T


def _bands(n: int, ho: int, wo: int, k: int, itemsize: int) -> list:
    """Slices of the output rows whose columns fit :data:`BAND_BUDGET_BYTES`."""
    step = max(1, BAND_BUDGET_BYTES // max(n * k * wo * itemsize, 1))
    return [slice(r, min(r + step, ho)) for r in range(0, ho, step)]


def _pointwise(g, in_hw, out_hw) -> bool:
    """A 1×1, stride-1, unpadded conv: its columns are the images themselves."""
    return g.is_pointwise() and tuple(in_hw) == tuple(out_hw)


def forward(x, weight, out, g):
    """``out`` ``(n, O, Ho, Wo)`` ← the convolution of ``x`` ``(n, C, H, W)`` with ``weight``.

    No bias. The output grid is ``out``'s (at most ``g.out_size(H, W)``).
    """
    n, c, h, w = x.shape
    o, (ho, wo) = weight.shape[0], out.shape[2:]
    w2d = weight.reshape(o, -1)  # (O, K)
    if _pointwise(g, (h, w), (ho, wo)):
        return batched_matmul(w2d, x.reshape(n, c, h * w), out.reshape(n, o, ho * wo))
    if _winograd_applies(g, c, (ho, wo)):
        return winograd_forward(x, weight, out, g)
    for rows in _bands(n, ho, wo, w2d.shape[1], x.dtype.itemsize):
        cols = im2col_fast(x, g, (ho, wo), rows)  # (n, K, band·Wo)
        batched_matmul(w2d, cols, out[:, :, rows].reshape(n, o, -1))  # a view: rows × Wo
    return out


def weight_gradient(x, grad, g):
    """∂L/∂weight as ``(O, K)``: ``Σ_i grad[i] @ cols(x)[i]ᵀ``, band by band."""
    n, c, h, w = x.shape
    o, (ho, wo) = grad.shape[1], grad.shape[2:]
    if _pointwise(g, (h, w), (ho, wo)):
        return _weight_product(x.reshape(n, c, h * w), grad.reshape(n, o, ho * wo))
    if _winograd_applies(g, c, (ho, wo)):
        return winograd_weight_gradient(x, grad, g)
    total = None
    for rows in _bands(n, ho, wo, c * g.kh * g.kw, x.dtype.itemsize):
        part = _weight_product(im2col_fast(x, g, (ho, wo), rows),
                               grad[:, :, rows].reshape(n, o, -1))
        total = part if total is None else total + part
    return total


def input_gradient(grad, weight, out, g):
    """``out`` ``(n, C, H, W)`` ← ∂L/∂x, from ``grad`` ``(n, O, Ho, Wo)`` and the weight.

    Stride 1: a correlation of the output gradient with the flipped,
    transposed kernel (module docstring, point 4) — :func:`forward` again.
    Other strides: the gradient columns ``Wᵀ @ grad``, added back by
    :func:`col2im_fast`.
    """
    xp = get_array_module(grad)
    o, c, kh, kw = weight.shape
    n, _, h, w = out.shape
    ho, wo = grad.shape[2:]
    if _pointwise(g, (h, w), (ho, wo)):
        return batched_matmul(weight.reshape(o, c).T, grad.reshape(n, o, -1), out.reshape(n, c, -1))
    flipped = type(g)(kh, kw, 1, 1, g.dh * (kh - 1) - g.ph, g.dw * (kw - 1) - g.pw, g.dh, g.dw)
    if (g.sh, g.sw) == (1, 1) and min(flipped.ph, flipped.pw) >= 0 \
            and flipped.out_size(ho, wo) == (h, w):
        kernel = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (C, O, kh, kw)
        return forward(grad, kernel, out, flipped)
    grad_cols = backend.scratch("im2col", (n, c * kh * kw, ho * wo), grad.dtype, xp)
    batched_matmul(weight.reshape(o, -1).T, grad.reshape(n, o, -1), grad_cols)  # (n, K, L)
    return col2im_fast(grad_cols, out, g, (ho, wo))


# ---------------------------------------------------------------------------
# Winograd's F(2×2, 3×3) (Lavin & Gray, "Fast Algorithms for Convolutional
# Neural Networks", 2016). For a 4×4 input tile d and a 3×3 kernel w, the 2×2
# outputs of the tile are  Y = Aᵀ [(G w Gᵀ) ⊙ (Bᵀ d B)] A  with the matrices
# below: 16 multiplications instead of 36.
# ---------------------------------------------------------------------------
_WINOGRAD_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_WINOGRAD_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
_WINOGRAD_AT = ((1, 1, 1, 0), (0, 1, -1, -1))


def _winograd_applies(g, channels: int, out_hw) -> bool:
    """A 3×3, stride-1, undilated conv, wide and large enough (WINOGRAD_MIN_*)."""
    return (g.kh, g.kw, g.sh, g.sw, g.dh, g.dw) == (3, 3, 1, 1, 1, 1) \
        and channels >= WINOGRAD_MIN_CHANNELS and min(out_hw) >= WINOGRAD_MIN_SIDE


@functools.lru_cache(maxsize=8)
def _winograd_transforms(xp, dtype):
    """``(Bᵀ⊗Bᵀ (16, 16), G⊗G (16, 9), Aᵀ⊗Aᵀ (4, 16))``: the transforms of flattened tiles."""
    return tuple(xp.asarray(np.kron(m, m), dtype=dtype)
                 for m in (_WINOGRAD_BT, _WINOGRAD_G, _WINOGRAD_AT))


def winograd_forward(x, weight, out, g):
    """:func:`forward` of a 3×3, stride-1, undilated conv by Winograd's F(2×2, 3×3).

    Summed over input channels, the tile formula above is 16 matrix products,
    one per position f of the 4×4 transformed tile::

        M_f (O, T) = U_f (O, C) @ V_f (C, T)     U = G w Gᵀ,  V = Bᵀ d B,  Y = Aᵀ M A

    for the T tiles (2×2 outputs each, so 2.25× fewer multiply-adds than the
    9·C per output of im2col). The 4×4 tiles at stride 2 are exactly the
    columns of a 4×4, stride-2 im2col (:func:`im2col_fast`), and each
    transform of flattened tiles is a small matrix product (the Kronecker
    forms of B, G and A): im2col and four GEMMs, in bands of tile rows.
    """
    xp = get_array_module(x)
    n, c = x.shape[:2]
    o, (ho, wo) = weight.shape[0], out.shape[2:]
    ty, tx = (ho + 1) // 2, (wo + 1) // 2  # tiles down and across
    bt, gg, at = _winograd_transforms(xp, x.dtype)
    u = (gg @ weight.reshape(o * c, 9).T).reshape(16, o, c)  # G w Gᵀ per channel pair
    for rows, v in _winograd_input_tiles(x, g, ty, tx, bt):  # V: (C, 16, n·T)
        m = xp.matmul(u, v.transpose(1, 0, 2))  # the 16 products: (16, O, n·T)
        y = (at @ m.reshape(16, -1)).reshape(2, 2, o, n, -1, tx)  # Aᵀ M A: 2×2 per tile
        for a in range(2):  # output rows 2t + a, columns 2s + b of this band's tiles
            out_rows = slice(2 * rows.start + a, min(2 * rows.stop, ho), 2)
            for b in range(2):
                block = out[:, :, out_rows, b::2]  # (n, O, rows, cols): a view
                block[...] = y[a, b, :, :, : block.shape[2], : block.shape[3]].transpose(1, 0, 2, 3)
    return out


def _winograd_input_tiles(x, g, ty, tx, bt):
    """``(band of tile rows, V = Bᵀ d B (C, 16, n·T))`` for bands of the input's tiles."""
    xp = get_array_module(x)
    n, c = x.shape[:2]
    tiles = g._replace(kh=4, kw=4, sh=2, sw=2)  # 4×4 windows, 2 apart: the input tiles
    for rows in _bands(n, ty, tx, 16 * c, x.dtype.itemsize):
        d = im2col_fast(x, tiles, (ty, tx), rows)  # (n, C·16, T), memory (C, 16, n·T)
        yield rows, xp.matmul(bt, d.transpose(1, 0, 2).reshape(c, 16, -1))


def winograd_weight_gradient(x, grad, g):
    """:func:`weight_gradient` of a 3×3, stride-1, undilated conv through Winograd's tiles.

    The forward pass is linear in U = G w Gᵀ, so the chain rule runs back
    through the same transforms: with the output gradient cut into 2×2
    tiles dY, ``dM = A dY Aᵀ``, ``dU_f = dM_f @ V_fᵀ`` (16 GEMMs, again
    2.25× fewer multiply-adds than im2col's) and ``dw = Gᵀ dU G``.
    """
    xp = get_array_module(x)
    n, c = x.shape[:2]
    o, (ho, wo) = grad.shape[1], grad.shape[2:]
    ty, tx = (ho + 1) // 2, (wo + 1) // 2
    bt, gg, at = _winograd_transforms(xp, x.dtype)
    grad_tiles = xp.zeros((2, 2, o, n, ty, tx), dtype=grad.dtype)  # dY, zero past the edges
    for a in range(2):
        for b in range(2):
            part = grad[:, :, a::2, b::2].transpose(1, 0, 2, 3)  # (O, n, rows, cols)
            grad_tiles[a, b, :, :, : part.shape[2], : part.shape[3]] = part
    du = 0
    for rows, v in _winograd_input_tiles(x, g, ty, tx, bt):
        dm = (at.T @ grad_tiles[:, :, :, :, rows].reshape(4, -1)).reshape(16, o, -1)  # A dY Aᵀ
        du = du + xp.matmul(dm, v.transpose(1, 2, 0))  # (16, O, n·T) @ (16, n·T, C)
    return (gg.T @ du.reshape(16, o * c)).T.reshape(o, c * 9)  # Gᵀ dU G, as (O, C·kh·kw)
