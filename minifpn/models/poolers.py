"""Which pyramid level does a RoI read from? The k = ⌊k0 + log2(√(wh)/224)⌋ rule.

Shape shorthand:  K RoIs;  C channels;  P × P pooled size (7 for boxes, 14 for masks).

FPN §4.2, equation (1): a RoI of width w and height h (in input-image
pixels) is assigned to level

    k = ⌊k0 + log2(√(wh) / 224)⌋

* **224** is the canonical ImageNet pre-training size: a 224 × 224 RoI is
  the object size a classification backbone is used to seeing whole.
* **k0 = 4**: the single-scale Faster R-CNN baseline pools every RoI from
  C4, so a 224-sized RoI goes to P4 — the FPN detector starts where that
  baseline was and moves smaller RoIs to finer levels: each halving of the
  RoI's side moves it one level down (112 → P3, 56 → P2), each doubling one
  up (448 → P5).
* The result is clamped to the levels that exist (P2..P5; P6 is for the RPN only).

The *floor* matters: a RoI is sent to the finest level at which it is at
least as large, relative to the stride, as a 224 box is on P4 (14 cells).
Without a small epsilon, √(wh) = 112 would give log2(0.5) = −1 exactly in
theory but −1 − 1e-16 in floating point for some sizes, and floor would drop
it a level; torchvision adds 1e-6 (``LEVEL_EPSILON``) for exactly this.
"""

from __future__ import annotations

import math

from minifpn import nn
from minifpn.autograd import raw
from minifpn.backend import get_array_module
from minifpn.functional import cat
from minifpn.ops.roi_align import convert_boxes_to_roi_format, roi_align

#: The canonical RoI size (ImageNet's 224 × 224 pre-training crops).
CANONICAL_SIZE = 224
#: The level a canonical-size RoI goes to (the single-scale baseline's C4).
CANONICAL_LEVEL = 4
#: Guards exact powers of two against falling a level through rounding
#: (a 112-pixel RoI must land on P3, not P2) — torchvision's value.
LEVEL_EPSILON = 1e-6


def map_rois_to_levels(boxes, k0=CANONICAL_LEVEL, canonical_size=CANONICAL_SIZE,
                       min_level=2, max_level=5, eps=LEVEL_EPSILON):
    """Pyramid level of each box: ``clamp(⌊k0 + log2(√(wh)/224) + eps⌋, min, max)``.

    Args:
        boxes: ``(K, 4)`` boxes ``(x1, y1, x2, y2)`` in input-image pixels.
        eps: added inside the floor so that exact powers of two are not
            pushed down a level by floating-point error in ``log2`` (1e-6,
            far below any real size difference: a box would have to be within
            ~1e-4 % of a power-of-two size to be moved by it).

    Returns:
        ``(K,)`` int64 levels (2 = P2, …, 5 = P5).
    """
    boxes = raw(boxes)
    xp = get_array_module(boxes)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    scale = xp.sqrt(xp.maximum(area, 0).astype(xp.float64))
    with_floor = xp.floor(k0 + xp.log2(xp.maximum(scale, 1e-12) / canonical_size) + eps)
    return xp.clip(with_floor, min_level, max_level).astype(xp.int64)


class MultiScaleRoIAlign(nn.Module):
    """Pool every RoI from its own pyramid level (torchvision's ``MultiScaleRoIAlign``).

    Args:
        featmap_names: the levels RoIs may read from, finest first (default P2..P5).
        output_size: P (7 for the box head, 14 for the mask head).
        sampling_ratio: RoIAlign points per bin per axis (2, as torchvision).
        canonical_size, canonical_level: the level rule's 224 and k0 = 4.

    Calling it with the pyramid, per-image RoIs ``[(K_i, 4)]`` (input-image
    pixels) and the padded image size returns ``(Σ K_i, C, P, P)``, RoIs in the
    order given. Set ``inspect = True`` to keep each RoI's level in
    ``self.last_levels``.
    """

    def __init__(self, featmap_names=("P2", "P3", "P4", "P5"), output_size=7, sampling_ratio=2,
                 canonical_size=CANONICAL_SIZE, canonical_level=CANONICAL_LEVEL):
        super().__init__()
        self.featmap_names = tuple(featmap_names)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.canonical_size, self.canonical_level = canonical_size, canonical_level
        self.levels = [int(name[1:]) for name in self.featmap_names]  # P2 → 2
        self.inspect = False
        self.last_levels = None

    def forward(self, features, boxes, image_size):
        maps = [features[name] for name in self.featmap_names]
        rois = convert_boxes_to_roi_format(boxes)  # (K, 5)
        xp = get_array_module(maps[0].data)
        levels = map_rois_to_levels(
            rois[:, 1:], self.canonical_level, self.canonical_size,
            min(self.levels), max(self.levels),
        )
        if self.inspect:
            self.last_levels = levels
        # RoIs grouped level by level, finest first. Host copy: the group sizes.
        order = xp.argsort(levels, kind="stable")
        first = min(self.levels)
        counts = (levels[:, None] == xp.arange(first, max(self.levels) + 1)).sum(axis=0).tolist()
        pooled, start = [], 0
        for level, feature in sorted(zip(self.levels, maps), key=lambda pair: pair[0]):
            members = order[start : start + counts[level - first]]  # a loop over levels
            start += len(members)
            # The level's scale, 1/stride, inferred as torchvision does: the
            # power of two nearest to map size / image size.
            scale = 2.0 ** round(math.log2(feature.shape[-1] / image_size[-1]))
            pooled.append(roi_align(feature, rois[members], self.output_size, scale,
                                    self.sampling_ratio))
        out = cat(pooled, dim=0)  # grouped by level …
        return out[xp.argsort(order)] if len(order) else out  # … back to the RoIs' order

    def extra_repr(self) -> str:
        return (f"featmap_names={list(self.featmap_names)}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}")

