"""A COCO detection dataset on pycocotools.

Shape shorthand:  G objects in an image;  K categories (80 for COCO);
(H, W) the image's height and width.

COCO names its 80 categories with ids between 1 and 90 (11 ids are unused),
so the detector's class index is a *contiguous* label 1..K (0 is background)
mapped from and back to the category id. Each item is an image and a target
dict in torchvision's format, boxes converted from COCO's ``[x, y, w, h]``
to ``(x1, y1, x2, y2)``::

    image   (H, W, 3) uint8 RGB
    target  {"boxes": (G, 4) float32, "labels": (G,) int64 (1..K),
             "iscrowd": (G,) bool, "image_id": int, "area": (G,) float32,
             "masks": (G, H, W) uint8   — only with ``with_masks=True``}

Crowd annotations (``iscrowd = 1``: one region around many objects) are kept
and flagged: they must not be learned as objects, but anchors inside them
must not be learned as background either.

What is cleaned at load, and reported (``dataset.report``, printed once):

* boxes reaching outside the image are **clipped** to it (the json's
  ``width`` / ``height``);
* boxes under a pixel wide or tall once clipped are **degenerate** and
  dropped (a zero-size box cannot be regressed to: log 0), with their masks;
* images left without annotations are skipped with ``skip_empty=True``
  (for training) and kept otherwise (for evaluation);
* with ``categories`` (a subset, by name or id), every other category and
  its annotations are left out of the dataset — and of its ``coco`` index,
  so that COCO evaluation on it counts only the chosen categories' objects —
  and the labels 1..K follow the order the categories were given in.

Broken input is refused with a :class:`~minifpn.data.DataError` (a
``ValueError``) naming the file and the image / annotation id: a json that
does not parse or lacks a field, an annotation whose ``category_id`` or
``image_id`` is not listed, a box or area that is not a finite number, an
image ``file_name`` that leads outside the image folder
(:func:`~minifpn.data.images.image_file`), an image that is corrupt or whose
size disagrees with the json. Images are checked when they are read, or all
at once from their headers by :meth:`CocoDetection.check_images` (training
does this before its first iteration). A missing image file is a
``FileNotFoundError``.
"""

from __future__ import annotations

import contextlib
import io
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minifpn.data import DataError, read_json
from minifpn.data.images import image_file, image_header, read_image

#: The two folder layouts we accept: coco-mini's and the official download's.
LAYOUTS = (
    ("annotations/instances_{split}.json", "{split}"),
    ("annotations/instances_{split}2017.json", "{split}2017"),
)

#: How many ids a report line shows before "… and N more".
_SHOW_IDS = 10


def locate_split(root, split: str):
    """``(annotation json, image folder)`` of ``split`` ("train" / "val") under ``root``."""
    root = Path(root)
    for annotation, images in LAYOUTS:
        json_path = root / annotation.format(split=split)
        if json_path.is_file():
            return json_path, root / images.format(split=split)
    tried = ", ".join(str(root / a.format(split=split)) for a, _ in LAYOUTS)
    raise FileNotFoundError(f"no COCO '{split}' annotations under {root} (looked for {tried})")


def _ids_text(ids) -> str:
    shown = ", ".join(str(i) for i in ids[:_SHOW_IDS])
    more = len(ids) - _SHOW_IDS
    return shown + (f", … and {more} more" if more > 0 else "")


