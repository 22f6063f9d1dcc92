"""Reverse-mode automatic differentiation, in one file.

A :class:`Tensor` wraps a raw array (``.data``: NumPy on the CPU, CuPy on the
GPU). Every op that makes a new Tensor from old ones also records

* ``_parents``  — the Tensors it was computed from, and
* ``_backward`` — a function that takes ``dL/d(output)`` and returns
  ``dL/d(parent)`` for each parent (or ``None`` where no gradient is needed).

Together they form a directed acyclic graph from the loss back to the leaves
(inputs and parameters). :meth:`Tensor.backward` walks that graph once, output
first, handing each node the sum of the gradients its consumers sent it — the
chain rule, applied in topological order.

Three details make the engine correct on real networks:

1. **Iterative topological sort.** A recursive walk would overflow Python's
   stack on a long graph (a 20,000-op chain); we use an explicit stack.
2. **Accumulation.** A node used twice (``b = a + a``, or a diamond) receives
   two gradient contributions; they are summed before the node's own backward
   runs, so each ``_backward`` runs exactly once per call.
3. **Leaves keep their gradients.** ``.grad`` is set only on leaves that
   require it (and on nodes that asked with :meth:`Tensor.retain_grad`), and it
   accumulates across backward calls until someone zeroes it, as in PyTorch.

One more rule guards the few in-place ops (``relu(x, inplace=True)``, which
saves an activation's worth of memory per layer): every tensor carries a
*version*, bumped when its data is overwritten, and every op records its
inputs' versions. An op whose input changed after it was used would compute
a wrong gradient, so the backward pass refuses it, as PyTorch does.

The ops themselves live in :mod:`minifpn.functional`, each backward written
directly beside its forward; this file only knows how to connect them. It
never imports them: the Tensor methods that run an op — ``x + y``, ``x @ w``,
``x[i]``, ``x.sum()``, ``x.reshape(…)``, ``x.to("cuda")`` … — are installed on
:class:`Tensor` by :mod:`minifpn.functional` when it is imported (as DeZero's
``setup_variable``), which ``import minifpn`` always does.
"""

from __future__ import annotations

import contextlib
import os
import threading
import traceback

import numpy as np

from minifpn import backend
from minifpn.backend import get_array_module

# ---------------------------------------------------------------------------
# Global switches: gradient recording and anomaly detection.
# ---------------------------------------------------------------------------
_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "grad_enabled", True)


def _is_anomaly_enabled() -> bool:
    return getattr(_state, "anomaly", False)


class no_grad(contextlib.ContextDecorator):
    """Context (or decorator) in which ops record no graph, as ``torch.no_grad``.

    Inference and parameter updates run inside it: no ``_backward`` closures
    are built, so no intermediate arrays are kept alive for a backward pass.
    """

    def __enter__(self):
        self._prev = is_grad_enabled()
        _state.grad_enabled = False

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev
        return False


class enable_grad(contextlib.ContextDecorator):
    """Re-enable graph recording inside a :class:`no_grad` block."""

    def __enter__(self):
        self._prev = is_grad_enabled()
        _state.grad_enabled = True

    def __exit__(self, *exc):
        _state.grad_enabled = self._prev
        return False


class AnomalyError(FloatingPointError):
    """Raised inside :class:`detect_anomaly` when an op produces NaN or Inf."""


class detect_anomaly(contextlib.ContextDecorator):
    """Find the first op whose forward or backward produced NaN/Inf.

    In the spirit of ``torch.autograd.detect_anomaly``: inside the context,
    every op's output is checked as it is computed, and every gradient as the
    backward pass produces it. The first non-finite value raises
    :class:`AnomalyError` naming the op, its input shapes and dtypes, and —
    for a backward failure — the line of user code that created the op.

    It is slow (one finiteness check per op, plus a stack trace per op), so
    use it to debug, not to train::

        with minifpn.detect_anomaly():
            loss = model(x).sum()
            loss.backward()
    """

    def __enter__(self):
        self._prev = _is_anomaly_enabled()
        _state.anomaly = True

    def __exit__(self, *exc):
        _state.anomaly = self._prev
        return False


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_frames():
    """The current stack without minifpn's own frames: where *user* code made an op."""
    return [f for f in traceback.extract_stack() if not f.filename.startswith(_PACKAGE_DIR)]


