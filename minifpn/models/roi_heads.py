"""RoI heads: from proposals to labelled boxes (and masks), as torchvision's ``RoIHeads``.

Shape shorthand:
    N images    P_i proposals of image i    R sampled RoIs (all images)
    K classes including background (0)      D_i detections of image i

Training, per image:
1. add the ground-truth boxes to the proposals (so every object has at least
   one perfect RoI from the start of training);
2. match RoIs to objects: IoU ≥ 0.5 foreground, below 0.5 background;
3. sample 512 RoIs with at most 25 % foreground;
4. pool 7 × 7 features at each RoI's level (the k rule), run the box head,
   and compute cross-entropy + smooth-L1 (:func:`fastrcnn_loss`);
5. (Mask R-CNN) pool 14 × 14 for the foreground RoIs, run the mask head, and
   compute the mask loss against the ground-truth masks projected on the RoIs.

Inference, per image: softmax scores; each class's deltas decoded against
the proposal; boxes clipped; background dropped; scores > 0.05 kept; tiny
boxes dropped; class-wise NMS at IoU 0.5; the best 100 kept; masks predicted
for those detections.
"""

from __future__ import annotations

from minifpn import backend, nn
from minifpn.autograd import raw
from minifpn.backend import get_array_module
from minifpn.functional import softmax
from minifpn.functional.activation import stable_sigmoid
from minifpn.models.box_head import BOX_HEAD_WEIGHTS, fastrcnn_loss
from minifpn.models.mask_head import maskrcnn_loss, project_masks_on_boxes_batch
from minifpn.models.matching import CROWD_IOA_THRESHOLD, BalancedPositiveNegativeSampler, Matcher
from minifpn.ops.boxes import BoxCoder, box_ioa, box_iou, clip_boxes_to_image, nms_blocks
from minifpn.recording import record

#: Detections narrower or shorter than this (in pixels) are dropped before NMS,
#: as torchvision's ``remove_small_boxes(boxes, min_size=1e-2)``.
MIN_DETECTION_SIZE = 1e-2


