"""The FPN level rule and ``MultiScaleRoIAlign`` (``minifpn.ops.poolers``).

References: the level of each box is written out by hand from FPN eq. (1),
``k = ⌊4 + log2(√(wh)/224)⌋`` clamped to P2..P5 (224 → P4, 112 → P3, …);
each pooled RoI is compared with ``roi_align`` called directly on the level
the rule picks, at that level's scale 1/stride (roi_align itself is checked
against a naive loop in ``test_roi_align.py``).
"""

import numpy as np
import pytest

import minifpn
from minifpn import backend
from minifpn.ops import roi_align
from minifpn.ops.poolers import (
    CANONICAL_LEVEL,
    CANONICAL_SIZE,
    LEVEL_EPSILON,
    MultiScaleRoIAlign,
    map_rois_to_levels,
    stride_from_name,
)
from minifpn.recording import recording

STRIDES = {"P2": 4, "P3": 8, "P4": 16, "P5": 32}


def host(x):
    return backend.to_numpy(x.data if isinstance(x, minifpn.Tensor) else x)


def box(x, y, w, h):
    return [x, y, x + w, y + h]


# ---------------------------------------------------------------------------
# The level rule.
# ---------------------------------------------------------------------------
def test_constants_are_torchvisions():
    assert (CANONICAL_SIZE, CANONICAL_LEVEL, LEVEL_EPSILON) == (224, 4, 1e-6)


@pytest.mark.parametrize("w, h, level", [
    (224, 224, 4), (112, 112, 3), (448, 448, 5), (56, 56, 2),
    (112, 448, 4), (448, 112, 4),  # non-square, √(wh) exactly 224
    (56, 224, 3), (224, 896, 5), (28, 112, 2),  # √(wh) = 112, 448, 56
    (223.9, 223.9, 3), (111.9, 111.9, 2), (447.9, 447.9, 4),  # just below a power of two
    (224.1, 224.1, 4), (300, 300, 4), (447, 449, 4), (160, 160, 3),  # inside a level
    (4, 4, 2), (0.5, 0.5, 2), (0, 0, 2), (0, 50, 2),  # tiny and empty: clamp to P2
    (1000, 1000, 5), (5000, 3000, 5),  # huge: clamp to P5
])
def test_level_rule_by_hand(w, h, level):
    for x, y in ((0.0, 0.0), (17.3, 5.1), (301.7, 99.9)):  # position must not matter
        boxes = np.array([box(x, y, w, h)], dtype=np.float64)
        assert map_rois_to_levels(boxes).tolist() == [level], (x, y, w, h)


def test_level_rule_exact_powers_of_two_in_float32():
    # Boxes come out of the model as float32, at arbitrary positions.
    rng = np.random.default_rng(0)
    sizes = [(56, 56, 2), (112, 112, 3), (224, 224, 4), (448, 448, 5), (112, 448, 4),
             (64, 196, 3)]  # √(64·196) = 112
    for w, h, level in sizes:
        corners = rng.uniform(0, 500, (50, 2)).round(2)
        boxes = np.concatenate([corners, corners + [w, h]], axis=1).astype(np.float32)
        np.testing.assert_array_equal(map_rois_to_levels(boxes), level, err_msg=str((w, h)))


def test_level_rule_vectorised_int64():
    boxes = np.array([box(0, 0, 56, 56), box(0, 0, 224, 224), box(5, 5, 112, 112),
                      box(0, 0, 448, 448), box(1, 1, 2, 2), box(0, 0, 3000, 3000)])
    levels = map_rois_to_levels(boxes)
    assert levels.dtype == np.int64
    assert levels.tolist() == [2, 4, 3, 5, 2, 5]
    assert map_rois_to_levels(np.zeros((0, 4))).shape == (0,)


