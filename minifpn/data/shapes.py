"""A synthetic detection dataset: coloured circles, squares and triangles.

For learners without COCO — and for a first training run that converges in
minutes — :func:`generate_shapes` writes a dataset in the coco-mini layout,
readable by :class:`~minifpn.data.coco.CocoDetection` and ``pycocotools``::

    out_dir/
      annotations/instances_train.json     images, annotations, categories
      annotations/instances_val.json
      train/000000000001.png …             (image_size × image_size RGB)
      val/…
      .minifpn-shapes.json                 the parameters; written last

How the images are made (each image from its own seeded generator, so the
files are byte-identical for the same ``seed``):

* **Background**: a random base colour, a smooth colour field, faint stripes
  and pixel noise — texture for the network to learn to ignore.
* **Objects**: 1–``max_objects`` per image, each a circle (a regular 32–64-gon),
  a square or an equilateral triangle, randomly rotated, in a random solid
  colour far from the background under it and from the image's other objects.
* **Sizes**: the longer side of each object's box is drawn log-uniformly
  between ``min_size`` (8 px) and ``max_size`` (250 px, at most the image
  size minus 2), so small, medium and large objects — and so every pyramid
  level — are represented on a log scale. Objects lie wholly inside the
  image; big ones are placed first. An image has room for only one or two
  big objects, so those are a little rarer than the law says: with the
  defaults about 21 % of objects are under 16 px and 16 % over 128 px
  (log-uniform: 20 %, 19 %).
* **Overlap**: later objects are painted over earlier ones, but a placement
  is rejected if it would hide more than ``max_occlusion`` (5 %) of any
  earlier object; an object that finds no place in 30 tries is left out.
  The polygons are therefore exact for the pixels painted, up to that 5 %
  hidden by objects in front (``max_occlusion=0`` gives no overlap at all).
* **Annotations**: the polygon (2-decimal coordinates), and ``area`` and
  ``bbox`` computed from it by pycocotools — the painted pixels *are* the
  pycocotools rasterisation of the stored polygon, and ``bbox`` is the box
  of those pixels (a triangle's sub-pixel tips are neither painted nor
  boxed). ``iscrowd`` is 0; an extra ``"color"`` field records the
  object's RGB.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from minifpn.data import DataError, atomic_directory

#: Bumped whenever the generator's output changes (it names the cache folder).
VERSION = 1
#: The categories, ids 1, 2, 3.
CLASSES = ("circle", "square", "triangle")
#: The file written last: the folder is complete when it exists.
MARKER = ".minifpn-shapes.json"
#: The default dataset of ``minifpn train --data shapes``.
DEFAULTS = {"num_train": 400, "num_val": 100, "seed": 0, "image_size": 256}
#: Environment variable naming minifpn's cache folder (else ~/.cache/minifpn).
CACHE_ENV = "MINIFPN_CACHE"

_PLACEMENT_TRIES = 30
_COLOUR_TRIES = 30
_MIN_COLOUR_DISTANCE = 60.0  # Euclidean, in 0..255 RGB


def _unit_polygon(rng, shape: str) -> np.ndarray:
    """``(P, 2)`` vertices of a randomly rotated shape centred at 0 (any scale)."""
    if shape == "circle":
        count = int(rng.integers(32, 65))
        angles = rng.uniform(0, 2 * math.pi) + np.arange(count) * (2 * math.pi / count)
    elif shape == "square":
        angles = rng.uniform(0, math.pi / 2) + np.arange(4) * (math.pi / 2)
    else:  # an equilateral triangle
        angles = rng.uniform(0, 2 * math.pi) + np.arange(3) * (2 * math.pi / 3)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _background(rng, size: int) -> np.ndarray:
    """``(S, S, 3)`` float32: base colour + smooth colour field + faint stripes + noise."""
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    grid = rng.uniform(-50, 50, size=(5, 5, 3)).astype(np.float32)
    # bilinear upsampling of the 5×5 grid, as two matrix products with W (S, 5)
    t = np.linspace(0, 4, size, dtype=np.float32)
    i0 = np.minimum(t.astype(int), 3)
    weights = np.zeros((size, 5), np.float32)
    weights[np.arange(size), i0] = 1 - (t - i0)
    weights[np.arange(size), i0 + 1] = t - i0
    field = (weights @ grid.reshape(5, 15)).reshape(size, 5, 3)  # rows interpolated
    field = (weights @ field.transpose(1, 0, 2).reshape(5, -1)).reshape(size, size, 3)
    field = field.transpose(1, 0, 2)  # then columns
    angle, period = rng.uniform(0, math.pi), rng.uniform(6, 30)
    coords = np.arange(size, dtype=np.float32)
    phase = (coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle)) / period
    stripes = 10 * np.sin(2 * math.pi * phase)
    noise = rng.integers(-3, 4, size=(size, size), dtype=np.int16)  # grey pixel noise
    background = field + (stripes + noise)[..., None]
    background += base
    return background


def _rasterise(polygon: np.ndarray, height: int, width: int):
    """The pycocotools RLE and ``(height, width)`` bool mask of a ``(P, 2)`` polygon."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.frPyObjects([polygon.ravel().tolist()], height, width)[0]
    return rle, mask_utils.decode(rle).astype(bool)


