"""``metrics.jsonl``: a run's log, one JSON object per line, kept in step with its checkpoint.

Each finished iteration appends ``{"iter": i, "lr": …, "loss": …, "loss_…": …,
"grad_norm": …, "time": …}``; each periodic evaluation appends ``{"iter": i,
"eval": {…}}`` (``i`` the last iteration before it). Lines are flushed as
they are written, so the log survives a crash — except, possibly, for the
last line, which a crash or a full disk can cut short.

On resume from a checkpoint of iteration ``n`` the log is read back, a torn
last line is dropped, the lines of iterations ``≥ n`` (which the resumed run
will redo) are removed, and the result is written back atomically: the log
then says exactly what the checkpoint holds. Any *other* unreadable line is
an error naming the file and line, for the log was edited or damaged.

:func:`save_loss_curve` draws the log's losses into ``loss_curve.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

from minifpn.serialization import atomic_write
from minifpn.viz import plot_loss_curves, save_figure


def read_metrics(path, before: int) -> list:
    """The log's entries for iterations before ``before`` (a torn last line is dropped)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not (isinstance(entry, dict) and isinstance(entry.get("iter"), int)):
                raise ValueError("not an object with an integer 'iter'")
        except ValueError as error:  # JSONDecodeError is a ValueError
            if not any(rest.strip() for rest in lines[number:]):  # the last line: torn
                print(f"{path}: dropped its torn last line (a write cut short by a crash or a "
                      f"full disk): {line[:60]!r}")
                break
            raise ValueError(f"{path}, line {number}, is not a log entry ({error}); the file "
                             "was edited or damaged — fix or delete that line") from None
        entries.append(entry)
    return [entry for entry in entries if entry["iter"] < before]


class MetricsLog:
    """The open log of a run that continues after iteration ``start`` (0 for a new run).

    Attributes:
        path: the file.
        entries: every entry, those read back first, in order.
    """

    def __init__(self, path, start: int):
        self.path = Path(path)
        self.entries = read_metrics(self.path, start)
        with atomic_write(self.path, "w") as f:  # without the lines the run will redo
            f.writelines(json.dumps(entry) + "\n" for entry in self.entries)
        self._file = open(self.path, "a")

    @classmethod
    def in_memory(cls, entries: list) -> MetricsLog:
        """A log that keeps its entries without a file (a data-parallel run's ranks but 0)."""
        log = cls.__new__(cls)
        log.path, log.entries, log._file = None, list(entries), None
        return log

    def append(self, entry: dict) -> None:
        """Write one entry and flush it (an ``OSError`` names the file)."""
        if self._file is None:
            self.entries.append(entry)
            return
        try:
            self._file.write(json.dumps(entry) + "\n")
            self._file.flush()
        except OSError as error:
            raise type(error)(error.errno, f"could not append to {self.path}: "
                                           f"{error.strerror}") from None
        self.entries.append(entry)

    def has_evaluation(self, iteration: int) -> bool:
        """Whether the evaluation after ``iteration`` is in the log."""
        return any(e["iter"] == iteration and "eval" in e for e in self.entries)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def save_loss_curve(entries: list, path) -> None:
    """Plot each loss component of the log's ``entries`` (and their total) into a PNG."""
    rows = [m for m in entries if "loss" in m]
    if not rows:
        return
    names = [k for k in rows[0] if k.startswith("loss_")]
    fig = plot_loss_curves({n: [m[n] for m in rows] for n in names},
                           smooth=max(1, len(rows) // 50), total=True, logy=True,
                           title=f"training losses ({len(rows)} iterations)")
    save_figure(fig, path)
