"""RoIAlign and RoIPool (``minifpn.ops.roi_pooling``).

References are independent of the code under test:

* golden values computed by hand on a 5 × 5 ``arange`` map (value 5·y + x at
  cell (y, x)), written literally: bilinear interpolation of a linear map is
  exact, so a bin's mean is the map's value at the mean of its sample points;
* a naive per-RoI / per-bin / per-sample loop written from torchvision's C++
  kernels (``roi_align_kernel.cpp``: ``bilinear_interpolate`` with the
  "more than one cell outside → 0" rule, the clamp to 0, the ``y_low ≥ H − 1``
  edge rule; ``roi_pool_kernel.cpp``: C ``round``, inclusive end cell,
  floor/ceil bins clipped to the map, empty bins 0, first maximum wins), and
  the matching naive backward loops;
* float64 central differences (``minifpn.gradcheck``) for the backward passes.
"""

import math

import numpy as np
import pytest

import minifpn
from minifpn import backend
from minifpn.ops import roi_pooling as roi_pooling_module
from minifpn.ops.roi_pooling import (
    convert_boxes_to_roi_format,
    roi_align,
    roi_align_sample_points,
    roi_pool,
    roi_pool_bins,
)

ARANGE = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)  # value 5·y + x


def host(x):
    return backend.to_numpy(x.data if isinstance(x, minifpn.Tensor) else x)


def tensor(array, device="cpu", requires_grad=False):
    return minifpn.Tensor(np.array(array, dtype=np.float64), requires_grad=requires_grad,
                          device=device)


def rois_on(device, rois):
    return backend.to_device(np.asarray(rois, dtype=np.float64), device)


# ---------------------------------------------------------------------------
# Naive references, from torchvision's C++ kernels.
# ---------------------------------------------------------------------------
def bilinear_corners(height, width, y, x):
    """torchvision's ``bilinear_interpolate``: [(row, col, weight)] or [] for "reads 0"."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return []
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return [(y_low, x_low, hy * hx), (y_low, x_high, hy * lx),
            (y_high, x_low, ly * hx), (y_high, x_high, ly * lx)]


def roi_align_samples(roi, height, width, ph, pw, scale, sampling_ratio, aligned):
    """For each bin (py, px): [(row, col, weight)] over all its samples, already / count."""
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (float(v) * scale - offset for v in roi[1:])
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_h / ph))
    grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_w / pw))
    count = max(grid_h * grid_w, 1)
    bins = {}
    for py in range(ph):
        for px in range(pw):
            entries = []
            for iy in range(grid_h):
                y = y1 + py * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = x1 + px * bin_w + (ix + 0.5) * bin_w / grid_w
                    for r, c, w in bilinear_corners(height, width, y, x):
                        entries.append((r, c, w / count))
            bins[py, px] = entries
    return bins


def naive_roi_align(x, rois, ph, pw, scale=1.0, sampling_ratio=-1, aligned=False):
    x = np.asarray(x, dtype=np.float64)
    _, c, height, width = x.shape
    out = np.zeros((len(rois), c, ph, pw))
    for k, roi in enumerate(rois):
        b = int(roi[0])
        bins = roi_align_samples(roi, height, width, ph, pw, scale, sampling_ratio, aligned)
        for (py, px), entries in bins.items():
            for r, col, w in entries:
                out[k, :, py, px] += w * x[b, :, r, col]
    return out


def naive_roi_align_backward(shape, rois, grad, scale=1.0, sampling_ratio=-1, aligned=False):
    _, _, height, width = shape
    ph, pw = grad.shape[-2:]
    grad_input = np.zeros(shape)
    for k, roi in enumerate(rois):
        b = int(roi[0])
        bins = roi_align_samples(roi, height, width, ph, pw, scale, sampling_ratio, aligned)
        for (py, px), entries in bins.items():
            for r, col, w in entries:
                grad_input[b, :, r, col] += w * grad[k, :, py, px]
    return grad_input


def c_round(v):
    """C's ``round``: halves away from zero."""
    return math.copysign(math.floor(abs(v) + 0.5), v)


