"""Small matplotlib pictures for the lessons: graphs, matrices, convolution windows,
feature maps, receptive fields, boxes, anchors, RoI sampling, masks and loss curves.

Every function here draws with matplotlib's object-oriented API and returns
the :class:`~matplotlib.figure.Figure` it drew on, so it works the same in a
notebook, in a script under the ``Agg`` backend, and in a test::

    from minifpn import viz
    fig = viz.show_matrix(np.arange(6).reshape(2, 3), title="a 2×3 matrix")
    fig.savefig("matrix.png")

In Jupyter, a figure that is the last expression of a cell is shown inline.
Functions that draw a single panel also accept ``ax=`` to draw into an
existing axes (then they return that axes' figure).

Nothing here changes how minifpn computes; the convolution pictures call the
real :func:`~minifpn.functional.conv.im2col`, so what you see is what the
library does.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyBboxPatch, Rectangle

from minifpn.autograd import _topological_order

__all__ = [
    "channel_energy",
    "draw_anchors",
    "draw_boxes",
    "draw_graph",
    "draw_receptive_field",
    "draw_sampling_grid",
    "nonzero_extent",
    "show_channels",
    "show_feature_levels",
    "show_im2col",
    "show_kernel_taps",
    "show_matrices",
    "plot_loss_curves",
    "save_figure",
    "show_masks",
    "show_matrix",
    "show_overlap_counts",
]

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


# ---------------------------------------------------------------------------
# Computation graphs.
# ---------------------------------------------------------------------------
def _graph(root):
    """All tensors reachable from ``root`` through ``_parents``, parents first."""
    return _topological_order(root, needing_grad=False)[::-1]


def _short(array) -> str:
    """A one-line summary of an array: its value if it has one, else its shape."""
    a = _as_numpy(array)
    if a.size == 1:
        return f"{a.item():.4g}"
    return "shape " + "×".join(str(n) for n in a.shape)


def _spread(wanted: list[float]) -> list[float]:
    """Positions near ``wanted`` (sorted order kept) at least 1 apart."""
    order = np.argsort(wanted, kind="stable")
    placed = np.empty(len(wanted))
    previous = -np.inf
    for i in order:
        previous = max(wanted[i], previous + 1.0)
        placed[i] = previous
    # Re-centre on the wanted positions so a column does not drift downwards.
    placed += np.mean(wanted) - placed.mean()
    return placed.tolist()


def draw_graph(root, names: Mapping[str, object] | None = None, ax=None, title=None) -> Figure:
    """Draw the computation graph that produced ``root``, leaves on the left.

    Tensors are boxes showing their value (or shape) and, once a backward
    pass has run, their ``.grad``; each op is a circle named by ``_op``.
    Arrows follow the forward pass: parent → op → result.

    Args:
        root: the Tensor to start from (usually a loss); the graph is found
            by walking ``_parents`` back from it.
        names: optional ``{"a": a, ...}`` labels for some tensors.
        ax: draw into this axes instead of a new figure.
        title: the figure title (default "computation graph of <root name>").

    Returns:
        The figure. Its axes holds one text per tensor and one per op.
    """
    label_of = {id(t): name for name, t in (names or {}).items()}
    nodes = _graph(root)
    consumers: dict[int, list] = {}
    for t in nodes:
        for p in t._parents:
            consumers.setdefault(id(p), []).append(t)
    depth = {}
    for t in nodes:  # parents come first, so their depths are known
        depth[id(t)] = 1 + max((depth[id(p)] for p in t._parents), default=-1)
    for t in reversed(nodes):  # constants sit just left of the op that uses them
        if not t._parents and not t.requires_grad and id(t) in consumers:
            depth[id(t)] = min(depth[id(c)] for c in consumers[id(t)]) - 1

    # Columns: tensors at even columns 2·depth, an op just left of its result.
    column, row = {}, {}
    columns: dict[int, list] = {}
    for t in nodes:
        d = depth[id(t)]
        column[("t", id(t))] = 2 * d
        columns.setdefault(2 * d, []).append(("t", t))
        if t._parents:
            column[("op", id(t))] = 2 * d - 1
            columns.setdefault(2 * d - 1, []).append(("op", t))
    for c in sorted(columns):
        entries = columns[c]
        if c == 0:
            wanted = [float(i) for i in range(len(entries))]
        else:
            wanted = []
            for kind, t in entries:
                if kind == "op":
                    wanted.append(float(np.mean([row[("t", id(p))] for p in t._parents])))
                elif t._parents:
                    wanted.append(row[("op", id(t))])
                else:  # a constant: just below the other inputs of its op
                    user = consumers[id(t)][0]
                    others = [row[("t", id(p))] for p in user._parents if ("t", id(p)) in row]
                    wanted.append(max(others) + 0.6 if others else float(len(wanted)))
        for (kind, t), y in zip(entries, _spread(wanted)):
            row[(kind, id(t))] = y

    step, box_w, box_h, radius = 1.7, 1.35, 0.78, 0.33
    n_cols = max(columns) + 1
    ys = list(row.values())
    fig, ax = _new_axes(ax, (1.25 * step * n_cols + 0.4, 1.0 * (max(ys) - min(ys) + 1) + 0.9))

    def xy(key):
        return column[key] * step, -row[key]

    for t in nodes:
        x, y = xy(("t", id(t)))
        name = label_of.get(id(t), "")
        value = _short(t.data)
        if name:
            lines = [f"{name} = {value}" if "shape" not in value else f"{name}: {value}"]
        else:
            lines = [("" if t.requires_grad or t._parents else "const ") + value]
        if t.grad is not None:
            lines.append("grad " + _short(t.grad))
        color = "#fde9c9" if t is root else ("#dbe9f6" if t.requires_grad else "#eeeeee")
        ax.add_patch(
            FancyBboxPatch(
                (x - box_w / 2, y - box_h / 2),
                box_w,
                box_h,
                boxstyle="round,pad=0.02",
                fc=color,
                ec="0.3",
                zorder=2,
            )
        )
        ax.text(x, y, "\n".join(lines), ha="center", va="center", fontsize=8, zorder=3)
        if not t._parents:
            continue
        ox, oy = xy(("op", id(t)))
        ax.add_patch(Circle((ox, oy), radius, fc="white", ec="0.3", zorder=2))
        ax.text(ox, oy, t._op, ha="center", va="center", fontsize=7, zorder=3)
        _arrow(ax, (ox + radius, oy), (x - box_w / 2, y))
        for k, p in enumerate(t._parents):
            px, py = xy(("t", id(p)))
            dx, dy = ox - px, oy - py
            norm = max(np.hypot(dx, dy), 1e-9)
            # The same tensor used twice (x * x): bend the two edges apart.
            same = [i for i, q in enumerate(t._parents) if q is p]
            bend = 0.0 if len(same) == 1 else 0.3 * (same.index(k) - (len(same) - 1) / 2)
            _arrow(
                ax, (px + box_w / 2, py), (ox - radius * dx / norm, oy - radius * dy / norm), bend
            )

    ax.set_xlim(-box_w / 2 - 0.2, (n_cols - 1) * step + box_w / 2 + 0.2)
    ax.set_ylim(-max(ys) - box_h / 2 - 0.2, -min(ys) + box_h / 2 + 0.2)
    ax.set_aspect("equal")
    ax.axis("off")
    root_name = label_of.get(id(root), root._op or "tensor")
    ax.set_title(title or f"computation graph of {root_name}")
    return fig


def _arrow(ax, start, end, bend=0.0):
    """An arrow from ``start`` to ``end`` in data coordinates, optionally curved."""
    ax.annotate(
        "",
        xy=end,
        xytext=start,
        zorder=1,
        arrowprops=dict(
            arrowstyle="-|>",
            color="0.35",
            shrinkA=0,
            shrinkB=0,
            lw=1,
            connectionstyle=f"arc3,rad={bend}",
        ),
    )


# ---------------------------------------------------------------------------
# Matrices.
# ---------------------------------------------------------------------------
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

    Returns:
        The figure; the heatmap is ``fig.axes[0].images[0]`` (its data is
        the matrix).
    """
    m = np.atleast_2d(_as_numpy(matrix))
    if m.ndim != 2:
        raise ValueError(f"show_matrix needs a 2-D array, got shape {m.shape}")
    rows, cols = m.shape
    fig, ax = _new_axes(ax, (min(0.45 * cols + 1.4, 14), min(0.45 * rows + 1.0, 10)))
    image = ax.imshow(m, cmap=cmap, aspect="equal")
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


