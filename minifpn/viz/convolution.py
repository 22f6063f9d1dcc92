"""Convolution windows: im2col columns, kernel taps on the input grid, overlap counts.

The pictures call the real :func:`~minifpn.functional.conv.im2col`, so what
you see is what the library does.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from minifpn.functional.conv import ConvGeometry, im2col
from minifpn.viz._common import WINDOW_COLORS, _as_numpy, _new_axes
from minifpn.viz.matrices import show_matrix


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
    size,
    kernel=3,
    stride=1,
    padding=0,
    dilation=1,
    positions=(0, 1),
    ax=None,
    title=None,
    legend=True,
) -> Figure:
    """Where the kernel taps of a few output pixels land on the input grid.

    Input pixels are white squares, padding grey; each chosen output pixel's
    window is outlined and tinted in one colour, its taps are markers of that
    colour (a different marker per window, nudged apart where windows share a
    pixel), and the title gives the output size from the formula
    ``Ho = (H + 2p − d(k − 1) − 1) // s + 1``.

    Args:
        size: input size, ``H`` or ``(H, W)``.
        kernel, stride, padding, dilation: int or (h, w) pair.
        positions: output pixels (flat indices) to draw.
        ax: draw into this axes instead of a new figure.
        title: axes title (default: the settings and the output size).
        legend: a legend beside the axes (pass False and call ``fig.legend``
            once for a grid of such panels).

    Returns:
        The figure. The axes has one line (``ax.lines``) per position, with
        one marker per tap; its patches are the ``Hp·Wp`` grid squares, then
        one outline per position, spanning the window's taps.
    """
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    g = ConvGeometry.make(kernel, stride, padding, dilation)
    ho, wo = g.out_size(h, w)
    hp, wp = h + 2 * g.ph, w + 2 * g.pw
    fig, ax = _new_axes(ax, (0.45 * wp + 1.5, 0.45 * hp + 1.2))
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
    markers = "osD^v"
    for k, p in enumerate(positions):
        taps = _window_taps(g, p, wo)
        color = WINDOW_COLORS[k % len(WINDOW_COLORS)]
        rows, cols = [r for r, _ in taps], [c for _, c in taps]
        ax.add_patch(
            Rectangle(
                (min(cols) - 0.5, min(rows) - 0.5),
                max(cols) - min(cols) + 1,
                max(rows) - min(rows) + 1,
                fc=to_rgba(color, 0.12),
                ec=color,
                lw=2.0,
            )
        )
        shift = (k - (n - 1) / 2) * 0.22  # side by side when windows share pixels
        ax.plot(
            [c + shift for c in cols],
            rows,
            markers[k % len(markers)],
            ls="none",
            color=color,
            ms=7,
            mec="black",
            mew=0.5,
            label=f"taps of output pixel {divmod(p, wo)}",
        )
    ax.set_xlim(-0.5, wp - 0.5)
    ax.set_ylim(hp - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xlabel("padded input column")
    ax.set_ylabel("padded input row")
    if positions and legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False)
    ax.set_title(
        title or f"k={g.kh}, s={g.sh}, p={g.ph}, d={g.dh}: {h}×{w} → {ho}×{wo}", fontsize=11
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
