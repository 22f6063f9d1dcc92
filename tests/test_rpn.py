"""Matching, sampling and the Region Proposal Network (``minifpn.models.{matching,rpn}``).

References are independent of the code under test:

* the Matcher by an explicit per-candidate loop over a hand-written IoU
  matrix (torchvision's rules: thresholds, low-quality matches with ties,
  a restored candidate keeps its *own* best ground truth);
* hand-labelled anchors for crowd handling and empty images;
* the RPN losses in plain NumPy (BCE = −[y log σ + (1−y) log(1−σ)] averaged
  over the sample, smooth-L1 with β = 1/9 summed over positives and divided
  by the sample size), and float64 central differences for their gradients;
* the proposal filter as a naive per-image, per-level pipeline (sort, top-k,
  clip, drop small, sequential NMS per level, merge, keep the best);
* an end-to-end run on a tiny backbone: losses finite, gradients reach the
  head, and a short overfitting run drives the loss down.
"""

import math

import numpy as np
import pytest

import minifpn
from minifpn import backend, optim
from minifpn.models import resnet_fpn_backbone
from minifpn.models.anchors import AnchorGenerator
from minifpn.models.matching import (
    CROWD_IOA_THRESHOLD,
    BalancedPositiveNegativeSampler,
    Matcher,
)
from minifpn.models.rpn import RPN_SMOOTH_L1_BETA, RegionProposalNetwork
from minifpn.models.transform import ImageList
from minifpn.ops.boxes import BoxCoder, box_iou
from minifpn.recording import recording
from tests.box_references import naive_iou, naive_nms


# ---------------------------------------------------------------------------
# Independent references.
# ---------------------------------------------------------------------------
def naive_matcher(quality, high, low, allow_low_quality):
    """torchvision's Matcher, one candidate at a time."""
    quality = np.asarray(quality).tolist()
    g, b = len(quality), len(quality[0])
    best_of_gt = [max(row) for row in quality]
    out = []
    for j in range(b):
        column = [quality[i][j] for i in range(g)]
        best = max(column)
        own = column.index(best)  # first on ties, as argmax
        if best >= high:
            m = own
        elif best >= low:
            m = -2
        else:
            m = -1
        if allow_low_quality and any(quality[i][j] == best_of_gt[i] for i in range(g)):
            m = own  # restored — to its own best ground truth
        out.append(m)
    return out


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def ref_bce(x, y):
    p = sigmoid(x)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def ref_smooth_l1(d, beta):
    d = np.abs(d)
    return np.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta)


def ref_rpn_loss(logits, deltas, labels, targets, pos, neg):
    """``pos``/``neg``: per image, the sampled anchor indices."""
    count = sum(len(p) + len(q) for p, q in zip(pos, neg))
    bce = [ref_bce(logits[i, idx], labels[i][idx]) for i, (p, q) in enumerate(zip(pos, neg))
           for idx in (np.concatenate([p, q]).astype(int),)]
    box = [ref_smooth_l1(deltas[i, p] - targets[i][p], RPN_SMOOTH_L1_BETA).sum()
           for i, p in enumerate(pos)]
    return np.concatenate(bce).sum() / count, sum(box) / count


def ref_filter(boxes, logits, image_sizes, level_sizes, pre_n, post_n, nms_t,
               min_size, score_thresh):
    """The proposal filter, written out as loops."""
    starts = np.cumsum([0] + list(level_sizes))
    out = []
    for img, (h, w) in enumerate(image_sizes):
        per_level = []
        for lv in range(len(level_sizes)):
            idx = sorted(range(starts[lv], starts[lv + 1]), key=lambda t: -logits[img, t])
            cands = []
            for t in idx[:pre_n]:
                x1, y1, x2, y2 = boxes[img, t].tolist()
                b = [min(max(x1, 0.0), w), min(max(y1, 0.0), h),
                     min(max(x2, 0.0), w), min(max(y2, 0.0), h)]
                s = float(sigmoid(logits[img, t]))
                if b[2] - b[0] >= min_size and b[3] - b[1] >= min_size and s >= score_thresh:
                    cands.append((s, b))
            kept = naive_nms([c[1] for c in cands], [c[0] for c in cands], nms_t)
            per_level += [cands[k] for k in kept]
        per_level.sort(key=lambda c: -c[0])
        out.append(np.array([c[1] for c in per_level[:post_n]]).reshape(-1, 4))
    return out


def small_rpn(**kwargs):
    minifpn.manual_seed(0)
    return RegionProposalNetwork(in_channels=4, **kwargs)


