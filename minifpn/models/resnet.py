"""The bottom-up pathway: a ResNet that returns its stage outputs C2–C5.

Shape shorthand:
    N images, H × W input size
    C2 (N, 256·w, H/4,  W/4)   output of layer1 ("res2"), stride 4
    C3 (N, 512·w, H/8,  W/8)   output of layer2, stride 8
    C4 (N, 1024·w, H/16, W/16) output of layer3, stride 16
    C5 (N, 2048·w, H/32, W/32) output of layer4, stride 32
(channels for ResNet-50/101 with width multiplier w; ResNet-18/34 have 4× fewer.
Sizes round up: a 3×200×333 image gives C2 50×84, C5 7×11.)

FPN (Lin et al., 2017, §3) takes "the output of the last residual block of
each stage" as the bottom-up pyramid {C2, C3, C4, C5}. The stem's output C1
is left out "due to its large memory footprint" — at stride 2 it would be a
64-channel map of a quarter of the image's pixels.

Names follow torchvision's ``ResNet`` exactly (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0`` …), so a torchvision state dict
loads by name. The norm layers keep torchvision's ``bn*`` names whatever
their type, as torchvision does when given another ``norm_layer``. Like
torchvision's detection backbones the network stops after ``layer4``: there
is no ``avgpool``/``fc`` classifier (load a classification checkpoint with
``strict=False`` or :func:`minifpn.weights.load_torchvision`, which drops
``fc.*``).
"""

from __future__ import annotations

from collections import OrderedDict

from minifpn import nn
from minifpn.functional import relu
from minifpn.nn.normalization import make_norm

#: Blocks per stage (layer1..layer4) and block type, as in He et al., Table 1.
ARCHITECTURES = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}


class BasicBlock(nn.Module):
    """Two 3×3 convs and a shortcut (ResNet-18/34): ``relu(F(x) + x)``."""

    expansion = 1

    def __init__(self, in_channels, channels, stride=1, downsample=None, norm="gn"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, padding=1, bias=False)
        self.bn2 = make_norm(norm, channels)
        self.downsample = downsample

    def forward(self, x):
        out = relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return relu(out + shortcut, inplace=True)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 → 1×1 expand (×4), plus a shortcut (ResNet-50/101).

    The stride sits on the 3×3 conv (``conv2``), as in torchvision (the
    "ResNet v1.5" variant), not on the first 1×1 as in the original paper.
    """

    expansion = 4

    def __init__(self, in_channels, channels, stride=1, downsample=None, norm="gn"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = make_norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, padding=1, bias=False)
        self.bn2 = make_norm(norm, channels)
        self.conv3 = nn.Conv2d(channels, channels * self.expansion, 1, bias=False)
        self.bn3 = make_norm(norm, channels * self.expansion)
        self.downsample = downsample

    def forward(self, x):
        out = relu(self.bn1(self.conv1(x)), inplace=True)  # in place, as torchvision's
        out = relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return relu(out + shortcut, inplace=True)


class ResNet(nn.Module):
    """ResNet body returning ``OrderedDict(C2=…, C3=…, C4=…, C5=…)``.

    Args:
        block: ``"basic"`` or ``"bottleneck"``.
        layers: blocks in each of the four stages.
        norm: ``"gn"`` (default, for training from scratch), ``"frozen_bn"`` or ``"bn"``.
        width: channel multiplier (1.0 = the standard network; 0.25 gives a
            slim net for CPU lessons). Stage widths are ``round(64·w)``,
            ``round(128·w)``, … (at least 1).
        freeze_at: freeze (no gradient) the stem and the first ``freeze_at − 1``
            stages, as Detectron2's ``FREEZE_AT``: 0 = train everything,
            1 = stem only, 2 = stem + layer1 (the usual choice when fine-tuning
            pre-trained weights), … 5 = everything.

    Attributes:
        out_channels: ``{"C2": …, "C5": …}`` channel counts.
        strides: ``{"C2": 4, "C3": 8, "C4": 16, "C5": 32}``.
    """

    strides = {"C2": 4, "C3": 8, "C4": 16, "C5": 32}

    def __init__(self, block="bottleneck", layers=(3, 4, 6, 3), norm="gn", width=1.0,
                 freeze_at=0):
        super().__init__()
        block_type = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.norm = norm

        # The stem: 7×7 stride-2 conv and a 3×3 stride-2 max-pool (stride 4 in total).
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm, widths[0])
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        self._in_channels = widths[0]
        self.layer1 = self._make_stage(block_type, widths[0], layers[0], 1, norm)
        self.layer2 = self._make_stage(block_type, widths[1], layers[1], 2, norm)
        self.layer3 = self._make_stage(block_type, widths[2], layers[2], 2, norm)
        self.layer4 = self._make_stage(block_type, widths[3], layers[3], 2, norm)
        self.out_channels = {f"C{i + 2}": c * block_type.expansion for i, c in enumerate(widths)}

        # torchvision's initialisation: He-normal for convs (fan_out, ReLU
        # gain √2), norm layers at the identity (γ = 1, β = 0).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.GroupNorm, nn.BatchNorm2d)) and module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.freeze(freeze_at)

    def _make_stage(self, block_type, channels, blocks, stride, norm) -> nn.Sequential:
        """``blocks`` blocks; the first may change resolution and width."""
        downsample = None
        out_channels = channels * block_type.expansion
        if stride != 1 or self._in_channels != out_channels:
            # The shortcut must match F(x)'s shape: a strided 1×1 projection.
            downsample = nn.Sequential(
                nn.Conv2d(self._in_channels, out_channels, 1, stride=stride, bias=False),
                make_norm(norm, out_channels),
            )
        stage = [block_type(self._in_channels, channels, stride, downsample, norm)]
        self._in_channels = out_channels
        stage += [block_type(out_channels, channels, 1, None, norm) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients into the stem (``freeze_at ≥ 1``) and stages 1…freeze_at−1."""
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        parts = [(self.conv1, self.bn1), self.layer1, self.layer2, self.layer3, self.layer4]
        for i, part in enumerate(parts):
            modules = part if isinstance(part, tuple) else (part,)
            for module in modules:
                module.requires_grad_(i >= freeze_at)

    def forward(self, x) -> OrderedDict:
        """``(N, 3, H, W)`` → ``OrderedDict`` C2..C5 (strides 4, 8, 16, 32)."""
        x = self.maxpool(relu(self.bn1(self.conv1(x)), inplace=True))
        features = OrderedDict()
        for name, stage in zip(self.strides, (self.layer1, self.layer2, self.layer3, self.layer4)):
            x = stage(x)
            features[name] = x
        return features


def resnet(name: str = "resnet50", norm: str = "gn", width: float = 1.0, freeze_at: int = 0):
    """Build ``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnet101`` by name."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown ResNet {name!r}: choose from {', '.join(ARCHITECTURES)}")
    block, layers = ARCHITECTURES[name]
    return ResNet(block, layers, norm=norm, width=width, freeze_at=freeze_at)


def resnet18(**kwargs) -> ResNet:
    return resnet("resnet18", **kwargs)


def resnet34(**kwargs) -> ResNet:
    return resnet("resnet34", **kwargs)


def resnet50(**kwargs) -> ResNet:
    return resnet("resnet50", **kwargs)


def resnet101(**kwargs) -> ResNet:
    return resnet("resnet101", **kwargs)
