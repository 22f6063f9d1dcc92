"""Models, as ``torchvision.models.detection``: the bottom-up ResNet, the FPN, the RPN,
the RoI heads and the assembled detectors, with their builders.

Every public model, head, predictor and builder is a name of this package::

    from minifpn.models import FastRCNNPredictor, MaskRCNN, resnet_fpn_backbone

    model = MaskRCNN(resnet_fpn_backbone("resnet50"), num_classes=91)
    model.roi_heads.box_predictor = FastRCNNPredictor(1024, num_classes=3)

The files, one stage each, in the order data flows through them: ``resnet``,
``fpn``, ``backbone``, ``transform``, ``anchors``, ``matching``, ``rpn``,
``box_head``, ``mask_head``, ``roi_heads``, ``detector``, ``builders``; the
multi-scale RoIAlign they share lives in :mod:`minifpn.ops.poolers`, as in
torchvision (and is re-exported here).
"""

from minifpn.models.anchors import AnchorGenerator
from minifpn.models.backbone import BackboneWithFPN, resnet_fpn_backbone
from minifpn.models.box_head import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from minifpn.models.builders import fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn
from minifpn.models.detector import (
    FasterRCNN,
    GeneralizedRCNN,
    MaskRCNN,
    detector_parts,
)
from minifpn.models.fpn import FeaturePyramidNetwork
from minifpn.models.mask_head import MaskRCNNHeads, MaskRCNNPredictor
from minifpn.models.matching import BalancedPositiveNegativeSampler, Matcher
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
from minifpn.models.roi_heads import RoIHeads
from minifpn.models.rpn import RegionProposalNetwork, RPNHead
from minifpn.models.transform import GeneralizedRCNNTransform, ImageList
from minifpn.ops.poolers import MultiScaleRoIAlign, map_rois_to_levels

__all__ = [
    "AnchorGenerator",
    "BackboneWithFPN",
    "BalancedPositiveNegativeSampler",
    "BasicBlock",
    "Bottleneck",
    "FastRCNNConvFCHead",
    "FastRCNNPredictor",
    "FasterRCNN",
    "FeaturePyramidNetwork",
    "GeneralizedRCNN",
    "GeneralizedRCNNTransform",
    "ImageList",
    "MaskRCNN",
    "MaskRCNNHeads",
    "MaskRCNNPredictor",
    "Matcher",
    "MultiScaleRoIAlign",
    "RPNHead",
    "RegionProposalNetwork",
    "ResNet",
    "RoIHeads",
    "TwoMLPHead",
    "detector_parts",
    "fasterrcnn_resnet50_fpn",
    "map_rois_to_levels",
    "maskrcnn_resnet50_fpn",
    "resnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet_fpn_backbone",
]
