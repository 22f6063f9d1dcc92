"""The Mask R-CNN mask head: a small FCN on 14 × 14 RoI features → one 28 × 28 mask per class.

Shape shorthand:  R foreground RoIs;  C channels (256);  K classes incl. background;
M = 28 mask resolution;  D detections;  H × W image.

Mask R-CNN (He et al., 2017, Fig. 4, FPN variant): four 3×3 conv (256) +
ReLU, a 2×2 stride-2 transposed conv + ReLU (14 → 28), and a 1×1 conv to
K mask logits. Names follow torchvision: ``mask_head.{0..3}.0`` (older
checkpoints: ``mask_fcn1..4``) and ``mask_predictor.conv5_mask`` /
``mask_fcn_logits``.

* **Targets**: the ground-truth mask (a full-image binary map) RoIAligned
  onto each foreground RoI at 28 × 28 — the target is "what the object looks
  like inside this box", at the head's resolution.
* **Loss**: per-pixel binary cross-entropy on the ground-truth class's
  channel only. Classes do not compete for pixels (no softmax across
  classes): the box head decides the class, the mask head only the shape.
* **Inference**: the predicted class's channel, a sigmoid, and the 28 × 28
  probabilities pasted into the image inside the detection's box (bilinear).
"""

from __future__ import annotations

from minifpn import nn
from minifpn.autograd import Tensor, raw
from minifpn.backend import get_array_module, is_float
from minifpn.functional import binary_cross_entropy_with_logits, relu
from minifpn.ops.roi_pooling import roi_align_in_extents

#: Side of the pooled RoI feature the mask head reads: 14 × 14 (Mask R-CNN's FPN
#: head); its transposed conv doubles it to the 28 × 28 mask.
MASK_ROI_SIZE = 14


def _init_conv(module):
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(module.bias)


class MaskRCNNHeads(nn.Sequential):
    """Four 3×3 conv + ReLU: ``(R, C, 14, 14)`` → ``(R, layers[-1], 14, 14)`` (256 each)."""

    def __init__(self, in_channels: int, layers=(256, 256, 256, 256)):
        blocks = []
        for out_channels in layers:
            conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
            _init_conv(conv)
            blocks.append(nn.Sequential(conv, nn.ReLU()))
            in_channels = out_channels
        super().__init__(*blocks)
        self.out_channels = in_channels  # the last conv's width


class MaskRCNNPredictor(nn.Module):
    """Transposed 2×2/2 conv + ReLU, then 1×1 conv: ``(R, C, 14, 14)`` → ``(R, K, 28, 28)``."""

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int):
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, dim_reduced, 2, stride=2)
        self.mask_fcn_logits = nn.Conv2d(dim_reduced, num_classes, 1)
        _init_conv(self.conv5_mask)
        _init_conv(self.mask_fcn_logits)

    def forward(self, x):
        return self.mask_fcn_logits(relu(self.conv5_mask(x)))


def project_masks_on_boxes(gt_masks, boxes, matched_idxs, size: int):
    """Mask targets: each RoI's ground-truth mask cropped and resampled to ``size`` × ``size``.

    Args:
        gt_masks: ``(G, H, W)`` binary masks of one image (resized-image pixels).
        boxes: ``(R, 4)`` foreground RoIs;  matched_idxs: ``(R,)`` their ground-truth index.

    Returns ``(R, size, size)`` floats in [0, 1] (RoIAlign averages the 0/1 pixels).
    """
    return project_masks_on_boxes_batch([gt_masks], [boxes], [matched_idxs], size)


def project_masks_on_boxes_batch(gt_masks, boxes, matched_idxs, size: int):
    """:func:`project_masks_on_boxes` for every image of a batch at once (lists per image).

    The images' masks have different sizes, so they are padded into one
    ``(ΣG, 1, H_max, W_max)`` stack and cropped in one RoIAlign call that
    clamps each RoI at its own image's border (:func:`roi_align_in_extents`):
    the same numbers as one call per image, with one host round trip in all.
    Returns ``(ΣR, size, size)``, images in order.
    """
    xp = get_array_module(boxes[0])
    masks = [raw(m) for m in gt_masks]
    height = max(m.shape[-2] for m in masks)
    width = max(m.shape[-1] for m in masks)
    stack = xp.zeros((sum(len(m) for m in masks), 1, height, width), dtype=boxes[0].dtype)
    rois, extents, first = [], [], 0
    for m, b, idx in zip(masks, boxes, matched_idxs):  # a loop over images
        stack[first : first + len(m), 0, : m.shape[-2], : m.shape[-1]] = m
        rois.append(xp.concatenate([(idx + first)[:, None].astype(b.dtype), b], axis=1))
        h, w = m.shape[-2:]
        extents.append(xp.stack([xp.full(len(b), h), xp.full(len(b), w)], axis=1))
        first += len(m)
    return roi_align_in_extents(Tensor(stack), xp.concatenate(rois), xp.concatenate(extents),
                                size, 1.0).data[:, 0]


