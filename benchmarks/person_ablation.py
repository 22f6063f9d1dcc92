"""One row of the person ablation (issue 18): the base run with one change.

    mpiexec -n 2 python benchmarks/person_ablation.py ROW --out runs/person-ROW
    python benchmarks/person_ablation.py --list

The base run is the command in benchmarks/README.md ("A person detector from
scratch"): the ``tiny`` preset on coco-mini's people, scale jitter 320–416
(long side ≤ 560), colour jitter 0.4, flips, 2,000 iterations of 2 images,
seed 0, evaluated every 1,000 iterations. Each row below changes one thing, so
``benchmarks/learning_curves.py`` can set the rows side by side. Rows that the
CLI can say are also given as a ``minifpn train`` command; the others
(``flip``, ``box_head``) are settings the CLI does not expose, hence this file.
"""

from __future__ import annotations

import argparse
import sys

#: The base run's settings (``minifpn train`` flags as TrainConfig fields).
BASE = dict(data="coco-mini", preset="tiny", categories=("person",),
            min_size=(320, 352, 384, 416), max_size=560, color_jitter=0.4, flip=True,
            iters=2000, batch_size=2, lr=0.01, seed=0, eval_every=1000, checkpoint_every=500)

#: Row name → (what changes, why it is a row).
ROWS = {
    "base": ({}, "the base run"),
    "2fc-head": ({"model_overrides": {"box_head": "2mlp"}},
                 "the paper's two fc layers instead of the tiny preset's 4conv1fc head"),
    "resolution-512": ({"min_size": (448, 480, 512, 544), "max_size": 720},
                       "inputs 1.35× larger (short side 448–544 instead of 320–416)"),
    "small": ({"preset": "small"}, "the small preset (ResNet-50 × 0.25, 128-channel "
                                   "pyramid) at the same input sizes"),
    "batch-4": ({"batch_size": 4, "lr": 0.02, "iters": 1000, "eval_every": 500},
                "4 images per iteration, learning rate scaled with the batch (×2), half "
                "the iterations: the same images seen"),
    "no-scale-jitter": ({"min_size": (416,)}, "one input size (416, the size evaluated)"),
    "no-colour": ({"color_jitter": 0.0}, "no colour jitter"),
    "no-flip": ({"flip": False}, "no horizontal flips"),
    "seed-1": ({"seed": 1}, "nothing but the seed (other initial weights, order, flips and "
                            "crops): how far apart two equal runs land"),
}


def config_for(row: str, out: str):
    """The TrainConfig of ``row``: the base run's settings with the row's change."""
    from minifpn.engine.config import TrainConfig
    change, _ = ROWS[row]
    return TrainConfig(**{**BASE, **change, "out": out})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("row", nargs="?", choices=sorted(ROWS))
    parser.add_argument("--out", help="run folder (default runs/person-ROW)")
    parser.add_argument("--list", action="store_true", help="list the rows and stop")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.list or args.row is None:
        for name, (change, why) in ROWS.items():
            print(f"{name:16s} {why}: {change or 'nothing changed'}")
        return 0
    from minifpn.engine.train import train
    train(config_for(args.row, args.out or f"runs/person-{args.row}"), progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
