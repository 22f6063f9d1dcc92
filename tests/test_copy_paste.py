"""Copy-paste augmentation against a pixel-by-pixel loop, and its place in training.

The reference (:func:`naive_paste`) walks every pixel of the image in
Python: which source pixel lands there (``⌊(y − y0 + ½) / scale⌋``), whether a
kept, non-crowd source mask covers it; boxes are read off the masks with
``np.nonzero`` (``box_of``). Nothing of ``minifpn.data.copy_paste`` is used
to compute an expected value.
"""

import math

import numpy as np
import pytest

from minifpn import backend
from minifpn.cli import build_parser
from minifpn.data.copy_paste import boxes_of_masks, paste_objects, random_copy_paste
from minifpn.engine.config import TrainConfig
from minifpn.engine.train import AUGMENT_STREAM, _load_batch
from tests.test_augmentation import assert_aligned, shapes_train  # noqa: F401 (a fixture)
from tests.test_data_coco import box_of


def naive_paste(image, target, source, source_target, keep, scale, offset):
    """One pixel at a time: the pasted image, the image's masks cut, the pasted masks."""
    height, width = image.shape[:2]
    h, w = source.shape[:2]
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    x0, y0 = offset
    kept = [s for s in range(len(keep)) if keep[s] and not source_target["iscrowd"][s]]
    out = image.copy()
    pasted = np.zeros((len(kept), height, width), np.uint8)
    for y in range(height):
        for x in range(width):
            if not (0 <= y - y0 < sh and 0 <= x - x0 < sw):
                continue
            sy = min(math.floor((y - y0 + 0.5) / scale), h - 1)
            sx = min(math.floor((x - x0 + 0.5) / scale), w - 1)
            for p, s in enumerate(kept):
                if source_target["masks"][s, sy, sx]:
                    pasted[p, y, x] = 1
                    out[y, x] = source[sy, sx]
    covered = pasted.max(axis=0) if len(kept) else np.zeros((height, width), np.uint8)
    own = [m * (1 - covered) for m in target["masks"]]
    return out, own, [(s, m) for s, m in zip(kept, pasted) if m.any()]


def sample(rng, height, width, rectangles, labels, crowd=None):
    """An image and its target: each object a filled rectangle (x1, y1, x2, y2)."""
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    masks = np.zeros((len(rectangles), height, width), np.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, rectangles):
        m[y1:y2, x1:x2] = 1
    count = len(rectangles)
    return image, {"boxes": np.array(rectangles, np.float32).reshape(-1, 4), "masks": masks,
                   "labels": np.array(labels, np.int64),
                   "iscrowd": np.array(crowd or [0] * count, np.int64),
                   "area": masks.sum(axis=(1, 2)).astype(np.float32), "image_id": 5}


def test_boxes_of_masks_are_the_masks_pixel_extents():
    rng = np.random.default_rng(0)
    masks = (rng.random((6, 9, 11)) < 0.08).astype(np.uint8)
    masks[4] = 0  # an empty mask
    masks[5, 8, 10] = 1  # the bottom-right pixel only
    masks[5, :8] = 0
    masks[5, :, :10] = 0
    boxes = boxes_of_masks(masks)
    for g, mask in enumerate(masks):
        expected = box_of(mask) if mask.any() else [0, 0, 0, 0]
        np.testing.assert_array_equal(boxes[g], expected, err_msg=f"mask {g}")
    np.testing.assert_array_equal(boxes[5], [10, 8, 11, 9])
    assert boxes.dtype == np.float32


@pytest.mark.parametrize("scale, offset", [(1.0, (0, 0)), (1.5, (-3, 2)), (0.6, (4, -1)),
                                           (2.0, (-20, -9)), (0.5, (15, 11))])
