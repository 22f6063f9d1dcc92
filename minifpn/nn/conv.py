"""Convolution layers: ``Conv2d`` and ``ConvTranspose2d`` (groups = 1).

The maths lives in :mod:`minifpn.functional.conv` (im2col + matrix
multiply); a layer just owns the weight and bias and remembers the geometry.

Default initialisation is PyTorch's (``reset_parameters``):

* weight: ``kaiming_uniform_(w, a=√5)``, i.e. U(−1/√fan_in, 1/√fan_in);
* bias:   U(−1/√fan_in, 1/√fan_in) with the same ``fan_in``.

These defaults are rarely what a real network keeps. torchvision's models
re-initialise in their constructors — ResNet with
``kaiming_normal_(w, mode="fan_out", nonlinearity="relu")``, FPN with
``kaiming_uniform_(w, a=1)`` and zero bias — and pretrained weights replace
them anyway; build the same way with :mod:`minifpn.nn.init`.
"""

from __future__ import annotations

import numpy as np

from minifpn import backend
from minifpn.functional import conv2d, conv_transpose2d
from minifpn.nn import init
from minifpn.nn.module import Module, Parameter


def _pair(value) -> tuple[int, int]:
    """``3`` → ``(3, 3)``; a pair stays a pair (as a tuple of ints)."""
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {value!r}")
    return pair


def _empty(*shape) -> Parameter:
    """An uninitialised float32 Parameter (``reset_parameters`` fills it)."""
    return Parameter(np.empty(shape, dtype=backend.DEFAULT_DTYPE))


class _ConvNd(Module):
    """What both convolution layers share: geometry, parameters, init, repr."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride,
        padding,
        dilation,
        output_padding,
        bias,
        weight_shape,
    ):
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"channel counts must be positive, got {in_channels}, {out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.output_padding = _pair(output_padding)
        self.weight = _empty(*weight_shape)
        if bias:
            self.bias = _empty(out_channels)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default init (see the module docstring)."""
        init.default_layer_init_(self.weight, self.bias)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        s += f", stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Conv2d(_ConvNd):
    """2-D convolution (``torch.nn.Conv2d`` with groups=1, zero padding).

    Args:
        in_channels, out_channels: C and O.
        kernel_size, stride, padding, dilation: int or (h, w) pair.
        bias: learn an additive bias per output channel.

    Shapes:
        input ``(N, C, H, W)`` → output ``(N, O, Ho, Wo)`` with
        ``Ho = (H + 2·padding − dilation·(kh − 1) − 1) // stride + 1``.

    Attributes:
        weight: ``(O, C, kh, kw)`` (OIHW, as PyTorch).
        bias: ``(O,)`` or None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
    ):
        kh, kw = _pair(kernel_size)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            0,
            bias,
            (out_channels, in_channels, kh, kw),
        )

    def forward(self, x):
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


class ConvTranspose2d(_ConvNd):
    """Transposed 2-D convolution (``torch.nn.ConvTranspose2d`` with groups=1).

    Upsamples: each input pixel spreads a kh×kw patch onto the output (the
    mask head's 2× "deconv" is ``ConvTranspose2d(256, 256, 2, stride=2)``).

    Shapes:
        input ``(N, C, H, W)`` → output ``(N, O, Ho, Wo)`` with
        ``Ho = (H − 1)·stride − 2·padding + dilation·(kh − 1) + output_padding + 1``.

    Attributes:
        weight: ``(C, O, kh, kw)`` — *in*-channels first, as PyTorch.
        bias: ``(O,)`` or None.

    Note the PyTorch quirk kept here for identical init statistics: the
    default init computes ``fan_in`` from the weight's dimension 1, which for
    this layout is ``out_channels · kh · kw``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        dilation=1,
        bias: bool = True,
    ):
        kh, kw = _pair(kernel_size)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            output_padding,
            bias,
            (in_channels, out_channels, kh, kw),
        )

    def forward(self, x):
        return conv_transpose2d(
            x, self.weight, self.bias, self.stride, self.padding, self.output_padding, self.dilation
        )