# ---------------------------------------------------------------------------
# Convolution windows.
# ---------------------------------------------------------------------------
def _window_taps(g, position: int, wo: int):
    """(row, col) in the padded input of every tap of output pixel ``position``."""
    r, c = divmod(position, wo)
    return [(r * g.sh + i * g.dh, c * g.sw + j * g.dw) for i in range(g.kh) for j in range(g.kw)]


def show_im2col(image, kernel=3, stride=1, padding=0, dilation=1, positions=(0,)) -> Figure:
    """im2col of one single-channel image: which pixels become which column.

    Left: the (zero-padded) image, with the kernel taps of the chosen output
    positions outlined. Right: ``cols = im2col(image)``, of shape
    ``(kh·kw, Ho·Wo)``, with the matching columns outlined in the same colours.
    Column ``p`` of ``cols`` holds the window of output pixel ``p`` (counted
    row by row), read in the order tap (0, 0), (0, 1), …

    Args:
        image: a 2-D array ``(H, W)``.
        kernel, stride, padding, dilation: int or (h, w) pair.
        positions: output pixels (flat indices) whose windows to outline.

    Returns:
        The figure: ``fig.axes[0]`` the padded image, ``fig.axes[1]`` the
        columns (its image data is exactly what ``im2col`` returned).
    """
    from minifpn.functional.conv import ConvGeometry, im2col

    img = _as_numpy(image)
    if img.ndim != 2:
        raise ValueError(f"show_im2col needs a 2-D image (H, W), got shape {img.shape}")
    g = ConvGeometry.make(kernel, stride, padding, dilation)
    ho, wo = g.out_size(*img.shape)
    cols = im2col(img[None, None], g)[0]
    padded = np.pad(img, ((g.ph, g.ph), (g.pw, g.pw)))
    positions = [positions] if isinstance(positions, int) else list(positions)

    fig = Figure(
        figsize=(
            0.45 * (padded.shape[1] + cols.shape[1]) + 3.5,
            0.45 * max(padded.shape[0], cols.shape[0]) + 1.6,
        ),
        layout="constrained",
    )
    left, right = fig.subplots(1, 2, width_ratios=[padded.shape[1] + 1, cols.shape[1] + 1])
    taps_boxes, col_boxes = [], []
    for n, p in enumerate(positions):
        color = WINDOW_COLORS[n % len(WINDOW_COLORS)]
        taps_boxes += [(r, c, 1, 1, color) for r, c in _window_taps(g, p, wo)]
        col_boxes.append((0, p, cols.shape[0], 1, color))
    show_matrix(
        padded,
        ax=left,
        boxes=taps_boxes,
        fmt="{:g}",
        title=f"input {img.shape[0]}×{img.shape[1]}"
        + (f", zero-padded by {g.ph},{g.pw}" if g.ph or g.pw else ""),
        xlabel="input column",
        ylabel="input row",
    )
    if g.ph or g.pw:
        left.add_patch(
            Rectangle(
                (g.pw - 0.5, g.ph - 0.5),
                img.shape[1],
                img.shape[0],
                fill=False,
                ec="white",
                ls="--",
                lw=1.5,
                zorder=2,
            )
        )
    show_matrix(
        cols,
        ax=right,
        boxes=col_boxes,
        fmt="{:g}",
        title=f"cols = im2col(input): {cols.shape[0]}×{cols.shape[1]}",
        xlabel=f"output pixel (of {ho}×{wo}, row by row)",
        ylabel="kernel tap (i·kw + j)",
    )
    return fig


def show_kernel_taps(
    size, kernel=3, stride=1, padding=0, dilation=1, positions=(0, 1), ax=None, title=None
) -> Figure:
    """Where the kernel taps of a few output pixels land on the input grid.

    Input pixels are white squares, padding grey; each chosen output pixel's
    taps are dots of one colour, and the title gives the output size from
    the formula ``Ho = (H + 2p − d(k − 1) − 1) // s + 1``.

    Args:
        size: input size, ``H`` or ``(H, W)``.
        kernel, stride, padding, dilation: int or (h, w) pair.
        positions: output pixels (flat indices) to draw.
        ax: draw into this axes instead of a new figure.
        title: axes title (default: the settings and the output size).

    Returns:
        The figure. The axes has one line (``ax.lines``) per position, with
        one marker per tap.
    """
    from minifpn.functional.conv import ConvGeometry

    h, w = (size, size) if isinstance(size, int) else tuple(size)
    g = ConvGeometry.make(kernel, stride, padding, dilation)
    ho, wo = g.out_size(h, w)
    hp, wp = h + 2 * g.ph, w + 2 * g.pw
    fig, ax = _new_axes(ax, (0.35 * wp + 1.5, 0.35 * hp + 1.2))
    for r in range(hp):
        for c in range(wp):
            inside = g.ph <= r < g.ph + h and g.pw <= c < g.pw + w
            ax.add_patch(
                Rectangle(
                    (c - 0.5, r - 0.5), 1, 1, fc="white" if inside else "0.8", ec="0.6", lw=0.8
                )
            )
    positions = [positions] if isinstance(positions, int) else list(positions)
    n = max(len(positions), 1)
    for k, p in enumerate(positions):
        taps = _window_taps(g, p, wo)
        shift = (k - (n - 1) / 2) * 0.18  # side by side when windows share pixels
        ax.plot(
            [c + shift for _, c in taps],
            [r for r, _ in taps],
            "o",
            ls="none",
            color=WINDOW_COLORS[k % len(WINDOW_COLORS)],
            ms=6,
            label=f"output pixel {divmod(p, wo)}",
        )
    ax.set_xlim(-0.5, wp - 0.5)
    ax.set_ylim(hp - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xlabel("padded input column")
    ax.set_ylabel("padded input row")
    if positions:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    ax.set_title(
        title or f"k={g.kh}, s={g.sh}, p={g.ph}, d={g.dh}: {h}×{w} → {ho}×{wo}", fontsize=9
    )
    return fig


def show_overlap_counts(counts, ax=None, title=None, fmt="{:g}") -> Figure:
    """A heatmap of how many kernel windows touch each input pixel.

    ``counts`` is typically ``col2im(ones)`` — adding a 1 for every time a
    window reads a pixel — which is also how many gradient contributions
    col2im sums into that pixel in the backward pass.

    Args:
        counts: a 2-D array ``(H, W)``.
        ax: draw into this axes instead of a new figure.
        title: axes title (default "windows touching each pixel").
        fmt: format string for the numbers.

    Returns:
        The figure (heatmap data equals ``counts``; one text per pixel; a
        colorbar labelled "windows").
    """
    c = _as_numpy(counts)
    fig = show_matrix(
        c,
        ax=ax,
        title=title or "windows touching each pixel",
        fmt=fmt,
        cmap="magma",
        xlabel="input column",
        ylabel="input row",
    )
    ax = ax if ax is not None else fig.axes[0]
    fig.colorbar(ax.images[0], ax=ax, shrink=0.8, label="windows")
    return fig


# ---------------------------------------------------------------------------
# Feature maps: one picture per pyramid level.
# ---------------------------------------------------------------------------
#: What :func:`channel_energy` can compute, and how figure titles name it.
ENERGY_KINDS = {
    "rms": "RMS over channels",
    "mean_abs": "mean |activation| over channels",
    "l2": "L2 norm over channels",
}


def _feature_chw(feature) -> np.ndarray:
    """A ``(C, H, W)`` or ``(1, C, H, W)`` map (Tensor or array) as a ``(C, H, W)`` array."""
    f = _as_numpy(feature)
    if f.ndim == 4 and f.shape[0] == 1:
        f = f[0]
    if f.ndim == 2:
        f = f[None]
    if f.ndim != 3:
        raise ValueError(f"a feature map must be (C, H, W) or (1, C, H, W), got shape {f.shape}")
    return f


def channel_energy(feature, kind: str = "rms") -> np.ndarray:
    """One number per pixel of a feature map: how strongly its channels respond.

    A pyramid level has hundreds of channels; to see it as one picture we
    reduce over the channel axis at every pixel:

    * ``"rms"`` (default) — ``sqrt(mean_c x²)``: the L2 norm divided by √C,
      so levels with different channel counts are on a comparable scale;
    * ``"mean_abs"`` — ``mean_c |x|``;
    * ``"l2"`` — ``sqrt(sum_c x²)``.

    Args:
        feature: ``(C, H, W)`` or ``(1, C, H, W)`` (Tensor or array).
        kind: one of the three above.

    Returns:
        An ``(H, W)`` float array.
    """
    f = _feature_chw(feature).astype(np.float64)
    if kind == "rms":
        return np.sqrt((f * f).mean(axis=0))
    if kind == "mean_abs":
        return np.abs(f).mean(axis=0)
    if kind == "l2":
        return np.sqrt((f * f).sum(axis=0))
    raise ValueError(f"unknown energy kind {kind!r}: use one of {', '.join(ENERGY_KINDS)}")


def _level_number(name: str) -> int | None:
    """3 for "P3" or "C3"; None for a name that does not end in a number."""
    match = re.fullmatch(r"[A-Za-z_]*?(\d+)", str(name))
    return int(match.group(1)) if match else None


def _stride_of(name, height, strides, image) -> int | None:
    """The stride of a level: given, or 2**l for "Pl"/"Cl", or image height / map height."""
    if strides is not None and name in strides:
        return int(strides[name])
    level = _level_number(name)
    if level is not None:
        return 2**level
    if image is not None:
        return max(1, round(image.shape[0] / height))
    return None


def _level_title(name, shape, stride) -> str:
    h, w = shape
    parts = [str(name)] + ([f"stride {stride}"] if stride is not None else []) + [f"{h}×{w}"]
    return " · ".join(parts)


def _show_image(ax, image, title="input image"):
    img = _as_numpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)  # CHW -> HWC
    ax.imshow(img, cmap=None if img.ndim == 3 else "gray")
    ax.set_title(f"{title} · {img.shape[0]}×{img.shape[1]}", fontsize=9)
    ax.set_xlabel("x (pixels)", fontsize=8)
    ax.set_ylabel("y (pixels)", fontsize=8)
    ax.tick_params(labelsize=7)
    return img


