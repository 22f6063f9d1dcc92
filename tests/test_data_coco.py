"""CocoDetection's report, masks, label mapping and errors; flips; COCO subsets; ``data subset``.

References are independent of the code under test:

* a tiny COCO json written here by hand, with the expected report numbers,
  annotation ids, clipped boxes and labels worked out by hand;
* masks: a rectangle polygon whose pixels are known exactly (pycocotools
  fills pixel (x, y) when its centre is inside: [2, 3]–[12, 9] covers
  rows 3..8, columns 2..11), a compressed RLE encoded here by pycocotools
  from a known array, and an uncompressed crowd RLE whose column-major run
  lengths are counted by hand;
* flips: boxes of rectangle masks found with ``np.nonzero``, and a box
  flipped by hand;
* subsets: the expected image / annotation ids read off the hand-made json.
"""

import argparse
import json
import os

import numpy as np
import pytest
from PIL import Image

from minifpn.data import DataError, find_coco_mini
from minifpn.data.cli import add_data_commands
from minifpn.data.coco import CocoDetection, DatasetReport
from minifpn.data.subset import make_subset
from minifpn.data.transforms import horizontal_flip, random_horizontal_flip

W, H = 40, 30  # every crafted image is 40 wide, 30 tall

CATEGORIES = [{"id": 90, "name": "kite"}, {"id": 1, "name": "person"},
              {"id": 5, "name": "plane"}]  # ids with gaps, listed out of order


def rle_array():
    """The known mask behind annotation 102's compressed RLE: an L shape."""
    a = np.zeros((H, W), np.uint8)
    a[10:14, 20:22] = 1
    a[13, 22:25] = 1
    return a


def crafted_annotations():
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(rle_array()))
    rle["counts"] = rle["counts"].decode("ascii")
    return [
        # image 10: a polygon, an RLE and a crowd region, all kept
        {"id": 101, "image_id": 10, "category_id": 5, "bbox": [2, 3, 10, 6], "area": 60,
         "iscrowd": 0, "segmentation": [[2, 3, 12, 3, 12, 9, 2, 9]]},
        {"id": 102, "image_id": 10, "category_id": 90, "bbox": [20, 10, 5, 4], "area": 11,
         "iscrowd": 0, "segmentation": rle},
        {"id": 103, "image_id": 10, "category_id": 1, "bbox": [0, 0, 2, 5], "area": 10,
         "iscrowd": 1, "segmentation": {"counts": [0, 5, 25, 5, 1165], "size": [H, W]}},
        # image 20: one box past the right/bottom edge, one past the left, one degenerate
        {"id": 104, "image_id": 20, "category_id": 1, "bbox": [30, 20, 15, 20], "area": 300,
         "iscrowd": 0, "segmentation": [[30, 20, 45, 20, 45, 40, 30, 40]]},
        {"id": 105, "image_id": 20, "category_id": 5, "bbox": [5, 5, 0.5, 10], "area": 5,
         "iscrowd": 0, "segmentation": [[5, 5, 5.5, 5, 5.5, 15, 5, 15]]},
        {"id": 107, "image_id": 20, "category_id": 90, "bbox": [-5, 2, 10, 8], "area": 80,
         "iscrowd": 0, "segmentation": [[-5, 2, 5, 2, 5, 10, -5, 10]]},
        # image 40: only a degenerate box; image 30: nothing at all
        {"id": 106, "image_id": 40, "category_id": 1, "bbox": [1, 1, 10, 0.2], "area": 2,
         "iscrowd": 0, "segmentation": [[1, 1, 11, 1, 11, 1.2, 1, 1.2]]},
    ]


def write_crafted(root, annotations=None, images=None, categories=None, files=True,
                  name="instances_val.json", folder="val"):
    images = images if images is not None else [
        {"id": i, "file_name": f"{i:012d}.png", "width": W, "height": H} for i in (40, 10, 30, 20)
    ]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / folder).mkdir(exist_ok=True)
    data = {"images": images,
            "annotations": crafted_annotations() if annotations is None else annotations,
            "categories": CATEGORIES if categories is None else categories}
    (root / "annotations" / name).write_text(json.dumps(data))
    if files:
        for im in images:
            pixels = np.full((im["height"], im["width"], 3), im["id"], np.uint8)
            Image.fromarray(pixels).save(root / folder / im["file_name"])
    return root / "annotations" / name


