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
        for detection, resized, original in zip(
            detections, image_list.image_sizes, original_sizes
        ):
            detection["boxes"] = self.transform.postprocess_boxes(
                detection["boxes"], resized, original
            )
        return detections
