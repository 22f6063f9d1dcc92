"""The input transform, the COCO dataset and proposal recall.

References are independent of the code under test:

* ``resized_size``, padded sizes, scaled boxes and normalised pixel values
  computed by hand (the 800/1333 rule: scale = min(800/short, 1333/long),
  sizes floored; padding up to a multiple of 32);
* the COCO annotation file read with the ``json`` module and converted by
  hand (xywh → xyxy, category id → contiguous label);
* average recall of a hand-made three-object COCO ground truth, computed by
  hand for chosen proposals (COCOeval matches at IoU ≥ t, t = 0.50:0.05:0.95).

Tests that need coco-mini skip (with the reason) when it cannot be found.
"""

import contextlib
import io
import json

import numpy as np
import pytest

import minifpn
from minifpn.data import find_coco_mini
from minifpn.data.coco import CocoDetection, locate_split
from minifpn.engine.evaluate import RECALL_METRICS, proposal_recall, proposals_to_coco
from minifpn.models.transform import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GeneralizedRCNNTransform,
    ImageList,
    resized_size,
    to_chw_float,
)
from tests.test_backend import _splitmix64_key

METRIC_NAMES = ["AR@100", "AR@1000", "AR_s@1000", "AR_m@1000", "AR_l@1000"]


# ---------------------------------------------------------------------------
# resized_size and the transform
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size, expected",
    [
        ((400, 600), (800, 1200)),  # scale 2: the short side reaches 800, long 1200 ≤ 1333
        ((800, 800), (800, 800)),  # already there
        ((480, 640), (800, 1066)),  # scale 5/3: 640·5/3 = 1066.67 → 1066
        ((427, 640), (800, 1199)),  # 640·800/427 = 1199.06 → 1199
        ((100, 1000), (133, 1333)),  # the long side caps: scale 1.333, 100·1.333 → 133
        ((1000, 500), (1333, 666)),  # portrait, capped: 500·1.333 = 666.5 → 666
        ((1600, 1200), (1066, 800)),  # shrinking: scale 2/3
    ],
)
def test_resized_size_800_1333_rule(size, expected):
    assert resized_size(*size, 800, 1333) == expected


def test_resized_size_other_limits():
    assert resized_size(30, 70, 40, 1000) == (40, 93)  # 70·4/3 = 93.3
    assert resized_size(30, 70, 40, 80) == (34, 80)  # capped: scale 8/7, 30·8/7 = 34.3
    assert resized_size(50, 50, 40, 1000) == (40, 40)


def test_imagenet_normalisation_constants():
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)
    t = GeneralizedRCNNTransform()
    assert (t.min_size, t.max_size, t.size_divisible, t.fixed_size) == ((800,), 1333, 32, None)
    assert t.image_mean == IMAGENET_MEAN and t.image_std == IMAGENET_STD


def two_constant_images():
    colours = [(0.2, 0.5, 0.9), (1.0, 0.0, 0.25)]
    a = np.ones((3, 40, 50), np.float32) * np.array(colours[0], np.float32)[:, None, None]
    b = np.ones((3, 30, 70), np.float32) * np.array(colours[1], np.float32)[:, None, None]
    return [a, b], colours


