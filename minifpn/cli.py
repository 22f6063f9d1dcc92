"""The ``minifpn`` command line.

    minifpn train [--data shapes|coco-mini|PATH] [--preset tiny|small|r50] [--out runs/NAME] ...
    minifpn eval --checkpoint runs/NAME [--data PATH]
    minifpn predict --checkpoint runs/NAME IMAGE... --out DIR
    minifpn data shapes --out DIR ...        a synthetic COCO-format dataset
    minifpn data subset --coco-root PATH ... carve a subset from a full COCO download
    minifpn weights convert model.pth out.npz   (needs torch for this step only)
    minifpn doctor                            Python, NumPy, CuPy, GPU, and a self-check
    minifpn demo                              the autograd engine on a tiny CNN

With no arguments, ``minifpn train`` is the main job: it generates the
synthetic shapes dataset, trains the tiny Mask R-CNN on the CPU, and
evaluates it with COCOeval.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from minifpn.engine.config import PRESETS, TrainConfig


def _train(args) -> int:
    from minifpn.engine.checkpoint import load_checkpoint
    from minifpn.engine.train import train

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if getattr(args, f.name, None) is not None}  # only the flags the user typed
    if "iters" in given:  # --iters replaces a saved --epochs on resume
        given["epochs"] = None
    given.setdefault("out", f"runs/{_data_name(given.get('data', 'shapes'))}-"
                            f"{given.get('preset', 'tiny')}")
    if args.resume:  # the saved settings, changed only where the user asked
        saved = load_checkpoint(given["out"])["config"]
        config = TrainConfig.from_dict({**saved, **given})
    else:
        config = TrainConfig(**given)
    train(config, resume=args.resume, progress=not args.quiet)
    return 0


def _data_name(data: str) -> str:
    from pathlib import Path

    return Path(data.rstrip("/")).name or "data"


def _eval(args) -> int:
    from pathlib import Path

    from minifpn.data.coco import CocoDetection
    from minifpn.engine.checkpoint import load_model
    from minifpn.engine.evaluate import evaluate_model, format_metrics_table
    from minifpn.engine.train import resolve_data

    model, config, meta = load_model(args.checkpoint, args.device)
    root = resolve_data(args.data or config.data)
    dataset = CocoDetection(root, args.split)
    if dataset.class_names != meta["class_names"]:
        raise ValueError(
            f"{root} has classes {dataset.class_names[1:6]}… but the checkpoint was trained "
            f"on {meta['class_names'][1:6]}…: evaluate on the dataset it was trained for"
        )
    checkpoint = Path(args.checkpoint)
    out = Path(args.out) if args.out else (checkpoint if checkpoint.is_dir() else checkpoint.parent)
    metrics = evaluate_model(model, dataset, max_images=args.max_images, device=args.device,
                             results_path=out / f"{args.split}_results.json")
    print(format_metrics_table(metrics))
    return 0


def _predict(args) -> int:
    from minifpn.engine.checkpoint import load_model
    from minifpn.engine.predict import predict_images

    model, _, meta = load_model(args.checkpoint, args.device)
    written = predict_images(model, args.images, meta["class_names"], args.out,
                             device=args.device, score_threshold=args.score_threshold)
    print(f"wrote {len(written)} pictures to {args.out}")
    return 0


def _demo(args) -> int:
    from minifpn.demo import run_demo

    accuracy = run_demo(iters=args.iters, batch_size=args.batch_size, seed=args.seed,
                        device=args.device)
    return 0 if accuracy > 0.5 else 1


def _convert(args) -> int:
    from minifpn.weights import convert_checkpoint

    count = convert_checkpoint(args.src, args.dst)
    print(f"wrote {count} tensors to {args.dst}")
    return 0


def _doctor(args) -> int:
    from minifpn.doctor import doctor

    return doctor(args.device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minifpn", description="Feature Pyramid Networks from scratch on NumPy/CuPy."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (and evaluate) a Mask R-CNN with FPN")
    train.add_argument("--data", help="'shapes' (default: generated), 'coco-mini', or a "
                       "COCO-layout folder")
    train.add_argument("--preset", choices=sorted(PRESETS), help="model size (default tiny)")
    train.add_argument("--device", help="'cpu' (default) or 'cuda'")
    train.add_argument("--norm", choices=("gn", "frozen_bn", "bn"),
                       help="ResNet norm layers (default gn; frozen_bn for torchvision's weights)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--iters", type=int, help=f"iterations (default {TrainConfig.iters})")
    length.add_argument("--epochs", type=float,
                        help="passes over the training images (instead of --iters)")
    train.add_argument("--batch-size", type=int, help="images per iteration (default 2)")
    train.add_argument("--lr", type=float, help=f"peak learning rate (default {TrainConfig.lr})")
    train.add_argument("--out", help="run folder (default runs/DATA-PRESET)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--weights", help="weights to start from: torchvision-format .npz or a "
                       "minifpn checkpoint; predictors are replaced if the classes differ")
    train.add_argument("--seed", type=int, help="random seed (default 0)")
    train.add_argument("--train-images", type=int, help="use only the first N training images")
    train.add_argument("--max-eval-images", type=int, help="evaluate on at most N images")
    train.add_argument("--eval-split", help="split evaluated at the end (default val)")
    train.add_argument("--checkpoint-every", type=int, help="iterations between checkpoints")
    train.add_argument("--eval-every", type=int, help="iterations between evaluations (0: end)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("eval", help="COCOeval bbox/segm and proposal AR")
    evaluate.add_argument("--checkpoint", required=True, help="a run folder or checkpoint.npz")
    evaluate.add_argument("--data", help="dataset (default: the one it was trained on)")
    evaluate.add_argument("--split", default="val", help="split to evaluate (default val)")
    evaluate.add_argument("--max-images", type=int, help="evaluate on at most N images")
    evaluate.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
    evaluate.add_argument("--out", help="folder for results and metrics (default: the run's)")
    evaluate.set_defaults(run=_eval)

    predict = commands.add_parser("predict", help="draw detections on images")
    predict.add_argument("--checkpoint", required=True, help="a run folder or checkpoint.npz")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--out", required=True, help="folder for the PNG pictures")
    predict.add_argument("--score-threshold", type=float, default=0.5)
    predict.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
    predict.set_defaults(run=_predict)

    from minifpn.data.cli import add_data_commands

    add_data_commands(commands)

    weights = commands.add_parser("weights", help="checkpoint tools")
    weight_commands = weights.add_subparsers(dest="weights_command", required=True)
    convert = weight_commands.add_parser(
        "convert", help="convert a PyTorch .pth state dict to .npz (needs torch for this step)"
    )
    convert.add_argument("src", help="the .pth file (a state dict, or {'model': state dict})")
    convert.add_argument("dst", help="the .npz file to write")
    convert.set_defaults(run=_convert)

    check = commands.add_parser(
        "doctor", help="what this machine has (Python, NumPy, CuPy, GPU) and a self-check"
    )
    check.add_argument("--device", action="append", choices=("cpu", "cuda"),
                       help="check only this device (repeatable; default: cpu, and cuda "
                            "when available)")
    check.set_defaults(run=_doctor)

    demo = commands.add_parser("demo", help="train a tiny CNN on synthetic shapes (engine demo)")
    demo.add_argument("--iters", type=int, default=300, help="training iterations (default 300)")
    demo.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (default cpu)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt as stop:
        print(f"interrupted{': ' + str(stop) if str(stop) else ''}", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, OSError, FloatingPointError) as error:
        print(f"minifpn {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
