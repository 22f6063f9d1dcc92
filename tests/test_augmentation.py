"""Training augmentation: colour jitter, and boxes and masks kept aligned by every augmentation.

References are independent of the code under test:

* colour jitter: a naive loop over pixels in Python floats, written here from
  torchvision's definitions (brightness: ``f · p``; contrast: blend with the
  mean grey level; saturation: blend with the pixel's grey level
  ``0.299 R + 0.587 G + 0.114 B``; each clipped to [0, 1]);
* alignment: every mask's own bounding box (``np.nonzero``) equals its box
  within a pixel after a flip, a multi-scale resize and colour jitter — on a
  hand-made sample (``test_data_coco``'s rectangles, each box its mask's
  exactly) and on generated shapes.
"""

import itertools

import numpy as np
import pytest

from minifpn import backend
from minifpn.data.coco import CocoDetection
from minifpn.data.shapes import generate_shapes
from minifpn.data.transforms import (
    color_jitter,
    draw_color_jitter,
    grayscale,
    horizontal_flip,
    random_color_jitter,
)
from minifpn.engine.config import TrainConfig
from minifpn.engine.train import AUGMENT_STREAM, _load_batch
from minifpn.models.transform import GeneralizedRCNNTransform, to_chw_float
from tests.test_data_coco import box_of, flip_sample


def naive_color_jitter(image, factors, order):
    """``(3, H, W)`` → nested lists, one pixel at a time (brightness, contrast, saturation)."""
    _, height, width = image.shape
    pixels = [[[float(image[c, y, x]) for c in range(3)] for x in range(width)]
              for y in range(height)]

    def gray(p):
        return 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]

    def blend(value, other, factor):
        return min(1.0, max(0.0, factor * value + (1 - factor) * other))

    for which in order:
        f = factors[which]
        if which == 0:  # brightness: towards black
            pixels = [[[blend(v, 0.0, f) for v in p] for p in row] for row in pixels]
        elif which == 1:  # contrast: towards the mean grey level of the whole image
            mean = sum(gray(p) for row in pixels for p in row) / (height * width)
            pixels = [[[blend(v, mean, f) for v in p] for p in row] for row in pixels]
        else:  # saturation: towards the pixel's own grey level
            pixels = [[[blend(v, gray(p), f) for v in p] for p in row] for row in pixels]
    return np.array(pixels).transpose(2, 0, 1)  # (H, W, 3) → (3, H, W)


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("factors", [(1.3, 0.6, 1.7), (0.2, 1.8, 0.0), (1.9, 1.0, 1.0)])
def test_color_jitter_matches_a_per_pixel_loop(factors, order):
    image = np.random.default_rng(1).random((3, 2, 5))  # float64, some pixels near 1
    image[:, 0, 0] = (0.95, 0.9, 0.99)  # clipped by brightness 1.9 / 1.3
    before = image.copy()
    out = color_jitter(image, factors, order)
    np.testing.assert_allclose(out, naive_color_jitter(image, factors, order), atol=1e-12)
    np.testing.assert_array_equal(image, before)  # the input is not modified
    assert out.dtype == image.dtype and out is not image
    # (H, W, 3) gives the same pixels
    hwc = color_jitter(image.transpose(1, 2, 0).copy(), factors, order)
    np.testing.assert_allclose(hwc.transpose(2, 0, 1), out, atol=1e-12)


def test_grayscale_is_the_luma_of_each_pixel():
    image = np.array([[[1.0]], [[0.0]], [[0.0]]]) * np.ones((3, 2, 2))  # pure red
    np.testing.assert_allclose(grayscale(image), np.full((1, 2, 2), 0.299))
    np.testing.assert_allclose(grayscale(image.transpose(1, 2, 0)), np.full((2, 2, 1), 0.299))


def test_color_jitter_on_the_device_matches_the_cpu(device):
    image = np.random.default_rng(2).random((3, 5, 7)).astype(np.float32)
    factors, order = (1.2, 0.7, 1.4), (2, 0, 1)
    on_device = color_jitter(backend.to_device(image, device), factors, order)
    assert backend.device_of(on_device) == device and on_device.dtype == np.float32
    np.testing.assert_allclose(backend.to_numpy(on_device), color_jitter(image, factors, order),
                               atol=1e-6)


def test_color_jitter_refuses_uint8_and_grey_images():
    with pytest.raises(ValueError, match="float image"):
        color_jitter(np.zeros((3, 4, 4), np.uint8), (1.2, 1, 1))
    with pytest.raises(ValueError, match="RGB"):
        color_jitter(np.zeros((1, 4, 4), np.float32), (1.2, 1, 1))


