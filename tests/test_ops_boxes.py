"""Box ops (``minifpn.ops.boxes``): IoU/IoA, clipping, BoxCoder, NMS, batched NMS.

References are independent of the code under test:

* IoU / IoA by an explicit per-pair loop in plain Python floats;
* hand-computed golden values (disjoint, touching, contained, identical and
  empty boxes; one encode/decode pair; the 62.5× clamp);
* NMS as the textbook sequential loop — visit boxes by decreasing score
  (Python's stable sort, so ties keep input order), keep a box unless it has
  IoU > threshold with an already kept box — and batched NMS as that loop run
  per group.
"""

import math

import numpy as np
import pytest

import minifpn
from minifpn import backend
from minifpn.ops import boxes as boxes_module
from minifpn.ops.boxes import (
    BBOX_XFORM_CLIP,
    BoxCoder,
    batched_nms,
    box_area,
    box_ioa,
    box_iou,
    clip_boxes_to_image,
    greedy_keep,
    nms,
    nms_blocks,
    remove_small_boxes,
)
from tests.box_references import naive_ioa, naive_iou, naive_nms


# ---------------------------------------------------------------------------
# Independent references.
# ---------------------------------------------------------------------------
def naive_pairwise(fn, boxes1, boxes2):
    return np.array([[fn(a, b) for b in boxes2] for a in boxes1]).reshape(len(boxes1), len(boxes2))


def naive_batched_nms(boxes, scores, groups, threshold):
    kept = []
    for g in sorted(set(groups.tolist())):
        members = [i for i in range(len(boxes)) if groups[i] == g]
        kept += [members[k] for k in naive_nms(boxes[members], scores[members], threshold)]
    return sorted(kept, key=lambda i: (-float(scores[i]), i))  # by score; ties by input order


