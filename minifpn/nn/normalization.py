"""Normalisation layers: ``BatchNorm2d``, ``FrozenBatchNorm2d``, ``GroupNorm``.

All three compute ``y = weight · (x − mean) / √(var + eps) + bias`` per
channel; the maths is in :mod:`minifpn.functional.norm`. What a *layer* adds
is state — which numbers are trained (parameters), which are only carried
along (buffers), and how the running statistics evolve:

=====================  ===================  =================================
layer                  parameters           buffers
=====================  ===================  =================================
``BatchNorm2d``        weight, bias         running_mean, running_var,
                                            num_batches_tracked (int64)
``FrozenBatchNorm2d``  —                    weight, bias, running_mean,
                                            running_var
``GroupNorm``          weight, bias         —
=====================  ===================  =================================

The names are torchvision's, so a ResNet checkpoint's ``bn1.running_var``
lands in ``bn1.running_var`` here. :func:`make_norm` picks one by name
(``"gn"``, ``"frozen_bn"``, ``"bn"``), for the models' ``norm=`` settings.
"""

from __future__ import annotations

import math

import numpy as np

from minifpn import backend
from minifpn.functional import batch_norm, frozen_batch_norm, group_norm
from minifpn.nn import init
from minifpn.nn.module import Module, Parameter


def _vector(n: int, value: float):
    return np.full((n,), value, dtype=backend.DEFAULT_DTYPE)


class BatchNorm2d(Module):
    """Batch normalisation over ``(N, C, H, W)`` (``torch.nn.BatchNorm2d``).

    In **training** mode each channel is normalised with the mean and
    (biased) variance of the current batch over (N, H, W), and the running
    statistics move towards them::

        running_mean ← (1 − momentum) · running_mean + momentum · batch_mean
        running_var  ← (1 − momentum) · running_var  + momentum · batch_var_unbiased

    (the unbiased variance divides by ``M − 1``, M = N·H·W, as PyTorch), and
    ``num_batches_tracked`` counts the batches. With ``momentum=None`` the
    running statistics are instead the plain average of all batches so far
    (``momentum = 1 / num_batches_tracked``). In **eval** mode the running
    statistics are used and nothing changes.

    Args:
        num_features: C.
        eps: added to the variance before the square root, for stability.
        momentum: weight of the newest batch in the running averages, or None.
        affine: learn a per-channel ``weight`` (init 1) and ``bias`` (init 0).
        track_running_stats: keep running statistics; if False, batch
            statistics are used in eval mode too.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = Parameter(_vector(num_features, 1.0))
            self.bias = Parameter(_vector(num_features, 0.0))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", _vector(num_features, 0.0))
            self.register_buffer("running_var", _vector(num_features, 1.0))
            self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            init.zeros_(self.running_mean)
            init.ones_(self.running_var)
            self.num_batches_tracked[...] = 0

    def _adapt_state_dict(self, state_dict: dict, prefix: str) -> None:
        """Checkpoints from before PyTorch 0.4.1 (e.g. the original torchvision
        ResNets) have no ``num_batches_tracked``; PyTorch then starts it at 0,
        and so do we."""
        key = prefix + "num_batches_tracked"
        if (
            self.track_running_stats
            and key not in state_dict
            and prefix + "running_mean" in state_dict
        ):
            state_dict[key] = np.zeros((), dtype=np.int64)

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2d expects (N, C, H, W) input, got shape {tuple(x.shape)}")
        use_batch_stats = self.training or not self.track_running_stats
        if use_batch_stats and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            raise ValueError(
                f"BatchNorm2d: expected more than 1 value per channel when training, "
                f"got input of shape {tuple(x.shape)}"
            )
        momentum = self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1  # in place: the 0-d array is the buffer itself
            if momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        # Running statistics are read in eval mode, and updated in training mode.
        update = not self.training or self.track_running_stats
        return batch_norm(
            x,
            self.running_mean if update else None,
            self.running_var if update else None,
            self.weight,
            self.bias,
            training=use_batch_stats,
            momentum=0.0 if momentum is None else momentum,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


class FrozenBatchNorm2d(Module):
    """Batch norm with fixed statistics and affine parameters (torchvision's).

    ``y = x · scale + shift`` with ``scale = weight / √(running_var + eps)``
    and ``shift = bias − running_mean · scale``. Detection models fine-tune a
    pretrained ResNet with 1–2 images per GPU; batch statistics that small
    are too noisy to normalise with or to learn from, so torchvision freezes
    all four vectors. They are **buffers**, not parameters: the optimiser
    never sees them, yet they are saved and loaded under the usual names.

    A BatchNorm2d checkpoint carries ``num_batches_tracked`` too; it means
    nothing here and is silently dropped on load, as in torchvision.

    Shapes: input ``(N, C, H, W)`` → output of the same shape.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", _vector(num_features, 1.0))
        self.register_buffer("bias", _vector(num_features, 0.0))
        self.register_buffer("running_mean", _vector(num_features, 0.0))
        self.register_buffer("running_var", _vector(num_features, 1.0))

    def _adapt_state_dict(self, state_dict: dict, prefix: str) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)

    def forward(self, x):
        return frozen_batch_norm(
            x, self.weight, self.bias, self.running_mean, self.running_var, self.eps
        )

    def __repr__(self) -> str:  # torchvision's spelling
        return f"{type(self).__name__}({self.num_features}, eps={self.eps})"


class GroupNorm(Module):
    """Group normalisation (Wu & He, 2018), as ``torch.nn.GroupNorm``.

    The C channels are split into ``num_groups`` groups; each image's group
    is normalised by its own mean and variance over (C/G, H, W). There are
    no running statistics, so training and eval behave the same and the
    batch size does not matter — why detectors trained from scratch use it.

    Args:
        num_groups: G (must divide ``num_channels``).
        num_channels: C.
        eps: added to the variance before the square root.
        affine: learn a per-channel ``weight`` (init 1) and ``bias`` (init 0).

    Shapes: input ``(N, C, H, W)`` → output of the same shape.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(
                f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})"
            )
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = Parameter(_vector(num_channels, 1.0))
            self.bias = Parameter(_vector(num_channels, 0.0))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x):
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


#: GroupNorm's group count (Wu & He, 2018): 32 groups of channels works well
#: across widths. For slim networks whose channel counts 32 does not divide,
#: the largest common divisor is used instead (e.g. 16 groups for 48 channels).
GN_GROUPS = 32


def make_norm(kind: str, channels: int) -> Module:
    """The norm layer after each conv: ``"frozen_bn"``, ``"bn"`` or ``"gn"``.

    * ``"gn"`` — GroupNorm, the default for training from scratch: its
      statistics are per image, so the tiny batches of detection are fine.
    * ``"frozen_bn"`` — fixed ImageNet statistics, for fine-tuning
      pre-trained weights (torchvision's detection default).
    * ``"bn"`` — ordinary batch norm (needs large batches).
    """
    if kind == "gn":
        return GroupNorm(math.gcd(GN_GROUPS, channels), channels)
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if kind == "bn":
        return BatchNorm2d(channels)
    raise ValueError(f"unknown norm {kind!r}: use 'gn', 'frozen_bn' or 'bn'")
