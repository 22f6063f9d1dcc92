"""Boxes, anchors and instance masks drawn over an image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from minifpn.viz._common import GROUP_COLORS, _as_numpy, _new_axes, box_patch


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
        ax.add_patch(box_patch((x1, y1, x2, y2), box_colors[i], lw=linewidth, ls=linestyle,
                               alpha=alpha, label=legend_label[i]))
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
    panel_size: float = 3.6,
    ncols: int = 3,
    max_dots: int = 600,
) -> Figure:
    """Each level's anchors on the image: the cell centres, and the anchors of one cell.

    One panel per level, ``ncols`` to a row. Dots mark the centres of the
    level's cells (all its ``num_anchors`` anchors share a centre), so their
    spacing is the level's stride; a level with more than ``max_dots`` cells
    shows every k-th row and column of them only (the title says so). The
    anchors of the cell nearest ``point`` are drawn as rectangles, one colour
    per shape, explained once in the figure's legend. Every panel shows the
    same region — the image and the largest anchor drawn, which may reach far
    beyond it (the dotted line is the image's edge) — so that sizes compare
    from panel to panel.

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
        ncols: panels per row.
        max_dots: the most cell centres drawn per panel.

    Returns:
        The figure, one axes per level. In each, ``lines[0]`` holds the cell
        centres drawn and the first A rectangles (patches) are the anchors of
        the chosen cell, in anchor order; the title gives the level, its
        stride, its cells and those anchors' sizes (w×h).
    """
    img = _image_hwc(image)
    height, width = img.shape[:2]
    names = (
        list(names) if names is not None else [f"P{i + 2}" for i in range(len(anchors_per_level))]
    )
    if len(names) != len(anchors_per_level):
        raise ValueError(f"got {len(names)} names for {len(anchors_per_level)} levels")
    px, py = point if point is not None else (width / 2, height / 2)
    levels = []
    for anchors in anchors_per_level:
        a = _boxes_array(anchors).reshape(-1, num_anchors, 4)  # (H·W, A, 4)
        centres = (a[:, 0, :2] + a[:, 0, 2:]) / 2  # (H·W, 2): x, y
        nearest = int(np.argmin((centres[:, 0] - px) ** 2 + (centres[:, 1] - py) ** 2))
        levels.append((centres, a[nearest]))
    shown = np.concatenate([chosen for _, chosen in levels] + [[[0, 0, width, height]]])
    x_lo, y_lo = shown[:, :2].min(axis=0) - 5
    x_hi, y_hi = shown[:, 2:].max(axis=0) + 5

    n = len(levels)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    aspect = (y_hi - y_lo) / (x_hi - x_lo)
    fig = Figure(
        figsize=(panel_size * ncols + 0.4, (panel_size * aspect + 0.8) * nrows + 0.9),
        layout="constrained",
    )
    colors = [GROUP_COLORS[j % len(GROUP_COLORS)] for j in range(num_anchors)]
    for k, (name, (centres, chosen)) in enumerate(zip(names, levels)):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        ax.imshow(img, cmap=None if img.ndim == 3 else "gray")
        xs, ys = np.unique(centres[:, 0]), np.unique(centres[:, 1])
        step = max(1, int(np.ceil(np.sqrt(len(centres) / max_dots))))
        keep = np.isin(centres[:, 0], xs[::step]) & np.isin(centres[:, 1], ys[::step])
        ax.plot(centres[keep, 0], centres[keep, 1], ".", ms=2.0, color="white", alpha=0.8)
        for j, (x1, y1, x2, y2) in enumerate(chosen):
            ratio = (y2 - y1) / (x2 - x1)
            shape = round(2 * ratio) / 2 if ratio > 0.75 else 0.5
            ax.add_patch(box_patch((x1, y1, x2, y2), colors[j], lw=2.0, label=f"h/w ≈ {shape:g}"))
        stride = f" · stride {xs[1] - xs[0]:g}" if len(xs) > 1 else ""
        every = f" (a dot per {step}×{step} cells)" if step > 1 else ""
        sizes = ", ".join(f"{x2 - x1:g}×{y2 - y1:g}" for x1, y1, x2, y2 in chosen)
        ax.set_title(f"{name}{stride} · {len(ys)}×{len(xs)} cells{every}\nanchors {sizes}",
                     fontsize=10)
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_hi, y_lo)
        ax.add_patch(box_patch((0, 0, width, height), "0.3", lw=0.8, ls=":"))
        ax.tick_params(labelsize=8)
        ax.set_xlabel("x (pixels)", fontsize=9)
        if k % ncols == 0:
            ax.set_ylabel("y (pixels)", fontsize=9)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=num_anchors, fontsize=10,
               title="anchor shape (the colours, in every panel)", title_fontsize=10)
    fig.suptitle(title or "anchors per level: every cell centre, and the anchors of one cell")
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
