"""Box head, mask head and RoI heads (``minifpn.models.{box_head, mask_head, roi_heads}``).

References are independent of the code under test:

* training samples checked RoI by RoI with a naive IoU loop (IoU ≥ 0.5 →
  its best ground truth's class, else background; ≤ 25 % of 512 foreground;
  ground-truth boxes added; crowd boxes never foreground), and one regression
  target computed by hand with weights (10, 10, 5, 5);
* ``fastrcnn_loss`` and ``maskrcnn_loss`` recomputed in NumPy (cross-entropy
  over all RoIs + smooth-L1 β = 1/9 on each foreground RoI's own-class deltas,
  summed and divided by R; per-pixel BCE on the ground-truth class's channel),
  and float64 central differences for their gradients;
* post-processing by hand-made cases and a naive per-image pipeline (decode
  per class, clip, drop background, threshold, drop tiny, sequential NMS per
  class, keep the best);
* mask targets on hand-made masks (RoIAlign's sample points worked out on
  paper), and pasting against a naive per-detection loop written from
  torchvision's ``paste_mask_in_image`` (pad by 1, expand the box by
  (M+2)/M, truncate to int, bilinear ``align_corners=False`` resize to the
  integer box x0..x1 inclusive, place with clipping); pasted masks survive a
  COCO RLE round trip (``pycocotools.mask``).
"""

import math

import numpy as np
import pytest

import minifpn
from minifpn import backend
from minifpn.models.box_head import (
    BOX_HEAD_WEIGHTS,
    BOX_SMOOTH_L1_BETA,
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
    fastrcnn_loss,
)
from minifpn.models.mask_head import (
    MaskRCNNHeads,
    MaskRCNNPredictor,
    maskrcnn_loss,
    paste_masks_in_image,
    project_masks_on_boxes,
    project_masks_on_boxes_batch,
)
from minifpn.models.roi_heads import RoIHeads
from minifpn.ops.poolers import MultiScaleRoIAlign
from tests.box_references import naive_iou, naive_nms

mask_util = pytest.importorskip("pycocotools.mask")


def host(x):
    return backend.to_numpy(x.data if isinstance(x, minifpn.Tensor) else x)


def T(array, requires_grad=False):
    return minifpn.Tensor(np.array(array, dtype=np.float64), requires_grad=requires_grad)


# ---------------------------------------------------------------------------
# Naive references.
# ---------------------------------------------------------------------------
def naive_encode(gt, roi, weights=(10.0, 10.0, 5.0, 5.0)):
    w, h = roi[2] - roi[0], roi[3] - roi[1]
    cx, cy = roi[0] + w / 2, roi[1] + h / 2
    gw, gh = gt[2] - gt[0], gt[3] - gt[1]
    gx, gy = gt[0] + gw / 2, gt[1] + gh / 2
    return [weights[0] * (gx - cx) / w, weights[1] * (gy - cy) / h,
            weights[2] * math.log(gw / w), weights[3] * math.log(gh / h)]


def naive_decode(delta, roi, weights=(10.0, 10.0, 5.0, 5.0)):
    w, h = roi[2] - roi[0], roi[3] - roi[1]
    cx, cy = roi[0] + w / 2, roi[1] + h / 2
    clip = math.log(1000.0 / 16)
    dx, dy = delta[0] / weights[0], delta[1] / weights[1]
    dw, dh = min(delta[2] / weights[2], clip), min(delta[3] / weights[3], clip)
    px, py, pw, ph = dx * w + cx, dy * h + cy, math.exp(dw) * w, math.exp(dh) * h
    return [px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2]


def naive_softmax(row):
    e = np.exp(np.asarray(row) - np.max(row))
    return e / e.sum()


def naive_postprocess(logits, deltas, proposals, image_sizes, score_thresh=0.05,
                      nms_thresh=0.5, detections_per_img=100):
    """torchvision's postprocess_detections, one proposal and one class at a time."""
    num_classes = logits.shape[1]
    out, start = [], 0
    for props, (height, width) in zip(proposals, image_sizes):
        candidates = []  # (box, score, label)
        for i, roi in enumerate(props):
            scores = naive_softmax(logits[start + i])
            for c in range(1, num_classes):  # background never
                b = naive_decode(deltas[start + i, 4 * c:4 * c + 4], roi)
                b = [min(max(b[0], 0), width), min(max(b[1], 0), height),
                     min(max(b[2], 0), width), min(max(b[3], 0), height)]
                if scores[c] > score_thresh and b[2] - b[0] >= 1e-2 and b[3] - b[1] >= 1e-2:
                    candidates.append((b, scores[c], c))
        start += len(props)
        kept = []
        for c in range(1, num_classes):
            members = [k for k in candidates if k[2] == c]
            keep = naive_nms([m[0] for m in members], [m[1] for m in members], nms_thresh)
            kept += [members[k] for k in keep]
        kept = sorted(kept, key=lambda k: -k[1])[:detections_per_img]
        out.append(kept)
    return out


def smooth_l1(d, beta):
    d = np.abs(d)
    return np.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def bilinear_resize(image, out_h, out_w):
    """``F.interpolate(mode="bilinear", align_corners=False)`` of a 2-D array, pixel by pixel."""
    in_h, in_w = image.shape

    def source(dst, in_size, out_size):
        src = (dst + 0.5) * (in_size / out_size) - 0.5
        src = max(src, 0.0)
        i0 = int(src)
        i1 = i0 + 1 if i0 < in_size - 1 else i0
        return i0, i1, src - i0

    out = np.zeros((out_h, out_w))
    for y in range(out_h):
        y0, y1, ly = source(y, in_h, out_h)
        for x in range(out_w):
            x0, x1, lx = source(x, in_w, out_w)
            out[y, x] = ((1 - ly) * ((1 - lx) * image[y0, x0] + lx * image[y0, x1])
                         + ly * ((1 - lx) * image[y1, x0] + lx * image[y1, x1]))
    return out


def naive_paste(masks, boxes, height, width, padding=1):
    """torchvision's ``paste_masks_in_image``, one detection and one pixel at a time."""
    out = np.zeros((len(masks), 1, height, width))
    for d, (mask, b) in enumerate(zip(masks, boxes)):
        m = mask.shape[-1]
        padded = np.zeros((m + 2 * padding, m + 2 * padding))
        padded[padding:padding + m, padding:padding + m] = mask
        scale = (m + 2 * padding) / m
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        hw, hh = (b[2] - b[0]) / 2 * scale, (b[3] - b[1]) / 2 * scale
        x0, y0, x1, y1 = (int(v) for v in (cx - hw, cy - hh, cx + hw, cy + hh))  # truncation
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        resized = bilinear_resize(padded, h, w)
        for y in range(max(y0, 0), min(y1 + 1, height)):
            for x in range(max(x0, 0), min(x1 + 1, width)):
                out[d, 0, y, x] = resized[y - y0, x - x0]
    return out


# ---------------------------------------------------------------------------
# Training samples.
# ---------------------------------------------------------------------------
GT = np.array([[20.0, 20, 80, 90], [100, 30, 160, 110]])
GT_LABELS = np.array([1, 2])


def jittered(rng, boxes, count, amount):
    picks = boxes[rng.integers(len(boxes), size=count)]
    return picks + rng.uniform(-amount, amount, (count, 4))


def background(rng, count):
    xy = rng.uniform(180, 400, (count, 2))
    return np.concatenate([xy, xy + rng.uniform(5, 60, (count, 2))], axis=1)


def check_sample_against_naive(sample, gt, gt_labels, candidates):
    rois, labels = sample["rois"], sample["labels"]
    for roi, label, matched, target in zip(rois, labels, sample["matched_idxs"],
                                           sample["regression_targets"]):
        assert any(np.array_equal(roi, c) for c in candidates)  # a proposal or a gt box
        ious = [naive_iou(roi, g) for g in gt]
        best = int(np.argmax(ious))
        if ious[best] >= 0.5:
            assert label == gt_labels[best] and matched == best
            np.testing.assert_allclose(target, naive_encode(gt[best], roi), rtol=1e-9,
                                       atol=1e-9)
        else:
            assert label == 0


def test_sampling_proportions_many_foreground(rng):
    minifpn.manual_seed(0)
    proposals = np.concatenate([jittered(rng, GT, 300, 4.0), background(rng, 1200)])
    heads = RoIHeads(None, None, None)
    (sample,) = heads.select_training_samples([proposals], [{"boxes": GT, "labels": GT_LABELS}])
    labels = sample["labels"]
    assert len(labels) == 512
    assert (labels > 0).sum() == 128  # 25 % of 512, there being 302 candidates
    assert (labels == 0).sum() == 384
    assert set(np.unique(labels[labels > 0]).tolist()) == {1, 2}
    check_sample_against_naive(sample, GT, GT_LABELS, np.concatenate([proposals, GT]))
    # No RoI is drawn twice.
    assert len({tuple(r) for r in sample["rois"]}) == 512


def test_sampling_fills_with_background_and_adds_gt(rng):
    minifpn.manual_seed(1)
    proposals = np.concatenate([jittered(rng, GT, 50, 3.0), background(rng, 1000)])
    heads = RoIHeads(None, None, None)
    (sample,) = heads.select_training_samples([proposals], [{"boxes": GT, "labels": GT_LABELS}])
    assert len(sample["labels"]) == 512
    assert (sample["labels"] > 0).sum() == 52  # 50 jittered + the 2 ground-truth boxes
    for g in GT:  # ground truth is among the RoIs, as foreground with a zero target
        (row,) = np.flatnonzero((sample["rois"] == g).all(axis=1))
        assert sample["labels"][row] == GT_LABELS[(GT == g).all(axis=1)][0]
        np.testing.assert_allclose(sample["regression_targets"][row], 0.0, atol=1e-12)
    check_sample_against_naive(sample, GT, GT_LABELS, np.concatenate([proposals, GT]))


def test_sampling_small_batch_and_several_images(rng):
    heads = RoIHeads(None, None, None, batch_size_per_image=16, positive_fraction=0.5)
    far = background(rng, 10)
    near = jittered(rng, GT, 30, 3.0)
    samples = heads.select_training_samples(
        [far, near], [{"boxes": GT, "labels": GT_LABELS}, {"boxes": GT[:1], "labels": [3]}])
    # Image 0: only the 2 gt boxes are foreground; all 12 RoIs fit in the batch.
    assert len(samples[0]["labels"]) == 12
    assert sorted(samples[0]["labels"][samples[0]["labels"] > 0].tolist()) == [1, 2]
    # Image 1: 16 RoIs, at most 8 foreground, all of class 3 (one gt box).
    labels = samples[1]["labels"]
    assert len(labels) <= 16 and (labels > 0).sum() <= 8
    assert set(labels[labels > 0].tolist()) <= {3}
    check_sample_against_naive(samples[1], GT[:1], np.array([3]),
                               np.concatenate([near, GT[:1]]))


