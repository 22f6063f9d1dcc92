"""Anchors: one box size per pyramid level, three shapes per location.

Shape shorthand:
    L  pyramid levels (5: P2..P6)     A  anchors per location (3 aspect ratios)
    H_l × W_l  size of level l        s_l  its stride (4, 8, 16, 32, 64)

FPN (§4.1) assigns anchors of a *single* scale to each level — areas 32²,
64², 128², 256², 512² on P2..P6 — with aspect ratios {1:2, 1:1, 2:1} at every
level: 15 anchor shapes over the pyramid. The level's resolution does the
work that multiple scales do in a single-map RPN: small anchors live on fine
maps, large anchors on coarse ones, so each anchor is about 8 feature-map
cells wide wherever it lives (32 / 4 = 64 / 8 = … = 8).

The single-map baselines FPN compares against (Table 1: an RPN on C4 alone,
or on P2 alone) need several scales at one level instead — 5 scales × 3
ratios = 15 anchors per location. ``sizes`` accepts that too: an entry may be
a tuple of sizes, as in torchvision's ``sizes=((32,), (64,), …)``, and then
the A = scales × ratios shapes of a location are ordered **ratio-major, then
scale**, as torchvision orders them.

Level l contributes ``H_l · W_l · A`` anchors, ordered **location-major, then
anchor**: row by row over the map, and at each cell the A ratios. This is the
order of the RPN head's output after ``(N, A, H, W) → (N, H, W, A) → (N, H·W·A)``,
so anchor k and prediction k describe the same box. Everything follows
torchvision's ``AnchorGenerator``, so its checkpoints give the same proposals:
ratio = h / w, base anchors rounded to integers, centred on the cell's top-left
corner (the grid starts at 0, not at half a stride).
"""

from __future__ import annotations

import numpy as np

from minifpn.backend import get_array_module, is_float

#: Anchor side length (√area) on P2..P6, from the paper: 32 px at stride 4 … 512 px at stride 64.
DEFAULT_SIZES = (32, 64, 128, 256, 512)
#: Height / width of the anchors at every location: tall 2:1, square, wide 1:2.
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)
#: How many input sizes' anchors are kept. A batch is padded to a multiple of
#: 32, so a dataset meets a few dozen sizes at most; building anchors on the
#: host and copying them to the device every forward pass would cost a
#: transfer per level per iteration.
ANCHOR_CACHE_SIZE = 64


