"""Everything a GPU machine should prove, in one command with one summary.

Run from the repository root on a machine with an NVIDIA GPU, after
``python3 -m pip install -e ".[dev,gpu]"``::

    python3 benchmarks/gpu_check.py            # about 10 minutes on one GPU
    python3 benchmarks/gpu_check.py --quick    # a smoke run: 20 iterations, quick benchmarks

It runs, each in its own process, stopping at nothing:

1. ``minifpn doctor --device cpu --device cuda`` — versions, the GPU, the self-checks;
2. the CUDA tests — every device-parametrised test on the real GPU (``pytest -m cuda``);
3. ``minifpn train --device cuda --iters 100`` on the built-in shapes dataset,
   with its COCO evaluation (the run folder goes to a temporary directory);
4. ``benchmarks/bench_models.py --device cuda`` — model timings and GPU memory.

and prints a table: each step's status, time and headline figure. The exit
status is 1 when any step failed. The full output of every step is kept in
``--log-dir`` (default ``gpu_check_logs/``) for the closing note of whoever ran it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def steps(args, run_dir: Path) -> list[tuple[str, list[str]]]:
    python = sys.executable
    iters = "20" if args.quick else str(args.iters)
    bench = [python, "benchmarks/bench_models.py", "--device", "cuda"]
    return [
        ("doctor", [python, "-m", "minifpn.cli", "doctor", "--device", "cpu", "--device", "cuda"]),
        ("CUDA tests", [python, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                        "--ignore=tests/test_lessons.py"]),
        (f"train {iters} it.", [python, "-m", "minifpn.cli", "train", "--device", "cuda",
                                "--iters", iters, "--out", str(run_dir), "--quiet"]),
        ("bench_models", bench + (["--quick"] if args.quick else [])),
    ]


def headline(name: str, output: str, run_dir: Path) -> str:
    """The one figure worth printing for a step, read from its output."""
    if name == "doctor":
        gpu = re.search(r"^GPU\s+(.*)$", output, re.M)
        return gpu.group(1) if gpu else "no GPU line"
    if name == "CUDA tests":
        tally = re.findall(r"(\d+ (?:passed|failed|skipped|errors?))", output)
        return ", ".join(tally[-3:]) or "no pytest summary"
    if name.startswith("train"):
        metrics = run_dir / "metrics.json"
        lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (
            run_dir / "metrics.jsonl").exists() else []
        times = [json.loads(line).get("time") for line in lines if '"time"' in line]
        speed = f"{1 / (sorted(times)[len(times) // 2]):.1f} it/s" if times else "?"
        if metrics.exists():
            bbox = json.loads(metrics.read_text()).get("bbox", {})
            return f"{speed}, bbox AP50 {bbox.get('AP50')}"
        return speed
    rows = [line for line in output.splitlines() if line.startswith("| ")]
    return f"{max(len(rows) - 2, 0)} table rows (see the log)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 iterations, quick benchmarks")
    parser.add_argument("--iters", type=int, default=100, help="training iterations (100)")
    parser.add_argument("--log-dir", default="gpu_check_logs", help="where each step's output goes")
    args = parser.parse_args(argv)
    logs = Path(args.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    summary, failed = [], False
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(scratch) / "run"
        for name, command in steps(args, run_dir):
            print(f"== {name}: {' '.join(command)}", flush=True)
            began = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - began
            output = done.stdout + done.stderr
            (logs / f"{name.split()[0].lower()}.log").write_text(output)
            ok = done.returncode == 0
            if name == "CUDA tests" and not re.search(r"\d+ passed", output):
                ok = False  # every CUDA test skipped: the GPU was not seen
            failed |= not ok
            summary.append((name, "pass" if ok else f"FAIL (exit {done.returncode})", seconds,
                            headline(name, output, run_dir)))
    print("\n| step | status | time | headline |\n|---|---|---|---|")
    for name, status, seconds, figure in summary:
        print(f"| {name} | {status} | {seconds:.0f} s | {figure} |")
    print(f"\nlogs in {logs}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