def test_sampling_iou_threshold_is_inclusive_at_half():
    gt = np.array([[0.0, 0, 10, 10]])
    proposals = np.array([[0.0, 0, 10, 20], [0.0, 0, 10, 20.5]])  # IoU 0.5 and 100/205
    heads = RoIHeads(None, None, None)
    (sample,) = heads.select_training_samples([proposals], [{"boxes": gt, "labels": [4]}])
    label_of = {tuple(r): lab for r, lab in zip(sample["rois"], sample["labels"])}
    assert label_of[(0.0, 0.0, 10.0, 20.0)] == 4
    assert label_of[(0.0, 0.0, 10.0, 20.5)] == 0


def test_regression_target_by_hand():
    # RoI centre (20, 30), size 20 × 40; gt centre (24, 34), size 24 × 40 (IoU 648/1112):
    # (10·4/20, 10·4/40, 5·log(24/20), 5·log(40/40)) = (2, 1, 5·log 1.2, 0).
    heads = RoIHeads(None, None, None)
    (sample,) = heads.select_training_samples(
        [np.array([[10.0, 10, 30, 50]])],
        [{"boxes": np.array([[12.0, 14, 36, 54]]), "labels": [1]}])
    (row,) = np.flatnonzero((sample["rois"] == [10, 10, 30, 50]).all(axis=1))
    assert sample["labels"][row] == 1
    np.testing.assert_allclose(sample["regression_targets"][row],
                               [2.0, 1.0, 5 * math.log(1.2), 0.0], rtol=1e-12, atol=1e-12)
    assert BOX_HEAD_WEIGHTS == (10.0, 10.0, 5.0, 5.0)


def test_crowd_boxes_are_never_foreground():
    a = [10.0, 10, 50, 50]  # an object, class 1
    crowd = [100.0, 100, 200, 200]  # a crowd region, class 2
    p_crowd = [100.0, 100, 200, 200]  # = the crowd box: IoU 1 with it, yet not class 2
    p_inside = [120.0, 120, 210, 210]  # 79 % inside the crowd: ignored
    p_far = [300.0, 300, 340, 340]  # background
    p_edge = [160.0, 160, 260, 260]  # 16 % inside the crowd: background
    p_obj = [12.0, 11, 52, 50]  # foreground, class 1
    heads = RoIHeads(None, None, None)
    target = {"boxes": np.array([a, crowd]), "labels": np.array([1, 2]),
              "iscrowd": np.array([0, 1])}
    (sample,) = heads.select_training_samples(
        [np.array([p_crowd, p_inside, p_far, p_edge, p_obj])], [target])
    got = {tuple(r): int(lab) for r, lab in zip(sample["rois"], sample["labels"])}
    assert got == {tuple(p_obj): 1, tuple(a): 1, tuple(p_far): 0, tuple(p_edge): 0}
    assert 2 not in sample["labels"]
    assert (sample["matched_idxs"][sample["labels"] > 0] == 0).all()

    # An image with only a crowd: no foreground; the crowd box itself is not a RoI.
    target = {"boxes": np.array([crowd]), "labels": np.array([2]), "iscrowd": np.array([1])}
    (sample,) = heads.select_training_samples([np.array([p_crowd, p_far, p_inside])], [target])
    assert [tuple(r) for r in sample["rois"]] == [tuple(p_far)]
    assert sample["labels"].tolist() == [0]


# ---------------------------------------------------------------------------
# fastrcnn_loss.
# ---------------------------------------------------------------------------
def numpy_fastrcnn_loss(logits, deltas, labels, targets):
    r = len(labels)
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    ce = -np.mean([log_p[i, labels[i]] for i in range(r)])
    box = 0.0
    for i in range(r):
        if labels[i] > 0:
            own = deltas[i, 4 * labels[i]:4 * labels[i] + 4]
            box += smooth_l1(own - targets[i], 1 / 9).sum()
    return ce, box / r


def loss_inputs(rng):
    labels = np.array([0, 2, 1, 0, 3, 3, 0, 1])
    logits = rng.standard_normal((8, 4)) * 2
    deltas = rng.standard_normal((8, 16)) * 0.3
    targets = rng.standard_normal((8, 4)) * 0.3
    targets[labels == 0] = np.nan  # background targets are never read
    return logits, deltas, labels, targets


def test_fastrcnn_loss_matches_numpy(rng):
    logits, deltas, labels, targets = loss_inputs(rng)
    cls, box = fastrcnn_loss(T(logits), T(deltas), labels, targets)
    ce, expected_box = numpy_fastrcnn_loss(logits, deltas, labels, targets)
    np.testing.assert_allclose(float(cls.data), ce, rtol=1e-12)
    np.testing.assert_allclose(float(box.data), expected_box, rtol=1e-12)
    assert BOX_SMOOTH_L1_BETA == pytest.approx(1 / 9)
    # Other classes' deltas do not matter.
    changed = deltas.copy()
    changed[1, 0:8] += 5.0  # RoI 1 has class 2: its columns 8..11 are used
    changed[0] += 7.0  # a background RoI
    _, box2 = fastrcnn_loss(T(logits), T(changed), labels, targets)
    np.testing.assert_allclose(float(box2.data), expected_box, rtol=1e-12)


def test_fastrcnn_loss_without_foreground():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    cls, box = fastrcnn_loss(T(logits), T(np.ones((2, 12))), np.array([0, 0]), np.zeros((2, 4)))
    assert float(box.data) == 0.0
    expected = -np.mean([np.log(naive_softmax(row)[0]) for row in logits])
    np.testing.assert_allclose(float(cls.data), expected, rtol=1e-12)


