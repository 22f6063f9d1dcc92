"""The ``minifpn`` command line.

    minifpn demo                              train a tiny CNN with the engine
    minifpn weights convert model.pth out.npz convert a PyTorch checkpoint (needs torch)
"""

from __future__ import annotations

import argparse
import sys


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minifpn", description="Feature Pyramid Networks from scratch on NumPy/CuPy."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train a tiny CNN on synthetic shapes (engine demo)")
    demo.add_argument("--iters", type=int, default=300, help="training iterations (default 300)")
    demo.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (default cpu)")
    demo.set_defaults(run=_demo)

    weights = commands.add_parser("weights", help="checkpoint tools")
    weight_commands = weights.add_subparsers(dest="weights_command", required=True)
    convert = weight_commands.add_parser(
        "convert", help="convert a PyTorch .pth state dict to .npz (needs torch for this step)"
    )
    convert.add_argument("src", help="the .pth file (a state dict, or {'model': state dict})")
    convert.add_argument("dst", help="the .npz file to write")
    convert.set_defaults(run=_convert)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, ValueError, FileNotFoundError) as error:
        print(f"minifpn {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
