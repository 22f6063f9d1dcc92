"""interpolate (nearest, bilinear) against a per-pixel loop over PyTorch's formulas.

The reference computes, for every output pixel separately, the source
position PyTorch's kernels use (aten/src/ATen/native/UpSample.h):

* nearest (legacy): ``src = min(floor(dst · scale), in − 1)``, where
  ``scale = in / out`` (or ``1 / scale_factor`` when one is given). PyTorch
  holds ``scale`` in a C ``float`` and floors the float32 product
  (``floorf``), so the reference does the same in float32.
* bilinear, ``align_corners=False``: ``src = max((dst + 0.5)·scale − 0.5, 0)``;
  ``align_corners=True``: ``src = dst·(in − 1)/(out − 1)``; then
  ``i0 = floor(src)``, ``i1 = min(i0 + 1, in − 1)``, ``λ = src − i0``.
"""

import math

import numpy as np
import pytest

import minifpn
import minifpn.functional as F
from minifpn import Tensor
from tests.conftest import randn


def nearest_source(dst, in_size, out_size, scale_factor):
    if scale_factor is None:
        scale = np.float32(in_size) / np.float32(out_size)
    else:
        scale = np.float32(1.0 / scale_factor)
    return min(int(np.floor(np.float32(dst) * scale)), in_size - 1)


def linear_source(dst, in_size, out_size, scale_factor, align_corners):
    if align_corners:
        src = dst * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    else:
        scale = 1.0 / scale_factor if scale_factor is not None else in_size / out_size
        src = max((dst + 0.5) * scale - 0.5, 0.0)
    i0 = math.floor(src)
    return i0, min(i0 + 1, in_size - 1), src - i0


def naive_interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=False):
    n, c, h, w = x.shape
    sf = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * 2
    if size is None:
        size = (math.floor(h * sf[0]), math.floor(w * sf[1]))
    elif isinstance(size, int):
        size = (size, size)
    ho, wo = size
    out = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            if mode == "nearest":
                si, sj = nearest_source(i, h, ho, sf[0]), nearest_source(j, w, wo, sf[1])
                out[:, :, i, j] = x[:, :, si, sj]
            else:
                r0, r1, a = linear_source(i, h, ho, sf[0], align_corners)
                c0, c1, b = linear_source(j, w, wo, sf[1], align_corners)
                out[:, :, i, j] = (
                    (1 - a) * (1 - b) * x[:, :, r0, c0]
                    + (1 - a) * b * x[:, :, r0, c1]
                    + a * (1 - b) * x[:, :, r1, c0]
                    + a * b * x[:, :, r1, c1]
                )
    return out


# (input H, W), size or None, scale_factor or None
NEAREST_CASES = [
    ((4, 6), (8, 12), None),  # exact 2x
    ((7, 7), (13, 13), None),  # FPN's odd-size upsampling
    ((13, 13), (7, 7), None),  # downsampling skips rows
    ((5, 7), (3, 10), None),  # different ratios per axis
    ((3, 4), 5, None),  # one int for both axes
    ((4, 5), None, 2),
    ((6, 5), None, 0.5),
    ((5, 4), None, 1.5),
    ((3, 4), None, (2, 3)),
    ((40, 2), None, 1.3),  # float32 rounding decides row 39 (see below)
]


@pytest.mark.parametrize("case", NEAREST_CASES, ids=str)
def test_nearest_matches_reference(device, rng, case):
    (h, w), size, scale_factor = case
    x = randn(rng, 2, 3, h, w, device=device)
    out = F.interpolate(x, size=size, scale_factor=scale_factor, mode="nearest")
    expected = naive_interpolate(x.numpy(), size, scale_factor, "nearest")
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out.numpy(), expected)


def test_nearest_golden_values():
    x = Tensor(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    np.testing.assert_array_equal(
        F.interpolate(x, scale_factor=2).numpy()[0, 0],
        [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]],
    )
    row = Tensor(np.array([[[[10.0, 20.0, 30.0]]]]))
    # 3 -> 5: src = floor(dst·3/5) = 0, 0, 1, 1, 2;  3 -> 2: floor(dst·1.5) = 0, 1
    np.testing.assert_array_equal(
        F.interpolate(row, size=(1, 5)).numpy()[0, 0, 0], [10, 10, 20, 20, 30]
    )
    np.testing.assert_array_equal(F.interpolate(row, size=(1, 2)).numpy()[0, 0, 0], [10, 20])


