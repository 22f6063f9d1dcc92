"""Run a detector on image files and draw what it found.

:func:`draw_predictions` draws one image's detections — boxes, class names
with scores, and masks overlaid semi-transparently, each detection in its own
colour — on a matplotlib :class:`~matplotlib.figure.Figure` built directly
(no pyplot state, so it works under ``Agg``, in scripts, notebooks and tests)::

    fig = draw_predictions(image, model([to_chw_float(image)])[0], dataset.class_names)
    fig.savefig("prediction.png")

:func:`predict_images` does that for a list of image files (or folders of
them) and saves one PNG per image::

    predict_images(model, ["street.jpg"], dataset.class_names, "predictions/")
    # → [PosixPath('predictions/street.png')]

The PNG keeps the image's aspect ratio: the image fills the whole picture,
its long side drawn at between 640 and 1600 pixels (so a COCO image keeps its
own resolution and a thumbnail is enlarged enough for its labels to be read).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from tqdm import tqdm

from minifpn import backend
from minifpn.autograd import no_grad, raw
from minifpn.data.images import image_header, read_image
from minifpn.engine.inference import check_model_device, inference_mode
from minifpn.models.mask_head import paste_masks_in_image
from minifpn.models.transform import to_chw_float
from minifpn.viz import box_patch, save_figure

__all__ = ["IMAGE_SUFFIXES", "collect_image_paths", "draw_predictions", "predict_images"]

#: File suffixes taken as images when a folder is given to :func:`predict_images`.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

#: Detection colours, cycled by rank (matplotlib's tab10).
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
          "tab:pink", "tab:olive", "tab:cyan", "tab:gray")

#: Opacity of the mask overlay.
MASK_ALPHA = 0.45

#: The long side of a drawn picture, in pixels, is kept within these bounds.
MIN_LONG_SIDE, MAX_LONG_SIDE = 640, 1600
DPI = 100

#: Mask pixels pasted into the image at a time (4 M: 16 MB of float32), so that a
#: picture's masks never need a full-image float map per detection at once.
PASTE_PIXELS = 1 << 22


def _host(value) -> np.ndarray:
    return backend.to_numpy(raw(value))


def _label_text(label, score, class_names) -> str:
    if label is None:
        return f"{score:.2f}"
    if class_names is not None and 0 <= label < len(class_names):
        name = class_names[label]
    else:
        name = f"class {label}"
    return f"{name} {score:.2f}"


def _picture_axes(ax, height: int, width: int):
    """``(figure, axes, font size)``: ``ax``'s, or a new figure that is exactly the image.

    The new figure keeps the image's aspect ratio, its long side drawn at
    between :data:`MIN_LONG_SIDE` and :data:`MAX_LONG_SIDE` pixels.
    """
    if ax is not None:
        return ax.figure, ax, 8.0
    long_side = max(height, width)
    scale = min(max(long_side, MIN_LONG_SIDE), MAX_LONG_SIDE) / long_side
    fig = Figure(figsize=(width * scale / DPI, height * scale / DPI), dpi=DPI)
    return fig, fig.add_axes((0, 0, 1, 1)), max(7.0, min(height, width) * scale / 60)


def draw_predictions(image, output: dict, class_names=None, score_threshold: float = 0.5,
                     ax=None) -> Figure:
    """Draw one image's detections; returns the Figure.

    Args:
        image: ``(H, W, 3)`` uint8 RGB, the image the detections are for.
        output: one image's eval-mode output: ``"boxes"`` ``(D, 4)`` x1y1x2y2
            in the image's pixels, ``"scores"`` ``(D,)``, ``"labels"`` ``(D,)``
            and optionally ``"masks"`` ``(D, 1, H, W)`` probabilities (NumPy,
            CuPy or Tensors) — or ``(D, M, M)`` per-box masks, as a model with
            ``paste_masks = False`` gives them, pasted here a few at a time.
            Without scores every box is drawn; without labels only the score
            is written.
        class_names: names indexed by label (``dataset.class_names``, with
            ``"__background__"`` at 0); None writes ``"class <label>"``.
        score_threshold: draw the detections scoring at least this.
        ax: draw into this axes (then its figure is returned); by default a
            new Figure whose single axes is exactly the image.

    Every detection drawn gets a box (a :class:`~matplotlib.patches.Rectangle`
    in ``ax.patches``), a label ``"<name> <score>"`` (in ``ax.texts``) and,
    with masks, its mask pixels (probability > 0.5) tinted in its colour.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"draw_predictions expects an (H, W, 3) RGB image, got shape "
                         f"{image.shape}")
    height, width = image.shape[:2]
    boxes = _host(output["boxes"]).astype(np.float64).reshape(-1, 4)
    scores = (_host(output["scores"]).astype(np.float64).reshape(-1)
              if output.get("scores") is not None else np.ones(len(boxes)))
    labels = (_host(output["labels"]).astype(np.int64).reshape(-1)
              if output.get("labels") is not None else None)
    keep = np.flatnonzero(scores >= score_threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")]  # best first

    fig, ax, font_size = _picture_axes(ax, height, width)
    # extent: pixel (r, c) covers [c, c+1] × [r, r+1], as box coordinates do
    extent = (0, width, height, 0)
    ax.imshow(image, extent=extent, interpolation="nearest")

    colors = {int(d): COLORS[rank % len(COLORS)] for rank, d in enumerate(keep)}
    if output.get("masks") is not None and len(keep):
        overlay = _mask_overlay(_host(output["masks"]), boxes, keep, colors, (height, width))
        ax.imshow(overlay, extent=extent, interpolation="nearest")

    for d in keep:
        x1, y1, x2, y2 = boxes[d]
        color = colors[int(d)]
        ax.add_patch(box_patch(boxes[d], color, lw=2))
        text = _label_text(None if labels is None else int(labels[d]), scores[d], class_names)
        inside = y1 < 0.05 * height  # no room above the box: write inside it
        ax.text(x1, y1, text, fontsize=font_size, color="white",
                va="top" if inside else "bottom", ha="left", clip_on=True,
                bbox={"facecolor": color, "alpha": 0.8, "pad": 1.5, "edgecolor": "none"})
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    return fig


def _mask_overlay(masks, boxes, keep, colors, size) -> np.ndarray:
    """``(H, W, 4)`` uint8 RGBA: the mask pixels (probability > 0.5) of detections ``keep``, tinted.

    ``masks`` are full-image maps ``(D, 1, H, W)`` (or ``(D, H, W)``), or the
    model's per-box ``(D, M, M)`` (``paste_masks=False``), which are pasted
    into the image here a few at a time (:data:`PASTE_PIXELS`) — so a big
    image never needs D full-size float maps at once.
    """
    overlay = np.zeros((*size, 4), np.uint8)
    pasted = tuple(masks.shape[-2:]) == tuple(size)
    chunk = max(1, PASTE_PIXELS // max(1, size[0] * size[1]))
    order = keep[::-1]  # the best detection's colour ends up on top
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        if pasted:
            probabilities = masks.reshape(len(masks), *size)[part]
        else:
            probabilities = paste_masks_in_image(masks[part], boxes[part], size)[:, 0]
        for d, pixels in zip(part, probabilities > 0.5):
            overlay[pixels] = np.round(np.multiply(to_rgba(colors[int(d)], MASK_ALPHA), 255))
    return overlay


def collect_image_paths(paths) -> list:
    """Image files of ``paths``: files as given, folders expanded to their images (sorted).

    A single path (str or Path) is accepted too. Raises ``FileNotFoundError``
    naming the first missing path, ``ValueError`` for a folder without images.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            files += found
        elif path.exists():  # a file — or a named pipe, which read_image refuses clearly
            files.append(path)
        else:
            raise FileNotFoundError(f"no such image: {path}")
    return files


def _save_as_new(fig, out_dir: Path, stem: str) -> Path:
    """Save ``fig`` as ``<stem>.png`` in ``out_dir``, or ``<stem>_2.png``, … — never over a file.

    Whatever is in ``out_dir`` already (an input image, an earlier run's
    pictures, anything of the user's) is left alone: the first free name is
    taken, and the write itself refuses a name taken in the meantime.
    """
    n = 1
    while True:
        target = out_dir / (f"{stem}.png" if n == 1 else f"{stem}_{n}.png")
        if not os.path.lexists(target):
            try:
                return save_figure(fig, target, overwrite=False)
            except FileExistsError:
                pass  # taken since we looked: try the next name
        n += 1


def predict_images(model, image_paths, class_names, out_dir, device: str = "cpu",
                   score_threshold: float = 0.5, progress: bool = True) -> list:
    """Run ``model`` on image files and save a picture of each one's detections.

    Args:
        model: a detector (FasterRCNN / MaskRCNN) already on ``device``.
        image_paths: image files, or folders (their images, sorted, are used).
        class_names: names indexed by label, e.g. ``dataset.class_names``.
        out_dir: where ``<image stem>.png`` is written (created if needed).
            No existing file is ever replaced: if the name is taken (an
            input image, an earlier picture, a file of the user's, or a stem
            seen twice) the first free ``<stem>_2.png``, ``_3``, … is used.
        device: ``"cpu"`` or ``"cuda"``: where the images are sent.
        score_threshold: draw the detections scoring at least this.
        progress: show a tqdm progress bar.

    Returns:
        The written PNG paths, in input order.

    Every path and image header is checked before the model runs
    (``FileNotFoundError`` / :class:`~minifpn.data.DataError` naming the
    file); an image whose pixels turn out unreadable raises before anything
    is written for it. PNGs are written atomically (temp + rename).

    Memory stays a small multiple of the picture: an image whose long side
    exceeds :data:`MAX_LONG_SIDE` (the most a picture shows) is read at that
    size (JPEGs are decoded reduced), so the model sees that reduced image —
    it resizes every input to its own ``max_size`` anyway — and masks are
    pasted a few at a time (the model runs with ``paste_masks = False``).
    The model's training mode and ``paste_masks`` are restored afterwards.
    """
    files = collect_image_paths(image_paths)
    if not files:
        raise ValueError("no images given")
    for file in files:
        image_header(file)  # a missing, irregular or unrecognisable file fails now
    device = backend.normalize_device(device)
    check_model_device(model, device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    written = []
    with inference_mode(model, paste_masks=False):
        for file in tqdm(files, desc="predicting", unit="img", disable=not progress,
                         mininterval=0.5):
            image = read_image(file, max_side=MAX_LONG_SIDE)
            with no_grad():
                output = model([backend.to_device(to_chw_float(image), device)])[0]
            fig = draw_predictions(image, output, class_names, score_threshold)
            written.append(_save_as_new(fig, out_dir, file.stem))
    return written