def test_transform_resizes_pads_and_normalises():
    transform = GeneralizedRCNNTransform(min_size=40, max_size=1000)
    images, colours = two_constant_images()
    image_list, targets = transform(images)
    assert targets is None
    assert isinstance(image_list, ImageList)
    assert image_list.image_sizes == [(40, 50), (40, 93)]
    # the batch: largest (40, 93), padded up to multiples of 32
    assert image_list.tensors.shape == (2, 3, 64, 96)
    assert image_list.padded_size == (64, 96)
    batch = image_list.tensors.data
    for i, ((h, w), colour) in enumerate(zip(image_list.image_sizes, colours)):
        for c in range(3):
            want = (colour[c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
            np.testing.assert_allclose(batch[i, c, :h, :w], want, rtol=1e-5, atol=1e-5)
        assert (batch[i, :, h:, :] == 0).all() and (batch[i, :, :, w:] == 0).all()  # padding


def test_transform_identity_size_keeps_pixels(rng):
    image = rng.random((3, 64, 80)).astype(np.float32)
    image_list, _ = GeneralizedRCNNTransform(min_size=64, max_size=1000)([minifpn.Tensor(image)])
    assert image_list.tensors.shape == (1, 3, 64, 96)  # 64 already divisible; 80 → 96
    mean = np.array(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.array(IMAGENET_STD, np.float32)[:, None, None]
    np.testing.assert_allclose(image_list.tensors.data[0, :, :, :80], (image - mean) / std,
                               rtol=1e-5, atol=1e-5)


def test_transform_padding_to_other_divisors():
    image = np.zeros((3, 33, 40), np.float32)
    il, _ = GeneralizedRCNNTransform(min_size=33, max_size=1000)([image])
    assert il.padded_size == (64, 64)
    il, _ = GeneralizedRCNNTransform(min_size=33, max_size=1000, size_divisible=1)([image])
    assert il.padded_size == (33, 40)


def test_transform_scales_boxes_and_postprocess_inverts():
    transform = GeneralizedRCNNTransform(min_size=40, max_size=1000)
    images, _ = two_constant_images()
    boxes0 = np.array([[1, 2, 30, 40]], dtype=np.float32)
    boxes1 = np.array([[7, 3, 35, 27], [0, 0, 70, 30]], dtype=np.float32)
    targets = [{"boxes": boxes0, "labels": np.array([3])}, {"boxes": boxes1, "labels": [1, 2]}]
    image_list, scaled = transform(images, targets)
    # image 0 keeps its size; image 1 goes 30×70 → 40×93: x·93/70, y·4/3
    np.testing.assert_allclose(scaled[0]["boxes"], boxes0, rtol=1e-6)
    np.testing.assert_allclose(scaled[1]["boxes"], [[9.3, 4, 46.5, 36], [0, 0, 93, 40]],
                               rtol=1e-6)
    assert scaled[0]["labels"].tolist() == [3]  # other keys carried along
    np.testing.assert_array_equal(targets[1]["boxes"], boxes1)  # the caller's dict untouched
    back = GeneralizedRCNNTransform.postprocess_boxes(scaled[1]["boxes"], (40, 93), (30, 70))
    np.testing.assert_allclose(back, boxes1, rtol=1e-6, atol=1e-5)
    back = GeneralizedRCNNTransform.postprocess_boxes(np.array([[9.3, 4, 46.5, 36]]), (40, 93),
                                                      (30, 70))
    np.testing.assert_allclose(back, [[7, 3, 35, 27]], rtol=1e-12)


def test_transform_resizes_masks_with_the_image_and_its_boxes():
    # A 30×60 image, one mask filling the box [10, 6, 40, 21) (x1, y1, x2, y2); resized ×2 to
    # 60×120, nearest neighbour: the mask must fill exactly the scaled box [20, 12, 80, 42).
    transform = GeneralizedRCNNTransform(min_size=60, max_size=1000)
    mask = np.zeros((2, 30, 60), dtype=bool)
    mask[0, 6:21, 10:40] = True
    target = {"boxes": np.array([[10, 6, 40, 21], [0, 0, 1, 1]], np.float32), "masks": mask}
    _, (scaled,) = transform([np.zeros((3, 30, 60), np.float32)], [target])
    assert scaled["masks"].shape == (2, 60, 120) and scaled["masks"].dtype == bool
    rows, cols = np.nonzero(scaled["masks"][0])
    assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (20, 12, 80, 42)
    np.testing.assert_array_equal(scaled["boxes"][0], [20, 12, 80, 42])
    assert scaled["masks"][0].sum() == 4 * mask[0].sum() and not scaled["masks"][1].any()
    assert target["masks"].shape == (2, 30, 60)  # the caller's target untouched
    # an image without objects: (0, h, w) masks stay empty, at the new size
    empty = {"boxes": np.zeros((0, 4), np.float32), "masks": np.zeros((0, 30, 60), bool)}
    _, (scaled,) = transform([np.zeros((3, 30, 60), np.float32)], [empty])
    assert scaled["masks"].shape == (0, 60, 120)


def test_mask_targets_of_a_resized_image_match_the_unresized_ones():
    # The same scene at 64×64 and 32×32: the 28×28 mask targets of the same object must agree
    # (this failed while masks kept their original size and boxes were scaled).
    from minifpn.models.mask_head import project_masks_on_boxes

    big = np.zeros((1, 64, 64), dtype=bool)
    big[0, 8:40, 16:48] = True
    small = big[:, ::2, ::2]
    resize = GeneralizedRCNNTransform(min_size=64, max_size=64)
    boxes = np.array([[8.0, 4.0, 24.0, 20.0]], np.float32)  # the object's box at 32×32
    _, (scaled,) = resize([np.zeros((3, 32, 32), np.float32)], [{"boxes": boxes, "masks": small}])
    from_resized = project_masks_on_boxes(scaled["masks"], scaled["boxes"], np.array([0]), 28)
    from_original = project_masks_on_boxes(big, boxes * 2, np.array([0]), 28)
    np.testing.assert_allclose(from_resized, from_original, atol=1e-6)
    assert from_resized.mean() > 0.9  # the box is filled by its object


def test_multi_scale_training_draws_one_size_per_image_keyed_by_its_row_of_the_batch():
    # torchvision's multi-scale training: in training mode each image draws its shorter
    # side from min_size, uniformly. minifpn draws one number from its seeded generator
    # per batch and gives image i the SplitMix64 key of its row (independent reference:
    # tests.test_backend's Python-integer SplitMix64), key % len(min_size).
    transform = GeneralizedRCNNTransform(min_size=(32, 40, 48, 56), max_size=1000,
                                         size_divisible=1)
    images = [np.zeros((3, 30, 70), np.float32)] * 12  # 30×70: scale = min_size / 30
    minifpn.manual_seed(7)
    image_list, _ = transform(images)
    seed = int(np.random.default_rng(7).integers(2**63))  # the batch's one draw, by hand
    expected_draws = [_splitmix64_key(seed, (row << 32) + 1) % 4 for row in range(12)]
    expected = [(m, int(70 * m / 30)) for m in np.array([32, 40, 48, 56])[expected_draws]]
    assert image_list.image_sizes == expected
    assert len(set(image_list.image_sizes)) > 1  # one size per image, not one per batch
    minifpn.manual_seed(7)
    assert transform(images)[0].image_sizes == expected  # reproducible
    # A process holding images 5.. of the batch draws what one process holding all would.
    minifpn.manual_seed(7)
    with minifpn.backend.batch_rows_from(5):
        assert transform(images[5:])[0].image_sizes == expected[5:]
    # Evaluation uses the last size, and draws nothing.
    transform.eval()
    minifpn.manual_seed(7)
    assert transform(images)[0].image_sizes == [(56, 130)] * 12
    assert minifpn.backend.rng().integers(2**63) == seed


def test_a_single_min_size_draws_nothing():
    # One size: the seeded stream is left untouched (training runs reproduce as before).
    transform = GeneralizedRCNNTransform(min_size=40, max_size=1000)
    minifpn.manual_seed(3)
    transform([np.zeros((3, 30, 70), np.float32)] * 3)
    assert minifpn.backend.rng().random() == np.random.default_rng(3).random()


def test_fixed_size_is_width_height_as_torchvision():
    transform = GeneralizedRCNNTransform(min_size=40, max_size=1000, fixed_size=(64, 48),
                                         size_divisible=16)
    boxes = np.array([[10, 5, 70, 25]], np.float32)
    image_list, (scaled,) = transform([np.zeros((3, 30, 70), np.float32)], [{"boxes": boxes}])
    assert image_list.image_sizes == [(48, 64)] and image_list.padded_size == (48, 64)
    # x scales by 64/70, y by 48/30
    np.testing.assert_allclose(scaled["boxes"], [[10 * 64 / 70, 8, 64, 40]], rtol=1e-6)


@pytest.mark.parametrize("min_size", [0, (), (32, -1)])
def test_transform_rejects_bad_min_size(min_size):
    with pytest.raises(ValueError, match="min_size"):
        GeneralizedRCNNTransform(min_size=min_size)


def test_transform_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        GeneralizedRCNNTransform()([np.zeros((1, 20, 20), np.float32)])
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        GeneralizedRCNNTransform()([np.zeros((20, 20, 3), np.float32)])


def test_to_chw_float():
    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 1] = [255, 51, 0]
    out = to_chw_float(image)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 1], [1.0, 0.2, 0.0])
    assert out.sum() == pytest.approx(1.2)


