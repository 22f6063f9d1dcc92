"""Recording what a model computes on the way: one recorder, opened by whoever wants to look.

A detector computes much that it never returns — the anchors, every
anchor's label, the sample the loss is taken over, the proposals before NMS,
the pyramid level each RoI is pooled from. The lessons (and anyone
debugging) want to see them; training does not. So modules *record* such
values by name, and they are kept only while a recording is open::

    from minifpn.recording import recording

    with recording(model) as seen:           # model and every module inside it
        losses = model(images, targets)
    seen["rpn.labels"]                       # per image, (T,) anchor labels
    seen["roi_heads.box_roi_pool.levels"]    # (R,) the level each RoI was pooled from

A value's key is the recording module's name inside the recorded one (as
``named_modules()`` and ``state_dict()`` spell it) and the value's name:
``"rpn.labels"``; a value the recorded module writes itself has just its
name (``recording(model.rpn)`` gives ``seen["labels"]``). A module called
several times within one recording keeps its last call's values.

Outside a recording :func:`record` returns at once and nothing is kept, so
training pays nothing for it (Detectron2 records such values the same way,
through its ``EventStorage``). A module that would have to build a value
just to record it asks :func:`is_recording` first.

Recordings may be nested, and each keeps what the modules inside it write.
They belong to the thread that opened them.
"""

from __future__ import annotations

import contextlib
import threading

_local = threading.local()  # .open: the recordings open in this thread, outermost first


class Recording(dict):
    """What the modules inside one module recorded: ``{"rpn.labels": value, …}``.

    A dict, read as any other; a key nothing was recorded under raises a
    ``KeyError`` listing the keys that were.
    """

    def __init__(self, module):
        super().__init__()
        self.module = module
        # Each module inside `module`, by identity, with its name there ("" for itself).
        self._names = {id(m): name for name, m in module.named_modules()}

    def name_of(self, module) -> str | None:
        """``module``'s name inside the recorded module, or None if it is not inside."""
        return self._names.get(id(module))

    def __missing__(self, key):
        raise KeyError(f"nothing was recorded as {key!r}; recorded: {sorted(self) or 'nothing'}")


@contextlib.contextmanager
def recording(module):
    """Keep the values ``module`` and the modules inside it record, until the block ends.

    Yields the :class:`Recording` (a dict), which keeps its values after the
    block.
    """
    recorder = Recording(module)
    opened = _open()
    opened.append(recorder)
    try:
        yield recorder
    finally:
        opened.remove(recorder)


def record(module, name: str, value) -> None:
    """Keep ``value`` as ``module``'s ``name`` in every open recording ``module`` is inside."""
    for recorder in _open():
        prefix = recorder.name_of(module)
        if prefix is not None:
            recorder[f"{prefix}.{name}" if prefix else name] = value


def is_recording(module) -> bool:
    """Whether a recording is open that would keep what ``module`` records."""
    return any(recorder.name_of(module) is not None for recorder in _open())


def _open() -> list:
    if not hasattr(_local, "open"):
        _local.open = []
    return _local.open
