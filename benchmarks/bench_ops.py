"""Speed and memory of ``minifpn.functional.conv2d`` on representative FPN layers.

Prints a Markdown table: forward and forward+backward time of each layer, its
GFLOP/s, that rate as a percentage of the machine's own float32 GEMM rate,
and the peak extra memory of the op as a multiple of (output size × kernel
area), followed by a one-line verdict for each of the two targets below.
See ``benchmarks/README.md`` for what exactly is measured.

Usage::

    python benchmarks/bench_ops.py                     # full run on the CPU
    python benchmarks/bench_ops.py --quick             # smoke test, seconds
    python benchmarks/bench_ops.py --device cuda --json conv_cuda.json
    python benchmarks/bench_ops.py --layers fpn3x3_64x64 --batch 2 --repeat 9

Targets (2-core CPU):
    1. forward+backward of the 3×3 256→256 layer reaches at least 50 % of the
       machine's NumPy float32 GEMM GFLOP/s;
    2. the peak extra memory of im2col stays within 2× of the layer's
       output size × kernel area (same layer, forward and backward).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass

import numpy as np

import minifpn
from minifpn import backend
from minifpn.functional import conv2d

#: Target 1: forward+backward GFLOP/s as a fraction of the GEMM reference.
TARGET_GEMM_FRACTION = 0.50
#: Target 2: peak extra bytes / (output elements × kh·kw × itemsize).
TARGET_MEMORY_RATIO = 2.0
#: Shape of the square reference GEMM.
SQUARE_GEMM = 2048


@dataclass(frozen=True)
class Layer:
    """One convolution: ``(n, c_in, h, w)`` input, ``c_out`` k×k filters."""

    name: str
    n: int
    c_in: int
    c_out: int
    k: int
    stride: int
    padding: int
    h: int
    w: int
    bias: bool = True
    #: False for a layer that sees the image: no gradient w.r.t. its input.
    input_grad: bool = True
    note: str = ""

    @property
    def out_size(self) -> tuple[int, int]:
        return conv_out_size(self.h, self.w, self.k, self.stride, self.padding)

    @property
    def label(self) -> str:
        ho, wo = self.out_size
        return (
            f"{self.k}×{self.k}/{self.stride} {self.c_in}→{self.c_out}, {self.h}×{self.w}→{ho}×{wo}"
        )

    def with_batch(self, n: int) -> Layer:
        return Layer(**{**asdict(self), "n": n})


#: Representative layers of a ResNet-50 FPN (batch filled in by --batch).
LAYERS = [
    Layer("fpn3x3_64x64", 1, 256, 256, 3, 1, 1, 64, 64,
          note="FPN output conv on P2 of a 256×256 image"),
    Layer("fpn3x3_100x152", 1, 256, 256, 3, 1, 1, 100, 152,
          note="FPN output conv on P2 of a 400×608 image"),
    Layer("lateral1x1_32x32", 1, 1024, 256, 1, 1, 0, 32, 32,
          note="FPN lateral conv on C4 of a 512×512 image"),
    Layer("res3x3s2_64x64", 1, 256, 256, 3, 2, 1, 64, 64, bias=False,
          note="ResNet-50 layer3.0.conv2 (strided 3×3) of a 512×512 image"),
    Layer("stem7x7s2_256", 1, 3, 64, 7, 2, 3, 256, 256, bias=False, input_grad=False,
          note="ResNet stem conv1 on a 256×256 image (input needs no grad)"),
]  # fmt: skip
LAYER_NAMES = [layer.name for layer in LAYERS]
#: The layers targets 1 and 2 are judged on (3×3 256→256, stride 1).
TARGET_LAYERS = ("fpn3x3_64x64", "fpn3x3_100x152")
#: --quick: batch 1, the smaller layers, one repeat.
QUICK_LAYERS = ("fpn3x3_64x64", "lateral1x1_32x32", "res3x3s2_64x64", "stem7x7s2_256")


# ---------------------------------------------------------------------------
# FLOP and memory arithmetic (unit-tested in tests/test_benchmarks.py)
# ---------------------------------------------------------------------------
def conv_out_size(h: int, w: int, k: int, stride: int = 1, padding: int = 0) -> tuple[int, int]:
    """Output (Ho, Wo) of a k×k convolution (dilation 1)."""
    return (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1


def forward_flops(layer: Layer) -> int:
    """Multiply-adds × 2 of the forward pass: 2·N·C_out·C_in·k²·Ho·Wo (bias ignored)."""
    ho, wo = layer.out_size
    return 2 * layer.n * layer.c_out * layer.c_in * layer.k * layer.k * ho * wo


def forward_backward_flops(layer: Layer) -> int:
    """Forward + backward FLOPs.

    The backward pass is one GEMM of the forward's size for the weight
    gradient plus, when the input needs a gradient, one more for the input
    gradient: 3× the forward in all, 2× for a layer fed by the image.
    """
    return forward_flops(layer) * (3 if layer.input_grad else 2)


def im2col_reference_bytes(layer: Layer, itemsize: int = 4) -> int:
    """Output size × kernel area × itemsize: the yardstick of target 2."""
    ho, wo = layer.out_size
    return layer.n * layer.c_out * ho * wo * layer.k * layer.k * itemsize


def memory_ratio(extra_bytes: int | None, layer: Layer, itemsize: int = 4) -> float | None:
    """``extra_bytes`` as a multiple of :func:`im2col_reference_bytes`."""
    if extra_bytes is None:
        return None
    return extra_bytes / im2col_reference_bytes(layer, itemsize)


def gflops(flops: int, seconds: float) -> float:
    return flops / seconds / 1e9


# ---------------------------------------------------------------------------
# Devices: array module, synchronisation, peak-memory probes
# ---------------------------------------------------------------------------
class Device:
    """What differs between "cpu" and "cuda": the array module, sync, memory."""

    def __init__(self, name: str):
        self.name = name
        if name == "cuda":
            if not backend.cuda_available():
                sys.exit(
                    "bench_ops: --device cuda needs CuPy and a visible CUDA GPU "
                    "(`pip install -e .[gpu]`, check `nvidia-smi`); use --device cpu."
                )
            self.xp = backend.cupy
        else:
            self.xp = np

    def sync(self) -> None:
        if self.name == "cuda":
            self.xp.cuda.Device().synchronize()

    def asarray(self, a: np.ndarray):
        return self.xp.asarray(a)

    def peak_extra(self, fn):
        """Run ``fn()``; return (its result, peak bytes allocated above the start)."""
        if self.name == "cuda":
            return _cuda_peak_extra(fn, self)
        started = tracemalloc.is_tracing()
        if not started:
            tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            result = fn()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            if not started:
                tracemalloc.stop()
        return result, peak - base


def _cuda_peak_extra(fn, device: Device):
    """Peak of CuPy memory-pool bytes in use while ``fn`` runs.

    Counted with a :class:`cupy.cuda.MemoryHook` on the pool's malloc/free
    (sizes rounded up to the pool's 512-byte granularity); cuBLAS workspaces
    and other allocations outside the pool are not seen.
    """
    from cupy.cuda import memory_hook

    class PeakHook(memory_hook.MemoryHook):
        name = "bench_ops_peak"

        def __init__(self):
            self.current = self.peak = 0

        def malloc_postprocess(self, **kw):
            if kw.get("mem_ptr"):
                self.current += kw["mem_size"]
                self.peak = max(self.peak, self.current)

        def free_postprocess(self, **kw):
            self.current -= kw["mem_size"]

    device.sync()
    with PeakHook() as hook:
        result = fn()
        device.sync()
    return result, hook.peak


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
def time_it(fn, repeat: int, device: Device) -> list[float]:
    """One untimed warm-up call, then ``repeat`` timed calls (seconds each)."""
    fn()
    device.sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        device.sync()
        times.append(time.perf_counter() - t0)
    return times


def bench_gemm(m: int, k: int, n: int, repeat: int, device: Device, rng, stat=statistics.median):
    """Time ``a @ b`` for (m, k) @ (k, n) float32."""
    a = device.asarray(rng.standard_normal((m, k), dtype=np.float32))
    b = device.asarray(rng.standard_normal((k, n), dtype=np.float32))
    times = time_it(lambda: a @ b, repeat, device)
    seconds = stat(times)
    return {
        "shape": f"({m}, {k}) @ ({k}, {n})",
        "flops": 2 * m * k * n,
        "seconds": seconds,
        "times_s": times,
        "gflops": gflops(2 * m * k * n, seconds),
    }


def bench_layer(layer: Layer, repeat: int, device: Device, rng, stat=statistics.median) -> dict:
    """Forward and forward+backward timings and peak extra memory of one layer."""
    ho, wo = layer.out_size
    fan_in = layer.c_in * layer.k * layer.k
    x_np = rng.standard_normal((layer.n, layer.c_in, layer.h, layer.w), dtype=np.float32)
    w_np = rng.standard_normal((layer.c_out, layer.c_in, layer.k, layer.k), dtype=np.float32)
    w_np *= fan_in**-0.5
    x = minifpn.Tensor(device.asarray(x_np), requires_grad=layer.input_grad)
    w = minifpn.Tensor(device.asarray(w_np), requires_grad=True)
    b = None
    if layer.bias:
        b = minifpn.Tensor(
            device.asarray(rng.standard_normal(layer.c_out, dtype=np.float32)), requires_grad=True
        )
    grad = device.asarray(rng.standard_normal((layer.n, layer.c_out, ho, wo), dtype=np.float32))
    leaves = [t for t in (x, w, b) if t is not None]

    def forward():
        return conv2d(x, w, b, stride=layer.stride, padding=layer.padding)

    def forward_backward():
        for t in leaves:
            t.grad = None  # no accumulation across repeats
        forward().backward(grad)

    fwd_times = time_it(forward, repeat, device)
    fb_times = time_it(forward_backward, repeat, device)

    # Memory, in separate untimed calls (tracemalloc slows allocation down).
    # The fast path keeps its columns in a scratch buffer between calls: let
    # it go first, so that each call's figure includes building it again.
    backend.free_scratch()
    out, fwd_peak = device.peak_extra(forward)
    fwd_extra = fwd_peak - out.data.nbytes
    # The op's own backward closure, not Tensor.backward: the engine's copies
    # of leaf gradients into .grad are not conv2d's working memory.
    backend.free_scratch()
    grads, bwd_peak = device.peak_extra(functools.partial(out._backward, grad))
    bwd_extra = bwd_peak - sum(g.nbytes for g in grads if g is not None)
    del out, grads

    fwd_s, fb_s = stat(fwd_times), stat(fb_times)
    return {
        "layer": layer.name,
        "n": layer.n,
        "label": layer.label,
        "note": layer.note,
        "forward_flops": forward_flops(layer),
        "forward_backward_flops": forward_backward_flops(layer),
        "forward_s": fwd_s,
        "forward_times_s": fwd_times,
        "forward_gflops": gflops(forward_flops(layer), fwd_s),
        "forward_backward_s": fb_s,
        "forward_backward_times_s": fb_times,
        "forward_backward_gflops": gflops(forward_backward_flops(layer), fb_s),
        "reference_bytes": im2col_reference_bytes(layer, x_np.itemsize),
        "forward_extra_bytes": fwd_extra,
        "backward_extra_bytes": bwd_extra,
        "forward_memory_ratio": memory_ratio(fwd_extra, layer, x_np.itemsize),
        "backward_memory_ratio": memory_ratio(bwd_extra, layer, x_np.itemsize),
    }


# ---------------------------------------------------------------------------
# Machine description
# ---------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> str:
    """BLAS name and version NumPy was built against."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        text = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
        config = blas.get("openblas configuration")
        return f"{text} ({config.strip()})" if config else text
    except Exception:  # NumPy < 1.26 has no mode="dicts"
        return "unknown (see numpy.show_config())"


def machine_info(device: Device) -> dict:
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device.name,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_info(),
        "minifpn": minifpn.__version__,
        "thread_env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            if k in os.environ
        },
    }
    if device.name == "cuda":
        cp = device.xp
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        info["cupy"] = cp.__version__
    return info


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def _fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}×"


