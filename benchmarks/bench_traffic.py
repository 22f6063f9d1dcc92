"""Host↔device traffic per iteration, counted on the CuPy stand-in.

On a GPU each device→host copy makes the host wait for the device and each
small host→device copy costs a driver call, so minifpn keeps them at the
edges of an iteration. This script counts them for the ``tiny`` preset on
``tests/cupy_standin.py`` (CuPy's rules on NumPy: it runs on any machine) and
prints a Markdown table — one training iteration as the engine runs it (batch
in, forward, losses out, backward, clipping, SGD step) and one inference call,
for batch sizes 1, 2 and 4::

    python3 benchmarks/bench_traffic.py              # from the repository root, ~1 minute
    python3 benchmarks/bench_traffic.py --log        # also list where each copy happens

No timing: the counts are exact and the same on every machine.
``tests/test_device_traffic.py`` asserts them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.cupy_standin

import minifpn  # noqa: E402
from minifpn import backend  # noqa: E402
from tests import cupy_standin  # noqa: E402
from tests.test_device_traffic import batch, tiny_model, training_iteration  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", action="store_true", help="list each copy and its caller")
    args = parser.parse_args(argv)
    backend.set_cuda_module(cupy_standin, cupy_standin.cupyx)
    cupy_standin.DEPTH = 3
    model, optimizer = tiny_model()
    rows = []
    for num_images in (1, 2, 4):
        model.train()
        images, targets = batch(num_images, 3)
        training_iteration(model, optimizer, images, targets)  # warm the caches
        images, targets = batch(num_images, 5, seed=1)
        with cupy_standin.counting() as traffic:
            training_iteration(model, optimizer, images, targets)
        rows.append(("train", num_images, traffic.d2h, traffic.h2d, traffic.syncs,
                     list(traffic.log)))
        model.eval()
        on_device = [backend.to_device(im, "cuda") for im in batch(num_images, 1)[0]]
        with minifpn.no_grad():
            model(on_device)
            with cupy_standin.counting() as traffic:
                model(on_device)
        rows.append(("inference", num_images, traffic.d2h, traffic.h2d, traffic.syncs,
                     list(traffic.log)))
    print("| call | images | device→host copies | host→device copies | synchronisations |")
    print("|---|---|---|---|---|")
    for call, n, d2h, h2d, syncs, _ in rows:
        print(f"| {call} | {n} | {d2h} | {h2d} | {syncs} |")
    if args.log:
        for call, n, *_, log in rows:
            print(f"\n{call}, {n} image(s):")
            for kind, what, where in log:
                print(f"  {kind:5s} {what}  ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
