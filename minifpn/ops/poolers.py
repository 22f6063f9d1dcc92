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
import re

import numpy as np

from minifpn import nn
from minifpn.autograd import raw
from minifpn.backend import get_array_module
from minifpn.functional import cat
from minifpn.ops.roi_pooling import convert_boxes_to_roi_format, roi_align
from minifpn.recording import record

#: The canonical RoI size (ImageNet's 224 × 224 pre-training crops).
CANONICAL_SIZE = 224
#: The level a canonical-size RoI goes to (the single-scale baseline's C4).
CANONICAL_LEVEL = 4
#: Guards exact powers of two against falling a level through rounding
#: (a 112-pixel RoI must land on P3, not P2) — torchvision's value.
LEVEL_EPSILON = 1e-6
#: RoIAlign points per bin per axis: 2 × 2 = 4 bilinear samples per bin (torchvision's
#: and Detectron's choice; Mask R-CNN §3 finds the result insensitive to it).
SAMPLING_RATIO = 2


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
        canonical_scale, canonical_level: the level rule's 224 and k0 = 4
            (torchvision's names for them).

    Calling it with the pyramid, per-image RoIs ``[(K_i, 4)]`` (input-image
    pixels) and the images' sizes ``[(h_i, w_i), …]`` (or one ``(H, W)``, the
    batch's extent) returns ``(Σ K_i, C, P, P)``, RoIs in the order given.
    Inside a :func:`~minifpn.recording.recording` it records each RoI's level
    as ``levels`` ``(Σ K_i,)``.

    **Each level's scale** (1/stride) is known when its name says it: ``"P3"``
    (or ``"C3"``) is the FPN paper's level 3, stride 2³ = 8 — the names
    minifpn's backbones give their maps. For any other name (torchvision's
    ``"0"``, ``"1"``, …) it is inferred as torchvision does, the power of two
    nearest to map height / image height, and the width must agree: on an
    image much narrower than it is tall, the padding to a multiple of 32 makes
    a map's width a poor measure of its stride (torchvision reads the height
    only and never notices). If the two disagree, the call fails and says so.
    """

    def __init__(self, featmap_names=("P2", "P3", "P4", "P5"), output_size=7,
                 sampling_ratio=SAMPLING_RATIO,
                 *, canonical_scale=CANONICAL_SIZE, canonical_level=CANONICAL_LEVEL):
        super().__init__()
        self.featmap_names = tuple(featmap_names)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level
        #: Each map's stride where its name tells it (None: inferred when called).
        self.known_strides = [stride_from_name(name) for name in self.featmap_names]

    def forward(self, features, boxes, image_shapes):
        maps = [features[name] for name in self.featmap_names]
        strides = self._strides(maps, image_shapes)
        levels_of_maps = [int(round(math.log2(s))) for s in strides]
        if levels_of_maps != list(range(levels_of_maps[0], levels_of_maps[0] + len(maps))):
            raise ValueError(
                f"MultiScaleRoIAlign needs consecutive levels, finest first; the maps "
                f"{list(self.featmap_names)} have strides {strides}"
            )
        rois = convert_boxes_to_roi_format(boxes)  # (K, 5)
        xp = get_array_module(maps[0].data)
        levels = map_rois_to_levels(
            rois[:, 1:], self.canonical_level, self.canonical_scale,
            levels_of_maps[0], levels_of_maps[-1],
        )
        record(self, "levels", levels)
        # RoIs grouped level by level, finest first. Host copy: the group sizes.
        order = xp.argsort(levels, kind="stable")
        first = levels_of_maps[0]
        counts = (levels[:, None] == xp.arange(first, first + len(maps))).sum(axis=0).tolist()
        pooled, start = [], 0
        for stride, feature, count in zip(strides, maps, counts):  # a loop over levels
            members = order[start : start + count]
            start += count
            pooled.append(roi_align(feature, rois[members], self.output_size, 1.0 / stride,
                                    self.sampling_ratio))
        out = cat(pooled, dim=0)  # grouped by level …
        return out[xp.argsort(order)] if len(order) else out  # … back to the RoIs' order

    def _strides(self, maps, image_shapes) -> list:
        """Each map's stride: from its name, or inferred from its size (see the class docstring)."""
        if all(self.known_strides):
            return self.known_strides
        shapes = [image_shapes] if np.ndim(image_shapes[0]) == 0 else image_shapes
        extent = (max(h for h, _ in shapes), max(w for _, w in shapes))  # torchvision's
        strides = []
        for name, known, feature in zip(self.featmap_names, self.known_strides, maps):
            if known:
                strides.append(known)
                continue
            by_height, by_width = (2 ** round(math.log2(size / length))
                                   for size, length in zip(extent, feature.shape[-2:]))
            if by_height != by_width:
                raise ValueError(
                    f"MultiScaleRoIAlign cannot tell the stride of feature map {name!r}: its "
                    f"{feature.shape[-2]}×{feature.shape[-1]} cells against images of up to "
                    f"{extent[0]}×{extent[1]} pixels give stride {by_height} by the height but "
                    f"{by_width} by the width. Name the maps 'P<k>' (stride 2^k), as minifpn's "
                    f"backbones do, so their strides are known."
                )
            strides.append(by_height)
        return strides

    def extra_repr(self) -> str:
        return (f"featmap_names={list(self.featmap_names)}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}")


def stride_from_name(name: str):
    """``"P3"`` or ``"C3"`` → 8 (the FPN paper's level k has stride 2^k); other names → None."""
    match = re.fullmatch(r"[PC](\d+)", str(name))
    return 2 ** int(match[1]) if match else None