def random_boxes(rng, n, low=0.0, high=100.0, max_size=40.0, dtype=np.float64):
    xy = rng.uniform(low, high, size=(n, 2))
    wh = rng.uniform(0.5, max_size, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(dtype)


def random_nms_case(rng, n):
    """Clustered boxes with many exact duplicates and few distinct scores (ties)."""
    centres = random_boxes(rng, max(1, n // 4), high=60.0)
    boxes = centres[rng.integers(0, len(centres), n)]
    jitter = rng.random(n) < 0.5
    boxes[jitter] += rng.normal(0.0, 3.0, size=(int(jitter.sum()), 4))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
    scores = rng.integers(0, 5, n).astype(np.float64) / 4  # only 5 distinct values
    return boxes, scores


# ---------------------------------------------------------------------------
# box_area / box_iou / box_ioa
# ---------------------------------------------------------------------------
def test_box_area_hand_values():
    b = np.array([[0, 0, 2, 3], [1, 1, 1, 5], [-2, -1, 2, 1]], dtype=np.float32)
    np.testing.assert_array_equal(box_area(b), [6, 0, 8])


IOU_CASES = [
    # (box a, box b, IoU, IoA of a in b)
    ([0, 0, 1, 1], [2, 2, 3, 3], 0.0, 0.0),  # disjoint
    ([0, 0, 1, 1], [1, 0, 2, 1], 0.0, 0.0),  # touching along an edge
    ([0, 0, 1, 1], [1, 1, 2, 2], 0.0, 0.0),  # touching at a corner
    ([0, 0, 4, 4], [1, 1, 3, 3], 4 / 16, 4 / 16),  # b inside a
    ([1, 1, 3, 3], [0, 0, 4, 4], 4 / 16, 1.0),  # a inside b
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 1 / 4),  # partial overlap
    ([0, 0, 2, 1], [0, 0, 1, 1], 0.5, 0.5),
    ([5, 5, 9, 7], [5, 5, 9, 7], 1.0, 1.0),  # identical
    ([1, 1, 1, 1], [1, 1, 1, 1], 0.0, 0.0),  # two identical empty boxes: 0, not NaN
    ([2, 2, 2, 2], [0, 0, 4, 4], 0.0, 0.0),  # an empty box inside a real one
    ([0, 0, 4, 0], [0, 0, 4, 4], 0.0, 0.0),  # a zero-height line
]


@pytest.mark.parametrize("a, b, iou, ioa", IOU_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_box_iou_and_ioa_hand_cases(a, b, iou, ioa, dtype):
    a, b = np.array([a], dtype=dtype), np.array([b], dtype=dtype)
    got_iou, got_ioa = box_iou(a, b), box_ioa(a, b)
    assert got_iou.shape == (1, 1) and got_ioa.shape == (1, 1)
    assert np.isfinite(got_iou).all() and np.isfinite(got_ioa).all()
    assert got_iou[0, 0] == pytest.approx(iou, rel=1e-6, abs=1e-7)
    assert got_ioa[0, 0] == pytest.approx(ioa, rel=1e-6, abs=1e-7)
    # IoU is symmetric
    assert box_iou(b, a)[0, 0] == pytest.approx(iou, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("n, m", [(1, 1), (7, 3), (3, 9), (25, 25)])
def test_box_iou_ioa_match_naive_loop(rng, n, m):
    b1 = random_boxes(rng, n, max_size=30.0)
    b2 = random_boxes(rng, m, max_size=30.0)
    b2[: m // 3] = b1[: m // 3]  # some identical pairs
    b1[0, 2] = b1[0, 0]  # one empty box
    np.testing.assert_allclose(box_iou(b1, b2), naive_pairwise(naive_iou, b1, b2), atol=1e-12)
    np.testing.assert_allclose(box_ioa(b1, b2), naive_pairwise(naive_ioa, b1, b2), atol=1e-12)
    # float32 input: same numbers to float32 precision, float32 output
    iou32 = box_iou(b1.astype(np.float32), b2.astype(np.float32))
    assert iou32.dtype == np.float32
    np.testing.assert_allclose(iou32, naive_pairwise(naive_iou, b1, b2), atol=1e-5)


def test_box_iou_empty_sets():
    some = np.array([[0, 0, 1, 1]], dtype=np.float32)
    none = np.zeros((0, 4), dtype=np.float32)
    assert box_iou(some, none).shape == (1, 0)
    assert box_iou(none, some).shape == (0, 1)


def test_box_iou_accepts_tensors():
    a = np.array([[0, 0, 2, 2]], dtype=np.float64)
    b = np.array([[1, 1, 3, 3]], dtype=np.float64)
    got = box_iou(minifpn.Tensor(a), minifpn.Tensor(b))
    assert got[0, 0] == pytest.approx(1 / 7)


# ---------------------------------------------------------------------------
# clip_boxes_to_image / remove_small_boxes
# ---------------------------------------------------------------------------
def test_clip_boxes_to_image_hand_case():
    boxes = np.array(
        [[-5, -3, 20, 30], [2, 3, 4, 5], [16, 26, 40, 50], [-9, -9, -1, -1]], dtype=np.float32
    )
    got = clip_boxes_to_image(boxes, (25, 15))  # (height, width)
    expected = [[0, 0, 15, 25], [2, 3, 4, 5], [15, 25, 15, 25], [0, 0, 0, 0]]
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(boxes[1], [2, 3, 4, 5])  # input untouched


def test_remove_small_boxes_hand_case():
    boxes = np.array(
        [
            [0, 0, 1, 1],  # 1 × 1: exactly min_size, kept
            [0, 0, 0.5, 5],  # too narrow
            [0, 0, 5, 0.99],  # too short
            [3, 4, 5, 7],  # 2 × 3
            [4, 4, 4, 4],  # empty
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(remove_small_boxes(boxes, 1.0), [0, 3])
    np.testing.assert_array_equal(remove_small_boxes(boxes, 1e-3), [0, 1, 2, 3])
    np.testing.assert_array_equal(remove_small_boxes(boxes, 2.5), [])


# ---------------------------------------------------------------------------
# BoxCoder
# ---------------------------------------------------------------------------
def test_encode_hand_computed_pair():
    reference = np.array([[0, 0, 10, 20]], dtype=np.float64)  # centre (5, 10), 10 × 20
    target = np.array([[2, 4, 22, 24]], dtype=np.float64)  # centre (12, 14), 20 × 20
    expected = np.array([[0.7, 0.2, math.log(2.0), 0.0]])
    np.testing.assert_allclose(BoxCoder().encode(target, reference), expected, atol=1e-15)
    weighted = BoxCoder(weights=(10, 10, 5, 5)).encode(target, reference)
    np.testing.assert_allclose(weighted, [[7.0, 2.0, 5 * math.log(2.0), 0.0]], atol=1e-14)
    # and back
    np.testing.assert_allclose(BoxCoder().decode(expected, reference), target, atol=1e-13)
    np.testing.assert_allclose(
        BoxCoder(weights=(10, 10, 5, 5)).decode(weighted, reference), target, atol=1e-13
    )


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (10, 10, 5, 5)])
def test_encode_decode_round_trip(rng, weights):
    coder = BoxCoder(weights=weights)
    references = random_boxes(rng, 50, max_size=60.0)
    targets = random_boxes(rng, 50, max_size=60.0)
    deltas = coder.encode(targets, references)
    assert deltas.shape == (50, 4)
    np.testing.assert_allclose(coder.decode(deltas, references), targets, rtol=1e-10, atol=1e-9)
    # the other way round: deltas → boxes → the same deltas (sizes within the clamp)
    deltas = rng.normal(0.0, 1.0, size=(50, 4)) * np.array(weights, dtype=np.float64)
    boxes = coder.decode(deltas, references)
    np.testing.assert_allclose(coder.encode(boxes, references), deltas, rtol=1e-9, atol=1e-9)


def test_encode_decode_float32(rng):
    coder = BoxCoder()
    references = random_boxes(rng, 20, dtype=np.float32)
    targets = random_boxes(rng, 20, dtype=np.float32)
    deltas = coder.encode(targets, references)
    assert deltas.dtype == np.float32
    decoded = coder.decode(deltas, references)
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, targets, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (10, 10, 5, 5)])
def test_decode_clamps_size_at_62_5x(weights):
    coder = BoxCoder(weights=weights)
    assert BBOX_XFORM_CLIP == pytest.approx(math.log(1000 / 16))
    reference = np.array([[0, 0, 16, 8]] * 4, dtype=np.float64)  # centre (8, 4), 16 × 8
    ww, wh = weights[2], weights[3]
    deltas = np.array(
        [
            [0, 0, 100 * ww, 1e4 * wh],  # huge: clamped to 62.5×
            [0, 0, 4.0 * ww, -10.0 * wh],  # below the clamp; shrinking is never clamped
            [0, 0, BBOX_XFORM_CLIP * ww, BBOX_XFORM_CLIP * wh],  # exactly at the clamp
            [0, 0, -10.0 * ww, -1e4 * wh],  # shrinking far: not clamped (to ~0)
        ],
        dtype=np.float64,
    )
    boxes = coder.decode(deltas, reference)
    assert np.isfinite(boxes).all()
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    np.testing.assert_allclose(widths, [62.5 * 16, math.exp(4.0) * 16, 62.5 * 16,
                                        math.exp(-10.0) * 16], rtol=1e-9)
    np.testing.assert_allclose(heights, [62.5 * 8, math.exp(-10.0) * 8, 62.5 * 8, 0.0],
                               rtol=1e-9, atol=1e-300)
    # the centre never moves with zero offsets
    np.testing.assert_allclose((boxes[:, 0] + boxes[:, 2]) / 2, 8.0, atol=1e-12)
    np.testing.assert_allclose((boxes[:, 1] + boxes[:, 3]) / 2, 4.0, atol=1e-12)


def test_decode_tensor_deltas_gives_same_values(rng):
    references = random_boxes(rng, 6)
    deltas = rng.normal(size=(6, 4))
    from_tensor = minifpn.Tensor(deltas, requires_grad=True)
    got = BoxCoder().decode(from_tensor, references)
    np.testing.assert_allclose(
        getattr(got, "data", got), BoxCoder().decode(deltas, references), rtol=1e-14
    )


def test_decode_of_tensor_deltas_uses_their_values_outside_the_graph(rng):
    references = random_boxes(rng, 4)
    raw_deltas = rng.normal(size=(4, 4))
    coder = BoxCoder(weights=(10, 10, 5, 5))
    out = coder.decode(minifpn.Tensor(raw_deltas, requires_grad=True), references)
    assert not isinstance(out, minifpn.Tensor)  # proposals/detections are constants
    np.testing.assert_array_equal(out, coder.decode(raw_deltas, references))


# ---------------------------------------------------------------------------
# NMS
# ---------------------------------------------------------------------------
def check_nms(boxes, scores, threshold):
    keep = nms(boxes, scores, threshold)
    assert keep.dtype == np.int64
    assert keep.tolist() == naive_nms(boxes, scores, threshold)
    return keep


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_naive_loop_on_random_sets(rng, threshold):
    for trial in range(12):
        n = int(rng.integers(1, 80))
        boxes, scores = random_nms_case(rng, n)
        if trial % 3 == 0:  # continuous scores as well
            scores = rng.random(n)
        check_nms(boxes, scores, threshold)


def test_nms_all_identical_boxes_and_ties():
    boxes = np.tile(np.array([[10, 10, 20, 30]], dtype=np.float32), (6, 1))
    scores = np.array([0.3, 0.9, 0.9, 0.1, 0.9, 0.3], dtype=np.float32)
    assert check_nms(boxes, scores, 0.5).tolist() == [1]  # first of the tied best
    assert nms(boxes, scores, 1.0).tolist() == [1, 2, 4, 0, 5, 3]  # IoU 1 is not > 1
    equal = np.full(6, 0.5, dtype=np.float32)
    assert nms(boxes, equal, 1.0).tolist() == [0, 1, 2, 3, 4, 5]  # ties: input order
    assert nms(boxes, equal, 0.99).tolist() == [0]


def test_nms_threshold_is_strict():
    boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1]], dtype=np.float64)  # IoU exactly 0.5
    scores = np.array([0.9, 0.8])
    assert check_nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert check_nms(boxes, scores, 0.49).tolist() == [0]