# ---------------------------------------------------------------------------
# Matcher
# ---------------------------------------------------------------------------
def test_matcher_thresholds_are_inclusive_at_high_and_low():
    q = np.array([[0.9, 0.7, 0.69999, 0.3, 0.29999, 0.0]])
    m = Matcher(0.7, 0.3, allow_low_quality_matches=False)(q)
    assert m.dtype == np.int64
    assert m.tolist() == [0, 0, -2, -2, -1, -1]
    assert Matcher.BELOW_LOW_THRESHOLD == -1 and Matcher.BETWEEN_THRESHOLDS == -2


def test_matcher_picks_best_ground_truth():
    q = np.array([[0.8, 0.1, 0.75], [0.9, 0.2, 0.72]])
    assert Matcher(0.7, 0.3)(q).tolist() == [1, -1, 0]


def test_matcher_low_quality_matches_include_ties():
    # gt 0's best IoU (0.5) is shared by candidates 0 and 1: both become foreground
    q = np.array([[0.5, 0.5, 0.1, 0.2], [0.0, 0.2, 0.8, 0.1]])
    assert Matcher(0.7, 0.3, False)(q).tolist() == [-2, -2, 1, -1]
    assert Matcher(0.7, 0.3, True)(q).tolist() == [0, 0, 1, -1]


def test_matcher_low_quality_restored_candidate_gets_its_own_best_gt():
    # gt 0's best candidate is 0 (IoU 0.4), but candidate 0 overlaps gt 1 more (0.5):
    # torchvision restores it to gt 1, not gt 0 (so gt 0 ends up with no candidate).
    q = np.array([[0.4, 0.1, 0.0], [0.5, 0.9, 0.0]])
    assert Matcher(0.7, 0.3, True)(q).tolist() == [1, 1, -1]
    assert Matcher(0.7, 0.3, False)(q).tolist() == [-2, 1, -1]


def test_matcher_matches_naive_loop_on_random_matrices(rng):
    for _ in range(30):
        g, b = int(rng.integers(1, 5)), int(rng.integers(1, 30))
        q = rng.integers(0, 11, size=(g, b)) / 10.0  # coarse values: many ties
        for allow in (False, True):
            for high, low in ((0.7, 0.3), (0.5, 0.5)):
                got = Matcher(high, low, allow)(q)
                assert got.tolist() == naive_matcher(q, high, low, allow)


def test_matcher_errors():
    with pytest.raises(ValueError, match="at least one ground-truth"):
        Matcher(0.7, 0.3)(np.zeros((0, 5)))
    with pytest.raises(ValueError, match="low_threshold"):
        Matcher(0.3, 0.7)


# ---------------------------------------------------------------------------
# BalancedPositiveNegativeSampler
# ---------------------------------------------------------------------------
def make_labels(rng, n_pos, n_neg, n_ignored):
    labels = np.array([1.0] * n_pos + [0.0] * n_neg + [-1.0] * n_ignored, dtype=np.float32)
    return labels[rng.permutation(len(labels))]


def check_sample(labels, pos, neg, n_pos, n_neg):
    assert len(pos) == n_pos and len(neg) == n_neg
    assert len(set(pos.tolist())) == n_pos and len(set(neg.tolist())) == n_neg
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()  # never an ignored one


def test_sampler_caps_and_fills(rng):
    sampler = BalancedPositiveNegativeSampler(256, 0.5)
    cases = [  # (positives, negatives, ignored) → expected (sampled pos, sampled neg)
        ((1000, 1000, 300), (128, 128)),
        ((10, 1000, 300), (10, 246)),  # too few positives: filled with negatives
        ((10, 20, 500), (10, 20)),  # too few of both: take everything
        ((500, 5, 0), (128, 5)),  # positives still capped at half
        ((0, 0, 50), (0, 0)),
    ]
    all_labels = [make_labels(rng, *counts) for counts, _ in cases]
    positives, negatives = sampler(all_labels)
    for labels, pos, neg, (_, expected) in zip(all_labels, positives, negatives, cases):
        check_sample(labels, pos, neg, *expected)


def test_sampler_box_head_fraction(rng):
    labels = make_labels(rng, 300, 2000, 0)
    labels[labels == 1] = rng.integers(1, 81, 300)  # class labels ≥ 1 are all foreground
    pos, neg = BalancedPositiveNegativeSampler(512, 0.25)([labels])
    assert len(pos[0]) == 128 and len(neg[0]) == 384
    assert (labels[pos[0]] >= 1).all() and (labels[neg[0]] == 0).all()


