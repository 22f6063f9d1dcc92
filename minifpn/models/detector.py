"""The detector: transform → backbone → RPN (→ RoI heads) → back to original pixels.

Shape shorthand:  N images; image i of size (h_i, w_i) as given, (h'_i, w'_i)
after resizing; P proposals per image.

:class:`GeneralizedRCNN` wires the stages together with torchvision's calling
convention::

    model.train(); losses = model(images, targets)     # {"loss_objectness": …, …}
    model.eval();  outputs = model(images)             # [{"boxes": …, …}, …] per image

``images`` is a list of ``(3, h_i, w_i)`` arrays or Tensors, RGB in [0, 1];
``targets`` a list of dicts with ``"boxes"`` ``(G, 4)`` in the image's own
pixels (plus ``"labels"``, ``"iscrowd"``, …). Outputs are in the same
original pixels. Without RoI heads the model is a pure proposal network and
its outputs are the proposals, best first.
"""

from __future__ import annotations

from minifpn import nn
from minifpn.models.anchors import AnchorGenerator
from minifpn.models.backbone import resnet_fpn_backbone
from minifpn.models.box_head import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from minifpn.models.mask_head import MaskRCNNHeads, MaskRCNNPredictor, paste_masks_in_image
from minifpn.models.poolers import CANONICAL_SIZE, MultiScaleRoIAlign
from minifpn.models.roi_heads import RoIHeads
from minifpn.models.rpn import RegionProposalNetwork
from minifpn.models.transform import GeneralizedRCNNTransform


class GeneralizedRCNN(nn.Module):
    """Backbone + RPN (+ optional RoI heads) with resizing and the way back.

    Args:
        backbone: image batch → ``OrderedDict`` of pyramid levels.
        rpn: a :class:`~minifpn.models.rpn.RegionProposalNetwork`.
        roi_heads: box (and mask) heads, or None for proposals only.
        transform: default :class:`GeneralizedRCNNTransform` (800 / 1333, ImageNet stats).
    """

    def __init__(self, backbone, rpn, roi_heads=None, transform=None):
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.transform = transform or GeneralizedRCNNTransform()
        #: In eval mode, also return each image's RPN proposals (original
        #: pixels, best first) as ``outputs[i]["proposals"]`` — for proposal AR.
        self.return_proposals = False
        #: In eval mode, paste each detection's M × M mask into a ``(D, 1, H, W)``
        #: full-image map (torchvision's output). False leaves ``(D, M, M)`` for the
        #: caller to paste a few at a time (``predict`` does: a big image's maps
        #: would take D × H × W floats at once).
        self.paste_masks = True

    def forward(self, images, targets=None):
        if self.training and targets is None:
            raise ValueError("in training mode the model needs targets: model(images, targets)")
        if targets is not None and len(targets) != len(images):
            raise ValueError(f"got {len(images)} images but {len(targets)} targets")
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        proposals, losses = self.rpn(image_list, features, targets if self.training else None)
        if self.roi_heads is None:
            detections = [{"boxes": boxes} for boxes in proposals]
        else:
            detections, head_losses = self.roi_heads(
                features, proposals, image_list.image_sizes, targets if self.training else None
            )
            losses = {**losses, **head_losses}
        if self.training:
            return losses
        if self.return_proposals and self.roi_heads is not None:
            for detection, boxes in zip(detections, proposals):
                detection["proposals"] = boxes
        for detection, resized, original in zip(
            detections, image_list.image_sizes, original_sizes
        ):
            if "proposals" in detection:
                detection["proposals"] = self.transform.postprocess_boxes(
                    detection["proposals"], resized, original
                )
            detection["boxes"] = self.transform.postprocess_boxes(
                detection["boxes"], resized, original
            )
            if "masks" in detection and self.paste_masks:  # 28×28 → (D, 1, H, W) in the image
                detection["masks"] = paste_masks_in_image(
                    detection["masks"], detection["boxes"], original
                )
        return detections