def test_nms_threshold_zero_keeps_touching_boxes():
    boxes = np.array([[0, 0, 1, 1], [1, 0, 2, 1], [0.5, 0, 1.5, 1], [5, 5, 6, 6]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    # touching boxes have IoU 0 (kept); the third overlaps both kept ones
    assert check_nms(boxes, scores, 0.0).tolist() == [0, 1, 3]


@pytest.mark.parametrize("n", [2, 3, 40, 150])
def test_nms_long_suppression_chain(n):
    """Boxes 10 wide, 4 apart: each overlaps the next with IoU 6/14 and the one after
    with 2/18, so at t = 0.3 the answer alternates and needs ~n fixed-point rounds."""
    x = 4.0 * np.arange(n)
    boxes = np.stack([x, np.zeros(n), x + 10, np.full(n, 10.0)], axis=1)
    scores = 1.0 - np.arange(n) / (2 * n)  # decreasing along the chain
    keep = check_nms(boxes, scores, 0.3)
    assert keep.tolist() == list(range(0, n, 2))
    # reversed scores: the chain is walked from the other end
    keep = check_nms(boxes, scores[::-1].copy(), 0.3)
    assert keep.tolist() == list(range(n - 1, -1, -2))


def test_nms_empty_and_single():
    keep = nms(np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.float32), 0.5)
    assert keep.shape == (0,) and keep.dtype == np.int64
    keep = nms(np.array([[0, 0, 1, 1]], dtype=np.float32), np.array([0.2], np.float32), 0.5)
    assert keep.tolist() == [0] and keep.dtype == np.int64


def test_nms_accepts_tensors(rng):
    boxes, scores = random_nms_case(rng, 30)
    keep = nms(minifpn.Tensor(boxes), minifpn.Tensor(scores), 0.5)
    assert keep.tolist() == naive_nms(boxes, scores, 0.5)


# ---------------------------------------------------------------------------
# batched NMS
# ---------------------------------------------------------------------------
def check_batched(boxes, scores, groups, threshold):
    keep = batched_nms(boxes, scores, groups, threshold)
    assert keep.dtype == np.int64
    assert keep.tolist() == naive_batched_nms(boxes, scores, groups, threshold)
    assert (np.diff(scores[keep]) <= 0).all()  # by decreasing score
    return keep


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.7, 1.0])
def test_batched_nms_matches_per_group_naive_loop(rng, threshold):
    for _ in range(10):
        n = int(rng.integers(1, 70))
        boxes, _ = random_nms_case(rng, n)
        scores = rng.random(n)
        groups = rng.integers(0, 4, n)
        check_batched(boxes, scores, groups, threshold)


