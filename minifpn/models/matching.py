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

import numpy as np

from minifpn import backend
from minifpn.backend import get_array_module

#: A candidate whose area lies at least this much inside a crowd region (a blob of
#: many people, say) is neither foreground nor background: both stages ignore it.
CROWD_IOA_THRESHOLD = 0.5


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
        best_match = quality.argmax(axis=0)  # … and with which ground truth
        # xp.where rather than masked assignment: on the GPU, ``a[mask] = v``
        # first counts the mask's True values on the host.
        matches = xp.where(best_value < self.low_threshold, self.BELOW_LOW_THRESHOLD,
                           xp.where(best_value < self.high_threshold, self.BETWEEN_THRESHOLDS,
                                    best_match))
        if self.allow_low_quality_matches:
            # For every ground truth, the candidates with its highest IoU (ties
            # included) get back their best match — as torchvision, the
            # candidate's own best ground truth, which is usually this one.
            # A row whose best is negative is a region no candidate may match
            # (a crowd, see the RPN): it takes part in nothing.
            highest_per_gt = quality.max(axis=1, keepdims=True)  # (G, 1)
            is_best = xp.any((quality == highest_per_gt) & (highest_per_gt >= 0), axis=0)  # (B,)
            matches = xp.where(is_best, best_match, matches)
        return matches.astype(xp.int64, copy=False)


class BalancedPositiveNegativeSampler:
    """Draw ``batch_size_per_image`` candidates with at most ``positive_fraction`` foreground.

    Called with one label array per image (``≥ 1`` foreground, ``0``
    background, ``−1`` ignored), it returns ``(positive, negative)``: per image,
    the indices drawn from each group, in random order. If there are too few
    positives the rest of the batch is filled with negatives.

    All images are sampled at once, on the device: every candidate gets a
    random key (:func:`minifpn.backend.random_keys`, seeded from minifpn's
    generator, so runs are reproducible and CPU and GPU draw the same), and an
    image's sample is the candidates of a group with the smallest keys — a
    uniform draw without replacement. The one host copy is the sample sizes.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels_per_image):
        xp = get_array_module(labels_per_image[0])
        width = max(len(labels) for labels in labels_per_image)
        labels = xp.full((len(labels_per_image), width), -1, dtype=xp.int64)  # padding: ignored
        for i, image_labels in enumerate(labels_per_image):  # a loop over images
            labels[i, : len(image_labels)] = image_labels
        keys = backend.random_keys(labels.shape, xp)  # (N, width)
        max_positive = int(self.batch_size_per_image * self.positive_fraction)
        positive, negative = labels >= 1, labels == 0
        num_pos = xp.minimum(positive.sum(axis=1), max_positive)
        num_neg = xp.minimum(negative.sum(axis=1), self.batch_size_per_image - num_pos)
        pos_order = _smallest_keys(xp.where(positive, keys, NOT_A_CANDIDATE), max_positive)
        neg_order = _smallest_keys(xp.where(negative, keys, NOT_A_CANDIDATE),
                                   self.batch_size_per_image)
        # Host copy: how many of each were drawn sets the sizes of what follows.
        counts = xp.stack([num_pos, num_neg], axis=1).tolist()
        positives = [pos_order[i, :p] for i, (p, _) in enumerate(counts)]
        negatives = [neg_order[i, :q] for i, (_, q) in enumerate(counts)]
        return positives, negatives


#: A key above every random key (they are below 2⁶³): marks rows' non-members.
NOT_A_CANDIDATE = np.uint64(2**64 - 1)


def _smallest_keys(keys, k: int):
    """``(N, min(k, M))`` column indices of each row's k smallest ``keys`` ``(N, M)``, ascending."""
    k = min(k, keys.shape[1])
    if k == 0:
        return get_array_module(keys).zeros((keys.shape[0], 0), dtype=np.int64)
    xp = get_array_module(keys)
    chosen = xp.argpartition(keys, k - 1, axis=1)[:, :k]  # the k smallest, unordered
    ranked = xp.argsort(xp.take_along_axis(keys, chosen, axis=1), axis=1)
    return xp.take_along_axis(chosen, ranked, axis=1)