@dataclass
class DatasetReport:
    """What :class:`CocoDetection` found and cleaned when it loaded a split.

    Attributes:
        annotation_file: the json read.
        split: ``"train"`` / ``"val"``.
        images: images listed in the json.
        images_used: images in the dataset (``len(dataset)``).
        instances: annotations in the json, crowd included.
        crowd: annotations with ``iscrowd = 1``.
        empty_image_ids: images without any annotation in the json.
        emptied_image_ids: images whose every annotation was a degenerate box.
        skip_empty: whether those two kinds were left out of the dataset.
        degenerate_ids: annotation ids dropped: box under 1 px wide or tall once clipped.
        clipped_ids: annotation ids (kept) whose box reached outside the image and was clipped.
        categories: categories listed in the json.
        categories_used: categories with at least one annotation.
        unused_categories: names of the listed categories without annotations.
        chosen_categories: names of the categories kept (``categories=``), or None for all.
    """

    annotation_file: str
    split: str
    images: int
    images_used: int
    instances: int
    crowd: int
    empty_image_ids: list = field(default_factory=list)
    emptied_image_ids: list = field(default_factory=list)
    skip_empty: bool = False
    degenerate_ids: list = field(default_factory=list)
    clipped_ids: list = field(default_factory=list)
    categories: int = 0
    categories_used: int = 0
    unused_categories: list = field(default_factory=list)
    chosen_categories: list | None = None

    def __str__(self) -> str:
        fate = ("skipped (skip_empty=True)" if self.skip_empty
                else "kept as background-only images (skip_empty=False)")
        empty = len(self.empty_image_ids)
        lines = [
            f"COCO '{self.split}' from {self.annotation_file}",
            f"  images:      {self.images} listed, {self.images_used} in the dataset",
            f"  no annotations: {empty} image(s)" + (f" (ids {_ids_text(self.empty_image_ids)})"
                                                      if empty else "")
            + (f", {fate}" if empty else ""),
        ]
        if self.emptied_image_ids:
            lines.append(f"  only degenerate boxes: {len(self.emptied_image_ids)} image(s) "
                         f"(ids {_ids_text(self.emptied_image_ids)}), {fate}")
        if self.chosen_categories is not None:
            lines.append(f"  only the categories {', '.join(self.chosen_categories)}: the "
                         "others' annotations are left out (counts below are of these)")
        lines += [
            f"  instances:   {self.instances}, of which {self.crowd} crowd (flagged iscrowd: "
            "neither object nor background)",
            f"  categories:  {self.categories_used} of {self.categories} used"
            + (f" (unused: {', '.join(self.unused_categories[:_SHOW_IDS])}"
               + (" …" if len(self.unused_categories) > _SHOW_IDS else "") + ")"
               if self.unused_categories else ""),
            f"  degenerate boxes dropped (w or h < 1 px): {len(self.degenerate_ids)}"
            + (f" (annotation ids {_ids_text(self.degenerate_ids)})"
               if self.degenerate_ids else ""),
            f"  boxes clipped to the image: {len(self.clipped_ids)}"
            + (f" (annotation ids {_ids_text(self.clipped_ids)})" if self.clipped_ids else ""),
        ]
        return "\n".join(lines)


