"""Shared fixtures: the device each test runs on, and float64 random tensors.

Tests that take the ``device`` fixture run once on "cpu" and once on "cuda";
the CUDA case is skipped cleanly when CuPy or a GPU is missing, so the same
suite serves CI (no GPU) and a GPU machine.
"""

import numpy as np
import pytest

import minifpn
from minifpn import backend


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    if request.param == "cuda" and not backend.cuda_available():
        pytest.skip("CUDA device tests need CuPy and a GPU")
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def randn(rng, *shape, device="cpu", requires_grad=True, dtype=np.float64):
    """A random float64 Tensor (what gradient checks need) on ``device``."""
    data = rng.standard_normal(shape).astype(dtype)
    return minifpn.Tensor(data, requires_grad=requires_grad, device=device)
