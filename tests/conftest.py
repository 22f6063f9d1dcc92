"""Shared fixtures: the device each test runs on, and float64 random tensors.

Tests that take the ``device`` fixture run three times:

* ``cpu``: NumPy;
* ``standin``: device "cuda" served by ``tests/cupy_standin.py`` — CuPy's
  rules (no implicit host copies, no host arrays in device ops, CuPy's
  signatures) on NumPy's arithmetic, so every machine, CI included, proves
  the GPU code path;
* ``cuda``: real CuPy on a real GPU, skipped cleanly where there is none.

``accelerator`` is the same without ``cpu``, for tests that compare a device
run with a CPU run.
"""

import numpy as np
import pytest

import minifpn
from minifpn import backend
from tests import cupy_standin


def _on(param):
    """Run a test on ``param``; yields the device string the code under test sees."""
    if param == "standin":
        previous = backend.set_cuda_module(cupy_standin, cupy_standin.cupyx)
        try:
            yield "cuda"
        finally:
            backend.set_cuda_module(*previous)
        return
    if param == "cuda" and not backend.cuda_available():
        pytest.skip("CUDA device tests need CuPy and a GPU")
    yield param


CUDA = pytest.param("cuda", marks=pytest.mark.cuda)


@pytest.fixture(params=["cpu", "standin", CUDA])
def device(request):
    yield from _on(request.param)


@pytest.fixture(params=["standin", CUDA])
def accelerator(request):
    """Like ``device`` without the CPU: for tests that compare a device with the CPU."""
    yield from _on(request.param)


@pytest.fixture
def split_work(monkeypatch):
    """Two threads, tiny cache blocks, no task too small to split.

    The CPU fast paths (``backend.parallel_for``, ``map_blocks``) then split
    even a test's small arrays, so their threaded code runs and is compared.
    """
    monkeypatch.setattr(backend, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(backend, "CACHE_BLOCK_ELEMENTS", 7)
    previous = backend.set_cpu_threads(2)
    yield
    backend.set_cpu_threads(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def randn(rng, *shape, device="cpu", requires_grad=True, dtype=np.float64):
    """A random float64 Tensor (what gradient checks need) on ``device``."""
    data = rng.standard_normal(shape).astype(dtype)
    return minifpn.Tensor(data, requires_grad=requires_grad, device=device)