def test_fastrcnn_loss_gradcheck(rng):
    logits, deltas, labels, targets = loss_inputs(rng)
    lt, dt = T(logits, True), T(deltas, True)

    def fn(a, b):
        cls, box = fastrcnn_loss(a, b, labels, targets)
        return cls + 3.0 * box

    minifpn.gradcheck(fn, [lt, dt], eps=1e-6, atol=1e-7, rtol=1e-5)
    fn(lt, dt).backward()
    grad = host(dt.grad).reshape(8, 4, 4)
    for i, label in enumerate(labels):  # only each foreground RoI's own class gets a gradient
        for c in range(4):
            if not (label > 0 and c == label):
                np.testing.assert_array_equal(grad[i, c], 0.0)


# ---------------------------------------------------------------------------
# Post-processing.
# ---------------------------------------------------------------------------
def postprocess(heads, logits, deltas, proposals, sizes):
    return heads.postprocess_detections(T(logits), T(deltas), proposals, sizes)


def test_postprocess_classwise_nms():
    heads = RoIHeads(None, None, None)
    proposals = [np.array([[10.0, 10, 50, 50], [12.0, 12, 52, 52]])]  # IoU ≈ 0.82
    deltas = np.zeros((2, 12))
    # Different classes: both survive.
    (det,) = postprocess(heads, np.array([[0.0, 8, 0], [0.0, 0, 7]]), deltas, proposals,
                         [(100, 100)])
    assert det["labels"].tolist() == [1, 2]
    np.testing.assert_allclose(det["boxes"], proposals[0])
    np.testing.assert_allclose(det["scores"], [np.exp(8) / (np.exp(8) + 2),
                                               np.exp(7) / (np.exp(7) + 2)])
    # Same class: the lower-scoring one is suppressed.
    (det,) = postprocess(heads, np.array([[0.0, 8, 0], [0.0, 7, 0]]), deltas, proposals,
                         [(100, 100)])
    assert det["labels"].tolist() == [1]
    np.testing.assert_allclose(det["boxes"], proposals[0][:1])


def test_postprocess_threshold_background_clipping_and_own_class_deltas():
    heads = RoIHeads(None, None, None)
    proposals = [np.array([[10.0, 10, 50, 50], [60.0, 60, 90, 90], [-10.0, 90, 50, 130]])]
    logits = np.array([[0.0, 9, 0], [5.0, 0, -3], [2.0, 0, 0]])
    deltas = np.zeros((3, 12))
    deltas[0, 8:12] = [1.0, 0.0, 5 * math.log(2), 0.0]  # class 2 of RoI 0: +4 px, twice as wide
    deltas[0, 4:8] = [0.0, 0.0, 0.0, 0.0]  # class 1 of RoI 0: the RoI itself
    (det,) = postprocess(heads, logits, deltas, proposals, [(100, 120)])
    # RoI 1: background 0.993, classes 0.0067 and 0.0003 — below 0.05, nothing.
    # RoI 2: background 0.787, classes 1 and 2 each e⁰/(e²+2) = 0.1065 — both, clipped.
    # RoI 0: class 1 at 0.9998; class 2 (2.5e-4) below the threshold.
    p2 = 1 / (np.exp(2) + 2)
    assert det["labels"].tolist() == [1, 1, 2]
    np.testing.assert_allclose(det["scores"], [np.exp(9) / (np.exp(9) + 2), p2, p2])
    np.testing.assert_allclose(det["boxes"], [[10, 10, 50, 50], [0, 90, 50, 100],
                                              [0, 90, 50, 100]], atol=1e-9)
    assert 0 not in det["labels"]
    # Lower the threshold: RoI 0's class 2 box appears, decoded with its own deltas
    # (centre 30 + 0.1·40 = 34, width 80 → [−6, 10, 74, 50], clipped at 0).
    heads = RoIHeads(None, None, None, score_thresh=1e-4)
    (det,) = postprocess(heads, logits, deltas, proposals, [(100, 120)])
    boxes = {(lab, tuple(np.round(b, 6))) for lab, b in zip(det["labels"], det["boxes"])}
    assert (2, (0.0, 10.0, 74.0, 50.0)) in boxes
    assert 0 not in det["labels"]


def test_postprocess_detections_per_img_and_images():
    heads = RoIHeads(None, None, None, detections_per_img=3)
    props0 = np.array([[i * 20.0, 0, i * 20 + 15, 15] for i in range(5)])  # disjoint
    props1 = np.array([[0.0, 0, 30, 30], [40.0, 40, 70, 70]])
    logits = np.zeros((7, 2))
    logits[:5, 1] = [3.0, 6.0, 4.0, 5.0, 2.0]
    logits[5:, 1] = [4.0, -9.0]  # RoI 6: class 1 at 1.2e-4 → dropped
    dets = postprocess(heads, logits, np.zeros((7, 8)), [props0, props1], [(50, 100), (20, 25)])
    assert len(dets) == 2
    np.testing.assert_allclose(dets[0]["boxes"], props0[[1, 3, 2]])  # the best 3, best first
    assert dets[0]["labels"].tolist() == [1, 1, 1]
    np.testing.assert_allclose(dets[1]["boxes"], [[0, 0, 25, 20]])  # clipped to its own size


