"""Receptive fields: the input gradient of one feature pixel against the theoretical field."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from minifpn.viz.features import _feature_chw


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