@pytest.fixture
def crafted(tmp_path):
    write_crafted(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------
# the load report
# ---------------------------------------------------------------------------
def test_report_counts_and_ids(crafted, capsys):
    ds = CocoDetection(crafted, "val", skip_empty=True)
    printed = capsys.readouterr().out
    r = ds.report
    assert isinstance(r, DatasetReport)
    assert (r.images, r.images_used, r.instances, r.crowd) == (4, 2, 7, 1)
    assert r.empty_image_ids == [30]  # no annotations at all
    assert r.emptied_image_ids == [40]  # only a degenerate box
    assert r.skip_empty is True
    assert sorted(r.degenerate_ids) == [105, 106]
    assert sorted(r.clipped_ids) == [104, 107]
    assert (r.categories, r.categories_used, r.unused_categories) == (3, 3, [])
    assert ds.ids == [10, 20]
    # printed once, readable, with the ids
    assert printed.count("COCO 'val'") == 1 and printed.strip() == str(r)
    for text in ("4 listed, 2 in the dataset", "7, of which 1 crowd", "105, 106", "104, 107",
                 "skipped (skip_empty=True)", "3 of 3 used"):
        assert text in printed, text


def test_report_keeps_empty_images_without_skip_empty(crafted, capsys):
    ds = CocoDetection(crafted, "val")
    assert ds.ids == [10, 20, 30, 40] and ds.report.images_used == 4
    assert "kept as background-only images" in capsys.readouterr().out
    assert ds.target(2)["boxes"].shape == (0, 4)  # image 30
    assert ds.target(3)["labels"].shape == (0,)  # image 40: its box was degenerate
    CocoDetection(crafted, "val", verbose=False)
    assert capsys.readouterr().out == ""


def test_report_lists_unused_categories(tmp_path):
    extra = CATEGORIES + [{"id": 7, "name": "train"}]
    write_crafted(tmp_path, categories=extra)
    r = CocoDetection(tmp_path, "val", verbose=False).report
    assert (r.categories, r.categories_used, r.unused_categories) == (4, 3, ["train"])
    assert "unused: train" in str(r)


def test_targets_clipped_degenerate_dropped_and_labelled(crafted):
    ds = CocoDetection(crafted, "val", skip_empty=True, verbose=False)
    t10 = ds.target(0)
    assert t10["image_id"] == 10
    np.testing.assert_array_equal(t10["boxes"], [[2, 3, 12, 9], [20, 10, 25, 14], [0, 0, 2, 5]])
    assert t10["labels"].tolist() == [2, 3, 1]  # ids 5, 90, 1 → labels 2, 3, 1
    assert t10["iscrowd"].tolist() == [False, False, True]
    np.testing.assert_array_equal(t10["area"], [60, 11, 10])
    t20 = ds.target(1)
    # 104: [30, 20, 45, 40] clipped to the 40×30 image; 107: [-5, 2, 5, 10] → x1 = 0; 105 dropped
    np.testing.assert_array_equal(t20["boxes"], [[30, 20, 40, 30], [0, 2, 5, 10]])
    assert t20["labels"].tolist() == [1, 3]
    assert t20["boxes"].dtype == np.float32 and t20["labels"].dtype == np.int64
    assert "masks" not in t20


# ---------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------
def test_masks_polygon_rle_and_crowd_rle(crafted):
    ds = CocoDetection(crafted, "val", skip_empty=True, with_masks=True, verbose=False)
    image, target = ds[0]
    masks = target["masks"]
    assert masks.shape == (3, H, W) and masks.dtype == np.uint8
    assert image.shape == (H, W, 3)
    rect = np.zeros((H, W), np.uint8)
    rect[3:9, 2:12] = 1  # the polygon [2, 3]–[12, 9]
    np.testing.assert_array_equal(masks[0], rect)
    np.testing.assert_array_equal(masks[1], rle_array())
    crowd = np.zeros((H, W), np.uint8)
    crowd[0:5, 0:2] = 1  # runs (column-major): 0 off, 5 on, 25 off, 5 on, the rest off
    np.testing.assert_array_equal(masks[2], crowd)


def test_masks_follow_the_kept_boxes(crafted):
    ds = CocoDetection(crafted, "val", skip_empty=True, with_masks=True, verbose=False)
    target = ds.target(1)  # image 20: 104 and 107 kept, 105 (between them) dropped
    assert target["masks"].shape == (2, H, W)
    want = np.zeros((2, H, W), np.uint8)
    want[0, 20:30, 30:40] = 1  # the polygon past the corner, cut at the image edge
    want[1, 2:10, 0:5] = 1
    np.testing.assert_array_equal(target["masks"], want)
    empty = CocoDetection(crafted, "val", with_masks=True, verbose=False).target(2)
    assert empty["masks"].shape == (0, H, W)


def test_masks_on_coco_mini_match_the_boxes():
    root = find_coco_mini()
    if root is None:
        pytest.skip("coco-mini not found (set MINIFPN_DATA)")
    ds = CocoDetection(root, "val", with_masks=True, verbose=False)
    with open(root / "annotations" / "instances_val.json") as f:
        anns = [a for a in json.load(f)["annotations"] if a["image_id"] == ds.ids[0]]
    target = ds.target(0)
    assert len(target["masks"]) == len(anns) == len(target["boxes"])
    for mask, box in zip(target["masks"], target["boxes"]):
        x1, y1, x2, y2 = box_of(mask)
        bx1, by1, bx2, by2 = box
        # inside the box (± a pixel of rounding) and covering most of it: thin
        # polygon spikes can vanish when rasterised, so not always all of it
        assert x1 >= bx1 - 1 and y1 >= by1 - 1 and x2 <= bx2 + 1 and y2 <= by2 + 1
        assert (x2 - x1) * (y2 - y1) > 0.8 * (bx2 - bx1) * (by2 - by1)


# ---------------------------------------------------------------------------
# labels ↔ category ids
# ---------------------------------------------------------------------------
def test_label_mapping_with_gaps(crafted):
    ds = CocoDetection(crafted, "val", verbose=False)
    assert ds.category_ids == [1, 5, 90]
    assert ds.label_of == {1: 1, 5: 2, 90: 3}
    assert [ds.category_id(label) for label in (1, 2, 3)] == [1, 5, 90]
    assert [ds.label(c) for c in (1, 5, 90)] == [1, 2, 3]
    assert ds.class_names == ["__background__", "person", "plane", "kite"]
    assert ds.num_classes == 4
    for bad in (0, 4, -1):
        with pytest.raises(ValueError, match="outside 1..3"):
            ds.category_id(bad)
    with pytest.raises(ValueError, match="category id 2 is not in"):
        ds.label(2)


def test_label_mapping_round_trip_on_coco_mini():
    root = find_coco_mini()
    if root is None:
        pytest.skip("coco-mini not found (set MINIFPN_DATA)")
    ds = CocoDetection(root, "train", verbose=False)
    with open(root / "annotations" / "instances_train.json") as f:
        names = {c["id"]: c["name"] for c in json.load(f)["categories"]}
    assert len(ds.category_ids) == 80
    for category_id, name in names.items():
        label = ds.label(category_id)
        assert ds.category_id(label) == category_id
        assert ds.class_names[label] == name
    assert ds.label(90) == 80 and ds.label(13) == 12  # by hand: id 12 is unused
    # coco-mini's train split: 5 images without annotations (README), no degenerate boxes
    assert len(ds.report.empty_image_ids) == 5 and ds.report.degenerate_ids == []
    assert ds.report.crowd == 34 and ds.report.instances == 3774


# ---------------------------------------------------------------------------
# a category subset (``categories=``)
# ---------------------------------------------------------------------------
def test_a_category_subset_renumbers_labels_in_the_order_given(crafted, capsys):
    # by hand from the crafted json: plane (id 5) = 101 (image 10), 105 (degenerate,
    # image 20); kite (id 90) = 102 (image 10), 107 (image 20)
    ds = CocoDetection(crafted, "val", skip_empty=True, categories=["plane", 90])
    assert ds.category_ids == [5, 90] and ds.label_of == {5: 1, 90: 2}
    assert ds.class_names == ["__background__", "plane", "kite"] and ds.num_classes == 3
    assert ds.ids == [10, 20]
    np.testing.assert_array_equal(ds.target(0)["boxes"], [[2, 3, 12, 9], [20, 10, 25, 14]])
    np.testing.assert_array_equal(ds.target(0)["labels"], [1, 2])
    np.testing.assert_array_equal(ds.target(1)["boxes"], [[0, 2, 5, 10]])  # 107, clipped
    np.testing.assert_array_equal(ds.target(1)["labels"], [2])
    # the other category is gone from the coco index too (what COCOeval sees)
    assert sorted(ds.coco.getCatIds()) == [5, 90]
    assert sorted(ds.coco.getAnnIds()) == [101, 102, 105, 107]
    r = ds.report
    assert (r.instances, r.crowd, r.chosen_categories) == (4, 0, ["plane", "kite"])
    assert "only the categories plane, kite" in capsys.readouterr().out


def test_images_without_a_chosen_category_are_skipped_for_training(crafted):
    planes = CocoDetection(crafted, "val", skip_empty=True, with_masks=True, verbose=False,
                           categories=["plane"])
    assert planes.ids == [10]  # image 20's only plane is degenerate
    target = planes.target(0)
    np.testing.assert_array_equal(target["labels"], [1])
    want = np.zeros((1, H, W), np.uint8)
    want[0, 3:9, 2:12] = 1  # its mask, the polygon [2, 3]–[12, 9]
    np.testing.assert_array_equal(target["masks"], want)
    people = CocoDetection(crafted, "val", skip_empty=True, verbose=False, categories=[1])
    assert people.ids == [10, 20]  # image 10 holds only a person crowd region: kept
    np.testing.assert_array_equal(people.target(0)["iscrowd"], [True])
    every = CocoDetection(crafted, "val", verbose=False, categories=["plane"])
    assert every.ids == [10, 20, 30, 40]  # for evaluation every image stays


@pytest.mark.parametrize("wanted, message", [
    (["dog"], r"unknown category 'dog': choose names or ids among 1 \(person\), 5 \(plane\), "
              r"90 \(kite\)"),
    ([7, "kite"], "unknown category 7"),
    (["person", 1], "person twice"),
    ([], "none given"),
])
def test_an_unknown_category_names_the_known_ones(crafted, wanted, message):
    with pytest.raises(ValueError, match=message) as error:
        CocoDetection(crafted, "val", verbose=False, categories=wanted)
    assert "instances_val.json" in str(error.value)


# ---------------------------------------------------------------------------
# bad input: one clear error each, naming the file and the id
# ---------------------------------------------------------------------------
def test_missing_image_file_names_path_and_id(crafted):
    ds = CocoDetection(crafted, "val", verbose=False)
    os.remove(crafted / "val" / "000000000020.png")
    with pytest.raises(FileNotFoundError, match=r"image id 20: .*000000000020\.png"):
        ds[ds.ids.index(20)]
    ds[ds.ids.index(10)]  # the others still read


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_corrupt_image_is_a_data_error(crafted, content):
    path = crafted / "val" / "000000000010.png"
    if content == "truncated":
        data = path.read_bytes()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), np.uint8)).save(path)
        data = path.read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    ds = CocoDetection(crafted, "val", verbose=False)
    with pytest.raises(DataError, match=r"image id 10 .*000000000010\.png") as info:
        ds.image(ds.ids.index(10))
    assert isinstance(info.value, ValueError)


