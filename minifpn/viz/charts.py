"""Charts: loss curves, bar charts and per-module gradient norms."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from minifpn.viz._common import GROUP_COLORS, _as_numpy, _new_axes


def _legend(ax, where: str, fontsize: float = 8) -> None:
    """A legend inside the axes (a matplotlib ``loc`` such as "best"), or "below" them.

    "below" puts it under the x label, in two columns, where it can cover no data: for
    plots whose curves or bars fill the whole axes.
    """
    if where == "below":
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=fontsize,
                  frameon=False)
    else:
        ax.legend(loc=where, fontsize=fontsize)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each run of ``window`` consecutive values (``len − window + 1`` of them)."""
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_loss_curves(
    history,
    smooth: int = 10,
    ax=None,
    title: str | None = None,
    xlabel: str = "iteration",
    ylabel: str = "loss",
    total: bool = False,
    logy: bool = False,
    legend: str = "best",
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
        legend: where the legend goes: a matplotlib ``loc`` ("best", "upper
            right", …) or "below" the axes, where it covers no curve.

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
    _legend(ax, legend)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return fig


def plot_bars(
    values,
    ax=None,
    title: str | None = None,
    ylabel: str | None = None,
    logy: bool = False,
    colors=None,
    figsize=(8.0, 3.6),
    legend: str = "best",
) -> Figure:
    """A bar chart, or a grouped one for several series.

    Args:
        values: ``{category: value}`` for one series of bars, or
            ``{series: {category: value}}`` for bars side by side per category
            (categories in the order first seen; a missing one counts as 0).
        colors: one colour per bar (one series) or per series; default tab10.
        logy: logarithmic y axis (zeros are then not drawn).
        legend: where a grouped chart's legend goes: a matplotlib ``loc`` or
            "below" the axes, where it covers no bar.

    Returns:
        The figure; each bar is a Rectangle in ``ax.patches``, one series
        after another, and several series get a legend.
    """
    values = dict(values)
    if not values:
        raise ValueError("no values to plot")
    grouped = isinstance(next(iter(values.values())), Mapping)
    series = values if grouped else {"": values}
    categories = list(dict.fromkeys(c for s in series.values() for c in s))
    fig, ax = _new_axes(ax, figsize)
    width = 0.8 / len(series)
    xs = np.arange(len(categories))
    for k, (name, bars) in enumerate(series.items()):
        heights = [float(_as_numpy(bars.get(c, 0.0))) for c in categories]
        if grouped:
            color = colors[k] if colors is not None else GROUP_COLORS[k % len(GROUP_COLORS)]
        else:
            color = colors if colors is not None else GROUP_COLORS[0]
        ax.bar(xs + (k - (len(series) - 1) / 2) * width, heights, width, color=color,
               label=name or None)
    ax.set_xticks(xs, [str(c) for c in categories],
                  rotation=30 if max(len(str(c)) for c in categories) > 8 else 0,
                  ha="right" if max(len(str(c)) for c in categories) > 8 else "center")
    if logy:
        ax.set_yscale("log")
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if grouped:
        _legend(ax, legend)
    ax.grid(alpha=0.3, axis="y")
    return fig


#: Colour of each part of a detector in gradient-norm charts, by parameter-name prefix.
PART_COLORS = {"backbone.body": "tab:blue", "backbone.fpn": "tab:green", "rpn": "tab:orange",
               "roi_heads": "tab:red"}


def plot_gradient_norms(norms: Mapping[str, float], ax=None, title: str | None = None,
                        figsize=(11.0, 3.8)) -> Figure:
    """Gradient norm per module (``minifpn.tools.gradstats.gradient_norms``) as coloured bars.

    Bars are coloured by the part of the detector their name starts with
    (:data:`PART_COLORS`: ResNet blue, FPN green, RPN orange, RoI heads red,
    anything else grey), on a log axis (a zero gradient draws no bar).
    """
    colors = [next((c for prefix, c in PART_COLORS.items() if name.startswith(prefix)), "0.5")
              for name in norms]
    labels = {name.removeprefix("backbone."): value for name, value in norms.items()}
    fig = plot_bars(labels, ax=ax, title=title, ylabel="‖gradient‖₂", logy=True,
                    colors=colors, figsize=figsize)
    return fig
