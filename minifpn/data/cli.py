"""The ``minifpn data …`` commands::

    minifpn data shapes --out DIR [--num-train 400] [--num-val 100] [--seed 0]
                        [--image-size 256] [--overwrite]
    minifpn data subset --coco-root PATH [--split val2017] [--categories person,dog]
                        [--max-images N] --out DIR [--copy] [--overwrite]

Register them on the main parser's subcommands with :func:`add_data_commands`;
each handler takes the parsed ``args``, prints a summary and returns 0 (errors
are raised: ``DataError`` / ``ValueError`` / ``FileNotFoundError``).
"""

from __future__ import annotations

import argparse

from minifpn.data.shapes import _generate
from minifpn.data.subset import _make_subset
from minifpn.validation import whole


def run_shapes(args) -> int:
    """``minifpn data shapes``: write the synthetic shapes dataset."""
    summary = _generate(args.out, args.num_train, args.num_val, args.seed, args.image_size,
                        min_size=8, max_size=250, max_objects=6, max_occlusion=0.05,
                        overwrite=args.overwrite, progress=not args.quiet)
    per_class = ", ".join(f"{n} {name}s" for name, n in summary["per_class"].items())
    for split in ("train", "val"):
        images, objects = summary["images"][split], summary["objects"][split]
        print(f"{split}: {images} image{'s' * (images != 1)}, {objects} "
              f"object{'s' * (objects != 1)}")
    print(f"objects by class: {per_class}")
    print(f"wrote {summary['root']} (annotations/instances_{{train,val}}.json, train/, val/); "
          f"train on it with --data {summary['root']}")
    return 0


def run_subset(args) -> int:
    """``minifpn data subset``: carve a category subset out of a COCO download."""
    summary = _make_subset(args.coco_root, args.split, args.categories, args.max_images,
                           args.out, link=not args.copy, overwrite=args.overwrite,
                           progress=not args.quiet)
    how = "linked" if summary["link"] else "copied"
    print(f"{summary['split']}: {summary['images']} images ({how}), {summary['annotations']} "
          f"annotations ({summary['crowd']} crowd) of {', '.join(summary['categories'])}, "
          f"from {summary['source']}")
    print(f"wrote {summary['root']} (annotations/instances_{summary['split']}.json, "
          f"{summary['split']}/)")
    return 0


def add_data_commands(subparsers) -> argparse.ArgumentParser:
    """Add ``data shapes`` and ``data subset`` to ``subparsers`` (from ``add_subparsers``).

    Each leaf parser sets ``run`` (``args.run(args)`` runs it and returns 0),
    as the other ``minifpn`` commands do. Returns the ``data`` parser.
    """
    data = subparsers.add_parser(
        "data", help="dataset tools: synthetic shapes, COCO subsets",
        description="Make datasets in the coco-mini layout (annotations/instances_{split}.json "
                    "and {split}/ image folders).")
    commands = data.add_subparsers(dest="data_command", required=True)

    shapes = commands.add_parser(
        "shapes", help="write the synthetic shapes dataset (circles, squares, triangles)",
        description="Write a synthetic detection dataset: coloured circles, squares and "
                    "triangles with exact polygon masks, sizes from 8 to 250 px, on textured "
                    "backgrounds. The same seed gives byte-identical files.")
    shapes.add_argument("--out", required=True, help="the folder to create")
    shapes.add_argument("--num-train", type=whole(0).argparse_type(), default=400,
                        help="training images (default 400)")
    shapes.add_argument("--num-val", type=whole(0).argparse_type(), default=100,
                        help="validation images (default 100)")
    shapes.add_argument("--seed", type=whole(0).argparse_type(), default=0,
                        help="random seed (default 0)")
    shapes.add_argument("--image-size", type=whole(1).argparse_type(), default=256,
                        help="side of the square images in pixels (default 256)")
    shapes.add_argument("--overwrite", action="store_true",
                        help="replace --out if it is not empty")
    shapes.add_argument("--quiet", action="store_true", help="no progress bar")
    shapes.set_defaults(run=run_shapes)

    subset = commands.add_parser(
        "subset", help="carve a category subset out of a COCO download",
        description="Write the images of a COCO split that contain any of the given "
                    "categories (the first --max-images by id), with their annotations of "
                    "those categories, in the coco-mini layout. Ids are kept; images are "
                    "linked (or copied with --copy).")
    subset.add_argument("--coco-root", required=True,
                        help="a COCO download: annotations/instances_val2017.json, val2017/, …")
    subset.add_argument("--split", default="val2017", help="the split (default val2017)")
    subset.add_argument("--categories", default="person,dog",
                        help="comma-separated category names (default person,dog)")
    subset.add_argument("--max-images", type=whole(1).argparse_type(), default=None,
                        help="keep the first N matching images by id (default: all)")
    subset.add_argument("--out", required=True, help="the folder to create")
    subset.add_argument("--copy", action="store_true",
                        help="copy the images instead of symlinking them")
    subset.add_argument("--overwrite", action="store_true",
                        help="replace --out if it is not empty")
    subset.add_argument("--quiet", action="store_true", help="no progress bar")
    subset.set_defaults(run=run_subset)
    return data
