"""The ``minifpn`` command line.

    minifpn train [--data shapes|coco-mini|PATH] [--preset tiny|small|r50] [--out runs/NAME] ...
    minifpn eval --checkpoint runs/NAME [--data PATH]
    minifpn pretrain [--data coco-mini] [--preset tiny] [--epochs 30] --out runs/NAME
                                              the backbone on object crops (then train --weights)
    minifpn predict --checkpoint runs/NAME IMAGE... --out DIR
    minifpn data shapes --out DIR ...        a synthetic COCO-format dataset
    minifpn data subset --coco-root PATH ... carve a subset from a full COCO download
    minifpn weights convert model.pth out.npz [--force]   (needs torch for this step only)
    minifpn doctor                            Python, NumPy, CuPy, GPU, and a self-check
    minifpn demo                              the autograd engine on a tiny CNN

With no arguments, ``minifpn train`` is the main job: it generates the
synthetic shapes dataset, trains the tiny Mask R-CNN on the CPU, and
evaluates it with COCOeval.
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import fields
from pathlib import Path

from minifpn import validation
from minifpn.data import resolve_data
from minifpn.data.cli import add_data_commands
from minifpn.data.coco import CocoDetection
from minifpn.doctor import doctor
from minifpn.engine.checkpoint import load_model
from minifpn.engine.config import PRESETS, RULES, TrainConfig
from minifpn.engine.distributed import world
from minifpn.engine.evaluate import evaluate_model, format_metrics_table
from minifpn.engine.predict import predict_images
from minifpn.engine.pretrain import PretrainConfig, pretrain_backbone
from minifpn.engine.train import resume_run, train
from minifpn.tools.demo import run_demo
from minifpn.weights import convert_checkpoint


def _train(args) -> int:
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if getattr(args, f.name, None) is not None}  # only the flags the user typed
    if "iters" in given:  # --iters replaces a saved --epochs on resume
        given["epochs"] = None
    given.setdefault("out", f"runs/{_data_name(given.get('data', 'shapes'))}-"
                            f"{given.get('preset', 'tiny')}")
    if args.resume:  # the saved settings, changed only where the user asked
        resume_run(given.pop("out"), given, progress=not args.quiet)
    else:
        train(TrainConfig(**given), progress=not args.quiet)
    return 0


def _settings(parser, names) -> None:
    """Add ``--NAME`` for each TrainConfig setting, checked by its rule (minifpn.validation)."""
    for name, help_text in names:
        rule = RULES[name]
        parser.add_argument("--" + name.replace("_", "-"), type=rule.argparse_type(),
                            help=help_text)


def _pretrain(args) -> int:
    given = {f.name: getattr(args, f.name) for f in fields(PretrainConfig)
             if getattr(args, f.name, None) is not None}
    pretrain_backbone(PretrainConfig(**given), progress=not args.quiet, resume=args.resume)
    return 0


def _data_name(data: str) -> str:
    return Path(data.rstrip("/")).name or "data"


def _eval(args) -> int:
    model, config, meta = load_model(args.checkpoint, args.device)
    root = resolve_data(args.data or config.data)
    comm = world()  # under mpiexec -n N, the images are shared out and scored once
    dataset = CocoDetection(root, args.split, categories=config.categories,
                            verbose=comm.is_main)
    if dataset.class_names != meta["class_names"]:
        raise ValueError(
            f"{root} has classes {dataset.class_names[1:6]}… but the checkpoint was trained "
            f"on {meta['class_names'][1:6]}…: evaluate on the dataset it was trained for"
        )
    checkpoint = Path(args.checkpoint)
    out = Path(args.out) if args.out else (checkpoint if checkpoint.is_dir() else checkpoint.parent)
    metrics = evaluate_model(model, dataset, max_images=args.max_images, device=args.device,
                             results_path=out / f"{args.split}_results.json", comm=comm)
    if comm.is_main:
        print(format_metrics_table(metrics))
    return 0


def _predict(args) -> int:
    model, _, meta = load_model(args.checkpoint, args.device)
    written = predict_images(model, args.images, meta["class_names"], args.out,
                             device=args.device, score_threshold=args.score_threshold)
    print(f"wrote {len(written)} picture(s) to {args.out}: "
          f"{', '.join(path.name for path in written)}")
    return 0


def _demo(args) -> int:
    accuracy = run_demo(iters=args.iters, batch_size=args.batch_size, seed=args.seed,
                        device=args.device)
    return 0 if accuracy > 0.5 else 1


def _convert(args) -> int:
    if Path(args.dst).exists() and not args.force:
        raise FileExistsError(f"{args.dst} exists; pass --force to replace it, or choose "
                              "another file name")
    count = convert_checkpoint(args.src, args.dst)
    print(f"wrote {count} tensors to {args.dst}")
    return 0


def _doctor(args) -> int:
    return doctor(args.device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minifpn", description="Feature Pyramid Networks from scratch on NumPy/CuPy."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    training = commands.add_parser("train", help="train (and evaluate) a Mask R-CNN with FPN")
    _settings(training, [("data", "'shapes' (default: generated), 'coco-mini', or a COCO-layout "
                               "folder")])
    training.add_argument("--preset", choices=sorted(PRESETS), help="model size (default tiny)")
    _settings(training, [
        ("device", "'cpu' (default) or 'cuda'"),
        ("norm", "ResNet norm layers: gn (default), frozen_bn (for torchvision's weights), bn"),
    ])
    length = training.add_mutually_exclusive_group()
    _settings(length, [("iters", f"iterations (default {TrainConfig.iters})"),
                       ("epochs", "passes over the training images (instead of --iters)")])
    _settings(training, [
        ("batch_size", "images per iteration (default 2)"),
        ("lr", f"peak learning rate (default {TrainConfig.lr})"),
        ("out", "run folder (default runs/DATA-PRESET)"),
    ])
    training.add_argument("--resume", action="store_true", help="continue the run in --out")
    _settings(training, [
        ("weights", "weights to start from: a torchvision-format .npz, or a minifpn run "
                    "(folder or checkpoint.npz); predictors are replaced if the classes differ"),
        ("seed", "random seed (default 0)"),
        ("train_images", "use only the first N training images"),
        ("max_eval_images", "evaluate on at most N images"),
        ("eval_split", "split evaluated at the end (default val)"),
        ("checkpoint_every", f"iterations between checkpoints (default "
                             f"{TrainConfig.checkpoint_every})"),
        ("eval_every", "iterations between evaluations (0: only at the end)"),
    ])
    options = training.add_argument_group(
        "training options for real photos", "all off by default; recorded in the run's "
        "config.json and kept on --resume")
    _settings(options, [
        ("categories", "train and evaluate on these categories only: names or COCO ids, "
                       "e.g. person or person,car (labels 1..K in this order)"),
        ("min_size", "the input's short side (default: the preset's); several, e.g. "
                     "224,256,288, for multi-scale training: one drawn per image, "
                     "evaluation uses the last"),
        ("max_size", "cap on the input's long side (default: the preset's)"),
        ("color_jitter", "brightness/contrast/saturation jitter, torchvision's ColorJitter: "
                         "one strength (e.g. 0.4) or three (0.4,0.4,0.2); 0 = off (default)"),
        ("copy_paste", "probability of pasting another training image's objects (cut out "
                       "along their masks) onto each image, Ghiasi et al.; 0 = off (default)"),
        ("milestone_epochs", "with --epochs: the epochs at which the learning rate drops "
                             "by gamma (x0.1), e.g. --epochs 12 --milestone-epochs 8,11 "
                             "(default: at 75%% and 90%% of the run)"),
    ])
    training.add_argument("--quiet", action="store_true", help="no progress bar")
    training.set_defaults(run=_train)

    evaluate = commands.add_parser("eval", help="COCOeval bbox/segm and proposal AR")
    evaluate.add_argument("--checkpoint", required=True, help="a run folder or checkpoint.npz")
    evaluate.add_argument("--data", help="dataset (default: the one it was trained on)")
    evaluate.add_argument("--split", default="val", help="split to evaluate (default val)")
    evaluate.add_argument("--max-images", type=validation.whole(1).argparse_type(),
                          help="evaluate on at most N images")
    evaluate.add_argument("--device", default="cpu", type=RULES["device"].argparse_type(),
                          help="'cpu' or 'cuda'")
    evaluate.add_argument("--out", help="folder for results and metrics (default: the run's)")
    evaluate.set_defaults(run=_eval)

    defaults = PretrainConfig()
    pretrain = commands.add_parser(
        "pretrain", help="pre-train the backbone on the training photos' object crops")
    pretrain.add_argument("--data", help=f"a COCO-layout dataset (default {defaults.data})")
    pretrain.add_argument("--preset", choices=sorted(PRESETS),
                          help=f"the detector whose ResNet is trained (default {defaults.preset})")
    for name, rule, text in [
        ("epochs", validation.whole(1), "passes over the crops"),
        ("batch_size", RULES["batch_size"], "crops per step"),
        ("lr", RULES["lr"], "peak learning rate"),
        ("crop_size", validation.whole(8), "side of the stored crops"),
        ("size", validation.whole(8), "side of the random window trained on"),
        ("seed", RULES["seed"], "random seed"),
    ]:
        pretrain.add_argument("--" + name.replace("_", "-"), type=rule.argparse_type(),
                              help=f"{text} (default {getattr(defaults, name)})")
    pretrain.add_argument("--device", type=RULES["device"].argparse_type(),
                          help="'cpu' (default) or 'cuda'")
    pretrain.add_argument("--out", help=f"folder for backbone.npz (default {defaults.out})")
    pretrain.add_argument("--resume", action="store_true",
                          help="continue the interrupted pre-training in --out (same settings)")
    pretrain.add_argument("--quiet", action="store_true", help="no progress bar")
    pretrain.set_defaults(run=_pretrain)

    predict = commands.add_parser("predict", help="draw detections on images")
    predict.add_argument("--checkpoint", required=True, help="a run folder or checkpoint.npz")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--out", required=True, help="folder for the PNG pictures")
    predict.add_argument("--score-threshold", type=validation.fraction().argparse_type(),
                         default=0.5, help="draw detections scoring at least this (default 0.5)")
    predict.add_argument("--device", default="cpu", type=RULES["device"].argparse_type(),
                         help="'cpu' or 'cuda'")
    predict.set_defaults(run=_predict)

    add_data_commands(commands)

    weights = commands.add_parser("weights", help="checkpoint tools")
    weight_commands = weights.add_subparsers(dest="weights_command", required=True)
    convert = weight_commands.add_parser(
        "convert", help="convert a PyTorch .pth state dict to .npz (needs torch for this step)"
    )
    convert.add_argument("src", help="the .pth file (a state dict, or {'model': state dict})")
    convert.add_argument("dst", help="the .npz file to write")
    convert.add_argument("--force", action="store_true", help="replace dst if it exists")
    convert.set_defaults(run=_convert)

    check = commands.add_parser(
        "doctor", help="what this machine has (Python, NumPy, CuPy, GPU) and a self-check"
    )
    check.add_argument("--device", action="append", choices=("cpu", "cuda"),
                       help="check only this device (repeatable; default: cpu, and cuda "
                            "when available)")
    check.set_defaults(run=_doctor)

    demo = commands.add_parser("demo", help="train a tiny CNN on synthetic shapes (engine demo)")
    demo.add_argument("--iters", type=RULES["iters"].argparse_type(), default=300,
                      help="training iterations (default 300)")
    demo.add_argument("--batch-size", type=RULES["batch_size"].argparse_type(), default=32,
                      help="images per step (default 32)")
    demo.add_argument("--seed", type=RULES["seed"].argparse_type(), default=0,
                      help="random seed (default 0)")
    demo.add_argument("--device", default="cpu", type=RULES["device"].argparse_type(),
                      help="'cpu' or 'cuda' (default cpu)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv=None) -> int:
    """Run one command; returns the exit status.

    0 on success; 2 for an error, printed as one message (with its notes:
    what a failed training run kept, and how to continue) instead of a
    traceback; 128 + the signal's number after Ctrl-C (130) or SIGTERM (143),
    once the checkpoint is written.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt as stop:
        _report(f"interrupted{': ' + str(stop) if str(stop) else ''}", stop)
        return 128 + getattr(stop, "signum", signal.SIGINT)
    except (RuntimeError, ValueError, OSError, FloatingPointError) as error:
        _report(f"minifpn {args.command}: error: {error}", error)
        return 2


def _report(message: str, error: BaseException) -> None:
    if world().is_main:  # under mpiexec, every rank met the error: one of them says so
        print("\n".join([message, *getattr(error, "__notes__", [])]), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