class RoIHeads(nn.Module):
    """Box head (+ optional mask head) with sampling, losses and post-processing.

    Args (defaults from the FPN / Mask R-CNN papers and torchvision):
        box_roi_pool, box_head, box_predictor: the 7 × 7 pooler, 2-fc head, predictor.
        fg_iou_thresh, bg_iou_thresh: 0.5, 0.5.
        batch_size_per_image, positive_fraction: 512 RoIs, ≤ 0.25 foreground.
        bbox_reg_weights: (10, 10, 5, 5) (also when None, as torchvision).
        score_thresh: 0.05.  nms_thresh: 0.5.  detections_per_img: 100.
        mask_roi_pool, mask_head, mask_predictor: the 14 × 14 pooler and mask
            layers, or None for a box-only detector.

    Inside a :func:`~minifpn.recording.recording` it records ``rois`` (per
    image: the sampled RoIs in training, the proposals otherwise),
    ``box_features`` ``(R, C, 7, 7)`` and in training ``samples`` (per image:
    RoIs, labels, matched ground truth, regression targets); its poolers
    record the level of each RoI (``box_roi_pool.levels``, ``mask_roi_pool.levels``).
    """

    def __init__(self, box_roi_pool, box_head, box_predictor, fg_iou_thresh=0.5,
                 bg_iou_thresh=0.5, batch_size_per_image=512, positive_fraction=0.25,
                 bbox_reg_weights=BOX_HEAD_WEIGHTS, score_thresh=0.05, nms_thresh=0.5,
                 detections_per_img=100, mask_roi_pool=None, mask_head=None,
                 mask_predictor=None):
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(bbox_reg_weights or BOX_HEAD_WEIGHTS)
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_img = detections_per_img

    @property
    def has_mask(self) -> bool:
        return self.mask_predictor is not None

    # -- training samples --------------------------------------------------------
    def select_training_samples(self, proposals, targets):
        """Per image: sampled RoIs, their labels, matched ground truth, regression targets.

        The labels of every image are found first, then one call of the
        sampler draws all images' samples (one host round trip for the batch).
        In each sample the ``num_positive`` foreground RoIs come first.
        """
        candidates = []
        for boxes, target in zip(proposals, targets):  # a loop over images
            xp = get_array_module(boxes)
            gt = xp.asarray(raw(target["boxes"]), dtype=boxes.dtype).reshape(-1, 4)
            gt_labels = xp.asarray(raw(target["labels"])).astype(xp.int64)
            crowd = target.get("iscrowd")
            crowd = None if crowd is None else xp.asarray(raw(crowd), dtype=bool)
            # Proposals + ground truth; a crowd region is no object, but as a
            # RoI it is harmless: nothing matches it, so it is background or ignored.
            rois = xp.concatenate([boxes, gt])
            if len(gt) == 0:
                matched = xp.zeros(len(rois), dtype=xp.int64)
                labels = xp.zeros(len(rois), dtype=xp.int64)
            else:
                quality = box_iou(gt, rois)  # (G, R)
                if crowd is not None:  # no RoI is matched to a crowd region
                    quality = xp.where(crowd[:, None], -1.0, quality)
                matches = self.matcher(quality)
                matched = xp.maximum(matches, 0)  # index into this image's gt
                labels = xp.where(matches == Matcher.BELOW_LOW_THRESHOLD, 0,
                                  xp.where(matches == Matcher.BETWEEN_THRESHOLDS, -1,
                                           gt_labels[matched]))
                if crowd is not None:  # background RoIs mostly inside a crowd region: ignore
                    ioa = xp.where(crowd[None, :], box_ioa(rois, gt), 0.0)  # (R, G)
                    labels = xp.where((labels == 0) & (ioa.max(axis=1) >= CROWD_IOA_THRESHOLD),
                                      -1, labels)
            candidates.append((rois, labels, matched, gt))
        positives, negatives = self.sampler([labels for _, labels, _, _ in candidates])
        sampled = []
        for (rois, labels, matched, gt), pos, neg in zip(candidates, positives, negatives):
            keep = get_array_module(rois).concatenate([pos, neg])
            matched_boxes = gt[matched[keep]] if len(gt) else rois[keep]
            sampled.append({
                "rois": rois[keep],
                "labels": labels[keep],
                "matched_idxs": matched[keep],
                "regression_targets": self.box_coder.encode(matched_boxes, rois[keep]),
                "num_positive": len(pos),
            })
        return sampled

    # -- the forward pass ----------------------------------------------------------
    def forward(self, features, proposals, image_sizes, targets=None):
        """Returns ``(detections, losses)``; detections are empty dicts in training."""
        if targets is not None:
            samples = self.select_training_samples(proposals, targets)
            rois = [s["rois"] for s in samples]
        else:
            rois = proposals
        box_features = self.box_roi_pool(features, rois, image_sizes)  # (R, C, 7, 7)
        class_logits, box_regression = self.box_predictor(self.box_head(box_features))
        record(self, "rois", rois)
        record(self, "box_features", box_features)

        if targets is not None:
            xp = get_array_module(rois[0])
            labels = xp.concatenate([s["labels"] for s in samples])
            regression_targets = xp.concatenate([s["regression_targets"] for s in samples])
            loss_classifier, loss_box_reg = fastrcnn_loss(
                class_logits, box_regression, labels, regression_targets
            )
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
            record(self, "samples", samples)
            if self.has_mask:
                losses["loss_mask"] = self._mask_loss(features, samples, targets, image_sizes)
            return [], losses

        detections = self.postprocess_detections(class_logits, box_regression, rois, image_sizes)
        if self.has_mask:
            self._predict_masks(features, detections, image_sizes)
        return detections, {}

    # -- boxes at inference --------------------------------------------------------
    def postprocess_detections(self, class_logits, box_regression, proposals, image_sizes):
        """Scores, class-wise boxes, the score filter and class-wise NMS — all images at once.

        Every (image, class) pair is one NMS block, so the whole batch costs
        two trips to the host (the filter's counts, the NMS), whatever its size.
        """
        xp = get_array_module(class_logits.data)
        num_classes = class_logits.shape[1]
        scores = softmax(class_logits, dim=-1).data[:, 1:]  # (R, K−1): background dropped
        counts = [len(p) for p in proposals]
        all_proposals = xp.concatenate(proposals)  # (R, 4)
        deltas = box_regression.data.reshape(-1, 4)  # (R·K, 4): every class's box
        references = xp.repeat(all_proposals, num_classes, axis=0)
        boxes = self.box_coder.decode(deltas, references).reshape(-1, num_classes, 4)[:, 1:]
        start = 0
        for count, size in zip(counts, image_sizes):  # a loop over images
            boxes[start : start + count] = clip_boxes_to_image(boxes[start : start + count], size)
            start += count
        # One candidate per (RoI, class), flattened RoI-major: (R·(K−1),)
        boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
        labels = xp.tile(xp.arange(1, num_classes), len(all_proposals))
        image_of = xp.concatenate([xp.full(c * (num_classes - 1), i, dtype=xp.int64)
                                   for i, c in enumerate(counts)])
        num_groups = len(counts) * (num_classes - 1)
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        passed = (scores > self.score_thresh) & (widths >= MIN_DETECTION_SIZE) & (
            heights >= MIN_DETECTION_SIZE)
        # Each candidate's (image, class) group, image-major; num_groups: filtered out.
        groups = xp.where(passed, image_of * (num_classes - 1) + labels - 1, num_groups)
        # Host copy: how many candidates of each group pass the filter.
        sizes = backend.count_values(groups, num_groups + 1)[:num_groups].tolist()
        # The passing candidates, grouped by (image, class), best first in each group.
        order = xp.argsort(-scores, kind="stable")
        order = order[xp.argsort(groups[order], kind="stable")][: sum(sizes)]
        kept, kept_per_block = nms_blocks(boxes[order], sizes, self.nms_thresh)
        kept = order[kept]  # image after image
        detections, start = [], 0
        for i in range(len(counts)):  # a loop over images
            count = sum(kept_per_block[i * (num_classes - 1) : (i + 1) * (num_classes - 1)])
            rows = kept[start : start + count]
            start += count
            best = rows[xp.argsort(-scores[rows], kind="stable")][: self.detections_per_img]
            detections.append({"boxes": boxes[best], "scores": scores[best],
                               "labels": labels[best]})
        return detections

    # -- masks ---------------------------------------------------------------------------
    def _mask_loss(self, features, samples, targets, image_sizes):
        xp = get_array_module(samples[0]["rois"])
        positive_rois, labels, matched = [], [], []
        for sample, target in zip(samples, targets):  # a loop over images
            if "masks" not in target:
                raise ValueError("Mask R-CNN training needs target['masks'] (G, H, W) per image")
            fg = slice(0, sample["num_positive"])  # the sampler puts the foreground first
            positive_rois.append(sample["rois"][fg])
            labels.append(sample["labels"][fg])
            matched.append(sample["matched_idxs"][fg])
        mask_targets = project_masks_on_boxes_batch(
            [t["masks"] for t in targets], positive_rois, matched, self._mask_size()
        )
        mask_logits = self.mask_predictor(
            self.mask_head(self.mask_roi_pool(features, positive_rois, image_sizes))
        )
        return maskrcnn_loss(mask_logits, xp.concatenate(labels), mask_targets)

    def _mask_size(self) -> int:
        return 2 * self.mask_roi_pool.output_size  # the transposed conv doubles 14 → 28

    def _predict_masks(self, features, detections, image_sizes):
        xp = get_array_module(features[self.mask_roi_pool.featmap_names[0]].data)
        boxes = [d["boxes"] for d in detections]
        if sum(len(b) for b in boxes) == 0:
            for d in detections:
                d["masks"] = xp.zeros((0, self._mask_size(), self._mask_size()), dtype=xp.float32)
            return
        pooled = self.mask_roi_pool(features, boxes, image_sizes)
        logits = self.mask_predictor(self.mask_head(pooled))
        labels = xp.concatenate([d["labels"] for d in detections])
        probs = stable_sigmoid(logits.data[xp.arange(len(labels)), labels])  # (D, 28, 28)
        start = 0
        for d in detections:
            d["masks"] = probs[start : start + len(d["boxes"])]
            start += len(d["boxes"])
