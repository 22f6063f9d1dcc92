"""A CuPy stand-in for the tests: CuPy's rules, NumPy's arithmetic.

No GPU is needed to find out whether minifpn's "same code on both devices"
holds. This module offers the part of CuPy's API that minifpn calls, computes
everything with NumPy underneath, and enforces what makes real CuPy code fail
where NumPy code would quietly work:

* **No implicit conversion to the host.** ``numpy.asarray(x)``, ``np.array(x)``,
  ``x.__array__()`` — and so handing ``x`` to pycocotools, matplotlib or
  Pillow — raise CuPy's own ``TypeError``. ``x.get()`` and ``asnumpy(x)`` are
  the explicit copies out.
* **No host arrays inside device operations.** A ``numpy.ndarray`` (even a
  0-d one) meeting a device array in arithmetic, a ufunc, ``where``,
  ``concatenate`` or an assignment raises ``TypeError: Unsupported type``.
  Python and NumPy *scalars* are allowed, as in CuPy. Where CuPy itself copies
  host data to the device — ``asarray``/``array``, and an index array or list
  used for indexing or ``take`` (CuPy's ``_prepare_slice_list`` and ``_take``
  call ``core.array`` on it) — the stand-in does too, and counts the copy.
* **CuPy's signatures.** Functions accept the parameters CuPy 14's do, and no
  others: ``amax(a, initial=0)`` or ``x.max(initial=0)`` raise ``TypeError``
  as they would on a GPU. Reductions and scalar indexing return 0-d device
  arrays, not Python or NumPy scalars.
* **Traffic is counted.** :data:`traffic` counts device→host copies (``get``,
  ``asnumpy``), host→device copies, and every call that makes the host wait
  for the device (those copies plus ``item``, ``tolist``, ``float()``,
  ``int()``, ``bool()``, ``repr``), so tests can bound them.

What it cannot tell: kernel speed, cuBLAS/cuDNN numerics (results here are
NumPy's, bit for bit), memory-pool limits, streams and asynchrony, and CuPy's
out-of-range index wrap-around (NumPy raises instead).

It is plugged in through :func:`minifpn.backend.set_cuda_module`; the
``device`` fixture in ``conftest.py`` runs every device-parametrised test on it.
"""

from __future__ import annotations

import builtins
import contextlib
import inspect
import operator
import sys
import types

import numpy as np

IMPLICIT_CONVERSION = (
    "Implicit conversion to a NumPy array is not allowed. "
    "Please use `.get()` to construct a NumPy array explicitly."
)


# ---------------------------------------------------------------------------
# Traffic between host and device.
# ---------------------------------------------------------------------------
class Traffic:
    """Counts of host↔device copies and synchronising calls since :meth:`reset`."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.d2h = 0  # copies to the host: get(), asnumpy()
        self.h2d = 0  # copies to the device: asarray(host data), host index arrays
        self.syncs = 0  # calls that wait for the device (d2h copies included)
        self.log = []  # (kind, what, "file:line" of the caller) for failure messages

    def _note(self, kind, what):
        self.log.append((kind, what, _caller()))
        if kind == "d2h":
            self.d2h += 1
            self.syncs += 1
        elif kind == "h2d":
            self.h2d += 1
        else:
            self.syncs += 1

    def __repr__(self):
        return f"Traffic(d2h={self.d2h}, h2d={self.h2d}, syncs={self.syncs})"


traffic = Traffic()


#: How many frames a traffic log entry names.
DEPTH = 2


def _caller() -> str:
    """Where the copy or sync was asked for: the innermost frames outside this file."""
    frame, where = sys._getframe(2), []
    while frame is not None and len(where) < DEPTH:
        if frame.f_code.co_filename != __file__:
            where.append(f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}")
        frame = frame.f_back
    return " < ".join(where)


@contextlib.contextmanager
def counting():
    """``with counting() as t:`` — ``t`` holds the counts of the block only."""
    traffic.reset()
    yield traffic


def _host_to_device(obj, what):
    traffic._note("h2d", what)
    return np.array(obj, copy=True) if not isinstance(obj, np.ndarray) else obj.copy()


# ---------------------------------------------------------------------------
# Operands: unwrap device arrays, refuse host arrays.
# ---------------------------------------------------------------------------
_SCALARS = (bool, int, float, complex, np.generic)


def _operand(x):
    """A device array's NumPy payload, or a scalar; a host array is an error."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError(f"Unsupported type {type(x)}")
    if isinstance(x, (list, tuple)):
        return type(x)(_operand(v) for v in x)
    return x