def test_level_rule_arguments_are_respected():
    boxes = np.array([box(0, 0, s, s) for s in (28, 56, 112, 224, 448, 896)], dtype=float)
    assert map_rois_to_levels(boxes).tolist() == [2, 2, 3, 4, 5, 5]
    # k0 = 3: every box one level lower.
    assert map_rois_to_levels(boxes, k0=3).tolist() == [2, 2, 2, 3, 4, 5]
    # canonical size 112: 112 is now the canonical box → P4.
    assert map_rois_to_levels(boxes, canonical_size=112).tolist() == [2, 3, 4, 5, 5, 5]
    # A wider clamp range lets the extremes through: 28 → 4 + log2(1/8) = 1, 896 → 6.
    assert map_rois_to_levels(boxes, min_level=0, max_level=9).tolist() == [1, 2, 3, 4, 5, 6]
    assert map_rois_to_levels(boxes, min_level=3, max_level=4).tolist() == [3, 3, 3, 4, 4, 4]
    # Without the epsilon a hair below 224 stays below; with a big one it is pushed up.
    just_below = np.array([box(0, 0, 223.99, 223.99)])
    assert map_rois_to_levels(just_below, eps=0).tolist() == [3]
    assert map_rois_to_levels(just_below, eps=0.01).tolist() == [4]