def test_image_size_disagreeing_with_json(crafted):
    Image.fromarray(np.zeros((H, W + 1, 3), np.uint8)).save(crafted / "val" / "000000000020.png")
    ds = CocoDetection(crafted, "val", verbose=False)
    with pytest.raises(DataError, match=r"image id 20: .*000000000020\.png decodes to 41×30 "
                                        r"\(w×h\) but .*says 40×30"):
        ds[ds.ids.index(20)]


def test_json_that_does_not_parse(crafted):
    path = crafted / "annotations" / "instances_val.json"
    path.write_text('{"images": [')
    with pytest.raises(DataError, match=r"instances_val\.json is not valid JSON"):
        CocoDetection(crafted, "val")


def test_unknown_category_id_at_load(tmp_path):
    annotations = crafted_annotations()
    annotations[3]["category_id"] = 3  # annotation 104
    path = write_crafted(tmp_path, annotations=annotations, files=False)
    with pytest.raises(DataError, match=rf"{path}: annotation id 104 \(image id 20\) has "
                                        r"category_id 3, which is not in 'categories'"):
        CocoDetection(tmp_path, "val")


def test_annotation_of_unknown_image(tmp_path):
    annotations = crafted_annotations()
    annotations[0]["image_id"] = 999
    write_crafted(tmp_path, annotations=annotations, files=False)
    with pytest.raises(DataError, match=r"annotation id 101 refers to image id 999"):
        CocoDetection(tmp_path, "val")