def test_sampler_is_reproducible_with_manual_seed(rng):
    labels = [make_labels(rng, 400, 900, 100), make_labels(rng, 50, 900, 0)]
    sampler = BalancedPositiveNegativeSampler(256, 0.5)
    minifpn.manual_seed(7)
    first = sampler(labels)
    minifpn.manual_seed(7)
    second = sampler(labels)
    minifpn.manual_seed(8)
    third = sampler(labels)
    for a, b in zip(first[0] + first[1], second[0] + second[1]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(first[0] + first[1], third[0] + third[1]))


def test_sampler_draws_uniformly(rng):
    """Every positive is equally likely to be drawn: a χ² test over many draws."""
    labels = make_labels(rng, 40, 400, 30)
    sampler = BalancedPositiveNegativeSampler(20, 0.5)  # 10 of the 40 positives per draw
    minifpn.manual_seed(3)
    hits = np.zeros(len(labels))
    for _ in range(400):
        (pos,), (neg,) = sampler([labels])
        hits[pos] += 1
    positives = np.flatnonzero(labels == 1)
    expected = 400 * 10 / 40
    chi_square = ((hits[positives] - expected) ** 2 / expected).sum()
    assert chi_square < 72.1  # the 99.9 % point of χ² with 39 degrees of freedom
    assert hits[labels != 1].sum() == 0


def test_sampler_draws_the_same_on_every_device(device, rng):
    labels = [make_labels(rng, 400, 900, 100), make_labels(rng, 5, 60, 7)]
    minifpn.manual_seed(7)
    expected = BalancedPositiveNegativeSampler(256, 0.5)(labels)
    minifpn.manual_seed(7)
    got = BalancedPositiveNegativeSampler(256, 0.5)([backend.to_device(x, device)
                                                     for x in labels])
    for a, b in zip(got[0] + got[1], expected[0] + expected[1]):
        assert backend.device_of(a) == device
        np.testing.assert_array_equal(backend.to_numpy(a), b)


# ---------------------------------------------------------------------------
# assign_targets: labels, crowds, empty images, regression targets
# ---------------------------------------------------------------------------
ANCHORS = np.array(
    [
        [0, 0, 10, 10],  # 0: the object itself → fg
        [60, 60, 70, 70],  # 1: background, fully inside the crowd → ignored
        [45, 45, 55, 55],  # 2: background, 1/4 inside the crowd → stays background
        [50, 50, 100, 100],  # 3: exactly the crowd box → never a positive: ignored
        [200, 200, 210, 210],  # 4: far away → background
        [0, 0, 10, 14],  # 5: IoU 100/140 = 0.714 → fg
        [0, 0, 10, 20],  # 6: IoU 0.5 → between thresholds, ignored
        [40, 50, 60, 60],  # 7: exactly half inside the crowd → ignored (≥ 0.5)
        [120, 0, 123, 3],  # 8: far from everything → background
    ],
    dtype=np.float32,
)


