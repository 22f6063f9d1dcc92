"""ResNet + FPN as one module: an image in, the pyramid P2..P6 out.

This is the "backbone" of every FPN detector. Its two children are named as
in torchvision's ``BackboneWithFPN`` — ``body`` (the ResNet) and ``fpn`` —
so its state-dict keys are exactly torchvision's ``backbone.*`` keys without
the ``backbone.`` prefix: ``body.layer1.0.conv1.weight``,
``fpn.inner_blocks.0.0.weight``, ``fpn.layer_blocks.0.0.weight``, …
"""

from __future__ import annotations

from minifpn import nn
from minifpn.models.fpn import FeaturePyramidNetwork
from minifpn.models.resnet import ResNet, resnet


class BackboneWithFPN(nn.Module):
    """``(N, 3, H, W)`` → ``OrderedDict`` P2..P6, each ``(N, out_channels, ⌈H/s⌉, ⌈W/s⌉)``.

    Attributes:
        out_channels: channels of every pyramid level.
        strides: ``{"P2": 4, "P3": 8, "P4": 16, "P5": 32, "P6": 64}``.
    """

    strides = {"P2": 4, "P3": 8, "P4": 16, "P5": 32, "P6": 64}

    def __init__(self, body: ResNet, fpn: FeaturePyramidNetwork):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.out_channels

    def forward(self, images):
        return self.fpn(self.body(images))


def resnet_fpn_backbone(
    name: str = "resnet50",
    norm: str = "gn",
    out_channels: int = 256,
    width: float = 1.0,
    freeze_at: int = 0,
    top_down: bool = True,
    lateral: bool = True,
) -> BackboneWithFPN:
    """Build a ResNet-FPN backbone (torchvision's ``resnet_fpn_backbone``, our defaults).

    Args:
        name: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        norm: ResNet norm layers: ``"gn"`` (default, training from scratch),
            ``"frozen_bn"`` (fine-tuning torchvision weights) or ``"bn"``.
        out_channels: channels of P2..P6 (256 in the paper).
        width: ResNet channel multiplier (0.25 for a slim CPU model).
        freeze_at: see :class:`~minifpn.models.resnet.ResNet`.
        top_down, lateral: the FPN ablation switches (paper, Table 1).
    """
    body = resnet(name, norm=norm, width=width, freeze_at=freeze_at)
    fpn = FeaturePyramidNetwork(
        list(body.out_channels.values()), out_channels, top_down=top_down, lateral=lateral
    )
    return BackboneWithFPN(body, fpn)