def show_feature_levels(
    features,
    image=None,
    title: str | None = None,
    kind: str = "rms",
    strides: Mapping[str, int] | None = None,
    row_labels: Sequence[str] | None = None,
    share_columns: bool = False,
    cmap: str = "inferno",
    colorbar: bool = True,
    panel_size: float = 2.6,
) -> Figure:
    """Channel-energy maps of several pyramid levels side by side, coarse ones on the right.

    Each panel is :func:`channel_energy` of one level, titled like
    "P3 · stride 8 · 100×168". Several rows (e.g. C2–C5 above P2–P6) are
    aligned by level number, so C3 sits above P3.

    Args:
        features: ``{name: map}`` (maps ``(C, H, W)`` or ``(1, C, H, W)``),
            or a sequence of such dicts, one per row.
        image: the input image ``(H, W, 3)``, drawn first in the top row.
        title: the figure title (default "channel energy (…) of each level").
        kind: the reduction over channels (see :func:`channel_energy`).
        strides: ``{name: stride}``; by default 2**l for a level named
            "Cl"/"Pl", else the image height over the map height.
        row_labels: one label per row, written beside its first panel.
        share_columns: give all panels of a column one colour scale, so
            rows can be compared (e.g. a map and a difference of maps).
        cmap: matplotlib colormap.
        colorbar: a colour bar beside every panel.
        panel_size: inches per panel.

    Returns:
        The figure. ``fig.axes`` holds, in order: the image (if given), then
        each row's panels left to right, each followed by its colour bar.
        A panel's image data is exactly its energy map.
    """
    rows = [features] if isinstance(features, Mapping) else list(features)
    if not rows or any(not isinstance(r, Mapping) or not r for r in rows):
        raise ValueError("features must be a non-empty dict of maps, or a list of such dicts")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"need {len(rows)} row labels, got {len(row_labels)}")

    # Columns: one per level number (aligned across rows), else one per position.
    numbers = [[_level_number(name) for name in row] for row in rows]
    if all(n is not None for row in numbers for n in row):
        column_keys = sorted({n for row in numbers for n in row})
        position = [
            {name: column_keys.index(n) for name, n in zip(row, ns)}
            for row, ns in zip(rows, numbers)
        ]
    else:
        column_keys = list(range(max(len(row) for row in rows)))
        position = [{name: i for i, name in enumerate(row)} for row in rows]
    offset = 1 if image is not None else 0
    n_cols = len(column_keys) + offset

    energies = [{name: channel_energy(f, kind) for name, f in row.items()} for row in rows]
    vmax = {}
    if share_columns:
        for row_energy, pos in zip(energies, position):
            for name, e in row_energy.items():
                vmax[pos[name]] = max(vmax.get(pos[name], 0.0), float(e.max()))

    img = _as_numpy(image) if image is not None else None
    first = next(iter(energies[0].values()))
    aspect = (img.shape[0] / img.shape[1]) if img is not None else first.shape[0] / first.shape[1]
    fig = Figure(
        figsize=(
            panel_size * n_cols * (1.2 if colorbar else 1.0) + 0.4,
            panel_size * aspect * len(rows) + 0.9 * len(rows) + 0.5,
        ),
        layout="constrained",
    )
    grid = fig.add_gridspec(len(rows), n_cols)
    if img is not None:
        _show_image(fig.add_subplot(grid[0, 0]), img)
    label = ENERGY_KINDS.get(kind, kind)
    for r, (row_energy, pos) in enumerate(zip(energies, position)):
        for k, (name, e) in enumerate(row_energy.items()):
            ax = fig.add_subplot(grid[r, pos[name] + offset])
            shown = ax.imshow(
                e, cmap=cmap, vmin=0.0, vmax=vmax.get(pos[name]), interpolation="nearest"
            )
            stride = _stride_of(name, e.shape[0], strides, img)
            ax.set_title(_level_title(name, e.shape, stride), fontsize=9)
            ax.set_xlabel("column", fontsize=8)
            ax.set_ylabel("row", fontsize=8)
            if k == 0 and row_labels is not None:
                ax.set_ylabel(f"{row_labels[r]}\nrow", fontsize=9)
            ax.tick_params(labelsize=7)
            if colorbar:
                bar = fig.colorbar(shown, ax=ax, shrink=0.8)
                bar.ax.tick_params(labelsize=7)
    fig.suptitle(title or f"{label} of each level")
    return fig


def show_channels(
    features,
    channels: Sequence[int],
    title: str | None = None,
    cmap: str | None = None,
    panel_size: float = 2.2,
) -> Figure:
    """A few individual channels of one or several levels, one row per level.

    The channels in a row share one colour scale and one colour bar. A row
    with negative values (pyramid levels have no ReLU) gets a diverging
    colormap centred on 0, ±max |value|; a row that is never negative
    (after a ReLU, like C2–C5) a sequential one from 0 to its maximum.

    Args:
        features: one map ``(C, H, W)`` / ``(1, C, H, W)``, or ``{name: map}``
            for several rows.
        channels: channel indices to show (the same in every row).
        title: figure title (default "channels …").
        cmap: force one matplotlib colormap (default: "RdBu_r" for signed
            rows, "viridis" for non-negative ones).
        panel_size: inches per panel.

    Returns:
        The figure: for each row, its ``len(channels)`` panels (image data =
        that channel) then the row's colour bar.
    """
    rows = dict(features) if isinstance(features, Mapping) else {"": features}
    channels = [int(c) for c in channels]
    if not channels:
        raise ValueError("show_channels needs at least one channel index")
    maps = {name: _feature_chw(f) for name, f in rows.items()}
    for name, f in maps.items():
        if max(channels) >= f.shape[0] or min(channels) < -f.shape[0]:
            raise ValueError(f"{name or 'map'} has {f.shape[0]} channels; asked for {channels}")
    first = next(iter(maps.values()))
    aspect = first.shape[1] / first.shape[2]
    fig = Figure(
        figsize=(panel_size * len(channels) + 1.2, (panel_size * aspect + 0.7) * len(maps) + 0.5),
        layout="constrained",
    )
    grid = fig.add_gridspec(len(maps), len(channels))
    for r, (name, f) in enumerate(maps.items()):
        limit = float(np.abs(f[channels]).max()) or 1.0
        signed = bool((f[channels] < 0).any())
        row_cmap = cmap or ("RdBu_r" if signed else "viridis")
        vmin = -limit if signed else 0.0
        axes = []
        for k, c in enumerate(channels):
            ax = fig.add_subplot(grid[r, k])
            shown = ax.imshow(f[c], cmap=row_cmap, vmin=vmin, vmax=limit, interpolation="nearest")
            ax.set_title(f"{name + ' · ' if name else ''}channel {c}", fontsize=9)
            ax.set_xlabel("column", fontsize=8)
            ax.set_ylabel(
                f"{name} · {f.shape[1]}×{f.shape[2]}\nrow" if k == 0 and name else "row", fontsize=8
            )
            ax.tick_params(labelsize=7)
            axes.append(ax)
        bar = fig.colorbar(shown, ax=axes, shrink=0.8, label="activation")
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(title or f"channels {', '.join(map(str, channels))}")
    return fig