# ---------------------------------------------------------------------------
# MultiScaleRoIAlign.
# ---------------------------------------------------------------------------
def pyramid(rng, n, height, width, channels=3, names=("P2", "P3", "P4", "P5"),
            requires_grad=False):
    """Random float64 maps of an ``height × width`` padded batch at strides 4..32."""
    return {name: minifpn.Tensor(rng.standard_normal(
        (n, channels, height // STRIDES[name], width // STRIDES[name])),
        requires_grad=requires_grad) for name in names}


# Image 0 and 1 boxes with hand-picked levels (√(wh): 20 → P2, ~115 → P3, 240 → P4,
# 470 → P5, 60 → P2, 180 → P3, 113 → P3 …).
BOXES_0 = np.array([box(10, 12, 20, 20), box(30.5, 8.2, 120, 110), box(3, 5, 240, 240),
                    box(-50, -40, 470, 470), box(100, 60, 60, 60)])
LEVELS_0 = [2, 3, 4, 5, 2]
BOXES_1 = np.array([box(40, 20, 180, 180), box(0, 0, 56, 226), box(90, 90, 30, 8),
                    box(5, 5, 300, 200)])
LEVELS_1 = [3, 3, 2, 4]


def test_multiscale_roi_align_pools_each_roi_from_its_level(rng):
    features = pyramid(rng, 2, 128, 192)
    pooler = MultiScaleRoIAlign(output_size=5, sampling_ratio=2)
    with recording(pooler) as seen:
        out = pooler(features, [BOXES_0, BOXES_1], (128, 192))
    assert out.shape == (9, 3, 5, 5)
    assert seen["levels"].tolist() == LEVELS_0 + LEVELS_1
    rois = [(0, b, lvl) for b, lvl in zip(BOXES_0, LEVELS_0)]
    rois += [(1, b, lvl) for b, lvl in zip(BOXES_1, LEVELS_1)]
    for k, (image, b, level) in enumerate(rois):
        name = f"P{level}"
        expected = roi_align(features[name], np.array([[image, *b]]), 5,
                             spatial_scale=1 / STRIDES[name], sampling_ratio=2)
        np.testing.assert_allclose(host(out)[k], host(expected)[0], rtol=1e-12, atol=1e-14,
                                   err_msg=f"RoI {k}")
        # … and not from a neighbouring level at its scale.
        other = "P3" if name != "P3" else "P4"
        wrong = roi_align(features[other], np.array([[image, *b]]), 5,
                          spatial_scale=1 / STRIDES[other], sampling_ratio=2)
        assert not np.allclose(host(out)[k], host(wrong)[0])


def test_multiscale_roi_align_keeps_input_order(rng):
    features = pyramid(rng, 2, 128, 192)
    pooler = MultiScaleRoIAlign(output_size=3, sampling_ratio=2)
    rois = np.concatenate([
        np.concatenate([np.zeros((5, 1)), BOXES_0], axis=1),
        np.concatenate([np.ones((4, 1)), BOXES_1], axis=1),
    ])
    reference = host(pooler(features, rois, (128, 192)))
    perm = rng.permutation(len(rois))
    shuffled = host(pooler(features, rois[perm], (128, 192)))
    np.testing.assert_array_equal(shuffled, reference[perm])
    # The list-of-boxes form is the (K, 5) form.
    np.testing.assert_array_equal(host(pooler(features, [BOXES_0, BOXES_1], (128, 192))),
                                  reference)


def test_multiscale_roi_align_batch_index(rng):
    features = pyramid(rng, 3, 64, 64)
    pooler = MultiScaleRoIAlign(output_size=2, sampling_ratio=2)
    b = np.array([box(8, 8, 40, 40)])
    empty = np.zeros((0, 4))
    out = host(pooler(features, [empty, b, b], (64, 64)))
    assert out.shape == (2, 3, 2, 2)
    for k, image in enumerate((1, 2)):
        expected = roi_align(features["P2"][image:image + 1], np.array([[0, *b[0]]]), 2,
                             0.25, 2)
        np.testing.assert_allclose(out[k], host(expected)[0], rtol=1e-12)
    assert not np.allclose(out[0], out[1])


def test_multiscale_roi_align_scale_from_the_level_names(rng):
    # "P2" is stride 4 whatever the image: P2 of a 96-wide batch is 24 wide, ¼.
    features = pyramid(rng, 1, 64, 96)
    pooler = MultiScaleRoIAlign(output_size=4, sampling_ratio=1)
    b = np.array([box(10, 6, 30, 34)])  # √ ≈ 31.9 → P2
    out = pooler(features, [b], (64, 96))
    expected = roi_align(features["P2"], np.array([[0, *b[0]]]), 4, 0.25, 1)
    np.testing.assert_allclose(host(out), host(expected), rtol=1e-12)
    assert [stride_from_name(n) for n in ("P2", "P5", "C4", "0", "pool", "P")] == \
        [4, 32, 16, None, None, None]


# A very narrow resized image: 1333 × 66 (H × W), padded to 1344 × 96. Its maps are
# 1344/s × 96/s; measured against the image's own width, P2 (24 wide) looks like stride
# 66/24 ≈ 2.75 → 2 and P5 (3 wide) like 22 → 16 — a level off; by the height they are right.
NARROW_IMAGE, NARROW_BATCH = (1333, 66), (1344, 96)
NARROW_BOXES = np.array([box(5, 10, 20, 20), box(3, 100, 40, 400), box(1, 200, 60, 900),
                         box(2, 50, 60, 1200)])
NARROW_LEVELS = [2, 3, 4, 4]  # √(wh) = 20, 126, 232, 268 (P5 needs 448: no room at 66 wide)


def test_multiscale_roi_align_reads_a_narrow_image_at_the_true_strides(rng):
    features = pyramid(rng, 1, *NARROW_BATCH)
    pooler = MultiScaleRoIAlign(output_size=3, sampling_ratio=2)
    with recording(pooler) as seen:
        out = host(pooler(features, [NARROW_BOXES], NARROW_IMAGE))
    assert seen["levels"].tolist() == NARROW_LEVELS
    for k, level in enumerate(NARROW_LEVELS):
        name = f"P{level}"
        expected = roi_align(features[name], np.array([[0, *NARROW_BOXES[k]]]), 3,
                             spatial_scale=1 / STRIDES[name], sampling_ratio=2)
        np.testing.assert_allclose(out[k], host(expected)[0], rtol=1e-12, atol=1e-14,
                                   err_msg=f"RoI {k} on {name}")


def test_multiscale_roi_align_infers_other_names_strides_as_torchvision(rng):
    # torchvision's names "0".."3": stride = the power of two nearest image / map size.
    p = pyramid(rng, 2, 128, 192)
    features = {str(i): p[f"P{i + 2}"] for i in range(4)}
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=5, sampling_ratio=2)
    images = [(120, 190), (128, 150)]  # resized sizes; the batch's extent is 128 × 190
    with recording(pooler) as seen:
        out = host(pooler(features, [BOXES_0, BOXES_1], images))
    assert seen["levels"].tolist() == LEVELS_0 + LEVELS_1
    reference = host(MultiScaleRoIAlign(output_size=5, sampling_ratio=2)(
        p, [BOXES_0, BOXES_1], images))
    np.testing.assert_array_equal(out, reference)


def test_multiscale_roi_align_refuses_a_stride_the_axes_disagree_on(rng):
    p = pyramid(rng, 1, *NARROW_BATCH)
    features = {str(i): p[f"P{i + 2}"] for i in range(4)}
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=3, sampling_ratio=2)
    with pytest.raises(ValueError, match="'0'.*stride 4 by the height but 2 by the width"):
        pooler(features, [NARROW_BOXES], [NARROW_IMAGE])


def test_multiscale_roi_align_needs_consecutive_levels(rng):
    p = pyramid(rng, 1, 64, 64)
    pooler = MultiScaleRoIAlign(["P2", "P4"], output_size=2)
    with pytest.raises(ValueError, match="consecutive levels"):
        pooler(p, [np.array([box(0, 0, 10, 10)])], (64, 64))