def test_postprocess_matches_naive_pipeline(rng):
    heads = RoIHeads(None, None, None, score_thresh=0.1, nms_thresh=0.4, detections_per_img=7)
    counts, sizes = [14, 9], [(60, 80), (90, 70)]
    proposals = []
    for n in counts:
        xy = rng.uniform(-10, 50, (n, 2))
        proposals.append(np.concatenate([xy, xy + rng.uniform(8, 40, (n, 2))], axis=1))
    logits = rng.standard_normal((23, 4)) * 1.5
    deltas = rng.standard_normal((23, 16)) * 0.8
    dets = postprocess(heads, logits, deltas, proposals, sizes)
    expected = naive_postprocess(logits, deltas, proposals, sizes, 0.1, 0.4, 7)
    for det, exp in zip(dets, expected):
        assert len(exp) > 1
        np.testing.assert_allclose(det["boxes"], [e[0] for e in exp], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(det["scores"], [e[1] for e in exp], rtol=1e-9)
        assert det["labels"].tolist() == [e[2] for e in exp]


# ---------------------------------------------------------------------------
# Head modules.
# ---------------------------------------------------------------------------
def test_two_mlp_head_and_predictor_by_numpy(rng):
    head = TwoMLPHead(3 * 7 * 7, 10).to(dtype=np.float64)
    predictor = FastRCNNPredictor(10, 5).to(dtype=np.float64)
    x = rng.standard_normal((4, 3, 7, 7))
    feats = head(T(x))
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    w6, b6 = host(head.fc6.weight), host(head.fc6.bias)
    w7, b7 = host(head.fc7.weight), host(head.fc7.bias)
    expected = relu(relu(x.reshape(4, -1) @ w6.T + b6) @ w7.T + b7)
    np.testing.assert_allclose(host(feats), expected, rtol=1e-12)
    cls, box = predictor(feats)
    assert cls.shape == (4, 5) and box.shape == (4, 20)
    np.testing.assert_allclose(host(cls), expected @ host(predictor.cls_score.weight).T
                               + host(predictor.cls_score.bias), rtol=1e-12)
    assert [k for k in head.state_dict()] == ["fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"]
    assert list(predictor.state_dict()) == ["cls_score.weight", "cls_score.bias",
                                            "bbox_pred.weight", "bbox_pred.bias"]


def _naive_conv3x3(x, w):
    """A loop over output positions: (N, C, H, W) * (O, C, 3, 3), padding 1, no bias."""
    n, c, h, wd = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd))
    for i in range(h):
        for j in range(wd):
            out[:, :, i, j] = np.einsum("ncyx,ocyx->no", padded[:, :, i:i + 3, j:j + 3], w)
    return out


def test_conv_fc_head_by_numpy_and_torchvision_names(rng):
    # conv → GroupNorm (2 groups of 2 channels) → ReLU, twice; flatten; fc → ReLU
    head = FastRCNNConvFCHead((3, 5, 5), (4, 4), (6,)).to(dtype=np.float64)
    for p in head.parameters():  # non-trivial norm affine parameters
        p.data[...] = rng.standard_normal(p.data.shape)
    x = rng.standard_normal((2, 3, 5, 5))

    def group_norm(v, gamma, beta, groups, eps=1e-5):
        g = v.reshape(v.shape[0], groups, -1)
        g = (g - g.mean(axis=2, keepdims=True)) / np.sqrt(g.var(axis=2, keepdims=True) + eps)
        return g.reshape(v.shape) * gamma[None, :, None, None] + beta[None, :, None, None]

    v = x
    for i in range(2):
        conv, norm = getattr(head, str(i))[0], getattr(head, str(i))[1]
        v = np.maximum(group_norm(_naive_conv3x3(v, host(conv.weight)), host(norm.weight),
                                  host(norm.bias), norm.num_groups), 0)
    fc = getattr(head, "3")
    expected = np.maximum(v.reshape(2, -1) @ host(fc.weight).T + host(fc.bias), 0)
    np.testing.assert_allclose(host(head(T(x))), expected, rtol=1e-10, atol=1e-12)
    assert head.out_features == 6
    assert list(head.state_dict()) == ["0.0.weight", "0.1.weight", "0.1.bias", "1.0.weight",
                                       "1.1.weight", "1.1.bias", "3.weight", "3.bias"]


def test_conv_fc_head_gradcheck(rng):
    head = FastRCNNConvFCHead((2, 4, 4), (4,), (3,)).to(dtype=np.float64)
    x = T(rng.standard_normal((2, 2, 4, 4)), requires_grad=True)
    assert minifpn.gradcheck(head, x, wrt=[x, *head.parameters()])


def test_detector_parts_build_either_box_head():
    from minifpn.models import FasterRCNN, detector_parts, resnet_fpn_backbone

    def detector(kind):
        return FasterRCNN(resnet_fpn_backbone("resnet18", width=0.125, out_channels=8),
                          **detector_parts(8, 3, representation_size=16, box_head=kind))

    two_mlp = detector("2mlp").roi_heads.box_head
    assert isinstance(two_mlp, TwoMLPHead) and two_mlp.out_features == 16
    conv_fc = detector("4conv1fc").roi_heads.box_head
    assert isinstance(conv_fc, FastRCNNConvFCHead) and conv_fc.out_features == 16
    assert conv_fc[0][0].weight.shape == (8, 8, 3, 3)  # four convs of the pyramid's width
    with pytest.raises(ValueError, match="box_head must be"):
        detector("3mlp")
    # Without a predictor, the default one takes the injected head's width (not 1024).
    model = FasterRCNN(resnet_fpn_backbone("resnet18", width=0.125, out_channels=8), 3,
                       box_head=FastRCNNConvFCHead((8, 7, 7), (8,), (24,)))
    assert model.roi_heads.box_predictor.cls_score.in_features == 24