def _describe(tensors) -> str:
    return ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in tensors) or "none"


def _all_finite(array) -> bool:
    xp = get_array_module(array)
    return not backend.is_float(array) or bool(xp.isfinite(array).all())


# ---------------------------------------------------------------------------
# The Tensor.
# ---------------------------------------------------------------------------
class Tensor:
    """An array that remembers how it was computed.

    Args:
        data: array-like (NumPy/CuPy array, list, scalar, or another Tensor).
            Python floats become float32 (PyTorch's default); NumPy arrays keep
            their dtype, so float64 data stays float64.
        requires_grad: record ops on this tensor and give it a ``.grad``.
        dtype: cast the data to this dtype.
        device: ``"cpu"`` or ``"cuda"``; default: where ``data`` already is.

    Attributes:
        data: the raw array.
        grad: the raw gradient array of the same shape, or ``None``.
    """

    # Make NumPy/CuPy hand binary operators back to us: ``ndarray + Tensor``
    # must call ``Tensor.__radd__``, not try to build an object array.
    __array_ufunc__ = None
    __array_priority__ = 1000

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        data = as_array(data, dtype)
        if device is not None:
            data = backend.to_device(data, device)
        if requires_grad and not backend.is_float(data):
            raise TypeError(f"only floating-point tensors can require grad, got {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None
        self._op = None
        self._retain = False
        self._stack = None
        self._version = [0]  # shared with tensors made in place from this one

    # -- how ops make results ------------------------------------------------
    @classmethod
    def _make(cls, data, parents, backward, op: str) -> Tensor:
        """Wrap an op's raw result and, if needed, link it into the graph.

        ``backward(grad) -> tuple`` returns one gradient (or None) per parent.
        The edge is recorded only when grad mode is on and some parent
        requires a gradient; otherwise the result is a constant.
        """
        if isinstance(data, np.generic):  # NumPy reductions return scalars
            data = np.asarray(data)
        out = cls.__new__(cls)
        out.data = data
        out.grad = None
        out._retain = False
        out._op = op
        out._stack = None
        out._version = [0]
        if is_grad_enabled() and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents = parents
            out._backward = backward
            out._parent_versions = tuple(p._version[0] for p in parents)
        else:
            out.requires_grad = False
            out._parents = ()
            out._backward = None
        if _is_anomaly_enabled():
            out._stack = _user_frames()
            if not _all_finite(data):
                bad_in = [p for p in parents if not _all_finite(p.data)]
                note = (
                    f" (its inputs already held NaN/Inf: {_describe(bad_in)})" if bad_in else ""
                )
                raise AnomalyError(
                    f"forward of '{op}' produced NaN/Inf; inputs: {_describe(parents)}{note}"
                )
        return out

    # -- the backward pass ---------------------------------------------------
    def backward(self, grad=None) -> None:
        """Accumulate ``d(self)/d(leaf)`` into every leaf's ``.grad``.

        Args:
            grad: ``dL/d(self)``, same shape as ``self``. May be omitted for a
                one-element tensor (a loss), where it defaults to 1.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad: no input of the "
                "computation had requires_grad=True (or it ran under no_grad())"
            )
        xp = get_array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() needs an explicit grad for a non-scalar output of shape "
                    f"{tuple(self.shape)}; pass grad=ones_like(...) or reduce it to a scalar"
                )
            grad = xp.ones_like(self.data)
        else:
            grad = xp.asarray(raw(grad), dtype=self.data.dtype)
            if grad.shape != self.data.shape:
                raise ValueError(f"grad shape {grad.shape} != tensor shape {self.data.shape}")

        anomaly = _is_anomaly_enabled()
        pending = {id(self): grad}  # node id -> summed gradient not yet used
        for node in topological_order(self):
            g = pending.pop(id(node), None)
            if g is None:
                continue
            if node._backward is None or node._retain:  # a leaf, or asked to keep it
                # A fresh array, so that in-place updates of one .grad (e.g.
                # gradient clipping) never touch another that aliases it.
                node.grad = g.copy() if node.grad is None else node.grad + g
            if node._backward is None:
                continue
            _check_versions(node)
            parent_grads = node._backward(g)
            for parent, pg in zip(node._parents, parent_grads):
                if pg is None or not parent.requires_grad:
                    continue
                _check_grad(node, parent, pg, anomaly)
                key = id(parent)
                pending[key] = pg if key not in pending else pending[key] + pg

    def retain_grad(self) -> Tensor:
        """Keep ``.grad`` on this non-leaf tensor too (e.g. a pyramid level)."""
        self._retain = True
        return self

    # -- conversions -----------------------------------------------------------
    def detach(self) -> Tensor:
        """The same data, cut from the graph (shares memory, as in PyTorch)."""
        return Tensor(self.data)

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array on the host (copied from the GPU if needed)."""
        return backend.to_numpy(self.data)

    def item(self):
        return self.data.item()

    def tolist(self):
        return self.numpy().tolist()

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def cuda(self) -> Tensor:
        return self.to("cuda")

    def float(self) -> Tensor:
        return self.to(dtype=np.float32)

    def double(self) -> Tensor:
        return self.to(dtype=np.float64)

    # -- array facts -----------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self._backward is None

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return int(self.data.size)

    def dim(self) -> int:
        return self.data.ndim

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        body = np.array2string(self.numpy(), precision=4, separator=", ", threshold=20)
        extras = []
        if self.device != "cpu":
            extras.append(f"device='{self.device}'")
        if self.dtype != backend.DEFAULT_DTYPE:
            extras.append(f"dtype={self.dtype}")
        if self._backward is not None:
            extras.append(f"grad_fn={self._op}")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + ", ".join([body] + extras) + ")"

    def requires_grad_(self, flag: bool = True) -> Tensor:
        if flag and not backend.is_float(self.data):
            raise TypeError(f"only floating-point tensors can require grad, got {self.dtype}")
        self.requires_grad = flag
        return self

    def zero_grad(self) -> None:
        self.grad = None

    # Tensors are graph nodes: hash by identity, like torch.Tensor.
    __hash__ = object.__hash__

    # -- the operators and methods that run ops (x + y, x.sum(), x.reshape(…), x.to(…)) are
    # installed by minifpn.functional (functional/tensor_methods.py), the layer above this one.

    # Comparisons give boolean tensors, outside the graph.
    def _compare(self, other, op):
        return Tensor(op(self.data, raw(other)))

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b)

    def argmax(self, axis=None):
        return Tensor(self.data.argmax(axis=axis))


