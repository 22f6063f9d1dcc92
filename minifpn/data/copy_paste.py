"""Copy-paste augmentation: objects cut out of one training image, pasted onto another.

Shape shorthand:  G objects in the image pasted onto;  S in the source image;
(H, W) the image's height and width, (h, w) the source's.

Ghiasi et al. ("Simple Copy-Paste is a Strong Data Augmentation Method for
Instance Segmentation", 2021) take a random subset of a second image's
objects, cut each out along its mask and paste it onto the training image.
The detector sees the same people in new surroundings, at new sizes and
overlaps — new examples made from the masks the dataset already has, which
matters most where the data is small (their gains grow as the training set
shrinks), as it is on coco-mini.

What one paste does (:func:`paste_objects`, no randomness):

1. the source is resized by ``scale`` (nearest neighbour, so each pasted pixel
   *is* a source pixel and the masks stay exactly aligned with it: the
   pixel at ``(y, x)`` of the scaled source is the source's
   ``(⌊(y + ½) / scale⌋, ⌊(x + ½) / scale⌋)``) and placed with its top-left
   corner at ``offset`` ``(x0, y0)`` (negative: its left / top is cut off);
2. inside the union of the pasted masks the image takes the source's pixels;
3. the image's own objects lose the pixels now covered: their masks are cut,
   their boxes shrunk to what is left of the mask, and an object left with no
   pixel is dropped;
4. each pasted object gets the box of its pasted mask (``(x1, y1, x2, y2)``,
   pixel edges: a mask covering columns 3..5 spans x 3 to 6), its label and
   ``iscrowd = 0``. Crowd regions of the source are never pasted.

:func:`random_copy_paste` draws the choices as the paper does: each source
object kept with probability ½ (at least one), the scale uniform in
``scale_range``, the offset uniform over every placement where the scaled
source and the image overlap as much as they can.

Works on NumPy and CuPy arrays; the inputs are never modified.
"""

from __future__ import annotations

from minifpn.backend import get_array_module

#: The range the source's scale is drawn from. The paper's large-scale jitter draws
#: 0.1–2.0 for both images; here only the source is rescaled (the training image
#: gets the run's own scale jitter), around 1 so pasted people keep sizes seen in
#: photos, down to half so that small people — the hardest — get more examples.
SCALE_RANGE = (0.5, 1.5)


def boxes_of_masks(masks):
    """``(G, H, W)`` masks → ``(G, 4)`` float32 boxes around their pixels (pixel edges).

    An empty mask gets the box ``(0, 0, 0, 0)``.
    """
    xp = get_array_module(masks)
    count, height, width = masks.shape
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (G, H), (G, W)
    # First and last True along each axis; argmax of the reversed array finds the last.
    y1, x1 = rows.argmax(axis=1), cols.argmax(axis=1)
    y2, x2 = height - rows[:, ::-1].argmax(axis=1), width - cols[:, ::-1].argmax(axis=1)
    boxes = xp.stack([x1, y1, x2, y2], axis=1).astype(xp.float32)
    return boxes * rows.any(axis=1)[:, None]


def _scaled_size(shape, scale: float) -> tuple:
    """``(h, w)`` of the source resized by ``scale`` (at least one pixel each)."""
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def _nearest_indices(xp, size: int, scaled: int, scale: float):
    """Which of ``size`` source rows each of ``scaled`` rows copies (nearest neighbour)."""
    return xp.minimum(xp.floor((xp.arange(scaled) + 0.5) / scale).astype(xp.int64), size - 1)