def test_bad_fields_at_load(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": W}]  # no height
    write_crafted(tmp_path, annotations=[], images=images, files=False)
    with pytest.raises(DataError, match="image id 1 lacks height"):
        CocoDetection(tmp_path, "val")
    annotations = crafted_annotations()
    annotations[1]["bbox"] = [1, 2, 3]
    write_crafted(tmp_path, annotations=annotations, files=False)
    with pytest.raises(DataError, match=r"annotation id 102 \(image id 10\) has bbox \[1, 2, 3\]"):
        CocoDetection(tmp_path, "val")


def test_bad_masks(tmp_path):
    annotations = crafted_annotations()
    del annotations[0]["segmentation"]
    write_crafted(tmp_path, annotations=annotations, files=False)
    CocoDetection(tmp_path, "val", verbose=False)  # fine without masks
    with pytest.raises(DataError, match=r"annotation id 101 \(image id 10\) has no "
                                        "'segmentation'"):
        CocoDetection(tmp_path, "val", with_masks=True)
    annotations = crafted_annotations()
    annotations[2]["segmentation"]["size"] = [H + 1, W]  # an RLE of the wrong size
    write_crafted(tmp_path, annotations=annotations, files=False)
    ds = CocoDetection(tmp_path, "val", with_masks=True, verbose=False)
    with pytest.raises(DataError, match=r"annotation id 103 \(image id 10\).*31×40"):
        ds.target(ds.ids.index(10))


# ---------------------------------------------------------------------------
# horizontal flips
# ---------------------------------------------------------------------------
def box_of(mask):
    rows, cols = np.nonzero(mask)
    return [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def flip_sample(rng):
    height, width = 24, 36
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 5, 7], [10, 3, 36, 20], [17, 11, 18, 12]], np.float32)
    masks = np.zeros((3, height, width), np.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.astype(int)):
        m[y1:y2, x1:x2] = 1
    return image, {"boxes": boxes, "masks": masks, "labels": np.array([1, 2, 3]),
                   "image_id": 7}