def test_paste_matches_a_pixel_by_pixel_loop(scale, offset):
    rng = np.random.default_rng(1)
    image, target = sample(rng, 14, 18, [(0, 0, 6, 5), (5, 4, 15, 12), (16, 12, 18, 14)],
                           [1, 2, 1])
    # a source with a crowd region (never pasted) and an object left out of `keep`
    source, source_target = sample(rng, 10, 12, [(1, 1, 5, 9), (4, 2, 11, 6), (0, 6, 12, 10),
                                                 (8, 7, 10, 9)], [2, 1, 1, 2],
                                   crowd=[0, 0, 1, 0])
    keep = np.array([True, True, True, False])
    out, result = paste_objects(image, target, source, source_target, keep, scale, offset)
    want_image, own, pasted = naive_paste(image, target, source, source_target, keep, scale,
                                          offset)
    np.testing.assert_array_equal(out, want_image)
    survivors = [g for g, m in enumerate(own) if m.any()]
    want_masks = [own[g] for g in survivors] + [m for _, m in pasted]
    np.testing.assert_array_equal(result["masks"], np.array(want_masks).reshape(
        -1, *image.shape[:2]))
    # boxes: untouched objects keep theirs; cut and pasted ones get their mask's extent
    for i, g in enumerate(survivors):
        want = target["boxes"][g] if (own[g] == target["masks"][g]).all() else box_of(own[g])
        np.testing.assert_array_equal(result["boxes"][i], want, err_msg=f"own object {g}")
    for i, (s, m) in enumerate(pasted, start=len(survivors)):
        np.testing.assert_array_equal(result["boxes"][i], box_of(m), err_msg=f"pasted {s}")
    np.testing.assert_array_equal(result["labels"], [target["labels"][g] for g in survivors]
                                  + [source_target["labels"][s] for s, _ in pasted])
    np.testing.assert_array_equal(result["iscrowd"], [0] * len(want_masks))
    np.testing.assert_array_equal(result["area"], [m.sum() for m in want_masks])
    assert_aligned(result, tolerance=0, where=f"scale {scale}, offset {offset}")
    assert result["image_id"] == 5
    # the inputs are left as they were
    assert np.array_equal(image, sample(np.random.default_rng(1), 14, 18, [], [])[0])


def test_a_covered_object_is_dropped_and_a_hand_worked_paste():
    rng = np.random.default_rng(2)
    image, target = sample(rng, 8, 8, [(2, 2, 4, 4), (0, 0, 8, 2)], [1, 1])
    source, source_target = sample(rng, 8, 8, [(1, 1, 5, 5)], [1])
    out, result = paste_objects(image, target, source, source_target, [True])
    # object 0 (2..4 × 2..4) lies under the pasted 1..5 × 1..5 square: gone; object 1
    # (the top two rows) loses row 1 from x = 1 to 4: its box shrinks to rows 0..1
    np.testing.assert_array_equal(result["boxes"], [[0, 0, 8, 2], [1, 1, 5, 5]])
    assert result["masks"][0].sum() == 16 - 4 and result["masks"][0][1, 1:5].sum() == 0
    np.testing.assert_array_equal(out[1:5, 1:5], source[1:5, 1:5])
    np.testing.assert_array_equal(out[5:], image[5:])
    # shifted fully outside the image: nothing is pasted, nothing changes
    out, result = paste_objects(image, target, source, source_target, [True], offset=(8, 0))
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(result["boxes"], target["boxes"])


def test_paste_refuses_targets_without_masks_and_bad_scales():
    rng = np.random.default_rng(3)
    image, target = sample(rng, 6, 6, [(0, 0, 2, 2)], [1])
    with pytest.raises(ValueError, match="masks"):
        paste_objects(image, {k: v for k, v in target.items() if k != "masks"}, image, target,
                      [True])
    with pytest.raises(ValueError, match="scale must be > 0"):
        paste_objects(image, target, image, target, [True], scale=0)
    with pytest.raises(ValueError, match="scale_range"):
        random_copy_paste(image, target, image, target, rng, scale_range=(1.5, 0.5))


