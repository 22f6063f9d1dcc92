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

import math

import numpy as np

_CUPY_IMPORT_ERROR = None
try:  # CuPy is optional: ``pip install minifpn[gpu]``.
    import cupy
    import cupyx
except Exception as _error:  # ImportError, or a CuPy whose CUDA libraries fail to load
    cupy = None
    cupyx = None
    if not isinstance(_error, ModuleNotFoundError):
        _CUPY_IMPORT_ERROR = f"{type(_error).__name__}: {_error}"

#: The floating-point dtype of new parameters and of Python-float data.
DEFAULT_DTYPE = np.float32


def set_cuda_module(cupy_module, cupyx_module):
    """Use ``cupy_module`` (and its ``cupyx``) for the "cuda" device; returns the previous pair.

    This is the one switch between the host and a device library. The test
    suite uses it to run every device test on a strict CuPy stand-in
    (``tests/cupy_standin.py``) on machines without a GPU; ``None, None``
    means "no CuPy".
    """
    global cupy, cupyx
    previous = (cupy, cupyx)
    cupy, cupyx = cupy_module, cupyx_module
    return previous


def cuda_available() -> bool:
    """True when CuPy imports and can see at least one CUDA device."""
    return cuda_unavailable_reason() is None


def cuda_unavailable_reason() -> str | None:
    """Why device "cuda" cannot be used, with what to do about it — or None when it can."""
    if cupy is None:
        detail = f" ({_CUPY_IMPORT_ERROR})" if _CUPY_IMPORT_ERROR else ""
        return ("CuPy is not installed or failed to import" + detail + ". Install the GPU "
                "extra with `pip install -e .[gpu]` (CuPy for CUDA 12)")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver, an old driver, no device node …
        return (f"CuPy cannot reach a GPU: {type(error).__name__}: {error}. Check the NVIDIA "
                "driver with `nvidia-smi` (CUDA 12 needs driver ≥ 525)")
    if count == 0:
        return "CuPy sees no CUDA device (check `nvidia-smi` and CUDA_VISIBLE_DEVICES)"
    return None


def _require_cuda() -> None:
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"device 'cuda' was requested, but: {reason}; or use device='cpu'.")


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


def to_device_many(arrays, device: str) -> list:
    """Copy host arrays to ``device`` with one transfer per dtype; same order back.

    Every host→device copy has a fixed cost (a driver call, a wait for
    pageable memory), so a batch's images, boxes, labels and masks travel
    together: packed into one buffer per dtype, copied once, and cut into
    views on the device. On the CPU the arrays are returned as they are.
    """
    device = normalize_device(device)
    arrays = [np.asarray(a) for a in arrays]
    if device == "cpu":
        return arrays
    by_dtype = {}
    for i, array in enumerate(arrays):
        by_dtype.setdefault(array.dtype, []).append(i)
    out = [None] * len(arrays)
    for members in by_dtype.values():  # a loop over dtypes (a handful)
        packed = to_device(np.concatenate([arrays[i].ravel() for i in members]), device)
        start = 0
        for i in members:
            out[i] = packed[start : start + arrays[i].size].reshape(arrays[i].shape)
            start += arrays[i].size
    return out


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


def count_values(values, length: int):
    """``(length,)`` int64: how often each of ``0 … length−1`` occurs in ``values``.

    ``bincount`` with a known length. On the GPU it is a scatter-add, because
    CuPy's ``bincount`` first copies ``max(values)`` to the host to size its
    output (a synchronisation).
    """
    xp = get_array_module(values)
    if xp is np:
        return np.bincount(values, minlength=length)
    out = xp.zeros(length, dtype=xp.int64)
    cupyx.scatter_add(out, values, xp.ones(len(values), dtype=xp.int64))
    return out


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
    if xp is not np:
        # On the GPU, an atomic scatter-add: CuPy's bincount would first copy
        # max(index) to the host to size its output (a synchronisation).
        out = xp.zeros((num_rows, c), dtype=values.dtype)
        cupyx.scatter_add(out, index, values)
        return out
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


#: SplitMix64's constants (Steele, Lea & Flood, 2014): the golden-ratio step
#: and the two multipliers of its finaliser, which scramble a counter into
#: 64 well-mixed bits.
_SPLITMIX_STEP = np.uint64(0x9E3779B97F4A7C15)
_SPLITMIX_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_SPLITMIX_MUL2 = np.uint64(0x94D049BB133111EB)


def random_keys(shape, xp=np):
    """Random ``uint64`` keys below 2⁶³, drawn *where* ``xp`` computes (no host copy).

    Sorting by random keys is a random permutation; taking the k smallest is a
    random sample without replacement. The keys are SplitMix64 of a counter,
    seeded by one draw from minifpn's generator: the same seed gives the same
    keys on NumPy and CuPy, so sampling on the GPU matches the CPU bit for bit,
    and a checkpoint's generator state makes a resumed run draw the same keys.
    """
    seed = np.uint64(_rng.integers(2**63))
    count = math.prod(shape)
    z = xp.arange(1, count + 1, dtype=xp.uint64) * _SPLITMIX_STEP + seed  # wraps mod 2⁶⁴
    z = (z ^ (z >> np.uint64(30))) * _SPLITMIX_MUL1
    z = (z ^ (z >> np.uint64(27))) * _SPLITMIX_MUL2
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(1)).reshape(shape)  # below 2⁶³: the top value is free for a sentinel


def get_rng_state() -> dict:
    """The generator's state, for checkpoints that resume bit for bit."""
    return _rng.bit_generator.state


def set_rng_state(state: dict) -> None:
    _rng.bit_generator.state = state