def _check_versions(node: Tensor) -> None:
    """Refuse a backward whose inputs were overwritten in place after the op used them."""
    for parent, seen in zip(node._parents, node._parent_versions):
        if parent._version[0] != seen:
            raise RuntimeError(
                f"one of the inputs of '{node._op}' ({tuple(parent.shape)} {parent.dtype}, made "
                f"by '{parent._op or 'a leaf'}') was modified by an in-place operation after "
                f"'{node._op}' used it, so its gradient would be wrong; do not use "
                f"inplace=True on a tensor that other ops have already read"
            )


def mark_modified_in_place(tensor: Tensor) -> None:
    """Record that ``tensor.data`` was overwritten (bumps its version; see the module docstring)."""
    tensor._version[0] += 1


def _check_grad(node: Tensor, parent: Tensor, grad, anomaly: bool) -> None:
    """Catch a broken backward at the op that broke, not three layers later."""
    if grad.shape != parent.data.shape or grad.dtype != parent.data.dtype:
        raise RuntimeError(
            f"backward of '{node._op}' returned a gradient of shape {grad.shape} {grad.dtype} "
            f"for an input of shape {parent.data.shape} {parent.data.dtype}"
        )
    if anomaly and not _all_finite(grad):
        where = ""
        if node._stack:
            frames = traceback.format_list(node._stack[-3:])
            where = "\nthe op was created here:\n" + "".join(frames)
        raise AnomalyError(
            f"backward of '{node._op}' produced NaN/Inf in the gradient of its input "
            f"{tuple(parent.shape)}; its inputs: {_describe(node._parents)}{where}"
        )


