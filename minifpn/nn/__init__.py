"""Layers and models, as ``torch.nn``.

A model is a :class:`Module` built from the layers here; its parameters are
:class:`Parameter` tensors and its ``state_dict()`` keys are PyTorch's::

    from minifpn import nn

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
    )
    [name for name, _ in model.named_parameters()]   # ['0.weight', '1.weight', '1.bias']
    list(model.state_dict())[-1]                      # '1.num_batches_tracked'

Initialisers live in :mod:`minifpn.nn.init`, gradient clipping in
:mod:`minifpn.nn.utils`.
"""

from minifpn.nn import init, utils
from minifpn.nn.activation import ReLU
from minifpn.nn.container import ModuleDict, ModuleList, Sequential
from minifpn.nn.conv import Conv2d, ConvTranspose2d
from minifpn.nn.linear import Flatten, Identity, Linear
from minifpn.nn.module import IncompatibleKeys, Module, Parameter, StateDictError
from minifpn.nn.normalization import BatchNorm2d, FrozenBatchNorm2d, GroupNorm
from minifpn.nn.pooling import MaxPool2d
from minifpn.nn.utils import clip_grad_norm_

__all__ = [
    "BatchNorm2d",
    "Conv2d",
    "ConvTranspose2d",
    "Flatten",
    "FrozenBatchNorm2d",
    "GroupNorm",
    "Identity",
    "IncompatibleKeys",
    "Linear",
    "MaxPool2d",
    "Module",
    "ModuleDict",
    "ModuleList",
    "Parameter",
    "ReLU",
    "Sequential",
    "StateDictError",
    "clip_grad_norm_",
    "init",
    "utils",
]