# ---------------------------------------------------------------------------
# Receptive fields.
# ---------------------------------------------------------------------------
def nonzero_extent(grad) -> tuple[int, int, int, int] | None:
    """``(top, left, bottom, right)`` (inclusive) of the pixels with a non-zero
    gradient in any channel, or None if the gradient is zero everywhere."""
    magnitude = np.abs(_feature_chw(grad)).sum(axis=0)
    rows = np.flatnonzero(magnitude.any(axis=1))
    cols = np.flatnonzero(magnitude.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def draw_receptive_field(grad, center, size: int, title: str | None = None) -> Figure:
    """Where one feature pixel looks: the input gradient against the theoretical field.

    Left: ``|∂y/∂x|`` summed over the input channels, divided by its maximum,
    on a log colour scale (exact zeros are left blank). The theoretical
    receptive field — a ``size × size`` square centred on ``center`` — is
    outlined in solid cyan; the box holding every non-zero gradient in dashed
    white. Right: the same magnitude along the centre row, log scale, with
    the theoretical edges as vertical lines: most of the gradient sits near
    the centre (the *effective* receptive field is smaller than the
    theoretical one).

    Args:
        grad: the gradient of one feature pixel w.r.t. the input,
            ``(C, H, W)`` / ``(1, C, H, W)`` (or ``(H, W)``).
        center: ``(row, col)`` in input pixels of the feature pixel's centre.
        size: the theoretical receptive field, in input pixels.
        title: the figure title.

    Returns:
        The figure: ``fig.axes[0]`` the map (image data = normalised
        magnitude), ``fig.axes[1]`` the profile, ``fig.axes[2]`` the map's
        colour bar. ``fig.axes[0].patches`` = [theoretical, non-zero extent].
    """
    magnitude = np.abs(_feature_chw(grad)).astype(np.float64).sum(axis=0)
    peak = magnitude.max()
    if peak == 0:
        raise ValueError("the gradient is zero everywhere: nothing to draw")
    normalised = magnitude / peak
    cy, cx = center
    half = (size - 1) / 2
    extent = nonzero_extent(grad)

    fig = Figure(figsize=(11, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.1, 1])
    tiny = normalised[normalised > 0].min()
    shown = left.imshow(
        np.ma.masked_equal(normalised, 0.0),
        cmap="viridis",
        norm=LogNorm(vmin=max(tiny, 1e-8), vmax=1.0),
        interpolation="nearest",
    )
    left.set_facecolor("0.15")
    left.add_patch(
        Rectangle(
            (cx - half - 0.5, cy - half - 0.5),
            size,
            size,
            fill=False,
            ec="cyan",
            lw=1.8,
            label=f"theoretical: {size}×{size}",
        )
    )
    top, lft, bottom, rgt = extent
    left.add_patch(
        Rectangle(
            (lft - 0.5, top - 0.5),
            rgt - lft + 1,
            bottom - top + 1,
            fill=False,
            ec="white",
            ls="--",
            lw=1.2,
            label=f"non-zero gradient: {bottom - top + 1}×{rgt - lft + 1}",
        )
    )
    left.legend(loc="upper right", fontsize=7, framealpha=0.8)
    left.set_xlabel("input x (pixels)")
    left.set_ylabel("input y (pixels)")
    left.set_title("|∂ feature pixel / ∂ input| (summed over RGB), ÷ max", fontsize=9)
    fig.colorbar(shown, ax=left, shrink=0.85, label="relative gradient magnitude (log)")

    profile = normalised[int(round(cy))]
    xs = np.arange(profile.size)
    right.semilogy(
        xs[profile > 0],
        profile[profile > 0],
        ".",
        ms=3,
        color="tab:blue",
        label="non-zero gradient",
    )
    for edge in (cx - half, cx + half):
        right.axvline(edge, color="tab:cyan", lw=1.5)
    right.axvline(cx, color="0.6", lw=0.8, ls=":")
    right.set_xlabel("input x (pixels)")
    right.set_ylabel("relative gradient magnitude")
    right.set_title(
        f"profile along the centre row (y = {int(round(cy))}); lines: theoretical edges", fontsize=9
    )
    right.legend(loc="lower center", fontsize=7)
    fig.suptitle(
        title
        or f"receptive field: theoretical {size}×{size}, "
        f"non-zero gradient {bottom - top + 1}×{rgt - lft + 1}"
    )
    return fig


# ---------------------------------------------------------------------------
# Boxes, anchors and masks on images.
# ---------------------------------------------------------------------------
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


def _image_hwc(image) -> np.ndarray:
    """An ``(H, W, 3)``, ``(3, H, W)`` or ``(H, W)`` image as an ``(H, W[, 3])`` array."""
    img = _as_numpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3):
        raise ValueError(f"an image must be (H, W), (H, W, 3) or (3, H, W), got {img.shape}")
    return img


def _boxes_array(boxes) -> np.ndarray:
    b = _as_numpy(boxes).astype(np.float64)
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) = (x1, y1, x2, y2), got shape {b.shape}")
    return b