def _pick_colour(rng, under: np.ndarray, others: list) -> np.ndarray:
    """A random RGB far from the background pixels ``under`` it and from ``others``."""
    reference = np.concatenate([under.reshape(-1, 3)[::7],  # a sample is plenty
                                np.array(others, np.float32).reshape(-1, 3)])
    best, best_distance = None, -1.0
    for _ in range(_COLOUR_TRIES):
        colour = rng.integers(0, 256, size=3)
        distance = np.sqrt(((reference - colour) ** 2).sum(axis=1)).min()
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= _MIN_COLOUR_DISTANCE:
            break
    return best.astype(np.uint8)


def _make_image(rng, size: int, min_size: float, max_size: float, max_objects: int,
                max_occlusion: float):
    """One image: ``(S, S, 3)`` uint8 pixels and its objects (category, polygon, RLE, colour)."""
    from pycocotools import mask as mask_utils

    background = _background(rng, size)
    pixels = (np.clip(background, 0, 255) + 0.5).astype(np.uint8)  # rounded
    owner = np.full((size, size), -1, dtype=np.int32)  # which object shows at each pixel
    count = int(rng.integers(1, max_objects + 1))
    sizes = np.sort(np.exp(rng.uniform(math.log(min_size), math.log(max_size), count)))[::-1]
    objects = []
    full_area = np.zeros(0, np.int64)  # pixels of each object's polygon
    visible = np.zeros(0, np.int64)  # … of which still in view
    for extent in sizes:
        category = int(rng.integers(len(CLASSES)))
        for _ in range(_PLACEMENT_TRIES):
            points = _unit_polygon(rng, CLASSES[category])
            points *= extent / (points.max(0) - points.min(0)).max()
            points -= points.min(0)
            points += rng.uniform(0, size - points.max(0))  # wholly inside the image
            polygon = np.clip(np.round(points, 2), 0, size)
            # the rejection test runs in the polygon's own window (cheap for small objects)
            x0, y0 = np.floor(polygon.min(0)).astype(int)
            x1, y1 = np.ceil(polygon.max(0)).astype(int)
            _, local = _rasterise(polygon - (x0, y0), y1 - y0, x1 - x0)
            if local.sum() < 4:
                continue
            window = owner[y0:y1, x0:x1]
            hidden = np.bincount(window[local & (window >= 0)], minlength=len(objects))
            if ((visible - hidden) < (1 - max_occlusion) * full_area).any():
                continue
            # paint the exact full-image rasterisation, working inside a window around it
            rle, mask = _rasterise(polygon, size, size)
            area = int(mask_utils.area(rle))
            x0, y0 = max(x0 - 1, 0), max(y0 - 1, 0)
            box = (slice(y0, y1 + 1), slice(x0, x1 + 1))
            local = mask[box]
            if int(local.sum()) != area:  # never expected: fall back to the whole image
                box, local = (slice(None), slice(None)), mask
            window, paint = owner[box], pixels[box]
            hidden = np.bincount(window[local & (window >= 0)], minlength=len(objects))
            colour = _pick_colour(rng, background[box][local], [o["color"] for o in objects])
            paint[local] = colour
            window[local] = len(objects)
            visible = np.append(visible - hidden, area)
            full_area = np.append(full_area, area)
            objects.append({"category_id": category + 1, "polygon": polygon, "rle": rle,
                            "color": colour.tolist()})
            break
    return pixels, objects