def test_multiscale_roi_align_subset_of_levels_clamps(rng):
    features = pyramid(rng, 1, 128, 128, names=("P3", "P4"))
    pooler = MultiScaleRoIAlign(featmap_names=("P3", "P4"), output_size=2, sampling_ratio=2)
    boxes = np.array([box(1, 1, 10, 10), box(0, 0, 500, 500), box(5, 5, 230, 230)])
    with recording(pooler) as seen:
        out = host(pooler(features, [boxes], (128, 128)))
    assert seen["levels"].tolist() == [3, 4, 4]
    for k, level in enumerate([3, 4, 4]):
        name = f"P{level}"
        expected = roi_align(features[name], np.array([[0, *boxes[k]]]), 2,
                             1 / STRIDES[name], 2)
        np.testing.assert_allclose(out[k], host(expected)[0], rtol=1e-12)


def test_multiscale_roi_align_levels_without_rois_and_no_rois(rng):
    features = pyramid(rng, 1, 64, 64)
    pooler = MultiScaleRoIAlign(output_size=7)
    out = pooler(features, [np.array([box(0, 0, 10, 10)])], (64, 64))  # only P2 used
    assert out.shape == (1, 3, 7, 7)
    out = pooler(features, [np.zeros((0, 4))], (64, 64))
    assert out.shape == (0, 3, 7, 7)


def test_multiscale_roi_align_defaults_and_repr():
    pooler = MultiScaleRoIAlign()
    assert pooler.featmap_names == ("P2", "P3", "P4", "P5")
    assert (pooler.output_size, pooler.sampling_ratio) == (7, 2)
    assert "output_size=7" in repr(pooler) and "sampling_ratio=2" in repr(pooler)
    assert list(pooler.state_dict()) == []  # no parameters, as torchvision's


def test_multiscale_roi_align_gradient_reaches_the_right_levels(rng):
    features = pyramid(rng, 1, 64, 64, channels=1, requires_grad=True)
    pooler = MultiScaleRoIAlign(output_size=2, sampling_ratio=2)
    boxes = [np.array([box(4, 4, 20, 20), box(3, 7, 130, 120)])]  # P2 and P3
    pooler(features, boxes, (64, 64)).sum().backward()
    assert np.abs(host(features["P2"].grad)).sum() > 0
    assert np.abs(host(features["P3"].grad)).sum() > 0
    for name in ("P4", "P5"):
        grad = features[name].grad
        assert grad is None or not np.any(host(grad))
    # float64 central differences through the level split and the reordering
    features = pyramid(rng, 1, 64, 64, channels=1, requires_grad=True)
    boxes = [np.array([box(3, 7, 130, 120), box(4, 4, 20, 20), box(1, 2, 30, 28)])]
    minifpn.gradcheck(lambda p2, p3: pooler({"P2": p2, "P3": p3, "P4": features["P4"],
                                             "P5": features["P5"]}, boxes, (64, 64)),
                      [features["P2"], features["P3"]], max_elements=60)


def test_detectors_scale_the_level_rule_with_roi_canonical_size(rng):
    # √(wh) = 180: ⌊4 + log2(180/224)⌋ = 3 by default; ⌊4 + log2(180/112)⌋ = 4 with 112 —
    # one octave coarser, for both the box and the mask pooler.
    from minifpn.models import MaskRCNN, detector_parts, resnet_fpn_backbone

    features = pyramid(rng, 1, 128, 192)
    boxes = [np.array([box(4, 4, 180, 180)])]
    for canonical, level in [(None, 3), (224, 3), (112, 4)]:
        parts = detector_parts(3, 3, mask_layers=(4, 4, 4, 4), mask_dim_reduced=4,
                               roi_canonical_size=canonical)
        model = MaskRCNN(resnet_fpn_backbone("resnet18", width=0.125, out_channels=3), **parts)
        for pooler in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool):
            with recording(pooler) as seen:
                pooler(features, boxes, (128, 192))
            assert seen["levels"].tolist() == [level]
    pooler = MultiScaleRoIAlign(canonical_scale=112)  # torchvision's name for the 224
    with recording(pooler) as seen:
        pooler(features, boxes, (128, 192))
    assert seen["levels"].tolist() == [4]