def maskrcnn_loss(mask_logits, labels, mask_targets):
    """Binary cross-entropy of each RoI's own-class mask logits against its target.

    Args:
        mask_logits: ``(R, K, M, M)`` Tensor;  labels: ``(R,)`` classes (> 0);
        mask_targets: ``(R, M, M)`` array.
    """
    xp = get_array_module(labels)
    if labels.shape[0] == 0:  # no foreground RoI: a zero that still joins the graph
        return mask_logits.sum() * 0
    own_class = mask_logits[xp.arange(labels.shape[0]), labels]  # (R, M, M)
    return binary_cross_entropy_with_logits(own_class, mask_targets)


def _paste_weights(start, stop, mask_size, image_size, xp, dtype):
    """Bilinear weights ``(D, image_size, mask_size)`` placing each mask row/column in the image.

    Detection d covers integer pixels ``start[d] … stop[d] − 1``; the mask
    (``mask_size`` samples) is stretched over them exactly as
    ``interpolate(mode="bilinear", align_corners=False)`` would, and pixels
    outside the box get weight 0.
    """
    pixels = xp.arange(image_size, dtype=dtype)[None, :]  # (1, S_img)
    length = xp.maximum(stop - start, 1).astype(dtype)[:, None]  # (D, 1)
    src = (pixels - start[:, None] + 0.5) * (mask_size / length) - 0.5
    src = xp.maximum(src, 0)
    low = xp.minimum(xp.floor(src).astype(xp.int64), mask_size - 1)
    high = xp.minimum(low + 1, mask_size - 1)
    frac = (src - low).astype(dtype)
    inside = (pixels >= start[:, None]) & (pixels < stop[:, None])
    columns = xp.arange(mask_size)
    weights = (columns == low[..., None]) * (1 - frac)[..., None]
    weights = weights + (columns == high[..., None]) * frac[..., None]
    return weights * inside[..., None]  # (D, S_img, mask_size)


def paste_masks_in_image(masks, boxes, image_size, padding: int = 1, chunk: int = 32):
    """Paste ``(D, M, M)`` mask probabilities into ``(D, 1, H, W)`` full-image maps.

    As torchvision's ``paste_masks_in_image``: the mask is padded by one zero
    pixel on each side and its box enlarged to match (so the mask edge fades
    to 0 instead of being cut), the box is truncated to integer pixels, and
    the mask is bilinearly stretched over it. Vectorised over detections: each
    paste is ``rows (H, M') @ mask (M', M') @ columnsᵀ (M', W)``, computed for a
    chunk of detections at a time. The result has the masks' floating dtype
    (float32 for integer masks), as torchvision's.
    """
    masks, boxes = raw(masks), raw(boxes)
    xp = get_array_module(masks)
    dtype = masks.dtype if is_float(masks) else xp.float32
    d, m = masks.shape[0], masks.shape[-1]
    height, width = image_size
    out = xp.zeros((d, 1, height, width), dtype=dtype)
    if d == 0:
        return out
    pad = ((0, 0), (padding, padding), (padding, padding))
    padded = xp.pad(masks.reshape(d, m, m).astype(dtype), pad)  # (D, M', M')
    scale = (m + 2 * padding) / m  # grow the box by the same factor as the mask
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half_w = (boxes[:, 2] - boxes[:, 0]) / 2 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) / 2 * scale
    x0, x1 = (cx - half_w).astype(xp.int64), (cx + half_w).astype(xp.int64)  # truncation, as torch
    y0, y1 = (cy - half_h).astype(xp.int64), (cy + half_h).astype(xp.int64)
    for s in range(0, d, chunk):  # chunks of detections bound the (chunk, H, W) output
        part = slice(s, s + chunk)
        # rows (c, H, M') and columns (c, W, M') of bilinear weights
        rows = _paste_weights(y0[part], y1[part] + 1, m + 2 * padding, height, xp, dtype)
        cols = _paste_weights(x0[part], x1[part] + 1, m + 2 * padding, width, xp, dtype)
        out[part, 0] = rows @ padded[part] @ cols.transpose(0, 2, 1)
    return out
