"""From images of any size to one padded batch — and back to original pixels.

Shape shorthand:  N images;  (h_i, w_i) image i's size after resizing;
(H, W) the batch size: the largest h_i, w_i rounded up to a multiple of 32.

The detector's first and last steps, as torchvision's ``GeneralizedRCNNTransform``:

1. **Normalise** each ``(3, h, w)`` image (RGB, values in [0, 1]) with the
   ImageNet mean and std the backbone expects.
2. **Resize** so the shorter side is ``min_size`` (800 in the paper) unless
   the longer side would then exceed ``max_size`` (1333), keeping the aspect
   ratio; ground-truth boxes are scaled with the image, and instance masks
   resized with it (nearest neighbour, so they stay binary).
3. **Pad** into one ``(N, 3, H, W)`` batch, H and W multiples of
   ``size_divisible`` = 32 — the stride of C5 — so every level's map has an
   integer size and P_l exactly covers the image at stride 2^l.
4. After inference, **map boxes back** by the inverse scale, so detections
   are in the original image's pixels.

Padding sits at the bottom and right, so pixel coordinates need no shift;
each image's own resized size is kept in :class:`ImageList` for clipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from minifpn.autograd import Tensor, no_grad, raw
from minifpn.backend import get_array_module
from minifpn.functional import interpolate

#: ImageNet channel statistics (RGB, [0, 1] scale), as torchvision's detection models.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageList:
    """A padded batch and the size of each image inside it (torchvision's ``ImageList``).

    Attributes:
        tensors: ``(N, 3, H, W)`` Tensor, H and W multiples of ``size_divisible``.
        image_sizes: ``[(h_i, w_i), …]``, each image's resized size before padding.
    """

    tensors: Tensor
    image_sizes: list

    @property
    def padded_size(self) -> tuple:
        return tuple(self.tensors.shape[-2:])


def resized_size(height, width, min_size, max_size) -> tuple:
    """``(h, w)`` once the shorter side is ``min_size`` and the longer at most ``max_size``.

    Neither side drops below one pixel: a 400 × 1 image scaled to a longer
    side of 320 would otherwise be 0.8 pixels wide, i.e. empty.
    """
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


class GeneralizedRCNNTransform:
    """Normalise, resize and batch images (and their targets); map results back.

    Args:
        min_size: target length of the shorter side (default 800).
        max_size: cap on the longer side (default 1333).
        image_mean, image_std: per-channel normalisation (default ImageNet's).
        size_divisible: pad the batch to a multiple of this (default 32).
    """

    def __init__(self, min_size=800, max_size=1333, image_mean=IMAGENET_MEAN,
                 image_std=IMAGENET_STD, size_divisible=32):
        self.min_size, self.max_size = min_size, max_size
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.size_divisible = size_divisible

    @no_grad()
    def __call__(self, images, targets=None):
        """``images``: list of ``(3, h, w)`` Tensors/arrays in [0, 1].
        ``targets``: optional list of dicts with ``"boxes"`` ``(G, 4)`` in pixels
        and optionally ``"masks"`` ``(G, h, w)``.

        Returns ``(ImageList, targets)``, targets with boxes scaled and masks
        resized to the resized images.
        """
        resized, sizes, scaled_targets = [], [], []
        for i, image in enumerate(images):
            image = image if isinstance(image, Tensor) else Tensor(image)
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"image {i} must be (3, H, W), got shape {image.shape}")
            xp = get_array_module(image.data)
            mean = xp.asarray(self.image_mean, dtype=image.dtype).reshape(3, 1, 1)
            std = xp.asarray(self.image_std, dtype=image.dtype).reshape(3, 1, 1)
            image = (image - mean) / std
            h, w = image.shape[-2:]
            size = resized_size(h, w, self.min_size, self.max_size)
            image = interpolate(image[None], size=size, mode="bilinear")[0]
            resized.append(image)
            sizes.append(size)
            if targets is not None:
                scaled_targets.append(self._scale_target(targets[i], (h, w), size))
        batch = self._pad(resized)
        return ImageList(batch, sizes), (scaled_targets if targets is not None else None)

    @staticmethod
    def _scale_target(target, old_size, new_size):
        boxes = raw(target["boxes"])
        xp = get_array_module(boxes)
        ry, rx = new_size[0] / old_size[0], new_size[1] / old_size[1]
        target = dict(target)
        target["boxes"] = boxes * xp.asarray([rx, ry, rx, ry], dtype=boxes.dtype)
        if "masks" in target and tuple(raw(target["masks"]).shape[-2:]) != tuple(new_size):
            target["masks"] = _resize_masks(raw(target["masks"]), new_size)
        return target

    def _pad(self, images) -> Tensor:
        xp = get_array_module(images[0].data)
        d = self.size_divisible
        height = max(im.shape[1] for im in images)
        width = max(im.shape[2] for im in images)
        height, width = math.ceil(height / d) * d, math.ceil(width / d) * d
        batch = xp.zeros((len(images), 3, height, width), dtype=images[0].dtype)
        for i, image in enumerate(images):  # a loop over images
            batch[i, :, : image.shape[1], : image.shape[2]] = image.data
        return Tensor(batch)

    @staticmethod
    def postprocess_boxes(boxes, resized_size, original_size):
        """Boxes ``(K, 4)`` in resized-image pixels → original-image pixels."""
        boxes = raw(boxes)
        xp = get_array_module(boxes)
        ry, rx = original_size[0] / resized_size[0], original_size[1] / resized_size[1]
        return boxes * xp.asarray([rx, ry, rx, ry], dtype=boxes.dtype)


def _resize_masks(masks, size):
    """``(G, h, w)`` binary masks → ``(G, *size)``, nearest neighbour (torchvision's rule)."""
    xp = get_array_module(masks)
    if masks.shape[0] == 0:
        return xp.zeros((0, *size), dtype=masks.dtype)
    as_float = Tensor(masks[:, None].astype(xp.float32))  # (G, 1, h, w)
    return interpolate(as_float, size=tuple(size), mode="nearest").data[:, 0].astype(masks.dtype)


def to_chw_float(image: np.ndarray) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image → ``(3, H, W)`` float32 in [0, 1]."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    chw /= 255.0  # in place: one float copy of a possibly large image, not two
    return chw