def draw_boxes(
    image,
    boxes,
    labels: Sequence[str] | None = None,
    colors=None,
    groups=None,
    group_names: Mapping | None = None,
    ax=None,
    title: str | None = None,
    linewidth: float = 1.5,
    linestyle: str = "-",
    alpha: float = 1.0,
    fontsize: float = 7,
    figsize=(6.4, 4.8),
) -> Figure:
    """Boxes ``(x1, y1, x2, y2)`` drawn as rectangles over an image.

    Call it again with the returned figure's axes (``ax=fig.axes[0]``,
    ``image=None``) to add a second set of boxes in another style — ground
    truth over anchors, say.

    Args:
        image: ``(H, W, 3)`` (or ``(3, H, W)``) image to draw first, or None
            to draw boxes only (on a new axes the limits then fit the boxes,
            with y pointing down as in an image).
        boxes: ``(N, 4)`` array or Tensor, in the image's pixels.
        labels: optional text per box, written at its top-left corner.
        colors: one colour for all boxes or one per box (default tab:red).
        groups: optional group key per box (a pyramid level, a class …): each
            group gets one colour of :data:`GROUP_COLORS` and one legend entry
            "name (count)"; the legend is sorted by name. Overrides ``colors``.
        group_names: ``{key: name}`` for the legend (default ``str(key)``). Its
            order fixes the colours — the i-th key gets the i-th colour, keys
            not in it follow in sorted order — so passing the same names to
            several figures keeps one colour per group across them.
        ax: draw into this axes instead of a new figure.
        title: the axes title.
        linewidth, linestyle, alpha: rectangle style.
        fontsize: size of the labels.
        figsize: size of a new figure.

    Returns:
        The figure. The rectangles are the axes' patches, in box order.
    """
    b = _boxes_array(boxes)
    new = ax is None
    fig, ax = _new_axes(ax, figsize)
    if image is not None:
        img = _image_hwc(image)
        ax.imshow(img, cmap=None if img.ndim == 3 else "gray")
        ax.set_xlabel("x (pixels)")
        ax.set_ylabel("y (pixels)")
    if labels is not None and len(labels) != len(b):
        raise ValueError(f"got {len(labels)} labels for {len(b)} boxes")

    legend_label = [None] * len(b)
    if groups is not None:
        keys = list(_as_numpy(groups).reshape(-1).tolist())
        if len(keys) != len(b):
            raise ValueError(f"got {len(keys)} group keys for {len(b)} boxes")
        names = dict(group_names or {})
        # Colours follow group_names' order (then the other keys, sorted), so that the
        # same key has the same colour in every figure drawn with the same names.
        order = list(names) + sorted(set(keys) - set(names))
        palette = {k: GROUP_COLORS[i % len(GROUP_COLORS)] for i, k in enumerate(order)}
        box_colors = [palette[k] for k in keys]
        for k in set(keys):
            first = keys.index(k)
            legend_label[first] = f"{names.get(k, k)} ({keys.count(k)})"
    elif (
        colors is None
        or isinstance(colors, str)
        or (isinstance(colors, tuple) and len(colors) in (3, 4) and not isinstance(colors[0], str))
    ):
        box_colors = [colors or "tab:red"] * len(b)
    else:
        box_colors = list(colors)
        if len(box_colors) != len(b):
            raise ValueError(f"got {len(box_colors)} colours for {len(b)} boxes")

    for i, (x1, y1, x2, y2) in enumerate(b):
        ax.add_patch(
            Rectangle(
                (x1, y1),
                x2 - x1,
                y2 - y1,
                fill=False,
                ec=box_colors[i],
                lw=linewidth,
                ls=linestyle,
                alpha=alpha,
                label=legend_label[i],
            )
        )
        if labels is not None:
            ax.text(
                x1,
                y1,
                str(labels[i]),
                fontsize=fontsize,
                color="white",
                va="bottom",
                ha="left",
                bbox=dict(fc=box_colors[i], ec="none", pad=1.0, alpha=0.8),
                clip_on=True,
            )
    if image is None and new and len(b):
        pad = 0.05 * max(np.ptp(b[:, [0, 2]]), np.ptp(b[:, [1, 3]]), 1.0)
        ax.set_xlim(b[:, 0].min() - pad, b[:, 2].max() + pad)
        ax.set_ylim(b[:, 3].max() + pad, b[:, 1].min() - pad)  # y down, as in an image
        ax.set_aspect("equal")
    if groups is not None or any(
        p.get_label() and not p.get_label().startswith("_") for p in ax.patches
    ):
        handles, texts = ax.get_legend_handles_labels()
        ranked = sorted(zip(texts, handles), key=lambda pair: pair[0])  # P2 before P3 …
        ax.legend(
            [h for _, h in ranked],
            [t for t, _ in ranked],
            loc="upper right",
            fontsize=7,
            framealpha=0.8,
        )
    if title:
        ax.set_title(title)
    return fig


def draw_anchors(
    image,
    anchors_per_level: Sequence,
    names: Sequence[str] | None = None,
    point: tuple[float, float] | None = None,
    num_anchors: int = 3,
    title: str | None = None,
    panel_size: float = 3.2,
) -> Figure:
    """Each level's anchors on the image: every anchor centre, and the anchors of one cell.

    One panel per level. Small dots mark the centre of every cell of the
    level (all its ``num_anchors`` anchors share it), so the density of the
    dots is the level's stride; the anchors of the cell nearest ``point``
    are drawn as rectangles, one colour per aspect ratio. Large anchors may
    reach beyond the image: the panel is widened to show them.

    Args:
        image: the (resized) image the anchors belong to, ``(H, W, 3)``.
        anchors_per_level: one ``(H_l·W_l·A, 4)`` array per level, in
            :class:`~minifpn.models.anchors.AnchorGenerator`'s order
            (location-major, then anchor).
        names: level names (default P2, P3, …).
        point: ``(x, y)`` pixel whose nearest cell's anchors are drawn
            (default: the image centre).
        num_anchors: A, anchors per location.
        title: the figure title.
        panel_size: inches per panel.

    Returns:
        The figure, one axes per level. In each, ``lines[0]`` holds the cell
        centres and the rectangles (patches) are the A anchors of the chosen
        cell, in anchor order.
    """
    img = _image_hwc(image)
    height, width = img.shape[:2]
    names = (
        list(names) if names is not None else [f"P{i + 2}" for i in range(len(anchors_per_level))]
    )
    if len(names) != len(anchors_per_level):
        raise ValueError(f"got {len(names)} names for {len(anchors_per_level)} levels")
    px, py = point if point is not None else (width / 2, height / 2)
    n = len(anchors_per_level)
    fig = Figure(
        figsize=(panel_size * n + 0.4, panel_size * height / width + 1.4), layout="constrained"
    )
    colors = GROUP_COLORS[:num_anchors] if num_anchors <= len(GROUP_COLORS) else None
    for k, (name, anchors) in enumerate(zip(names, anchors_per_level)):
        a = _boxes_array(anchors).reshape(-1, num_anchors, 4)  # (H·W, A, 4)
        centres = (a[:, 0, :2] + a[:, 0, 2:]) / 2  # (H·W, 2): x, y
        ax = fig.add_subplot(1, n, k + 1)
        ax.imshow(img, cmap=None if img.ndim == 3 else "gray")
        ax.plot(centres[:, 0], centres[:, 1], ".", ms=1.0, color="white", alpha=0.7)
        nearest = int(np.argmin((centres[:, 0] - px) ** 2 + (centres[:, 1] - py) ** 2))
        shapes = []
        for j, (x1, y1, x2, y2) in enumerate(a[nearest]):
            color = colors[j] if colors else GROUP_COLORS[j % len(GROUP_COLORS)]
            ax.add_patch(
                Rectangle(
                    (x1, y1),
                    x2 - x1,
                    y2 - y1,
                    fill=False,
                    ec=color,
                    lw=1.8,
                    label=f"{x2 - x1:g}×{y2 - y1:g}",
                )
            )
            shapes.append((x1, y1, x2, y2))
        s = np.asarray(shapes)
        xs = np.unique(centres[:, 0])
        stride = f" · stride {xs[1] - xs[0]:g}" if len(xs) > 1 else ""
        rows = len(np.unique(centres[:, 1]))
        ax.set_title(f"{name}{stride} · {rows}×{len(xs)} cells", fontsize=9)
        ax.set_xlim(min(0, s[:, 0].min()) - 5, max(width, s[:, 2].max()) + 5)
        ax.set_ylim(max(height, s[:, 3].max()) + 5, min(0, s[:, 1].min()) - 5)
        ax.add_patch(Rectangle((0, 0), width, height, fill=False, ec="0.3", lw=0.8, ls=":"))
        ax.legend(loc="lower right", fontsize=6, title="w×h", title_fontsize=6, framealpha=0.8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("x (pixels)", fontsize=8)
        if k == 0:
            ax.set_ylabel("y (pixels)", fontsize=8)
    fig.suptitle(title or "anchors per level: every cell centre, and the anchors of one cell")
    return fig


def _roi_align_points(box, output_size, spatial_scale, sampling_ratio, aligned):
    """RoIAlign's sample points of one box, in feature coordinates (value j at coordinate j).

    Returns ``(ys, xs, (y0, x0, bin_h, bin_w))``: ys ``(PH, GH)``, xs ``(PW, GW)``
    and the sampled window's start and bin sizes — torchvision's formulas.
    """
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (float(v) * spatial_scale - offset for v in box)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    gh = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_h / ph))
    gw = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_w / pw))
    ys = y1 + (np.arange(ph)[:, None] + (np.arange(gh)[None, :] + 0.5) / gh) * bin_h
    xs = x1 + (np.arange(pw)[:, None] + (np.arange(gw)[None, :] + 0.5) / gw) * bin_w
    return ys, xs, (y1, x1, bin_h, bin_w)


