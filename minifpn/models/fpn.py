"""The Feature Pyramid Network: top-down pathway and lateral connections.

Shape shorthand (d = out_channels, 256 by default):
    C2..C5  bottom-up maps, strides 4..32, channels c2..c5 (256..2048 for ResNet-50)
    P2..P5  pyramid maps, same strides, all with d channels
    P6      stride 64, a subsampled P5 (for the RPN's largest anchors)

Lin et al. (2017), §3, build each P_l in three steps, coarse to fine::

    inner_5 = lateral_5(C5)                                   1×1 conv: c5 → d
    inner_l = lateral_l(C_l) + upsample_2×(inner_{l+1})       l = 4, 3, 2
    P_l     = output_l(inner_l)                               3×3 conv: d → d

The 1×1 *lateral* conv brings C_l to d channels so it can be added to the
upsampled coarser map; the *top-down* path carries the strong semantics of
the deep layers down to the fine resolutions; the 3×3 conv "reduces the
aliasing effect of upsampling". There is no non-linearity in these extra
layers (the paper found it made little difference). P6 is "a stride two
subsampling of P5", done as max-pooling with a 1×1 kernel and stride 2.

Upsampling is nearest-neighbour to the *exact* size of the lateral map, so
inputs need not be multiples of 32 (a C4 of 13×21 meets a C5 of 7×11
upsampled to 13×21, not 14×22).

Names follow torchvision's ``FeaturePyramidNetwork`` so its checkpoints
load: ``inner_blocks.{i}.0`` are the lateral 1×1 convs (i = 0 for C2) and
``layer_blocks.{i}.0`` the output 3×3 convs. (torchvision wraps each conv in
a one-element Sequential, hence the ``.0``.)

Two switches re-create the ablations of the paper's Table 1:

* ``top_down=False`` — "bottom-up pyramid" (row d): ``P_l = output_l(lateral_l(C_l))``,
  each level on its own.
* ``lateral=False`` — "top-down, no lateral" (row e): only C5 enters;
  ``inner_l = upsample(inner_{l+1})`` and the 1×1 convs of C2–C4 do not exist
  (parameter-free placeholders keep C5's at ``inner_blocks.3``, so weights
  carry over by name between the variants).
"""

from __future__ import annotations

from collections import OrderedDict

from minifpn import nn
from minifpn.functional import interpolate, max_pool2d


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """A conv in a one-element Sequential, torchvision's key layout (``….0.weight``)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    return nn.Sequential(conv)


class FeaturePyramidNetwork(nn.Module):
    """C2..C5 → P2..P6.

    Args:
        in_channels_list: channels of C2, C3, C4, C5 (e.g. 256, 512, 1024, 2048).
        out_channels: d, the channels of every pyramid level (default 256).
        top_down: use the top-down pathway (default True).
        lateral: use the lateral 1×1 connections below the top level (default True).
        extra_pool: add P6 = max_pool(P5, kernel 1, stride 2) (default True).
    """

    def __init__(self, in_channels_list, out_channels=256, top_down=True, lateral=True,
                 extra_pool=True):
        super().__init__()
        if not (top_down or lateral):
            raise ValueError("FPN needs the top-down pathway or the lateral connections (or both)")
        self.top_down, self.lateral, self.extra_pool = top_down, lateral, extra_pool
        self.out_channels = out_channels
        top = len(in_channels_list) - 1
        self.inner_blocks = nn.ModuleList([
            _conv(c, out_channels, 1) if lateral or i == top else nn.Identity()
            for i, c in enumerate(in_channels_list)
        ])
        self.layer_blocks = nn.ModuleList(
            [_conv(out_channels, out_channels, 3) for _ in in_channels_list]
        )
        # torchvision's initialisation: kaiming_uniform_ with a = 1 (gain 1,
        # bound √(3 / fan_in)), zero biases.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)

    def forward(self, features) -> OrderedDict:
        """``{"C2": (N, c2, H/4, W/4), …, "C5": …}`` → ``{"P2": (N, d, H/4, W/4), …, "P6": …}``."""
        names = list(features)  # C2, C3, C4, C5
        maps = list(features.values())
        levels = [int(name[1:]) for name in names]  # 2, 3, 4, 5
        outputs = [None] * len(maps)

        inner = self.inner_blocks[-1](maps[-1])  # the top: lateral 1×1 of C5
        outputs[-1] = self.layer_blocks[-1](inner)
        for i in range(len(maps) - 2, -1, -1):  # C4, C3, C2
            if not self.top_down:
                inner = self.inner_blocks[i](maps[i])
            else:
                top_down = interpolate(inner, size=maps[i].shape[-2:], mode="nearest")
                inner = top_down + self.inner_blocks[i](maps[i]) if self.lateral else top_down
            outputs[i] = self.layer_blocks[i](inner)

        pyramid = OrderedDict((f"P{level}", out) for level, out in zip(levels, outputs))
        if self.extra_pool:
            pyramid[f"P{levels[-1] + 1}"] = max_pool2d(outputs[-1], kernel_size=1, stride=2)
        return pyramid

    def extra_repr(self) -> str:
        return f"top_down={self.top_down}, lateral={self.lateral}, extra_pool={self.extra_pool}"
