"""NumPy on the CPU, CuPy on the GPU — one code path for both.

Every op in minifpn asks its inputs which array library they live in and then
calls that library's functions through the name ``xp``::

    xp = get_array_module(x)       # numpy or cupy
    y = xp.maximum(x, 0)

CuPy mirrors NumPy's API, so the same line runs on either device. This is the
trick DeZero uses; it keeps the maths in one place and makes "--device cuda"
a matter of where the arrays live, not of which code runs.

Devices are the strings ``"cpu"`` and ``"cuda"`` (``"cuda:0"`` is accepted and
means the current CUDA device). The default dtype is float32, as in PyTorch;
float64 is supported everywhere and is what the gradient checks use.
"""

from __future__ import annotations

import numpy as np

try:  # CuPy is optional: ``pip install minifpn[gpu]``.
    import cupy
    import cupyx
except Exception:  # ImportError, or a CuPy whose CUDA libraries fail to load
    cupy = None
    cupyx = None

#: The floating-point dtype of new parameters and of Python-float data.
DEFAULT_DTYPE = np.float32

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def cuda_available() -> bool:
    """True when CuPy imports and can see at least one CUDA device."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _require_cuda() -> None:
    if cupy is None:
        raise RuntimeError(
            "device 'cuda' was requested but CuPy is not installed. "
            "Install the GPU extra with `pip install -e .[gpu]` (CuPy for CUDA 12), "
            "or use device='cpu'."
        )
    if not cuda_available():
        raise RuntimeError(
            "device 'cuda' was requested but CuPy finds no CUDA GPU "
            "(check `nvidia-smi` and the CUDA driver), or use device='cpu'."
        )


def normalize_device(device: str) -> str:
    """Map user spellings ("cpu", "cuda", "cuda:0", "gpu") to "cpu" or "cuda"."""
    name = str(device).lower()
    if name == "cpu":
        return "cpu"
    if name in ("cuda", "gpu") or name.startswith("cuda:"):
        return "cuda"
    raise ValueError(f"unknown device {device!r}: use 'cpu' or 'cuda'")


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``.

    Accepts raw arrays, minifpn Tensors (anything with a ``.data`` array) and
    Python scalars, so ops can call it on whatever they were given.
    """
    if cupy is not None:
        for a in arrays:
            # A Tensor holds its array in .data; a raw array's own .data is a
            # buffer (memoryview / CuPy memory pointer), so test both.
            if isinstance(a, cupy.ndarray) or isinstance(getattr(a, "data", None), cupy.ndarray):
                return cupy
    return np


def device_of(array) -> str:
    """"cuda" for a CuPy array, "cpu" for anything else."""
    if cupy is not None and isinstance(array, cupy.ndarray):
        return "cuda"
    return "cpu"


def to_device(array, device: str):
    """Copy a raw array to ``device`` (a no-op when it is already there)."""
    device = normalize_device(device)
    if device == "cuda":
        _require_cuda()
        return cupy.asarray(array)
    if cupy is not None and isinstance(array, cupy.ndarray):
        return cupy.asnumpy(array)
    return np.asarray(array)


def to_numpy(array) -> np.ndarray:
    """Bring a raw array to the host as a NumPy array."""
    return to_device(array, "cpu")


def is_float(array) -> bool:
    return np.dtype(array.dtype).kind == "f"


def scatter_add(target, indices, values) -> None:
    """In-place ``target[indices] += values`` that *accumulates* repeated indices.

    Plain ``target[idx] += v`` writes each repeated index once (the last write
    wins); gradients of gathers need every contribution summed. NumPy spells
    this ``np.add.at``; CuPy spells it ``cupyx.scatter_add``.
    """
    if cupy is not None and isinstance(target, cupy.ndarray):
        cupyx.scatter_add(target, indices, values)
    else:
        np.add.at(target, indices, values)


def index_add(target, axis: int, index, source) -> None:
    """In-place ``target[..., index[i], ...] += source[..., i, ...]`` along ``axis``.

    The adjoint of ``xp.take(target, index, axis)``: every slice of ``source``
    is added to the slice of ``target`` that its index names, repeated indices
    accumulating (like ``torch.Tensor.index_add_``).
    """
    key = (slice(None),) * (axis % target.ndim) + (index,)
    scatter_add(target, key, source)


def index_add_rows(num_rows: int, index, values):
    """Sum rows of ``values`` ``(M, C)`` into ``num_rows`` rows by ``index`` ``(M,)``.

    Returns ``out`` ``(num_rows, C)`` with ``out[r] = Σ_{m : index[m] = r} values[m]``
    — the scatter-add at the heart of every gather's backward (RoIAlign's
    sample points, say, where many samples read the same feature pixel). It is
    one ``bincount`` over the flattened (row, channel) positions: several times
    faster than ``np.add.at`` on the CPU, and the same call on CuPy.
    """
    xp = get_array_module(values)
    m, c = values.shape
    flat = (index.astype(xp.int64)[:, None] * c + xp.arange(c)).ravel()
    sums = xp.bincount(flat, weights=values.ravel(), minlength=num_rows * c)
    return sums.reshape(num_rows, c).astype(values.dtype, copy=False)


# ---------------------------------------------------------------------------
# Random numbers: one seeded generator, so runs and tests are reproducible.
# Parameters are always initialised on the host, then moved; this makes a
# seed give the same weights on CPU and GPU.
# ---------------------------------------------------------------------------
_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Seed minifpn's random generator (weight initialisation, sampling)."""
    global _rng
    _rng = np.random.default_rng(seed)


def rng() -> np.random.Generator:
    """The generator minifpn draws from; replaced by :func:`manual_seed`."""
    return _rng


def get_rng_state() -> dict:
    """The generator's state, for checkpoints that resume bit for bit."""
    return _rng.bit_generator.state


def set_rng_state(state: dict) -> None:
    _rng.bit_generator.state = state