def markdown_table(rows: list[dict], gemm_ref: float) -> str:
    head = (
        "| layer | N | conv | fwd ms | fwd GFLOP/s | fwd % GEMM | fwd+bwd ms "
        "| fwd+bwd GFLOP/s | fwd+bwd % GEMM | mem fwd | mem bwd |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['n']} | {r['label']} "
            f"| {r['forward_s'] * 1e3:.1f} | {r['forward_gflops']:.1f} "
            f"| {100 * r['forward_gflops'] / gemm_ref:.0f} % "
            f"| {r['forward_backward_s'] * 1e3:.1f} | {r['forward_backward_gflops']:.1f} "
            f"| {100 * r['forward_backward_gflops'] / gemm_ref:.0f} % "
            f"| {_fmt_ratio(r['forward_memory_ratio'])} "
            f"| {_fmt_ratio(r['backward_memory_ratio'])} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[dict], gemm_ref: float) -> dict:
    """PASS/MISS lines for the two targets, judged on the 3×3 256→256 layers."""
    judged = [r for r in rows if r["layer"] in TARGET_LAYERS]
    if not judged:
        missing = "not measured (select fpn3x3_64x64 or fpn3x3_100x152)"
        return {"speed": f"Target 1 (speed): {missing}", "memory": f"Target 2 (memory): {missing}"}

    fracs = [(r, r["forward_backward_gflops"] / gemm_ref) for r in judged]
    ok = all(f >= TARGET_GEMM_FRACTION for _, f in fracs)
    figures = ", ".join(f"{r['layer']} N={r['n']} {100 * f:.0f} %" for r, f in fracs)
    speed = (
        f"Target 1 (fwd+bwd ≥ {100 * TARGET_GEMM_FRACTION:.0f} % of GEMM {gemm_ref:.1f} "
        f"GFLOP/s on 3×3 256→256): {'PASS' if ok else 'MISS'} — {figures}"
    )

    ratios = [
        (r, pas, r[f"{pas}_memory_ratio"])
        for r in judged
        for pas in ("forward", "backward")
        if r[f"{pas}_memory_ratio"] is not None
    ]
    if ratios:
        ok = all(q <= TARGET_MEMORY_RATIO for _, _, q in ratios)
        figures = ", ".join(
            f"{r['layer']} N={r['n']} {'fwd' if p == 'forward' else 'bwd'} {q:.2f}×"
            for r, p, q in ratios
        )
        memory = (
            f"Target 2 (peak extra memory ≤ {TARGET_MEMORY_RATIO:g}× output×k² on "
            f"3×3 256→256): {'PASS' if ok else 'MISS'} — {figures}"
        )
    else:
        memory = "Target 2 (memory): not measured on this device"
    return {"speed": speed, "memory": memory}


def load_warning(info: dict, load: tuple | None) -> str | None:
    """A warning when the 1-minute load average says other work shares the CPU."""
    cores = info.get("affinity") or info.get("cpu_count") or 1
    if info["device"] != "cpu" or load is None or load[0] < 0.25 * cores:
        return None
    return (
        f"WARNING: load average {load[0]:.2f} on {cores} cores: other processes share the "
        "CPU, so these timings understate the machine (rerun on an idle machine)."
    )


def progress(message: str) -> None:
    """What is being timed now, on stderr so that stdout stays a clean report."""
    print(f"[bench_ops] {message} ...", file=sys.stderr, flush=True)


def print_machine(info: dict) -> None:
    print("## Machine\n")
    for key in (
        "date",
        "device",
        "gpu",
        "cupy",
        "cpu",
        "cpu_count",
        "affinity",
        "load_average",
        "python",
        "numpy",
        "blas",
        "minifpn",
        "thread_env",
    ):
        if key in info and info[key] not in (None, {}):
            value = info[key]
            if key == "load_average":
                value = " ".join(f"{v:.2f}" for v in value)
            print(f"- {key}: {value}")
    print()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="timed repeats per measurement, after one warm-up (default 5, --quick: 1)",
    )
    p.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="statistic of the repeats to report (default median; min is steadier on a "
        "machine that is not idle)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke test: batch 1, the smaller layers, one repeat"
    )
    p.add_argument(
        "--layers",
        nargs="+",
        choices=LAYER_NAMES,
        default=None,
        metavar="LAYER",
        help=f"layers to run (default all): {', '.join(LAYER_NAMES)}",
    )
    p.add_argument(
        "--batch", nargs="+", type=int, default=None, help="batch sizes (default 1 2; --quick: 1)"
    )
    p.add_argument("--plain", action="store_true",
                   help="time conv2d's plain reference path instead of its fast one "
                   "(backend.plain_reference(): the \"before\" of issue 17)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT.json", help="also write all figures to this file")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 5
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.layers is None:
        args.layers = list(QUICK_LAYERS) if args.quick else LAYER_NAMES
    if args.batch is None:
        args.batch = [1] if args.quick else [1, 2]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = Device(args.device)
    rng = np.random.default_rng(args.seed)
    stat = min if args.stat == "min" else statistics.median
    info = machine_info(device)
    print(f"# minifpn conv2d benchmark (float32, {'plain' if args.plain else 'fast'} path)\n")
    print_machine(info)
    warning = load_warning(info, info.get("load_average"))
    if warning:
        print(warning + "\n")

    ref = next(layer for layer in LAYERS if layer.name == "fpn3x3_64x64")
    ho, wo = ref.out_size
    gemm_shapes = {
        "square": (SQUARE_GEMM, SQUARE_GEMM, SQUARE_GEMM),
        "the 3×3 256→256 64×64 layer's GEMM": (ref.c_out, ref.c_in * ref.k**2, ho * wo),
    }

    def gemm_round(when: str) -> list[dict]:
        out = []
        for what, (m, k, n) in gemm_shapes.items():
            progress(f"GEMM {what} ({when})")
            g = bench_gemm(m, k, n, args.repeat, device, rng, stat)
            out.append({"what": what, "when": when, **g})
        return out

    # The GEMM reference is timed before and after the layers and the best
    # figure kept, so that a burst of load during one of them cannot make
    # the conv look better than it is.
    gemms = gemm_round("before the layers")
    rows = []
    by_name = {layer.name: layer for layer in LAYERS}
    for name in args.layers:
        for n in args.batch:
            progress(f"{name} N={n}")
            layer = by_name[name].with_batch(n)
            with backend.plain_reference() if args.plain else contextlib.nullcontext():
                rows.append(bench_layer(layer, args.repeat, device, rng, stat))
    gemms += gemm_round("after the layers")
    gemm_ref = max(g["gflops"] for g in gemms)

    print(f"## GEMM reference (`a @ b`, float32, {args.stat} of {args.repeat})\n")
    for g in gemms:
        print(
            f"- {g['shape']} ({g['what']}), {g['when']}: {g['seconds'] * 1e3:.1f} ms, "
            f"{g['gflops']:.1f} GFLOP/s"
        )
    print(f"- reference for % GEMM (the best of these): {gemm_ref:.1f} GFLOP/s\n")
    print(f"## conv2d ({args.stat} of {args.repeat} after 1 warm-up)\n")
    print(markdown_table(rows, gemm_ref))
    print(
        "\nmem fwd / mem bwd: peak extra bytes of conv2d's forward / backward "
        "as a multiple of output elements × k² × 4 bytes (see benchmarks/README.md).\n"
    )

    result = verdicts(rows, gemm_ref)
    print(result["speed"])
    print(result["memory"])
    if info.get("load_average") is not None and hasattr(os, "getloadavg"):
        info["load_average_end"] = os.getloadavg()
        end = " ".join(f"{v:.2f}" for v in info["load_average_end"])
        print(f"\nload average at end: {end} (this benchmark's own threads included)")

    report = {
        "machine": info,
        "repeat": args.repeat,
        "stat": args.stat,
        "gemm": gemms,
        "gemm_reference_gflops": gemm_ref,
        "layers": rows,
        "verdicts": result,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
