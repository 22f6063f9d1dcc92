"""Image files: where a dataset's images are, checking them cheaply, and reading them.

Three functions, used by every reader of images in minifpn (datasets,
training, evaluation, ``predict``, ``data subset``):

* :func:`image_file` — the one place a dataset's ``file_name`` becomes a
  path. It is taken relative to the split's image folder and must stay
  inside it: an absolute name, a ``..`` step, an empty name or a NUL byte is
  refused with a :class:`~minifpn.data.DataError` (a dataset must never make
  minifpn read, or ``data subset`` write, a file elsewhere). Symbolic links
  *inside* the folder are followed: ``data subset`` makes them.
* :func:`image_header` — the size from the file's header, without decoding
  the pixels: fast enough to check every image of a dataset before training.
* :func:`read_image` — the pixels as ``(H, W, 3)`` uint8 RGB, from any mode
  Pillow opens: 16-bit greyscale (scaled, 65535 → 255), 32-bit integer (read
  as 16-bit), floating point (read as intensities in [0, 1]), palette,
  CMYK, with alpha (dropped), … ``max_side`` reads a large image directly
  at a smaller size (JPEGs are decoded at 1/2, 1/4 or 1/8 scale).

Anything that is not a regular file (a folder, a named pipe — which would
block a reader forever —, a device) is refused before it is opened, as is
an image over Pillow's decompression-bomb limit.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from minifpn.data import DataError

#: Modes holding more than 8 bits per sample, and how each is brought to 0..255.
#: 16-bit: x / 257 (65535 → 255, exactly). "I" (32-bit integer) is what older
#: Pillow versions made of 16-bit PNGs, so it is read as 16-bit too.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
SIXTEEN_BIT_MAX = 65535


def image_file(folder, file_name) -> Path:
    """``folder / file_name``, refusing a ``file_name`` that would leave ``folder``.

    Raises :class:`~minifpn.data.DataError` saying what is wrong with the
    name; callers add which image it belongs to. The check is on the name
    alone (no file is touched), so it also guards paths about to be written.
    """
    problem = _file_name_problem(file_name)
    if problem:
        raise DataError(f"file_name {file_name!r} {problem}")
    return Path(folder) / file_name


def _file_name_problem(file_name) -> str | None:
    if not isinstance(file_name, str) or not file_name.strip():
        return "is not a file name"
    if "\0" in file_name:
        return "holds a NUL byte"
    posix, windows = PurePosixPath(file_name), PureWindowsPath(file_name)
    if posix.is_absolute() or windows.drive or windows.root:
        return "is an absolute path; it must be relative to the image folder"
    if ".." in posix.parts:
        return "climbs out of the image folder with '..'"
    if posix.parts in ((), (".",)):
        return "names the image folder itself, not a file"
    return None


def _check_regular_file(path: Path) -> None:
    """FileNotFoundError if missing; DataError for a folder, named pipe, socket or device."""
    try:
        mode = os.stat(path).st_mode  # follows symbolic links
    except FileNotFoundError:
        raise FileNotFoundError(f"no such image: {path}") from None
    except OSError as error:
        raise DataError(f"cannot read image {path}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode)
                else "not a regular file")
        raise DataError(f"{path} is {kind}, not an image file; replace it with the image")


def _open(path: Path):
    """``PIL.Image.open`` (header only) with every failure a clear error naming ``path``."""
    from PIL import Image

    _check_regular_file(path)
    try:
        with warnings.catch_warnings():  # over the warning limit is fine: we read on purpose
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError:
        raise DataError(
            f"{path} is larger than Pillow's safety limit of {2 * Image.MAX_IMAGE_PIXELS:,} "
            "pixels (a guard against decompression bombs); reduce it first, e.g. "
            "`python3 -c \"from PIL import Image; Image.MAX_IMAGE_PIXELS = None; "
            "im = Image.open('BIG'); im.thumbnail((4000, 4000)); im.save('SMALL')\"`"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:  # PIL raises all three on bad files
        raise _unreadable(path, error) from None


def _unreadable(path, error) -> DataError:
    return DataError(
        f"cannot read image {path}: {error}. The file is corrupt or not an image: "
        "replace it with a good copy (or remove it and its entry from the annotations)"
    )


def image_header(path) -> tuple:
    """``(width, height)`` of an image file from its header alone (no pixel decoding).

    Raises what :func:`read_image` raises for a missing, irregular or
    unrecognisable file, so a dataset can be checked up front in a fraction
    of the time decoding it would take. (A file whose header is fine but
    whose pixels are truncated is only found when it is read.)
    """
    path = Path(path)
    with _open(path) as image:
        return image.size


def read_image(path, max_side: int | None = None) -> np.ndarray:
    """An image file as an ``(H, W, 3)`` uint8 RGB array (see the module docstring for modes).

    Args:
        path: the file.
        max_side: if given and the image's longer side is above it, the image
            is reduced (aspect kept, antialiased) so that it is exactly this
            long — read directly at a smaller scale where the format allows
            (JPEG), so a huge photo never exists at full size in memory.

    Raises ``FileNotFoundError`` for a missing file and :class:`DataError` for
    one that is not a regular file, cannot be decoded (corrupt, truncated,
    not an image), is over the decompression-bomb limit, or holds values
    outside the range of its mode.
    """
    from PIL import Image

    path = Path(path)
    with _open(path) as image:
        try:
            if max_side is not None:
                image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale
            rgb = _to_rgb8(image, path)
            if max_side is not None and max(rgb.size) > max_side:
                rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
            return np.asarray(rgb)
        except (OSError, SyntaxError, ValueError) as error:
            if isinstance(error, DataError):
                raise
            raise _unreadable(path, error) from None


def _to_rgb8(image, path):
    """A PIL image of any mode → an RGB PIL image with 8 bits per channel."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT_MODES or image.mode == "F":
        values = np.asarray(image)
        if image.mode == "F":
            scale, top, what = 255.0, 1.0, "floating-point intensities in [0, 1]"
        else:
            scale, top, what = 255.0 / SIXTEEN_BIT_MAX, SIXTEEN_BIT_MAX, "16-bit (0..65535)"
        if values.size and not (np.isfinite(values).all() and values.min() >= 0
                                and values.max() <= top):
            raise DataError(
                f"cannot read image {path}: its {image.mode!r} pixels range over "
                f"{values.min()}..{values.max()}, but minifpn reads this mode as {what}; "
                "convert it to an 8-bit RGB image"
            )
        grey = np.rint(values.astype(np.float32) * scale).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    if image.mode == "La":  # premultiplied alpha: Pillow converts it only to LA
        image = image.convert("LA")
    return image.convert("RGB")
