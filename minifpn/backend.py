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

import contextlib
import ctypes
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

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


def index_add_rows(num_rows: int, index, values, out=None):
    """Sum rows of ``values`` ``(M, C)`` into ``num_rows`` rows by ``index`` ``(M,)``.

    Returns ``out`` ``(num_rows, C)`` with ``out[r] += Σ_{m : index[m] = r} values[m]``
    (a new zero array when ``out`` is None) — the scatter-add at the heart of
    every gather's backward (RoIAlign's sample points, say, where many samples
    read the same feature pixel). On the CPU it is one ``np.add.at`` on the
    flattened (row, channel) positions: NumPy's fast path for a 1-D target,
    several times faster than ``np.add.at`` on rows; on the GPU an atomic
    scatter-add.
    """
    xp = get_array_module(values)
    m, c = values.shape
    if out is None:
        out = xp.zeros((num_rows, c), dtype=values.dtype)
    if not out.flags.c_contiguous:
        raise ValueError("index_add_rows: out must be C-contiguous (it is updated in place)")
    if xp is not np:
        cupyx.scatter_add(out, index, values)
        return out
    flat = (index.astype(np.intp)[:, None] * c + np.arange(c)).reshape(-1)
    np.add.at(out.reshape(-1), flat, values.reshape(-1))  # out is C-contiguous: a view
    return out


# ---------------------------------------------------------------------------
# The CPU's own speed-ups, all in this one place. NumPy runs every call on one
# core (only BLAS uses them all) and gives every new array fresh memory. Ops
# call the helpers below on both devices; on CuPy they step aside, because a
# GPU is parallel already and CuPy's memory pool already reuses its blocks.
# ---------------------------------------------------------------------------
_fast_paths = True


def fast_paths() -> bool:
    """Whether ops take their optimised paths (the default) or their plain reference ones."""
    return _fast_paths


@contextlib.contextmanager
def plain_reference():
    """Inside, every op with an optimised path takes its plain reference path instead.

    A few ops (convolution, group norm, RoIAlign's backward, nearest
    upsampling) have a plain version that shows the idea and a faster one
    for real work; the tests run both and compare them.
    """
    global _fast_paths
    previous, _fast_paths = _fast_paths, False
    try:
        yield
    finally:
        _fast_paths = previous


#: Work below this many array elements is not split over threads: handing a
#: part to another thread costs ~20 µs, the time NumPy takes to copy ~100,000 floats.
PARALLEL_MIN_ELEMENTS = 1 << 17

_cpu_threads = None
_pool = None
_pool_lock = threading.Lock()


