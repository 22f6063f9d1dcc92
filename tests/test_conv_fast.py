"""The fast convolution paths (``conv_fast.py``) against the plain reference (``conv.py``).

Every fast step — im2col without a padded copy, col2im without one, both
split over threads, per-image GEMMs on large maps, the reused scratch
buffer — must give the plain path's numbers, forward and backward, on every
device. ``split_work`` makes ``parallel_for`` split even these tiny inputs
over two threads, so the threaded code runs here too.
"""

import numpy as np
import pytest

import minifpn.functional as F
from minifpn import Tensor, backend
from minifpn.functional import conv_fast
from minifpn.functional.conv import ConvGeometry, batch_columns, col2im, im2col
from tests.conftest import randn
from tests.test_ops_conv import CONV_CASES, naive_conv2d


@pytest.mark.parametrize(
    "out_size, in_size, offset, stride, expected",
    [
        # o reads 2·o − 1: o = 0 → −1 (padding), 1 → 1, 2 → 3, 3 → 5 (past the end)
        (4, 5, -1, 2, (slice(1, 3), slice(1, 4, 2))),
        (5, 5, 0, 1, (slice(0, 5), slice(0, 5, 1))),  # the centre tap of a "same" 3×3
        (5, 5, 1, 1, (slice(0, 4), slice(1, 5, 1))),  # its right neighbour: the last o pads
        (3, 2, 5, 1, (slice(0, 0), slice(0, 0))),  # every position reads padding
        (3, 4, -6, 2, (slice(0, 0), slice(0, 0))),  # o reads 2·o − 6 < 0 for all three
    ],
)
def test_tap_window_hand_computed(out_size, in_size, offset, stride, expected):
    assert conv_fast.tap_window(out_size, in_size, offset, stride) == expected