def test_jitter_factors_are_drawn_from_one_minus_to_one_plus_the_strength():
    rng = np.random.default_rng(0)
    draws = [draw_color_jitter(rng, (0.5, 0.0, 1.5)) for _ in range(2000)]
    factors = np.array([f for f, _ in draws])
    assert (0.5 <= factors[:, 0]).all() and (factors[:, 0] <= 1.5).all()
    assert abs(factors[:, 0].mean() - 1.0) < 0.02  # uniform around 1
    assert (factors[:, 1] == 1.0).all()  # strength 0: left as it is
    assert factors[:, 2].min() >= 0.0 and factors[:, 2].max() <= 2.5  # max(0, 1 − 1.5) = 0
    assert {tuple(sorted(order)) for _, order in draws} == {(0, 1, 2)}
    assert len({order for _, order in draws}) == 6  # every order happens
    with pytest.raises(ValueError, match="three"):
        draw_color_jitter(rng, (0.1, 0.2))
    # one number is all three; the same generator state draws the same jitter
    a = random_color_jitter(np.full((3, 2, 2), 0.5), np.random.default_rng(3), 0.4)
    b = color_jitter(np.full((3, 2, 2), 0.5), *draw_color_jitter(np.random.default_rng(3),
                                                                  (0.4, 0.4, 0.4)))
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# boxes and masks stay aligned
# ---------------------------------------------------------------------------
def assert_aligned(target, tolerance=1.0, where=""):
    """Every mask's own bounding box is its box, within ``tolerance`` pixels."""
    boxes, masks = backend.to_numpy(target["boxes"]), backend.to_numpy(target["masks"])
    assert len(boxes) == len(masks) > 0
    for g, (box, mask) in enumerate(zip(boxes, masks)):
        np.testing.assert_allclose(box_of(mask), box, atol=tolerance,
                                   err_msg=f"object {g} {where}")


def test_flip_and_multi_scale_resize_keep_a_hand_made_sample_aligned():
    image, target = flip_sample(np.random.default_rng(4))  # 24 × 36, rectangles: box = mask's
    assert_aligned(target, tolerance=0)
    flipped_image, flipped = horizontal_flip(image, target)
    assert_aligned(flipped, tolerance=0, where="after the flip")
    np.testing.assert_array_equal(flipped["boxes"][1], [0, 3, 26, 20])  # 36 − 36, 36 − 10
    resize = GeneralizedRCNNTransform(min_size=(30, 45, 64), max_size=1000, size_divisible=1)
    resize.train()
    seen = set()
    for seed in range(8):  # enough draws to see every size
        backend.manual_seed(seed)
        batch, (scaled,) = resize([to_chw_float(flipped_image)], [flipped])
        seen.add(batch.image_sizes[0])
        assert tuple(scaled["masks"].shape[-2:]) == batch.image_sizes[0]
        assert_aligned(scaled, where=f"resized to {batch.image_sizes[0]}")
    assert seen == {(30, 45), (45, 67), (64, 96)}  # 24 × 36 → short side 30 / 45 / 64


@pytest.fixture(scope="module")
def shapes_train(tmp_path_factory):
    root = generate_shapes(tmp_path_factory.mktemp("aug") / "shapes", num_train=4, num_val=1,
                           seed=1, image_size=64, min_size=10, max_size=40, max_objects=3,
                           max_occlusion=0.0, progress=False)
    return CocoDetection(root, "train", skip_empty=True, with_masks=True, verbose=False)


def test_every_training_augmentation_keeps_shapes_aligned(shapes_train):
    # the training batch as _load_batch makes it (flip, colour jitter), then the model's
    # multi-scale resize: every object's mask still has its box, within a pixel
    for index in range(len(shapes_train)):
        assert_aligned(shapes_train.target(index), where=f"image {index} as generated")
    plain = TrainConfig(data="unused", flip=True)
    jittered = TrainConfig(data="unused", flip=True, color_jitter=0.4)
    resize = GeneralizedRCNNTransform(min_size=(48, 64, 80), max_size=200, size_divisible=1)
    indices = list(range(len(shapes_train)))
    flips = 0
    for iteration in range(3):
        images, targets = _load_batch(shapes_train, indices, jittered, iteration)
        plain_images, plain_targets = _load_batch(shapes_train, indices, plain, iteration)
        for position, (image, target, same) in enumerate(zip(images, targets, plain_targets)):
            where = f"iteration {iteration}, image {position}"
            # colour jitter changes pixel values only: the targets are those without it
            for key in ("boxes", "masks", "labels"):
                np.testing.assert_array_equal(target[key], same[key], err_msg=where)
            original = shapes_train.target(indices[position])
            flips += not np.array_equal(target["masks"], original["masks"])
            assert_aligned(target, where=where)
            # … and exactly the jitter drawn after the flip's draw, from the image's generator
            rng = np.random.default_rng([jittered.seed, AUGMENT_STREAM, iteration, position])
            rng.random()  # the flip's draw
            expected = color_jitter(plain_images[position].data,
                                    *draw_color_jitter(rng, jittered.color_jitter))
            np.testing.assert_array_equal(image.data, expected, err_msg=where)
            assert not np.array_equal(image.data, plain_images[position].data)
        backend.manual_seed(iteration)
        batch, scaled = resize(images, targets)
        for target, size in zip(scaled, batch.image_sizes):
            assert_aligned(target, where=f"iteration {iteration}, resized to {size}")
    assert 0 < flips < 3 * len(indices)  # some images were flipped, some not
