"""Matrices as annotated heatmaps, alone or side by side (``A @ B = C``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from minifpn.viz._common import _as_numpy, _new_axes


def show_matrix(
    matrix,
    ax=None,
    title: str | None = None,
    xlabel: str = "column",
    ylabel: str = "row",
    annotate: bool = True,
    fmt: str = "{:.3g}",
    cmap: str = "viridis",
    boxes: Sequence[tuple] = (),
    colorbar: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Figure:
    """A 2-D array as a heatmap, each cell labelled with its value.

    Args:
        matrix: a 2-D array or Tensor (1-D arrays are shown as one row).
        ax: draw into this axes instead of a new figure.
        title, xlabel, ylabel: text for the axes.
        annotate: write each value in its cell (turn off for big matrices).
        fmt: format string for the values.
        cmap: matplotlib colormap name.
        boxes: rectangles to outline, each ``(row, col, n_rows, n_cols)`` or
            ``(row, col, n_rows, n_cols, color)``.
        colorbar: add a colorbar.
        vmin, vmax: the values at the ends of the colormap (default: the
            matrix's minimum and maximum) — fix them for a quantity with a
            natural range, such as IoUs in [0, 1].

    Returns:
        The figure; the heatmap is ``fig.axes[0].images[0]`` (its data is
        the matrix).
    """
    m = np.atleast_2d(_as_numpy(matrix))
    if m.ndim != 2:
        raise ValueError(f"show_matrix needs a 2-D array, got shape {m.shape}")
    rows, cols = m.shape
    fig, ax = _new_axes(ax, (min(0.45 * cols + 1.4, 14), min(0.45 * rows + 1.0, 10)))
    image = ax.imshow(m, cmap=cmap, aspect="equal", vmin=vmin, vmax=vmax)
    if annotate:
        _annotate(ax, m, image, fmt)
    for box in boxes:
        r, c, h, w = box[:4]
        color = box[4] if len(box) > 4 else "tab:red"
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), w, h, fill=False, ec=color, lw=2.5, zorder=3))
    _integer_ticks(ax, rows, cols)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if colorbar:
        fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def _annotate(ax, m, image, fmt):
    """Write each value in its cell, dark on light colours and light on dark."""
    size = 9 if m.shape[1] <= 12 else 7
    for (r, c), v in np.ndenumerate(m):
        rgba = image.cmap(image.norm(v))
        luminance = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
        text = fmt.format(v.item() if hasattr(v, "item") else v)
        ax.text(
            c,
            r,
            text,
            ha="center",
            va="center",
            fontsize=size,
            color="black" if luminance > 0.5 else "white",
        )


def _integer_ticks(ax, rows, cols):
    ax.set_xticks(range(cols) if cols <= 20 else np.linspace(0, cols - 1, 6, dtype=int))
    ax.set_yticks(range(rows) if rows <= 20 else np.linspace(0, rows - 1, 6, dtype=int))


def show_matrices(
    matrices: Sequence,
    titles: Sequence[str] | None = None,
    between: Sequence[str] | None = None,
    suptitle: str | None = None,
    fmt: str = "{:.3g}",
    cmap: str = "viridis",
    annotate: bool = True,
) -> Figure:
    """Several matrices side by side, with symbols between them (``A @ B = C``).

    Args:
        matrices: 2-D arrays (or Tensors), drawn left to right.
        titles: one title per matrix (e.g. its name and shape).
        between: ``len(matrices) - 1`` strings drawn between neighbours,
            e.g. ``["@", "="]``; default: nothing.
        suptitle: a title for the whole figure.
        fmt, cmap, annotate: as in :func:`show_matrix`.

    Returns:
        The figure. Matrix ``i`` is drawn in ``fig.axes[2 * i]`` when
        ``between`` is given (the symbols sit in the axes between), else in
        ``fig.axes[i]``.
    """
    mats = [np.atleast_2d(_as_numpy(m)) for m in matrices]
    titles = list(titles) if titles is not None else [None] * len(mats)
    if between is not None and len(between) != len(mats) - 1:
        raise ValueError(f"need {len(mats) - 1} symbols between {len(mats)} matrices")
    widths = []
    for i, m in enumerate(mats):
        widths.append(m.shape[1] + 0.6)
        if between is not None and i < len(mats) - 1:
            widths.append(1.0)
    height = max(m.shape[0] for m in mats)
    fig = Figure(
        figsize=(min(0.42 * sum(widths) + 1.5, 18), 0.42 * height + 1.6), layout="constrained"
    )
    grid = fig.add_gridspec(1, len(widths), width_ratios=widths)
    slot = 0
    for i, m in enumerate(mats):
        ax = fig.add_subplot(grid[0, slot])
        show_matrix(
            m,
            ax=ax,
            title=titles[i],
            fmt=fmt,
            cmap=cmap,
            annotate=annotate,
            xlabel="column",
            ylabel="row" if i == 0 else "",
        )
        slot += 1
        if between is not None and i < len(mats) - 1:
            sym = fig.add_subplot(grid[0, slot])
            size = 20 if len(between[i]) <= 2 else 11  # a symbol, or a short word
            sym.text(0.5, 0.5, between[i], ha="center", va="center", fontsize=size)
            sym.axis("off")
            slot += 1
    if suptitle:
        fig.suptitle(suptitle)
    return fig
