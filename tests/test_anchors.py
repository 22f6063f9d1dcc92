"""Anchors (``minifpn.models.anchors``) and their agreement with the RPN head layout.

References are independent of the code under test:

* base anchors from the formula h = size·√r, w = size/√r, corners ±w/2, ±h/2
  rounded half-to-even (Python's ``round``), and torchvision's published
  values for the default FPN sizes (hand-checked against that formula);
* anchor counts and strides for an 800×1344 batch by hand;
* the grid order by an explicit loop over rows, columns and anchors;
* the head layout by encoding (level, image, anchor, row, column) into each
  output channel and decoding it back from the anchor's own geometry.
"""

import math

import numpy as np
import pytest

import minifpn
from minifpn import backend
from minifpn.models.anchors import DEFAULT_ASPECT_RATIOS, DEFAULT_SIZES, AnchorGenerator
from minifpn.models.rpn import RPNHead, flatten_predictions

# torchvision's AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
# cell anchors — each row checked by hand: e.g. size 32, r = 0.5: w = 32/√0.5 = 45.25,
# h = 32·√0.5 = 22.63 → ±22.63 → ±23 and ±11.31 → ±11.
TORCHVISION_CELL_ANCHORS = {
    32: [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]],
    64: [[-45, -23, 45, 23], [-32, -32, 32, 32], [-23, -45, 23, 45]],
    128: [[-91, -45, 91, 45], [-64, -64, 64, 64], [-45, -91, 45, 91]],
    256: [[-181, -91, 181, 91], [-128, -128, 128, 128], [-91, -181, 91, 181]],
    512: [[-362, -181, 362, 181], [-256, -256, 256, 256], [-181, -362, 181, 362]],
}


def ref_base_anchors(size, ratios):
    rows = []
    for r in ratios:
        h, w = size * math.sqrt(r), size / math.sqrt(r)
        rows.append([round(-w / 2), round(-h / 2), round(w / 2), round(h / 2)])
    return np.array(rows, dtype=np.float64)


def ref_grid_anchors(base, height, width, stride_h, stride_w):
    """Row by row, column by column, then the A anchors of the cell."""
    out = []
    for i in range(height):
        for j in range(width):
            for k in range(len(base)):
                x1, y1, x2, y2 = base[k]
                out.append([x1 + j * stride_w, y1 + i * stride_h, x2 + j * stride_w,
                            y2 + i * stride_h])
    return np.array(out, dtype=np.float64).reshape(-1, 4)


def test_defaults_are_the_papers():
    assert DEFAULT_SIZES == (32, 64, 128, 256, 512)
    assert DEFAULT_ASPECT_RATIOS == (0.5, 1.0, 2.0)
    gen = AnchorGenerator()
    assert gen.num_anchors_per_location() == [3] * 5
    assert len(gen.cell_anchors) == 5


def test_base_anchors_equal_torchvision_values():
    gen = AnchorGenerator()
    for size, cell in zip(DEFAULT_SIZES, gen.cell_anchors):
        np.testing.assert_array_equal(cell, TORCHVISION_CELL_ANCHORS[size])
        np.testing.assert_array_equal(cell, ref_base_anchors(size, DEFAULT_ASPECT_RATIOS))


@pytest.mark.parametrize("size", [16, 24, 32, 40, 64, 96, 100, 128, 256, 512])
@pytest.mark.parametrize("ratios", [(0.5, 1.0, 2.0), (0.25, 1.0, 4.0), (1.0,), (1 / 3, 3.0)])
def test_base_anchor_areas_and_ratios(size, ratios):
    gen = AnchorGenerator(sizes=(size,), aspect_ratios=ratios)
    (cell,) = gen.cell_anchors
    assert cell.shape == (len(ratios), 4)
    np.testing.assert_array_equal(cell, ref_base_anchors(size, ratios))
    for (x1, y1, x2, y2), r in zip(cell, ratios):
        assert (x1, y1) == (-x2, -y2)  # centred on (0, 0)
        w, h = x2 - x1, y2 - y1
        true_w, true_h = size / math.sqrt(r), size * math.sqrt(r)
        assert abs(w - true_w) <= 1 and abs(h - true_h) <= 1  # rounding moves each end ≤ ½
        assert (true_w - 1) * (true_h - 1) <= w * h <= (true_w + 1) * (true_h + 1)
        assert (true_h - 1) / (true_w + 1) <= h / w <= (true_h + 1) / (true_w - 1)
    if ratios == (1.0,) and size % 2 == 0:
        np.testing.assert_array_equal(cell, [[-size / 2, -size / 2, size / 2, size / 2]])