def test_flip_by_hand():
    image = np.arange(10 * 4 * 3, dtype=np.uint8).reshape(4, 10, 3)
    boxes = np.array([[1, 2, 4, 3]], np.float32)
    out, target = horizontal_flip(image, {"boxes": boxes})
    np.testing.assert_array_equal(target["boxes"], [[6, 2, 9, 3]])  # 10 − 4, 10 − 1
    np.testing.assert_array_equal(out[:, 0], image[:, 9])
    np.testing.assert_array_equal(out[2, 7], image[2, 2])


def test_flip_keeps_boxes_and_masks_aligned(rng):
    image, target = flip_sample(rng)
    before = {k: np.copy(v) for k, v in target.items()}
    flipped, ft = horizontal_flip(image, target)
    for mask, box in zip(ft["masks"], ft["boxes"]):
        assert box_of(mask) == box.tolist()
    np.testing.assert_array_equal(ft["labels"], target["labels"])
    assert ft["image_id"] == 7
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    for key, value in before.items():  # the inputs are untouched
        np.testing.assert_array_equal(target[key], value)
    again, back = horizontal_flip(flipped, ft)
    np.testing.assert_array_equal(again, image)
    np.testing.assert_array_equal(back["boxes"], target["boxes"])
    np.testing.assert_array_equal(back["masks"], target["masks"])