def paste_objects(image, target, source, source_target, keep, scale: float = 1.0,
                  offset=(0, 0)):
    """Paste the ``keep`` objects of ``source`` onto ``image`` (see the module docstring).

    Args:
        image: ``(H, W, 3)`` the image pasted onto.
        target: its dict: ``"boxes"`` ``(G, 4)``, ``"labels"`` ``(G,)``,
            ``"masks"`` ``(G, H, W)``, optionally ``"iscrowd"`` and ``"area"``
            ``(G,)``; other keys are carried over.
        source: ``(h, w, 3)`` the image the objects come from.
        source_target: its dict, with the same keys (``(S, …)``).
        keep: ``(S,)`` booleans, the source objects to paste (crowds are skipped).
        scale: the source's resize factor before pasting.
        offset: ``(x0, y0)`` where the scaled source's top-left corner lands.

    Returns:
        ``(image, target)``: new arrays, a new dict; the image's surviving
        objects first (in their order), then the pasted ones.
    """
    xp = get_array_module(image)
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if "masks" not in target or "masks" not in source_target:
        raise ValueError("copy-paste needs the masks of both images (load with with_masks=True)")
    height, width = image.shape[:2]
    keep = xp.asarray(keep, dtype=bool)
    if "iscrowd" in source_target:
        keep = keep & (xp.asarray(source_target["iscrowd"]) == 0)
    chosen = xp.nonzero(keep)[0]

    # The part of the scaled source that lands inside the image: rows y_a..y_b of the
    # image hold rows (y_a - y0)..(y_b - y0) of the scaled source (likewise columns).
    h, w = source.shape[:2]
    sh, sw = _scaled_size((h, w), scale)
    x0, y0 = int(offset[0]), int(offset[1])
    ya, yb, xa, xb = max(y0, 0), min(y0 + sh, height), max(x0, 0), min(x0 + sw, width)
    pasted = xp.zeros((len(chosen), height, width), dtype=bool)  # (P, H, W)
    out = image.copy()
    if len(chosen) and ya < yb and xa < xb:
        rows = _nearest_indices(xp, h, sh, scale)[ya - y0:yb - y0]
        cols = _nearest_indices(xp, w, sw, scale)[xa - x0:xb - x0]
        masks = source_target["masks"][chosen]                          # (P, h, w)
        pasted[:, ya:yb, xa:xb] = masks[:, rows[:, None], cols[None, :]] > 0
        cover = pasted[:, ya:yb, xa:xb].any(axis=0)                      # (yb-ya, xb-xa)
        window = out[ya:yb, xa:xb]
        window[cover] = source[rows[:, None], cols[None, :]][cover]
    covered = pasted.any(axis=0)                                         # (H, W)

    # The image's own objects: cut where covered; dropped when nothing is left.
    own = target["masks"] * ~covered                                     # (G, H, W)
    changed = (own != target["masks"]).any(axis=(1, 2))
    survive = own.any(axis=(1, 2)) | ~target["masks"].any(axis=(1, 2))
    boxes = xp.where(changed[:, None], boxes_of_masks(own), target["boxes"])
    shown = pasted.any(axis=(1, 2))                # a pasted object entirely outside: none
    pasted = pasted[shown]
    chosen = chosen[shown]

    result = dict(target)
    result["masks"] = xp.concatenate([own[survive], pasted.astype(own.dtype)])
    result["boxes"] = xp.concatenate([boxes[survive], boxes_of_masks(pasted)]).astype(
        target["boxes"].dtype)
    result["labels"] = xp.concatenate([target["labels"][survive],
                                       source_target["labels"][chosen]])
    if "iscrowd" in target:
        result["iscrowd"] = xp.concatenate([target["iscrowd"][survive],
                                            xp.zeros(len(chosen), target["iscrowd"].dtype)])
    if "area" in target:  # the pixels each object shows now, where its mask changed
        area = xp.where(changed, own.sum(axis=(1, 2)), target["area"])
        result["area"] = xp.concatenate([area[survive], pasted.sum(axis=(1, 2))]).astype(
            target["area"].dtype)
    return out, result


def random_copy_paste(image, target, source, source_target, rng, scale_range=SCALE_RANGE):
    """:func:`paste_objects` with a random subset, scale and offset drawn from ``rng``.

    Draws, in this order: which source objects to keep (each with probability
    ½; the first kept when none is), the scale (uniform in ``scale_range``),
    the offset (uniform over the placements that overlap the image most).
    """
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be (low, high) with 0 < low ≤ high, got {scale_range}")
    count = len(source_target["labels"])
    keep = rng.random(count) < 0.5
    if count and not keep.any():
        keep[0] = True
    scale = float(rng.uniform(low, high))
    height, width = image.shape[:2]
    sh, sw = _scaled_size(source.shape, scale)
    # x0 between 0 and W - sw (whichever order): the source inside the image, or
    # the image inside the source.
    x0 = int(rng.integers(min(0, width - sw), max(0, width - sw) + 1))
    y0 = int(rng.integers(min(0, height - sh), max(0, height - sh) + 1))
    xp = get_array_module(image)
    return paste_objects(image, target, source, source_target, xp.asarray(keep), scale, (x0, y0))
