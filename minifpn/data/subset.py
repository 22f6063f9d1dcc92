"""Carve a small dataset out of a full COCO download.

``make_subset`` picks the images of one split that contain any of a few
categories and writes them in the coco-mini layout, readable by
:class:`~minifpn.data.coco.CocoDetection`::

    coco_root/annotations/instances_val2017.json   →  out/annotations/instances_val.json
    coco_root/val2017/000000000139.jpg …           →  out/val/000000000139.jpg … (links)

* the images: those with at least one annotation (crowd included) of the
  chosen categories, the first ``max_images`` by image id — deterministic;
* the json: those images, their annotations of the chosen categories only
  (other objects in them are dropped), the chosen entries of ``categories``;
  every id (image, annotation, category) is kept unchanged, as are
  ``info`` and ``licenses``;
* the image files: symbolic links to the originals (``link=False`` copies);
  a ``file_name`` that would lead outside the image folder (or outside
  ``out``) is refused (:func:`~minifpn.data.images.image_file`).

The folder is built beside ``out`` and moved into place at the end, so a
failed run leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tqdm import tqdm

from minifpn.data import DataError, atomic_directory, read_json
from minifpn.data.images import image_file


def _split_files(coco_root: Path, split: str):
    """``(json, image folder, short split name)``: official first, then coco-mini names."""
    short = split[:-4] if split.endswith("2017") else split
    candidates = [(f"instances_{split}.json", split)]
    if short == split:
        candidates.append((f"instances_{split}2017.json", f"{split}2017"))
    for name, folder in candidates:
        path = coco_root / "annotations" / name
        if path.is_file():
            return path, coco_root / folder, short
    tried = ", ".join(str(coco_root / "annotations" / name) for name, _ in candidates)
    raise FileNotFoundError(
        f"no annotations for split '{split}' under {coco_root} (looked for {tried}); point "
        "--coco-root at the folder holding annotations/ and the image folders of a COCO "
        "download (https://cocodataset.org/#download)"
    )


def _image_file(folder: Path, image: dict, json_path: Path) -> Path:
    """Where image entry ``image`` lives in ``folder``; its ``file_name`` may not leave it."""
    try:
        return image_file(folder, image.get("file_name"))
    except DataError as error:
        raise DataError(f"{json_path}: image id {image.get('id')}: {error}; fix the entry or "
                        "leave its categories out") from None


def _category_names(categories) -> list:
    if categories is None:
        return []
    if isinstance(categories, str):
        categories = categories.split(",")
    names = [str(c).strip() for c in categories]
    return [n for n in names if n]


def make_subset(coco_root, split: str = "val2017", categories=("person", "dog"),
                max_images: int | None = None, out=None, link: bool = True,
                overwrite: bool = False, progress: bool = True) -> Path:
    """Write the images of ``split`` that contain any of ``categories`` to ``out``.

    Args:
        coco_root: a COCO download: ``annotations/instances_val2017.json`` and
            ``val2017/`` (the coco-mini names ``instances_val.json``, ``val/`` work too).
        split: ``"val2017"``, ``"train2017"`` (or ``"val"`` / ``"train"``).
        categories: category names (a sequence, or one comma-separated string);
            None or empty keeps every category.
        max_images: keep the first this many matching images by id (None: all).
        out: the folder to create (coco-mini layout; the split is named without "2017").
        link: symlink the images (True) or copy them (False).
        overwrite: replace a non-empty ``out`` (only once the new one is complete).
        progress: show a progress bar while linking / copying.

    Returns ``out`` (absolute).
    """
    return _make_subset(coco_root, split, categories, max_images, out, link, overwrite,
                        progress)["root"]


def _make_subset(coco_root, split, categories, max_images, out, link, overwrite,
                 progress) -> dict:
    """:func:`make_subset`, returning a summary for ``minifpn data subset`` to print."""
    if out is None:
        raise ValueError("make_subset needs out=, the folder to write the subset to")
    if max_images is not None and (int(max_images) != max_images or max_images < 1):
        raise ValueError(f"max_images must be a whole number ≥ 1 (or None), got {max_images}")
    coco_root = Path(coco_root).expanduser()
    if not coco_root.is_dir():
        raise FileNotFoundError(f"no such folder: {coco_root} (--coco-root should be a COCO "
                                "download with annotations/ and e.g. val2017/)")
    json_path, image_dir, short = _split_files(coco_root, split)
    data = read_json(json_path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise DataError(f"{json_path} lacks the 'images', 'annotations' or 'categories' list; "
                        "is it a COCO instances file?")
    subset = _select(data, json_path, _category_names(categories), max_images)
    sources = [_image_file(image_dir, im, json_path) for im in subset["images"]]
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(sources)} chosen images are missing from {image_dir} "
            f"(e.g. {', '.join(missing[:3])}); download the '{split}' images into {image_dir}"
        )
    out = Path(out).expanduser().absolute()
    _write(out, short, subset, sources, json_path, link, overwrite, progress)
    annotations = subset["annotations"]
    return {"root": out, "split": short, "source": json_path, "images": len(subset["images"]),
            "annotations": len(annotations), "crowd": sum(bool(a.get("iscrowd", 0))
                                                          for a in annotations),
            "categories": [c["name"] for c in subset["categories"]], "link": link}


def _select(data: dict, json_path: Path, names: list, max_images) -> dict:
    """The subset's json: the images with any of ``names`` (all: every category), their
    annotations of those categories, those categories; everything else as it was."""
    by_name = {c["name"]: c for c in data["categories"]}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise DataError(
            f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}"
            f" in {json_path}; valid names: {', '.join(sorted(by_name))}"
        )
    if names:
        chosen = {by_name[n]["id"] for n in names}
    else:
        chosen = {c["id"] for c in data["categories"]}
        names = [c["name"] for c in data["categories"]]
    matching = sorted({a["image_id"] for a in data["annotations"] if a["category_id"] in chosen})
    if not matching:
        raise DataError(f"no image of {json_path} has an annotation of {', '.join(names)}; "
                        "choose other categories")
    if max_images is not None:
        matching = matching[: int(max_images)]
    wanted = set(matching)
    images = sorted((im for im in data["images"] if im["id"] in wanted), key=lambda im: im["id"])
    listed = {im["id"] for im in images}
    if listed != wanted:
        missing = sorted(wanted - listed)[:10]
        raise DataError(f"{json_path}: annotations refer to image ids {missing} that are not "
                        "in 'images'; the file is damaged — re-download it")
    subset = {key: value for key, value in data.items()
              if key not in ("images", "annotations", "categories")}
    subset.update(images=images,
                  annotations=[a for a in data["annotations"]
                               if a["image_id"] in wanted and a["category_id"] in chosen],
                  categories=[c for c in data["categories"] if c["id"] in chosen])
    return subset


def _write(out: Path, short: str, subset: dict, sources: list, json_path: Path, link: bool,
           overwrite: bool, progress: bool) -> None:
    """The subset's folder, built beside ``out`` and moved into place when complete."""
    with atomic_directory(out, overwrite=overwrite) as tmp:
        (tmp / "annotations").mkdir()
        (tmp / short).mkdir()
        for source, im in tqdm(list(zip(sources, subset["images"])),
                               desc="linking" if link else "copying", unit="img",
                               disable=not progress, mininterval=0.5):
            target = _image_file(tmp / short, im, json_path)  # never outside --out
            target.parent.mkdir(parents=True, exist_ok=True)  # file names may hold folders
            if link:
                os.symlink(source.resolve(), target)
            else:
                shutil.copy2(source, target)
        with open(tmp / "annotations" / f"instances_{short}.json", "w") as f:
            json.dump(subset, f)
