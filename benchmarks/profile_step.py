"""Where the time of one training step goes, op by op (forward and backward).

Every public function of ``minifpn.functional`` and ``minifpn.ops`` is
wrapped with a timer (exclusive time: an op that calls another op is not
charged for it), and every backward closure the autograd engine runs is
timed under its op's name. What no op accounts for — model code between
ops, target assignment, sampling, the engine's own bookkeeping, the
optimiser — is the "everything else" row.

Usage::

    python benchmarks/profile_step.py                       # the tiny preset's training step
    python benchmarks/profile_step.py --model r50-backbone  # R50-FPN forward + backward at 512²
    python benchmarks/profile_step.py --model r50 --size 800 1333 --steps 1
    python benchmarks/profile_step.py --plain               # the plain reference paths

Timers cost a few microseconds per call, so the total is a little above an
unprofiled step; compare rows within one run, not across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


class OpTimer:
    """Exclusive time and call counts per op, forward and backward.

    ``clock`` is ``time.perf_counter`` (wall time) or ``time.process_time``
    (CPU time of the whole process: with one thread, the time the step would
    take on an idle core even while other jobs share the machine).
    """

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self._stack = []  # [start, time spent in nested ops] per open op

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self._stack.append([self.clock(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                start, nested = self._stack.pop()
                spent = self.clock() - start
                self.seconds[name] += spent - nested
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1][1] += spent

        timed.__wrapped_by_profiler__ = True
        return timed


def instrument(timer: OpTimer) -> None:
    """Wrap minifpn's ops where the code will look them up, and every backward closure."""
    import minifpn
    import minifpn.functional
    import minifpn.ops
    from minifpn.autograd import Tensor

    originals = {}
    for package in (minifpn.functional, minifpn.ops):
        for name in getattr(package, "__all__", dir(package)):
            fn = getattr(package, name, None)
            if inspect.isfunction(fn) and not name.startswith("_"):
                originals[fn] = name
    wrapped = {fn: timer.wrap(name, fn) for fn, name in originals.items()}
    for module_name, module in list(sys.modules.items()):  # every `from … import relu`
        if not module_name.startswith("minifpn") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if inspect.isfunction(value) and value in wrapped:
                setattr(module, attr, wrapped[value])

    make = Tensor._make.__func__

    def _make(cls, data, parents, backward, op):
        return make(cls, data, parents, timer.wrap(op + " (backward)", backward), op)

    Tensor._make = classmethod(_make)


def build_step(args):
    """``step()`` for the chosen model, on synthetic data (bench_models.py's)."""
    sys.path.insert(0, str(HERE))
    import bench_models

    import minifpn
    from minifpn import optim

    rng = np.random.default_rng(0)
    if args.model == "r50-backbone":
        from minifpn.models import resnet_fpn_backbone

        model = resnet_fpn_backbone("resnet50")
        model.train()
        h, w = args.size
        x = minifpn.Tensor(rng.standard_normal((1, 3, h, w), dtype=np.float32))

        def step():
            pyramid = model(x)
            model.zero_grad()
            sum(p.mean() for p in pyramid.values()).backward()

        return step
    from minifpn.engine.config import build_model

    preset = "tiny" if args.model == "tiny" else "r50"
    num_classes = 4 if preset == "tiny" else 81
    model = build_model(preset, num_classes)
    model.train()
    h, w = args.size
    data = bench_models.synthetic_batch(rng, 2, h, w, num_classes)
    images = [minifpn.Tensor(image) for image, _ in data]
    targets = [target for _, target in data]
    optimizer = optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)

    def step():
        losses = model(images, targets)
        model.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tiny", "r50-backbone", "r50"), default="tiny")
    p.add_argument("--size", nargs=2, type=int, default=None, metavar=("H", "W"),
                   help="image size (default: tiny 256 256, r50-backbone 512 512, r50 800 1333)")
    p.add_argument("--steps", type=int, default=3, help="profiled steps, after one warm-up")
    p.add_argument("--plain", action="store_true", help="the plain reference paths")
    p.add_argument("--top", type=int, default=25, help="rows to show")
    p.add_argument("--cpu-time", action="store_true",
                   help="measure CPU time instead of wall time: with OPENBLAS_NUM_THREADS=1 "
                   "MINIFPN_NUM_THREADS=1, a machine shared with other jobs still gives "
                   "the single-core figures")
    args = p.parse_args(argv)
    if args.size is None:
        args.size = {"tiny": (256, 256), "r50-backbone": (512, 512), "r50": (800, 1333)}[args.model]

    from minifpn import backend

    clock = time.process_time if args.cpu_time else time.perf_counter
    timer = OpTimer(clock)
    step = build_step(args)
    with backend.plain_reference() if args.plain else contextlib.nullcontext():
        step()  # warm-up, unprofiled
        instrument(timer)
        step()  # warm-up of the wrappers
        timer.seconds.clear()
        timer.calls.clear()
        start = clock()
        for _ in range(args.steps):
            step()
        total = (clock() - start) / args.steps

    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"# {args.model} step, {args.size[0]}×{args.size[1]}, "
          f"{'plain' if args.plain else 'fast'} paths: {total * 1e3:.0f} ms "
          f"{'CPU time' if args.cpu_time else 'wall time'} per step "
          f"(mean of {args.steps}; load average at end {load})\n")
    print("| op | calls / step | ms / step | % of step |")
    print("|---|---|---|---|")
    rows = sorted(timer.seconds.items(), key=lambda kv: -kv[1])
    accounted = 0.0
    for name, seconds in rows[: args.top]:
        per_step = seconds / args.steps
        accounted += per_step
        print(f"| {name} | {timer.calls[name] / args.steps:.0f} | {per_step * 1e3:.1f} "
              f"| {100 * per_step / total:.1f} % |")
    rest = sum(s for _, s in rows[args.top:]) / args.steps
    if rest:
        print(f"| (other ops) | | {rest * 1e3:.1f} | {100 * rest / total:.1f} % |")
    other = total - accounted - rest
    print(f"| everything else (model code, targets, engine, optimiser) | | {other * 1e3:.1f} "
          f"| {100 * other / total:.1f} % |")


if __name__ == "__main__":
    main()
