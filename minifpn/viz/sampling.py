"""RoI sampling: where RoIAlign samples, or which cells RoIPool takes, on a feature grid."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from minifpn.viz._common import GROUP_COLORS, _as_numpy, _new_axes


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
    ``[j, j+1] × [i, i+1]``, and the axes' ticks mark those cell edges, so a
    box ``(x1, y1, x2, y2)`` in image pixels is drawn exactly at
    ``box · spatial_scale`` in tick units (solid black) — the picture of a
    feature map that summarises the pixels under each cell. The cells'
    indices are written small in the top row and the left column.

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
    ax.set_xticks(np.arange(w + 1))  # cell edges: the coordinates the box is given in
    ax.set_yticks(np.arange(h + 1))
    ax.tick_params(labelsize=9)
    for j in range(w):  # cell indices, small: cell (0, 0), then columns and rows
        ax.text(j + 0.5, 0.12, "(0, 0)" if j == 0 else str(j), ha="center", va="top", fontsize=7,
                color="0.45", zorder=1)
    for i in range(1, h):
        ax.text(0.5, i + 0.5, str(i), ha="center", va="center", fontsize=7, color="0.45", zorder=1)
    ax.set_xlabel("x on the feature map (cells; cell j spans j … j+1)")
    ax.set_ylabel("y on the feature map (cells)")
    ax.legend(loc="lower right", fontsize=8, framealpha=0.8)
    ax.set_title(title or default_title, fontsize=10)
    return fig