def _roi_pool_bins(box, output_size, spatial_scale, feature_size):
    """RoIPool's quantised bins of one box: per axis, ``(start, stop)`` cells per bin."""
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    h, w = feature_size

    def half_away(v):
        return float(np.sign(v) * np.floor(abs(v) + 0.5))

    x1, y1, x2, y2 = (half_away(float(v) * spatial_scale) for v in box)
    roi_h, roi_w = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)

    def windows(start, size, bins, limit):
        return [
            (
                int(np.clip(np.floor(p * size / bins) + start, 0, limit)),
                int(np.clip(np.ceil((p + 1) * size / bins) + start, 0, limit)),
            )
            for p in range(bins)
        ]

    return windows(y1, roi_h, ph, h), windows(x1, roi_w, pw, w), (x1, y1, x2, y2)


def draw_sampling_grid(
    box,
    feature_size: tuple[int, int],
    output_size=2,
    method: str = "align",
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = False,
    ax=None,
    title: str | None = None,
    values=None,
) -> Figure:
    """Where RoIAlign samples, or which cells RoIPool takes, for one box on a feature grid.

    The feature map is drawn as unit squares: cell ``(i, j)`` covers
    ``[j, j+1] × [i, i+1]``, so a box ``(x1, y1, x2, y2)`` in image pixels is
    drawn at ``box · spatial_scale`` (solid black) — the picture of a feature
    map that summarises the pixels under each cell.

    * ``method="align"``: the RoI's bins (dashed) and every sample point
      (dots, one colour per bin), computed with torchvision's formulas.
      RoIAlign reads cell j's value at coordinate j, which in this picture is
      the cell's centre j + ½, so a sample at RoIAlign coordinate x is drawn
      at x + ½. With ``aligned=False`` the samples therefore sit half a cell
      right of and below the box; ``aligned=True`` subtracts that half cell.
    * ``method="pool"``: the box rounded to whole cells and each bin's cells
      (shaded, one colour per bin; bins may overlap), whose maximum RoIPool takes.

    Args:
        box: ``(x1, y1, x2, y2)`` in image pixels.
        feature_size: ``(H, W)`` of the feature map.
        output_size: bins per side, ``P`` or ``(PH, PW)``.
        method: ``"align"`` or ``"pool"``.
        spatial_scale: 1 / stride.
        sampling_ratio: RoIAlign points per bin per axis (≤ 0: adaptive).
        aligned: RoIAlign's half-pixel shift.
        ax: draw into this axes instead of a new figure.
        title: the axes title (default: the method and its settings).
        values: optional ``(H, W)`` map drawn under the grid (e.g. the feature values).

    Returns:
        The figure. For ``"align"`` the axes' first line holds the sample
        points, ordered bin by bin (row-major) and, within a bin, row-major.
    """
    if method not in ("align", "pool"):
        raise ValueError(f"method must be 'align' or 'pool', got {method!r}")
    h, w = feature_size
    fig, ax = _new_axes(ax, (0.55 * w + 1.6, 0.55 * h + 1.0))
    if values is not None:
        v = np.atleast_2d(_as_numpy(values))
        ax.imshow(v, cmap="Greys", alpha=0.35, extent=(0, w, h, 0), interpolation="nearest")
    for i in range(h + 1):
        ax.plot([0, w], [i, i], color="0.75", lw=0.8, zorder=1)
    for j in range(w + 1):
        ax.plot([j, j], [0, h], color="0.75", lw=0.8, zorder=1)
    for line in ax.lines:  # the grid should not count as data lines
        line.set_gid("grid")
    x1, y1, x2, y2 = (float(v) * spatial_scale for v in box)
    ax.add_patch(
        Rectangle(
            (x1, y1),
            x2 - x1,
            y2 - y1,
            fill=False,
            ec="black",
            lw=2.2,
            zorder=4,
            label="box · scale",
        )
    )
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    if method == "align":
        ys, xs, (wy, wx, bin_h, bin_w) = _roi_align_points(
            box, (ph, pw), spatial_scale, sampling_ratio, aligned
        )
        points, colors = [], []
        for p in range(ph):
            for q in range(pw):
                color = GROUP_COLORS[(p * pw + q) % len(GROUP_COLORS)]
                ax.add_patch(
                    Rectangle(
                        (wx + q * bin_w + 0.5, wy + p * bin_h + 0.5),
                        bin_w,
                        bin_h,
                        fill=False,
                        ec=color,
                        lw=1.2,
                        ls="--",
                        zorder=3,
                    )
                )
                for y in ys[p]:
                    for x in xs[q]:
                        points.append((x + 0.5, y + 0.5))
                        colors.append(color)
        pts = np.asarray(points)
        line = ax.plot(pts[:, 0], pts[:, 1], "o", ms=0, zorder=5)[0]  # the data, invisible
        line.set_gid("samples")
        ax.scatter(
            pts[:, 0], pts[:, 1], c=colors, s=22, zorder=6, edgecolors="black", linewidths=0.5
        )
        settings = f"aligned={aligned}, {len(ys[0])}×{len(xs[0])} samples per bin"
        default_title = f"RoIAlign, {settings}"
    else:
        rows, cols, (qx1, qy1, qx2, qy2) = _roi_pool_bins(box, (ph, pw), spatial_scale, (h, w))
        for p, (r0, r1) in enumerate(rows):
            for q, (c0, c1) in enumerate(cols):
                color = GROUP_COLORS[(p * pw + q) % len(GROUP_COLORS)]
                if r1 > r0 and c1 > c0:
                    ax.add_patch(
                        Rectangle(
                            (c0, r0),
                            c1 - c0,
                            r1 - r0,
                            fc=color,
                            alpha=0.3,
                            ec=color,
                            lw=1.5,
                            zorder=2,
                        )
                    )
        ax.add_patch(
            Rectangle(
                (qx1, qy1),
                qx2 - qx1 + 1,
                qy2 - qy1 + 1,
                fill=False,
                ec="tab:red",
                lw=1.5,
                ls="--",
                zorder=3,
                label="rounded to cells",
            )
        )
        default_title = "RoIPool: the box rounded to cells, bins rounded outwards"
    ax.set_xlim(-0.3, w + 0.3)
    ax.set_ylim(h + 0.3, -0.3)
    ax.set_aspect("equal")
    ax.set_xticks(np.arange(w) + 0.5, [str(j) for j in range(w)], fontsize=7)
    ax.set_yticks(np.arange(h) + 0.5, [str(i) for i in range(h)], fontsize=7)
    ax.set_xlabel("feature column")
    ax.set_ylabel("feature row")
    ax.legend(loc="lower right", fontsize=7, framealpha=0.8)
    ax.set_title(title or default_title, fontsize=9)
    return fig