def test_flip_channels_first(rng):
    image, target = flip_sample(rng)
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    flipped, ft = horizontal_flip(chw, target)
    assert flipped.shape == chw.shape
    np.testing.assert_array_equal(flipped.transpose(1, 2, 0), image[:, ::-1])
    np.testing.assert_array_equal(ft["boxes"], horizontal_flip(image, target)[1]["boxes"])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) or \(3, H, W\)"):
        horizontal_flip(np.zeros((5, 6)), target)


def test_random_flip(rng):
    image, target = flip_sample(rng)
    same_image, same_target = random_horizontal_flip(image, target, rng, p=0.0)
    assert same_image is image and same_target is target
    flipped, _ = random_horizontal_flip(image, target, rng, p=1.0)
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    draws = np.random.default_rng(5)
    flips = sum(random_horizontal_flip(image, target, draws)[0] is not image for _ in range(400))
    assert 160 < flips < 240  # p = 0.5: 200 ± 5 σ
    a = [random_horizontal_flip(image, None, np.random.default_rng(9))[0] is image
         for _ in range(2)]
    assert a[0] == a[1]  # same seed, same choice
    with pytest.raises(ValueError, match="probability"):
        random_horizontal_flip(image, target, rng, p=1.5)


# ---------------------------------------------------------------------------
# subsets of a full COCO download, and ``minifpn data subset``
# ---------------------------------------------------------------------------
FULL_CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
                   {"id": 2, "name": "bicycle", "supercategory": "vehicle"},
                   {"id": 18, "name": "dog", "supercategory": "animal"}]