class FasterRCNN(GeneralizedRCNN):
    """Faster R-CNN with FPN (Lin et al., 2017, §4.2), torchvision's arguments and defaults.

    Args:
        num_classes: classes *including* background (91 for torchvision's COCO
            checkpoints, 81 for contiguous COCO labels).
        backbone: a module returning P2..P6 with ``out_channels``; default
            ``resnet_fpn_backbone("resnet50")`` (GroupNorm, from scratch).
        min_size, max_size: image resizing (800, 1333).
        image_mean, image_std: normalisation (ImageNet's).
        rpn_*: see :class:`~minifpn.models.rpn.RegionProposalNetwork` — anchor
            sizes 32…512, ratios 0.5/1/2, pre-NMS top-n 2000/1000 (train/test)
            per level, post-NMS top-n 2000/1000 per image, NMS 0.7, IoU 0.7/0.3,
            256 anchors per image with ≤ 50 % foreground.
        box_*: see :class:`~minifpn.models.roi_heads.RoIHeads` — score > 0.05,
            NMS 0.5, 100 detections per image, IoU 0.5/0.5, 512 RoIs with ≤ 25 %
            foreground, regression weights (10, 10, 5, 5).
        representation_size: width of fc6/fc7 (1024).
        box_head: ``"2mlp"`` (default: the paper's two fully-connected layers,
            :class:`~minifpn.models.box_head.TwoMLPHead`), ``"4conv1fc"``
            (:class:`~minifpn.models.box_head.FastRCNNConvFCHead`: four 3×3
            convs of the pyramid's width with GroupNorm, then one fc of
            ``representation_size`` — for training from scratch), or a module
            mapping ``(R, C, 7, 7)`` to ``(R, representation_size)``.
        roi_canonical_size: the 224 of the RoI-to-level rule
            k = ⌊4 + log2(√(wh) / 224)⌋ (see :mod:`~minifpn.models.poolers`).
            Scale it with the images, as the anchor sizes: a model on 256-pixel
            images reads its RoIs from the levels an 800-pixel model would
            use for the same object with 112.
    """

    def __init__(self, num_classes=91, backbone=None, min_size=800, max_size=1333,
                 image_mean=None, image_std=None,
                 rpn_anchor_sizes=(32, 64, 128, 256, 512), rpn_aspect_ratios=(0.5, 1.0, 2.0),
                 rpn_pre_nms_top_n_train=2000, rpn_pre_nms_top_n_test=1000,
                 rpn_post_nms_top_n_train=2000, rpn_post_nms_top_n_test=1000,
                 rpn_nms_thresh=0.7, rpn_fg_iou_thresh=0.7, rpn_bg_iou_thresh=0.3,
                 rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,
                 box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100,
                 box_fg_iou_thresh=0.5, box_bg_iou_thresh=0.5, box_batch_size_per_image=512,
                 box_positive_fraction=0.25, bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
                 representation_size=1024, box_head="2mlp", roi_canonical_size=CANONICAL_SIZE,
                 **mask_parts):
        backbone = backbone or resnet_fpn_backbone("resnet50")
        channels = backbone.out_channels
        rpn = RegionProposalNetwork(
            channels, AnchorGenerator(rpn_anchor_sizes, rpn_aspect_ratios),
            rpn_fg_iou_thresh, rpn_bg_iou_thresh, rpn_batch_size_per_image,
            rpn_positive_fraction,
            pre_nms_top_n={"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            post_nms_top_n={"training": rpn_post_nms_top_n_train,
                            "testing": rpn_post_nms_top_n_test},
            nms_thresh=rpn_nms_thresh,
        )
        box_roi_pool = MultiScaleRoIAlign(output_size=7, sampling_ratio=2,
                                          canonical_size=roi_canonical_size)
        roi_heads = RoIHeads(
            box_roi_pool,
            _make_box_head(box_head, channels, representation_size),
            FastRCNNPredictor(representation_size, num_classes),
            box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image,
            box_positive_fraction, bbox_reg_weights, box_score_thresh, box_nms_thresh,
            box_detections_per_img, **mask_parts,
        )
        kwargs = {k: v for k, v in (("image_mean", image_mean), ("image_std", image_std)) if v}
        transform = GeneralizedRCNNTransform(min_size, max_size, **kwargs)
        super().__init__(backbone, rpn, roi_heads, transform)


def _make_box_head(kind, channels: int, representation_size: int):
    """The box head named by ``kind`` (or ``kind`` itself when it is a module)."""
    if kind == "2mlp":
        return TwoMLPHead(channels * 7 * 7, representation_size)
    if kind == "4conv1fc":
        return FastRCNNConvFCHead((channels, 7, 7), (channels,) * 4, (representation_size,))
    if isinstance(kind, nn.Module):
        return kind
    raise ValueError(f"box_head must be '2mlp', '4conv1fc' or a module, got {kind!r}")


class MaskRCNN(FasterRCNN):
    """Mask R-CNN with FPN: Faster R-CNN plus the mask branch (He et al., 2017).

    Takes every :class:`FasterRCNN` argument, plus ``mask_layers`` (the four
    conv widths, 256 each) and ``mask_dim_reduced`` (256). Training targets need
    ``"masks"`` ``(G, H, W)``; outputs gain ``"masks"`` ``(D, 1, H, W)``
    probabilities (threshold at 0.5 for binary masks).
    """

    def __init__(self, num_classes=91, backbone=None, mask_layers=(256, 256, 256, 256),
                 mask_dim_reduced=256, roi_canonical_size=CANONICAL_SIZE, **kwargs):
        backbone = backbone or resnet_fpn_backbone("resnet50")
        channels = backbone.out_channels
        super().__init__(
            num_classes, backbone,
            mask_roi_pool=MultiScaleRoIAlign(output_size=14, sampling_ratio=2,
                                             canonical_size=roi_canonical_size),
            mask_head=MaskRCNNHeads(channels, mask_layers),
            mask_predictor=MaskRCNNPredictor(mask_layers[-1], mask_dim_reduced, num_classes),
            roi_canonical_size=roi_canonical_size, **kwargs,
        )
