"""The NumPy/CuPy switch and its array helpers."""

import numpy as np
import pytest

import minifpn
from minifpn import backend


def test_get_array_module_on_host_values():
    assert backend.get_array_module(np.ones(2)) is np
    assert backend.get_array_module(minifpn.Tensor([1.0])) is np
    assert backend.get_array_module(3.0, [1, 2]) is np


def test_get_array_module_follows_the_device(device):
    t = minifpn.Tensor(np.ones(2), device=device)
    xp = backend.get_array_module(t)
    assert backend.device_of(t.data) == device
    assert (xp is np) == (device == "cpu")


@pytest.mark.parametrize(
    "spelling, expected", [("cpu", "cpu"), ("CUDA", "cuda"), ("cuda:0", "cuda"), ("gpu", "cuda")]
)
def test_device_spellings(spelling, expected):
    assert backend.normalize_device(spelling) == expected


def test_unknown_device_is_an_error():
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        backend.normalize_device("tpu")


def test_scatter_add_accumulates_repeated_indices(device):
    target = backend.to_device(np.zeros(4), device)
    backend.scatter_add(target, backend.to_device(np.array([1, 1, 3, 1]), device),
                        backend.to_device(np.array([1.0, 2.0, 3.0, 4.0]), device))
    np.testing.assert_array_equal(backend.to_numpy(target), [0.0, 7.0, 0.0, 3.0])


def test_index_add_along_an_axis():
    target = np.zeros((2, 3))
    backend.index_add(target, 1, np.array([2, 2, 0]), np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    np.testing.assert_array_equal(target, [[3.0, 0.0, 3.0], [6.0, 0.0, 9.0]])


def test_manual_seed_makes_draws_reproducible_and_state_restorable():
    minifpn.manual_seed(7)
    first = backend.rng().standard_normal(3)
    minifpn.manual_seed(7)
    state = backend.get_rng_state()
    np.testing.assert_array_equal(backend.rng().standard_normal(3), first)
    backend.set_rng_state(state)
    np.testing.assert_array_equal(backend.rng().standard_normal(3), first)


def test_to_numpy_round_trip(device):
    a = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(backend.to_numpy(backend.to_device(a, device)), a)
