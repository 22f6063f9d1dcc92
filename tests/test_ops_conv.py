"""conv2d and conv_transpose2d against naive loop references.

The references below share nothing with the implementation's im2col/col2im:
``naive_conv2d`` visits every output pixel and takes a dot product with the
(dilated) window of a zero-padded input; ``naive_conv_transpose2d`` visits
every input pixel and *scatters* ``value · weight`` into an output patch,
which is the textbook definition of a transposed convolution.
"""

import numpy as np
import pytest

import minifpn
import minifpn.functional as F
import minifpn.functional.conv as conv_module
from minifpn import Tensor, backend
from tests.conftest import randn


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def naive_conv2d(x, w, b=None, stride=1, padding=0, dilation=1):
    """Cross-correlation by looping over output pixels (NumPy, float64)."""
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph : ph + h, pw : pw + wd] = x
    out = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            for p in range(kh):
                for q in range(kw):
                    pixel = xp[:, :, i * sh + p * dh, j * sw + q * dw]  # (n, c)
                    out[:, :, i, j] += pixel @ w[:, :, p, q].T  # (n, c) @ (c, o)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def naive_conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1):
    """Each input pixel adds value · weight[c, :, p, q] into the output (scatter)."""
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    oph, opw = pair(output_padding)
    n, c, h, wd = x.shape
    _, o, kh, kw = w.shape
    full_h = (h - 1) * sh + dh * (kh - 1) + 1 + oph  # before cropping the padding
    full_w = (wd - 1) * sw + dw * (kw - 1) + 1 + opw
    full = np.zeros((n, o, full_h, full_w))
    for i in range(h):
        for j in range(wd):
            for p in range(kh):
                for q in range(kw):
                    full[:, :, i * sh + p * dh, j * sw + q * dw] += x[:, :, i, j] @ w[:, :, p, q]
    ho = full_h - 2 * ph
    wo = full_w - 2 * pw
    out = full[:, :, ph : ph + ho, pw : pw + wo]
    if b is not None:
        out = out + b.reshape(1, -1, 1, 1)
    return out


# (input H, W), kernel (kh, kw), stride, padding, dilation
CONV_CASES = [
    ((5, 5), (3, 3), 1, 1, 1),  # "same" 3x3
    ((7, 6), (3, 3), 2, 1, 1),  # stride 2, odd/even sizes
    ((7, 5), (3, 2), (2, 1), (1, 0), (1, 2)),  # asymmetric everything
    ((4, 5), (1, 1), 1, 0, 1),  # pointwise fast path
    ((5, 7), (1, 1), 2, 0, 1),  # 1x1 stride 2 (ResNet downsample)
    ((3, 4), (1, 1), 1, 1, 1),  # 1x1 with padding: not the fast path
    ((6, 5), (1, 3), (1, 2), (0, 1), 1),
    ((7, 7), (3, 3), 1, 2, 2),  # dilated
    ((7, 6), (2, 2), 3, 0, 1),  # stride larger than kernel: skipped pixels
    ((9, 8), (7, 7), 2, 3, 1),  # ResNet stem geometry
    ((5, 6), (3, 3), (2, 3), (2, 0), (2, 1)),
]


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_matches_naive_loops(device, rng, case, use_bias):
    (h, w), (kh, kw), stride, padding, dilation = case
    x = randn(rng, 2, 3, h, w, device=device)
    weight = randn(rng, 4, 3, kh, kw, device=device)
    bias = randn(rng, 4, device=device) if use_bias else None
    out = F.conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation)
    expected = naive_conv2d(
        x.numpy(), weight.numpy(), None if bias is None else bias.numpy(), stride, padding, dilation
    )
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_conv2d_output_size_hand_computed():
    x = Tensor(np.zeros((1, 1, 7, 10)))
    w = Tensor(np.zeros((2, 1, 3, 3)))
    # Ho = (7 + 2 − 2 − 1)//2 + 1 = 4;  Wo = (10 + 0 − 4 − 1)//3 + 1 = 2
    assert F.conv2d(x, w, stride=(2, 3), padding=(1, 0), dilation=(1, 2)).shape == (1, 2, 4, 2)