def test_mask_predictor_by_numpy(rng):
    predictor = MaskRCNNPredictor(3, 4, 5).to(dtype=np.float64)
    x = rng.standard_normal((2, 3, 3, 4))
    out = host(predictor(T(x)))
    assert out.shape == (2, 5, 6, 8)
    w, b = host(predictor.conv5_mask.weight), host(predictor.conv5_mask.bias)  # (3, 4, 2, 2)
    assert w.shape == (3, 4, 2, 2)
    up = np.zeros((2, 4, 6, 8))
    for i in range(3):  # a 2×2 stride-2 transposed conv: each input cell paints a 2×2 block
        for j in range(4):
            for a in range(2):
                for c in range(2):
                    up[:, :, 2 * i + a, 2 * j + c] = x[:, :, i, j] @ w[:, :, a, c] + b
    up = np.maximum(up, 0)
    w1 = host(predictor.mask_fcn_logits.weight)[:, :, 0, 0]
    b1 = host(predictor.mask_fcn_logits.bias)
    expected = np.einsum("kc,nchw->nkhw", w1, up) + b1[None, :, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


def test_mask_heads_layout():
    heads = MaskRCNNHeads(6, (8, 8, 8, 4))
    assert list(heads.state_dict()) == [f"{i}.0.{p}" for i in range(4) for p in ("weight", "bias")]
    assert heads.state_dict()["0.0.weight"].shape == (8, 6, 3, 3)
    assert heads.state_dict()["3.0.weight"].shape == (4, 8, 3, 3)
    out = heads(minifpn.Tensor(np.random.default_rng(0).standard_normal((2, 6, 14, 14)),
                                dtype=np.float32))
    assert out.shape == (2, 4, 14, 14) and (host(out) >= 0).all()  # each conv + ReLU


# ---------------------------------------------------------------------------
# Mask targets and loss.
# ---------------------------------------------------------------------------
def hand_masks():
    masks = np.zeros((2, 20, 20), dtype=np.uint8)
    masks[0, 4:12, 4:12] = 1  # a filled square, pixels 4..11
    masks[1, :, :10] = 1  # the left half, columns 0..9
    return masks


def test_project_masks_on_boxes_by_hand():
    masks = hand_masks()
    boxes = np.array([[4.0, 4, 11, 11], [2.0, 0, 16, 14], [4.0, 4, 12, 12]])
    targets = project_masks_on_boxes(masks, boxes, np.array([0, 1, 0]), 28)
    assert targets.shape == (3, 28, 28)
    # RoIAlign (aligned=False) reads pixel i's value at coordinate i: the box [4, 11]
    # samples 4.125 … 10.875, all inside the filled square.
    np.testing.assert_allclose(targets[0], 1.0, atol=1e-12)
    # Box x 2..16, 28 bins of 0.5, one sample each at 2.25 + 0.5q: columns up to 9 are
    # filled, 9.25 → ¾, 9.75 → ¼, then empty; all rows alike.
    row = [1.0] * 14 + [0.75, 0.25] + [0.0] * 12
    np.testing.assert_allclose(targets[1], np.tile(row, (28, 1)), atol=1e-12)
    # Box [4, 12]: samples 4 + (q + ½)·8/28; past 11 the value ramps down as 12 − x.
    x = 4 + (np.arange(28) + 0.5) * 8 / 28
    profile = np.clip(12 - x, 0, 1)
    np.testing.assert_allclose(targets[2], np.outer(profile, profile), atol=1e-12)


def test_project_masks_uses_each_rois_matched_mask():
    masks = hand_masks()
    box = np.array([[1.0, 1, 17, 17]])
    a = project_masks_on_boxes(masks, box, np.array([0]), 8)
    b = project_masks_on_boxes(masks, box, np.array([1]), 8)
    both = project_masks_on_boxes(masks, np.repeat(box, 2, axis=0), np.array([1, 0]), 8)
    np.testing.assert_array_equal(both, np.concatenate([b, a]))
    assert not np.allclose(a, b)


def test_project_masks_of_a_batch_equal_one_image_at_a_time(device, rng):
    """Images of different sizes, cropped in one call: the same targets as image by image."""
    masks = [rng.random((2, 20, 24)) > 0.5, rng.random((3, 31, 17)) > 0.5]
    boxes = [np.array([[0.0, 0.0, 24.0, 20.0], [10.0, 12.0, 23.5, 19.9]]),
             np.array([[1.0, 20.0, 17.0, 31.0], [3.0, 2.0, 9.0, 6.0], [0.0, 0.0, 5.0, 5.0]])]
    matched = [np.array([1, 0]), np.array([2, 2, 0])]
    expected = np.concatenate([project_masks_on_boxes(m.astype(np.uint8), b, i, 14)
                               for m, b, i in zip(masks, boxes, matched)])
    on = [[backend.to_device(x, device) for x in group] for group in (
        [m.astype(np.uint8) for m in masks], boxes, matched)]
    got = project_masks_on_boxes_batch(*on, 14)
    assert backend.device_of(got) == device
    np.testing.assert_allclose(backend.to_numpy(got), expected, rtol=1e-12, atol=1e-12)


def test_maskrcnn_loss_only_uses_gt_class_channel(rng):
    logits = rng.standard_normal((3, 4, 5, 5)) * 2
    labels = np.array([1, 3, 2])
    targets = rng.uniform(0, 1, (3, 5, 5))
    targets[0] = targets[0] > 0.5  # binary and soft targets alike
    loss = float(maskrcnn_loss(T(logits), labels, targets).data)
    own = logits[np.arange(3), labels]
    p = 1 / (1 + np.exp(-own))
    expected = -np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    changed = logits.copy()
    changed[0, [0, 2, 3]] = rng.standard_normal((3, 5, 5)) * 10
    changed[1, 0] = 50.0
    assert float(maskrcnn_loss(T(changed), labels, targets).data) == pytest.approx(loss,
                                                                                   rel=1e-14)


def test_maskrcnn_loss_gradcheck(rng):
    logits = T(rng.standard_normal((3, 4, 4, 4)), requires_grad=True)
    labels = np.array([2, 2, 1])
    targets = rng.uniform(0, 1, (3, 4, 4))
    minifpn.gradcheck(lambda t: maskrcnn_loss(t, labels, targets), [logits], atol=1e-8,
                      rtol=1e-5)
    maskrcnn_loss(logits, labels, targets).backward()
    grad = host(logits.grad)
    for r, label in enumerate(labels):
        for c in range(4):
            if c != label:
                np.testing.assert_array_equal(grad[r, c], 0.0)


def test_maskrcnn_loss_without_foreground_is_zero_in_the_graph():
    logits = T(np.ones((0, 3, 4, 4)), requires_grad=True)
    loss = maskrcnn_loss(logits, np.zeros(0, dtype=np.int64), np.zeros((0, 4, 4)))
    assert float(loss.data) == 0.0
    loss.backward()
    assert logits.grad.shape == (0, 3, 4, 4)


# ---------------------------------------------------------------------------
# Pasting masks into the image.
# ---------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside pycocotools
def test_paste_masks_by_hand():
    # A 2 × 2 all-ones mask, padded to 4 × 4 (profile 0 1 1 0), box [2, 2, 4, 4] grown
    # by (2+2)/2 = 2 about its centre → [1, 1, 5, 5]: 5 pixels. Resizing 4 → 5
    # (align_corners=False) samples at −0.1→0, 0.7, 1.5, 2.3, 3.1→3: 0, .7, 1, .7, 0.
    out = paste_masks_in_image(np.ones((1, 2, 2)), np.array([[2.0, 2, 4, 4]]), (7, 8))
    assert out.shape == (1, 1, 7, 8)
    profile = [0.0, 0.7, 1.0, 0.7, 0.0]
    expected = np.zeros((7, 8))
    expected[1:6, 1:6] = np.outer(profile, profile)
    np.testing.assert_allclose(out[0, 0], expected, atol=1e-6)

    # Thresholded at 0.5 (0.49 at the .7 × .7 cells is out): a plus sign of 5 pixels,
    # through a COCO RLE round trip.
    binary = np.asfortranarray((out[0, 0] > 0.5).astype(np.uint8))
    rle = mask_util.encode(binary)
    assert mask_util.area(rle) == 5
    np.testing.assert_array_equal(mask_util.decode(rle), binary)
    plus = np.zeros((7, 8), dtype=np.uint8)
    plus[3, 2:5] = plus[2:5, 3] = 1
    np.testing.assert_array_equal(binary, plus)


def test_paste_masks_truncates_expanded_box():
    # M = 4: scale 6/4. Box [0.5, 0.5, 6.3, 4.1]: centre (3.4, 2.3), half (4.35, 2.7)
    # → (−0.95, −0.4, 7.75, 5.0) → int → (0, 0, 7, 5): 8 × 6 pixels (toward zero!).
    mask = np.arange(16.0).reshape(1, 4, 4) / 16
    out = paste_masks_in_image(mask, np.array([[0.5, 0.5, 6.3, 4.1]]), (10, 12))
    nonzero_rows = np.flatnonzero(out[0, 0].any(axis=1))
    nonzero_cols = np.flatnonzero(out[0, 0].any(axis=0))
    assert nonzero_rows.max() <= 5 and nonzero_cols.max() <= 7
    np.testing.assert_array_equal(out[0, 0, 6:], 0.0)
    np.testing.assert_array_equal(out[0, 0, :, 8:], 0.0)
    np.testing.assert_allclose(out, naive_paste(mask, [[0.5, 0.5, 6.3, 4.1]], 10, 12),
                               atol=1e-6)


@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_paste_masks_matches_naive_loop(rng, dtype, tolerance):
    # The result follows the masks' dtype, as torchvision's: a float64 model's masks are
    # pasted in float64 (to round-off of the float64 loop), float32 ones in float32.
    masks = rng.uniform(0, 1, (6, 7, 7)).astype(dtype)
    boxes = np.array([
        [3.2, 4.7, 20.9, 15.1],  # inside
        [-6.3, -2.2, 9.8, 12.6],  # over the top-left corner
        [25.5, 18.1, 41.0, 35.7],  # over the bottom-right corner (image 30 × 36)
        [10.0, 10.0, 10.4, 10.3],  # tiny
        [-20.0, 5.0, -8.0, 9.0],  # entirely outside
        [0.0, 0.0, 36.0, 30.0],  # the whole image
    ])
    out = paste_masks_in_image(masks, boxes, (30, 36))
    assert out.shape == (6, 1, 30, 36) and out.dtype == dtype
    np.testing.assert_allclose(out, naive_paste(masks, boxes, 30, 36), rtol=tolerance,
                               atol=tolerance)
    np.testing.assert_array_equal(out[4], 0.0)
    # Chunking over detections changes nothing.
    np.testing.assert_allclose(paste_masks_in_image(masks, boxes, (30, 36), chunk=2), out,
                               atol=tolerance / 100)
    # Integer (0/1) masks are pasted as float32 probabilities.
    binary = paste_masks_in_image((masks > 0.5).astype(np.uint8), boxes, (30, 36))
    assert binary.dtype == np.float32


def test_paste_masks_no_detections():
    out = paste_masks_in_image(np.zeros((0, 28, 28)), np.zeros((0, 4)), (20, 30))
    assert out.shape == (0, 1, 20, 30)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside pycocotools
def test_pasted_mask_rle_round_trip(rng):
    masks = rng.uniform(0, 1, (3, 28, 28))
    masks[:, 8:20, 8:20] = 0.9
    boxes = np.array([[5.0, 6, 40, 30], [-3.0, 10, 20, 45], [30, 2, 60, 28]])
    pasted = paste_masks_in_image(masks, boxes, (40, 50))
    binary = np.asfortranarray((pasted[:, 0] > 0.5).astype(np.uint8).transpose(1, 2, 0))
    rles = mask_util.encode(binary)
    assert len(rles) == 3
    decoded = mask_util.decode(rles)
    np.testing.assert_array_equal(decoded, binary)
    np.testing.assert_array_equal(mask_util.area(rles), binary.sum(axis=(0, 1)))
    assert (mask_util.area(rles) > 0).all()


# ---------------------------------------------------------------------------
# RoIHeads forward: training losses and inference outputs.
# ---------------------------------------------------------------------------
def tiny_roi_heads(with_masks=True, **kwargs):
    minifpn.manual_seed(3)
    c = 4
    parts = {}
    if with_masks:
        parts = dict(mask_roi_pool=MultiScaleRoIAlign(output_size=7, sampling_ratio=2),
                     mask_head=MaskRCNNHeads(c, (4, 4)),
                     mask_predictor=MaskRCNNPredictor(4, 4, 3))
    return RoIHeads(MultiScaleRoIAlign(output_size=7, sampling_ratio=2), TwoMLPHead(c * 49, 16),
                    FastRCNNPredictor(16, 3), batch_size_per_image=32, **parts, **kwargs)


def tiny_features(rng, n=2, size=64, c=4):
    return {f"P{level}": minifpn.Tensor(
        rng.standard_normal((n, c, size >> level, size >> level)).astype(np.float32))
        for level in (2, 3, 4, 5, 6)}


def tiny_targets():
    masks0 = np.zeros((2, 64, 64), np.uint8)
    masks0[0, 10:30, 12:40] = 1
    masks0[1, 35:60, 30:60] = 1
    masks1 = np.zeros((1, 64, 64), np.uint8)
    masks1[0, 5:50, 5:20] = 1
    return [
        {"boxes": np.array([[12.0, 10, 40, 30], [30, 35, 60, 60]], np.float32),
         "labels": np.array([1, 2]), "masks": masks0},
        {"boxes": np.array([[5.0, 5, 20, 50]], np.float32), "labels": np.array([2]),
         "masks": masks1},
    ]


def tiny_proposals(rng):
    out = []
    for _ in range(2):
        xy = rng.uniform(0, 45, (20, 2))
        out.append(np.concatenate([xy, xy + rng.uniform(6, 25, (20, 2))], axis=1)
                   .astype(np.float32))
    return out


def test_roi_heads_training_losses(rng):
    heads = tiny_roi_heads()
    features = tiny_features(rng)
    detections, losses = heads(features, tiny_proposals(rng), [(64, 64), (60, 64)],
                               tiny_targets())
    assert detections == []
    assert sorted(losses) == ["loss_box_reg", "loss_classifier", "loss_mask"]
    total = sum(losses.values())
    assert np.isfinite(float(total.data))
    total.backward()
    for name in ("box_head.fc6.weight", "box_predictor.cls_score.weight",
                 "box_predictor.bbox_pred.weight", "mask_head.0.0.weight",
                 "mask_predictor.mask_fcn_logits.weight"):
        grad = dict(heads.named_parameters())[name].grad
        assert grad is not None and np.abs(host(grad)).sum() > 0, name


def test_roi_heads_box_only_and_missing_masks(rng):
    heads = tiny_roi_heads(with_masks=False)
    _, losses = heads(tiny_features(rng), tiny_proposals(rng), [(64, 64)] * 2, tiny_targets())
    assert sorted(losses) == ["loss_box_reg", "loss_classifier"]
    targets = tiny_targets()
    del targets[1]["masks"]
    with pytest.raises(ValueError, match="masks"):
        tiny_roi_heads()(tiny_features(rng), tiny_proposals(rng), [(64, 64)] * 2, targets)


def test_roi_heads_inference_masks_are_own_class_probabilities(rng):
    heads = tiny_roi_heads(score_thresh=0.0)
    features = tiny_features(rng)
    proposals = tiny_proposals(rng)
    with minifpn.no_grad():
        detections, losses = heads(features, proposals, [(64, 64), (50, 40)])
    assert losses == {}
    assert len(detections) == 2
    for det, (h, w) in zip(detections, [(64, 64), (50, 40)]):
        d = len(det["boxes"])
        assert d > 0 and det["masks"].shape == (d, 14, 14)  # 2 × the 7 × 7 mask pooler
        assert det["scores"].shape == (d,) and set(det["labels"].tolist()) <= {1, 2}
        assert (det["boxes"][:, [0, 2]] <= w).all() and (det["boxes"][:, [1, 3]] <= h).all()
        # The mask is the sigmoid of the detection's own class channel.
        with minifpn.no_grad():
            logits = host(heads.mask_predictor(heads.mask_head(
                heads.mask_roi_pool(features, [det["boxes"]] if det is detections[0]
                                    else [np.zeros((0, 4), np.float32), det["boxes"]],
                                    (64, 64)))))
        own = logits[np.arange(d), det["labels"]]
        np.testing.assert_allclose(det["masks"], 1 / (1 + np.exp(-own)), rtol=1e-5, atol=1e-6)
        assert len(set(det["labels"].tolist())) == 2  # both classes present: the pick matters