def test_several_scales_at_one_level_are_ratio_major_like_torchvision():
    # torchvision: ws = (w_ratios[:, None] * scales[None, :]).view(-1) — ratio-major, scale-minor
    sizes = (32, 64, 128, 256, 512)
    gen = AnchorGenerator(sizes=(sizes,))
    assert gen.num_anchors_per_location() == [15]
    expected = [TORCHVISION_CELL_ANCHORS[s][r] for r in range(3) for s in sizes]
    np.testing.assert_array_equal(gen.cell_anchors[0], expected)
    # torchvision's tuple-of-tuples spelling gives the one-size-per-level default
    single = AnchorGenerator(sizes=tuple((s,) for s in sizes))
    for a, b in zip(single.cell_anchors, AnchorGenerator().cell_anchors):
        np.testing.assert_array_equal(a, b)
    (grid,) = gen((64, 64), [(4, 4)])
    np.testing.assert_array_equal(grid, ref_grid_anchors(np.array(expected), 4, 4, 16, 16))


def test_levels_with_different_numbers_of_scales_are_an_error():
    with pytest.raises(ValueError, match="same number of anchors per location"):
        AnchorGenerator(sizes=((32, 64), (128,)))


def test_torchvisions_per_level_aspect_ratios_give_three_anchors_per_cell():
    # torchvision's own spelling of the FPN default: one tuple of ratios per level.
    gen = AnchorGenerator(sizes=((32,), (64,), (128,), (256,), (512,)),
                          aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    assert gen.num_anchors_per_location() == [3] * 5
    for size, cell in zip(DEFAULT_SIZES, gen.cell_anchors):
        np.testing.assert_array_equal(cell, TORCHVISION_CELL_ANCHORS[size])
    feature_sizes = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    for a, b in zip(gen((64, 96), feature_sizes), AnchorGenerator()((64, 96), feature_sizes)):
        np.testing.assert_array_equal(a, b)


def test_aspect_ratios_may_differ_per_level():
    gen = AnchorGenerator(sizes=(32, 64), aspect_ratios=((0.5, 1.0, 2.0), (0.25, 1.0, 4.0)))
    assert gen.aspect_ratios == ((0.5, 1.0, 2.0), (0.25, 1.0, 4.0))
    np.testing.assert_array_equal(gen.cell_anchors[0], ref_base_anchors(32, (0.5, 1.0, 2.0)))
    np.testing.assert_array_equal(gen.cell_anchors[1], ref_base_anchors(64, (0.25, 1.0, 4.0)))


@pytest.mark.parametrize("sizes, ratios, message", [
    ((32, 64), ((0.5, 1.0, 2.0),) * 3, "3 per-level entries but sizes has 2 levels"),
    ((32, 64), ((0.5, 1.0), 2.0), "got a mix"),
    ((32, 64), ((0.5, 1.0, 2.0), (1.0,)), "same number of anchors per location"),
    ((32, 64), (), "aspect_ratios is empty"),
    ((32, 64), ((0.5, 1.0), ()), "at least one positive aspect ratio"),
    ((32,), (0.0, 1.0), "at least one positive aspect ratio"),
    ((32,), (-1.0,), "at least one positive aspect ratio"),
])
def test_malformed_aspect_ratios_are_refused(sizes, ratios, message):
    with pytest.raises(ValueError, match=message):
        AnchorGenerator(sizes=sizes, aspect_ratios=ratios)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_anchors_follow_the_features_dtype(dtype):
    # torchvision's anchors take the feature maps' dtype: a float64 model gets float64
    # anchors (and so float64 regression targets), not float32 ones.
    like = np.zeros((1, 4, 2, 3), dtype=dtype)
    for anchors in AnchorGenerator()((64, 96), [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)],
                                     like=like):
        assert anchors.dtype == dtype
    integer_like = np.zeros(3, dtype=np.int64)  # not floating: the float32 default
    assert AnchorGenerator(sizes=(8,))((16, 16), [(2, 2)], like=integer_like)[0].dtype == np.float32


def test_rounding_is_half_to_even():
    # size 5, ratio 1: corners ±2.5 → ±2 (half to even), not ±3; size 7: ±3.5 → ±4
    np.testing.assert_array_equal(AnchorGenerator(sizes=(5,), aspect_ratios=(1.0,)).cell_anchors[0],
                                  [[-2, -2, 2, 2]])
    np.testing.assert_array_equal(AnchorGenerator(sizes=(7,), aspect_ratios=(1.0,)).cell_anchors[0],
                                  [[-4, -4, 4, 4]])