def _check_sizes(num_train, num_val, image_size, min_size, max_size, max_objects,
                 max_occlusion):
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a whole number ≥ 0, got {value}")
    if num_train + num_val == 0:
        raise ValueError("num_train and num_val are both 0: nothing to generate")
    if int(image_size) != image_size or image_size < 16:
        raise ValueError(f"image_size must be a whole number ≥ 16, got {image_size}")
    if not 1 <= min_size <= max_size:
        raise ValueError(f"need 1 ≤ min_size ≤ max_size, got {min_size} and {max_size}")
    if int(max_objects) != max_objects or max_objects < 1:
        raise ValueError(f"max_objects must be a whole number ≥ 1, got {max_objects}")
    if not 0 <= max_occlusion < 1:
        raise ValueError(f"max_occlusion must be in [0, 1), got {max_occlusion}")


def generate_shapes(out_dir, num_train: int = 400, num_val: int = 100, seed: int = 0,
                    image_size: int = 256, *, min_size: float = 8, max_size: float = 250,
                    max_objects: int = 6, max_occlusion: float = 0.05,
                    overwrite: bool = False, progress: bool = True,
                    workers: int | None = None) -> Path:
    """Write the synthetic shapes dataset (see the module docstring) to ``out_dir``.

    Args:
        out_dir: the folder to create; a non-empty one is refused unless ``overwrite``.
        num_train, num_val: images per split (ids 1.. for train, then val's).
        seed: the same seed gives byte-identical files.
        image_size: square images of this side, in pixels.
        min_size, max_size: the range of object sizes (longer box side, pixels).
        max_objects: at most this many objects per image (at least one).
        max_occlusion: the largest fraction of an object later ones may hide.
        overwrite: replace a non-empty ``out_dir`` (only once the new one is complete).
        progress: show a progress bar.
        workers: threads rendering images (default: up to 8, one per CPU core);
            the output does not depend on it.

    Returns the folder (absolute). It is written in a temporary sibling folder
    and moved into place at the end, so an interrupted run leaves nothing.
    """
    summary = _generate(out_dir, num_train, num_val, seed, image_size, min_size, max_size,
                        max_objects, max_occlusion, overwrite, progress, workers)
    return summary["root"]


