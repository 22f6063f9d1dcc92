"""The Tensor's operators and op methods — ``x + y``, ``x[i]``, ``x.sum()``, ``x.to("cuda")`` …

:mod:`minifpn.autograd` defines the :class:`~minifpn.autograd.Tensor` and how
gradients flow through a graph; the ops that build graphs live in this
package, which imports autograd. For ``x + y`` to call :func:`add`, the
Tensor needs methods that call this package — and if autograd imported it
for them, the lower layer would import the higher one. So the methods are
written here, as the class below, and :func:`install_tensor_methods` copies
them onto the Tensor when :mod:`minifpn.functional` is imported (DeZero's
``setup_variable`` does the same). ``import minifpn`` imports it, so every
Tensor has them.

Each method is a thin wrapper over the op of the same name, with PyTorch's
signature (``x.sum(dim=1, keepdim=True)``, ``x.reshape(2, -1)``, ``x.T``).
"""

from __future__ import annotations

import types

from minifpn.functional import activation, elementwise, reduction, shape

# (``linear`` by name: the package's ``linear`` is the function of that name, not the module.)
from minifpn.functional.linear import matmul


class TensorMethods:
    """The methods :func:`install_tensor_methods` puts on Tensor (never instantiated)."""

    def __add__(self, other):
        return elementwise.add(self, other)

    def __radd__(self, other):
        return elementwise.add(other, self)

    def __sub__(self, other):
        return elementwise.sub(self, other)

    def __rsub__(self, other):
        return elementwise.sub(other, self)

    def __mul__(self, other):
        return elementwise.mul(self, other)

    def __rmul__(self, other):
        return elementwise.mul(other, self)

    def __truediv__(self, other):
        return elementwise.div(self, other)

    def __rtruediv__(self, other):
        return elementwise.div(other, self)

    def __pow__(self, exponent):
        return elementwise.pow(self, exponent)

    def __rpow__(self, base):
        return elementwise.pow(base, self)

    def __neg__(self):
        return elementwise.neg(self)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    def __getitem__(self, index):
        return shape.getitem(self, index)

    def sum(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return reduction.sum(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def mean(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return reduction.mean(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def max(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return reduction.max(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def reshape(self, *new_shape):
        return shape.reshape(self, new_shape[0] if len(new_shape) == 1 else new_shape)

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        return shape.flatten(self, start_dim, end_dim)

    def permute(self, *dims):
        return shape.permute(self, dims[0] if len(dims) == 1 else dims)

    def transpose(self, dim0, dim1):
        return shape.transpose(self, dim0, dim1)

    @property
    def T(self):
        return shape.permute(self, tuple(reversed(range(self.ndim))))

    def unsqueeze(self, dim):
        return shape.unsqueeze(self, dim)

    def squeeze(self, dim=None):
        return shape.squeeze(self, dim)

    def to(self, device=None, dtype=None):
        """A copy on another device and/or dtype that stays differentiable.

        Accepts ``to("cuda")``, ``to(np.float64)``, or both by keyword. Moving
        between devices is recorded in the graph: the gradient flows back to
        the source device.
        """
        if device is not None and not isinstance(device, str):
            device, dtype = None, device  # to(np.float64)
        return shape.to_device_dtype(self, device, dtype)

    def exp(self):
        return elementwise.exp(self)

    def log(self):
        return elementwise.log(self)

    def sqrt(self):
        return elementwise.sqrt(self)

    def abs(self):
        return elementwise.abs(self)

    def clamp(self, min=None, max=None):
        return elementwise.clamp(self, min, max)

    def relu(self):
        return activation.relu(self)

    def sigmoid(self):
        return activation.sigmoid(self)

    def softmax(self, dim):
        return activation.softmax(self, dim)

    def log_softmax(self, dim):
        return activation.log_softmax(self, dim)


def install_tensor_methods(tensor_class) -> None:
    """Put every method and property of :class:`TensorMethods` on ``tensor_class``."""
    for name, member in vars(TensorMethods).items():
        if isinstance(member, (types.FunctionType, property)):
            setattr(tensor_class, name, member)