def naive_roi_pool(x, rois, ph, pw, scale=1.0):
    """Returns (output, argmax) with argmax[k, c, py, px] = (row, col) or None."""
    x = np.asarray(x, dtype=np.float64)
    _, channels, height, width = x.shape
    out = np.zeros((len(rois), channels, ph, pw))
    argmax = {}
    for k, roi in enumerate(rois):
        b = int(roi[0])
        x1, y1, x2, y2 = (int(c_round(float(v) * scale)) for v in roi[1:])
        roi_w, roi_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        bin_h, bin_w = roi_h / ph, roi_w / pw
        for py in range(ph):
            hs = min(max(int(math.floor(py * bin_h)) + y1, 0), height)
            he = min(max(int(math.ceil((py + 1) * bin_h)) + y1, 0), height)
            for px in range(pw):
                ws = min(max(int(math.floor(px * bin_w)) + x1, 0), width)
                we = min(max(int(math.ceil((px + 1) * bin_w)) + x1, 0), width)
                empty = he <= hs or we <= ws
                for c in range(channels):
                    best, where = (0.0 if empty else -np.inf), None
                    for r in range(hs, he):
                        for col in range(ws, we):
                            if x[b, c, r, col] > best:
                                best, where = x[b, c, r, col], (r, col)
                    out[k, c, py, px] = best
                    argmax[k, c, py, px] = where
    return out, argmax


def naive_roi_pool_backward(shape, rois, grad, ph, pw, x, scale=1.0):
    _, argmax = naive_roi_pool(x, rois, ph, pw, scale)
    grad_input = np.zeros(shape)
    for (k, c, py, px), where in argmax.items():
        if where is not None:
            grad_input[int(rois[k][0]), c, where[0], where[1]] += grad[k, c, py, px]
    return grad_input


def random_rois(rng, count, num_images, height, width, stride=1.0):
    """RoIs in image pixels: inside, partly outside, tiny, degenerate-ish."""
    rois = []
    for i in range(count):
        kind = i % 4
        b = rng.integers(num_images)
        if kind == 0:  # inside
            x1, y1 = rng.uniform(0, width * stride * 0.7), rng.uniform(0, height * stride * 0.7)
            w, h = rng.uniform(1, width * stride * 0.5), rng.uniform(1, height * stride * 0.5)
        elif kind == 1:  # partly outside (any side)
            x1 = rng.uniform(-0.6, 0.8) * width * stride
            y1 = rng.uniform(-0.6, 0.8) * height * stride
            w, h = rng.uniform(0.4, 1.2) * width * stride, rng.uniform(0.4, 1.2) * height * stride
        elif kind == 2:  # tiny (below one feature cell)
            x1, y1 = rng.uniform(0, width * stride), rng.uniform(0, height * stride)
            w, h = rng.uniform(0.01, 0.9) * stride, rng.uniform(0.01, 0.9) * stride
        else:  # large, covering the map and beyond
            x1, y1 = rng.uniform(-3, 1) * stride, rng.uniform(-3, 1) * stride
            w, h = (width + rng.uniform(0, 4)) * stride, (height + rng.uniform(0, 4)) * stride
        rois.append([b, x1, y1, x1 + w, y1 + h])
    return np.array(rois)


# ---------------------------------------------------------------------------
# RoIAlign: hand-computed golden values.
# ---------------------------------------------------------------------------
def test_roi_align_golden_aligned_false(device):
    # Box [1, 1, 3, 3]: 4 bins of 0.5 per axis, 2 samples per bin at +0.125, +0.375
    # → bin (p, q) samples around (1.25 + 0.5p, 1.25 + 0.5q): 5·1.25 + 1.25 = 7.5 first.
    out = roi_align(tensor(ARANGE, device), rois_on(device, [[0, 1, 1, 3, 3]]), 4,
                    sampling_ratio=2, aligned=False)
    expected = [[7.5, 8.0, 8.5, 9.0],
                [10.0, 10.5, 11.0, 11.5],
                [12.5, 13.0, 13.5, 14.0],
                [15.0, 15.5, 16.0, 16.5]]
    assert out.shape == (1, 1, 4, 4)
    np.testing.assert_allclose(host(out)[0, 0], expected, atol=1e-12)