def show_masks(
    image,
    masks,
    boxes=None,
    labels: Sequence[str] | None = None,
    threshold: float = 0.5,
    alpha: float = 0.5,
    ax=None,
    title: str | None = None,
    figsize=(6.4, 4.8),
) -> Figure:
    """Instance masks as coloured overlays on the image (one colour per instance).

    Args:
        image: ``(H, W, 3)`` uint8 or float image.
        masks: ``(D, H, W)`` or ``(D, 1, H, W)`` — binary masks or
            probabilities; a pixel belongs to mask d where it is ≥ ``threshold``.
            Later masks are painted over earlier ones.
        boxes: optional ``(D, 4)`` boxes drawn in the masks' colours.
        labels: optional text per instance (needs ``boxes``).
        threshold: probability at which a pixel counts as inside.
        alpha: opacity of the colour inside a mask.
        ax: draw into this axes instead of a new figure.
        title: the axes title.

    Returns:
        The figure. ``fig.axes[0].images[0]`` holds the blended image
        (floats in [0, 1]): the image itself outside every mask, and
        ``(1 − alpha) · image + alpha · colour`` inside mask d.
    """
    img = _image_hwc(image).astype(np.float64)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.max() > 1.0:
        img = img / 255.0
    m = _as_numpy(masks)
    if m.ndim == 4:
        m = m[:, 0]
    if m.ndim == 2:
        m = m[None]
    if m.shape[1:] != img.shape[:2]:
        raise ValueError(f"masks {m.shape[1:]} do not match the image {img.shape[:2]}")
    from matplotlib.colors import to_rgb

    blended = img.copy()
    colors = [GROUP_COLORS[d % len(GROUP_COLORS)] for d in range(len(m))]
    for d in range(len(m)):
        inside = m[d] >= threshold
        blended[inside] = (1 - alpha) * img[inside] + alpha * np.asarray(to_rgb(colors[d]))
    fig, ax = _new_axes(ax, figsize)
    ax.imshow(np.clip(blended, 0, 1))
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    if boxes is not None:
        draw_boxes(None, boxes, labels=labels, colors=colors, ax=ax, linewidth=1.2)
    if title:
        ax.set_title(title)
    return fig


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each run of ``window`` consecutive values (``len − window + 1`` of them)."""
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def save_figure(fig: Figure, path) -> Path:
    """Write ``fig`` as a PNG via a temporary file + rename: never half a picture."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png.tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def plot_loss_curves(
    history,
    smooth: int = 10,
    ax=None,
    title: str | None = None,
    xlabel: str = "iteration",
    ylabel: str = "loss",
    total: bool = False,
    logy: bool = False,
) -> Figure:
    """Training losses per iteration: faint raw values and a moving average of each.

    Args:
        history: ``{name: [value per iteration]}`` or a list of per-iteration
            dicts ``[{name: value}, …]`` (Tensors, arrays or floats).
        smooth: moving-average window (1: no smoothing line). The average of
            iterations ``t − smooth + 1 … t`` is drawn at iteration ``t``.
        ax: draw into this axes instead of a new figure.
        title: the axes title.
        xlabel, ylabel: axis labels.
        total: also draw the sum of all components.
        logy: logarithmic y axis.

    Returns:
        The figure. For every series (in order, ``total`` last): a line of the
        raw values, then — with ``smooth > 1`` and enough values — its moving
        average, labelled with the series name and its last smoothed value.
    """
    if isinstance(history, Mapping):
        series = {name: [float(_as_numpy(v)) for v in values] for name, values in history.items()}
    else:
        history = list(history)
        names = list(history[0]) if history else []
        series = {name: [float(_as_numpy(h[name])) for h in history] for name in names}
    if not series or not any(series.values()):
        raise ValueError("no losses to plot")
    if total:
        series["total"] = list(np.sum([np.asarray(v) for v in series.values()], axis=0))
    fig, ax = _new_axes(ax, (7.5, 3.6))
    for k, (name, values) in enumerate(series.items()):
        v = np.asarray(values, dtype=np.float64)
        color = "black" if name == "total" else GROUP_COLORS[k % len(GROUP_COLORS)]
        steps = np.arange(len(v))
        if smooth > 1 and len(v) >= smooth:
            ax.plot(steps, v, color=color, alpha=0.25, lw=0.8)
            avg = _moving_average(v, smooth)
            ax.plot(
                steps[smooth - 1 :],
                avg,
                color=color,
                lw=1.8,
                label=f"{name} (last {smooth}: {avg[-1]:.3g})",
            )
        else:
            ax.plot(steps, v, color=color, lw=1.2, label=f"{name} (last: {v[-1]:.3g})")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return fig
