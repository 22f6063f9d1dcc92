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
    clipped = xp.maximum(boxes, 0)
    clipped[..., 0::2] = xp.minimum(clipped[..., 0::2], width)  # x1, x2
    clipped[..., 1::2] = xp.minimum(clipped[..., 1::2], height)  # y1, y2
    return clipped


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
    """
    boxes, scores = raw(boxes), raw(scores)
    xp = get_array_module(boxes)
    if boxes.shape[0] == 0:
        return xp.zeros(0, dtype=xp.int64)
    order = xp.argsort(-scores, kind="stable")
    kept, _ = nms_blocks(boxes[order], [len(order)], iou_threshold)
    return order[kept]


def nms_blocks(boxes, block_sizes, iou_threshold: float, valid=None):
    """Greedy NMS inside consecutive blocks of rows, each already sorted best first.

    The workhorse of :func:`nms` and :func:`batched_nms`, and of the RPN,
    which runs every (image, level) of a batch as one block in one call.

    Args:
        boxes: ``(M, 4)``; rows ``[0, n_0)`` are block 0, the next ``n_1``
            block 1, … — each sorted by decreasing score.
        block_sizes: the ``n_b``, a host list summing to M.
        valid: optional ``(M,)`` bool: rows that take part. The others are
            neither kept nor suppress anything (the RPN's tiny boxes, say).

    Returns:
        ``(kept, kept_per_block)``: the kept row indices (int64, row order) on
        the boxes' device, and how many each block kept (a host list).

    Greedy NMS is sequential, so it is split as torchvision's CUDA kernel
    splits it: the suppression matrices — ``S[j, i] = IoU(j, i) > t`` — are
    computed on the device, copied to the host in one transfer (the one
    synchronisation: what survives decides the output's size), scanned there
    (:func:`greedy_keep`), and the kept rows copied back in one transfer.
    Memory is O(Σ n_b²): a block of 2,000 boxes is a 4 MB boolean matrix.
    """
    xp = get_array_module(boxes)
    total = sum(n * n for n in block_sizes)
    flags = xp.empty(total + (len(boxes) if valid is not None else 0), dtype=bool)
    start = offset = 0
    for n in block_sizes:  # a loop over blocks (levels, classes, images), not boxes
        block = boxes[start : start + n]
        xp.greater(box_iou(block, block), iou_threshold, out=flags[offset : offset + n * n]
                   .reshape(n, n))
        start, offset = start + n, offset + n * n
    if valid is not None:
        flags[total:] = valid
    host = backend.to_numpy(flags)  # the one device → host copy
    keep, kept_per_block = [], []
    start = offset = 0
    for n in block_sizes:
        suppresses = host[offset : offset + n * n].reshape(n, n)
        alive = host[total + start : total + start + n] if valid is not None else None
        block_keep = greedy_keep(suppresses, alive)
        keep.append(block_keep)
        kept_per_block.append(int(block_keep.sum()))
        start, offset = start + n, offset + n * n
    rows = np.flatnonzero(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
    return xp.asarray(rows), kept_per_block  # the one host → device copy


def greedy_keep(suppresses: np.ndarray, alive: np.ndarray | None = None) -> np.ndarray:
    """Which rows greedy NMS keeps, from ``suppresses[j, i] = IoU(j, i) > t`` (host arrays).

    Rows are sorted best first, so only ``j < i`` counts (the upper triangle).
    Vectorised without a loop over boxes: the answer is the unique ``keep``
    with ``keep[i] = alive[i] and not any_j (keep[j] and S[j, i])``. Starting
    from "keep everything alive" and re-applying that rule fixes at least one
    more box of every suppression chain per round, so it converges — exactly —
    in as many rounds as the longest chain of boxes suppressing one another
    (a handful in practice). Returns an ``(n,)`` bool array.
    """
    weights = np.triu(suppresses, k=1).astype(np.float32)  # a matrix-vector product counts
    keep = np.ones(len(weights), dtype=bool) if alive is None else alive.copy()
    while True:
        new_keep = (keep.astype(np.float32) @ weights) == 0
        if alive is not None:
            new_keep &= alive
        if (new_keep == keep).all():
            return keep
        keep = new_keep


#: Above this many boxes, batched_nms runs one NMS block per group instead of
#: one big block: its N×N IoU matrix costs (Σ n_g)², the per-group ones Σ n_g².
BATCHED_NMS_SINGLE_LIMIT = 1000


def batched_nms(boxes, scores, idxs, iou_threshold: float):
    """NMS within groups (classes, or pyramid levels): other groups' boxes never suppress.

    Returns kept indices sorted by decreasing score, as ``torchvision.ops.batched_nms``.
    Up to :data:`BATCHED_NMS_SINGLE_LIMIT` boxes, groups are separated by
    shifting each group's boxes far apart (an offset larger than any
    coordinate) and one NMS serves all; beyond, the boxes are sorted by group
    and each group is its own block of :func:`nms_blocks` (the same result).
    """
    boxes, scores, idxs = raw(boxes), raw(scores), raw(idxs)
    xp = get_array_module(boxes)
    if boxes.shape[0] == 0:
        return xp.zeros(0, dtype=xp.int64)
    if boxes.shape[0] <= BATCHED_NMS_SINGLE_LIMIT:
        # In float64: shifted by up to (groups × image size), float32 coordinates
        # would lose the sub-pixel precision the IoU threshold needs.
        boxes = boxes.astype(xp.float64)
        offsets = idxs.astype(xp.float64) * (boxes.max() + 1)
        return nms(boxes + offsets[:, None], scores, iou_threshold)
    order = xp.argsort(-scores, kind="stable")
    order = order[xp.argsort(idxs[order], kind="stable")]  # by group, best first within
    grouped = idxs[order]
    # Host copy: where one group ends and the next begins sets the block sizes.
    ends = np.flatnonzero(backend.to_numpy(grouped[1:] != grouped[:-1])) + 1
    sizes = np.diff(np.concatenate([[0], ends, [len(order)]])).tolist()
    kept, _ = nms_blocks(boxes[order], sizes, iou_threshold)
    keep = xp.sort(order[kept])  # input order, so equal scores tie as in one NMS
    return keep[xp.argsort(-scores[keep], kind="stable")]
