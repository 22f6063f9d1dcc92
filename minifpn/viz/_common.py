"""What every picture shares: new axes, host arrays, box outlines, colour palettes, saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from minifpn.serialization import atomic_write

#: Colours used to tell several windows apart (matplotlib's tab10).
WINDOW_COLORS = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown")


def _new_axes(ax, figsize):
    """``ax`` and its figure, or a fresh figure with one axes of ``figsize``."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _as_numpy(a) -> np.ndarray:
    """A Tensor, CuPy or NumPy array as a NumPy array on the host."""
    if hasattr(a, "numpy") and callable(a.numpy):  # a minifpn Tensor
        return np.asarray(a.numpy())
    if hasattr(a, "get") and not isinstance(a, np.ndarray):  # a CuPy array
        return a.get()
    return np.asarray(a)


def box_patch(box, color, **style) -> Rectangle:
    """The outline of a box ``(x1, y1, x2, y2)``: an unfilled rectangle (``style``: lw, ls, …)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=color, **style)


#: Colours for groups of boxes (pyramid levels, classes, …): matplotlib's tab10.
GROUP_COLORS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
)


def save_figure(fig: Figure, path, overwrite: bool = True) -> Path:
    """Write ``fig`` as a PNG via a temporary file + rename: never half a picture.

    ``overwrite=False`` raises ``FileExistsError`` (writing nothing) if ``path`` exists.
    """
    path = Path(path)
    with atomic_write(path, "wb", overwrite=overwrite) as f:
        fig.savefig(f, format="png", dpi=fig.dpi)
    return path
