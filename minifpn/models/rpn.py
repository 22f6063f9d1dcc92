"""The Region Proposal Network on the feature pyramid.

Shape shorthand:
    N images        L levels (P2..P6)      A anchors per location (3)
    H_l × W_l       size of level l        T = Σ_l H_l·W_l·A, anchors per image
    G               ground-truth boxes of one image

One small head — a 3×3 conv and two sibling 1×1 convs — slides over *every*
pyramid level with the *same* weights (FPN §4.1: "the parameters of the
heads are shared across all feature pyramid levels"; the paper found sharing
works as well as separate heads, evidence that all levels share similar
semantics). At each location it predicts, for each of the A anchors there,

* an objectness logit: is there an object? (``cls_logits``, A channels)
* four box deltas that move the anchor onto it (``bbox_pred``, 4A channels).

Training (targets given): every anchor is matched to the ground truth
(IoU ≥ 0.7 foreground, < 0.3 background, plus each object's best anchors),
256 anchors per image are sampled (≤ ½ foreground), and the loss is binary
cross-entropy on their objectness plus smooth-L1 (β = 1/9) on the
foreground deltas, both normalised by the number of sampled anchors.

Proposals (always): deltas decode the anchors into boxes; per level the
``pre_nms_top_n`` most object-like are kept, clipped to the image, tiny ones
dropped, NMS (IoU 0.7) applied per level, and the ``post_nms_top_n`` best of
the image kept. Proposals are constants: no gradient flows back through
them into the RPN (as in torchvision and the "approximate joint training"
of Faster R-CNN).
"""

from __future__ import annotations

import numpy as np

from minifpn import nn
from minifpn.autograd import raw
from minifpn.backend import get_array_module
from minifpn.functional import binary_cross_entropy_with_logits, cat, relu, smooth_l1_loss
from minifpn.functional.activation import stable_sigmoid
from minifpn.models.anchors import AnchorGenerator
from minifpn.models.matching import CROWD_IOA_THRESHOLD, BalancedPositiveNegativeSampler, Matcher
from minifpn.ops.boxes import BoxCoder, box_ioa, box_iou, clip_boxes_to_image, nms_blocks
from minifpn.recording import is_recording, record

#: Smooth-L1's switch point for box deltas. 1/9 (Detectron, torchvision): the
#: deltas are small, so the quadratic zone is kept narrow — the loss is L1-like
#: (robust to outliers) for all but nearly-right boxes.
RPN_SMOOTH_L1_BETA = 1.0 / 9


class RPNHead(nn.Module):
    """Shared 3×3 conv + ReLU, then objectness (A) and box deltas (4A) per location.

    Parameter names are torchvision's (``conv.0.0``, ``cls_logits``,
    ``bbox_pred``); weights start as N(0, 0.01²), biases at 0, as there.
    """

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1))
        )
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def forward(self, features):
        """``[(N, C, H_l, W_l)] * L`` → ``([(N, A, H_l, W_l)], [(N, 4A, H_l, W_l)])``."""
        objectness, deltas = [], []
        for feature in features:  # the same weights on every level
            t = relu(self.conv(feature))
            objectness.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return objectness, deltas


def flatten_predictions(objectness, deltas):
    """Per-level head outputs → ``(N, T)`` logits and ``(N, T, 4)`` deltas, anchor order.

    ``(N, A, H, W)`` is permuted to ``(N, H, W, A)`` before flattening, so the
    order is location-major then anchor — the order of :class:`AnchorGenerator`.
    """
    flat_logits, flat_deltas = [], []
    for logits, box in zip(objectness, deltas):
        n, a, h, w = logits.shape
        flat_logits.append(logits.permute(0, 2, 3, 1).reshape(n, -1))  # (N, H·W·A)
        box = box.reshape(n, a, 4, h, w).permute(0, 3, 4, 1, 2)  # (N, H, W, A, 4)
        flat_deltas.append(box.reshape(n, -1, 4))
    return cat(flat_logits, dim=1), cat(flat_deltas, dim=1)