def test_conv2d_hand_computed_values():
    """A 3x3 input, 2x2 kernel of ones plus bias: each output is a window sum + 1."""
    x = Tensor(np.arange(9.0).reshape(1, 1, 3, 3))
    w = Tensor(np.ones((1, 1, 2, 2)))
    out = F.conv2d(x, w, Tensor(np.array([1.0])))
    np.testing.assert_array_equal(out.numpy(), [[[[9.0, 13.0], [21.0, 25.0]]]])


GRAD_CASES = [
    ((5, 4), (3, 3), 1, 1, 1),
    ((6, 5), (3, 2), (2, 1), (1, 0), (1, 2)),
    ((4, 5), (1, 1), 1, 0, 1),
    ((5, 5), (2, 2), 2, 0, 1),
    ((7, 6), (3, 3), 1, 2, 2),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_conv2d_gradcheck(device, rng, case):
    (h, w), (kh, kw), stride, padding, dilation = case
    x = randn(rng, 2, 2, h, w, device=device)
    weight = randn(rng, 3, 2, kh, kw, device=device)
    bias = randn(rng, 3, device=device)

    def fn(a, wt, b):
        return F.conv2d(a, wt, b, stride=stride, padding=padding, dilation=dilation)

    assert minifpn.gradcheck(fn, (x, weight, bias))


def test_conv2d_gradcheck_without_bias_and_constant_input(rng):
    x = randn(rng, 1, 2, 5, 5, requires_grad=False)
    weight = randn(rng, 3, 2, 3, 3)
    assert minifpn.gradcheck(lambda a, wt: F.conv2d(a, wt, padding=1), (x, weight))


def _spy(monkeypatch, step, calls):
    """Record in ``calls`` the batch size of each call to one step (``forward``…) of both paths."""
    for name in ("PLAIN", "FAST"):
        paths = getattr(conv_module, name)
        original = getattr(paths, step)

        def wrapper(arr, *args, original=original, **kwargs):
            calls.append(arr.shape[0])
            return original(arr, *args, **kwargs)

        monkeypatch.setattr(conv_module, name, paths._replace(**{step: wrapper}))
    return calls


def _forward_backward(fn, x, weight, bias, g):
    for t in (x, weight, bias):
        t.grad = None
    out = fn(x, weight, bias)
    out.backward(g)
    return [out.numpy()] + [Tensor(t.grad).numpy() for t in (x, weight, bias)]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_conv2d_chunking_gives_identical_results(device, rng, monkeypatch, fast):
    x = randn(rng, 3, 2, 6, 5, device=device)
    weight = randn(rng, 4, 2, 3, 3, device=device)
    bias = randn(rng, 4, device=device)
    g = Tensor(rng.standard_normal((3, 4, 3, 3)), device=device)

    def fn(a, wt, b):
        return F.conv2d(a, wt, b, stride=2, padding=1)

    monkeypatch.setattr(backend, "_fast_paths", fast)
    whole = _forward_backward(fn, x, weight, bias, g)
    monkeypatch.setattr(conv_module, "COLS_BUDGET_BYTES", 1)  # forces one image per chunk
    calls = []
    _spy(monkeypatch, "forward", calls)
    _spy(monkeypatch, "weight_gradient", calls)
    chunked = _forward_backward(fn, x, weight, bias, g)
    assert calls == [1] * 6  # three chunks in the forward pass, three in the backward
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(
        chunked[0], naive_conv2d(x.numpy(), weight.numpy(), bias.numpy(), 2, 1), rtol=1e-10
    )


def test_conv2d_refuses_bad_inputs(rng):
    x = randn(rng, 1, 3, 5, 5)
    with pytest.raises(ValueError, match="channels"):
        F.conv2d(x, randn(rng, 2, 4, 3, 3))
    with pytest.raises(ValueError, match="too small"):
        F.conv2d(x, randn(rng, 2, 3, 7, 7))
    with pytest.raises(TypeError):
        F.conv2d(x, Tensor(np.zeros((2, 3, 3, 3), np.float32)))


# ---------------------------------------------------------------------------
# Transposed convolution.
# ---------------------------------------------------------------------------
# (input H, W), kernel, stride, padding, output_padding, dilation
CONVT_CASES = [
    ((3, 4), (2, 2), 2, 0, 0, 1),  # the classic 2x upsampling deconvolution
    ((3, 3), (3, 3), 2, 1, 1, 1),  # stride 2 with output padding
    ((4, 3), (3, 3), 1, 1, 0, 1),
    ((3, 4), (4, 4), 2, 1, 0, 1),
    ((3, 3), (3, 2), (2, 1), (1, 0), (1, 0), (1, 2)),  # asymmetric everything
    ((2, 3), (3, 3), 3, 0, 2, 1),
    ((3, 3), (1, 1), 1, 0, 0, 1),
    ((3, 2), (3, 3), 2, 2, 1, 2),  # dilated, padding cropped away
]


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("case", CONVT_CASES, ids=str)
def test_conv_transpose2d_matches_scatter_loops(device, rng, case, use_bias):
    (h, w), (kh, kw), stride, padding, output_padding, dilation = case
    x = randn(rng, 2, 3, h, w, device=device)
    weight = randn(rng, 3, 2, kh, kw, device=device)  # (in C, out O, kh, kw)
    bias = randn(rng, 2, device=device) if use_bias else None
    out = F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, dilation)
    expected = naive_conv_transpose2d(
        x.numpy(),
        weight.numpy(),
        None if bias is None else bias.numpy(),
        stride,
        padding,
        output_padding,
        dilation,
    )
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "hw, kernel, stride, padding, output_padding, dilation, expected_hw",
    [
        # Ho = (H − 1)·s − 2p + d·(k − 1) + op + 1, worked out by hand:
        ((3, 3), 3, 2, 1, 1, 1, (6, 6)),  # 4 − 2 + 2 + 1 + 1
        ((5, 4), 2, 2, 0, 0, 1, (10, 8)),  # 8 + 1 + 1; 6 + 1 + 1
        ((3, 3), (3, 1), (1, 2), (0, 0), (0, 1), (2, 1), (7, 6)),  # 2 + 4 + 1; 4 + 0 + 1 + 1
        ((4, 4), 4, 2, 1, 0, 1, (8, 8)),  # 6 − 2 + 3 + 1
    ],
)
def test_conv_transpose2d_output_size(
    hw, kernel, stride, padding, output_padding, dilation, expected_hw
):
    kh, kw = pair(kernel)
    out = F.conv_transpose2d(
        Tensor(np.zeros((1, 2) + hw)),
        Tensor(np.zeros((2, 3, kh, kw))),
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
    )
    assert out.shape == (1, 3) + expected_hw


