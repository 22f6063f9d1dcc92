"""torchvision's model builders: ``fasterrcnn_resnet50_fpn`` and ``maskrcnn_resnet50_fpn``.

The same names, arguments and architecture as ``torchvision.models.detection``
(ResNet-50-FPN with frozen batch norm, the paper's heads, 91 COCO classes), so
torchvision's fine-tuning recipe runs with minifpn imports::

    from minifpn.models import FastRCNNPredictor, MaskRCNNPredictor, maskrcnn_resnet50_fpn

    model = maskrcnn_resnet50_fpn(weights="maskrcnn_resnet50_fpn_coco.npz")
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
    in_features_mask = model.roi_heads.mask_predictor.conv5_mask.in_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(in_features_mask, 256, num_classes)

One difference: minifpn downloads nothing. ``weights`` is torchvision's
checkpoint converted once to ``.npz`` (``minifpn weights convert``, see the
README for where torchvision publishes it) or a state dict already in memory.
"""

from __future__ import annotations

import os

from minifpn import nn, serialization
from minifpn.models.backbone import resnet_fpn_backbone
from minifpn.models.detector import FasterRCNN, MaskRCNN
from minifpn.weights import load_torchvision

#: Classes of torchvision's COCO checkpoints: background + COCO's 90 category
#: ids (80 used, 10 ids never assigned), so a label is its COCO category id.
COCO_NUM_CLASSES = 91
#: Where torchvision publishes the ResNet-50-FPN COCO weights (COCO_V1).
WEIGHT_URLS = {
    "fasterrcnn_resnet50_fpn":
        "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
    "maskrcnn_resnet50_fpn":
        "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
}
#: Backbone stages that may train: layer4, layer3, layer2, layer1, the stem.
RESNET_STAGES = 5
#: torchvision's default when starting from trained weights: layer2..layer4
#: train, the stem and layer1 (generic edge and texture filters) stay frozen.
DEFAULT_TRAINABLE_LAYERS = 3


def fasterrcnn_resnet50_fpn(*, weights=None, progress: bool = True, num_classes=None,
                            weights_backbone=None, trainable_backbone_layers=None,
                            **kwargs) -> FasterRCNN:
    """torchvision's Faster R-CNN ResNet-50-FPN (box AP 37.0 on COCO val2017).

    The arguments are :func:`maskrcnn_resnet50_fpn`'s.
    """
    return _resnet50_fpn(FasterRCNN, "fasterrcnn_resnet50_fpn", weights, num_classes,
                         weights_backbone, trainable_backbone_layers, kwargs)


def maskrcnn_resnet50_fpn(*, weights=None, progress: bool = True, num_classes=None,
                          weights_backbone=None, trainable_backbone_layers=None,
                          **kwargs) -> MaskRCNN:
    """torchvision's Mask R-CNN ResNet-50-FPN (Box AP 37.9, mask AP 34.6 on COCO val2017).

    Args:
        weights: the detector's weights — a torchvision-format ``.npz`` path or
            a state dict — or None for random weights.
        progress: accepted for torchvision's signature; nothing is downloaded.
        num_classes: classes including background: 91 (COCO) by default, and
            necessarily with ``weights``; to fine-tune on other classes, swap
            the predictors afterwards (the module docstring shows how).
        weights_backbone: an ImageNet ResNet-50 (``.npz`` path or state dict)
            for the body, when ``weights`` is None.
        trainable_backbone_layers: how many of the 5 backbone stages train,
            from layer4 down (3 by default with weights; all 5 without, as
            torchvision: nothing pre-trained to preserve).
        **kwargs: :class:`MaskRCNN` arguments (``min_size``, ``box_score_thresh``, …).

    With weights, the backbone uses frozen batch norm with ``eps = 0``, as
    torchvision does for these (COCO_V1) checkpoints; without, batch norm.
    """
    return _resnet50_fpn(MaskRCNN, "maskrcnn_resnet50_fpn", weights, num_classes,
                         weights_backbone, trainable_backbone_layers, kwargs)


def _resnet50_fpn(detector, name, weights, num_classes, weights_backbone,
                  trainable_backbone_layers, kwargs):
    weights, weights_backbone = _state(weights, name), _state(weights_backbone, name)
    if weights is not None:
        if num_classes not in (None, COCO_NUM_CLASSES):
            raise ValueError(
                f"{name}'s COCO weights have {COCO_NUM_CLASSES} classes, not {num_classes}: "
                f"build it with num_classes=None, then replace the predictors for your classes"
            )
        weights_backbone = None  # the detector's weights include the backbone's
    num_classes = num_classes or COCO_NUM_CLASSES
    trained = weights is not None or weights_backbone is not None
    trainable = _trainable_layers(trained, trainable_backbone_layers)
    backbone = resnet_fpn_backbone("resnet50", norm="frozen_bn" if trained else "bn",
                                   freeze_at=RESNET_STAGES - trainable)
    if weights_backbone is not None:
        load_torchvision(backbone.body, weights_backbone)
    model = detector(backbone, num_classes, **kwargs)
    if weights is not None:
        load_torchvision(model, weights)
        for module in model.modules():  # the checkpoints were trained before torchvision's eps fix
            if isinstance(module, nn.FrozenBatchNorm2d):
                module.eps = 0.0
    return model


def _state(weights, name: str):
    """A state dict from a path (or a state dict), with a clear error for torchvision's enums."""
    if weights is None or isinstance(weights, dict):
        return weights
    path = os.fspath(weights) if hasattr(weights, "__fspath__") else weights
    if not isinstance(path, str) or not os.path.isfile(path):
        raise FileNotFoundError(
            f"{name}: weights={weights!r} is not a file. minifpn downloads nothing: fetch "
            f"torchvision's checkpoint ({WEIGHT_URLS[name]}), convert it once with "
            f"`minifpn weights convert FILE.pth FILE.npz` (needs PyTorch), and pass the .npz"
        )
    return serialization.load(path)


def _trainable_layers(trained: bool, requested) -> int:
    """torchvision's rule: everything trains without pre-trained weights; 3 stages by default."""
    if not trained:
        return RESNET_STAGES
    layers = DEFAULT_TRAINABLE_LAYERS if requested is None else requested
    if not 0 <= layers <= RESNET_STAGES:
        raise ValueError(f"trainable_backbone_layers must be in 0..{RESNET_STAGES}, got {layers}")
    return layers