def test_batched_nms_groups_never_suppress_each_other():
    boxes = np.array([[0, 0, 10, 10]] * 4, dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], dtype=np.float32)
    groups = np.array([0, 1, 0, 2])
    assert batched_nms(boxes, scores, groups, 0.5).tolist() == [0, 1, 3]
    assert nms(boxes, scores, 0.5).tolist() == [0]  # without groups: one survives


def test_batched_nms_empty():
    keep = batched_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                       np.zeros(0, np.int64), 0.5)
    assert keep.shape == (0,) and keep.dtype == np.int64


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_batched_nms_per_group_path_equals_single_path(rng, monkeypatch, threshold):
    n = 120
    boxes, _ = random_nms_case(rng, n)
    scores = rng.permutation(n).astype(np.float64) / n  # distinct scores
    groups = rng.integers(0, 5, n)
    single = batched_nms(boxes, scores, groups, threshold)
    monkeypatch.setattr(boxes_module, "BATCHED_NMS_SINGLE_LIMIT", 10)  # force the per-group path
    per_group = check_batched(boxes, scores, groups, threshold)
    assert per_group.tolist() == single.tolist()


def test_batched_nms_per_group_path_ties_keep_input_order(monkeypatch):
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=np.float64)
    scores = np.array([0.5, 0.5, 0.5])
    groups = np.array([1, 0, 1])
    single = batched_nms(boxes, scores, groups, 0.5)
    assert single.tolist() == naive_batched_nms(boxes, scores, groups, 0.5) == [0, 1, 2]
    monkeypatch.setattr(boxes_module, "BATCHED_NMS_SINGLE_LIMIT", 1)
    assert batched_nms(boxes, scores, groups, 0.5).tolist() == single.tolist()