def test_conv_transpose2d_hand_computed_values():
    """Stride 2, 2x2 kernel: every input pixel stamps its own 2x2 block."""
    x = Tensor(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    w = Tensor(np.array([[[[1.0, 10.0], [100.0, 1000.0]]]]))
    out = F.conv_transpose2d(x, w, stride=2)
    expected = [
        [1, 10, 2, 20],
        [100, 1000, 200, 2000],
        [3, 30, 4, 40],
        [300, 3000, 400, 4000],
    ]
    np.testing.assert_array_equal(out.numpy()[0, 0], expected)


def test_conv_transpose2d_output_padding_below_dilation(rng):
    x = randn(rng, 1, 2, 3, 3)
    weight = randn(rng, 2, 3, 2, 2)
    out = F.conv_transpose2d(x, weight, stride=1, output_padding=1, dilation=2)
    expected = naive_conv_transpose2d(x.numpy(), weight.numpy(), None, 1, 0, 1, 2)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert minifpn.gradcheck(
        lambda x, w: F.conv_transpose2d(x, w, stride=1, output_padding=1, dilation=2), [x, weight]
    )


def test_conv_transpose2d_rejects_output_padding_too_large(rng):
    x, weight = randn(rng, 1, 2, 3, 3), randn(rng, 2, 3, 2, 2)
    with pytest.raises(ValueError, match="output_padding"):
        F.conv_transpose2d(x, weight, stride=2, output_padding=2)


CONVT_GRAD_CASES = [
    ((3, 3), (2, 2), 2, 0, 0, 1),
    ((3, 2), (3, 3), 2, 1, 1, 1),
    ((2, 3), (3, 2), (2, 1), (1, 0), (1, 0), (1, 2)),
    ((3, 3), (3, 3), 1, 1, 0, 1),
]


@pytest.mark.parametrize("case", CONVT_GRAD_CASES, ids=str)
def test_conv_transpose2d_gradcheck(device, rng, case):
    (h, w), (kh, kw), stride, padding, output_padding, dilation = case
    x = randn(rng, 2, 2, h, w, device=device)
    weight = randn(rng, 2, 3, kh, kw, device=device)
    bias = randn(rng, 3, device=device)

    def fn(a, wt, b):
        return F.conv_transpose2d(a, wt, b, stride, padding, output_padding, dilation)

    assert minifpn.gradcheck(fn, (x, weight, bias))


def test_conv_transpose2d_chunking_gives_identical_results(rng, monkeypatch):
    x = randn(rng, 3, 2, 3, 3)
    weight = randn(rng, 2, 3, 3, 3)
    bias = randn(rng, 3)
    g = rng.standard_normal((3, 3, 6, 6))

    def fn(a, wt, b):
        return F.conv_transpose2d(a, wt, b, stride=2, padding=1, output_padding=1)

    whole = _forward_backward(fn, x, weight, bias, g)
    monkeypatch.setattr(conv_module, "COLS_BUDGET_BYTES", 1)
    calls = []
    _spy(monkeypatch, "input_gradient", calls)
    chunked = _forward_backward(fn, x, weight, bias, g)
    assert calls == [1, 1, 1]  # the forward pass, one image at a time
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


# (input H, W), kernel, stride, padding, dilation — for the adjoint identity
ADJOINT_CASES = [
    ((6, 6), (3, 3), 2, 1, 1),
    ((7, 5), (3, 3), 2, 1, 1),  # leftover rows: needs output_padding to recover 7
    ((8, 7), (3, 2), (3, 2), (1, 0), (1, 2)),
    ((5, 5), (1, 1), 1, 0, 1),
    ((9, 9), (4, 4), 2, 1, 1),
]


@pytest.mark.parametrize("case", ADJOINT_CASES, ids=str)
def test_conv_transpose_is_the_adjoint_of_conv(device, rng, case):
    """<conv2d(x, w), y> == <x, conv_transpose2d(y, w)> for the same geometry."""
    (h, w), (kh, kw), stride, padding, dilation = case
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    x = randn(rng, 2, 3, h, w, device=device, requires_grad=False)
    weight = randn(rng, 4, 3, kh, kw, device=device, requires_grad=False)
    conv = F.conv2d(x, weight, stride=stride, padding=padding, dilation=dilation)
    ho, wo = conv.shape[2:]
    # The output padding that makes the transposed conv return exactly (h, w).
    op = (
        h - ((ho - 1) * sh - 2 * ph + dh * (kh - 1) + 1),
        w - ((wo - 1) * sw - 2 * pw + dw * (kw - 1) + 1),
    )
    y = randn(rng, *conv.shape, device=device, requires_grad=False)
    back = F.conv_transpose2d(
        y, weight, stride=stride, padding=padding, output_padding=op, dilation=dilation
    )
    assert back.shape == x.shape
    lhs = float((conv.numpy() * y.numpy()).sum())
    rhs = float((x.numpy() * back.numpy()).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


def test_conv_transpose2d_refuses_mixed_dtypes(rng):
    with pytest.raises(TypeError):
        F.conv_transpose2d(randn(rng, 1, 2, 3, 3), Tensor(np.zeros((2, 3, 2, 2), np.float32)))


def test_conv_float32_in_float32_out_and_grads(rng):
    for op, wshape in ((F.conv2d, (3, 2, 3, 3)), (F.conv_transpose2d, (2, 3, 3, 3))):
        x = randn(rng, 2, 2, 5, 5, dtype=np.float32)
        weight = randn(rng, *wshape, dtype=np.float32)
        bias = randn(rng, 3, dtype=np.float32)
        out = op(x, weight, bias, stride=2, padding=1)
        assert out.dtype == np.float32
        out.sum().backward()
        assert x.grad.dtype == weight.grad.dtype == bias.grad.dtype == np.float32