def cpu_threads() -> int:
    """How many threads :func:`parallel_for` uses on the CPU.

    ``MINIFPN_NUM_THREADS`` if set, else ``OMP_NUM_THREADS`` or
    ``OPENBLAS_NUM_THREADS`` (so one setting limits BLAS and minifpn alike,
    e.g. ``1`` for two jobs on a 2-core machine), else the cores this process
    may use. :func:`set_cpu_threads` overrides it.
    """
    global _cpu_threads
    if _cpu_threads is None:
        for name in ("MINIFPN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            value = os.environ.get(name, "").strip()
            if value.isdigit() and int(value) > 0:
                _cpu_threads = int(value)
                break
        else:
            cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
            _cpu_threads = len(cores) if cores else os.cpu_count() or 1
    return _cpu_threads


def set_cpu_threads(count: int | None) -> int | None:
    """Use ``count`` threads in :func:`parallel_for` (None: the default); returns the old one."""
    global _cpu_threads
    if count is not None and count < 1:
        raise ValueError(f"set_cpu_threads: need at least 1 thread, got {count}")
    previous, _cpu_threads = _cpu_threads, count
    return previous


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minifpn")
        return _pool


def _forget_pool_after_fork():  # a forked child has none of the parent's threads
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


#: Elements one call of a ``cache_blocks`` task covers: 1 MiB of float32, so
#: that an op's several passes over one block find it in the CPU's cache.
CACHE_BLOCK_ELEMENTS = 1 << 18


def parallel_for(count: int, work, *, elements: int, xp=np, cache_blocks: bool = False) -> None:
    """Call ``work(part)`` for slices ``part`` that together cover ``range(count)``.

    On NumPy, with more than one thread (:func:`cpu_threads`) and at least
    :data:`PARALLEL_MIN_ELEMENTS` array ``elements`` in the whole task, the
    range is cut into one contiguous slice per thread and the slices run at
    the same time: NumPy releases Python's global lock inside its copies and
    arithmetic loops, so the threads really share the cores. Otherwise — on
    CuPy, or for small tasks — it is one call, ``work(slice(0, count))``.

    With ``cache_blocks``, each thread goes through its slice in blocks of
    about :data:`CACHE_BLOCK_ELEMENTS` elements (on NumPy; CuPy gets one call):
    for ops that pass over the same rows several times.

    Every part must write only its own outputs (channels, rows, images):
    then the result is the same, bit for bit, for any number of threads.
    """
    if cache_blocks and xp is np and count:
        step = max(1, CACHE_BLOCK_ELEMENTS * count // max(elements, 1))
        whole_part = work

        def work(part):
            for start in range(part.start, part.stop, step):
                whole_part(slice(start, min(start + step, part.stop)))

    threads = min(cpu_threads(), count) if xp is np else 1
    if threads <= 1 or elements < PARALLEL_MIN_ELEMENTS:
        work(slice(0, count))
        return
    bounds = [count * k // threads for k in range(threads + 1)]
    parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    futures = [_thread_pool(threads - 1).submit(work, part) for part in parts[1:]]
    try:
        work(parts[0])  # the calling thread takes the first part
    finally:
        for future in futures:
            future.result()  # waits, and re-raises a part's exception here


def map_blocks(fn, out, *inputs, xp=np):
    """``fn(out_part, *input_parts)`` over matching parts of arrays shaped like ``out``.

    For elementwise work (ReLU, a residual sum): on NumPy, when every array
    is C-contiguous and of ``out``'s shape, the flattened arrays are cut into
    cache-sized blocks shared between the threads (:func:`parallel_for`), so
    temporaries ``fn`` makes (a comparison's mask, say) stay small and in the
    cache. Otherwise — on CuPy, or for other layouts — one call ``fn(out, *inputs)``.
    Returns ``out``.
    """
    arrays = (out, *inputs)
    if xp is not np or any(a.shape != out.shape or not a.flags.c_contiguous for a in arrays):
        fn(out, *inputs)
        return out
    flat = [a.reshape(-1) for a in arrays]
    parallel_for(out.size, lambda part: fn(*(a[part] for a in flat)),
                 elements=out.size * len(arrays), xp=xp, cache_blocks=True)
    return out


_scratch = threading.local()


def scratch(name: str, shape, dtype, xp=np):
    """An uninitialised ``shape`` array for temporary use inside one op.

    On NumPy it is a view of a buffer kept per ``name`` (and per thread) and
    reused by every call: a large fresh array costs a page fault and a
    kernel-side zeroing for every page of it, which for im2col's columns
    (tens of MB, rebuilt for every layer) is a good part of the copy itself.
    The buffer grows to the largest request and stays; :func:`free_scratch`
    lets it go. The contents are valid until the next ``scratch(name, …)``
    call, so an op must never return or keep one. On CuPy it is
    ``xp.empty``: the memory pool reuses blocks already.
    """
    if xp is not np:
        return xp.empty(shape, dtype=dtype)
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buffer = buffers.get(name)
    if buffer is None or buffer.nbytes < nbytes:
        buffers[name] = buffer = np.empty(nbytes, dtype=np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)


def free_scratch() -> None:
    """Release this thread's :func:`scratch` buffers."""
    _scratch.__dict__.pop("buffers", None)


#: glibc's ``mallopt`` parameters (malloc.h): M_TRIM_THRESHOLD and M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_host_memory() -> bool:
    """Let glibc hand freed memory to the next large array instead of the kernel.

    By default glibc serves every allocation above a threshold (at most
    32 MiB, usually far less) with fresh pages from the kernel and returns
    them on free, so each new activation or gradient array of a training
    step pays a page fault and a zeroing per page. Raising the mmap and trim
    thresholds keeps freed memory in the process for the next allocation of
    a similar size: the same as ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` in the environment. The price: the process's
    memory does not shrink after its peak until it exits. Called once when
    minifpn is imported, unless ``MINIFPN_KEEP_FREED_MEMORY=0``; a no-op (returns
    False) outside Linux with glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        # Arrays up to 1 GiB come from the heap; the heap shrinks only by 2 GiB or more.
        return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, …)
        return False


if os.environ.get("MINIFPN_KEEP_FREED_MEMORY", "1") != "0":
    keep_freed_host_memory()


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


#: The row of the whole batch that this process's first row is (see :func:`batch_rows_from`).
_first_row = 0


@contextlib.contextmanager
def batch_rows_from(first: int):
    """Within the block, row ``i`` of :func:`random_keys` is row ``first + i`` of the batch.

    Data-parallel training splits a batch of images over processes; the
    process holding images ``first, first + 1, …`` of the batch enters this
    block, so that its sampling draws the keys those images would get if one
    process held the whole batch (:mod:`~minifpn.engine.distributed`).
    """
    global _first_row
    previous, _first_row = _first_row, int(first)
    try:
        yield
    finally:
        _first_row = previous


def random_keys(shape, xp=np):
    """Random ``uint64`` keys below 2⁶³, drawn *where* ``xp`` computes (no host copy).

    Sorting by random keys is a random permutation; taking the k smallest is a
    random sample without replacement. The keys are SplitMix64 of a counter,
    seeded by one draw from minifpn's generator: the same seed gives the same
    keys on NumPy and CuPy, so sampling on the GPU matches the CPU bit for bit,
    and a checkpoint's generator state makes a resumed run draw the same keys.

    ``shape`` is ``(rows, …)``: one row per image. The counter of element
    ``j`` of row ``i`` is ``(row << 32) + j + 1`` with ``row = i +`` the
    offset of :func:`batch_rows_from` — a row's keys depend on its place in
    the batch only, not on how wide the other rows are, nor on which process
    draws them.
    """
    seed = np.uint64(_rng.integers(2**63))
    rows, columns = shape[0], math.prod(shape[1:])
    row = xp.arange(_first_row, _first_row + rows, dtype=xp.uint64)[:, None]  # (rows, 1)
    column = xp.arange(1, columns + 1, dtype=xp.uint64)[None, :]  # (1, columns)
    z = ((row << np.uint64(32)) + column) * _SPLITMIX_STEP + seed  # wraps mod 2⁶⁴
    z = (z ^ (z >> np.uint64(30))) * _SPLITMIX_MUL1
    z = (z ^ (z >> np.uint64(27))) * _SPLITMIX_MUL2
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(1)).reshape(shape)  # below 2⁶³: the top value is free for a sentinel


def get_rng_state() -> dict:
    """The generator's state, for checkpoints that resume bit for bit."""
    return _rng.bit_generator.state


def set_rng_state(state: dict) -> None:
    _rng.bit_generator.state = state
