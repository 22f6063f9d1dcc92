"""The Fast R-CNN box head: classify each RoI and refine its box.

Shape shorthand:  R sampled RoIs (all images);  C channels;  K classes incl. background.

FPN §4.2: "a 2-hidden-layer MLP head (2mlp) … two 1024-d fully-connected
layers, each followed by ReLU, before the final classification and bounding
box regression layers" — lighter than ResNet's conv5 head, and fine because
the pyramid already supplies strong features at every scale. Names follow
torchvision (``fc6``, ``fc7``, ``cls_score``, ``bbox_pred``).

:class:`FastRCNNConvFCHead` is the alternative for training from scratch:
3×3 convs with GroupNorm on the pooled 7×7 grid, then one fully-connected
layer (Detectron's "4conv1fc" head with GN, used by He et al., "Rethinking
ImageNet Pre-training", 2019; torchvision's "v2" Mask R-CNN head). Normalised
convolutions keep the spatial layout of the RoI — where its corners and edges
are — that fc6 must otherwise learn from a flat vector of 7·7·C numbers.

* ``cls_score`` → K logits (background is class 0).
* ``bbox_pred`` → 4 deltas *per class* (class-specific regression), encoded
  against the RoI with weights (10, 10, 5, 5): a proposal is already near its
  object, so the raw offsets are small and are scaled up to unit-ish size.
"""

from __future__ import annotations

from minifpn import nn
from minifpn.backend import get_array_module
from minifpn.functional import cross_entropy, relu, smooth_l1_loss
from minifpn.nn.normalization import make_norm

#: Side of the pooled RoI feature the box head reads: 7 × 7, Fast R-CNN's RoI
#: pooling size, which FPN (§4.2) keeps for its RoIs on every level.
BOX_ROI_SIZE = 7
#: Box-head regression target weights (wx, wy, ww, wh) — Detectron/torchvision.
BOX_HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
#: Smooth-L1 switch point for the box head's deltas (as in the RPN).
BOX_SMOOTH_L1_BETA = 1.0 / 9


class TwoMLPHead(nn.Module):
    """``(R, C, 7, 7)`` pooled features → ``(R, representation_size)`` (fc6 → ReLU → fc7 → ReLU)."""

    def __init__(self, in_channels: int, representation_size: int = 1024):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.out_features = representation_size

    def forward(self, x):
        x = x.flatten(1)  # (R, C·7·7)
        return relu(self.fc7(relu(self.fc6(x))))


class FastRCNNConvFCHead(nn.Sequential):
    """``(R, C, 7, 7)`` → ``(R, fc_layers[-1])``: [3×3 conv → GN → ReLU] × n, [fc → ReLU] × m.

    Args (torchvision's defaults for its v2 head):
        input_size: ``(C, 7, 7)`` of the pooled RoIs.
        conv_layers: output channels of each conv (four of 256).
        fc_layers: widths of the fully-connected layers (one of 1024).
        norm: the conv's norm layer, ``"gn"`` (default) or ``"bn"`` / ``"frozen_bn"``.

    The children are numbered as torchvision's ``FastRCNNConvFCHead``: ``{i}.0``
    conv (no bias: the norm has one), ``{i}.1`` norm, then the flatten and the
    fc layers, so its checkpoints load.
    """

    def __init__(self, input_size=(256, BOX_ROI_SIZE, BOX_ROI_SIZE),
                 conv_layers=(256, 256, 256, 256),
                 fc_layers=(1024,), norm: str = "gn"):
        channels, height, width = input_size
        blocks = []
        for out_channels in conv_layers:
            conv = nn.Conv2d(channels, out_channels, 3, padding=1, bias=False)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            blocks.append(nn.Sequential(conv, make_norm(norm, out_channels), nn.ReLU()))
            channels = out_channels
        blocks.append(nn.Flatten())
        features = channels * height * width
        for out_features in fc_layers:
            blocks += [nn.Linear(features, out_features), nn.ReLU()]
            features = out_features
        super().__init__(*blocks)
        self.out_features = features


class FastRCNNPredictor(nn.Module):
    """``(R, D)`` → class logits ``(R, K)`` and class-specific deltas ``(R, 4K)``."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x):
        return self.cls_score(x), self.bbox_pred(x)


def fastrcnn_loss(class_logits, box_regression, labels, regression_targets):
    """Cross-entropy over the sampled RoIs + smooth-L1 on the foreground's own-class deltas.

    Args:
        class_logits: ``(R, K)`` Tensor.
        box_regression: ``(R, 4K)`` Tensor.
        labels: ``(R,)`` int array, 0 = background.
        regression_targets: ``(R, 4)`` array (meaningful where label > 0).

    The box loss is summed over foreground RoIs and divided by *all* R, as
    torchvision does — so it is weighed by the foreground fraction.
    """
    xp = get_array_module(labels)
    classification = cross_entropy(class_logits, labels)
    r = labels.shape[0]
    deltas = box_regression.reshape(r, -1, 4)  # (R, K, 4)
    own_class = deltas[xp.arange(r), labels]  # (R, 4): each RoI's own class's deltas
    # Only foreground RoIs regress. A mask rather than a selection keeps the
    # shapes fixed (selecting would need the foreground count on the host).
    foreground = (labels > 0)[:, None]  # (R, 1)
    targets = xp.where(foreground, regression_targets, 0)
    per_value = smooth_l1_loss(own_class, targets, beta=BOX_SMOOTH_L1_BETA, reduction="none")
    box = (per_value * foreground.astype(per_value.dtype)).sum() / max(r, 1)
    return classification, box