def test_nearest_source_index_uses_float32_like_pytorch():
    """PyTorch computes floorf(dst · (float)scale); float64 gives other rows here.

    6 -> 74: 37 · (6/74) is exactly 3, but float32(6/74) rounds down, so
    PyTorch reads row 2. With scale_factor=1.3 on 40 rows: 39 · float32(1/1.3)
    rounds to 30.0, while float64 gives 29.999… and would read row 29.
    """
    col = Tensor(np.arange(6.0).reshape(1, 1, 6, 1))
    assert F.interpolate(col, size=(74, 1)).numpy()[0, 0, 37, 0] == 2.0
    col = Tensor(np.arange(40.0).reshape(1, 1, 40, 1))
    out = F.interpolate(col, scale_factor=1.3)
    assert out.shape == (1, 1, 52, 1)
    assert out.numpy()[0, 0, 39, 0] == 30.0


BILINEAR_CASES = [
    ((4, 6), (8, 12), None),
    ((7, 5), (13, 3), None),
    ((13, 4), (7, 9), None),
    ((1, 3), (4, 5), None),  # a single input row
    ((3, 3), (1, 2), None),  # a single output row
    ((5, 4), None, 1.5),  # scale = 1/1.5, not in/out = 5/7
    ((4, 6), None, (2, 0.5)),
]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("case", BILINEAR_CASES, ids=str)
def test_bilinear_matches_reference(device, rng, case, align_corners):
    (h, w), size, scale_factor = case
    x = randn(rng, 2, 3, h, w, device=device)
    out = F.interpolate(
        x, size=size, scale_factor=scale_factor, mode="bilinear", align_corners=align_corners
    )
    expected = naive_interpolate(x.numpy(), size, scale_factor, "bilinear", align_corners)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_bilinear_golden_values():
    """2x2 -> 4x4, worked out by hand (PyTorch gives the same numbers)."""
    x = Tensor(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    out = F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False)
    # src = max((dst + 0.5)/2 − 0.5, 0) = 0, 0.25, 0.75, 1.25 (→ clamps to pixel 1)
    expected = [
        [1.0, 1.25, 1.75, 2.0],
        [1.5, 1.75, 2.25, 2.5],
        [2.5, 2.75, 3.25, 3.5],
        [3.0, 3.25, 3.75, 4.0],
    ]
    np.testing.assert_allclose(out.numpy()[0, 0], expected, rtol=1e-12)
    out = F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=True)
    # src = dst/3 = 0, 1/3, 2/3, 1
    expected = np.array([[3, 4, 5, 6], [5, 6, 7, 8], [7, 8, 9, 10], [9, 10, 11, 12]]) / 3
    np.testing.assert_allclose(out.numpy()[0, 0], expected, rtol=1e-12)


def test_default_bilinear_is_align_corners_false(rng):
    x = randn(rng, 1, 1, 3, 4)
    a = F.interpolate(x, size=(5, 7), mode="bilinear")
    b = F.interpolate(x, size=(5, 7), mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


GRAD_CASES = [
    dict(size=(8, 6), mode="nearest"),
    dict(size=(5, 7), mode="nearest"),
    dict(size=(2, 2), mode="nearest"),  # downsampling: some inputs get no gradient
    dict(scale_factor=2, mode="nearest"),
    dict(scale_factor=1.5, mode="nearest"),
    dict(size=(7, 5), mode="bilinear", align_corners=False),
    dict(size=(2, 5), mode="bilinear", align_corners=False),
    dict(size=(7, 5), mode="bilinear", align_corners=True),
    dict(size=(3, 2), mode="bilinear", align_corners=True),
    dict(scale_factor=2, mode="bilinear", align_corners=False),
    dict(scale_factor=(1.5, 0.5), mode="bilinear", align_corners=True),
]


@pytest.mark.parametrize("kwargs", GRAD_CASES, ids=str)
def test_interpolate_gradcheck(device, rng, kwargs):
    x = randn(rng, 2, 2, 4, 3, device=device)
    assert minifpn.gradcheck(lambda t: F.interpolate(t, **kwargs), (x,))


def test_nearest_2x_gradient_hand_computed():
    """Each input pixel is copied into a 2x2 block: its gradient is the block's sum."""
    x = Tensor(np.zeros((1, 1, 2, 2)), requires_grad=True)
    g = np.arange(16.0).reshape(1, 1, 4, 4)
    F.interpolate(x, scale_factor=2).backward(g)
    np.testing.assert_array_equal(
        x.grad[0, 0], [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]]
    )


def test_interpolate_float32_and_errors(rng):
    x = randn(rng, 1, 2, 3, 3, dtype=np.float32)
    for kwargs in (dict(size=(5, 4)), dict(size=(5, 4), mode="bilinear")):
        out = F.interpolate(x, **kwargs)
        assert out.dtype == np.float32
        x.grad = None
        out.sum().backward()
        assert x.grad.dtype == np.float32
    with pytest.raises(ValueError):
        F.interpolate(x, size=4, scale_factor=2)
    with pytest.raises(ValueError):
        F.interpolate(x)
    with pytest.raises(ValueError):
        F.interpolate(x, size=4, mode="bicubic")
    with pytest.raises(ValueError):
        F.interpolate(x, size=4, mode="nearest", align_corners=True)