# ---------------------------------------------------------------------------
# CocoDetection
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco_root():
    root = find_coco_mini()
    if root is None:
        pytest.skip("coco-mini not found (set MINIFPN_DATA, or place it at "
                    "../shared/data/coco-mini)")
    return root


@pytest.fixture(scope="module")
def coco_val(coco_root):
    return CocoDetection(coco_root, "val")


@pytest.fixture(scope="module")
def val_json(coco_root):
    with open(coco_root / "annotations" / "instances_val.json") as f:
        return json.load(f)


def test_coco_labels_are_contiguous(coco_val, val_json):
    assert len(coco_val) == 112 == len(val_json["images"])
    category_ids = sorted(c["id"] for c in val_json["categories"])
    assert len(category_ids) == 80 and category_ids[-1] == 90
    assert coco_val.category_ids == category_ids
    assert sorted(coco_val.label_of.values()) == list(range(1, 81))
    for label in range(1, 81):
        assert coco_val.label_of[coco_val.category_id(label)] == label
    # by hand: ids 1..11 are labels 1..11, id 12 is unused, so id 13 is label 12 …
    assert coco_val.label_of[1] == 1 and coco_val.label_of[13] == 12
    assert coco_val.label_of[18] == 17 and coco_val.category_id(17) == 18
    assert coco_val.label_of[90] == 80 and coco_val.category_id(80) == 90
    names = {c["id"]: c["name"] for c in val_json["categories"]}
    assert coco_val.class_names[0] == "__background__"
    assert coco_val.class_names[1] == "person" and coco_val.class_names[17] == names[18] == "dog"
    assert len(coco_val.class_names) == 81


def test_coco_hand_checked_annotation(coco_val):
    # annotation 1768 of image 289343: a dog, bbox [473.07, 395.93, 38.65, 28.67] (xywh)
    index = coco_val.ids.index(289343)
    target = coco_val.target(index)
    assert target["image_id"] == 289343
    row = int(np.argmin(np.abs(target["boxes"][:, 0] - 473.07)))
    np.testing.assert_allclose(target["boxes"][row], [473.07, 395.93, 511.72, 424.60], rtol=1e-6)
    assert target["labels"][row] == 17
    assert not target["iscrowd"][row]
    assert target["area"][row] == pytest.approx(702.10575, rel=1e-6)
    assert target["boxes"].dtype == np.float32 and target["labels"].dtype == np.int64
    assert target["iscrowd"].dtype == bool


def test_coco_crowd_flags(coco_val):
    # image 87038 has 17 annotations, one of them a crowd [1, 190, 638, 101] (xywh)
    target = coco_val.target(coco_val.ids.index(87038))
    assert len(target["boxes"]) == 17
    assert target["iscrowd"].sum() == 1
    np.testing.assert_allclose(target["boxes"][target["iscrowd"]], [[1, 190, 639, 291]])


def test_coco_targets_match_json(coco_val, val_json):
    by_image = {}
    for a in val_json["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    sorted_ids = sorted(c["id"] for c in val_json["categories"])
    for index, image_id in enumerate(coco_val.ids):
        anns = [a for a in by_image.get(image_id, []) if a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
        target = coco_val.target(index)
        want = sorted(
            (x, y, x + w, y + h, sorted_ids.index(a["category_id"]) + 1, bool(a["iscrowd"]))
            for a in anns for x, y, w, h in (a["bbox"],)
        )
        got = sorted(
            (*b, int(lab), bool(c))
            for b, lab, c in zip(target["boxes"].tolist(), target["labels"], target["iscrowd"])
        )
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g[:4], w[:4], rtol=1e-6)
            assert g[4:] == w[4:]


def test_coco_image_loads(coco_val, val_json):
    info = {i["id"]: i for i in val_json["images"]}[coco_val.ids[0]]
    image, target = coco_val[0]
    assert image.shape == (info["height"], info["width"], 3) and image.dtype == np.uint8
    assert target["image_id"] == info["id"]


def write_coco(root, images, annotations, categories=None, official=False):
    name = "instances_val2017.json" if official else "instances_val.json"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / ("val2017" if official else "val")).mkdir(exist_ok=True)
    data = {"images": images, "annotations": annotations,
            "categories": categories or [{"id": 1, "name": "thing"}, {"id": 7, "name": "other"}]}
    path = root / "annotations" / name
    path.write_text(json.dumps(data))
    return path


def ann(ann_id, image_id, bbox, category_id=1, iscrowd=0, area=None):
    return {"id": ann_id, "image_id": image_id, "bbox": list(bbox), "category_id": category_id,
            "iscrowd": iscrowd, "area": float(bbox[2] * bbox[3] if area is None else area)}


def test_coco_missing_split_is_a_clear_error(tmp_path):
    (tmp_path / "annotations").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no COCO 'train' annotations.*instances_train"):
        CocoDetection(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="no COCO 'val'"):
        locate_split(tmp_path / "nowhere", "val")


def test_coco_corrupt_json_is_a_value_error(tmp_path):
    write_coco(tmp_path, [], [])
    (tmp_path / "annotations" / "instances_val.json").write_text('{"images": [1, 2')
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoDetection(tmp_path, "val")


@pytest.mark.parametrize("official", [False, True])
def test_coco_tiny_dataset_layouts_skip_empty_and_degenerate(tmp_path, official):
    images = [{"id": 5, "file_name": "a.jpg", "height": 20, "width": 30},
              {"id": 2, "file_name": "b.jpg", "height": 20, "width": 30}]
    annotations = [ann(1, 5, (1, 2, 3, 4), category_id=7),
                   ann(2, 5, (5, 5, 0.5, 4)),  # under a pixel wide: dropped
                   ann(3, 5, (0, 0, 10, 10), iscrowd=1)]
    write_coco(tmp_path, images, annotations, official=official)
    ds = CocoDetection(tmp_path, "val")
    assert ds.ids == [2, 5] and len(ds) == 2
    assert ds.image_dir == tmp_path / ("val2017" if official else "val")
    empty = ds.target(0)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    target = ds.target(1)
    np.testing.assert_array_equal(target["boxes"], [[1, 2, 4, 6], [0, 0, 10, 10]])
    assert target["labels"].tolist() == [2, 1]  # category 7 is the second id
    assert target["iscrowd"].tolist() == [False, True]
    assert CocoDetection(tmp_path, "val", skip_empty=True).ids == [5]


# ---------------------------------------------------------------------------
# proposal_recall
# ---------------------------------------------------------------------------
def load_coco(path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.fixture
def tiny_gt(tmp_path):
    """Image 1: a small (20×20) and a large (150×150) object; image 2: a medium (50×50)."""
    images = [{"id": 1, "file_name": "1.jpg", "height": 200, "width": 200},
              {"id": 2, "file_name": "2.jpg", "height": 200, "width": 200}]
    annotations = [ann(1, 1, (10, 10, 20, 20)), ann(2, 1, (40, 40, 150, 150)),
                   ann(3, 2, (20, 20, 50, 50), category_id=7)]
    return load_coco(write_coco(tmp_path, images, annotations))


SMALL, LARGE, MEDIUM = [10, 10, 30, 30], [40, 40, 190, 190], [20, 20, 70, 70]  # xyxy
JUNK = [190, 190, 199, 199]  # overlaps nothing


def check_recall(got, expected):
    assert list(got) == METRIC_NAMES
    for name in METRIC_NAMES:
        assert got[name] == pytest.approx(expected[name], abs=1e-9), name


def test_recall_metric_definitions():
    assert [name for name, _, _ in RECALL_METRICS] == METRIC_NAMES
    assert [(a, k) for _, a, k in RECALL_METRICS] == [
        ("all", 100), ("all", 1000), ("small", 1000), ("medium", 1000), ("large", 1000)]


def test_recall_one_missed_object(tiny_gt):
    # small and large covered exactly, medium missed: 2/3 at every IoU threshold
    proposals = {1: np.array([SMALL, LARGE], np.float32), 2: np.array([JUNK], np.float32)}
    check_recall(proposal_recall(tiny_gt, proposals),
                 {"AR@100": 2 / 3, "AR@1000": 2 / 3, "AR_s@1000": 1.0, "AR_m@1000": 0.0,
                  "AR_l@1000": 1.0})
    # an image with an empty proposal array recalls nothing
    proposals[2] = np.zeros((0, 4), np.float32)
    assert proposal_recall(tiny_gt, proposals)["AR@1000"] == pytest.approx(2 / 3)


def test_recall_partial_overlap(tiny_gt):
    # the medium box [20, 20, 70, 70] against [20, 20, 70, 56]: IoU 36/50 = 0.72 →
    # matched at t = 0.50 … 0.70 (5 of 10 thresholds)
    proposals = {1: np.array([SMALL, LARGE]), 2: np.array([[20, 20, 70, 56]])}
    check_recall(proposal_recall(tiny_gt, proposals),
                 {"AR@100": (5 * 1 + 5 * 2 / 3) / 10, "AR@1000": (5 + 5 * 2 / 3) / 10,
                  "AR_s@1000": 1.0, "AR_m@1000": 0.5, "AR_l@1000": 1.0})


def test_recall_counts_only_the_top_k(tiny_gt):
    # the exact medium box comes 151st: inside the top 1000, outside the top 100
    junk = [JUNK] * 150
    proposals = {1: np.array([SMALL, LARGE]), 2: np.array(junk + [MEDIUM])}
    check_recall(proposal_recall(tiny_gt, proposals),
                 {"AR@100": 2 / 3, "AR@1000": 1.0, "AR_s@1000": 1.0, "AR_m@1000": 1.0,
                  "AR_l@1000": 1.0})
    # with explicit scores that rank it first, it is in the top 100 too
    scores = {1: np.array([0.9, 0.8]), 2: np.array([0.1] * 150 + [0.99])}
    assert proposal_recall(tiny_gt, proposals, scores)["AR@100"] == pytest.approx(1.0)


def test_recall_ground_truth_as_proposals_is_one(tiny_gt):
    proposals = {1: np.array([LARGE, SMALL]), 2: np.array([MEDIUM])}
    check_recall(proposal_recall(tiny_gt, proposals), dict.fromkeys(METRIC_NAMES, 1.0))


def test_recall_empty_proposals_are_zeros(tiny_gt):
    check_recall(proposal_recall(tiny_gt, {}), dict.fromkeys(METRIC_NAMES, 0.0))
    empty = {1: np.zeros((0, 4)), 2: np.zeros((0, 4))}
    check_recall(proposal_recall(tiny_gt, empty), dict.fromkeys(METRIC_NAMES, 0.0))


def test_proposals_to_coco_format():
    results = proposals_to_coco({7: np.array([[1, 2, 4, 8], [0, 0, 10, 5]], np.float32)})
    assert [r["bbox"] for r in results] == [[1, 2, 3, 6], [0, 0, 10, 5]]
    assert all(r["image_id"] == 7 and r["category_id"] == 1 for r in results)
    assert results[0]["score"] > results[1]["score"]
    given = proposals_to_coco({7: np.array([[1, 2, 4, 8]])}, {7: np.array([0.25])})
    assert given[0]["score"] == 0.25


def test_recall_ground_truth_as_proposals_on_coco_mini(coco_root):
    coco_gt = load_coco(coco_root / "annotations" / "instances_val.json")
    proposals = {}
    for image_id in coco_gt.getImgIds():
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=image_id))
        proposals[image_id] = np.array(
            [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float64
        ).reshape(-1, 4)
    assert len(proposals) == 112
    check_recall(proposal_recall(coco_gt, proposals), dict.fromkeys(METRIC_NAMES, 1.0))
