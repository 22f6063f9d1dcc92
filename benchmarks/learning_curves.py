"""Learning curves and an ablation table from finished training runs.

    python benchmarks/learning_curves.py runs/person-base runs/person-copy-paste ...
    python benchmarks/learning_curves.py runs/* --json curves.json --name base=runs/person-base
    python benchmarks/learning_curves.py --from curves.json runs/new-row --json curves.json

For each run folder (``minifpn train --eval-every N``): every evaluation in
its ``metrics.jsonl`` (the periodic ones and the final ``metrics.json``) with
the minutes of training it took to get there — the sum of the logged step
times, so evaluations and start-up are not counted — and the settings that
set the run apart from the first one given (``config.json``). Prints a
Markdown table (one row per run, its final numbers) and, with ``--json``,
writes every point for plots (Lesson 8b reads ``benchmarks/person_recipe.json``).
``--from`` starts from the runs of such a file (their folders may be long gone):
new folders are added after them, and one given under a name the file already
has replaces that run and moves it to the end.

Nothing here trains or times anything: it reads what the runs logged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: The numbers kept per evaluation: (key in the output, section, key in minifpn's metrics).
NUMBERS = (("bbox_AP", "bbox", "AP"), ("bbox_AP50", "bbox", "AP50"),
           ("bbox_AP_small", "bbox", "AP_small"), ("bbox_AP_medium", "bbox", "AP_medium"),
           ("bbox_AP_large", "bbox", "AP_large"), ("segm_AP50", "segm", "AP50"),
           ("AR@1000", "proposals", "AR@1000"))
#: Settings that are the same in every run of an ablation and say nothing about it.
IGNORED = {"out", "checkpoint_every", "eval_every", "data", "max_eval_images", "eval_split"}


def read_run(folder: Path) -> dict:
    """One run's settings and its evaluations ``[{iteration, minutes, …NUMBERS}]``."""
    config = json.loads((folder / "config.json").read_text())
    pretrain = None
    if config.get("weights"):
        pre = Path(config["weights"]).parent / "metrics.json"
        if pre.is_file():
            pretrain = json.loads(pre.read_text())
    seconds, points = 0.0, []
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "time" in row:
            seconds += row["time"]
        if "eval" in row:
            points.append(_point(row["iter"] + 1, seconds, row["eval"]))
    final = folder / "metrics.json"
    if final.is_file():
        last = _point(config["iters"], seconds, json.loads(final.read_text()))
        points = [p for p in points if p["iteration"] != last["iteration"]] + [last]
    if not points:
        raise ValueError(f"{folder}: no evaluation logged (train with --eval-every, and let "
                         "the run finish)")
    return {"folder": str(folder), "config": config, "points": points,
            "pretrain_minutes": round(pretrain["seconds"] / 60, 1) if pretrain else 0.0,
            "pretrain_val_top1": pretrain["val_top1"] if pretrain else None,
            # what always naming the most frequent category scores on those crops
            "pretrain_val_majority": pretrain["val_majority_top1"] if pretrain else None}


def _point(iteration: int, seconds: float, metrics: dict) -> dict:
    point = {"iteration": iteration, "minutes": round(seconds / 60, 2)}
    for name, section, key in NUMBERS:
        value = metrics.get(section, {}).get(key)
        point[name] = None if value is None else round(float(value), 4)
    return point


def differences(config: dict, base: dict) -> str:
    """The settings of ``config`` that differ from ``base``'s, as ``key=value``."""
    def shown(k, v):  # a weights file by its folder and name, not its whole path
        return f"{Path(v).parent.name}/{Path(v).name}" if k == "weights" and v else v

    changed = [f"{k}={shown(k, v)}" for k, v in config.items()
               if k not in IGNORED and base.get(k) != v
               and (k in base or v)]  # a setting newer than the base run, left off: the same
    return ", ".join(changed) or "(the base run)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders; the first is the base")
    parser.add_argument("--name", action="append", default=[],
                        help="NAME=FOLDER: the run's name in the output (default: its folder's)")
    parser.add_argument("--json", type=Path, help="write every point to this file")
    parser.add_argument("--from", dest="start", type=Path,
                        help="a file written by --json: its runs come first")
    args = parser.parse_args(argv)
    names = {str(Path(v)): k for k, v in (n.split("=", 1) for n in args.name)}
    try:
        runs = json.loads(args.start.read_text()) if args.start else {}
    except (OSError, ValueError) as error:
        print(f"learning_curves.py: --from {args.start}: {error}", file=sys.stderr)
        return 2
    for folder in args.runs:
        name = names.get(str(folder), folder.name)
        try:
            run = read_run(folder)
        except (OSError, ValueError, KeyError) as error:
            print(f"learning_curves.py: {folder}: {error}", file=sys.stderr)
            return 2
        runs.pop(name, None)  # a run of --from's file given again: replaced, moved last
        runs[name] = run
    if not runs:
        parser.error("give run folders, or --from a file of runs")
    base = next(iter(runs.values()))["config"]
    print("| run | what differs from the first | iterations | minutes (pre-training + "
          "detection) | bbox AP50 | bbox AP | mask AP50 | AR@1000 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, run in runs.items():
        last = run["points"][-1]
        minutes = f"{run['pretrain_minutes']:.1f} + {last['minutes']:.1f}" \
            if run["pretrain_minutes"] else f"{last['minutes']:.1f}"
        print(f"| {name} | {differences(run['config'], base)} | {last['iteration']:,} | "
              f"{minutes} | {last['bbox_AP50']:.3f} | {last['bbox_AP']:.3f} | "
              f"{last['segm_AP50']:.3f} | {last['AR@1000']:.3f} |")
    if args.json:
        for run in runs.values():
            run["differs"] = differences(run["config"], base)
        args.json.write_text(json.dumps(runs, indent=1) + "\n")
        print(f"\nevery point: {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
