"""Feature maps: channel energy of each pyramid level, and individual channels."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from minifpn.viz._common import _as_numpy

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
    shared_scale: bool = True,
) -> Figure:
    """A few individual channels of one or several levels, one row per level.

    A map with negative values (pyramid levels have no ReLU) gets a diverging
    colormap centred on 0, ±max |value|; a map that is never negative (after a
    ReLU, like C2–C5) a sequential one from 0 to its maximum.

    Args:
        features: one map ``(C, H, W)`` / ``(1, C, H, W)``, or ``{name: map}``
            for several rows.
        channels: channel indices to show (the same in every row).
        title: figure title (default "channels …").
        cmap: force one matplotlib colormap (default: "RdBu_r" for signed
            maps, "viridis" for non-negative ones).
        panel_size: inches per panel.
        shared_scale: the channels in a row share one colour scale and one
            colour bar (to compare their strengths); False gives every panel
            its own scale and bar (to see the structure of each, however
            weak), up to the 99.5th percentile of its magnitudes so that a few
            outlying cells do not darken the rest (the bar shows the clipping).

    Returns:
        The figure: for each row, its ``len(channels)`` panels (image data =
        that channel), each followed by its colour bar when not shared, then
        the row's colour bar when shared.
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
    width = panel_size * (1.0 if shared_scale else 1.25)
    fig = Figure(
        figsize=(width * len(channels) + 1.2, (panel_size * aspect + 0.7) * len(maps) + 0.5),
        layout="constrained",
    )
    grid = fig.add_gridspec(len(maps), len(channels))

    def scale_of(values, percentile=100.0):
        limit = float(np.percentile(np.abs(values), percentile)) or 1.0
        signed = bool((values < 0).any())
        return (cmap or ("RdBu_r" if signed else "viridis")), (-limit if signed else 0.0), limit

    for r, (name, f) in enumerate(maps.items()):
        row_scale = scale_of(f[channels])
        axes = []
        for k, c in enumerate(channels):
            ax = fig.add_subplot(grid[r, k])
            panel_cmap, vmin, vmax = row_scale if shared_scale else scale_of(f[c], 99.5)
            shown = ax.imshow(f[c], cmap=panel_cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{name + ' · ' if name else ''}channel {c}", fontsize=9)
            ax.set_xlabel("column", fontsize=8)
            ax.set_ylabel(
                f"{name} · {f.shape[1]}×{f.shape[2]}\nrow" if k == 0 and name else "row", fontsize=8
            )
            ax.tick_params(labelsize=7)
            axes.append(ax)
            if not shared_scale:
                clipped = float(np.abs(f[c]).max()) > vmax
                bar = fig.colorbar(shown, ax=ax, shrink=0.8, extend="max" if clipped else "neither")
                bar.ax.tick_params(labelsize=7)
        if shared_scale:
            bar = fig.colorbar(shown, ax=axes, shrink=0.8, label="activation")
            bar.ax.tick_params(labelsize=7)
    fig.suptitle(title or f"channels {', '.join(map(str, channels))}")
    return fig