def _render(path: Path, seed: int, split_code: int, index: int, options: dict) -> list:
    """Make image ``index`` of a split, write its PNG to ``path``; its objects' annotations."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng([seed, split_code, index])  # one stream per image
    pixels, objects = _make_image(rng, **options)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)
    return [{"category_id": obj["category_id"],
             "segmentation": [obj["polygon"].ravel().tolist()],
             "area": float(mask_utils.area(obj["rle"])),
             "bbox": [float(v) for v in mask_utils.toBbox(obj["rle"])],
             "iscrowd": 0, "color": obj["color"]} for obj in objects]


def _generate(out_dir, num_train, num_val, seed, image_size, min_size, max_size,
              max_objects, max_occlusion, overwrite, progress, workers=None) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    _check_sizes(num_train, num_val, image_size, min_size, max_size, max_objects,
                 max_occlusion)
    num_train, num_val, image_size, seed = int(num_train), int(num_val), int(image_size), int(seed)
    max_size = min(max_size, image_size - 2)
    min_size = min(min_size, max_size)
    options = {"size": image_size, "min_size": min_size, "max_size": max_size,
               "max_objects": int(max_objects), "max_occlusion": max_occlusion}
    params = {"generator": "minifpn.data.shapes", "version": VERSION, "seed": seed,
              "num_train": num_train, "num_val": num_val, "image_size": image_size,
              "min_size": min_size, "max_size": max_size, "max_objects": int(max_objects),
              "max_occlusion": max_occlusion}
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"}
                  for i, name in enumerate(CLASSES)]
    out_dir = Path(out_dir).expanduser().absolute()
    counts = {"root": out_dir, "images": {}, "objects": {},
              "per_class": dict.fromkeys(CLASSES, 0)}
    # Threads: NumPy, zlib (PNG) and file writes release the GIL for most of the work.
    workers = workers or min(8, os.cpu_count() or 1)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp, \
            ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=num_train + num_val, desc="shapes", unit="img", disable=not progress,
                 mininterval=0.5) as bar:
        (tmp / "annotations").mkdir()
        image_id = annotation_id = 0
        for split_code, (split, count) in enumerate((("train", num_train), ("val", num_val))):
            (tmp / split).mkdir()
            ids = range(image_id + 1, image_id + count + 1)
            names = [f"{i:012d}.png" for i in ids]
            jobs = [pool.submit(_render, tmp / split / name, seed, split_code, index, options)
                    for index, name in enumerate(names)]
            images, annotations = [], []
            try:
                for image_id, name, job in zip(ids, names, jobs):  # in order: deterministic
                    images.append({"id": image_id, "file_name": name,
                                   "width": image_size, "height": image_size})
                    for annotation in job.result():
                        annotation_id += 1
                        annotations.append({"id": annotation_id, "image_id": image_id,
                                            **annotation})
                        counts["per_class"][CLASSES[annotation["category_id"] - 1]] += 1
                    bar.update()
            except BaseException:
                for job in jobs:
                    job.cancel()
                raise
            data = {"info": {"description": "minifpn synthetic shapes", **params},
                    "licenses": [], "images": images, "annotations": annotations,
                    "categories": categories}
            with open(tmp / "annotations" / f"instances_{split}.json", "w") as f:
                json.dump(data, f)
            counts["images"][split] = len(images)
            counts["objects"][split] = len(annotations)
        with open(tmp / MARKER, "w") as f:  # last: its presence means "complete"
            json.dump(params, f, indent=1)
    return counts


def default_cache_dir() -> Path:
    """``$MINIFPN_CACHE``, else ``$XDG_CACHE_HOME/minifpn``, else ``~/.cache/minifpn``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "minifpn"


def _is_complete(root: Path, params: dict) -> bool:
    try:
        with open(root / MARKER) as f:
            written = json.load(f)
    except (OSError, ValueError):
        return False
    return all(written.get(k) == v for k, v in params.items())


def shapes_root(cache_dir=None, num_train: int = DEFAULTS["num_train"],
                num_val: int = DEFAULTS["num_val"], seed: int = DEFAULTS["seed"],
                image_size: int = DEFAULTS["image_size"], progress: bool = True) -> Path:
    """The embedded shapes dataset (``minifpn train --data shapes``), generated once.

    It lives in ``cache_dir`` (default :func:`default_cache_dir`) as
    ``shapes-v1-seed0`` (other sizes add a suffix), and is reused while its
    marker file says it is complete and was made with these parameters;
    anything else found there (an older version, a partial copy) is replaced.
    """
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = f"shapes-v{VERSION}-seed{seed}"
    if (num_train, num_val, image_size) != (DEFAULTS["num_train"], DEFAULTS["num_val"],
                                            DEFAULTS["image_size"]):
        name += f"-{num_train}x{num_val}-{image_size}px"
    root = (base / name).absolute()
    wanted = {"version": VERSION, "seed": seed, "num_train": num_train, "num_val": num_val,
              "image_size": image_size}
    if _is_complete(root, wanted):
        return root
    if progress:
        print(f"generating the synthetic shapes dataset into {root} (once; reused afterwards)")
    try:
        generate_shapes(root, num_train=num_train, num_val=num_val, seed=seed,
                        image_size=image_size, overwrite=root.exists(), progress=progress)
    except DataError:
        if not _is_complete(root, wanted):  # not another process finishing first
            raise
    return root