def _wrap(result):
    if isinstance(result, np.ndarray):
        return ndarray(result)
    if isinstance(result, np.generic):  # CuPy reductions return 0-d arrays
        return ndarray(np.asarray(result))
    if isinstance(result, (tuple, list)):
        return type(result)(_wrap(r) for r in result)
    return result


def _index(key):
    """An indexing key: device arrays unwrapped, host arrays and lists copied over.

    A boolean mask makes CuPy count its True values on the host to size the
    result (``int(mask_scanned[-1])`` in ``_prepare_mask_indexing_single``):
    a synchronisation, counted here.
    """
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, ndarray):
        if key.dtype == bool:
            traffic._note("sync", "boolean-mask indexing")
        return key._a
    if isinstance(key, (np.ndarray, list)):
        return _host_to_device(key, "index array from the host")
    return key


# ---------------------------------------------------------------------------
# The device array.
# ---------------------------------------------------------------------------
class _MemoryPointer:
    """What ``x.data`` is on CuPy: a pointer to device memory, not an array."""

    def __init__(self, array):
        self.ptr = array.__array_interface__["data"][0]


def _binary(op, reflected=False):
    def method(self, other):
        if getattr(other, "__array_ufunc__", 0) is None:  # e.g. a minifpn Tensor
            return NotImplemented
        a, b = self._a, _operand(other)
        return _wrap(op(b, a) if reflected else op(a, b))

    return method


def _comparison(op):
    def method(self, other):
        if getattr(other, "__array_ufunc__", 0) is None:
            return NotImplemented
        if isinstance(other, np.ndarray) and other.ndim == 0:
            other = other.item()  # CuPy's own workaround for 0-d host arrays
        return _wrap(op(self._a, _operand(other)))

    return method


def _inplace(op):
    def method(self, other):
        op(self._a, _operand(other))
        return self

    return method