class RegionProposalNetwork(nn.Module):
    """Anchors + head + matching + losses + proposals, as torchvision's RPN.

    Args (torchvision's order; defaults from the FPN paper / torchvision):
        anchor_generator: default: sizes 32…512 on P2…P6, ratios 0.5, 1, 2.
        head: default: an :class:`RPNHead` of ``in_channels`` with the
            generator's A anchors per location.
        fg_iou_thresh, bg_iou_thresh: 0.7 and 0.3.
        batch_size_per_image, positive_fraction: 256 anchors, ≤ 0.5 foreground.
        pre_nms_top_n: per level, ``{"training": 2000, "testing": 1000}``.
        post_nms_top_n: per image, ``{"training": 2000, "testing": 1000}``.
        nms_thresh: 0.7.
        score_thresh: drop proposals with objectness below this (0.0).
        in_channels: (keyword only, minifpn's) the pyramid's channels for the
            default head (256); give it or ``head``, not both.
        min_size: (keyword only) drop proposals smaller than this (1e-3 px).

    Inside a :func:`~minifpn.recording.recording` it records, for lessons and
    debugging: ``anchors_per_level``, ``objectness`` ``(N, T)``, ``decoded``
    ``(N, T, 4)``, ``proposals``, ``before_nms`` (per image the candidates that
    enter NMS: boxes, scores and level index), ``after_nms`` (the same for the
    boxes the per-level NMS keeps, level after level, best first within a
    level; ``proposals`` are its ``post_nms_top_n`` best), and in training
    ``labels`` and ``sampled_positive`` / ``sampled_negative`` (per image).
    """

    def __init__(self, anchor_generator=None, head=None, fg_iou_thresh=0.7, bg_iou_thresh=0.3,
                 batch_size_per_image=256, positive_fraction=0.5, pre_nms_top_n=None,
                 post_nms_top_n=None, nms_thresh=0.7, score_thresh=0.0, *, in_channels=None,
                 min_size=1e-3):
        super().__init__()
        self.anchor_generator = anchor_generator or AnchorGenerator()
        num_anchors = self.anchor_generator.num_anchors_per_location()[0]
        if head is None:
            head = RPNHead(256 if in_channels is None else in_channels, num_anchors)
        elif in_channels is not None:
            raise ValueError("give the RPN either a head or in_channels for the default head, "
                             "not both")
        predicted = getattr(getattr(head, "cls_logits", None), "out_channels", num_anchors)
        if predicted != num_anchors:
            raise ValueError(
                f"the RPN head predicts {predicted} anchors per location but the anchor "
                f"generator makes {num_anchors}: build the head with "
                f"RPNHead(channels, anchor_generator.num_anchors_per_location()[0])"
            )
        self.head = head
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n = pre_nms_top_n or {"training": 2000, "testing": 1000}
        self.post_nms_top_n = post_nms_top_n or {"training": 2000, "testing": 1000}
        self.nms_thresh, self.min_size, self.score_thresh = nms_thresh, min_size, score_thresh

    def _mode(self) -> str:
        return "training" if self.training else "testing"

    def forward(self, images, features, targets=None):
        """Propose boxes (and, with targets, compute the losses).

        Args:
            images: an :class:`~minifpn.models.transform.ImageList`.
            features: ``OrderedDict`` of pyramid levels ``(N, C, H_l, W_l)``.
            targets: per image a dict with ``"boxes"`` ``(G, 4)`` (resized-image
                pixels) and optionally ``"iscrowd"`` ``(G,)``. Required in training.

        Returns:
            ``(proposals, losses)``: per image a ``(P, 4)`` raw array of boxes,
            best first; and ``{"loss_objectness", "loss_rpn_box_reg"}`` (empty
            without targets).
        """
        levels = list(features.values())
        objectness, deltas = self.head(levels)
        anchors_per_level = self.anchor_generator(
            images.padded_size, [f.shape[-2:] for f in levels], like=levels[0].data
        )
        anchors = get_array_module(levels[0].data).concatenate(anchors_per_level)  # (T, 4)
        logits, box_deltas = flatten_predictions(objectness, deltas)  # (N, T), (N, T, 4)

        n, t = logits.shape
        xp = get_array_module(anchors)
        every_image_anchors = xp.broadcast_to(anchors, (n, t, 4)).reshape(-1, 4)  # (N·T, 4)
        decoded = self.box_coder.decode(box_deltas.data.reshape(-1, 4), every_image_anchors)
        decoded = decoded.reshape(n, t, 4)  # proposals are constants: .data, no graph
        level_sizes = [len(a) for a in anchors_per_level]
        proposals = self.filter_proposals(decoded, logits.data, images.image_sizes, level_sizes)

        losses = {}
        if targets is not None:
            labels, regression_targets = self.assign_targets(anchors, targets)
            losses = self.compute_loss(logits, box_deltas, labels, regression_targets)
        record(self, "anchors_per_level", anchors_per_level)
        record(self, "objectness", logits.data)
        record(self, "decoded", decoded)
        record(self, "proposals", proposals)
        return proposals, losses

    # -- proposals ---------------------------------------------------------------
    def filter_proposals(self, boxes, logits, image_sizes, level_sizes):
        """Per image: top-k per level, clip, drop tiny, NMS per level, keep the best.

        ``boxes`` ``(N, T, 4)`` and ``logits`` ``(N, T)`` are raw arrays (no
        gradient). The whole batch goes through NMS in one call, each (image,
        level) its own block, so the host is consulted once, not per image.
        """
        xp = get_array_module(boxes)
        n = boxes.shape[0]
        top_n = self.pre_nms_top_n[self._mode()]
        starts = np.cumsum([0] + level_sizes)
        candidates, block_sizes = [], []  # per level: (N, k) anchor indices, best first
        for level in range(len(level_sizes)):  # a loop over levels
            block = logits[:, starts[level] : starts[level + 1]]
            k = min(top_n, block.shape[1])
            top = xp.argpartition(-block, k - 1, axis=1)[:, :k]
            best_first = xp.argsort(-xp.take_along_axis(block, top, axis=1), axis=1, kind="stable")
            candidates.append(xp.take_along_axis(top, best_first, axis=1) + int(starts[level]))
            block_sizes.append(k)
        candidates = xp.concatenate(candidates, axis=1)  # (N, K): per image, level after level
        rows = xp.arange(n)[:, None]
        image_boxes = boxes[rows, candidates]  # (N, K, 4)
        for i, size in enumerate(image_sizes):  # a loop over images
            image_boxes[i] = clip_boxes_to_image(image_boxes[i], size)
        scores = stable_sigmoid(logits[rows, candidates])  # (N, K)
        widths = image_boxes[..., 2] - image_boxes[..., 0]
        heights = image_boxes[..., 3] - image_boxes[..., 1]
        valid = (widths >= self.min_size) & (heights >= self.min_size)
        valid &= scores >= self.score_thresh  # (N, K): the rest take no part in NMS
        kept, kept_per_block = nms_blocks(
            image_boxes.reshape(-1, 4), block_sizes * n, self.nms_thresh, valid.reshape(-1)
        )
        flat_boxes, flat_scores = image_boxes.reshape(-1, 4), scores.reshape(-1)
        proposals, start, per_image, kept_rows = [], 0, len(block_sizes), []
        for i in range(n):  # a loop over images: kept rows are image after image
            count = sum(kept_per_block[i * per_image : (i + 1) * per_image])
            image_rows = kept[start : start + count]
            start += count
            kept_rows.append(image_rows)
            best = image_rows[xp.argsort(-flat_scores[image_rows], kind="stable")]
            proposals.append(flat_boxes[best[: self.post_nms_top_n[self._mode()]]])
        if is_recording(self):
            level_ids = xp.concatenate(
                [xp.full(k, level, dtype=xp.int64) for level, k in enumerate(block_sizes)]
            )
            record(self, "before_nms", [
                (image_boxes[i][valid[i]], scores[i][valid[i]], level_ids[valid[i]])
                for i in range(n)
            ])
            width = candidates.shape[1]  # K rows per image in the flat arrays
            record(self, "after_nms", [
                (flat_boxes[rows], flat_scores[rows], level_ids[rows - i * width])
                for i, rows in enumerate(kept_rows)
            ])
        return proposals

    # -- training targets and losses --------------------------------------------
    def assign_targets(self, anchors, targets):
        """Label every anchor (1 fg, 0 bg, −1 ignored) and find its regression target.

        Returns per image ``labels`` ``(T,)`` float and deltas ``(T, 4)`` (meaningful
        only where the label is 1).
        """
        xp = get_array_module(anchors)
        labels, regression_targets = [], []
        for target in targets:  # a loop over images
            gt_boxes = xp.asarray(raw(target["boxes"]), dtype=anchors.dtype).reshape(-1, 4)
            if len(gt_boxes) == 0:  # no objects: every anchor is background
                labels.append(xp.zeros(len(anchors), dtype=anchors.dtype))
                regression_targets.append(xp.zeros_like(anchors))
                continue
            quality = box_iou(gt_boxes, anchors)  # (G, T)
            crowd = target.get("iscrowd")
            if crowd is not None:  # a crowd region matches no anchor (IoU −1 < any threshold)
                crowd = xp.asarray(raw(crowd), dtype=bool)  # (G,)
                quality = xp.where(crowd[:, None], -1.0, quality)
            matches = self.matcher(quality)  # (T,)
            label = (matches >= 0).astype(anchors.dtype)
            label = xp.where(matches == Matcher.BETWEEN_THRESHOLDS, -1.0, label)
            if crowd is not None:  # background anchors inside a crowd: ignore them
                ioa = xp.where(crowd[None, :], box_ioa(anchors, gt_boxes), 0.0)  # (T, G)
                in_crowd = ioa.max(axis=1) >= CROWD_IOA_THRESHOLD
                label = xp.where((label == 0) & in_crowd, -1.0, label)
            matched = gt_boxes[xp.maximum(matches, 0)]  # (T, 4) each anchor's ground truth
            labels.append(label.astype(anchors.dtype, copy=False))
            regression_targets.append(self.box_coder.encode(matched, anchors))
        record(self, "labels", labels)
        return labels, regression_targets

    def compute_loss(self, logits, box_deltas, labels, regression_targets):
        """Objectness BCE over the sampled anchors + smooth-L1 over the sampled foreground.

        Both are divided by the number of sampled anchors (torchvision's
        normalisation), so the box loss weighs more when more of the sample
        is foreground.
        """
        xp = get_array_module(logits.data)
        positives, negatives = self.sampler(labels)
        t = logits.shape[1]
        pos = xp.concatenate([p + i * t for i, p in enumerate(positives)])  # flat (N·T) indices
        sampled = xp.concatenate([pos] + [q + i * t for i, q in enumerate(negatives)])
        record(self, "sampled_positive", positives)
        record(self, "sampled_negative", negatives)
        all_labels = xp.concatenate(labels)
        all_targets = xp.concatenate(regression_targets)
        count = max(int(sampled.size), 1)
        box_loss = smooth_l1_loss(
            box_deltas.reshape(-1, 4)[pos], all_targets[pos], beta=RPN_SMOOTH_L1_BETA,
            reduction="sum",
        ) / count
        objectness_loss = binary_cross_entropy_with_logits(
            logits.reshape(-1)[sampled], all_labels[sampled]
        )
        return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}

