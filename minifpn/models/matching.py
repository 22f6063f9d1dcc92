"""Which boxes learn what: matching anchors/proposals to ground truth, and sampling.

Shape shorthand:  G ground-truth boxes,  B candidate boxes (anchors or proposals).

Both stages of the detector ask the same two questions of their candidates:

1. **Matching** (:class:`Matcher`): which ground-truth box does each candidate
   belong to? The IoU matrix ``(G, B)`` decides: IoU ≥ ``high`` → that box
   (foreground), IoU < ``low`` → background, in between → ignored. The RPN
   uses 0.7 / 0.3 plus *low-quality matches* (below); the box head uses
   0.5 / 0.5 (no gap, nothing ignored).
2. **Sampling** (:class:`BalancedPositiveNegativeSampler`): an image has
   ~10⁵ anchors and a handful of objects, so nearly every candidate is
   background. Training on all of them would drown the foreground signal;
   instead a fixed number per image is drawn (256 anchors, 512 RoIs) with at
   most a fixed fraction of foreground (½ in the RPN, ¼ in the box head).
"""

from __future__ import annotations

from minifpn import backend
from minifpn.backend import get_array_module


class Matcher:
    """Assign each of B candidates the index of a ground-truth box, or a negative code.

    Args:
        high_threshold: IoU at or above which a candidate is foreground.
        low_threshold: IoU below which it is background.
        allow_low_quality_matches: also give every ground-truth box the
            candidates that overlap it best (all of them, if several tie),
            even below ``high_threshold`` — otherwise a small or oddly shaped
            object that no anchor covers at 0.7 would never be learned.

    Calling it on an IoU matrix ``(G, B)`` returns ``(B,)`` int64: a ground-truth
    index ≥ 0, :attr:`BELOW_LOW_THRESHOLD` (−1, background) or
    :attr:`BETWEEN_THRESHOLDS` (−2, ignored) — torchvision's codes.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold, low_threshold, allow_low_quality_matches=False):
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold {low_threshold} > high_threshold {high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, quality):
        xp = get_array_module(quality)
        if quality.shape[0] == 0:
            raise ValueError("Matcher needs at least one ground-truth box (handle empty images)")
        best_value = quality.max(axis=0)  # (B,) each candidate's best IoU …
        matches = quality.argmax(axis=0)  # … and with which ground truth
        best_match = matches.copy()
        matches[best_value < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        between = (best_value >= self.low_threshold) & (best_value < self.high_threshold)
        matches[between] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            # For every ground truth, the candidates with its highest IoU (ties
            # included) get back their best match — as torchvision, the
            # candidate's own best ground truth, which is usually this one.
            highest_per_gt = quality.max(axis=1, keepdims=True)  # (G, 1)
            is_best = xp.any(quality == highest_per_gt, axis=0)  # (B,)
            matches[is_best] = best_match[is_best]
        return matches.astype(xp.int64, copy=False)


class BalancedPositiveNegativeSampler:
    """Draw ``batch_size_per_image`` candidates with at most ``positive_fraction`` foreground.

    Called with one label array per image (``≥ 1`` foreground, ``0``
    background, ``−1`` ignored), it returns ``(positive, negative)``: per image,
    the indices drawn from each group. If there are too few positives the
    rest of the batch is filled with negatives. Draws use minifpn's seeded
    generator (``minifpn.manual_seed``), so runs are reproducible.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels_per_image):
        positives, negatives = [], []
        for labels in labels_per_image:  # a loop over images
            xp = get_array_module(labels)
            pos = xp.flatnonzero(labels >= 1)
            neg = xp.flatnonzero(labels == 0)
            # Host sync: the sample sizes depend on how many of each there are.
            num_pos = min(int(pos.size), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(int(neg.size), self.batch_size_per_image - num_pos)
            rng = backend.rng()
            positives.append(pos[xp.asarray(rng.permutation(int(pos.size))[:num_pos])])
            negatives.append(neg[xp.asarray(rng.permutation(int(neg.size))[:num_neg])])
        return positives, negatives