def test_roi_align_golden_aligned_true(device):
    # The half-pixel shift moves every sample by −0.5: 5·0.75 + 0.75 = 4.5 first.
    out = roi_align(tensor(ARANGE, device), rois_on(device, [[0, 1, 1, 3, 3]]), (4, 4),
                    sampling_ratio=2, aligned=True)
    expected = [[4.5, 5.0, 5.5, 6.0],
                [7.0, 7.5, 8.0, 8.5],
                [9.5, 10.0, 10.5, 11.0],
                [12.0, 12.5, 13.0, 13.5]]
    np.testing.assert_allclose(host(out)[0, 0], expected, atol=1e-12)


def test_roi_align_golden_border_rules():
    x = tensor(ARANGE)
    # [3, 3, 5, 5], 1 sample per bin at 3.5 and 4.5: 4.5 ≤ H is inside but its low
    # cell is the last row → it reads row 4 exactly (5·3.5+3.5 = 21, …, 5·4+4 = 24).
    out = roi_align(x, np.array([[0, 3.0, 3, 5, 5]]), 2, sampling_ratio=1)
    np.testing.assert_allclose(host(out)[0, 0], [[21.0, 21.5], [23.5, 24.0]], atol=1e-12)
    # x samples at −1.5 (more than one cell outside → 0) and −0.5 (clamped to column 0,
    # value 5·y); y samples at 1.5, 2.5.
    out = roi_align(x, np.array([[0, -2.0, 1, 0, 3]]), 2, sampling_ratio=1)
    np.testing.assert_allclose(host(out)[0, 0], [[0.0, 7.5], [0.0, 12.5]], atol=1e-12)
    # Entirely beyond the map (samples at 5.5, 6.5 > W = 5): zeros.
    out = roi_align(x, np.array([[0, 5.0, 5, 7, 7]]), 2, sampling_ratio=1)
    np.testing.assert_array_equal(host(out), 0.0)
    # Exactly at the far edge y = x = 5 = H is still "inside": it reads cell (4, 4).
    out = roi_align(x, np.array([[0, 4.5, 4.5, 5.5, 5.5]]), 1, sampling_ratio=1)
    np.testing.assert_allclose(host(out)[0, 0], [[24.0]], atol=1e-12)


def test_roi_align_golden_misaligned_roi_is_at_least_one_cell():
    x = tensor(ARANGE)
    box = np.array([[0, 1.0, 1.0, 1.2, 1.2]])
    # aligned=False: the 0.2 × 0.2 RoI grows to 1 × 1 → one sample at (1.5, 1.5) = 9.
    np.testing.assert_allclose(host(roi_align(x, box, 1, sampling_ratio=1))[0, 0], [[9.0]])
    # aligned=True keeps it 0.2 wide, shifted: the sample is at (0.6, 0.6) = 3.6.
    np.testing.assert_allclose(
        host(roi_align(x, box, 1, sampling_ratio=1, aligned=True))[0, 0], [[3.6]])


def test_roi_align_golden_adaptive_sampling_ratio():
    # Map x² along the columns; box [0, 0, 4, 4], one bin. Bilinear values of x²:
    # at 0.5 → 0.5, 1.5 → 2.5, 2.5 → 6.5, 3.5 → 12.5.
    sq = np.tile(np.arange(5.0) ** 2, (5, 1)).reshape(1, 1, 5, 5)
    box = np.array([[0, 0.0, 0, 4, 4]])
    adaptive = roi_align(tensor(sq), box, 1, sampling_ratio=-1)  # ceil(4/1) = 4 samples
    np.testing.assert_allclose(host(adaptive)[0, 0, 0, 0], (0.5 + 2.5 + 6.5 + 12.5) / 4)
    one = roi_align(tensor(sq), box, 1, sampling_ratio=1)  # the centre: 2² = 4
    np.testing.assert_allclose(host(one)[0, 0, 0, 0], 4.0)
    two = roi_align(tensor(sq), box, 1, sampling_ratio=2)  # 1 and 3: (1 + 9)/2
    np.testing.assert_allclose(host(two)[0, 0, 0, 0], 5.0)
    # 0 counts as adaptive too.
    np.testing.assert_allclose(host(roi_align(tensor(sq), box, 1, sampling_ratio=0)),
                               host(adaptive))
    # Adaptive with 2 bins of a 4-wide box: 2 samples per bin, at 0.5, 1.5 | 2.5, 3.5.
    out = roi_align(tensor(sq), box, (1, 2), sampling_ratio=-1)
    np.testing.assert_allclose(host(out)[0, 0], [[1.5, 9.5]])


