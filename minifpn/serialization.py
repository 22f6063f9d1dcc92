"""Saving and loading state dicts (and checkpoints) as ``.npz`` files.

A state dict — ``{"layer1.0.conv1.weight": array, ...}`` — is saved with its
own keys, so ``numpy.load("model.npz")`` alone gives it back. Nested
checkpoints (model + optimiser + schedule + config) are flattened with ``/``
between levels, and their non-array leaves (numbers, strings, lists) travel
as JSON inside the same file. Nothing is pickled, so loading a file can never
run code.

Writes are atomic (:func:`atomic_write`; :func:`write_json_atomic` for JSON
such as results and metrics): the file is written beside the target under a temporary
name, flushed to disk, then renamed over it. A crash mid-save leaves the old
file intact, never a half-written one (a process killed mid-write leaves its
temporary ``.NAME.<random>.tmp``, which the next training run in that folder
removes). A file whose table of contents was edited or damaged is refused
with a ``ValueError`` naming it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from minifpn import backend
from minifpn.autograd import raw

_META = "__minifpn_meta__"
#: The suffix of :func:`atomic_write`'s temporary files (``.NAME.<random>.tmp`` beside NAME).
TEMP_SUFFIX = ".tmp"


def _flatten(obj, prefix, arrays):
    """Arrays out into ``arrays`` (by path); everything else stays as JSON."""
    if isinstance(obj, dict):
        for key in obj:
            if not isinstance(key, str) or "/" in key:
                raise ValueError(f"save: keys must be strings without '/', got {key!r}")
        return {"dict": {k: _flatten(v, f"{prefix}{k}/", arrays) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return {"list": [_flatten(v, f"{prefix}{i}/", arrays) for i, v in enumerate(obj)]}
    data = raw(obj)  # Tensors and Parameters save their arrays
    if hasattr(data, "dtype") and hasattr(data, "shape") and not isinstance(data, np.generic):
        name = prefix[:-1]
        arrays[name] = backend.to_numpy(data)
        return {"array": name}
    if isinstance(obj, np.generic):
        obj = obj.item()
    json.dumps(obj)  # raises TypeError now for anything JSON cannot hold
    return {"value": obj}


class _DamagedTree(ValueError):
    """The JSON tree of a file does not describe its contents (hand-edited or damaged)."""


def _unflatten(node, arrays, where="the top level"):
    """Rebuild what :func:`_flatten` described; every node must be one well-formed kind."""
    kind = next(iter(node), None) if isinstance(node, dict) and len(node) == 1 else None
    if kind == "dict" and isinstance(node["dict"], dict):
        return {k: _unflatten(v, arrays, f"{k!r} in {where}") for k, v in node["dict"].items()}
    if kind == "list" and isinstance(node["list"], list):
        return [_unflatten(v, arrays, f"item {i} of {where}") for i, v in enumerate(node["list"])]
    if kind == "array":
        if node["array"] not in arrays:
            raise _DamagedTree(f"{where} refers to array {node['array']!r}, which is missing")
        return arrays[node["array"]]
    if kind == "value":
        return node["value"]
    raise _DamagedTree(f"{where} is a malformed entry {str(node)[:80]}")


def save(obj: dict, path) -> None:
    """Write a (nested) dict of arrays, Tensors, numbers and strings to ``path``.

    The write is atomic (temporary file + rename), so an existing file is
    either fully replaced or left untouched.
    """
    if not isinstance(obj, dict):
        raise TypeError(f"save expects a dict, got {type(obj).__name__}")
    arrays: dict = {}
    tree = _flatten(obj, "", arrays)
    arrays[_META] = np.array(json.dumps({"format": 1, "tree": tree}))
    with atomic_write(path, "wb") as f:
        _write_npz(f, arrays)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", overwrite: bool = True):
    """Write ``path`` through a temporary file beside it, renamed over it at the end.

    ``with atomic_write(path, "w") as f: ...`` — if the block raises (or the
    process dies), ``path`` keeps its previous content (or does not exist)
    and the temporary file is removed: never half a file. Used for
    checkpoints, JSON results and figures alike. Parent folders are created.

    With ``overwrite=False`` the file is put in place only if nothing is at
    ``path`` by then (a hard link, which fails if the name is taken, where
    the file system has them): ``FileExistsError`` otherwise, with nothing
    touched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TEMP_SUFFIX,
                               dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only
        if overwrite:
            os.replace(tmp, path)
        else:
            _place_new(tmp, path)
    except FileExistsError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    except OSError as error:  # a full disk, say: name the file, which the OS error does not
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if error.filename is not None or not error.errno:
            raise
        raise type(error)(error.errno, f"could not write {path}: {error.strerror}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _json_safe(value):
    """NaN → None (JSON ``null``), recursively; NumPy scalars → Python numbers."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json_atomic(path, obj) -> Path:
    """Write ``obj`` as strict JSON (NaN as ``null``) to ``path`` via a temp file + rename.

    A crash mid-write leaves the previous file (or none), never half a file.
    """
    path = Path(path)
    with atomic_write(path, "w") as f:
        json.dump(_json_safe(obj), f, allow_nan=False)
    return path


def _place_new(tmp: str, path: str) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists (then FileExistsError)."""
    try:
        os.link(tmp, path)  # atomic, and refuses an existing name
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "will not overwrite", path) from None
    except OSError:  # no hard links here: check, then rename (a narrow race remains)
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "will not overwrite", path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _write_npz(f, arrays: dict) -> None:
    """What ``np.savez`` writes — one ``NAME.npy`` per array in a zip — but
    without its keyword arguments, so a key may be called ``file`` too."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load(path) -> dict:
    """Read a file written by :func:`save` (or any ``.npz`` of arrays) as a dict.

    Arrays come back as NumPy arrays on the host; ``Module.load_state_dict``
    and ``Module.to`` put them where the model lives.
    """
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"{path} is not a readable .npz file ({type(e).__name__}: {e}); "
            f"it may be truncated or from another program — save it again"
        ) from None
    meta = arrays.pop(_META, None)
    if meta is None:  # a plain .npz, e.g. converted weights
        return arrays
    try:
        description = json.loads(str(meta))
        if not isinstance(description, dict) or "tree" not in description:
            raise _DamagedTree("its description has no 'tree'")
        return _unflatten(description["tree"], arrays)
    except (json.JSONDecodeError, RecursionError, _DamagedTree) as error:
        problem = "is nested too deeply" if isinstance(error, RecursionError) else error
        raise ValueError(f"{path} is damaged: its table of contents ({_META}) {problem}; "
                         "it was edited or written by another program — use an intact copy"
                         ) from None
