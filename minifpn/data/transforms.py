"""Data augmentation on an image and its target: the horizontal flip and colour jitter.

Shape shorthand:  G objects;  (H, W) the image's height and width.

A flip mirrors the image left–right; a box ``(x1, y1, x2, y2)`` in pixel-edge
coordinates (the image spans ``0..W``) becomes ``(W − x2, y1, W − x1, y2)``
— the right edge becomes the left — and masks ``(G, H, W)`` are mirrored
along their last axis, so a mask's box still equals the flipped box.
Flipping twice gives back the original. The FPN paper trains with only
this augmentation.

Colour jitter (torchvision's ``ColorJitter`` without hue) changes only the
pixels' values, never where anything is: boxes and masks stay as they are.
On a float image in [0, 1], each of three adjustments blends the image with
something, ``clip(f · image + (1 − f) · other, 0, 1)``, for a factor ``f``
drawn from ``[max(0, 1 − s), 1 + s]`` for strength ``s``:

* **brightness** — with black (``other = 0``): the image times ``f``;
* **contrast** — with the mean grey level of the image (``f = 0``: flat grey);
* **saturation** — with the image's own greyscale (``f = 0``: black and white),

greyscale being ``0.299 R + 0.587 G + 0.114 B``; the three are applied in a
random order, each to the result of the one before, as torchvision does.
He et al. ("Rethinking ImageNet Pre-training") find that a detector trained
from scratch needs augmentation like this more than a pre-trained one.

Works on NumPy and CuPy arrays; the inputs are never modified.
"""

from __future__ import annotations

from minifpn.backend import get_array_module

#: ITU-R BT.601 luma weights of (R, G, B): PIL's "L" conversion (torchvision's grayscale).
LUMA = (0.299, 0.587, 0.114)

#: The adjustments of :func:`color_jitter`, in the order their factors are given.
JITTERS = ("brightness", "contrast", "saturation")


def _channel_axis(image, layout=None) -> int:
    """0 for ``(3, H, W)``, 2 for ``(H, W, 3)``."""
    return 0 if _width_axis(image, layout) == 2 else 2


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


def grayscale(image, layout=None):
    """The grey level ``0.299 R + 0.587 G + 0.114 B`` of an RGB image, one channel kept.

    ``(3, H, W)`` → ``(1, H, W)``; ``(H, W, 3)`` → ``(H, W, 1)`` (so it
    broadcasts against the image).
    """
    axis = _channel_axis(image, layout)
    xp = get_array_module(image)
    channels = xp.moveaxis(image, axis, 0)
    gray = LUMA[0] * channels[0] + LUMA[1] * channels[1] + LUMA[2] * channels[2]
    return xp.expand_dims(gray, axis)


def _blend(image, other, factor: float):
    """``clip(factor · image + (1 − factor) · other, 0, 1)`` (a new array, the image's dtype)."""
    xp = get_array_module(image)
    return xp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0).astype(image.dtype,
                                                                            copy=False)


def color_jitter(image, factors=(1.0, 1.0, 1.0), order=(0, 1, 2), layout=None):
    """Adjust brightness, contrast and saturation of a float RGB image in [0, 1].

    Args:
        image: ``(3, H, W)`` or ``(H, W, 3)`` floats in [0, 1] (NumPy or CuPy).
        factors: ``(brightness, contrast, saturation)``; 1 leaves that one as it is.
        order: the order the three are applied in, as indices into ``factors``.
        layout: ``"chw"`` / ``"hwc"`` where the shape is ambiguous.

    Returns:
        A new array of the image's shape and dtype (the input is not modified).
    """
    if image.dtype.kind != "f":
        raise ValueError(f"color_jitter needs a float image in [0, 1], got dtype {image.dtype} "
                         "(convert with minifpn.models.transform.to_chw_float)")
    axis = _channel_axis(image, layout)
    if image.shape[axis] != 3:
        raise ValueError(f"color_jitter needs an RGB image, got shape {tuple(image.shape)}")
    out = image
    for which in order:
        factor = float(factors[which])
        if factor == 1.0:
            continue
        if JITTERS[which] == "brightness":
            out = _blend(out, 0.0, factor)
        elif JITTERS[which] == "contrast":
            out = _blend(out, grayscale(out, layout).mean(), factor)
        else:
            out = _blend(out, grayscale(out, layout), factor)
    return out.copy() if out is image else out


def draw_color_jitter(rng, strengths) -> tuple:
    """The random part of :func:`random_color_jitter`: ``(factors, order)``.

    ``strengths`` is one number ``s`` for all three or ``(brightness, contrast,
    saturation)``. Draws, from ``rng`` (a ``numpy.random.Generator``), the
    order (a permutation of the three), then a factor uniform in
    ``[max(0, 1 − s), 1 + s]`` for each adjustment whose ``s`` > 0 (the others
    are 1 and draw nothing), as torchvision's ``ColorJitter.get_params``.
    """
    strengths = (strengths,) * 3 if not hasattr(strengths, "__len__") else tuple(strengths)
    if len(strengths) != 3 or any(not s >= 0 for s in strengths):
        raise ValueError(f"color jitter strengths must be one number ≥ 0 or three "
                         f"(brightness, contrast, saturation), got {strengths!r}")
    order = tuple(int(i) for i in rng.permutation(3))
    factors = tuple(float(rng.uniform(max(0.0, 1.0 - s), 1.0 + s)) if s > 0 else 1.0
                    for s in strengths)
    return factors, order


def random_color_jitter(image, rng, strengths, layout=None):
    """:func:`color_jitter` with factors and order drawn by :func:`draw_color_jitter`."""
    factors, order = draw_color_jitter(rng, strengths)
    return color_jitter(image, factors, order, layout)