def test_random_copy_paste_draws_subset_scale_and_offset_from_the_generator():
    rng = np.random.default_rng(4)
    image, target = sample(rng, 30, 40, [(3, 3, 12, 20)], [1])
    source, source_target = sample(rng, 20, 24, [(2, 2, 8, 8), (10, 3, 20, 18), (1, 12, 6, 19)],
                                   [1, 1, 1])
    scales, offsets = [], []
    for seed in range(60):
        out, result = random_copy_paste(image, target, source, source_target,
                                        np.random.default_rng(seed))
        draw = np.random.default_rng(seed)  # the same draws, by hand, in the documented order
        keep = draw.random(3) < 0.5
        keep[0] |= not keep.any()
        scale = draw.uniform(0.5, 1.5)
        sh, sw = max(1, round(20 * scale)), max(1, round(24 * scale))
        x0 = draw.integers(min(0, 40 - sw), max(0, 40 - sw) + 1)
        y0 = draw.integers(min(0, 30 - sh), max(0, 30 - sh) + 1)
        want_image, _, pasted = naive_paste(image, target, source, source_target, keep, scale,
                                            (x0, y0))
        np.testing.assert_array_equal(out, want_image, err_msg=f"seed {seed}")
        assert len(result["labels"]) <= 1 + len(pasted)
        assert_aligned(result, tolerance=0, where=f"seed {seed}")
        scales.append(scale)
        offsets.append((x0, y0))
    assert min(scales) < 0.7 and max(scales) > 1.3
    assert len(set(offsets)) > 30


def test_paste_on_the_device_matches_the_cpu(device):
    rng = np.random.default_rng(5)
    image, target = sample(rng, 12, 16, [(0, 0, 6, 5), (5, 4, 15, 12)], [1, 2])
    source, source_target = sample(rng, 10, 10, [(1, 1, 6, 9), (4, 2, 10, 6)], [2, 1])
    want_image, want = paste_objects(image, target, source, source_target, [True, True], 1.3,
                                     (2, -1))

    def moved(t):
        return {k: backend.to_device(v, device) if isinstance(v, np.ndarray) else v
                for k, v in t.items()}

    out, result = paste_objects(backend.to_device(image, device), moved(target),
                                backend.to_device(source, device), moved(source_target),
                                backend.to_device(np.array([True, True]), device), 1.3, (2, -1))
    assert backend.device_of(out) == device
    np.testing.assert_array_equal(backend.to_numpy(out), want_image)
    for key in ("boxes", "masks", "labels", "iscrowd", "area"):
        np.testing.assert_array_equal(backend.to_numpy(result[key]), want[key], err_msg=key)


def test_training_batches_paste_as_documented_and_stay_aligned(shapes_train):  # noqa: F811
    config = TrainConfig(data="unused", flip=True, copy_paste=1.0)
    plain = TrainConfig(data="unused", flip=True)
    indices = list(range(len(shapes_train)))
    pastes = 0
    for iteration in range(3):
        _, targets = _load_batch(shapes_train, indices, config, iteration)
        plain_images, plain_targets = _load_batch(shapes_train, indices, plain, iteration)
        for position, target in enumerate(targets):
            where = f"iteration {iteration}, image {position}"
            assert_aligned(target, where=where)
            # the draws by hand: flip (as without copy-paste), paste?, source, its flip, paste
            rng = np.random.default_rng([config.seed, AUGMENT_STREAM, iteration, position])
            rng.random()
            assert rng.random() < 1.0
            source, source_target = shapes_train[int(rng.integers(len(shapes_train)))]
            if rng.random() < 0.5:
                source = source[:, ::-1]
                source_target = {**source_target, "masks": source_target["masks"][..., ::-1]}
            flipped = {k: v for k, v in plain_targets[position].items()}
            image = (plain_images[position].data.transpose(1, 2, 0) * 255).round().astype(
                np.uint8)
            _, want = random_copy_paste(image, flipped, source, source_target, rng)
            for key in ("boxes", "masks", "labels"):
                np.testing.assert_array_equal(target[key], want[key], err_msg=where)
            pastes += len(target["labels"]) > len(plain_targets[position]["labels"])
    assert pastes > 0


def test_copy_paste_is_a_probability_in_the_config_and_the_cli():
    assert TrainConfig().copy_paste == 0.0
    assert TrainConfig(copy_paste=0.5).to_dict()["copy_paste"] == 0.5
    for bad in (-0.1, 1.5, "often"):
        with pytest.raises(ValueError, match="copy_paste must be a number between 0 and 1"):
            TrainConfig(copy_paste=bad)
    parser = build_parser()
    assert parser.parse_args(["train", "--copy-paste", "0.5"]).copy_paste == 0.5
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--copy-paste", "2"])