def test_roi_align_golden_spatial_scale():
    # [2, 2, 6, 6] at scale ½ is [1, 1, 3, 3] on the map: one sample at (2, 2) = 12.
    out = roi_align(tensor(ARANGE), np.array([[0, 2.0, 2, 6, 6]]), 1, spatial_scale=0.5,
                    sampling_ratio=1)
    np.testing.assert_allclose(host(out)[0, 0], [[12.0]])


def test_roi_align_golden_batch_index_and_channels():
    x = np.concatenate([ARANGE, 100 + ARANGE], axis=0)  # image 1 = image 0 + 100
    x = np.concatenate([x, -x], axis=1)  # channel 1 = −channel 0
    out = host(roi_align(tensor(x), np.array([[1, 1.0, 1, 3, 3], [0, 1, 1, 3, 3]]), 1,
                         sampling_ratio=2))
    # One bin, samples at 1.5 ± 0.5 → mean (2, 2) = 12.
    np.testing.assert_allclose(out[:, :, 0, 0], [[112.0, -112.0], [12.0, -12.0]])


# ---------------------------------------------------------------------------
# RoIAlign against the naive loop on random inputs.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2, 3])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_matches_naive_loop(rng, sampling_ratio, spatial_scale, aligned):
    n, c, h, w = 2, 3, 7, 9
    x = rng.standard_normal((n, c, h, w))
    rois = random_rois(rng, 12, n, h, w, stride=1 / spatial_scale)
    out = roi_align(tensor(x), rois, (3, 2), spatial_scale, sampling_ratio, aligned)
    expected = naive_roi_align(x, rois, 3, 2, spatial_scale, sampling_ratio, aligned)
    np.testing.assert_allclose(host(out), expected, rtol=1e-10, atol=1e-12)


def test_roi_align_matches_naive_loop_on_device(device, rng):
    n, c, h, w = 2, 2, 6, 5
    x = rng.standard_normal((n, c, h, w))
    rois = random_rois(rng, 8, n, h, w, stride=2.0)
    for aligned in (False, True):
        out = roi_align(tensor(x, device), rois_on(device, rois), 4, 0.5, -1, aligned)
        assert backend.device_of(out.data) == device
        np.testing.assert_allclose(host(out), naive_roi_align(x, rois, 4, 4, 0.5, -1, aligned),
                                   rtol=1e-10, atol=1e-12)


def test_roi_align_degenerate_rois_match_naive(rng):
    x = rng.standard_normal((1, 2, 6, 6))
    rois = np.array([
        [0, 3.0, 3.0, 3.0, 3.0],  # zero size
        [0, 4.0, 2.0, 2.5, 4.0],  # x2 < x1
        [0, 1.0, 5.0, 4.0, 1.5],  # y2 < y1, larger
        [0, 5.0, 5.0, 1.0, 1.0],  # both reversed
    ])
    for aligned in (False, True):
        for ratio in (-1, 2):
            out = roi_align(tensor(x), rois, 2, 1.0, ratio, aligned)
            np.testing.assert_allclose(host(out), naive_roi_align(x, rois, 2, 2, 1.0, ratio,
                                                                  aligned),
                                       rtol=1e-10, atol=1e-12, err_msg=f"{aligned} {ratio}")


def test_roi_align_list_of_boxes_form(rng):
    x = rng.standard_normal((3, 2, 6, 7))
    per_image = [rng.uniform(0, 5, (2, 4)), np.zeros((0, 4)), rng.uniform(0, 5, (3, 4))]
    per_image = [np.concatenate([b[:, :2], b[:, :2] + b[:, 2:] + 0.5], axis=1)
                 for b in per_image]
    rois = np.array([[i, *box] for i, boxes in enumerate(per_image) for box in boxes])
    np.testing.assert_array_equal(convert_boxes_to_roi_format(per_image), rois)
    out = roi_align(tensor(x), per_image, 3, 0.5, 2)
    np.testing.assert_allclose(host(out), naive_roi_align(x, rois, 3, 3, 0.5, 2),
                               rtol=1e-10, atol=1e-12)
    assert out.shape == (5, 2, 3, 3)


