"""From images of any size to one padded batch — and back to original pixels.

Shape shorthand:  N images;  (h_i, w_i) image i's size after resizing;
(H, W) the batch size: the largest h_i, w_i rounded up to a multiple of 32.

The detector's first and last steps, as torchvision's ``GeneralizedRCNNTransform``:

1. **Normalise** each ``(3, h, w)`` image (RGB, values in [0, 1]) with the
   ImageNet mean and std the backbone expects.
2. **Resize** so the shorter side is ``min_size`` (800 in the paper) unless
   the longer side would then exceed ``max_size`` (1333), keeping the aspect
   ratio; ground-truth boxes are scaled with the image, and instance masks
   resized with it (nearest neighbour, so they stay binary). Several
   ``min_size`` values mean multi-scale training: each training image draws
   one of them (keyed by its row of the batch, :func:`backend.random_keys`);
   evaluation uses the last.
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

from minifpn import backend, nn
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


class GeneralizedRCNNTransform(nn.Module):
    """Normalise, resize and batch images (and their targets); map results back.

    A module without parameters, as torchvision's, so ``model.train()`` /
    ``model.eval()`` reach it: multi-scale resizing happens in training only.

    Args:
        min_size: target length of the shorter side (default 800), or a tuple
            of lengths: in training each image draws one, uniformly, from
            minifpn's seeded generator (``minifpn.manual_seed``), so runs are
            reproducible — one draw per batch, a key per image by its row of the
            whole batch (:func:`backend.random_keys`), so a batch split over
            processes (:func:`backend.batch_rows_from`) draws what one process
            holding it all would; in evaluation the last one is used
            (torchvision's rule).
        max_size: cap on the longer side (default 1333).
        image_mean, image_std: per-channel normalisation (default ImageNet's).
        size_divisible: pad the batch to a multiple of this (default 32).
        fixed_size: ``(width, height)`` — torchvision's order — to resize every
            image to exactly, ignoring its aspect ratio and ``min_size``/``max_size``.
    """

    def __init__(self, min_size=800, max_size=1333, image_mean=IMAGENET_MEAN,
                 image_std=IMAGENET_STD, size_divisible=32, fixed_size=None):
        super().__init__()
        self.min_size = (min_size,) if np.ndim(min_size) == 0 else tuple(min_size)
        if not self.min_size or min(self.min_size) <= 0:
            raise ValueError(f"min_size must be a positive length or a tuple of them, "
                             f"got {min_size!r}")
        self.max_size = max_size
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.size_divisible = size_divisible
        self.fixed_size = None if fixed_size is None else tuple(fixed_size)
        self._constants = {}  # (values, array module, dtype) → (3, 1, 1) array

    @no_grad()
    def forward(self, images, targets=None):
        """``images``: list of ``(3, h, w)`` Tensors/arrays in [0, 1].
        ``targets``: optional list of dicts with ``"boxes"`` ``(G, 4)`` in pixels
        and optionally ``"masks"`` ``(G, h, w)``.

        Returns ``(ImageList, targets)``, targets with boxes scaled and masks
        resized to the resized images.
        """
        resized, sizes, scaled_targets = [], [], []
        min_sizes = self.draw_min_sizes(len(images))
        for i, image in enumerate(images):
            image = image if isinstance(image, Tensor) else Tensor(image)
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"image {i} must be (3, H, W), got shape {image.shape}")
            image = (image - self._per_channel(self.image_mean, image)) / self._per_channel(
                self.image_std, image)
            h, w = image.shape[-2:]
            size = self.target_size(h, w, min_sizes[i])
            image = interpolate(image[None], size=size, mode="bilinear")[0]
            resized.append(image)
            sizes.append(size)
            if targets is not None:
                scaled_targets.append(self._scale_target(targets[i], (h, w), size))
        batch = self._pad(resized)
        return ImageList(batch, sizes), (scaled_targets if targets is not None else None)

    def _per_channel(self, values, image):
        """``values`` (3 numbers) as ``(3, 1, 1)`` beside ``image``, made once per device."""
        xp = get_array_module(image.data)
        key = (values, xp, image.dtype)
        if key not in self._constants:
            self._constants[key] = xp.asarray(values, dtype=image.dtype).reshape(3, 1, 1)
        return self._constants[key]

    def draw_min_sizes(self, count: int) -> list:
        """The short side of each of ``count`` images: drawn in training, else the last one.

        A draw takes one number from minifpn's generator for the whole batch
        and gives image ``i`` the value at key ``random_keys[i] % len(min_size)``
        — the key of its row of the *whole* batch. The keys are made on the
        host (the sizes are needed there; NumPy and CuPy give the same keys).
        Nothing is drawn with a single ``min_size`` or in evaluation.
        """
        if not self.training or len(self.min_size) == 1 or self.fixed_size is not None:
            return [self.min_size[-1]] * count
        keys = backend.random_keys((count, 1), np)[:, 0]
        return [self.min_size[int(k)] for k in keys % np.uint64(len(self.min_size))]

    def target_size(self, height: int, width: int, min_size: int | None = None) -> tuple:
        """The ``(h, w)`` an image of ``height × width`` is resized to.

        ``min_size``: the short side (one of :meth:`draw_min_sizes`); default the last.
        """
        if self.fixed_size is not None:
            return self.fixed_size[1], self.fixed_size[0]
        min_size = self.min_size[-1] if min_size is None else min_size
        return resized_size(height, width, min_size, self.max_size)

    @staticmethod
    def _scale_target(target, old_size, new_size):
        boxes = raw(target["boxes"])
        ry, rx = new_size[0] / old_size[0], new_size[1] / old_size[1]
        target = dict(target)
        target["boxes"] = scale_boxes(boxes, rx, ry)
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
        ry, rx = original_size[0] / resized_size[0], original_size[1] / resized_size[1]
        return scale_boxes(raw(boxes), rx, ry)

    def extra_repr(self) -> str:
        resize = (f"fixed_size={self.fixed_size}" if self.fixed_size is not None
                  else f"min_size={self.min_size}, max_size={self.max_size}")
        return (f"mean={self.image_mean}, std={self.image_std}, {resize}, "
                f"size_divisible={self.size_divisible}")


def scale_boxes(boxes, rx: float, ry: float):
    """``(K, 4)`` boxes with x scaled by ``rx`` and y by ``ry`` (a new array).

    Two scalar multiplies rather than ``boxes * [rx, ry, rx, ry]``, which would
    copy a 4-vector from the host to the device every call.
    """
    scaled = boxes.copy()
    scaled[:, 0::2] *= rx
    scaled[:, 1::2] *= ry
    return scaled


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
