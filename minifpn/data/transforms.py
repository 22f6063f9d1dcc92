"""Data augmentation on an image and its target: the horizontal flip.

Shape shorthand:  G objects;  (H, W) the image's height and width.

A flip mirrors the image left–right; a box ``(x1, y1, x2, y2)`` in pixel-edge
coordinates (the image spans ``0..W``) becomes ``(W − x2, y1, W − x1, y2)``
— the right edge becomes the left — and masks ``(G, H, W)`` are mirrored
along their last axis, so a mask's box still equals the flipped box.
Flipping twice gives back the original. The FPN paper trains with only
this augmentation.

Works on NumPy and CuPy arrays; the inputs are never modified.
"""

from __future__ import annotations


def _width_axis(image, layout=None) -> int:
    """1 for ``(H, W, 3)``, 2 for ``(3, H, W)``."""
    shape = tuple(image.shape)
    if layout is not None:
        if layout not in ("hwc", "chw") or len(shape) != 3:
            raise ValueError(f"layout must be 'hwc' or 'chw' for a 3-d image, got {layout!r} "
                             f"and shape {shape}")
        return 1 if layout == "hwc" else 2
    if len(shape) == 3 and shape[-1] in (1, 3, 4):
        return 1
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return 2
    raise ValueError(f"expected an image of shape (H, W, 3) or (3, H, W), got {shape}")


def horizontal_flip(image, target=None, layout=None):
    """Mirror ``image`` (``(H, W, 3)`` or ``(3, H, W)``) and its ``target`` left–right.

    The layout is read from the shape (a last axis of 3 means ``(H, W, 3)``);
    pass ``layout="hwc"`` or ``"chw"`` where that is ambiguous.

    ``target`` (optional) is a dict with ``"boxes"`` ``(G, 4)`` ``(x1, y1, x2, y2)``
    in pixels and optionally ``"masks"`` ``(G, H, W)``; other keys are carried
    over unchanged. Returns ``(image, target)`` — new arrays, a new dict.
    """
    axis = _width_axis(image, layout)
    width = image.shape[axis]
    index = [slice(None)] * 3
    index[axis] = slice(None, None, -1)
    flipped = image[tuple(index)].copy()
    if target is None:
        return flipped, None
    target = dict(target)
    if "boxes" in target:
        boxes = target["boxes"]
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"target['boxes'] must be (G, 4), got shape {tuple(boxes.shape)}")
        out = boxes.copy()
        out[:, 0] = width - boxes[:, 2]
        out[:, 2] = width - boxes[:, 0]
        target["boxes"] = out
    if "masks" in target:
        masks = target["masks"]
        if masks.ndim != 3 or masks.shape[-1] != width:
            raise ValueError(f"target['masks'] must be (G, H, {width}) for this image, got "
                             f"shape {tuple(masks.shape)}")
        target["masks"] = masks[..., ::-1].copy()
    return flipped, target


def random_horizontal_flip(image, target=None, rng=None, p: float = 0.5, layout=None):
    """:func:`horizontal_flip` with probability ``p``, else the inputs unchanged.

    ``rng`` is a ``numpy.random.Generator`` (pass one seeded for reproducible
    training; None draws a fresh one).
    """
    import numpy as np

    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    rng = np.random.default_rng() if rng is None else rng
    if rng.random() < p:
        return horizontal_flip(image, target, layout)
    return image, target
