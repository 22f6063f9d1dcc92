"""Data-parallel training on this machine: one process with every core against N processes.

The main job's configuration (``tiny`` preset on the shapes, 2 images per
iteration) trains for ``--iters`` iterations twice:

* one process, with all the machine's cores as BLAS and minifpn threads;
* ``mpiexec -n N`` processes, each with cores // N threads and 2/N images
  (the same global batch, so the same training: minifpn/engine/distributed.py).

Each step's time comes from the run's ``metrics.jsonl`` (the first ``--skip``
are left out: caches fill, allocations settle); under MPI also the
all-reduce's time per step, which includes waiting for the slower rank, and
a bare all-reduce of the tiny preset's gradients after a barrier (the
communication alone). Prints a Markdown table::

    python3 benchmarks/bench_distributed.py                  # ~3 minutes on 2 cores
    python3 benchmarks/bench_distributed.py --iters 20 --skip 5   # a quick look

Needs the ``[mpi]`` extra (mpi4py, the mpich wheel's mpiexec, threadpoolctl).
Run it on an idle machine: two jobs on two cores measure each other.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def mpiexec() -> str:
    beside_python = Path(sys.executable).parent / "mpiexec"
    found = str(beside_python) if beside_python.exists() else shutil.which("mpiexec")
    if not found:
        sys.exit("mpiexec not found: python3 -m pip install -e '.[mpi]'")
    return found


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    for name in ("MINIFPN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.pop(name, None)  # each side takes its share of the cores by itself
    return env


def train_steps(processes: int, iters: int, out: Path) -> list:
    """Run the main job's settings for ``iters`` iterations; the log's step entries."""
    command = [sys.executable, "-m", "minifpn", "train", "--iters", str(iters), "--out",
               str(out), "--quiet", "--max-eval-images", "2", "--checkpoint-every", str(iters)]
    if processes > 1:
        command = [mpiexec(), "-n", str(processes), *command]
    subprocess.run(command, env=_env(), check=True, stdout=subprocess.DEVNULL)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if "loss" in entry]


def bare_allreduce(processes: int, repeats: int = 30) -> float:
    """Median seconds of one all-reduce of the tiny preset's gradients, on ``processes`` ranks."""
    done = subprocess.run([mpiexec(), "-n", str(processes), sys.executable, __file__,
                           "--allreduce-only", str(repeats)], env=_env(), check=True,
                          capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def _allreduce_only(repeats: int) -> None:
    """(Under mpiexec.) Time ``repeats`` all-reduces of zero gradients shaped as tiny's."""
    import numpy as np

    from minifpn.engine.config import build_model
    from minifpn.engine.distributed import world

    comm = world()
    grads = [np.zeros_like(p.data) for p in build_model("tiny", 4).parameters()]
    times = []
    for _ in range(repeats):
        comm.comm.Barrier()  # everyone ready: the time is the communication alone
        began = time.perf_counter()
        comm.allreduce_mean_(grads)
        times.append(time.perf_counter() - began)
    if comm.is_main:
        megabytes = sum(g.nbytes for g in grads) / 2**20
        print(f"{megabytes:.1f} MB of gradients", file=sys.stderr)
        print(statistics.median(times))


def summarize(single: list, parallel: list, bare: float, processes: int) -> str:
    """The Markdown table: median step times, their ratio, the all-reduce's share."""
    one = statistics.median(e["time"] for e in single)
    many = statistics.median(e["time"] for e in parallel)
    waiting = statistics.median(e["allreduce_time"] for e in parallel)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, cores // processes)
    return "\n".join([
        "| configuration | s / iteration (median) | vs 1 process |",
        "| --- | ---: | ---: |",
        f"| 1 process × {cores} threads, 2 images | {one:.3f} | 1.00× |",
        f"| {processes} processes × {threads} thread{'s' * (threads != 1)}, "
        f"{2 // processes} image{'s' * (2 // processes != 1)} each | {many:.3f} | "
        f"{many / one:.2f}× |",
        "",
        f"All-reduce per step under MPI: {waiting * 1e3:.1f} ms median "
        f"({100 * waiting / many:.1f} % of the step), of which the communication itself "
        f"(a bare all-reduce after a barrier) is {bare * 1e3:.1f} ms "
        f"({100 * bare / many:.1f} %); the rest is waiting for the slower rank.",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=110, help="iterations per run (110)")
    parser.add_argument("--skip", type=int, default=10, help="first iterations left out (10)")
    parser.add_argument("--processes", type=int, default=2, help="MPI processes (2)")
    parser.add_argument("--allreduce-only", type=int, metavar="REPEATS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.allreduce_only:
        _allreduce_only(args.allreduce_only)
        return 0
    if args.processes < 2 or 2 % args.processes:
        parser.error("--processes must split the batch of 2 images: use 2")
    with tempfile.TemporaryDirectory() as tmp:
        single = train_steps(1, args.iters, Path(tmp) / "one")[args.skip:]
        parallel = train_steps(args.processes, args.iters, Path(tmp) / "many")[args.skip:]
    bare = bare_allreduce(args.processes)
    print(summarize(single, parallel, bare, args.processes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
