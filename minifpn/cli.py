"""The ``minifpn`` command line.

    minifpn demo            train a tiny CNN with the engine and report accuracy
"""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from minifpn.demo import run_demo

    accuracy = run_demo(iters=args.iters, batch_size=args.batch_size, seed=args.seed,
                        device=args.device)
    return 0 if accuracy > 0.5 else 1


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