@pytest.fixture
def full_coco(tmp_path):
    """A fake official download: annotations/instances_val2017.json and val2017/."""
    root = tmp_path / "coco"
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 20, "height": 10}
              for i in (5, 3, 9, 12, 7)]

    def a(ann_id, image_id, category_id, iscrowd=0):
        return {"id": ann_id, "image_id": image_id, "category_id": category_id,
                "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": iscrowd,
                "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]}

    annotations = [a(31, 3, 1), a(32, 3, 2), a(51, 5, 2), a(71, 7, 18, iscrowd=1),
                   a(91, 9, 1), a(92, 9, 1), a(121, 12, 18), a(122, 12, 2)]
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    data = {"info": {"year": 2017}, "licenses": [{"id": 1, "name": "x"}], "images": images,
            "annotations": annotations, "categories": FULL_CATEGORIES}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    for im in images:
        Image.fromarray(np.full((10, 20, 3), im["id"], np.uint8)).save(
            root / "val2017" / im["file_name"], format="JPEG")
    return root


def test_subset_filters_and_links(full_coco, tmp_path):
    out = make_subset(full_coco, "val2017", ("person", "dog"), max_images=3,
                      out=tmp_path / "sub", progress=False)
    assert out == tmp_path / "sub"
    with open(out / "annotations" / "instances_val.json") as f:
        data = json.load(f)
    # images with a person or a dog: 3, 7, 9, 12 → the first three by id
    assert [im["id"] for im in data["images"]] == [3, 7, 9]
    # their person / dog annotations, ids unchanged (32, a bicycle, is dropped)
    assert sorted(a["id"] for a in data["annotations"]) == [31, 71, 91, 92]
    assert data["categories"] == [FULL_CATEGORIES[0], FULL_CATEGORIES[2]]
    assert data["info"] == {"year": 2017} and data["licenses"] == [{"id": 1, "name": "x"}]
    for im in data["images"]:
        link = out / "val" / im["file_name"]
        assert link.is_symlink()
        assert link.resolve() == (full_coco / "val2017" / im["file_name"]).resolve()
    assert sorted(p.name for p in (out / "val").iterdir()) == [
        "000000000003.jpg", "000000000007.jpg", "000000000009.jpg"]
    ds = CocoDetection(out, "val", with_masks=True, verbose=False)
    assert ds.ids == [3, 7, 9] and ds.category_ids == [1, 18]
    image, target = ds[1]  # image 7: a crowd of dogs
    assert image.shape == (10, 20, 3) and target["labels"].tolist() == [2]
    assert target["iscrowd"].tolist() == [True] and ds.category_id(2) == 18


def test_subset_copies_and_defaults_to_all(full_coco, tmp_path):
    out = make_subset(full_coco, categories="bicycle", out=tmp_path / "bikes", link=False,
                      progress=False)
    data = json.loads((out / "annotations" / "instances_val.json").read_text())
    assert [im["id"] for im in data["images"]] == [3, 5, 12]  # no max_images: all of them
    assert sorted(a["id"] for a in data["annotations"]) == [32, 51, 122]
    for im in data["images"]:
        copy = out / "val" / im["file_name"]
        assert copy.is_file() and not copy.is_symlink()
        assert copy.read_bytes() == (full_coco / "val2017" / im["file_name"]).read_bytes()


def test_subset_of_coco_mini_matches_the_json(tmp_path):
    root = find_coco_mini()
    if root is None:
        pytest.skip("coco-mini not found (set MINIFPN_DATA)")
    out = make_subset(root, "val", ["person", "dog"], max_images=4, out=tmp_path / "mini",
                      progress=False)
    full = json.loads((root / "annotations" / "instances_val.json").read_text())
    want = sorted({a["image_id"] for a in full["annotations"] if a["category_id"] in (1, 18)})[:4]
    ds = CocoDetection(out, "val", verbose=False)
    assert ds.ids == want and ds.class_names == ["__background__", "person", "dog"]


def test_subset_errors(full_coco, tmp_path):
    with pytest.raises(DataError, match=r"unknown category 'cat' in .*instances_val2017\.json; "
                                        "valid names: bicycle, dog, person"):
        make_subset(full_coco, categories=["person", "cat"], out=tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="no annotations for split 'train2017'"):
        make_subset(full_coco, split="train2017", out=tmp_path / "x")
    os.remove(full_coco / "val2017" / "000000000009.jpg")
    with pytest.raises(FileNotFoundError, match=r"1 of the 4 chosen images are missing .*"
                                                r"000000000009\.jpg"):
        make_subset(full_coco, categories="person,dog", out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()  # nothing written
    assert [p.name for p in tmp_path.iterdir()] == ["coco"]  # no temporary folders left


def test_subset_refuses_a_non_empty_out_and_overwrites_on_request(full_coco, tmp_path):
    out = tmp_path / "sub"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="is not empty.*overwrite"):
        make_subset(full_coco, out=out, progress=False)
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    make_subset(full_coco, out=out, overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "annotations").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco", "sub"]


def data_parser():
    parser = argparse.ArgumentParser(prog="minifpn")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_data_subset(full_coco, tmp_path, capsys):
    args = data_parser().parse_args([
        "data", "subset", "--coco-root", str(full_coco), "--split", "val2017",
        "--categories", "person,dog", "--max-images", "2", "--out", str(tmp_path / "s"),
        "--copy", "--quiet"])
    assert args.run(args) == 0
    out = capsys.readouterr().out
    assert "val: 2 images (copied), 2 annotations (1 crowd) of person, dog" in out
    assert str(tmp_path / "s") in out
    ds = CocoDetection(tmp_path / "s", "val", verbose=False)
    assert ds.ids == [3, 7] and not (tmp_path / "s" / "val" / "000000000003.jpg").is_symlink()


def test_cli_data_registration_through_the_package():
    import minifpn.data

    parser = argparse.ArgumentParser(prog="minifpn")
    minifpn.data.add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "subset", "--coco-root", "c", "--out", "o"])
    assert (args.split, args.categories, args.max_images, args.copy) == (
        "val2017", "person,dog", None, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "subset", "--coco-root", "c", "--out", "o",
                           "--max-images", "0"])