@pytest.mark.parametrize("n, c", [(1, 3), (2, 3), (2, 9)])  # 3 channels split by tap, 9 by channel
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_im2col_and_col2im_fast_equal_plain(device, rng, split_work, case, n, c):
    (h, w), kernel, stride, padding, dilation = case
    geo = ConvGeometry.make(kernel, stride, padding, dilation)
    x = randn(rng, n, c, h, w, device=device).data
    fast = conv_fast.im2col_fast(x, geo)
    np.testing.assert_array_equal(backend.to_numpy(fast), backend.to_numpy(im2col(x, geo)))
    np.testing.assert_array_equal(backend.to_numpy(batch_columns(fast)),
                                  backend.to_numpy(batch_columns(im2col(x, geo))))
    ho, wo = geo.out_size(h, w)
    band = slice(ho // 3, ho // 3 + 2)  # two output rows from a third of the way down
    plain_band = im2col(x, geo).reshape(n, -1, ho, wo)[:, :, band].reshape(n, -1, 2 * wo)
    # (fast's scratch buffer is reused by this call)
    np.testing.assert_array_equal(backend.to_numpy(conv_fast.im2col_fast(x, geo, rows=band)),
                                  backend.to_numpy(plain_band))
    cols = randn(rng, n, c * geo.kh * geo.kw, ho * wo, device=device).data
    out = backend.get_array_module(x).full(x.shape, np.nan)  # every pixel must be written
    conv_fast.col2im_fast(cols, out, geo)
    np.testing.assert_allclose(backend.to_numpy(out), backend.to_numpy(col2im(cols, x.shape, geo)),
                               rtol=1e-13, atol=1e-13)


# n, C, (H, W), O, kernel, stride, padding, dilation
CONV_PATH_CASES = [
    (2, 3, (9, 8), 4, 7, 2, 3, 1),  # the stem: 3 channels, split by tap
    (2, 9, (6, 7), 5, 3, 1, 1, 1),  # split by channel
    (3, 8, (33, 33), 4, 3, 1, 1, 1),  # ≥ 1024 output pixels: one GEMM per image
    (3, 8, (32, 33), 4, 1, 1, 0, 1),  # 1×1 at batch 3, large: per image, no copy of the input
    (4, 8, (5, 5), 4, 1, 1, 0, 1),  # 1×1 at batch 4, small: one GEMM over the batch
    (2, 5, (7, 6), 3, (3, 2), (2, 1), (1, 0), (1, 2)),  # asymmetric everything
    (2, 6, (7, 9), 4, 1, 2, 0, 1),  # 1×1 stride 2 (a ResNet downsample)
    (2, 4, (7, 8), 3, 3, 1, 2, 2),  # stride 1, dilated: ∂x as a conv with padding 2·2 − 2
    (2, 4, (5, 5), 3, 3, 1, 3, 1),  # padding beyond the kernel: ∂x through col2im
    (2, 4, (6, 5), 3, (2, 3), 1, (0, 1), 1),  # even kernel: an asymmetric flipped padding
    (2, 4, (7, 6), 3, 3, 1, 0, 1),  # 3×3 "valid": odd and even output sizes (5×4)
    (1, 4, (5, 6), 3, 3, 1, 2, 1),  # 3×3 padded by 2: its flipped kernel is padded by 0
]


def _conv_step(op, x, weight, bias, grad, **kwargs):
    """Forward and backward of one conv: (out, dx, dw, db) as host arrays."""
    for t in (x, weight, bias):
        t.grad = None
    out = op(x, weight, bias, **kwargs)
    out.backward(grad)
    return [out.numpy()] + [Tensor(t.grad).numpy() for t in (x, weight, bias)]


@pytest.fixture(params=["whole", "bands", "winograd", "winograd-bands"])
def bands(request, monkeypatch):
    """Columns for all output rows at once or one row at a time (``bands``); 3×3
    stride-1 convs by Winograd's F(2×2, 3×3) at any width (``winograd``)."""
    if "bands" in request.param:
        monkeypatch.setattr(conv_fast, "BAND_BUDGET_BYTES", 1)
    if "winograd" in request.param:
        monkeypatch.setattr(conv_fast, "WINOGRAD_MIN_CHANNELS", 1)
        monkeypatch.setattr(conv_fast, "WINOGRAD_MIN_SIDE", 1)


@pytest.mark.parametrize("case", CONV_PATH_CASES, ids=str)
def test_conv2d_fast_path_equals_plain_reference_with_gradients(device, rng, split_work, bands,
                                                                case):
    n, c, (h, w), o, kernel, stride, padding, dilation = case
    x = randn(rng, n, c, h, w, device=device)
    weight = randn(rng, o, c, *ConvGeometry.make(kernel, 1, 0, 1)[:2], device=device)
    bias = randn(rng, o, device=device)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    shape = F.conv2d(x, weight, bias, **kwargs).shape
    grad = randn(rng, *shape, device=device, requires_grad=False)
    fast = _conv_step(F.conv2d, x, weight, bias, grad, **kwargs)
    with backend.plain_reference():
        plain = _conv_step(F.conv2d, x, weight, bias, grad, **kwargs)
    for a, b in zip(fast, plain):  # out, dx, dw, db
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# n, C, (H, W), O, kernel, stride, padding, output_padding, dilation
CONVT_PATH_CASES = [
    (2, 4, (3, 4), 3, 2, 2, 0, 0, 1),  # the mask head's 2× deconvolution, small maps
    (2, 4, (32, 33), 3, 2, 2, 0, 0, 1),  # ≥ 1024 input pixels: one GEMM per image
    (3, 9, (4, 3), 2, 3, 2, 1, 1, 1),
    (2, 3, (5, 4), 2, 3, 1, 1, 0, 1),  # stride 1: the forward pass is a flipped conv
    (2, 3, (4, 5), 2, 3, 1, 1, 1, 2),  # stride 1, output padding: through col2im
]


@pytest.mark.parametrize("case", CONVT_PATH_CASES, ids=str)
def test_conv_transpose2d_fast_path_equals_plain_reference(device, rng, split_work, bands, case):
    n, c, (h, w), o, k, stride, padding, output_padding, dilation = case
    x = randn(rng, n, c, h, w, device=device)
    weight = randn(rng, c, o, k, k, device=device)
    bias = randn(rng, o, device=device)
    kwargs = dict(stride=stride, padding=padding, output_padding=output_padding,
                  dilation=dilation)
    shape = F.conv_transpose2d(x, weight, bias, **kwargs).shape
    grad = randn(rng, *shape, device=device, requires_grad=False)
    fast = _conv_step(F.conv_transpose2d, x, weight, bias, grad, **kwargs)
    with backend.plain_reference():
        plain = _conv_step(F.conv_transpose2d, x, weight, bias, grad, **kwargs)
    for a, b in zip(fast, plain):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_outputs_never_share_the_scratch_buffer(rng, split_work):
    """Two convs in a row (the second reuses the scratch buffer) and a backward through both."""
    x = randn(rng, 2, 3, 8, 8)
    w1, w2 = randn(rng, 4, 3, 3, 3), randn(rng, 5, 4, 3, 3)
    y1 = F.conv2d(x, w1, padding=1)
    y1_before = y1.numpy().copy()
    y2 = F.conv2d(y1, w2, padding=1)
    np.testing.assert_array_equal(y1.numpy(), y1_before)
    np.testing.assert_allclose(y2.numpy(), naive_conv2d(y1_before, w2.numpy(), padding=1),
                               rtol=1e-12)
    (y2 * y2).sum().backward()
    fast = [t.grad.copy() for t in (x, w1, w2)]
    for t in (x, w1, w2):
        t.grad = None
    with backend.plain_reference():
        y = F.conv2d(F.conv2d(x, w1, padding=1), w2, padding=1)
        (y * y).sum().backward()
    for a, t in zip(fast, (x, w1, w2)):
        np.testing.assert_allclose(a, t.grad, rtol=1e-12)


def test_winograd_takes_wide_3x3_layers_and_matches_the_plain_path(rng, monkeypatch):
    """At the default thresholds a 64-channel 3×3 conv on 12×12 maps goes through Winograd:
    forward, input gradient (a flipped-kernel forward) and weight gradient."""
    calls = []
    for name in ("winograd_forward", "winograd_weight_gradient"):
        original = getattr(conv_fast, name)

        def spy(*args, original=original, name=name):
            calls.append(name)
            return original(*args)

        monkeypatch.setattr(conv_fast, name, spy)
    c = conv_fast.WINOGRAD_MIN_CHANNELS  # in and out: the input gradient's conv is as wide
    x = randn(rng, 2, c, 12, 12)
    weight, bias = randn(rng, c, c, 3, 3), randn(rng, c)
    grad = randn(rng, 2, c, 12, 12, requires_grad=False)
    fast = _conv_step(F.conv2d, x, weight, bias, grad, padding=1)
    assert sorted(calls) == ["winograd_forward"] * 2 + ["winograd_weight_gradient"]
    with backend.plain_reference():
        plain = _conv_step(F.conv2d, x, weight, bias, grad, padding=1)
    for a, b in zip(fast, plain):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)