class ndarray:  # noqa: N801  (CuPy's name)
    """A device array: a NumPy array behind CuPy's rules. See the module docstring."""

    __array_priority__ = 100

    def __init__(self, payload: np.ndarray):
        self._a = payload

    # -- what CuPy refuses ------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT_CONVERSION)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # numpy.exp(x) on a device array runs CuPy's exp, as on CuPy; a host
        # array among the inputs is refused.
        if method != "__call__" or not hasattr(_this_module(), ufunc.__name__):
            return NotImplemented
        return getattr(_this_module(), ufunc.__name__)(*inputs, **kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        # numpy.concatenate([x, y]) runs CuPy's concatenate, as on CuPy (NEP 18);
        # a NumPy function CuPy does not have is an error.
        own = getattr(_this_module(), func.__name__, None)
        if own is None or func.__module__ != "numpy":
            return NotImplemented
        return own(*args, **kwargs)

    # -- explicit copies out, and calls that wait for the device ---------------
    def get(self, stream=None, order="C", out=None, blocking=True):
        traffic._note("d2h", f"get() of {self.shape} {self.dtype}")
        return self._a.copy()

    def item(self):
        traffic._note("sync", "item()")
        return self._a.item()

    def tolist(self):
        traffic._note("sync", "tolist()")
        return self._a.tolist()

    def __float__(self):
        traffic._note("sync", "float()")
        return float(self._a)

    def __int__(self):
        traffic._note("sync", "int()")
        return int(self._a)

    def __bool__(self):
        if self._a.size > 1:
            raise ValueError(
                "The truth value of an array with more than one element is ambiguous. "
                "Use a.any() or a.all()"
            )
        traffic._note("sync", "bool()")
        return bool(self._a.size and self._a.reshape(()))

    def __repr__(self):
        traffic._note("sync", "repr()")
        return repr(self._a)

    __str__ = __repr__

    # -- facts ----------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    base = property(lambda self: None if self._a.base is None else ndarray(self._a.base))
    data = property(lambda self: _MemoryPointer(self._a))
    T = property(lambda self: ndarray(self._a.T))
    device = property(lambda self: "cuda:0")

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    __hash__ = None

    # -- indexing ----------------------------------------------------------------
    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        if isinstance(value, (np.ndarray, list)):  # "Refuse assignment from CPU arrays"
            raise TypeError(f"Unsupported type {type(value)}")
        self._a[_index(key)] = _operand(value)

    # -- operators ----------------------------------------------------------------
    __add__, __radd__ = _binary(operator.add), _binary(operator.add, True)
    __sub__, __rsub__ = _binary(operator.sub), _binary(operator.sub, True)
    __mul__, __rmul__ = _binary(operator.mul), _binary(operator.mul, True)
    __truediv__, __rtruediv__ = _binary(operator.truediv), _binary(operator.truediv, True)
    __floordiv__, __rfloordiv__ = _binary(operator.floordiv), _binary(operator.floordiv, True)
    __mod__, __rmod__ = _binary(operator.mod), _binary(operator.mod, True)
    __pow__, __rpow__ = _binary(operator.pow), _binary(operator.pow, True)
    __matmul__, __rmatmul__ = _binary(operator.matmul), _binary(operator.matmul, True)
    __and__, __rand__ = _binary(operator.and_), _binary(operator.and_, True)
    __or__, __ror__ = _binary(operator.or_), _binary(operator.or_, True)
    __xor__, __rxor__ = _binary(operator.xor), _binary(operator.xor, True)
    __lshift__, __rshift__ = _binary(operator.lshift), _binary(operator.rshift)
    __iadd__, __isub__ = _inplace(operator.iadd), _inplace(operator.isub)
    __imul__, __itruediv__ = _inplace(operator.imul), _inplace(operator.itruediv)
    __ifloordiv__, __imod__ = _inplace(operator.ifloordiv), _inplace(operator.imod)
    __ipow__, __iand__ = _inplace(operator.ipow), _inplace(operator.iand)
    __ior__, __ixor__ = _inplace(operator.ior), _inplace(operator.ixor)
    __lt__, __le__ = _comparison(operator.lt), _comparison(operator.le)
    __gt__, __ge__ = _comparison(operator.gt), _comparison(operator.ge)
    __eq__, __ne__ = _comparison(operator.eq), _comparison(operator.ne)

    def __neg__(self):
        return ndarray(-self._a)

    def __pos__(self):
        return ndarray(+self._a)

    def __abs__(self):
        return ndarray(np.abs(self._a))

    def __invert__(self):
        return ndarray(~self._a)

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()


# Methods, with the parameters CuPy 14's ndarray takes (cupy/_core/core.pyx);
# each forwards to the NumPy method of the same name.
_METHODS = {
    "astype": "(self, dtype, order='K', casting=None, subok=None, copy=True)",
    "copy": "(self, order='C')",
    "view": "(self, dtype=None, type=None)",
    "reshape": "(self, *shape, order='C', copy=None)",
    "transpose": "(self, *axes)",
    "swapaxes": "(self, axis1, axis2)",
    "flatten": "(self, order='C')",
    "ravel": "(self, order='C')",
    "squeeze": "(self, axis=None)",
    "take": "(self, indices, axis=None, out=None)",
    "repeat": "(self, repeats, axis=None)",
    "fill": "(self, value)",
    "sort": "(self, axis=-1, kind=None)",
    "argsort": "(self, axis=-1, kind=None)",
    "argpartition": "(self, kth, axis=-1)",
    "searchsorted": "(self, v, side='left', sorter=None)",
    "nonzero": "(self)",
    "max": "(self, axis=None, out=None, keepdims=False)",
    "min": "(self, axis=None, out=None, keepdims=False)",
    "argmax": "(self, axis=None, out=None, dtype=None, keepdims=False)",
    "argmin": "(self, axis=None, out=None, dtype=None, keepdims=False)",
    "clip": "(self, min=None, max=None, out=None)",
    "round": "(self, decimals=0, out=None)",
    "sum": "(self, axis=None, dtype=None, out=None, keepdims=False)",
    "mean": "(self, axis=None, dtype=None, out=None, keepdims=False)",
    "var": "(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False)",
    "std": "(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False)",
    "prod": "(self, axis=None, dtype=None, out=None, keepdims=False)",
    "cumsum": "(self, axis=None, dtype=None, out=None)",
    "all": "(self, axis=None, out=None, keepdims=False)",
    "any": "(self, axis=None, out=None, keepdims=False)",
    "dot": "(self, b, out=None)",
}


def _make_method(name, signature):
    sig = _signature(signature)

    def method(self, *args, **kwargs):
        bound = sig.bind(self, *args, **kwargs)  # TypeError for what CuPy does not take
        for param in ("b", "v", "sorter", "out", "value", "min", "max"):
            if param in bound.arguments:
                bound.arguments[param] = _operand(bound.arguments[param])
        if "indices" in bound.arguments:  # take(): host indices are copied over
            bound.arguments["indices"] = _index(bound.arguments["indices"])
        if bound.arguments.pop("type", None) is not None:
            raise NotImplementedError("the stand-in has no view(type=)")
        if name == "nonzero":
            traffic._note("sync", "nonzero() (its output size depends on the data)")
        _check_sort_kind(bound.arguments)
        if name in ("argmax", "argmin") and bound.arguments.pop("dtype", None) is not None:
            raise NotImplementedError("the stand-in has no argmax(dtype=)")
        return _wrap(getattr(self._a, name)(*bound.args[1:], **bound.kwargs))

    method.__name__ = name
    return method


def _check_sort_kind(arguments):
    """CuPy sorts are always stable and accept no other ``kind`` (core.pyx)."""
    if arguments.get("kind") not in (None, "stable"):
        raise ValueError("kind can only be None or 'stable'")


def _signature(text):
    namespace = {}
    exec(f"def f{text}: pass", namespace)  # noqa: S102  (a signature from a literal table)
    return inspect.signature(namespace["f"])


for _name, _sig in _METHODS.items():
    setattr(ndarray, _name, _make_method(_name, _sig))


# ---------------------------------------------------------------------------
# Module functions, with CuPy 14's signatures (inspect.signature on cupy.*).
# ---------------------------------------------------------------------------
_FUNCTIONS = {
    "zeros": "(shape, dtype=float, order='C')",
    "ones": "(shape, dtype=float, order='C')",
    "empty": "(shape, dtype=float, order='C')",
    "full": "(shape, fill_value, dtype=None, order='C')",
    "zeros_like": "(a, dtype=None, order='K', subok=None, shape=None)",
    "ones_like": "(a, dtype=None, order='K', subok=None, shape=None)",
    "empty_like": "(prototype, dtype=None, order='K', subok=None, shape=None)",
    "full_like": "(a, fill_value, dtype=None, order='K', subok=None, shape=None)",
    "arange": "(start, stop=None, step=1, dtype=None)",
    "linspace": "(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0)",
    "meshgrid": "(*xi, **kwargs)",
    "concatenate": "(tup, axis=0, out=None, *, dtype=None, casting='same_kind')",
    "stack": "(tup, axis=0, out=None, *, dtype=None, casting='same_kind')",
    "split": "(ary, indices_or_sections, axis=0)",
    "tile": "(A, reps)",
    "repeat": "(a, repeats, axis=None)",
    "pad": "(array, pad_width, mode='constant', **kwargs)",
    "broadcast_to": "(array, shape)",
    "expand_dims": "(a, axis)",
    "squeeze": "(a, axis=None)",
    "reshape": "(a, newshape, order='C', *, copy=None)",
    "transpose": "(a, axes=None)",
    "moveaxis": "(a, source, destination)",
    "ravel": "(a, order='C')",
    "atleast_1d": "(*arys)",
    "where": "(condition, x=None, y=None)",
    "copyto": "(dst, src, casting='same_kind', where=None)",
    "take": "(a, indices, axis=None, out=None)",
    "take_along_axis": "(a, indices, axis)",
    "flatnonzero": "(a)",
    "nonzero": "(a)",
    "count_nonzero": "(a, axis=None)",
    "argwhere": "(a)",
    "argsort": "(a, axis=-1, kind=None)",
    "sort": "(a, axis=-1, kind=None)",
    "lexsort": "(keys)",
    "argpartition": "(a, kth, axis=-1)",
    "searchsorted": "(a, v, side='left', sorter=None)",
    "unique": "(ar, return_index=False, return_inverse=False, return_counts=False, axis=None,"
    " *, equal_nan=True)",
    "argmax": "(a, axis=None, dtype=None, out=None, keepdims=False)",
    "argmin": "(a, axis=None, dtype=None, out=None, keepdims=False)",
    "amax": "(a, axis=None, out=None, keepdims=False)",
    "amin": "(a, axis=None, out=None, keepdims=False)",
    "max": "(a, axis=None, out=None, keepdims=False)",
    "min": "(a, axis=None, out=None, keepdims=False)",
    "sum": "(a, axis=None, dtype=None, out=None, keepdims=False)",
    "mean": "(a, axis=None, dtype=None, out=None, keepdims=False)",
    "prod": "(a, axis=None, dtype=None, out=None, keepdims=False)",
    "cumsum": "(a, axis=None, dtype=None, out=None)",
    "any": "(a, axis=None, out=None, keepdims=False)",
    "all": "(a, axis=None, out=None, keepdims=False)",
    "clip": "(a, a_min, a_max, out=None)",
    "bincount": "(x, weights=None, minlength=None)",
    "triu": "(m, k=0)",
    "tril": "(m, k=0)",
    "dot": "(a, b, out=None)",
    "einsum": "(*operands, **kwargs)",
    "around": "(a, decimals=0, out=None)",
    "round": "(a, decimals=0, out=None)",
    "diff": "(a, n=1, axis=-1, prepend=None, append=None)",
    "allclose": "(a, b, rtol=1e-05, atol=1e-08, equal_nan=False)",
    "array_equal": "(a1, a2, equal_nan=False)",
    "result_type": "(*arrays_and_dtypes)",
}

# Elementwise functions: CuPy ufuncs, called as f(x1[, x2], out=None, dtype=None, ...).
_UFUNCS = (
    "add subtract multiply divide true_divide floor_divide power negative remainder mod "
    "maximum minimum fmax fmin exp expm1 log log2 log10 log1p sqrt square abs absolute "
    "sign floor ceil trunc rint sin cos tan tanh arctan arctan2 hypot isfinite isnan isinf "
    "logical_and logical_or logical_not logical_xor equal not_equal less less_equal greater "
    "greater_equal bitwise_and bitwise_or invert left_shift right_shift matmul reciprocal"
).split()


# The parameters that carry device data. The others (shapes, axes, section
# indices, pad widths, repeats, scalars) are host values, as in CuPy.
_ARRAY_PARAMETERS = {
    "a", "b", "x", "y", "m", "A", "ary", "array", "prototype", "tup", "condition", "weights",
    "a_min", "a_max", "v", "sorter", "keys", "a1", "a2", "xi", "arys", "operands", "prepend",
    "append", "arrays_and_dtypes", "out", "dst", "src", "where",
}


# CuPy functions whose output *size* depends on the data: they copy a count to
# the host before allocating (bincount: "int(cupy.max(x)) + 1  # synchronize!").
_SIZE_FROM_DATA = {"nonzero", "flatnonzero", "argwhere", "unique", "bincount"}


def _make_function(name, signature):
    sig = _signature(signature)
    numpy_function = getattr(np, name)

    def function(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)  # TypeError for what CuPy does not take
        _check_sort_kind(bound.arguments)
        if name == "lexsort" and not isinstance(bound.arguments["keys"], ndarray):
            raise AttributeError("cupy.lexsort takes one 2-D array of keys, not a sequence")
        if name in _SIZE_FROM_DATA or (name == "where" and "x" not in bound.arguments):
            traffic._note("sync", f"{name}() (its output size depends on the data)")
        for param, value in bound.arguments.items():
            if param in _ARRAY_PARAMETERS:
                bound.arguments[param] = _operand(value)
        if "indices" in bound.arguments:
            indices = bound.arguments["indices"]
            if name == "take_along_axis" and not isinstance(indices, ndarray):
                raise TypeError("`indices` must be a cupy.ndarray")  # as CuPy's
            # take() copies host indices over, as CuPy's _take does.
            bound.arguments["indices"] = _index(indices)
        return _wrap(numpy_function(*bound.args, **bound.kwargs))

    function.__name__ = name
    function.__signature__ = sig
    return function


def _make_ufunc(name):
    numpy_ufunc = getattr(np, name)

    def ufunc(*args, out=None, dtype=None, casting="same_kind"):
        for a in args:
            if isinstance(a, (np.ndarray, list, tuple)):
                raise TypeError(f"Unsupported type {type(a)}")
        kwargs = {"casting": casting}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if out is not None:
            kwargs["out"] = _operand(out)
        result = numpy_ufunc(*[_operand(a) for a in args], **kwargs)
        return out if out is not None else _wrap(result)

    ufunc.__name__ = name
    return ufunc


# ---------------------------------------------------------------------------
# Copies in and out, and the rest of the namespace.
# ---------------------------------------------------------------------------
def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    if isinstance(a, ndarray):
        return a if dtype is None else a.astype(dtype, copy=False)
    if isinstance(a, (list, tuple)) and builtins.any(isinstance(v, ndarray) for v in a):
        stacked = _this_module().stack(list(a))  # CuPy stacks device items on the device
        return stacked if dtype is None else stacked.astype(dtype)
    return ndarray(_host_to_device(np.asarray(a, dtype=dtype, order=order), "asarray"))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        return ndarray(np.array(obj._a, dtype=dtype, copy=copy, ndmin=ndmin))
    return ndarray(_host_to_device(np.array(obj, dtype=dtype, ndmin=ndmin), "array"))


def ascontiguousarray(a, dtype=None):
    return ndarray(np.ascontiguousarray(_operand(a), dtype=dtype))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if isinstance(a, ndarray):
        return a.get()
    return np.asarray(a)


def get_array_module(*args):
    return _this_module() if builtins.any(isinstance(a, ndarray) for a in args) else np


def _this_module():
    return sys.modules[__name__]


for _name, _sig in _FUNCTIONS.items():
    globals()[_name] = _make_function(_name, _sig)
for _name in _UFUNCS:
    globals()[_name] = _make_ufunc(_name)

# dtypes and constants are NumPy's own objects in CuPy too
for _name in (
    "float16 float32 float64 int8 int16 int32 int64 uint8 uint16 uint32 uint64 bool_ "
    "dtype finfo iinfo inf nan pi e newaxis integer floating number"
).split():
    globals()[_name] = getattr(np, _name)



def _norm(x, ord=None, axis=None, keepdims=False):
    return _wrap(np.linalg.norm(_operand(x), ord=ord, axis=axis, keepdims=keepdims))


linalg = types.SimpleNamespace(norm=_norm)

__version__ = "14.2.0+standin"

# ---------------------------------------------------------------------------
# cupy.cuda: one pretend device, with made-up but plausible facts.
# ---------------------------------------------------------------------------
_TOTAL_MEMORY = 16 * 2**30


class _Runtime:
    @staticmethod
    def getDeviceCount():  # noqa: N802  (CUDA's name)
        return 1

    @staticmethod
    def getDeviceProperties(device):  # noqa: N802
        return {"name": b"CuPy stand-in (NumPy on the CPU)", "totalGlobalMem": _TOTAL_MEMORY,
                "major": 0, "minor": 0}

    @staticmethod
    def runtimeGetVersion():  # noqa: N802
        return 0

    @staticmethod
    def driverGetVersion():  # noqa: N802
        return 0


class _Device:
    def __init__(self, device=0):
        self.id = device

    @property
    def mem_info(self):
        return (_TOTAL_MEMORY, _TOTAL_MEMORY)

    def synchronize(self):
        traffic._note("sync", "Device.synchronize()")


class _MemoryPool:
    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self):
        pass


_pool = _MemoryPool()
cuda = types.SimpleNamespace(runtime=_Runtime(), Device=_Device, is_available=lambda: True)


def get_default_memory_pool():
    return _pool


# ---------------------------------------------------------------------------
# cupyx: the one function minifpn uses.
# ---------------------------------------------------------------------------
#: The dtypes CuPy's atomic add supports (cupy/_core/_routines_indexing.pyx).
_ATOMIC_ADD_DTYPES = {np.dtype(t) for t in (np.int32, np.int64, np.float16, np.float32,
                                            np.float64, np.uint32, np.uint64)}


def _scatter_add(a, slices, value):
    """``cupyx.scatter_add``: ``a[slices] += value`` with repeated indices summed."""
    if a.dtype not in _ATOMIC_ADD_DTYPES:
        raise TypeError("cupy.add.at only supports int32, int64, float16, float32, float64, "
                        "uint32, uint64 as data type")
    np.add.at(_operand(a), _index(slices), _operand(value))


cupyx = types.SimpleNamespace(scatter_add=_scatter_add)