def test_convert_boxes_to_roi_format_validates():
    with pytest.raises(ValueError, match="K, 5"):
        convert_boxes_to_roi_format(np.zeros((3, 4)))
    assert convert_boxes_to_roi_format([]).shape == (0, 5)


def test_roi_align_no_rois():
    x = tensor(np.ones((1, 2, 4, 4)), requires_grad=True)
    out = roi_align(x, np.zeros((0, 5)), 7)
    assert out.shape == (0, 2, 7, 7)
    out.sum().backward()
    np.testing.assert_array_equal(host(x.grad), 0.0)


def test_roi_align_rejects_non_4d_input():
    with pytest.raises(ValueError, match="N, C, H, W"):
        roi_align(tensor(np.ones((2, 4, 4))), np.zeros((1, 5)), 2)


def test_roi_align_chunking_does_not_change_results(rng, monkeypatch):
    x = rng.standard_normal((2, 3, 6, 6))
    rois = random_rois(rng, 9, 2, 6, 6)
    whole = host(roi_align(tensor(x), rois, 3, 1.0, -1))
    monkeypatch.setattr(roi_pooling_module, "GATHER_BUDGET_BYTES", 1)  # one RoI per chunk
    xt = tensor(x, requires_grad=True)
    out = roi_align(xt, rois, 3, 1.0, -1)
    np.testing.assert_allclose(host(out), whole, rtol=1e-12, atol=1e-14)
    grad = rng.standard_normal(out.shape)
    (out * minifpn.Tensor(grad)).sum().backward()
    np.testing.assert_allclose(host(xt.grad), naive_roi_align_backward(x.shape, rois, grad,
                                                                       1.0, -1),
                               rtol=1e-10, atol=1e-12)


