"""Models, as ``torchvision.models.detection``: the bottom-up ResNet, the FPN, and
(as they are built) the RPN, RoI heads and the assembled detectors."""

from minifpn.models.backbone import BackboneWithFPN, resnet_fpn_backbone
from minifpn.models.fpn import FeaturePyramidNetwork
from minifpn.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
)
