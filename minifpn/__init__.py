"""minifpn — Feature Pyramid Networks from scratch, on NumPy and CuPy.

The few names everyone needs are here::

    import minifpn
    x = minifpn.Tensor([[1.0, 2.0]], requires_grad=True)
    (x * x).sum().backward()
    x.grad                      # array([[2., 4.]], dtype=float32)

and ``import minifpn`` brings the packages with it, as ``import torch``
does: ops in ``minifpn.functional`` (like ``torch.nn.functional``), layers
in ``minifpn.nn`` (``torch.nn``), optimisers in ``minifpn.optim``
(``torch.optim``), detection ops in ``minifpn.ops`` (``torchvision.ops``)
and the detectors in ``minifpn.models`` (``torchvision.models.detection``).
"""

from minifpn import functional, models, nn, ops, optim
from minifpn.autograd import (
    AnomalyError,
    Tensor,
    detect_anomaly,
    enable_grad,
    is_grad_enabled,
    no_grad,
)
from minifpn.backend import cuda_available, get_array_module, manual_seed
from minifpn.gradcheck import GradcheckError, gradcheck
from minifpn.serialization import load, save

__version__ = "0.1.0"

__all__ = [
    "AnomalyError",
    "GradcheckError",
    "Tensor",
    "cuda_available",
    "detect_anomaly",
    "enable_grad",
    "functional",
    "get_array_module",
    "gradcheck",
    "is_grad_enabled",
    "load",
    "manual_seed",
    "models",
    "nn",
    "no_grad",
    "ops",
    "optim",
    "save",
]