def _is_number(value) -> bool:
    """A finite real number (JSON allows ``Infinity`` and ``NaN``; a box cannot hold them)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _validate(data, path: Path, with_masks: bool) -> dict:
    """Check the fields CocoDetection relies on; a DataError naming the first bad entry."""
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a COCO json object with 'images', 'annotations' and "
                        f"'categories', got a {type(data).__name__}; rebuild the file")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: the '{key}' list is missing; is this a COCO instances "
                            "file? (captions / keypoints files are not)")
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise DataError(f"{path}: 'annotations' must be a list")

    categories = {}
    for c in data["categories"]:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            raise DataError(f"{path}: category entry {c!r} needs an integer 'id' and a 'name'")
        if c["id"] in categories:
            raise DataError(f"{path}: category id {c['id']} is listed twice; remove one")
        categories[c["id"]] = c["name"]

    images, bad_names = {}, []
    for im in data["images"]:
        image_id = im.get("id") if isinstance(im, dict) else None
        if not isinstance(image_id, int):
            raise DataError(f"{path}: image entry {str(im)[:200]} has no integer 'id'")
        missing = [k for k in ("file_name", "width", "height") if k not in im]
        if missing:
            raise DataError(f"{path}: image id {image_id} lacks {', '.join(missing)}; every "
                            "image needs file_name, width and height")
        if not (_is_number(im["width"]) and _is_number(im["height"])
                and im["width"] > 0 and im["height"] > 0):
            raise DataError(f"{path}: image id {image_id} has width {im['width']!r}, height "
                            f"{im['height']!r}; both must be positive numbers")
        if image_id in images:
            raise DataError(f"{path}: image id {image_id} is listed twice; remove one")
        try:
            image_file(".", im["file_name"])
        except DataError as error:
            bad_names.append(f"image id {image_id}: {error}")
        images[image_id] = im
    if bad_names:
        raise DataError(
            f"{path}: {len(bad_names)} image file name(s) would read outside the image folder "
            f"— {'; '.join(bad_names[:_SHOW_IDS])}{' …' if len(bad_names) > _SHOW_IDS else ''}. "
            "A file_name is relative to the split's image folder; fix these entries"
        )

    seen = set()
    for a in data["annotations"]:
        ann_id = a.get("id") if isinstance(a, dict) else None
        if not isinstance(ann_id, int):
            raise DataError(f"{path}: annotation {str(a)[:200]} has no integer 'id'")
        where = f"{path}: annotation id {ann_id}"
        if ann_id in seen:
            raise DataError(f"{where} is used twice; annotation ids must be unique")
        seen.add(ann_id)
        if a.get("image_id") not in images:
            raise DataError(f"{where} refers to image id {a.get('image_id')!r}, which is not in "
                            "'images'; add the image or remove the annotation")
        if a.get("category_id") not in categories:
            known = ", ".join(f"{i} ({n})" for i, n in sorted(categories.items())[:_SHOW_IDS * 2])
            raise DataError(
                f"{where} (image id {a['image_id']}) has category_id {a.get('category_id')!r}, "
                f"which is not in 'categories' (known: {known}"
                f"{' …' if len(categories) > _SHOW_IDS * 2 else ''}); fix the id, add the "
                "category, or remove the annotation"
            )
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            raise DataError(f"{where} (image id {a['image_id']}) has bbox {bbox!r}; expected "
                            "[x, y, width, height] finite numbers")
        if "area" in a and not (_is_number(a["area"]) and a["area"] >= 0):
            raise DataError(f"{where} (image id {a['image_id']}) has area {a['area']!r}; expected "
                            "a number ≥ 0 (or no 'area': it is then the box's)")
        if with_masks and not isinstance(a.get("segmentation"), (list, dict)):
            raise DataError(f"{where} (image id {a['image_id']}) has no 'segmentation'; "
                            "with_masks=True needs a polygon or RLE mask on every annotation "
                            "(or load with with_masks=False)")
    return data


def resolve_categories(wanted, categories: dict) -> list:
    """The COCO ids of ``wanted`` (names or ids), in the order given.

    Args:
        wanted: a non-empty list of category names (``"person"``) and/or ids (``1``).
        categories: ``{id: name}`` of the json's categories.

    Raises:
        ValueError: a name or id that is not a category (the message lists the
            known ones), one asked for twice, or an empty list.
    """
    by_name = {name: cat_id for cat_id, name in categories.items()}
    ids, unknown = [], []
    for item in wanted:
        is_id = isinstance(item, numbers.Integral) and not isinstance(item, bool)
        cat_id = int(item) if is_id else by_name.get(item)
        if cat_id not in categories:
            unknown.append(repr(item))
        else:
            ids.append(cat_id)
    if unknown or not ids:
        known = ", ".join(f"{i} ({n})" for i, n in sorted(categories.items()))
        raise ValueError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                         f"{', '.join(unknown) or '(none given)'}: choose names or ids among "
                         f"{known}")
    twice = sorted({categories[i] for i in ids if ids.count(i) > 1})
    if twice:
        raise ValueError(f"categories {list(wanted)} name {', '.join(twice)} twice; give each "
                         "category once")
    return ids


def _keep_categories(data: dict, ids: list) -> dict:
    """``data`` with only the categories ``ids`` and their annotations (every image kept)."""
    chosen = set(ids)
    return {**data, "categories": [c for c in data["categories"] if c["id"] in chosen],
            "annotations": [a for a in data["annotations"] if a["category_id"] in chosen]}


class CocoDetection:
    """Images and targets (boxes, labels, optionally masks) of one COCO split.

    Args:
        root: a folder in the coco-mini layout (``annotations/instances_val.json``,
            ``val/``) or the official one (``instances_val2017.json``, ``val2017/``).
        split: ``"train"`` or ``"val"``.
        skip_empty: leave out images without any (non-degenerate) annotation
            (for training); crowd-only images are kept.
        with_masks: add ``target["masks"]`` ``(G, H, W)`` uint8, decoded from
            the polygons or RLE.
        verbose: print the load report (also kept as :attr:`report`).
        categories: keep only these categories (names or ids, e.g.
            ``["person"]``; default: all). Labels 1..K follow their order here;
            other categories' annotations are left out of the targets and of
            :attr:`coco`, so images with none of them are empty.

    Attributes:
        ids: the image ids in the dataset, ascending.
        category_ids: the category ids, sorted (or in the order of ``categories``);
            label ``l`` is ``category_ids[l - 1]``.
        label_of: ``{category id: label}``.
        class_names: ``["__background__", name of label 1, …]``.
        report: the :class:`DatasetReport`.
        coco: the ``pycocotools.coco.COCO`` index of the json.
    """

    def __init__(self, root, split: str = "val", skip_empty: bool = False,
                 with_masks: bool = False, verbose: bool = True, categories=None):
        from pycocotools.coco import COCO

        self.annotation_file, self.image_dir = locate_split(root, split)
        self.split, self.with_masks = split, with_masks
        data = _validate(read_json(self.annotation_file), self.annotation_file, with_masks)
        chosen = None
        if categories is not None:
            names = {c["id"]: c["name"] for c in data["categories"]}
            try:
                chosen = resolve_categories(categories, names)
            except ValueError as error:
                raise ValueError(f"{self.annotation_file}: {error}") from None
            data = _keep_categories(data, chosen)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()

        self.category_ids = sorted(self.coco.cats) if chosen is None else chosen
        self.label_of = {cat: i + 1 for i, cat in enumerate(self.category_ids)}
        self.class_names = ["__background__"] + [
            self.coco.cats[c]["name"] for c in self.category_ids
        ]
        self._index_targets(data["annotations"])

        all_ids = sorted(self.coco.imgs)
        empty = [i for i in all_ids if not self.coco.imgToAnns.get(i)]
        emptied = [i for i in all_ids if self.coco.imgToAnns.get(i) and not len(self._kept[i])]
        skipped = set(empty) | set(emptied)
        self.ids = [i for i in all_ids if i not in skipped] if skip_empty else all_ids

        used = {a["category_id"] for a in data["annotations"]}
        self.report = DatasetReport(
            annotation_file=str(self.annotation_file), split=split,
            images=len(all_ids), images_used=len(self.ids),
            instances=len(data["annotations"]),
            crowd=sum(bool(a.get("iscrowd", 0)) for a in data["annotations"]),
            empty_image_ids=empty, emptied_image_ids=emptied, skip_empty=skip_empty,
            degenerate_ids=self._degenerate_ids, clipped_ids=self._clipped_ids,
            categories=len(self.category_ids), categories_used=len(used),
            unused_categories=[self.coco.cats[c]["name"] for c in self.category_ids
                               if c not in used],
            chosen_categories=(None if chosen is None
                               else [self.coco.cats[c]["name"] for c in chosen]),
        )
        if verbose:
            print(self.report)

    def _index_targets(self, annotations) -> None:
        """Clip every box to its image, drop degenerate ones, and group the rest by image."""
        count = len(annotations)
        xywh = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(count, 4)
        size = np.array([(self.coco.imgs[a["image_id"]]["width"],
                          self.coco.imgs[a["image_id"]]["height"]) for a in annotations],
                        dtype=np.float64).reshape(count, 2)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        clipped = np.clip(boxes, 0, np.concatenate([size, size], axis=1))
        was_clipped = (clipped != boxes).any(axis=1)
        wh = clipped[:, 2:] - clipped[:, :2]
        # Degenerate boxes (under a pixel wide or tall) cannot be regressed to (log 0).
        keep = (wh >= 1).all(axis=1)
        ann_ids = np.array([a["id"] for a in annotations], dtype=np.int64)
        self._degenerate_ids = ann_ids[~keep].tolist()
        self._clipped_ids = ann_ids[keep & was_clipped].tolist()

        labels = np.array([self.label_of[a["category_id"]] for a in annotations], np.int64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool)
        area = np.array([a.get("area", w * h) for a, (w, h) in zip(annotations, xywh[:, 2:])],
                        dtype=np.float32)
        rows_of = {image_id: [] for image_id in self.coco.imgs}
        for row in np.flatnonzero(keep):
            rows_of[annotations[row]["image_id"]].append(row)
        self._kept = {}
        self._targets = {}
        for image_id, rows in rows_of.items():
            rows = np.array(rows, dtype=np.int64)
            self._kept[image_id] = [annotations[r] for r in rows]
            self._targets[image_id] = {
                "boxes": clipped[rows].astype(np.float32).reshape(-1, 4),
                "labels": labels[rows],
                "iscrowd": crowd[rows],
                "area": area[rows],
            }

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        """K + 1: the categories and the background (what a detector's head predicts)."""
        return len(self.category_ids) + 1

    def category_id(self, label: int) -> int:
        """The COCO category id of a contiguous label (1..K)."""
        if not 1 <= int(label) <= len(self.category_ids):
            raise ValueError(f"label {label} is outside 1..{len(self.category_ids)} "
                             "(0 is the background, which has no category id)")
        return self.category_ids[int(label) - 1]

    def label(self, category_id: int) -> int:
        """The contiguous label (1..K) of a COCO category id."""
        try:
            return self.label_of[int(category_id)]
        except KeyError:
            raise ValueError(f"category id {category_id} is not in {self.annotation_file} "
                             f"(ids: {self.category_ids})") from None

    def image_info(self, index: int) -> dict:
        """The json entry of item ``index`` (``id``, ``file_name``, ``width``, ``height``, …)."""
        return self.coco.imgs[self.ids[index]]

    def target(self, index: int) -> dict:
        """The target dict of item ``index`` (see the module docstring)."""
        image_id = self.ids[index]
        target = {key: value.copy() for key, value in self._targets[image_id].items()}
        target["image_id"] = image_id
        if self.with_masks:
            target["masks"] = self.masks(index)
        return target

    def masks(self, index: int) -> np.ndarray:
        """``(G, H, W)`` uint8 masks of item ``index``, in the order of its boxes."""
        from pycocotools import mask as mask_utils

        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        height, width = int(info["height"]), int(info["width"])
        masks = np.zeros((len(self._kept[image_id]), height, width), dtype=np.uint8)
        for g, a in enumerate(self._kept[image_id]):
            where = (f"{self.annotation_file}: annotation id {a['id']} (image id {image_id})")
            segmentation = a.get("segmentation")
            try:
                if isinstance(segmentation, list):  # polygons [[x0, y0, x1, y1, …], …]
                    if not segmentation or any(len(p) < 6 or len(p) % 2 for p in segmentation):
                        raise ValueError("a polygon needs at least 3 (x, y) points")
                    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
                elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
                    rle = mask_utils.frPyObjects(segmentation, *segmentation["size"])
                else:  # compressed RLE
                    rle = dict(segmentation)
                    if isinstance(rle["counts"], str):
                        rle["counts"] = rle["counts"].encode("ascii")
                mask = mask_utils.decode(rle)
            except Exception as error:  # pycocotools raises many kinds on bad input
                raise DataError(f"{where}: cannot decode its segmentation ({error}); fix or "
                                "remove the mask, or load with with_masks=False") from None
            if mask.shape != (height, width):
                raise DataError(f"{where}: its RLE mask is {mask.shape[0]}×{mask.shape[1]} "
                                f"(h×w) but the image is {height}×{width}; the 'size' of the "
                                "RLE must match the image")
            masks[g] = mask
        return masks

    def image_path(self, index: int) -> Path:
        """The file of item ``index``: its ``file_name`` inside :attr:`image_dir`."""
        return image_file(self.image_dir, self.image_info(index)["file_name"])

    def image(self, index: int) -> np.ndarray:
        """Item ``index``'s image, ``(H, W, 3)`` uint8, checked against the json's size."""
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_path(index)
        try:
            image = read_image(path)
        except FileNotFoundError:
            raise FileNotFoundError(self._missing(image_id, path)) from None
        except DataError as error:
            raise DataError(f"image id {image_id} ({self.annotation_file}): {error}") from None
        if image.shape[:2] != (info["height"], info["width"]):
            raise DataError(self._wrong_size(image_id, path, image.shape[1], image.shape[0]))
        return image

    def _missing(self, image_id, path) -> str:
        return (f"image id {image_id}: no such image file {path} (listed in "
                f"{self.annotation_file}); restore it, or remove the image from the json")

    def _wrong_size(self, image_id, path, width, height) -> str:
        info = self.coco.imgs[image_id]
        return (f"image id {image_id}: {path} decodes to {width}×{height} (w×h) but "
                f"{self.annotation_file} says {info['width']}×{info['height']}; the file was "
                "resized or replaced — restore the original or fix width/height in the json")

    def check_images(self, count: int | None = None, progress: bool = False) -> None:
        """Check the first ``count`` images (default all) from their headers, before any is used.

        Every file must exist, be a regular file Pillow recognises, and have
        the size the json gives it. All problems are gathered and raised
        together as one :class:`~minifpn.data.DataError` (or
        ``FileNotFoundError`` when every problem is a missing file), so one
        run of the check finds every bad file. Only headers are read: a
        thousand images take about a second.
        """
        from tqdm import tqdm

        count = len(self.ids) if count is None else min(count, len(self.ids))
        problems, missing = [], 0
        for index in tqdm(range(count), desc=f"checking {self.split} images", unit="img",
                          disable=not progress, mininterval=0.5):
            image_id = self.ids[index]
            path = self.image_path(index)
            try:
                width, height = image_header(path)
            except FileNotFoundError:
                problems.append(self._missing(image_id, path))
                missing += 1
                continue
            except DataError as error:
                problems.append(f"image id {image_id}: {error}")
                continue
            info = self.coco.imgs[image_id]
            if (height, width) != (info["height"], info["width"]):
                problems.append(self._wrong_size(image_id, path, width, height))
        if problems:
            shown = "\n  ".join(problems[:_SHOW_IDS])
            more = (f"\n  … and {len(problems) - _SHOW_IDS} more"
                    if len(problems) > _SHOW_IDS else "")
            error = FileNotFoundError if missing == len(problems) else DataError
            raise error(f"{len(problems)} of the {count} {self.split} images checked are not "
                        f"usable ({self.annotation_file}):\n  {shown}{more}")

    def __getitem__(self, index: int):
        return self.image(index), self.target(index)
