"""Where the data lives, reading images, and the data tools.

The development data is a COCO 2017 subset, ``coco-mini``: 449 train / 112
val images with official annotations, laid out as
``annotations/instances_{train,val}.json``, ``train/``, ``val/``. It is found
(in this order) at ``$MINIFPN_DATA``, or at ``../shared/data/coco-mini``
beside the repository checkout. It is never copied into the repository.

Without COCO, :func:`minifpn.data.shapes.generate_shapes` writes a synthetic
dataset in the same layout (``minifpn data shapes``), and
:func:`minifpn.data.subset.make_subset` carves a small one out of a full COCO
download (``minifpn data subset``). The submodules:

* :mod:`minifpn.data.images` — image files: paths kept inside the dataset, header checks,
  :func:`~minifpn.data.images.read_image` for every pixel format;
* :mod:`minifpn.data.coco` — :class:`~minifpn.data.coco.CocoDetection`, the dataset;
* :mod:`minifpn.data.shapes` — the synthetic "shapes" dataset;
* :mod:`minifpn.data.subset` — category subsets of COCO;
* :mod:`minifpn.data.transforms` — horizontal flips of images, boxes and masks;
* :mod:`minifpn.data.cli` — the ``minifpn data …`` commands.

Every problem with the data itself (a json that does not parse, an unknown
category, a corrupt image, …) is a :class:`DataError` naming the file and id
and saying what to do; a missing file is a ``FileNotFoundError``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

#: Environment variable naming a COCO-layout data folder.
DATA_ENV = "MINIFPN_DATA"

_REPO_ROOT = Path(__file__).resolve().parents[2]


class DataError(ValueError):
    """Bad input data: the message names the file (and image / annotation id) and the fix."""


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
        f"{_REPO_ROOT.parent / 'shared' / 'data' / 'coco-mini'}. Without COCO, "
        "`minifpn data shapes --out DIR` writes a synthetic dataset in the same layout."
    )


def resolve_data(data: str) -> Path:
    """``--data``'s folder: ``"shapes"`` (generated on first use), ``"coco-mini"``, or a path."""
    if data == "shapes":
        from minifpn.data.shapes import shapes_root  # here: minifpn.data.shapes imports this file

        return Path(shapes_root())
    if data in ("coco-mini", "coco"):
        root = find_coco_mini()
        if root is None:
            raise FileNotFoundError(how_to_get_data())
        return root
    root = Path(os.path.expanduser(data))
    if not root.is_dir():
        raise FileNotFoundError(
            f"--data {data}: no such folder. Give a COCO-layout folder, 'shapes', or "
            f"'coco-mini' (or set {DATA_ENV})"
        )
    return root


def read_json(path):
    """A JSON file's content; a :class:`DataError` naming the file if it does not parse."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON ({error}); re-download or rebuild it") from None
    except RecursionError:  # nesting deeper than Python's recursion limit
        raise DataError(f"{path} is nested too deeply to be a COCO file; rebuild it") from None


@contextlib.contextmanager
def atomic_directory(out_dir, overwrite: bool = False):
    """Build a folder in a temporary sibling, then move it to ``out_dir`` in one step.

    Yields the temporary folder to write into. On success it replaces
    ``out_dir``; on any error (Ctrl-C included) it is deleted and ``out_dir``
    is left exactly as it was, so a failed run never leaves anything
    half-written. A non-empty ``out_dir`` is refused (:class:`DataError`)
    unless ``overwrite`` is true; it is then replaced only once the new
    folder is complete.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    _check_replaceable(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        _check_replaceable(out_dir, overwrite)  # someone may have written there meanwhile
        if out_dir.exists() and overwrite and any(out_dir.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old",
                                        dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out_dir.exists():
                out_dir.rmdir()  # empty
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_replaceable(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} exists and is not a folder; choose another output folder")
    if out_dir.is_dir() and not overwrite and any(out_dir.iterdir()):
        raise DataError(
            f"{out_dir} is not empty; choose another output folder, or pass overwrite=True "
            "(--overwrite) to replace it"
        )


def add_data_commands(subparsers):
    """Register ``minifpn data shapes`` and ``data subset`` (see :mod:`minifpn.data.cli`)."""
    from minifpn.data.cli import add_data_commands as add

    return add(subparsers)


_LAZY = {
    "read_image": "minifpn.data.images",
    "image_header": "minifpn.data.images",
    "image_file": "minifpn.data.images",
    "CocoDetection": "minifpn.data.coco",
    "DatasetReport": "minifpn.data.coco",
    "generate_shapes": "minifpn.data.shapes",
    "shapes_root": "minifpn.data.shapes",
    "make_subset": "minifpn.data.subset",
    "horizontal_flip": "minifpn.data.transforms",
    "random_horizontal_flip": "minifpn.data.transforms",
}


def __getattr__(name):  # lazy re-exports: importing minifpn.data stays light
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
