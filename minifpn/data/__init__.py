"""Where the data lives, and reading images.

The development data is a COCO 2017 subset, ``coco-mini``: 449 train / 112
val images with official annotations, laid out as
``annotations/instances_{train,val}.json``, ``train/``, ``val/``. It is found
(in this order) at ``$MINIFPN_DATA``, or at ``../shared/data/coco-mini``
beside the repository checkout. It is never copied into the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: Environment variable naming a COCO-layout data folder.
DATA_ENV = "MINIFPN_DATA"

_REPO_ROOT = Path(__file__).resolve().parents[2]


def find_coco_mini() -> Path | None:
    """The coco-mini folder if it can be found, else None (see the module docstring)."""
    candidates = [os.environ.get(DATA_ENV), _REPO_ROOT.parent / "shared" / "data" / "coco-mini"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "annotations").is_dir():
            return Path(candidate)
    return None


def how_to_get_data() -> str:
    """A one-paragraph explanation for learners who have no COCO data."""
    return (
        "No COCO data found. Set MINIFPN_DATA to a folder with annotations/instances_val.json "
        "and val/ (or annotations/instances_val2017.json and val2017/ from a full COCO "
        "download: https://cocodataset.org/#download), or place coco-mini at "
        f"{_REPO_ROOT.parent / 'shared' / 'data' / 'coco-mini'}."
    )


def read_image(path) -> np.ndarray:
    """An image file as an ``(H, W, 3)`` uint8 RGB array (grayscale is expanded)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no such image: {path}") from None
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error}") from None