def test_counts_and_strides_for_800x1344_batch():
    gen = AnchorGenerator()
    # P2..P6 of an 800 × 1344 batch: ⌈800/4⌉ … and P6 = ⌈25/2⌉ × ⌈42/2⌉
    feature_sizes = [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]
    anchors = gen((800, 1344), feature_sizes)
    assert [a.shape for a in anchors] == [
        (200 * 336 * 3, 4), (100 * 168 * 3, 4), (50 * 84 * 3, 4), (25 * 42 * 3, 4), (13 * 21 * 3, 4)
    ]
    assert sum(len(a) for a in anchors) == 268569  # 3 · (67200 + 16800 + 4200 + 1050 + 273)
    assert all(a.dtype == np.float32 for a in anchors)
    # strides are image // map, as torchvision: P6 is 800 // 13 = 61 tall, 1344 // 21 = 64 wide
    expected_strides = [(4, 4), (8, 8), (16, 16), (32, 32), (61, 64)]
    for level, (a, (h, w), (sh, sw)) in enumerate(zip(anchors, feature_sizes, expected_strides)):
        base = TORCHVISION_CELL_ANCHORS[DEFAULT_SIZES[level]]
        grid = a.reshape(h, w, 3, 4)
        # spot checks of the layout formula anchor(i, j, k) = base[k] + (j·sw, i·sh, j·sw, i·sh)
        for i, j, k in [(0, 0, 0), (0, 1, 2), (1, 0, 1), (h - 1, w - 1, 2), (h // 2, w // 3, 0)]:
            x1, y1, x2, y2 = base[k]
            np.testing.assert_array_equal(
                grid[i, j, k], [x1 + j * sw, y1 + i * sh, x2 + j * sw, y2 + i * sh]
            )


@pytest.mark.parametrize(
    "image_size, feature_sizes",
    [((64, 96), [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]),
     ((40, 72), [(10, 18), (5, 9), (3, 5), (2, 3), (1, 2)])],
)
def test_grid_order_matches_naive_loop(image_size, feature_sizes):
    gen = AnchorGenerator()
    anchors = gen(image_size, feature_sizes)
    for level, ((h, w), a) in enumerate(zip(feature_sizes, anchors)):
        stride_h, stride_w = image_size[0] // h, image_size[1] // w
        expected = ref_grid_anchors(ref_base_anchors(DEFAULT_SIZES[level], DEFAULT_ASPECT_RATIOS),
                                    h, w, stride_h, stride_w)
        np.testing.assert_array_equal(a, expected)


def test_wrong_number_of_levels_is_an_error():
    with pytest.raises(ValueError, match="5 sizes but got 2 levels"):
        AnchorGenerator()((64, 64), [(16, 16), (8, 8)])


def test_grid_starts_at_zero_not_half_a_stride():
    anchors = AnchorGenerator(sizes=(8,), aspect_ratios=(1.0,))((16, 16), [(2, 2)])[0]
    # stride 8: centres at (0, 0), (8, 0), (0, 8), (8, 8)
    np.testing.assert_array_equal(
        anchors, [[-4, -4, 4, 4], [4, -4, 12, 4], [-4, 4, 4, 12], [4, 4, 12, 12]]
    )


# ---------------------------------------------------------------------------
# Anchors ↔ head outputs
# ---------------------------------------------------------------------------
def test_flatten_predictions_follows_anchor_order():
    """Channel values encode (level, image, anchor, row, column); after flattening,
    prediction t must describe anchor t, whose row/column/shape we read off its box."""
    gen = AnchorGenerator()
    image_size = (64, 96)
    feature_sizes = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    anchors_per_level = gen(image_size, feature_sizes)
    n, a = 2, gen.num_anchors_per_location()[0]

    def code(level, img, k, i, j, c=0):
        return ((((level * 10 + img) * 10 + k) * 10 + c) * 100 + i) * 100 + j

    objectness, deltas = [], []
    for level, (h, w) in enumerate(feature_sizes):
        logits = np.zeros((n, a, h, w))
        box = np.zeros((n, 4 * a, h, w))
        for img in range(n):
            for k in range(a):
                for i in range(h):
                    for j in range(w):
                        logits[img, k, i, j] = code(level, img, k, i, j)
                        for c in range(4):  # torchvision: channel k·4 + c
                            box[img, 4 * k + c, i, j] = code(level, img, k, i, j, c)
        objectness.append(minifpn.Tensor(logits))
        deltas.append(minifpn.Tensor(box))
    flat_logits, flat_deltas = flatten_predictions(objectness, deltas)
    total = sum(len(x) for x in anchors_per_level)
    assert flat_logits.shape == (n, total) and flat_deltas.shape == (n, total, 4)

    # the (level, anchor, row, column) each anchor describes, from its own geometry
    expected = []
    for level, (anchors, (h, w)) in enumerate(zip(anchors_per_level, feature_sizes)):
        stride_h, stride_w = image_size[0] // h, image_size[1] // w
        base = TORCHVISION_CELL_ANCHORS[DEFAULT_SIZES[level]]
        for x1, y1, x2, y2 in anchors.tolist():
            j, i = (x1 + x2) / 2 / stride_w, (y1 + y2) / 2 / stride_h
            shape = [x2 - x1, y2 - y1]
            k = [[b[2] - b[0], b[3] - b[1]] for b in base].index(shape)
            expected.append((level, k, int(i), int(j)))
    for img in range(n):
        want_logits = [code(lv, img, k, i, j) for lv, k, i, j in expected]
        np.testing.assert_array_equal(flat_logits.data[img], want_logits)
        want_deltas = [[code(lv, img, k, i, j, c) for c in range(4)] for lv, k, i, j in expected]
        np.testing.assert_array_equal(flat_deltas.data[img], want_deltas)


def test_flatten_predictions_backward_routes_gradients(rng):
    """Gradients of the flattened predictions land on the right head outputs."""
    logits = [minifpn.Tensor(rng.standard_normal((1, 3, 2, 3)), requires_grad=True),
              minifpn.Tensor(rng.standard_normal((1, 3, 1, 2)), requires_grad=True)]
    deltas = [minifpn.Tensor(rng.standard_normal((1, 12, 2, 3)), requires_grad=True),
              minifpn.Tensor(rng.standard_normal((1, 12, 1, 2)), requires_grad=True)]
    minifpn.gradcheck(lambda *t: flatten_predictions(t[:2], t[2:])[0], logits + deltas,
                      wrt=logits)
    minifpn.gradcheck(lambda *t: flatten_predictions(t[:2], t[2:])[1], logits + deltas,
                      wrt=deltas)


def test_rpn_head_output_shapes_match_anchor_counts(rng):
    minifpn.manual_seed(0)
    head = RPNHead(in_channels=4, num_anchors=3)
    feature_sizes = [(8, 12), (4, 6), (2, 3)]
    features = [minifpn.Tensor(rng.standard_normal((2, 4, h, w)).astype(np.float32))
                for h, w in feature_sizes]
    objectness, deltas = head(features)
    assert [o.shape for o in objectness] == [(2, 3, h, w) for h, w in feature_sizes]
    assert [d.shape for d in deltas] == [(2, 12, h, w) for h, w in feature_sizes]
    gen = AnchorGenerator(sizes=(32, 64, 128))
    anchors = gen((32, 48), feature_sizes)
    flat_logits, flat_deltas = flatten_predictions(objectness, deltas)
    assert flat_logits.shape == (2, sum(len(a) for a in anchors))
    assert flat_deltas.shape == (2, sum(len(a) for a in anchors), 4)
    # torchvision's parameter names and initialisation
    names = dict(head.named_parameters())
    assert set(names) == {"conv.0.0.weight", "conv.0.0.bias", "cls_logits.weight",
                          "cls_logits.bias", "bbox_pred.weight", "bbox_pred.bias"}
    assert all((names[k].data == 0).all() for k in names if k.endswith("bias"))


def test_anchors_on_device(device):
    like = backend.to_device(np.zeros(1, np.float32), device)
    feature_sizes = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    on_device = AnchorGenerator()((64, 96), feature_sizes, like=like)
    on_host = AnchorGenerator()((64, 96), feature_sizes)
    for a, b in zip(on_device, on_host):
        assert backend.device_of(a) == device and a.dtype == np.float32
        np.testing.assert_array_equal(backend.to_numpy(a), b)


def test_anchors_are_built_once_per_input_size(device):
    generator = AnchorGenerator()
    like = backend.to_device(np.zeros(1, np.float32), device)
    first = generator((64, 96), [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)], like=like)
    again = generator((64, 96), [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)], like=like)
    assert all(a is b for a, b in zip(first, again))  # the cached arrays, no new copy
    assert backend.device_of(first[0]) == device
    other = generator((96, 64), [(24, 16), (12, 8), (6, 4), (3, 2), (2, 1)], like=like)
    assert other[0].shape == (24 * 16 * 3, 4) and other[0] is not first[0]
    np.testing.assert_array_equal(backend.to_numpy(first[0]),
                                  AnchorGenerator()((64, 96), [(16, 24)] + [(1, 1)] * 4)[0])
