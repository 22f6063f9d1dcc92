"""The arithmetic of benchmarks/bench_ops.py, checked on hand-computed cases.

No timings here: benchmarks are scripts that print tables, never timed tests.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_ops.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_ops", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_ops"] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_ops", None)


@pytest.fixture
def small(bench):
    # 3×3 conv, 2 → 3 channels, 4×4 input, padding 1: output 3×4×4.
    return bench.Layer("small", n=1, c_in=2, c_out=3, k=3, stride=1, padding=1, h=4, w=4)


def test_output_size(bench, small):
    assert small.out_size == (4, 4)
    assert bench.conv_out_size(256, 256, k=7, stride=2, padding=3) == (128, 128)
    assert bench.conv_out_size(64, 64, k=3, stride=2, padding=1) == (32, 32)
    assert bench.conv_out_size(5, 7, k=3) == (3, 5)


def test_flops_by_hand(bench, small):
    # Each of the 3·4·4 = 48 outputs is a dot product of length 2·3·3 = 18:
    # 18 multiplies + 18 adds = 36 FLOPs, so 48 · 36 = 1728.
    assert bench.forward_flops(small) == 1728
    # Backward: grad weight and grad input are one forward-sized GEMM each.
    assert bench.forward_backward_flops(small) == 3 * 1728
    stem = bench.Layer("stem", 1, 2, 3, 3, 1, 1, 4, 4, input_grad=False)
    assert bench.forward_backward_flops(stem) == 2 * 1728
    # Batch and stride scale as expected: N=2, stride 2 → 2·3·2·9·(2·2)·2.
    strided = bench.Layer("s2", 2, 2, 3, 3, 2, 1, 4, 4)
    assert bench.forward_flops(strided) == 2 * 3 * 2 * 9 * 4 * 2


def test_memory_ratio_by_hand(bench, small):
    # Output 3·4·4 = 48 elements × 9 taps × 4 bytes = 1728 bytes.
    assert bench.im2col_reference_bytes(small) == 1728
    assert bench.im2col_reference_bytes(small, itemsize=8) == 3456
    assert bench.memory_ratio(3456, small) == pytest.approx(2.0)
    assert bench.memory_ratio(0, small) == 0.0
    assert bench.memory_ratio(None, small) is None


def test_gflops_and_verdicts(bench):
    assert bench.gflops(3 * 10**9, 1.5) == pytest.approx(2.0)
    row = {
        "layer": "fpn3x3_64x64",
        "n": 1,
        "forward_backward_gflops": 60.0,
        "forward_memory_ratio": 1.1,
        "backward_memory_ratio": 2.1,
    }
    v = bench.verdicts([row], gemm_ref=100.0)
    assert "PASS" in v["speed"] and "60 %" in v["speed"]
    assert "MISS" in v["memory"] and "2.10×" in v["memory"]
    v = bench.verdicts([dict(row, forward_backward_gflops=40.0, backward_memory_ratio=1.5)], 100.0)
    assert "MISS" in v["speed"] and "PASS" in v["memory"]
    assert "not measured" in bench.verdicts([], 100.0)["speed"]


def test_cli_defaults(bench):
    quick = bench.parse_args(["--quick"])
    assert quick.repeat == 1 and quick.batch == [1]
    assert set(quick.layers) <= set(bench.LAYER_NAMES)
    full = bench.parse_args([])
    assert full.repeat == 5 and full.batch == [1, 2] and full.layers == bench.LAYER_NAMES