def topological_order(root: Tensor, needing_grad: bool = True) -> list:
    """Nodes reachable from ``root``, each before its parents (the root first).

    An iterative depth-first search: a node is emitted after all its parents
    (post-order), and the reversed list starts at the root. An explicit stack
    instead of recursion keeps very deep graphs within Python's limits.
    ``needing_grad=False`` also walks into constants (for drawing a graph).
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, parents_done = stack.pop()
        if parents_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node._parents:
            if (parent.requires_grad or not needing_grad) and id(parent) not in visited:
                stack.append((parent, False))
    order.reverse()
    return order


def raw(x):
    """The array inside a Tensor; raw arrays, numbers and None pass through.

    (Not ``getattr(x, "data", x)``: a NumPy array's own ``.data`` is a
    memoryview and a CuPy array's is a device memory pointer.)
    """
    return x.data if isinstance(x, Tensor) else x


def as_array(data, dtype=None):
    """``data`` (array, Tensor, number or nested list) as a raw array where it lives.

    Arrays stay on their device (cast to ``dtype`` if given). A list that
    holds device values — ``Tensor([loss_a, loss_b])`` — is stacked *on the
    device*: NumPy cannot read device memory, and CuPy refuses the implicit
    copy that ``np.asarray`` would ask for. Host numbers become a NumPy array,
    Python floats in the default dtype (float32, as in PyTorch).
    """
    if isinstance(data, Tensor):
        data = data.data
    if hasattr(data, "shape") and hasattr(data, "dtype"):  # an array (or a NumPy scalar)
        return get_array_module(data).asarray(data, dtype=dtype)
    if isinstance(data, (list, tuple)) and data:
        data = [as_array(v) if isinstance(v, (list, tuple, Tensor)) else v for v in data]
        xp = get_array_module(*data)
        if xp is not np:  # device values inside: stack them there
            return xp.stack([xp.asarray(v, dtype=dtype) for v in data])
    array = np.asarray(data, dtype=dtype)
    python_numbers = not any(hasattr(v, "dtype") for v in (data if array.ndim else [data]))
    if dtype is None and python_numbers and array.dtype == np.float64:
        array = array.astype(backend.DEFAULT_DTYPE)  # Python floats: the default dtype
    return array


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """Turn an operand into a Tensor that can meet ``like`` in an op.

    Numbers and raw arrays are constants. A constant meeting a float tensor
    takes that tensor's dtype, so ``x * np.float64(2)`` stays float32. A
    number — Python's or NumPy's — is made directly on ``like``'s device (no
    copy); an *array* on the wrong device is an error rather than a hidden copy.
    """
    if isinstance(x, Tensor):
        return x
    if like is None:
        return Tensor(x)
    xp = get_array_module(like.data)
    dtype = like.dtype if backend.is_float(like.data) else None
    if isinstance(x, (bool, int, float, np.generic)):
        return Tensor(xp.full((), x, dtype=dtype))
    if hasattr(x, "dtype") and backend.device_of(x) != like.device:
        raise _device_error(backend.device_of(x), like.device)
    return Tensor(xp.asarray(x, dtype=dtype))


def _device_error(a: str, b: str) -> RuntimeError:
    return RuntimeError(
        f"expected all tensors on the same device, got '{a}' and '{b}'; "
        f"move one with .to('{b}')"
    )


def check_same_kind(a: Tensor, b: Tensor, op: str) -> None:
    """Refuse silent promotion: float32 meeting float64, or CPU meeting GPU."""
    if a.device != b.device:
        raise _device_error(a.device, b.device)
    if backend.is_float(a.data) and backend.is_float(b.data) and a.dtype != b.dtype:
        raise TypeError(
            f"{op}: got {a.dtype} and {b.dtype} tensors; minifpn does not promote "
            f"silently — convert one with .float() or .double()"
        )