def test_roi_align_float32_input_keeps_dtype(rng):
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    rois = np.array([[0, 0.5, 0.7, 3.2, 4.1]])
    out = roi_align(minifpn.Tensor(x), rois, 2, 1.0, 2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(host(out), naive_roi_align(x, rois, 2, 2, 1.0, 2), rtol=1e-5,
                               atol=1e-5)


# ---------------------------------------------------------------------------
# RoIAlign backward.
# ---------------------------------------------------------------------------
def test_roi_align_backward_accumulates_shared_cells_golden(device):
    # 3 × 3 map, box [0, 0, 2, 2], 1 bin, 2 × 2 samples at (0.5|1.5, 0.5|1.5): each
    # sample gives ¼ of its ¼ share to its 4 cells; the centre is read by all four.
    x = tensor(np.zeros((1, 1, 3, 3)), device, requires_grad=True)
    out = roi_align(x, rois_on(device, [[0, 0, 0, 2, 2]]), 1, sampling_ratio=2)
    out.sum().backward()
    np.testing.assert_allclose(host(x.grad)[0, 0],
                               np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16, atol=1e-15)
    # Two identical RoIs (and a third on the same cells): their gradients add up.
    x.grad = None
    rois = rois_on(device, [[0, 0, 0, 2, 2], [0, 0, 0, 2, 2], [0, 0, 0, 2, 2]])
    roi_align(x, rois, 1, sampling_ratio=2).sum().backward()
    np.testing.assert_allclose(host(x.grad)[0, 0],
                               3 * np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16, atol=1e-15)


def test_roi_align_backward_gradient_mass_is_bins_per_inside_roi(device):
    # All samples inside [0, H − 1]: every bin hands exactly its gradient to the map.
    x = tensor(np.zeros((1, 2, 8, 8)), device, requires_grad=True)
    rois = rois_on(device, [[0, 0.5, 1, 6, 6.5], [0, 2, 2, 3, 3]])
    roi_align(x, rois, (3, 4), sampling_ratio=-1).sum().backward()
    np.testing.assert_allclose(host(x.grad).sum(axis=(0, 2, 3)), [2 * 12, 2 * 12])


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_backward_matches_naive_loop(device, rng, aligned):
    n, c, h, w = 2, 2, 6, 7
    x_np = rng.standard_normal((n, c, h, w))
    rois = random_rois(rng, 10, n, h, w, stride=2.0)
    rois = np.concatenate([rois, rois[:3]])  # duplicates: the same cells read many times
    x = tensor(x_np, device, requires_grad=True)
    out = roi_align(x, rois_on(device, rois), 3, 0.5, -1, aligned)
    grad = rng.standard_normal(out.shape)
    (out * minifpn.Tensor(grad, device=device)).sum().backward()
    expected = naive_roi_align_backward(x_np.shape, rois, grad, 0.5, -1, aligned)
    np.testing.assert_allclose(host(x.grad), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_gradcheck(device, rng, sampling_ratio, aligned):
    x = tensor(rng.standard_normal((2, 2, 5, 6)), device, requires_grad=True)
    rois = rois_on(device, [[0, 0.3, 0.6, 7.1, 5.3], [1, -1.7, 2.2, 5.4, 11.1],
                            [1, 4.2, 3.3, 4.9, 3.8], [0, 1.1, 1.3, 9.7, 8.6]])
    minifpn.gradcheck(lambda t: roi_align(t, rois, (2, 3), 0.5, sampling_ratio, aligned), [x],
                      eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------
# RoIPool.
# ---------------------------------------------------------------------------
def test_roi_pool_golden_bins():
    x = tensor(ARANGE)
    # [1, 1, 3, 3]: cells 1..3 inclusive (3 cells), bins of 1.5 → rows 1-2 | 2-3.
    out = roi_pool(x, np.array([[0, 1.0, 1, 3, 3]]), 2)
    np.testing.assert_array_equal(host(out)[0, 0], [[12.0, 13.0], [17.0, 18.0]])
    # [0, 0, 4, 4]: 5 cells, bins of 2.5 → floor/ceil: rows 0..2 | 2..4 (row 2 shared).
    out = roi_pool(x, np.array([[0, 0.0, 0, 4, 4]]), 2)
    np.testing.assert_array_equal(host(out)[0, 0], [[12.0, 14.0], [22.0, 24.0]])
    # Scale ½: [2, 2, 6, 6] → cells 1..3, the first case again.
    out = roi_pool(x, np.array([[0, 2.0, 2, 6, 6]]), 2, spatial_scale=0.5)
    np.testing.assert_array_equal(host(out)[0, 0], [[12.0, 13.0], [17.0, 18.0]])


def test_roi_pool_rounds_half_away_from_zero():
    x = tensor(ARANGE)
    # 0.5 → 1 and 2.5 → 3 (NumPy's round-half-to-even would give 0 and 2 → max 12).
    out = roi_pool(x, np.array([[0, 0.5, 0.5, 2.5, 2.5]]), 1)
    assert host(out)[0, 0, 0, 0] == 18.0
    # 1.5 → 2, 3.5 → 4 (round-to-even would agree here: 2 and 4): the max is 24.
    out = roi_pool(x, np.array([[0, 1.5, 1.5, 3.5, 3.5]]), 1)
    assert host(out)[0, 0, 0, 0] == 24.0
    # −0.5 → −1 (away from zero): the RoI starts at −1, its first 1-cell bin is clipped empty.
    out = roi_pool(x, np.array([[0, -0.5, -0.5, 0.4, 0.4]]), 2)
    np.testing.assert_array_equal(host(out)[0, 0], [[0.0, 0.0], [0.0, 0.0]])
    out = roi_pool(x, np.array([[0, -0.5, -0.5, 1.0, 1.0]]), 3)  # cells −1..1
    np.testing.assert_array_equal(host(out)[0, 0], [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0],
                                                    [0.0, 5.0, 6.0]])


def test_roi_pool_empty_bins_are_zero_even_for_negative_maps():
    x = tensor(-1.0 - ARANGE)  # every value negative: a max over nothing must still be 0
    # [3, 3, 8, 8]: cells 3..8 (6), bins of 3 → rows 3..5 ∩ map = 3..4 | 6..8 → empty.
    out = roi_pool(x, np.array([[0, 3.0, 3, 8, 8]]), 2)
    np.testing.assert_array_equal(host(out)[0, 0], [[-19.0, 0.0], [0.0, 0.0]])
    out = roi_pool(x, np.array([[0, 6.0, 6, 8, 8]]), 2)  # entirely outside
    np.testing.assert_array_equal(host(out), 0.0)


@pytest.mark.parametrize("spatial_scale", [1.0, 0.5, 0.25])
def test_roi_pool_matches_naive_loop(rng, spatial_scale):
    n, c, h, w = 2, 3, 7, 8
    x = rng.standard_normal((n, c, h, w))
    rois = random_rois(rng, 12, n, h, w, stride=1 / spatial_scale)
    rois = np.concatenate([rois, [[1, 2.5, 0.5, 2.5, 7.5], [0, -2.5, -1.5, 3.5, 0.5]]])
    for size in ((2, 2), (3, 4), (1, 1)):
        out = roi_pool(tensor(x), rois, size, spatial_scale)
        expected, _ = naive_roi_pool(x, rois, *size, spatial_scale)
        np.testing.assert_array_equal(host(out), expected)


def test_roi_pool_list_of_boxes_form(rng):
    x = rng.standard_normal((2, 2, 6, 6))
    boxes = [np.array([[0.2, 1.0, 4.4, 5.6]]), np.array([[1.0, 0.0, 3.0, 2.0], [0, 0, 5, 5.0]])]
    rois = convert_boxes_to_roi_format(boxes)
    np.testing.assert_array_equal(host(roi_pool(tensor(x), boxes, 2)),
                                  naive_roi_pool(x, rois, 2, 2)[0])


def test_roi_pool_backward_matches_naive_and_accumulates(device, rng):
    # Peak at (2, 2): the four overlapping 2 × 2 bins of [0, 0, 4, 4] all pick it.
    yy, xx = np.mgrid[:5, :5]
    peak = -((yy - 2.0) ** 2 + (xx - 2.0) ** 2)[None, None]
    x = tensor(peak, device, requires_grad=True)
    roi_pool(x, rois_on(device, [[0, 0, 0, 4, 4]]), 2).sum().backward()
    expected = np.zeros((5, 5))
    expected[2, 2] = 4.0
    np.testing.assert_array_equal(host(x.grad)[0, 0], expected)

    x_np = rng.permutation(2 * 2 * 6 * 7).reshape(2, 2, 6, 7) * 0.01  # distinct values
    rois = random_rois(rng, 10, 2, 6, 7)
    x = tensor(x_np, device, requires_grad=True)
    out = roi_pool(x, rois_on(device, rois), 3)
    grad = rng.standard_normal(out.shape)
    (out * minifpn.Tensor(grad, device=device)).sum().backward()
    np.testing.assert_allclose(host(x.grad),
                               naive_roi_pool_backward(x_np.shape, rois, grad, 3, 3, x_np),
                               rtol=1e-12, atol=1e-12)


def test_roi_pool_ties_send_gradient_to_first_maximum():
    x = tensor(np.zeros((1, 1, 3, 3)) + 5.0, requires_grad=True)  # all equal
    roi_pool(x, np.array([[0, 0.0, 0, 2, 2]]), 1).sum().backward()
    expected = np.zeros((3, 3))
    expected[0, 0] = 1.0  # row-major first
    np.testing.assert_array_equal(host(x.grad)[0, 0], expected)


def test_roi_pool_gradcheck(device, rng):
    # Distinct values (gaps 0.01 ≫ ε) so that every bin's maximum is unique.
    data = rng.permutation(2 * 2 * 6 * 6).reshape(2, 2, 6, 6) * 0.01
    x = tensor(data, device, requires_grad=True)
    rois = rois_on(device, [[0, 0.2, 0.3, 4.6, 5.2], [1, -1.2, 2.0, 3.3, 8.4],
                            [1, 2.0, 2.0, 2.4, 2.4], [0, 1.0, 0.0, 9.0, 3.0]])
    minifpn.gradcheck(lambda t: roi_pool(t, rois, (2, 3)), [x], eps=1e-6, atol=1e-7, rtol=1e-5)


def test_roi_align_in_extents_equals_roi_align_on_each_unpadded_map(device, rng):
    """A batch padded from maps of different sizes, each RoI clamped at its own map's border."""
    from minifpn.ops.roi_pooling import roi_align_in_extents

    maps = [rng.standard_normal((2, 9, 11)), rng.standard_normal((2, 14, 7))]
    boxes = [np.array([[0.0, 0.0, 11.0, 9.0], [6.0, 5.5, 10.9, 8.9]]),  # reach the border
             np.array([[0.2, 9.0, 6.8, 14.0], [1.0, 1.0, 3.0, 2.5]])]
    padded = np.zeros((2, 2, 14, 11))
    for i, m in enumerate(maps):
        padded[i, :, : m.shape[1], : m.shape[2]] = m
    rois = np.concatenate([np.c_[np.full(len(b), i), b] for i, b in enumerate(boxes)])
    extents = np.array([[9, 11], [9, 11], [14, 7], [14, 7]])
    for sampling_ratio in (2, -1):
        expected = np.concatenate([
            roi_align(minifpn.Tensor(m[None]), np.c_[np.zeros(len(b)), b], 4, 1.0,
                      sampling_ratio).numpy() for m, b in zip(maps, boxes)])
        x = minifpn.Tensor(padded, device=device)
        got = roi_align_in_extents(x, backend.to_device(rois, device),
                                   backend.to_device(extents, device), 4, 1.0, sampling_ratio)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
        # without the extents the padding is read near the borders: a different answer
        plain = roi_align(x, backend.to_device(rois, device), 4, 1.0, sampling_ratio).numpy()
        assert not np.allclose(plain, expected)
    x = minifpn.Tensor(padded, requires_grad=True)
    assert minifpn.gradcheck(lambda t: roi_align_in_extents(t, rois, extents, 3, 1.0, 2), [x])


@pytest.mark.parametrize("aligned, sampling_ratio, ys, xs", [
    # the window (0, 0)–(4, 2) cells: bins of 2 × 1, two samples per bin per axis
    (False, 2, [[0.25, 0.75], [1.25, 1.75]], [[0.5, 1.5], [2.5, 3.5]]),
    # the half-cell shift moves every sample by −½
    (True, 2, [[-0.25, 0.25], [0.75, 1.25]], [[0.0, 1.0], [2.0, 3.0]]),
    # adaptive: ceil(2 / 2) = 1 row and ceil(4 / 2) = 2 columns of samples per bin
    (False, -1, [[0.5], [1.5]], [[0.5, 1.5], [2.5, 3.5]]),
])
def test_roi_align_sample_points_by_hand(aligned, sampling_ratio, ys, xs):
    got_ys, got_xs, y_edges, x_edges = roi_align_sample_points(
        (0.0, 0.0, 8.0, 4.0), 2, spatial_scale=0.5, sampling_ratio=sampling_ratio,
        aligned=aligned)
    shift = 0.5 if aligned else 0.0
    np.testing.assert_allclose(got_ys, ys)
    np.testing.assert_allclose(got_xs, xs)
    np.testing.assert_allclose(y_edges, np.array([0.0, 1.0, 2.0]) - shift)
    np.testing.assert_allclose(x_edges, np.array([0.0, 2.0, 4.0]) - shift)


def test_roi_pool_bins_by_hand():
    # (1.3, 0.6, 4.4, 3.5) rounds half away from zero to cells 1…4 on both axes:
    # 4 cells, two bins of 2; the last bin is clipped to the 5-cell map.
    rows, cols, cells = roi_pool_bins((1.3, 0.6, 4.4, 3.5), 2, 1.0, (5, 6))
    assert rows == [(1, 3), (3, 5)] and cols == [(1, 3), (3, 5)]
    assert cells == (1.0, 1.0, 4.0, 4.0)
    rows, _, _ = roi_pool_bins((0, 0, 40, 40), 2, 1 / 8, (4, 4))  # 0…5 at 1/8: 6 cells
    assert rows == [(0, 3), (3, 4)]  # 3 + 3 cells, the second clipped at the map's edge
