"""Pooling layers: ``MaxPool2d``."""

from __future__ import annotations

from minifpn.functional import max_pool2d
from minifpn.nn.module import Module


class MaxPool2d(Module):
    """2-D max pooling (``torch.nn.MaxPool2d``): the largest value in each window.

    Args:
        kernel_size: int or (kh, kw).
        stride: defaults to ``kernel_size`` (non-overlapping windows).
        padding: implicit −∞ padding on each side (at most half the kernel).
        dilation: spacing between window taps.
        ceil_mode: only False (floor the output size) is supported.

    Shapes: ``(N, C, H, W)`` → ``(N, C, Ho, Wo)`` with
    ``Ho = (H + 2·padding − dilation·(kh − 1) − 1) // stride + 1``.
    The ResNet stem uses ``MaxPool2d(kernel_size=3, stride=2, padding=1)``.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = ceil_mode

    def forward(self, x):
        return max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )
