"""The FPN paper's Table 1, rebuilt: which features should an RPN propose from?

Lin et al. (2017), Table 1, train the same RPN on different feature maps of a
ResNet-50 and measure average recall with 1,000 proposals per image (AR¹ᵏ,
COCO minival). Five of its rows, and how :func:`table1_rpn` builds each:

* ``"C4"`` — C4 alone (stride 16), the Faster R-CNN baseline, row (a):
  15 anchors per cell; AR¹ᵏ 48.3.
* ``"FPN"`` — P2..P6, the feature pyramid, row (c): 3 per cell; 56.3.
* ``"no top-down"`` — P2..P6 built bottom-up, each P_l from C_l only, row (d):
  3 per cell; 49.5.
* ``"no lateral"`` — P2..P6 from C5 upsampled, no 1×1 lateral convs, row (e):
  3 per cell; 46.1.
* ``"P2 only"`` — P2 alone (the finest FPN level), row (f): 15 per cell; 51.3.

"15 per cell" is the single-map recipe: every scale (32…512 px) × 3 ratios at
each location. The pyramid variants put one scale on each level instead.
Everything else — the RPN head, sampler, losses, NMS — is identical, so the
rows differ only in *where* the features come from.
"""

from __future__ import annotations

from collections import OrderedDict

from minifpn import nn
from minifpn.models.anchors import DEFAULT_SIZES, AnchorGenerator
from minifpn.models.backbone import resnet_fpn_backbone
from minifpn.models.detector import GeneralizedRCNN
from minifpn.models.resnet import resnet
from minifpn.models.rpn import RegionProposalNetwork
from minifpn.models.transform import GeneralizedRCNNTransform

#: AR¹ᵏ (%) of each variant in the paper's Table 1 (ResNet-50, COCO minival).
PAPER_AR1K = {"C4": 48.3, "FPN": 56.3, "no top-down": 49.5, "no lateral": 46.1, "P2 only": 51.3}
#: The variants, in the paper's order of rows.
VARIANTS = ("C4", "FPN", "no top-down", "no lateral", "P2 only")


class FeatureSubset(nn.Module):
    """A ResNet (and optionally an FPN on it) that returns only the named levels.

    ``(N, 3, H, W)`` → ``OrderedDict`` of the ``levels`` (e.g. ``("C4",)`` or
    ``("P2",)``), each ``(N, out_channels, ⌈H/s⌉, ⌈W/s⌉)``. The children are
    called ``body`` and ``fpn`` as in :class:`~minifpn.models.BackboneWithFPN`,
    so weights carry over between the variants by name.
    """

    def __init__(self, body, fpn=None, levels=("P2",)):
        super().__init__()
        self.body = body
        if fpn is not None:
            self.fpn = fpn
        self.levels = tuple(levels)
        channels = fpn.out_channels if fpn is not None else body.out_channels[self.levels[0]]
        self.out_channels = channels

    def forward(self, images) -> OrderedDict:
        features = self.body(images)
        if "fpn" in self._modules:
            features = self.fpn(features)
        return OrderedDict((name, features[name]) for name in self.levels)


def table1_rpn(variant: str, backbone: str = "resnet50", width: float = 1.0,
               out_channels: int = 256, anchor_sizes=DEFAULT_SIZES, min_size: int = 800,
               max_size: int = 1333, norm: str = "gn", **rpn_kwargs) -> GeneralizedRCNN:
    """An RPN-only :class:`GeneralizedRCNN` for one row of the paper's Table 1.

    Args:
        variant: one of :data:`VARIANTS`.
        backbone, width, norm: the ResNet (the paper: ResNet-50 at full width).
        out_channels: FPN channels (256); the C4 variant uses C4's own channels.
        anchor_sizes: the five anchor sizes, one per level P2..P6, or all five
            at every location of the single-map variants (C4, P2 only).
        min_size, max_size: image resizing (800 / 1333 in the paper).
        **rpn_kwargs: passed to :class:`RegionProposalNetwork` (e.g. ``pre_nms_top_n``).

    Returns:
        ``model(images, targets)`` gives the two RPN losses in training mode;
        in eval mode ``model(images)`` gives per image ``{"boxes": (P, 4), "scores": (P,)}``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}")
    sizes = tuple(anchor_sizes)
    if variant == "C4":
        features = FeatureSubset(resnet(backbone, norm=norm, width=width), levels=("C4",))
        generator = AnchorGenerator((sizes,))  # all scales on the one map
    else:
        pyramid = resnet_fpn_backbone(backbone, norm=norm, out_channels=out_channels, width=width,
                                      top_down=variant != "no top-down",
                                      lateral=variant != "no lateral")
        if variant == "P2 only":
            features = FeatureSubset(pyramid.body, pyramid.fpn, levels=("P2",))
            generator = AnchorGenerator((sizes,))
        else:
            features = pyramid
            generator = AnchorGenerator(sizes)
    rpn = RegionProposalNetwork(generator, in_channels=features.out_channels, **rpn_kwargs)
    return GeneralizedRCNN(features, rpn, transform=GeneralizedRCNNTransform(min_size, max_size))
