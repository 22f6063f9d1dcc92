"""The run folder guard: one process per run, never someone else's folder, nothing half-made.

A training run owns its ``--out`` folder. :class:`RunFolder` makes that true:

* **Only minifpn runs.** A run folder is marked by :data:`MARKER`, written
  first. A new run needs a folder that does not exist or is empty; a
  non-empty folder without the marker (a folder of the user's) is refused
  and not touched, and one with it is an existing run (``--resume`` it).
* **One process at a time.** The marker is also the lock: it is held with
  ``fcntl.flock`` for the life of the run, so a second ``minifpn train``
  (or ``--resume``) on the same folder stops at once, naming the process
  that holds it. The operating system releases the lock when the holder
  exits in any way — a crash or ``kill -9`` included — so a lock is never
  stale.
* **No debris.** Under the lock, temporary files left by a write that was
  killed halfway (``.checkpoint.npz.<random>.tmp``, see
  :func:`minifpn.serialization.atomic_write`) are removed; and a new run
  that fails before finishing its first iteration removes what it wrote
  (and the folder, if it made it) with :meth:`RunFolder.discard`.

Use::

    with RunFolder("runs/x", resume=False) as run:
        ...write into run.path...
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from minifpn.serialization import TEMP_SUFFIX

#: Marks a folder as a minifpn run, and is the file locked while a process trains in it.
MARKER = ".minifpn-run"
#: What a new run writes before its first iteration (removed again by ``discard``).
START_FILES = ("config.json", "metrics.jsonl")
#: A run folder made before the marker existed is recognised by its checkpoint.
_LEGACY_SIGN = "checkpoint.npz"


class RunFolderOfRankZero:
    """A data-parallel run's folder as the ranks other than 0 see it: they write nothing.

    Rank 0 holds the :class:`RunFolder` (lock, checks, clean-up) for all of
    them; this has the same ``path`` and ``resume``, and does nothing.
    """

    def __init__(self, path, resume: bool = False):
        self.path, self.resume = Path(path), resume

    def __enter__(self) -> RunFolderOfRankZero:
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def discard(self) -> None:
        """Nothing to remove: this rank made nothing."""


class RunFolderBusy(RuntimeError):
    """Another process is training in this run folder right now."""


class RunFolder:
    """Exclusive use of a run folder for one training run (a context manager).

    Args:
        path: the run folder (``--out``).
        resume: continue the run there (it must be one) instead of starting
            a new one (the folder must then be new or empty).

    Raises (on entering):
        FileExistsError: a new run, but the folder holds a run already, or
            files that are not a minifpn run's, or ``path`` is a file.
        FileNotFoundError: ``resume`` but there is no run there.
        RunFolderBusy: another process holds the folder.
    """

    def __init__(self, path, resume: bool = False):
        self.path = Path(path)
        self.resume = resume
        self._fd = None
        self._created_folder = False
        self._created_marker = False

    # -- entering --------------------------------------------------------------------
    def __enter__(self) -> RunFolder:
        path = self.path
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"--out {path} is a file, not a folder; choose a folder")
        if not self.resume and path.is_dir() and not self.is_run(path) and any(path.iterdir()):
            raise FileExistsError(
                f"--out {path} is not empty and is not a minifpn run folder (it has no "
                f"{MARKER}); nothing was written to it. Choose a new or empty folder"
            )
        if self.resume and not self.is_run(path):
            raise FileNotFoundError(f"no minifpn run to resume in {path} (no {MARKER} or "
                                    f"checkpoint there); start one with `minifpn train --out "
                                    f"{path}`")
        self._created_folder = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            if not self.resume and not self._created_marker:
                raise FileExistsError(
                    f"{path} already holds a training run; continue it with --resume, or "
                    "choose another --out"
                )
            self._remove_stray_temporaries()
        except BaseException:
            self._unlock()
            raise
        return self

    @staticmethod
    def is_run(path) -> bool:
        """Whether ``path`` is a minifpn run folder (its marker, or an older run's checkpoint)."""
        path = Path(path)
        return (path / MARKER).exists() or (path / _LEGACY_SIGN).is_file()

    def _lock(self) -> None:
        import fcntl

        marker = self.path / MARKER
        try:
            self._fd = os.open(marker, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            self._created_marker = True
        except FileExistsError:
            self._fd = os.open(marker, os.O_RDWR)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            os.close(self._fd)
            self._fd = None
            raise RunFolderBusy(
                f"{self.path} is in use by another training process{holder}; wait for it to "
                "finish or stop it (Ctrl-C or `kill PID` writes its checkpoint), then "
                "--resume"
            ) from None
        # Who holds it, for the message above (the lock itself is the flock, not this text).
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(record).encode(), 0)

    def _holder(self) -> str:
        try:
            record = json.loads(os.pread(self._fd, 4096, 0) or b"{}")
            return f" (pid {record['pid']} on {record['host']}, since {record['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    def _remove_stray_temporaries(self) -> None:
        """Temporary files of writes killed halfway: only this run writes here, and we hold it."""
        stray = [p for p in self.path.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
        for p in stray:
            p.unlink()
        if stray:
            print(f"removed {len(stray)} temporary file(s) left in {self.path} by an "
                  f"interrupted write ({', '.join(p.name for p in stray[:3])})")

    # -- leaving ---------------------------------------------------------------------
    def discard(self) -> None:
        """Undo a new run that failed before its first iteration: remove what it wrote.

        Only the files a run writes before it starts (:data:`START_FILES`) and
        the marker are removed, and the folder only if this run made it and it
        is then empty. Nothing else is touched.
        """
        if self.resume or not self._created_marker:
            return
        for name in START_FILES:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.path / MARKER).unlink()
        if self._created_folder:
            with contextlib.suppress(OSError):  # not empty: something else is there; keep it
                self.path.rmdir()

    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None

    def __exit__(self, *exc) -> bool:
        self._unlock()
        return False
