"""A COCO detection dataset on pycocotools.

Shape shorthand:  G objects in an image;  K = 80 COCO categories.

COCO names its 80 categories with ids between 1 and 90 (11 ids are unused),
so the detector's class index is a *contiguous* label 1..K (0 is background)
mapped from and back to the category id. Each item is an image and a target
dict in torchvision's format, boxes converted from COCO's ``[x, y, w, h]``
to ``(x1, y1, x2, y2)``::

    image   (H, W, 3) uint8 RGB
    target  {"boxes": (G, 4) float32, "labels": (G,) int64 (1..K),
             "iscrowd": (G,) bool, "image_id": int, "area": (G,) float32}

Crowd annotations (``iscrowd = 1``: one region around many objects) are kept
and flagged: they must not be learned as objects, but anchors inside them
must not be learned as background either.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from minifpn.data import read_image

#: The two folder layouts we accept: coco-mini's and the official download's.
LAYOUTS = (
    ("annotations/instances_{split}.json", "{split}"),
    ("annotations/instances_{split}2017.json", "{split}2017"),
)


def locate_split(root, split: str):
    """``(annotation json, image folder)`` of ``split`` ("train" / "val") under ``root``."""
    root = Path(root)
    for annotation, images in LAYOUTS:
        json_path = root / annotation.format(split=split)
        if json_path.is_file():
            return json_path, root / images.format(split=split)
    tried = ", ".join(str(root / a.format(split=split)) for a, _ in LAYOUTS)
    raise FileNotFoundError(f"no COCO '{split}' annotations under {root} (looked for {tried})")


class CocoDetection:
    """Images and box targets of one COCO split.

    Args:
        root: a folder in the coco-mini layout (``annotations/instances_val.json``,
            ``val/``) or the official one (``instances_val2017.json``, ``val2017/``).
        split: ``"train"`` or ``"val"``.
        skip_empty: leave out images without any annotation (for training).
    """

    def __init__(self, root, split: str = "val", skip_empty: bool = False):
        from pycocotools.coco import COCO

        self.annotation_file, self.image_dir = locate_split(root, split)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco = COCO(str(self.annotation_file))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{self.annotation_file} is not valid JSON ({error}); re-download or rebuild it"
            ) from None
        self.category_ids = sorted(self.coco.getCatIds())
        self.label_of = {cat: i + 1 for i, cat in enumerate(self.category_ids)}
        self.class_names = ["__background__"] + [
            self.coco.cats[c]["name"] for c in self.category_ids
        ]
        ids = sorted(self.coco.getImgIds())
        if skip_empty:
            ids = [i for i in ids if self.coco.getAnnIds(imgIds=i)]
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def category_id(self, label: int) -> int:
        """The COCO category id of a contiguous label (1..K)."""
        return self.category_ids[label - 1]

    def target(self, index: int) -> dict:
        """The target dict of item ``index`` (see the module docstring)."""
        image_id = self.ids[index]
        annotations = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
        # Degenerate boxes (under a pixel wide or tall) cannot be regressed to (log 0).
        annotations = [a for a in annotations if a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
        boxes = np.array([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # (x, y, w, h) → (x1, y1, x2, y2)
        return {
            "boxes": boxes,
            "labels": np.array([self.label_of[a["category_id"]] for a in annotations],
                               dtype=np.int64),
            "iscrowd": np.array([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool),
            "area": np.array([a["area"] for a in annotations], dtype=np.float32),
            "image_id": image_id,
        }

    def image(self, index: int) -> np.ndarray:
        info = self.coco.imgs[self.ids[index]]
        return read_image(self.image_dir / info["file_name"])

    def __getitem__(self, index: int):
        return self.image(index), self.target(index)
