"""max_pool2d against a naive loop reference, its gradient and its tie rule."""

import numpy as np
import pytest

import minifpn
import minifpn.functional as F
from minifpn import Tensor


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def naive_max_pool2d(x, kernel, stride=None, padding=0, dilation=1):
    """Loop over output pixels; the window reads −inf outside the input."""
    (kh, kw) = pair(kernel)
    (sh, sw) = pair(kernel if stride is None else stride)
    (ph, pw), (dh, dw) = pair(padding), pair(dilation)
    n, c, h, w = x.shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.full((n, c, ho, wo), -np.inf)
    for i in range(ho):
        for j in range(wo):
            for p in range(kh):
                for q in range(kw):
                    r, s = i * sh - ph + p * dh, j * sw - pw + q * dw
                    if 0 <= r < h and 0 <= s < w:
                        out[:, :, i, j] = np.maximum(out[:, :, i, j], x[:, :, r, s])
    return out


def distinct(rng, *shape, device="cpu"):
    """Values 0.1 apart in random order (negative ones too): no ties anywhere."""
    data = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 2.0
    return Tensor(data.astype(np.float64), requires_grad=True, device=device)


# (input H, W), kernel, stride, padding, dilation
POOL_CASES = [
    ((7, 6), 3, 2, 1, 1),  # ResNet stem: overlapping windows, −inf padding
    ((7, 5), 1, 2, 0, 1),  # FPN's P6: subsampling
    ((6, 8), 2, 2, 0, 1),
    ((7, 7), 2, 2, 0, 1),  # odd size: the last row/column is dropped
    ((5, 6), 3, 1, 1, 1),  # heavily overlapping
    ((6, 7), (3, 2), (1, 2), (1, 0), 1),  # asymmetric
    ((7, 7), 2, 1, 0, 2),  # dilated
]


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool2d_matches_naive_loops(device, rng, case):
    (h, w), kernel, stride, padding, dilation = case
    x = Tensor(rng.standard_normal((2, 3, h, w)), device=device)
    out = F.max_pool2d(x, kernel, stride, padding, dilation)
    expected = naive_max_pool2d(x.numpy(), kernel, stride, padding, dilation)
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out.numpy(), expected)


def test_padding_is_minus_infinity_not_zero():
    """Windows of [[-1,-2,-3],[-4,-5,-6],[-7,-8,-9]]: zero padding would give 0s."""
    x = Tensor(-np.arange(1.0, 10.0).reshape(1, 1, 3, 3))  # all negative
    out = F.max_pool2d(x, 3, 2, 1)
    # (0,0) reads {-1,-2,-4,-5}; (0,1) {-2,-3,-5,-6}; (1,0) {-4,-5,-7,-8}; (1,1) {-5,-6,-8,-9}
    np.testing.assert_array_equal(out.numpy(), [[[[-1.0, -2.0], [-4.0, -5.0]]]])


def test_stride_defaults_to_kernel():
    x = Tensor(np.arange(16.0).reshape(1, 1, 4, 4))
    np.testing.assert_array_equal(F.max_pool2d(x, 2).numpy(), [[[[5.0, 7.0], [13.0, 15.0]]]])


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool2d_gradcheck(device, rng, case):
    (h, w), kernel, stride, padding, dilation = case
    x = distinct(rng, 2, 2, h, w, device=device)
    assert minifpn.gradcheck(lambda t: F.max_pool2d(t, kernel, stride, padding, dilation), (x,))


def test_overlapping_windows_add_up_at_a_shared_winner():
    """The centre of a 3x3 map wins all four 2x2 windows (stride 1)."""
    x = Tensor(
        np.array([[[[0.0, 1.0, 0.0], [2.0, 9.0, 3.0], [0.0, 4.0, 0.0]]]]), requires_grad=True
    )
    out = F.max_pool2d(x, 2, 1)
    np.testing.assert_array_equal(out.numpy(), np.full((1, 1, 2, 2), 9.0))
    out.backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    expected = np.zeros((1, 1, 3, 3))
    expected[0, 0, 1, 1] = 10.0
    np.testing.assert_array_equal(x.grad, expected)


def test_ties_send_the_gradient_to_the_first_tap_in_row_major_order():
    x = Tensor(np.array([[[[5.0, 5.0], [5.0, 5.0]], [[1.0, 7.0], [7.0, 2.0]]]]), requires_grad=True)
    F.max_pool2d(x, 2).backward(np.array([[[[3.0]], [[4.0]]]]))
    expected = np.array([[[[3.0, 0.0], [0.0, 0.0]], [[0.0, 4.0], [0.0, 0.0]]]])
    np.testing.assert_array_equal(x.grad, expected)


def test_tie_rule_in_overlapping_padded_windows():
    """Kernel 3, stride 2, padding 1 on a 3x3 map of equal values.

    Output (0, 0) reads rows/cols −1..1: its first in-bounds tap is (0, 0).
    Output (0, 1) reads cols 1..3: first tap (0, 1).  Output (1, 0): (1, 0).
    Output (1, 1): (1, 1).
    """
    x = Tensor(np.ones((1, 1, 3, 3)), requires_grad=True)
    F.max_pool2d(x, 3, 2, 1).backward(np.array([[[[1.0, 10.0], [100.0, 1000.0]]]]))
    expected = [[1.0, 10.0, 0.0], [100.0, 1000.0, 0.0], [0.0, 0.0, 0.0]]
    np.testing.assert_array_equal(x.grad[0, 0], expected)


def test_max_pool2d_float32_and_errors(rng):
    x = Tensor(rng.standard_normal((1, 2, 5, 5)).astype(np.float32), requires_grad=True)
    out = F.max_pool2d(x, 3, 2, 1)
    assert out.dtype == np.float32
    out.sum().backward()
    assert x.grad.dtype == np.float32
    with pytest.raises(ValueError, match="padding"):
        F.max_pool2d(x, 2, 2, 2)
    with pytest.raises(NotImplementedError):
        F.max_pool2d(x, 2, ceil_mode=True)


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool2d_split_over_threads_equals_one_block(rng, split_work, case):
    """Maps pooled in blocks on two threads give the unsplit result, gradients included."""
    (h, w), kernel, stride, padding, dilation = case
    x = Tensor(np.round(rng.standard_normal((2, 3, h, w)), 1), requires_grad=True)  # ties too
    out = F.max_pool2d(x, kernel, stride, padding, dilation)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    split = out.numpy(), x.grad
    x.grad = None
    minifpn.backend.set_cpu_threads(1)
    minifpn.backend.CACHE_BLOCK_ELEMENTS = 10**9
    out = F.max_pool2d(x, kernel, stride, padding, dilation)
    out.backward(g)
    np.testing.assert_array_equal(split[0], out.numpy())
    np.testing.assert_array_equal(split[1], x.grad)
