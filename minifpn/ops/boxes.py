"""Box utilities, as ``torchvision.ops``: IoU, encoding, clipping, NMS.

Boxes are ``(x1, y1, x2, y2)`` in pixels, raw NumPy/CuPy arrays of shape
``(N, 4)`` (these ops sit outside the autograd graph, except where
:class:`BoxCoder` decodes a Tensor of deltas). Width is ``x2 − x1`` — no
"+1", as in torchvision ≥ 0.3 and Detectron2.
"""

from __future__ import annotations

import math

import numpy as np

from minifpn import backend
from minifpn.autograd import raw
from minifpn.backend import get_array_module

#: Largest log-scale change a decoded box may have: exp(log(1000/16)) = 62.5×.
#: Detectron's constant — an anchor of 16 px may grow to at most 1000 px — keeps
#: ``exp`` from overflowing for wild early-training predictions.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def box_area(boxes):
    """``(N, 4)`` → ``(N,)`` areas."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1, boxes2):
    """Pairwise intersection-over-union: ``(N, 4)``, ``(M, 4)`` → ``(N, M)``.

    ``IoU = |A ∩ B| / |A ∪ B|``; two empty boxes have IoU 0 (not NaN).
    """
    boxes1, boxes2 = _float_boxes(boxes1), _float_boxes(boxes2)
    xp = get_array_module(boxes1)
    inter = _intersection(boxes1, boxes2)
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :]
    union -= inter
    xp.maximum(union, xp.finfo(union.dtype).tiny, out=union)
    inter /= union
    return inter


def box_ioa(boxes, regions):
    """Intersection over the *first* box's area: ``(N, 4)``, ``(M, 4)`` → ``(N, M)``.

    How much of each box lies inside each region — used to tell anchors that
    "mostly fall in" a crowd region.
    """
    boxes, regions = _float_boxes(boxes), _float_boxes(regions)
    xp = get_array_module(boxes)
    area = xp.maximum(box_area(boxes), xp.finfo(boxes.dtype).tiny)
    return _intersection(boxes, regions) / area[:, None]


def _float_boxes(boxes):
    """The raw array of a Tensor or array of boxes, integer coordinates as float32."""
    boxes = raw(boxes)
    return boxes if boxes.dtype.kind == "f" else boxes.astype(get_array_module(boxes).float32)


def _intersection(boxes1, boxes2):
    """``(N, M)`` overlap areas, one coordinate at a time (in-place to spare memory)."""
    xp = get_array_module(boxes1)
    a, b = boxes1[:, None, :], boxes2[None, :, :]  # (N, 1, 4) and (1, M, 4)
    width = xp.minimum(a[..., 2], b[..., 2])  # right edge of the overlap
    width -= xp.maximum(a[..., 0], b[..., 0])  # minus its left edge
    height = xp.minimum(a[..., 3], b[..., 3])
    height -= xp.maximum(a[..., 1], b[..., 1])
    xp.clip(width, 0, None, out=width)  # disjoint boxes: no overlap, not a negative one
    xp.clip(height, 0, None, out=height)
    width *= height
    return width


def clip_boxes_to_image(boxes, size):
    """Clamp coordinates into the image: x to [0, width], y to [0, height].

    ``size`` is ``(height, width)``, as torchvision's.
    """
    xp = get_array_module(boxes)
    height, width = size
    upper = xp.asarray([width, height, width, height], dtype=boxes.dtype)
    return xp.clip(boxes, 0, upper)


def remove_small_boxes(boxes, min_size):
    """Indices of boxes whose width and height are both at least ``min_size``."""
    xp = get_array_module(boxes)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return xp.flatnonzero((w >= min_size) & (h >= min_size))


class BoxCoder:
    """Boxes ↔ regression targets relative to reference boxes (R-CNN's parametrisation).

    For a reference box (anchor or proposal) with centre (x, y), size (w, h)
    and a target box (x*, y*, w*, h*)::

        dx = wx·(x* − x)/w    dy = wy·(y* − y)/h    dw = ww·log(w*/w)    dh = wh·log(h*/h)

    Centre offsets are measured in box widths (scale invariant) and sizes in
    log space (so growing ×2 and shrinking ×½ are symmetric). The weights
    rescale the targets to roughly unit variance: (1, 1, 1, 1) in the RPN,
    (10, 10, 5, 5) in the box head, whose proposals are already close to
    the objects so its offsets are small.
    """

    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=BBOX_XFORM_CLIP):
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = bbox_xform_clip

    @staticmethod
    def _centre_size(boxes):
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h

    def encode(self, targets, references):
        """Deltas ``(N, 4)`` that turn ``references`` into ``targets`` (both ``(N, 4)``)."""
        xp = get_array_module(targets)
        wx, wy, ww, wh = self.weights
        x, y, w, h = self._centre_size(references)
        tx, ty, tw, th = self._centre_size(targets)
        return xp.stack(
            [wx * (tx - x) / w, wy * (ty - y) / h, ww * xp.log(tw / w), wh * xp.log(th / h)], axis=1
        )

    def decode(self, deltas, references):
        """Boxes ``(N, 4)`` from deltas ``(N, 4)`` and reference boxes ``(N, 4)``.

        ``deltas`` may be a raw array or a Tensor, whose values are used:
        decoding happens outside the autograd graph (proposals and detections
        are constants, as in torchvision). Size deltas are clamped at
        ``bbox_xform_clip`` before ``exp``.
        """
        xp = get_array_module(deltas)
        wx, wy, ww, wh = self.weights
        deltas = raw(deltas)
        x, y, w, h = self._centre_size(references.astype(deltas.dtype, copy=False))
        dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
        dw = xp.minimum(deltas[:, 2] / ww, self.bbox_xform_clip)
        dh = xp.minimum(deltas[:, 3] / wh, self.bbox_xform_clip)
        cx, cy = dx * w + x, dy * h + y
        half_w, half_h = 0.5 * xp.exp(dw) * w, 0.5 * xp.exp(dh) * h
        return xp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)


def nms(boxes, scores, iou_threshold: float):
    """Non-maximum suppression, with ``torchvision.ops.nms`` semantics.

    Visit boxes from the highest score down; keep a box unless it overlaps an
    already *kept* box with IoU > ``iou_threshold``. Returns the kept indices
    (int64), highest score first. Equal scores keep their input order.

    Vectorised without a loop over boxes: with ``S[j, i] = (j before i) and
    IoU(j, i) > t`` (boxes sorted by score), the answer is the unique
    ``keep`` with ``keep[i] = not any_j (keep[j] and S[j, i])``. Starting
    from "keep everything" and re-applying that rule fixes at least one more
    box of every suppression chain per round, so it converges — exactly — in
    as many rounds as the longest chain of boxes suppressing one another
    (a handful in practice). Memory is O(N²): N = 4,000 boxes is a 16 MB
    boolean matrix.
    """
    boxes, scores = raw(boxes), raw(scores)
    xp = get_array_module(boxes)
    if boxes.shape[0] == 0:
        return xp.zeros(0, dtype=xp.int64)
    order = xp.argsort(-scores, kind="stable")
    sorted_boxes = boxes[order]
    suppresses = xp.triu(box_iou(sorted_boxes, sorted_boxes) > iou_threshold, k=1)
    weights = suppresses.astype(xp.float32)  # a matrix-vector product counts suppressors
    keep = xp.ones(len(order), dtype=bool)
    while True:
        # i survives if no kept box j (j < i) suppresses it. One host sync per
        # round: the loop must know whether anything changed.
        new_keep = (keep.astype(xp.float32) @ weights) == 0
        if bool((new_keep == keep).all()):
            return order[keep]
        keep = new_keep


#: Above this many boxes, batched_nms runs one NMS per group instead of one
#: big NMS: its N×N IoU matrix costs (Σ n_g)², the per-group ones Σ n_g².
BATCHED_NMS_SINGLE_LIMIT = 1000


def batched_nms(boxes, scores, idxs, iou_threshold: float):
    """NMS within groups (classes, or pyramid levels): other groups' boxes never suppress.

    Returns kept indices sorted by decreasing score, as ``torchvision.ops.batched_nms``.
    Groups are separated by shifting each group's boxes far apart (an offset
    larger than any coordinate), so one NMS call serves all groups; for very
    many boxes it runs one NMS per group instead, which gives the same result.
    """
    boxes, scores, idxs = raw(boxes), raw(scores), raw(idxs)
    xp = get_array_module(boxes)
    if boxes.shape[0] == 0:
        return xp.zeros(0, dtype=xp.int64)
    if boxes.shape[0] <= BATCHED_NMS_SINGLE_LIMIT:
        offsets = idxs.astype(boxes.dtype) * (boxes.max() + 1)
        return nms(boxes + offsets[:, None], scores, iou_threshold)
    kept = []
    for group in np.unique(backend.to_numpy(idxs)):  # a loop over groups, not boxes
        members = xp.flatnonzero(idxs == group)
        kept.append(members[nms(boxes[members], scores[members], iou_threshold)])
    keep = xp.sort(xp.concatenate(kept))  # input order, so equal scores tie as in one NMS
    return keep[xp.argsort(-scores[keep], kind="stable")]
