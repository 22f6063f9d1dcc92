"""The NumPy/CuPy switch and its array helpers."""

import sys

import numpy as np
import pytest

import minifpn
from minifpn import backend
from tests import cupy_standin


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


def test_random_keys_are_the_same_on_every_device_and_follow_the_seed(device):
    minifpn.manual_seed(11)
    on_host = backend.random_keys((3, 1000))
    minifpn.manual_seed(11)
    keys = backend.random_keys((3, 1000), backend.get_array_module(
        backend.to_device(np.zeros(1), device)))
    assert backend.device_of(keys) == device and keys.dtype == np.uint64
    np.testing.assert_array_equal(backend.to_numpy(keys), on_host)
    assert (on_host < 2**63).all()  # the top value is free for a sentinel
    assert len(np.unique(on_host)) == on_host.size
    assert not np.array_equal(backend.random_keys((3, 1000)), on_host)  # the next draw differs


def _splitmix64_key(seed: int, counter: int) -> int:
    """SplitMix64 of ``counter`` from ``seed``, in Python integers, halved below 2⁶³."""
    z = (counter * 0x9E3779B97F4A7C15 + seed) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) >> 1


def test_random_keys_depend_on_the_row_of_the_whole_batch_only():
    seed = int(np.random.default_rng(5).integers(2**63))  # the one draw random_keys makes
    minifpn.manual_seed(5)
    keys = backend.random_keys((2, 3))
    expected = [[_splitmix64_key(seed, (row << 32) + column + 1) for column in range(3)]
                for row in range(2)]
    assert keys.tolist() == expected
    # A process holding only the batch's second image, with fewer candidates, draws
    # that image's keys: data-parallel shards sample what one process would.
    minifpn.manual_seed(5)
    with backend.batch_rows_from(1):
        shard = backend.random_keys((1, 2))
    assert shard.tolist() == [expected[1][:2]]
    assert backend.random_keys((1, 1)).tolist() != [[expected[0][0]]]  # the offset is gone


def test_random_keys_are_uniform():
    minifpn.manual_seed(0)
    keys = backend.random_keys((200_000,)) / 2.0**63
    counts, _ = np.histogram(keys, bins=20, range=(0, 1))
    expected = len(keys) / 20
    chi_square = ((counts - expected) ** 2 / expected).sum()
    assert chi_square < 43.8  # the 99.9 % point of χ² with 19 degrees of freedom


def test_count_values_matches_bincount(device):
    values = np.array([3, 0, 3, 1, 3, 0])
    counts = backend.count_values(backend.to_device(values, device), 6)
    assert backend.device_of(counts) == device
    np.testing.assert_array_equal(backend.to_numpy(counts), [2, 1, 0, 3, 0, 0])


def test_to_device_many_copies_once_per_dtype(device):
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2]), np.ones((2, 2), bool),
              np.array([7.5], np.float32), np.zeros((0, 4), np.float32)]
    moved = backend.to_device_many(arrays, device)
    for a, b in zip(arrays, moved):
        assert backend.device_of(b) == device and b.dtype == a.dtype and b.shape == a.shape
        np.testing.assert_array_equal(backend.to_numpy(b), a)
    if backend.cupy is cupy_standin:  # the stand-in counts the copies
        with cupy_standin.counting() as traffic:
            backend.to_device_many(arrays, device)
        assert traffic.h2d == 3  # float32, int64, bool


# ---------------------------------------------------------------------------
# The CPU speed-ups: threads, blocks, scratch buffers.
# ---------------------------------------------------------------------------
def test_parallel_for_covers_the_range_once_on_two_threads(split_work):
    import threading

    seen, threads = [], set()

    def work(part):
        seen.extend(range(part.start, part.stop))
        threads.add(threading.get_ident())

    backend.parallel_for(10, work, elements=10)
    assert sorted(seen) == list(range(10))
    assert len(threads) == 2


def test_parallel_for_cache_blocks_and_small_tasks(monkeypatch, split_work):
    parts = []
    # 7 elements per item and blocks of 7: one item per block
    backend.parallel_for(10, parts.append, elements=70, cache_blocks=True)
    assert sorted((p.start, p.stop) for p in parts) == [(i, i + 1) for i in range(10)]
    monkeypatch.setattr(backend, "PARALLEL_MIN_ELEMENTS", 100)
    parts.clear()
    backend.parallel_for(10, parts.append, elements=70)  # too small to split
    assert parts == [slice(0, 10)]


def test_parallel_for_reraises_a_parts_error(split_work):
    def work(part):
        if part.start > 0:
            raise KeyError("second part")

    with pytest.raises(KeyError, match="second part"):
        backend.parallel_for(4, work, elements=4)


def test_parallel_for_on_cupy_is_one_call(split_work):
    parts = []
    backend.parallel_for(10, parts.append, elements=10**6, xp=cupy_standin, cache_blocks=True)
    assert parts == [slice(0, 10)]


def test_map_blocks_matches_the_plain_call(rng, split_work):
    a, b = rng.standard_normal((3, 5, 7)), rng.standard_normal((3, 5, 7))
    out = backend.map_blocks(lambda o, u, v: np.multiply(u, v > 0, out=o), np.empty_like(a), a, b)
    np.testing.assert_array_equal(out, a * (b > 0))
    strided = rng.standard_normal((5, 3, 7)).transpose(1, 0, 2)  # not C-contiguous: one call
    calls = []
    backend.map_blocks(lambda o, u: calls.append(u.shape) or np.copyto(o, u), np.empty_like(a),
                       strided)
    assert calls == [(3, 5, 7)]


def test_cpu_threads_follow_the_environment(monkeypatch):
    previous = backend.set_cpu_threads(None)
    try:
        monkeypatch.setenv("MINIFPN_NUM_THREADS", "3")
        assert backend.cpu_threads() == 3
        backend.set_cpu_threads(None)
        monkeypatch.delenv("MINIFPN_NUM_THREADS")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert backend.cpu_threads() == 1
        with pytest.raises(ValueError, match="at least 1"):
            backend.set_cpu_threads(0)
    finally:
        backend.set_cpu_threads(previous)


def test_scratch_is_reused_and_grows():
    backend.free_scratch()
    a = backend.scratch("t", (4, 5), np.float32)
    b = backend.scratch("t", (2, 3), np.float32)
    assert np.shares_memory(a, b)  # the same buffer, reused
    c = backend.scratch("t", (100, 100), np.float64)  # larger: a new buffer
    assert c.shape == (100, 100) and c.dtype == np.float64 and not np.shares_memory(a, c)
    assert not np.shares_memory(backend.scratch("u", (4, 5), np.float32), c)  # per name
    assert isinstance(backend.scratch("t", (2,), np.float32, xp=cupy_standin), cupy_standin.ndarray)
    backend.free_scratch()


def test_plain_reference_switch_restores_itself():
    assert backend.fast_paths()
    with pytest.raises(RuntimeError):
        with backend.plain_reference():
            assert not backend.fast_paths()
            raise RuntimeError
    assert backend.fast_paths()


def test_keep_freed_host_memory_applies_exactly_on_linux_with_glibc():
    import platform

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert backend.keep_freed_host_memory() is glibc
