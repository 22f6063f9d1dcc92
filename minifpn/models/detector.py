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

from collections import OrderedDict

from minifpn import nn
from minifpn.autograd import Tensor
from minifpn.models.anchors import AnchorGenerator
from minifpn.models.box_head import (
    BOX_ROI_SIZE,
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from minifpn.models.mask_head import (
    MASK_ROI_SIZE,
    MaskRCNNHeads,
    MaskRCNNPredictor,
    paste_masks_in_image,
)
from minifpn.models.roi_heads import RoIHeads
from minifpn.models.rpn import RegionProposalNetwork, RPNHead
from minifpn.models.transform import IMAGENET_MEAN, IMAGENET_STD, GeneralizedRCNNTransform
from minifpn.ops.poolers import SAMPLING_RATIO, MultiScaleRoIAlign


class GeneralizedRCNN(nn.Module):
    """Backbone + RPN (+ optional RoI heads) with resizing and the way back.

    Args:
        backbone: image batch → ``OrderedDict`` of pyramid levels (or one
            Tensor, which becomes level ``"0"``, as in torchvision).
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
        if isinstance(features, Tensor):  # a single-map backbone: its map is level "0"
            features = OrderedDict([("0", features)])
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
    """Faster R-CNN with FPN (Lin et al., 2017, §4.2): torchvision's constructor.

    Every argument is torchvision's, in its order, with its defaults; every
    part may be handed in, and the defaults build the paper's model::

        model = FasterRCNN(resnet_fpn_backbone("resnet50"), num_classes=91)
        anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
        model = FasterRCNN(backbone, num_classes=2, rpn_anchor_generator=anchors,
                           box_roi_pool=MultiScaleRoIAlign(["P2", "P3", "P4", "P5"], 7, 2))

    Args:
        backbone: a module with ``out_channels`` returning an ``OrderedDict`` of
            maps (minifpn's backbones: P2..P6), or one Tensor (level ``"0"``).
        num_classes: classes *including* background (91 for torchvision's COCO
            checkpoints, 81 for contiguous COCO labels). Give it, or
            ``box_predictor``, not both.
        min_size, max_size: image resizing (800, 1333); a tuple ``min_size`` is
            multi-scale training (see :class:`GeneralizedRCNNTransform`).
        image_mean, image_std: normalisation (ImageNet's).
        rpn_anchor_generator: default: sizes 32…512 on P2…P6, ratios 0.5/1/2.
        rpn_head: default: an :class:`RPNHead` for the generator's anchors.
        rpn_*: see :class:`~minifpn.models.rpn.RegionProposalNetwork` — pre-NMS
            top-n 2000/1000 (train/test) per level, post-NMS top-n 2000/1000 per
            image, NMS 0.7, IoU 0.7/0.3, 256 anchors per image with ≤ 50 %
            foreground, objectness score threshold 0.
        box_roi_pool: default: 7×7 RoIAlign on P2..P5, 2 samples per bin axis.
        box_head: default: the paper's two fc layers of 1024
            (:class:`TwoMLPHead`); see also :class:`FastRCNNConvFCHead`.
        box_predictor: default: a :class:`FastRCNNPredictor` for ``num_classes``.
        box_*: see :class:`~minifpn.models.roi_heads.RoIHeads` — score > 0.05,
            NMS 0.5, 100 detections per image, IoU 0.5/0.5, 512 RoIs with ≤ 25 %
            foreground, regression weights (10, 10, 5, 5).
        size_divisible, fixed_size: batch padding (32) and fixed resizing (none),
            passed to :class:`GeneralizedRCNNTransform` (torchvision's ``**kwargs``).

    Where minifpn differs, on purpose: everything after ``num_classes`` is
    keyword only (torchvision also takes it by position, which no reader can
    check); the default poolers read ``"P2"``..``"P5"`` (the names of minifpn's
    backbones; torchvision's are ``"0"``..``"3"``); and the default box
    predictor takes the box head's ``out_features`` when it has one
    (torchvision assumes 1024). Not supported: torchvision's private
    ``_skip_resize``.
    """

    def __init__(self, backbone, num_classes=None, *, min_size=800, max_size=1333,
                 image_mean=None, image_std=None,
                 rpn_anchor_generator=None, rpn_head=None,
                 rpn_pre_nms_top_n_train=2000, rpn_pre_nms_top_n_test=1000,
                 rpn_post_nms_top_n_train=2000, rpn_post_nms_top_n_test=1000,
                 rpn_nms_thresh=0.7, rpn_fg_iou_thresh=0.7, rpn_bg_iou_thresh=0.3,
                 rpn_batch_size_per_image=256, rpn_positive_fraction=0.5, rpn_score_thresh=0.0,
                 box_roi_pool=None, box_head=None, box_predictor=None,
                 box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100,
                 box_fg_iou_thresh=0.5, box_bg_iou_thresh=0.5, box_batch_size_per_image=512,
                 box_positive_fraction=0.25, bbox_reg_weights=None,
                 size_divisible=32, fixed_size=None):
        if not hasattr(backbone, "out_channels"):
            raise ValueError("the backbone needs an out_channels attribute: the channel count "
                             "of its feature maps (the same for every level)")
        _check_part("rpn_anchor_generator", rpn_anchor_generator, AnchorGenerator)
        _check_part("box_roi_pool", box_roi_pool, MultiScaleRoIAlign)
        _check_num_classes(num_classes, box_predictor, "box_predictor")
        channels = backbone.out_channels

        if rpn_anchor_generator is None:
            rpn_anchor_generator = AnchorGenerator()
        if rpn_head is None:
            rpn_head = RPNHead(channels, rpn_anchor_generator.num_anchors_per_location()[0])
        rpn = RegionProposalNetwork(
            rpn_anchor_generator, rpn_head, rpn_fg_iou_thresh, rpn_bg_iou_thresh,
            rpn_batch_size_per_image, rpn_positive_fraction,
            {"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            {"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test},
            rpn_nms_thresh, score_thresh=rpn_score_thresh,
        )
        if box_roi_pool is None:
            box_roi_pool = MultiScaleRoIAlign(output_size=BOX_ROI_SIZE,
                                              sampling_ratio=SAMPLING_RATIO)
        if box_head is None:
            box_head = TwoMLPHead(channels * _cells(box_roi_pool.output_size), 1024)
        if box_predictor is None:
            box_predictor = FastRCNNPredictor(getattr(box_head, "out_features", 1024), num_classes)
        roi_heads = RoIHeads(
            box_roi_pool, box_head, box_predictor,
            box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image,
            box_positive_fraction, bbox_reg_weights, box_score_thresh, box_nms_thresh,
            box_detections_per_img,
        )
        transform = GeneralizedRCNNTransform(
            min_size, max_size, image_mean or IMAGENET_MEAN, image_std or IMAGENET_STD,
            size_divisible=size_divisible, fixed_size=fixed_size,
        )
        super().__init__(backbone, rpn, roi_heads, transform)


class MaskRCNN(FasterRCNN):
    """Mask R-CNN with FPN: Faster R-CNN plus the mask branch (He et al., 2017).

    Takes every :class:`FasterRCNN` argument, in torchvision's order, plus
    (keyword only, as everything after ``num_classes``):

    Args:
        mask_roi_pool: default: 14×14 RoIAlign on P2..P5, 2 samples per bin axis.
        mask_head: default: four 3×3 convs of 256 (:class:`MaskRCNNHeads`).
        mask_predictor: default: a :class:`MaskRCNNPredictor` with 256 channels
            (the mask head's ``out_channels``) reduced to 256, for
            ``num_classes``. Give ``num_classes`` or ``mask_predictor``, not both.

    Training targets need ``"masks"`` ``(G, H, W)``; outputs gain ``"masks"``
    ``(D, 1, H, W)`` probabilities (threshold at 0.5 for binary masks).
    """

    def __init__(self, backbone, num_classes=None, *, mask_roi_pool=None, mask_head=None,
                 mask_predictor=None, **kwargs):
        _check_part("mask_roi_pool", mask_roi_pool, MultiScaleRoIAlign)
        _check_num_classes(num_classes, mask_predictor, "mask_predictor")
        super().__init__(backbone, num_classes, **kwargs)
        if mask_roi_pool is None:
            mask_roi_pool = MultiScaleRoIAlign(output_size=MASK_ROI_SIZE,
                                               sampling_ratio=SAMPLING_RATIO)
        if mask_head is None:
            mask_head = MaskRCNNHeads(backbone.out_channels, (256, 256, 256, 256))
        if mask_predictor is None:
            mask_predictor = MaskRCNNPredictor(getattr(mask_head, "out_channels", 256), 256,
                                               num_classes)
        # The mask branch joins the box branch's RoI heads, as in torchvision.
        self.roi_heads.mask_roi_pool = mask_roi_pool
        self.roi_heads.mask_head = mask_head
        self.roi_heads.mask_predictor = mask_predictor


def detector_parts(channels: int, num_classes: int, *, representation_size: int = 1024,
                   box_head: str = "2mlp", mask_layers=None, mask_dim_reduced: int = 256,
                   rpn_anchor_sizes=None, roi_canonical_size=None) -> dict:
    """Parts of any width for :class:`FasterRCNN` / :class:`MaskRCNN`, as keyword arguments.

    minifpn's shorthand (not torchvision's) for the parts a slim CPU model
    resizes, used by the training presets, the lessons and the tests::

        MaskRCNN(backbone, min_size=256, max_size=320,
                 **detector_parts(backbone.out_channels, 4, representation_size=256,
                                  mask_layers=(32,) * 4, mask_dim_reduced=32))

    Args:
        channels: the backbone's ``out_channels``.
        num_classes: classes including background, for the predictors.
        representation_size: width of the box head's output (1024).
        box_head: ``"2mlp"`` — the paper's two fc layers (:class:`TwoMLPHead`) —
            or ``"4conv1fc"`` — four 3×3 convs of ``channels`` with GroupNorm,
            then one fc (:class:`FastRCNNConvFCHead`; for training from scratch).
        mask_layers, mask_dim_reduced: the mask head's conv widths and the
            predictor's transposed-conv width; without ``mask_layers``, no mask parts.
        rpn_anchor_sizes: one anchor size per level (default: the generator's 32…512).
        roi_canonical_size: the 224 of the RoI-to-level rule
            k = ⌊4 + log2(√(wh) / 224)⌋ (see :mod:`~minifpn.ops.poolers`), for
            both poolers. Scale it with the images, as the anchor sizes: a model
            on 256-pixel images reads its RoIs from the levels an 800-pixel
            model would use for the same object with 112.

    Returns:
        ``rpn_anchor_generator``, ``rpn_head``, ``box_head`` and ``box_predictor``;
        ``mask_head`` and ``mask_predictor`` with ``mask_layers``; ``box_roi_pool``
        (and ``mask_roi_pool``) with ``roi_canonical_size``.
    """
    if box_head not in ("2mlp", "4conv1fc"):
        raise ValueError(f"box_head must be '2mlp' or '4conv1fc', got {box_head!r}")
    # Built in the order minifpn's detectors have always built them, so that a seed
    # still gives the same initial weights (and the README's and lessons' results).
    parts = {}
    if mask_layers is not None:
        mask_layers = tuple(mask_layers)
        parts["mask_head"] = MaskRCNNHeads(channels, mask_layers)
        parts["mask_predictor"] = MaskRCNNPredictor(mask_layers[-1], mask_dim_reduced, num_classes)
    anchors = AnchorGenerator() if rpn_anchor_sizes is None else AnchorGenerator(rpn_anchor_sizes)
    parts["rpn_anchor_generator"] = anchors
    parts["rpn_head"] = RPNHead(channels, anchors.num_anchors_per_location()[0])
    if box_head == "2mlp":
        parts["box_head"] = TwoMLPHead(channels * _cells(BOX_ROI_SIZE), representation_size)
    else:
        parts["box_head"] = FastRCNNConvFCHead((channels, BOX_ROI_SIZE, BOX_ROI_SIZE),
                                               (channels,) * 4,
                                               (representation_size,))
    parts["box_predictor"] = FastRCNNPredictor(representation_size, num_classes)
    if roi_canonical_size is not None:
        parts["box_roi_pool"] = MultiScaleRoIAlign(output_size=BOX_ROI_SIZE,
                                                   sampling_ratio=SAMPLING_RATIO,
                                                   canonical_scale=roi_canonical_size)
        if mask_layers is not None:
            parts["mask_roi_pool"] = MultiScaleRoIAlign(output_size=MASK_ROI_SIZE,
                                                        sampling_ratio=SAMPLING_RATIO,
                                                        canonical_scale=roi_canonical_size)
    return parts


def _check_part(name: str, part, kind) -> None:
    if part is not None and not isinstance(part, kind):
        raise TypeError(f"{name} must be a {kind.__name__} or None, got {type(part).__name__}")


def _check_num_classes(num_classes, predictor, name: str) -> None:
    """torchvision's rule: the class count comes from ``num_classes`` or from the predictor."""
    if num_classes is not None and predictor is not None:
        raise ValueError(f"num_classes must be None when {name} is given (the predictor "
                         f"fixes the number of classes)")
    if num_classes is None and predictor is None:
        raise ValueError(f"give num_classes (including background), or a {name}")


def _cells(output_size) -> int:
    """P·P cells of a pooled RoI, from ``P`` or ``(P_h, P_w)``."""
    height, width = (output_size, output_size) if isinstance(output_size, int) else output_size
    return height * width