class AnchorGenerator:
    """Anchors for every pyramid level, in input-image pixels.

    Args:
        sizes: the anchor size per level (default 32, 64, 128, 256, 512 for
            P2..P6); an entry may be a tuple of sizes for several scales at
            one level, e.g. ``((32, 64, 128, 256, 512),)`` for a single map.
        aspect_ratios: ratios h/w, either one tuple used at every level
            (default 0.5, 1, 2) or, as torchvision spells it, one tuple per
            level: ``((0.5, 1.0, 2.0),) * 5``.

    Every level must have the same number of anchors per location, A =
    sizes × ratios of that level: one RPN head, shared by all levels, predicts
    A objectness logits per cell.
    """

    def __init__(self, sizes=DEFAULT_SIZES, aspect_ratios=DEFAULT_ASPECT_RATIOS):
        self.sizes = tuple(s if np.ndim(s) == 0 else tuple(s) for s in sizes)
        self.aspect_ratios = per_level_ratios(aspect_ratios, len(self.sizes))
        self.cell_anchors = [base_anchors(size, ratios)
                             for size, ratios in zip(self.sizes, self.aspect_ratios)]
        self._cache = {}  # (image size, feature sizes, array module, dtype) → anchors per level
        per_level = self.num_anchors_per_location()
        if len(set(per_level)) != 1:
            raise ValueError(
                f"every level needs the same number of anchors per location (one RPN head "
                f"serves them all), got {per_level} from sizes={self.sizes} and "
                f"aspect_ratios={self.aspect_ratios}"
            )

    def num_anchors_per_location(self) -> list:
        """A of each level (all equal), as torchvision's method of the same name."""
        return [len(a) for a in self.cell_anchors]

    def grid_anchors(self, level: int, feature_size, stride, xp=np, dtype=np.float32):
        """``(H·W·A, 4)`` anchors of one level: base anchors shifted to every cell."""
        height, width = feature_size
        stride_h, stride_w = stride
        shift_y, shift_x = np.meshgrid(
            np.arange(height) * stride_h, np.arange(width) * stride_w, indexing="ij"
        )  # (H, W) each: cell (i, j) sits at (j·s, i·s)
        shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4)
        anchors = shifts + self.cell_anchors[level][None, :, :]  # (H·W, A, 4)
        return xp.asarray(anchors.reshape(-1, 4), dtype=dtype)

    def __call__(self, image_size, feature_sizes, like=None) -> list:
        """Anchors for an image of ``image_size = (H, W)`` (the padded batch size).

        Args:
            feature_sizes: ``[(H_l, W_l), …]`` of each level.
            like: an array (the features) whose device and floating dtype the
                anchors take, as torchvision's anchors follow the feature maps;
                without it, float32 NumPy arrays.

        Returns:
            A list with one ``(H_l·W_l·A, 4)`` array per level.
        """
        if len(feature_sizes) != len(self.sizes):
            raise ValueError(
                f"AnchorGenerator has {len(self.sizes)} sizes but got {len(feature_sizes)} levels"
            )
        xp = get_array_module(like) if like is not None else np
        dtype = like.dtype if like is not None and is_float(like) else np.float32
        key = (tuple(image_size), tuple(tuple(size) for size in feature_sizes), xp, dtype)
        if key not in self._cache:  # built on the host once, then kept on the device
            anchors = []
            for level, (h, w) in enumerate(feature_sizes):
                # torchvision's stride: the image size over the map size, integer division.
                stride = (image_size[0] // h, image_size[1] // w)
                anchors.append(self.grid_anchors(level, (h, w), stride, xp, dtype))
            if len(self._cache) >= ANCHOR_CACHE_SIZE:  # forget the oldest input size
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = anchors
        return list(self._cache[key])

    def __repr__(self) -> str:
        return f"AnchorGenerator(sizes={self.sizes}, aspect_ratios={self.aspect_ratios})"


def base_anchors(size, aspect_ratios) -> np.ndarray:
    """``(A, 4)`` anchors centred on (0, 0): area size², height/width = ratio.

    With ratio r: h = size·√r and w = size/√r, so h·w = size² and h/w = r.
    ``size`` may be a tuple of sizes: A = ratios × sizes, ratio-major.
    Coordinates are rounded to integers, as torchvision does.
    """
    ratios = np.asarray(aspect_ratios, dtype=np.float32)
    scales = np.atleast_1d(np.asarray(size, dtype=np.float32))
    h_ratios = np.sqrt(ratios)
    ws = (scales[None, :] / h_ratios[:, None]).reshape(-1)  # (R·S,) ratio-major
    hs = (scales[None, :] * h_ratios[:, None]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2)


def per_level_ratios(aspect_ratios, num_levels: int) -> tuple:
    """Aspect ratios as one tuple per level, from either spelling (see :class:`AnchorGenerator`)."""
    nested = [np.ndim(r) != 0 for r in aspect_ratios]
    if not nested:
        raise ValueError("aspect_ratios is empty: give at least one ratio h/w, e.g. (1.0,)")
    if any(nested) and not all(nested):
        raise ValueError(
            f"aspect_ratios must be ratios (0.5, 1.0, 2.0) shared by every level, or one tuple "
            f"of ratios per level ((0.5, 1.0, 2.0),) * {num_levels}; got a mix: {aspect_ratios!r}"
        )
    if not all(nested):
        aspect_ratios = (aspect_ratios,) * num_levels
    elif len(aspect_ratios) != num_levels:
        raise ValueError(
            f"aspect_ratios has {len(aspect_ratios)} per-level entries but sizes has "
            f"{num_levels} levels: give one tuple of ratios per level, or one shared tuple"
        )
    per_level = tuple(tuple(float(r) for r in level) for level in aspect_ratios)
    if any(len(level) == 0 or min(level) <= 0 for level in per_level):
        raise ValueError(f"every level needs at least one positive aspect ratio, got {per_level}")
    return per_level