# ---------------------------------------------------------------------------
# The same ops on each device (CUDA skips cleanly without CuPy and a GPU)
# ---------------------------------------------------------------------------
def test_box_ops_on_device(device, rng):
    b1, b2 = random_boxes(rng, 9), random_boxes(rng, 5)
    d1, d2 = backend.to_device(b1, device), backend.to_device(b2, device)
    assert backend.device_of(box_iou(d1, d2)) == device
    np.testing.assert_allclose(backend.to_numpy(box_iou(d1, d2)),
                               naive_pairwise(naive_iou, b1, b2), atol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(box_ioa(d1, d2)),
                               naive_pairwise(naive_ioa, b1, b2), atol=1e-12)
    np.testing.assert_array_equal(backend.to_numpy(clip_boxes_to_image(d1, (50, 60))),
                                  clip_boxes_to_image(b1, (50, 60)))
    np.testing.assert_array_equal(backend.to_numpy(remove_small_boxes(d1, 10.0)),
                                  remove_small_boxes(b1, 10.0))
    coder = BoxCoder(weights=(10, 10, 5, 5))
    np.testing.assert_allclose(backend.to_numpy(coder.decode(coder.encode(d2, d1[:5]), d1[:5])),
                               b2, rtol=1e-10, atol=1e-9)


def test_nms_on_device(device, rng):
    for threshold in (0.0, 0.5, 1.0):
        boxes, scores = random_nms_case(rng, 60)
        groups = rng.integers(0, 3, 60)
        db, ds, dg = (backend.to_device(a, device) for a in (boxes, scores, groups))
        keep = nms(db, ds, threshold)
        assert backend.device_of(keep) == device
        assert backend.to_numpy(keep).tolist() == naive_nms(boxes, scores, threshold)
        kept = backend.to_numpy(batched_nms(db, ds, dg, threshold)).tolist()
        assert kept == naive_batched_nms(boxes, scores, groups, threshold)


def test_nms_blocks_with_validity_match_the_naive_loop_per_block(device, rng):
    sizes = [7, 0, 25, 1, 40]
    blocks, valids, expected, start = [], [], [], 0
    for n in sizes:
        boxes, scores = random_nms_case(rng, n) if n else (np.zeros((0, 4)), np.zeros(0))
        order = np.argsort(-scores, kind="stable")  # the blocks come sorted best first
        boxes, scores = boxes[order], scores[order]
        valid = rng.random(n) > 0.3
        # The reference: the valid rows alone, greedy NMS in score order.
        members = np.flatnonzero(valid)
        kept = [members[k] for k in naive_nms(boxes[members], scores[members], 0.4)]
        expected += sorted(start + k for k in kept)
        blocks.append(boxes)
        valids.append(valid)
        start += n
    boxes = backend.to_device(np.concatenate(blocks), device)
    valid = backend.to_device(np.concatenate(valids), device)
    kept, per_block = nms_blocks(boxes, sizes, 0.4, valid)
    assert backend.device_of(kept) == device
    assert backend.to_numpy(kept).tolist() == expected
    assert sum(per_block) == len(expected) and per_block[1] == 0 and len(per_block) == 5


def test_greedy_keep_by_hand():
    # 0 suppresses 1, 1 would suppress 2 — but 1 is gone, so 2 stays; 3 is suppressed by 2.
    s = np.zeros((4, 4), bool)
    s[0, 1] = s[1, 2] = s[2, 3] = True
    assert greedy_keep(s).tolist() == [True, False, True, False]
    # A row that takes no part suppresses nothing: with 0 out, 1 survives and removes 2.
    assert greedy_keep(s, np.array([False, True, True, True])).tolist() == [
        False, True, False, True]


def test_box_iou_accepts_integer_boxes_and_box_ioa_tensors():
    a = np.array([[0, 0, 2, 2]])
    np.testing.assert_allclose(box_iou(a, a), [[1.0]])
    t = minifpn.Tensor(np.array([[0.0, 0.0, 2.0, 2.0]]))
    np.testing.assert_allclose(box_ioa(t, np.array([[1.0, 0.0, 3.0, 2.0]])), [[0.5]])