def test_assign_targets_with_crowd():
    rpn = small_rpn()
    assert CROWD_IOA_THRESHOLD == 0.5
    target = {"boxes": np.array([[0, 0, 10, 10], [50, 50, 100, 100]], dtype=np.float32),
              "iscrowd": np.array([0, 1])}
    labels, targets = rpn.assign_targets(ANCHORS, [target])
    np.testing.assert_array_equal(labels[0], [1, -1, 0, -1, 0, 1, -1, -1, 0])
    # regression targets of the positives: encode(gt, anchor) by hand
    np.testing.assert_allclose(targets[0][0], [0, 0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(targets[0][5], [0, -2 / 14, 0, math.log(10 / 14)], atol=1e-6)
    assert targets[0].shape == (9, 4) and np.isfinite(targets[0]).all()


def test_assign_targets_foreground_inside_crowd_stays_foreground():
    rpn = small_rpn()
    target = {"boxes": np.array([[60, 60, 70, 70], [50, 50, 100, 100]], dtype=np.float32),
              "iscrowd": np.array([False, True])}
    labels, _ = rpn.assign_targets(ANCHORS, [target])
    assert labels[0][1] == 1  # anchor 1 is the object, though inside the crowd
    assert labels[0][3] == -1 and labels[0][7] == -1


def test_assign_targets_empty_and_crowd_only_images():
    rpn = small_rpn()
    empty = {"boxes": np.zeros((0, 4), dtype=np.float32)}
    crowd_only = {"boxes": np.array([[50, 50, 100, 100]], dtype=np.float32),
                  "iscrowd": np.array([1])}
    labels, targets = rpn.assign_targets(ANCHORS, [empty, crowd_only])
    np.testing.assert_array_equal(labels[0], np.zeros(9))
    np.testing.assert_array_equal(labels[1], [0, -1, 0, -1, 0, 0, 0, -1, 0])
    for t in targets:
        assert np.isfinite(t).all()


def test_assign_targets_low_quality_match():
    """A small object no anchor covers at 0.7: its best anchor still becomes fg,
    with the regression target that moves it onto the object."""
    rpn = small_rpn()
    anchors = np.array([[0, 0, 32, 32], [16, 0, 48, 32], [100, 100, 132, 132]], np.float32)
    gt = np.array([[4, 4, 20, 20]], dtype=np.float32)  # IoU 256/1024 = 0.25 with anchor 0
    labels, targets = rpn.assign_targets(anchors, [{"boxes": gt}])
    np.testing.assert_array_equal(labels[0], [1, 0, 0])
    # anchor 0: centre (16, 16), 32 × 32; gt centre (12, 12), 16 × 16
    np.testing.assert_allclose(targets[0][0], [-4 / 32, -4 / 32, math.log(0.5), math.log(0.5)],
                               atol=1e-6)


def test_assign_targets_regress_to_each_anchors_own_ground_truth():
    rpn = small_rpn()
    gt = np.array([[0, 0, 20, 20], [50, 40, 90, 100], [100, 0, 130, 10]], dtype=np.float32)
    anchors = np.array([[52, 42, 92, 98], [1, 0, 21, 21], [100, 0, 131, 10], [0, 0, 20, 20],
                        [200, 200, 220, 220]], dtype=np.float32)
    labels, targets = rpn.assign_targets(anchors, [{"boxes": gt}])
    np.testing.assert_array_equal(labels[0], [1, 1, 1, 1, 0])
    own = [1, 0, 2, 0]  # each foreground anchor's best ground truth, by hand
    coder = BoxCoder()
    for a, g in enumerate(own):  # hand formula: ((x* − x)/w, (y* − y)/h, log w*/w, log h*/h)
        (ax1, ay1, ax2, ay2), (gx1, gy1, gx2, gy2) = anchors[a].tolist(), gt[g].tolist()
        aw, ah, gw, gh = ax2 - ax1, ay2 - ay1, gx2 - gx1, gy2 - gy1
        want = [((gx1 + gx2) - (ax1 + ax2)) / 2 / aw, ((gy1 + gy2) - (ay1 + ay2)) / 2 / ah,
                math.log(gw / aw), math.log(gh / ah)]
        np.testing.assert_allclose(targets[0][a], want, atol=1e-6)
        np.testing.assert_allclose(targets[0][a], coder.encode(gt[[g]], anchors[[a]])[0],
                                   atol=1e-6)


# ---------------------------------------------------------------------------
# compute_loss: value and gradients
# ---------------------------------------------------------------------------
def loss_case(rng):
    """Two images, 12 anchors each; few enough labelled anchors that all are sampled."""
    labels = [np.array([1, 0, -1, 0, 1, -1, 0, 0, 1, -1, 0, -1], dtype=np.float64),
              np.array([0, -1, -1, 0, 0, -1, 0, -1, 0, 0, -1, -1], dtype=np.float64)]
    targets = [rng.normal(0, 0.3, size=(12, 4)) for _ in labels]
    logits = rng.normal(0, 2, size=(2, 12))
    deltas = np.stack(targets) + rng.normal(0, 0.15, size=(2, 12, 4))  # both smooth-L1 zones
    return labels, targets, logits, deltas


def test_compute_loss_matches_numpy(rng):
    labels, targets, logits, deltas = loss_case(rng)
    rpn = small_rpn(batch_size_per_image=16)
    losses = rpn.compute_loss(minifpn.Tensor(logits), minifpn.Tensor(deltas), labels, targets)
    pos = [np.flatnonzero(lab == 1) for lab in labels]
    neg = [np.flatnonzero(lab == 0) for lab in labels]
    want_obj, want_box = ref_rpn_loss(logits, deltas, labels, targets, pos, neg)
    assert losses["loss_objectness"].item() == pytest.approx(want_obj, rel=1e-12)
    assert losses["loss_rpn_box_reg"].item() == pytest.approx(want_box, rel=1e-12)
    # a hand check of the normalisation: 3 positives + 11 negatives sampled → ÷ 14
    box_sum = sum(ref_smooth_l1(deltas[0, i] - targets[0][i], 1 / 9).sum() for i in (0, 4, 8))
    assert losses["loss_rpn_box_reg"].item() == pytest.approx(box_sum / 14, rel=1e-12)


def test_compute_loss_subsampled_matches_numpy(rng):
    """More candidates than the batch: the loss is over exactly the sampled anchors."""
    t = 400
    labels = [rng.choice([1.0, 0.0, 0.0, 0.0, -1.0], size=t) for _ in range(2)]
    targets = [rng.normal(0, 0.3, size=(t, 4)) for _ in labels]
    logits, deltas = rng.normal(0, 2, size=(2, t)), rng.normal(0, 0.3, size=(2, t, 4))
    rpn = small_rpn(batch_size_per_image=64, positive_fraction=0.25)
    minifpn.manual_seed(3)
    with recording(rpn) as seen:
        losses = rpn.compute_loss(minifpn.Tensor(logits), minifpn.Tensor(deltas), labels, targets)
    pos, neg = seen["sampled_positive"], seen["sampled_negative"]
    for lab, p, q in zip(labels, pos, neg):
        check_sample(lab, p, q, 16, 48)
    want_obj, want_box = ref_rpn_loss(logits, deltas, labels, targets, pos, neg)
    assert losses["loss_objectness"].item() == pytest.approx(want_obj, rel=1e-12)
    assert losses["loss_rpn_box_reg"].item() == pytest.approx(want_box, rel=1e-12)
    # reproducible with the same seed
    minifpn.manual_seed(3)
    again = rpn.compute_loss(minifpn.Tensor(logits), minifpn.Tensor(deltas), labels, targets)
    assert again["loss_objectness"].item() == losses["loss_objectness"].item()


def test_compute_loss_gradcheck(rng):
    labels, targets, logits, deltas = loss_case(rng)
    rpn = small_rpn(batch_size_per_image=16)
    logits_t = minifpn.Tensor(logits, requires_grad=True)
    deltas_t = minifpn.Tensor(deltas, requires_grad=True)

    def fn(which):
        def f(lg, dl):
            minifpn.manual_seed(0)  # the same sample at every evaluation
            return rpn.compute_loss(lg, dl, labels, targets)[which]
        return f

    for which in ("loss_objectness", "loss_rpn_box_reg"):
        minifpn.gradcheck(fn(which), [logits_t, deltas_t], eps=1e-6, atol=1e-7, rtol=1e-5,
                          wrt=[logits_t, deltas_t])
    # ignored anchors and the negatives' deltas get exactly zero gradient
    total = rpn.compute_loss(logits_t, deltas_t, labels, targets)
    (total["loss_objectness"] + total["loss_rpn_box_reg"]).backward()
    for i, lab in enumerate(labels):
        assert (logits_t.grad[i, lab == -1] == 0).all()
        assert (deltas_t.grad[i, lab != 1] == 0).all()
        # d BCE / d x = (σ(x) − y) / count on the sampled anchors
        sampled = lab >= 0
        np.testing.assert_allclose(logits_t.grad[i, sampled],
                                   (sigmoid(logits[i, sampled]) - lab[sampled]) / 14, rtol=1e-10)


def test_compute_loss_no_positives_and_nothing_sampled():
    rpn = small_rpn()
    labels = [np.full(5, -1.0)]
    targets = [np.zeros((5, 4))]
    losses = rpn.compute_loss(minifpn.Tensor(np.zeros((1, 5))), minifpn.Tensor(np.zeros((1, 5, 4))),
                              labels, targets)
    assert losses["loss_objectness"].item() == 0.0 and losses["loss_rpn_box_reg"].item() == 0.0
    labels = [np.array([0.0, 0.0, -1.0, 0.0, -1.0])]
    losses = rpn.compute_loss(minifpn.Tensor(np.zeros((1, 5))), minifpn.Tensor(np.ones((1, 5, 4))),
                              labels, targets)
    assert losses["loss_objectness"].item() == pytest.approx(math.log(2))
    assert losses["loss_rpn_box_reg"].item() == 0.0


# ---------------------------------------------------------------------------
# filter_proposals
# ---------------------------------------------------------------------------
def proposal_case(rng, level_sizes=(40, 25, 12), n=2):
    t = sum(level_sizes)
    xy = rng.uniform(-30, 110, size=(n, t, 2))
    wh = rng.uniform(0.5, 60, size=(n, t, 2))
    boxes = np.concatenate([xy, xy + wh], axis=2)
    boxes[0, 3] = [-20, -20, -10, -5]  # entirely outside: clips to an empty box
    logits = rng.normal(0, 2, size=(n, t))
    return boxes, logits, list(level_sizes)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("score_thresh", [0.0, 0.4])
def test_filter_proposals_matches_naive_pipeline(rng, training, score_thresh):
    pre = {"training": 9, "testing": 7}
    post = {"training": 12, "testing": 10}
    rpn = small_rpn(pre_nms_top_n=pre, post_nms_top_n=post, nms_thresh=0.5,
                    score_thresh=score_thresh)
    rpn.train(training)
    mode = "training" if training else "testing"
    image_sizes = [(80, 100), (60, 90)]
    for _ in range(4):
        boxes, logits, level_sizes = proposal_case(rng)
        got = rpn.filter_proposals(boxes, logits, image_sizes, level_sizes)
        want = ref_filter(boxes, logits, image_sizes, level_sizes, pre[mode], post[mode], 0.5,
                          1e-3, score_thresh)
        assert len(got) == 2
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_filter_proposals_properties(rng):
    rpn = small_rpn(pre_nms_top_n={"training": 9, "testing": 6},
                    post_nms_top_n={"training": 9, "testing": 8})
    rpn.eval()
    image_sizes = [(80, 100), (60, 90)]
    boxes, logits, level_sizes = proposal_case(rng, level_sizes=(30, 20, 4))
    boxes[1] = np.clip(boxes[1], 0, 55) + [0, 0, 1, 1]  # image 1: every box inside, non-empty
    with recording(rpn) as seen:
        first = rpn.filter_proposals(boxes, logits, image_sizes, level_sizes)
    second = rpn.filter_proposals(boxes, logits, image_sizes, level_sizes)
    starts = np.cumsum([0] + level_sizes)
    for i, (a, b, (h, w)) in enumerate(zip(first, second, image_sizes)):
        np.testing.assert_array_equal(a, b)  # deterministic
        assert isinstance(a, np.ndarray) and not isinstance(a, minifpn.Tensor)
        assert 0 < len(a) <= 8  # post_nms_top_n
        assert (a >= 0).all() and (a[:, [0, 2]] <= w).all() and (a[:, [1, 3]] <= h).all()
        # per-level top-k: before NMS, each level holds its (at most) 6 best scores
        _, scores, levels = seen["before_nms"][i]
        for lv in range(3):
            block = logits[i, starts[lv]:starts[lv + 1]]
            best = np.sort(sigmoid(block))[::-1][:6]
            got = np.sort(scores[levels == lv])[::-1]
            assert len(got) <= min(6, len(block))
            # every kept score is among the level's top 6 (boxes emptied by clipping drop out)
            assert np.isin(np.round(got, 12), np.round(best, 12)).all()
    _, scores, levels = seen["before_nms"][1]  # nothing clipped away here
    assert np.bincount(levels, minlength=3).tolist() == [6, 6, 4]
    for lv in range(3):
        block = logits[1, starts[lv]:starts[lv + 1]]
        want = np.sort(sigmoid(block))[::-1][:6]
        np.testing.assert_allclose(np.sort(scores[levels == lv])[::-1], want, rtol=1e-12)


def test_filter_proposals_records_what_each_level_keeps(rng):
    # `after_nms`: per image and level, the boxes the per-level NMS keeps, best first — checked
    # against the loops of ref_filter, written out here per level; recording changes nothing.
    pre, post = {"training": 9, "testing": 7}, {"training": 12, "testing": 5}
    rpn = small_rpn(pre_nms_top_n=pre, post_nms_top_n=post, nms_thresh=0.5)
    rpn.eval()
    image_sizes = [(80, 100), (60, 90)]
    boxes, logits, level_sizes = proposal_case(rng)
    with recording(rpn) as seen:
        got = rpn.filter_proposals(boxes, logits, image_sizes, level_sizes)
    plain = rpn.filter_proposals(boxes, logits, image_sizes, level_sizes)
    starts = np.cumsum([0] + level_sizes)
    for img, (h, w) in enumerate(image_sizes):
        np.testing.assert_array_equal(got[img], plain[img])
        kept_boxes, kept_scores, kept_levels = seen["after_nms"][img]
        assert list(kept_levels) == sorted(kept_levels)  # level after level
        for lv in range(len(level_sizes)):
            order = sorted(range(starts[lv], starts[lv + 1]), key=lambda t: -logits[img, t])
            cands = []
            for t in order[:pre["testing"]]:
                x1, y1, x2, y2 = boxes[img, t].tolist()
                b = [min(max(x1, 0.0), w), min(max(y1, 0.0), h),
                     min(max(x2, 0.0), w), min(max(y2, 0.0), h)]
                if b[2] - b[0] >= 1e-3 and b[3] - b[1] >= 1e-3:
                    cands.append((float(sigmoid(logits[img, t])), b))
            kept = naive_nms([c[1] for c in cands], [c[0] for c in cands], 0.5)
            on_level = kept_levels == lv
            np.testing.assert_allclose(kept_boxes[on_level], [cands[k][1] for k in kept])
            np.testing.assert_allclose(kept_scores[on_level], [cands[k][0] for k in kept],
                                       rtol=1e-12)
        # the proposals are the post_nms_top_n best of what the levels kept
        best = np.argsort(-kept_scores, kind="stable")[:post["testing"]]
        np.testing.assert_array_equal(got[img], kept_boxes[best])
        assert len(kept_boxes) > post["testing"]  # so that the final cut really cuts


def test_filter_proposals_records_the_same_on_every_device(device, rng):
    rpn = small_rpn(pre_nms_top_n={"training": 9, "testing": 7},
                    post_nms_top_n={"training": 12, "testing": 5}, nms_thresh=0.5)
    rpn.eval()
    boxes, logits, level_sizes = proposal_case(rng)
    with recording(rpn) as want:
        rpn.filter_proposals(boxes, logits, [(80, 100), (60, 90)], level_sizes)
    with recording(rpn) as got:
        rpn.filter_proposals(backend.to_device(boxes, device), backend.to_device(logits, device),
                             [(80, 100), (60, 90)], level_sizes)
    for name in ("before_nms", "after_nms"):
        for got_image, want_image in zip(got[name], want[name]):
            for a, b in zip(got_image, want_image):
                assert backend.device_of(a) == device
                np.testing.assert_allclose(backend.to_numpy(a), b, rtol=1e-12)


def test_filter_proposals_levels_do_not_suppress_each_other():
    rpn = small_rpn(nms_thresh=0.7)
    rpn.eval()
    box = [10.0, 10.0, 50.0, 40.0]
    boxes = np.array([[box, box, box, [60, 60, 70, 70]]])  # levels: [0, 0 | 1 | 2]
    logits = np.array([[2.0, 1.0, 0.5, -1.0]])
    got = rpn.filter_proposals(boxes, logits, [(100, 100)], [2, 1, 1])[0]
    # the level-0 duplicate is suppressed; the same box on level 1 is not
    np.testing.assert_array_equal(got, [box, box, [60, 60, 70, 70]])


# ---------------------------------------------------------------------------
# The whole RPN on a tiny backbone
# ---------------------------------------------------------------------------
def tiny_setup(image_sizes, padded):
    minifpn.manual_seed(0)
    backbone = resnet_fpn_backbone("resnet18", width=0.125, out_channels=16)
    rpn = RegionProposalNetwork(
        in_channels=16,
        pre_nms_top_n={"training": 200, "testing": 100},
        post_nms_top_n={"training": 100, "testing": 50},
    )
    rng = np.random.default_rng(0)
    data = np.zeros((len(image_sizes), 3) + padded, dtype=np.float32)
    for i, (h, w) in enumerate(image_sizes):
        data[i, :, :h, :w] = rng.random((3, h, w))
    return backbone, rpn, ImageList(minifpn.Tensor(data), list(image_sizes))


def test_rpn_end_to_end_losses_and_gradients():
    image_sizes = [(64, 96), (48, 80)]
    backbone, rpn, images = tiny_setup(image_sizes, (64, 96))
    targets = [{"boxes": np.array([[4, 6, 36, 30], [40, 20, 90, 62]], dtype=np.float32)},
               {"boxes": np.zeros((0, 4), dtype=np.float32)}]
    features = backbone(images.tensors)
    with recording(rpn) as seen:
        proposals, losses = rpn(images, features, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"}
    assert all(np.isfinite(v.item()) for v in losses.values())
    assert losses["loss_rpn_box_reg"].item() > 0
    # the anchors cover the padded batch: Σ H_l·W_l·3
    total = sum(f.shape[-2] * f.shape[-1] * 3 for f in features.values())
    assert sum(len(a) for a in seen["anchors_per_level"]) == total
    assert [len(lab) for lab in seen["labels"]] == [total, total]
    assert (seen["labels"][1] == 0).all()  # the empty image: all background
    assert (seen["labels"][0] == 1).any()
    # proposals: raw arrays (constants, no graph), inside each image, at most 100
    for p, (h, w) in zip(proposals, image_sizes):
        assert isinstance(p, np.ndarray) and not isinstance(p, minifpn.Tensor)
        assert 0 < len(p) <= 100
        assert (p >= 0).all() and (p[:, [0, 2]] <= w).all() and (p[:, [1, 3]] <= h).all()
    (losses["loss_objectness"] + losses["loss_rpn_box_reg"]).backward()
    for name, p in rpn.head.named_parameters():
        assert p.grad is not None and np.isfinite(p.grad).all(), name
        assert np.abs(p.grad).max() > 0, name
    assert backbone.body.conv1.weight.grad is not None
    assert np.abs(backbone.body.conv1.weight.grad).max() > 0


def test_rpn_without_targets_gives_no_losses_and_is_deterministic():
    backbone, rpn, images = tiny_setup([(64, 64)], (64, 64))
    rpn.eval()
    features = backbone(images.tensors)
    first, losses = rpn(images, features)
    second, _ = rpn(images, features)
    assert losses == {}
    np.testing.assert_array_equal(first[0], second[0])
    assert len(first[0]) <= 50


def test_rpn_overfits_one_image():
    backbone, rpn, images = tiny_setup([(64, 64)], (64, 64))
    targets = [{"boxes": np.array([[4, 6, 36, 30], [20, 24, 60, 62]], dtype=np.float32)}]
    optimizer = optim.SGD(list(backbone.parameters()) + list(rpn.parameters()), lr=0.05,
                          momentum=0.9)
    history = []
    for _ in range(30):
        _, losses = rpn(images, backbone(images.tensors), targets)
        loss = losses["loss_objectness"] + losses["loss_rpn_box_reg"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert np.isfinite(history).all()
    assert history[-1] < history[0] / 5, history
    # the head has learned to rank this image's positive anchors above its negatives
    with recording(rpn) as seen:
        rpn(images, backbone(images.tensors), targets)
    labels, logits = seen["labels"][0], seen["objectness"][0]
    assert logits[labels == 1].mean() > logits[labels == 0].mean() + 2
    # and its best proposals lie on the objects
    rpn.eval()
    proposals, _ = rpn(images, backbone(images.tensors))
    assert box_iou(proposals[0][:3], targets[0]["boxes"]).max() > 0.5


def test_rpn_default_configuration():
    rpn = RegionProposalNetwork()
    assert rpn.pre_nms_top_n == {"training": 2000, "testing": 1000}
    assert rpn.post_nms_top_n == {"training": 2000, "testing": 1000}
    assert rpn.nms_thresh == 0.7 and rpn.min_size == 1e-3 and rpn.score_thresh == 0.0
    assert (rpn.matcher.high_threshold, rpn.matcher.low_threshold) == (0.7, 0.3)
    assert rpn.matcher.allow_low_quality_matches
    assert (rpn.sampler.batch_size_per_image, rpn.sampler.positive_fraction) == (256, 0.5)
    assert rpn.box_coder.weights == (1.0, 1.0, 1.0, 1.0)
    assert RPN_SMOOTH_L1_BETA == pytest.approx(1 / 9)
    assert isinstance(rpn.anchor_generator, AnchorGenerator)
    assert isinstance(rpn.box_coder, BoxCoder)


def test_float64_rpn_regresses_to_float64_targets():
    # A float64 model must train on float64 targets, as torchvision's does: anchors take
    # the features' dtype, so ground truth at fractional pixels is not rounded to float32
    # (which moved loss_rpn_box_reg by ~1e-7 relative). Reference: the box-coding formula
    # in float64 on each positive anchor's best ground truth, and smooth-L1 by hand.
    backbone, rpn, images = tiny_setup([(64, 96)], (64, 96))
    backbone.double()
    rpn.double()
    images = ImageList(minifpn.Tensor(images.tensors.data.astype(np.float64)), images.image_sizes)
    gt = np.array([[4.123456789, 6.987654321, 36.314159265, 30.271828183],
                   [40.333333333, 20.111111111, 90.777777777, 62.555555555]])
    features = backbone(images.tensors)
    with recording(rpn) as seen:
        _, losses = rpn(images, features, [{"boxes": gt}])
    assert all(v.dtype == np.float64 for v in losses.values())
    anchors = np.concatenate(seen["anchors_per_level"])
    assert anchors.dtype == np.float64
    positive = seen["sampled_positive"][0]
    count = len(positive) + len(seen["sampled_negative"][0])
    assert len(positive) > 0

    def centre_size(b):
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        return b[:, 0] + 0.5 * w, b[:, 1] + 0.5 * h, w, h

    a = anchors[positive]
    best = np.array([np.argmax([naive_iou(anchor, g) for g in gt]) for anchor in a])
    ax, ay, aw, ah = centre_size(a)
    gx, gy, gw, gh = centre_size(gt[best])
    targets = np.stack([(gx - ax) / aw, (gy - ay) / ah, np.log(gw / aw), np.log(gh / ah)], 1)
    _, deltas = rpn.head(list(features.values()))
    # (1, 4A, H, W) → (H, W, A, 4) → anchor order (location-major, then anchor)
    predicted = np.concatenate([d.data.reshape(3, 4, *d.shape[-2:]).transpose(2, 3, 0, 1)
                                .reshape(-1, 4) for d in deltas])
    expected = ref_smooth_l1(predicted[positive] - targets, RPN_SMOOTH_L1_BETA).sum() / count
    np.testing.assert_allclose(losses["loss_rpn_box_reg"].item(), expected, rtol=1e-12)
