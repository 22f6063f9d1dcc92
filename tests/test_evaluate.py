"""COCO results, COCOeval metrics, whole-model evaluation and the metrics table.

References are independent of the code under test:

* ground truth submitted as detections must score AP = 1 (bbox and segm):
  outputs are built from pycocotools' own ``annToMask`` and the annotation
  boxes, on a hand-written COCO json and on coco-mini;
* partial results are checked against AP / AR computed by hand from
  COCOeval's definition (101-point interpolated precision, IoU 0.50:0.95);
* RLEs are decoded with pycocotools and compared with the masks;
* the names of the twelve numbers are checked against COCOeval's own
  printed summary lines.
"""

import contextlib
import io
import json
import math
import re

import numpy as np
import pytest
from PIL import Image
from pycocotools.cocoeval import COCOeval

import minifpn
from minifpn import nn
from minifpn.data import find_coco_mini
from minifpn.data.coco import CocoDetection
from minifpn.engine.evaluate import (
    COCO_STAT_NAMES,
    RECALL_METRICS,
    coco_evaluate,
    detections_to_coco,
    evaluate_model,
    format_metrics_table,
    metrics_path_for,
    proposal_recall,
)

RECALL_NAMES = [name for name, _, _ in RECALL_METRICS]


def load_coco(path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def rect(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def triangle(x, y, w, h):
    return [[x, y, x + w, y, x, y + h]]


def annotation(ann_id, image_id, bbox, category_id, polygon=None, iscrowd=0):
    polygon = polygon or rect(*bbox)
    x, y, w, h = bbox
    area = w * h / 2 if len(polygon[0]) == 6 else w * h
    return {"id": ann_id, "image_id": image_id, "bbox": list(bbox), "category_id": category_id,
            "segmentation": polygon, "area": float(area), "iscrowd": iscrowd}


#: Category ids with gaps: contiguous labels 1, 2, 3 are ids 2, 5, 11.
CATEGORIES = [{"id": 2, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 11, "name": "bird"}]
CATEGORY_IDS = [2, 5, 11]


def write_json(path, images, annotations, categories=CATEGORIES):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    return path


@pytest.fixture
def tiny_gt(tmp_path):
    """Three 200×200 images: small (< 32²), medium and large objects of three
    categories, a triangle (so its mask differs from its box), a crowd region,
    and an image without objects."""
    images = [{"id": i, "file_name": f"{i}.png", "height": 200, "width": 200}
              for i in (1, 2, 3)]
    annotations = [
        annotation(1, 1, (10, 10, 20, 20), 2),  # small cat
        annotation(2, 1, (40, 40, 150, 150), 5),  # large dog
        annotation(3, 1, (120, 5, 60, 40), 2, polygon=triangle(120, 5, 60, 40)),  # medium
        annotation(4, 2, (20, 20, 50, 50), 11),  # medium bird
        annotation(5, 2, (100, 100, 30, 30), 11),  # small bird
        annotation(6, 2, (0, 150, 200, 50), 5, iscrowd=1),  # a crowd: never a detection
    ]
    return load_coco(write_json(tmp_path / "gt.json", images, annotations))


def ground_truth_outputs(coco, image_ids, score=1.0):
    """Each image's non-crowd objects as a detector's outputs (labels contiguous)."""
    label_of = {c: i + 1 for i, c in enumerate(sorted(coco.getCatIds()))}
    outputs = []
    for image_id in image_ids:
        info = coco.imgs[image_id]
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if not a["iscrowd"]]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                         np.float32).reshape(-1, 4)
        masks = np.stack([coco.annToMask(a) for a in anns]) if anns else np.zeros(
            (0, info["height"], info["width"]))
        outputs.append({
            "boxes": boxes,
            "labels": np.array([label_of[a["category_id"]] for a in anns], np.int64),
            "scores": np.full(len(anns), score, np.float32),
            "masks": masks[:, None].astype(np.float32),
        })
    return outputs


def assert_metric(value, expected):
    if expected is None:
        assert math.isnan(value)
    else:
        assert value == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------------------
# ground truth as detections: AP = 1
# ---------------------------------------------------------------------------
def test_ground_truth_as_detections_is_perfect_on_tiny_json(tiny_gt):
    outputs = ground_truth_outputs(tiny_gt, [1, 2, 3])
    results = detections_to_coco(outputs, [1, 2, 3], lambda label: CATEGORY_IDS[label - 1])
    assert len(results) == 5  # the crowd region is not a detection
    metrics = coco_evaluate(tiny_gt, results)
    assert set(metrics) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        assert list(m) == list(COCO_STAT_NAMES)
        for name in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR@100",
                     "AR_small", "AR_medium", "AR_large"):
            assert m[name] == pytest.approx(1.0), (iou_type, name)
        # AR@1: the best detection per image and category. Image 1 has two cats,
        # image 2 two birds: 1 of 2 found in each; the dog: 1 of 1 → mean (½ + 1 + ½) / 3
        assert m["AR@1"] == pytest.approx(2 / 3)


def test_ground_truth_as_detections_is_perfect_on_coco_mini():
    root = find_coco_mini()
    if root is None:
        pytest.skip("coco-mini not found (set MINIFPN_DATA, or place it at "
                    "../shared/data/coco-mini)")
    coco = load_coco(root / "annotations" / "instances_val.json")
    image_ids = sorted(coco.getImgIds())[:10]
    outputs = ground_truth_outputs(coco, image_ids)
    category_ids = sorted(coco.getCatIds())
    results = detections_to_coco(outputs, image_ids, lambda label: category_ids[label - 1])
    metrics = coco_evaluate(coco, results, image_ids=image_ids)
    for iou_type in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75", "AR@100"):
            assert metrics[iou_type][name] == pytest.approx(1.0), (iou_type, name)
        for name in ("AP_small", "AP_medium", "AP_large"):
            value = metrics[iou_type][name]
            assert math.isnan(value) or value == pytest.approx(1.0), (iou_type, name)


# ---------------------------------------------------------------------------
# detections_to_coco
# ---------------------------------------------------------------------------
def test_rle_round_trip_and_result_format():
    from pycocotools import mask as mask_util

    rng = np.random.default_rng(0)
    probabilities = rng.random((3, 1, 37, 53)).astype(np.float32)
    output = {"boxes": np.array([[1, 2, 11, 22], [0, 0, 53, 37], [5.5, 6.25, 7, 8]], np.float32),
              "labels": np.array([3, 1, 2]), "scores": np.array([0.9, 0.5, 0.25], np.float32),
              "masks": probabilities}
    results = detections_to_coco([output], [42], [None] + CATEGORY_IDS)  # a list by label
    json.loads(json.dumps(results))  # JSON-serialisable as is
    assert [r["image_id"] for r in results] == [42, 42, 42]
    assert [r["category_id"] for r in results] == [11, 2, 5]
    assert [r["bbox"] for r in results] == [[1, 2, 10, 20], [0, 0, 53, 37], [5.5, 6.25, 1.5, 1.75]]
    assert all(isinstance(v, float) for r in results for v in r["bbox"])
    assert [r["score"] for r in results] == pytest.approx([0.9, 0.5, 0.25])
    for result, probability in zip(results, probabilities):
        rle = result["segmentation"]
        assert isinstance(rle["counts"], str) and rle["size"] == [37, 53]
        binary = (probability[0] > 0.5).astype(np.uint8)
        np.testing.assert_array_equal(mask_util.decode(rle), binary)
        assert mask_util.area(rle) == binary.sum()
    # another threshold, (D, H, W) masks
    output["masks"] = probabilities[:, 0]
    rle = detections_to_coco([output], [42], {1: 2, 2: 5, 3: 11}, mask_threshold=0.8)[0][
        "segmentation"]
    np.testing.assert_array_equal(mask_util.decode(rle), probabilities[0, 0] > 0.8)


def test_results_without_masks_have_no_segmentation():
    output = {"boxes": np.array([[0, 0, 4, 4]]), "labels": np.array([1]), "scores": [0.5]}
    output["scores"] = np.array(output["scores"])
    (result,) = detections_to_coco([output], [7], lambda label: 90)
    assert "segmentation" not in result and result["category_id"] == 90


def test_category_ids_map_back_through_gaps(tiny_gt):
    outputs = ground_truth_outputs(tiny_gt, [1, 2])
    results = detections_to_coco(outputs, [1, 2], {1: 2, 2: 5, 3: 11})
    by_ann = {tuple(r["bbox"]): r["category_id"] for r in results}
    assert by_ann[(10.0, 10.0, 20.0, 20.0)] == 2 and by_ann[(40.0, 40.0, 150.0, 150.0)] == 5
    assert by_ann[(20.0, 20.0, 50.0, 50.0)] == 11
    # the contiguous labels themselves are not COCO ids: a clear error, not silent zeros
    unmapped = detections_to_coco(outputs, [1, 2], lambda label: label)
    with pytest.raises(ValueError, match="category ids.*category_id"):
        coco_evaluate(tiny_gt, unmapped)
    # a wrong (shifted) mapping is accepted but scores nothing
    shifted = detections_to_coco(outputs, [1, 2], {1: 5, 2: 11, 3: 2})
    assert coco_evaluate(tiny_gt, shifted, "bbox", image_ids=[1, 2])["bbox"]["AP"] == 0.0


def test_detections_to_coco_errors():
    good = {"boxes": np.zeros((1, 4)), "labels": np.array([1]), "scores": np.array([1.0])}
    with pytest.raises(ValueError, match="2 outputs but 1 image ids"):
        detections_to_coco([good, good], [1], lambda label: label)
    with pytest.raises(ValueError, match="proposal-only"):
        detections_to_coco([{"boxes": np.zeros((1, 4))}], [1], lambda label: label)
    with pytest.raises(ValueError, match="background"):
        detections_to_coco([{**good, "labels": np.array([0])}], [1], lambda label: label)
    with pytest.raises(ValueError, match="non-finite"):
        detections_to_coco([{**good, "scores": np.array([np.nan])}], [1], lambda label: label)
    assert detections_to_coco([], [], lambda label: label) == []


# ---------------------------------------------------------------------------
# coco_evaluate: hand-computed partial results, empty results, errors
# ---------------------------------------------------------------------------
@pytest.fixture
def two_objects(tmp_path):
    """Two 100×100 images, one medium (40×40) category-2 object in each."""
    images = [{"id": i, "file_name": f"{i}.png", "height": 100, "width": 100} for i in (1, 2)]
    annotations = [annotation(1, 1, (10, 10, 40, 40), 2), annotation(2, 2, (50, 50, 40, 40), 2)]
    return load_coco(write_json(tmp_path / "two.json", images, annotations))


def box_result(image_id, bbox, score, category_id=2):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


def test_an_image_without_detections_halves_recall(two_objects):
    # image 1 found exactly, image 2 has no detections: recall ½ at every IoU;
    # precision 1 up to recall ½, so 51 of COCOeval's 101 recall points score 1
    results = [box_result(1, (10, 10, 40, 40), 0.9)]
    m = coco_evaluate(two_objects, results, "bbox")["bbox"]
    for name in ("AP", "AP50", "AP75", "AP_medium"):
        assert_metric(m[name], 51 / 101)
    for name in ("AR@1", "AR@10", "AR@100", "AR_medium"):
        assert_metric(m[name], 0.5)
    for name in ("AP_small", "AP_large", "AR_small", "AR_large"):  # no such objects: undefined
        assert_metric(m[name], None)
    # both found: perfect
    both = results + [box_result(2, (50, 50, 40, 40), 0.8)]
    assert coco_evaluate(two_objects, both, "bbox")["bbox"]["AP"] == pytest.approx(1.0)
    # only image 1 evaluated: perfect too — image 2's object is not counted
    assert coco_evaluate(two_objects, results, "bbox", image_ids=[1])["bbox"]["AR@100"] == 1.0


def test_false_positive_ranked_first_halves_precision(two_objects):
    # a confident false positive, then the true positive: precision ½ at recall ½
    results = [box_result(2, (0, 0, 10, 10), 0.95), box_result(1, (10, 10, 40, 40), 0.9)]
    m = coco_evaluate(two_objects, results, "bbox")["bbox"]
    assert_metric(m["AP"], 0.5 * 51 / 101)
    assert_metric(m["AR@100"], 0.5)


def test_partial_overlap_counts_at_lower_thresholds(two_objects):
    # [10, 10, 40, 33] inside [10, 10, 40, 40]: IoU 0.825 → matched at t = 0.50 … 0.80 (7 of 10)
    results = [box_result(1, (10, 10, 40, 33), 0.9), box_result(2, (50, 50, 40, 40), 0.8)]
    m = coco_evaluate(two_objects, results, "bbox")["bbox"]
    assert_metric(m["AP50"], 1.0)
    assert_metric(m["AP75"], 1.0)
    # t ≤ 0.80: both found (precision 1); t > 0.80: only the 2nd, ranked after a miss
    # → precision ½ at recall ½ (51 points): AP = (7·1 + 3·(½·51/101)) / 10
    assert_metric(m["AP"], (7 + 3 * 0.5 * 51 / 101) / 10)
    assert_metric(m["AR@100"], (7 * 1.0 + 3 * 0.5) / 10)


def test_segm_sizes_come_from_the_mask_not_its_box(tmp_path):
    # a false-positive triangle: box 40×40 = 1600 (medium), mask ≈ 800 px (small)
    from pycocotools import mask as mask_util

    images = [{"id": 1, "file_name": "1.png", "height": 100, "width": 100}]
    gt = load_coco(write_json(tmp_path / "g.json", images,
                              [annotation(1, 1, (5, 5, 20, 20), 2)]))  # small square
    triangle_mask = np.zeros((1, 100, 100), np.float32)
    triangle_mask[0] = mask_util.decode(mask_util.frPyObjects(triangle(50, 50, 40, 40), 100,
                                                              100))[..., 0]
    square = np.zeros((1, 100, 100), np.float32)
    square[0, 5:25, 5:25] = 1
    output = {"boxes": np.array([[50, 50, 90, 90], [5, 5, 25, 25]], np.float32),
              "labels": np.array([1, 1]), "scores": np.array([0.9, 0.5], np.float32),
              "masks": np.stack([triangle_mask, square])}
    results = detections_to_coco([output], [1], {1: 2})
    m = coco_evaluate(gt, results)
    # segm: the triangle is a small false positive ranked first → precision ½ at every recall
    assert m["segm"]["AP_small"] == pytest.approx(0.5)
    # bbox: the triangle's box is medium, outside the small range → ignored there
    assert m["bbox"]["AP_small"] == pytest.approx(1.0)


def test_empty_results_are_zeros_not_a_crash(tiny_gt, two_objects):
    metrics = coco_evaluate(tiny_gt, [])  # pycocotools' loadRes itself fails on []
    for iou_type in ("bbox", "segm"):
        assert all(v == 0.0 for v in metrics[iou_type].values()), metrics[iou_type]
    m = coco_evaluate(two_objects, [], ("bbox",))["bbox"]
    for name in COCO_STAT_NAMES:  # zero where there are objects, undefined where none
        assert_metric(m[name], None if ("small" in name or "large" in name) else 0.0)
    assert proposal_recall(two_objects, {1: np.zeros((0, 4)), 2: np.zeros((0, 4))})[
        "AR@1000"] == 0.0


def test_proposal_recall_without_objects_of_a_size_is_nan(two_objects):
    proposals = {1: np.array([[10, 10, 50, 50]]), 2: np.array([[0, 0, 5, 5]])}
    recall = proposal_recall(two_objects, proposals)
    assert recall["AR@1000"] == pytest.approx(0.5) and recall["AR_m@1000"] == pytest.approx(0.5)
    assert math.isnan(recall["AR_s@1000"]) and math.isnan(recall["AR_l@1000"])


def test_coco_evaluate_does_not_mutate_results(two_objects):
    results = [box_result(1, (10, 10, 40, 40), 0.9)]
    before = json.dumps(results)
    coco_evaluate(two_objects, results, "bbox")
    assert json.dumps(results) == before


def test_coco_evaluate_errors(two_objects):
    good = [box_result(1, (10, 10, 40, 40), 0.9)]
    with pytest.raises(ValueError, match="image ids"):
        coco_evaluate(two_objects, [box_result(99, (0, 0, 1, 1), 0.5)], "bbox")
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_evaluate(two_objects, good, "bbox", image_ids=[1, 99])
    with pytest.raises(ValueError, match="segmentation"):
        coco_evaluate(two_objects, good, ("bbox", "segm"))
    with pytest.raises(ValueError, match="unknown iou type"):
        coco_evaluate(two_objects, good, "keypoints")
    with pytest.raises(ValueError, match="no images"):
        coco_evaluate(two_objects, good, "bbox", image_ids=[])


def test_names_follow_cocoeval_summary_and_output_is_quiet(two_objects, capsys):
    results = [box_result(1, (10, 10, 40, 40), 0.9), box_result(2, (50, 50, 40, 32), 0.3)]
    metrics = coco_evaluate(two_objects, results, "bbox")["bbox"]
    assert capsys.readouterr().out == ""  # pycocotools' narration swallowed
    coco_evaluate(two_objects, results, "bbox", verbose=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if "@[" in line]
    assert len(lines) == 12
    expected = {  # COCOeval's summary line → our name
        ("AP", "0.50:0.95", "all", "100"): "AP", ("AP", "0.50", "all", "100"): "AP50",
        ("AP", "0.75", "all", "100"): "AP75", ("AP", "0.50:0.95", "small", "100"): "AP_small",
        ("AP", "0.50:0.95", "medium", "100"): "AP_medium",
        ("AP", "0.50:0.95", "large", "100"): "AP_large",
        ("AR", "0.50:0.95", "all", "1"): "AR@1", ("AR", "0.50:0.95", "all", "10"): "AR@10",
        ("AR", "0.50:0.95", "all", "100"): "AR@100",
        ("AR", "0.50:0.95", "small", "100"): "AR_small",
        ("AR", "0.50:0.95", "medium", "100"): "AR_medium",
        ("AR", "0.50:0.95", "large", "100"): "AR_large",
    }
    pattern = r"\((AP|AR)\) @\[ IoU=(\S+)\s*\| area=\s*(\w+) \| maxDets=\s*(\d+) \] = (-?[\d.]+)"
    for line in lines:
        kind, iou, area, dets, value = re.search(pattern, line).groups()
        name = expected[(kind, iou, area, dets)]
        printed = float(value)
        assert_metric(metrics[name], None if printed < 0 else pytest.approx(printed, abs=6e-4))


# ---------------------------------------------------------------------------
# evaluate_model
# ---------------------------------------------------------------------------
#: (height, width) of the tiny dataset's images — all different, so a fake
#: model can tell them apart by size.
TINY_SIZES = {1: (48, 64), 2: (64, 48), 3: (56, 72)}


@pytest.fixture
def tiny_dataset(tmp_path):
    """Three Pillow-written images and their COCO json in the coco-mini layout."""
    root = tmp_path / "tiny"
    (root / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for image_id, (h, w) in TINY_SIZES.items():
        name = f"img{image_id}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "val" / name)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    annotations = [
        annotation(1, 1, (4, 4, 10, 12), 2),
        annotation(2, 1, (20, 10, 40, 30), 5, polygon=triangle(20, 10, 40, 30)),
        annotation(3, 2, (5, 20, 38, 40), 11),
        annotation(4, 3, (30, 8, 16, 16), 5),
        annotation(5, 3, (2, 30, 60, 24), 2),
    ]
    write_json(root / "annotations" / "instances_val.json", images, annotations)
    return CocoDetection(root, "val")


def tiny_model(masks=True):
    from minifpn.models import FasterRCNN, MaskRCNN, detector_parts, resnet_fpn_backbone

    minifpn.manual_seed(0)
    backbone = resnet_fpn_backbone("resnet18", width=0.125, out_channels=16)
    if masks:
        parts = detector_parts(16, 4, representation_size=32, mask_layers=(16,) * 4,
                               mask_dim_reduced=16)
        return MaskRCNN(backbone, min_size=64, max_size=96, **parts)
    return FasterRCNN(backbone, min_size=64, max_size=96,
                      **detector_parts(16, 4, representation_size=32))


def check_metric_values(metrics, sections):
    for section in sections:
        for name, value in metrics[section].items():
            assert math.isnan(value) or 0.0 <= value <= 1.0, (section, name, value)


def test_evaluate_model_mask_rcnn_end_to_end(tiny_dataset, tmp_path):
    model = tiny_model()
    model.train()
    results_path = tmp_path / "out" / "coco_results.json"
    metrics = evaluate_model(model, tiny_dataset, batch_size=2, results_path=results_path,
                             progress=False)
    assert model.training and model.return_proposals is False  # restored
    assert set(metrics) == {"bbox", "segm", "proposals", "images", "detections"}
    assert list(metrics["bbox"]) == list(COCO_STAT_NAMES) == list(metrics["segm"])
    assert list(metrics["proposals"]) == RECALL_NAMES
    check_metric_values(metrics, ("bbox", "segm", "proposals"))
    assert metrics["images"] == 3
    assert math.isnan(metrics["bbox"]["AP_large"])  # no object is over 96² in 64-pixel images
    # the files: results as COCO dicts with RLEs, metrics next to them (NaN → null)
    assert metrics_path_for(results_path) == tmp_path / "out" / "coco_results_metrics.json"
    results = json.loads(results_path.read_text())
    assert len(results) == metrics["detections"] > 0
    assert {r["image_id"] for r in results} <= {1, 2, 3}
    assert {r["category_id"] for r in results} <= {2, 5, 11}
    assert all(isinstance(r["segmentation"]["counts"], str) for r in results)

    def no_nan(token):
        raise AssertionError(f"{token} in a strict JSON file")

    saved = json.loads(metrics_path_for(results_path).read_text(), parse_constant=no_nan)
    assert saved["bbox"]["AP_large"] is None
    assert saved["proposals"]["AR_l@1000"] is None  # no large objects
    assert saved["proposals"]["AR@1000"] == pytest.approx(metrics["proposals"]["AR@1000"])
    assert saved["images"] == 3 and saved["detections"] == metrics["detections"]
    assert [p.name for p in results_path.parent.iterdir()] and not [
        p for p in results_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_evaluate_model_faster_rcnn_skips_segm(tiny_dataset):
    metrics = evaluate_model(tiny_model(masks=False), tiny_dataset, max_images=2, progress=False)
    assert set(metrics) == {"bbox", "proposals", "images", "detections"}
    assert metrics["images"] == 2
    check_metric_values(metrics, ("bbox", "proposals"))


class GroundTruthModel(nn.Module):
    """Answers each image (recognised by its size) with its ground truth."""

    def __init__(self, dataset):
        super().__init__()
        self.return_proposals = False
        by_id = dict(zip(dataset.ids, ground_truth_outputs(dataset.coco, dataset.ids)))
        self.answers = {TINY_SIZES[i]: output for i, output in by_id.items()}
        self.calls = []

    def forward(self, images):
        self.calls.append((len(images), self.training, self.return_proposals,
                           minifpn.is_grad_enabled()))
        outputs = []
        for image in images:
            assert image.shape[0] == 3 and image.dtype == np.float32 and image.max() <= 1.0
            output = dict(self.answers[tuple(image.shape[1:])])
            if self.return_proposals:
                output["proposals"] = output["boxes"]
            outputs.append(output)
        return outputs


def test_evaluate_model_ground_truth_model_is_perfect(tiny_dataset):
    model = GroundTruthModel(tiny_dataset)
    metrics = evaluate_model(model, tiny_dataset, batch_size=2, progress=False)
    assert model.calls == [(2, False, True, False), (1, False, True, False)]
    for section in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75", "AR@100"):
            assert metrics[section][name] == pytest.approx(1.0), (section, name)
    for name in ("AR@100", "AR@1000", "AR_s@1000", "AR_m@1000"):
        assert metrics["proposals"][name] == pytest.approx(1.0)
    assert math.isnan(metrics["proposals"]["AR_l@1000"])
    # the first image only: its objects, nothing else counted
    one = evaluate_model(model, tiny_dataset, max_images=1, progress=False)
    assert one["images"] == 1 and one["detections"] == 2
    assert one["bbox"]["AP"] == pytest.approx(1.0)


def test_evaluation_on_a_category_subset_counts_only_those_objects(tiny_dataset):
    # tiny_dataset's dogs (id 5): annotation 2 (image 1) and 4 (image 3); three other objects.
    dogs = CocoDetection(tiny_dataset.annotation_file.parent.parent, "val", verbose=False,
                         categories=["dog"])
    model = GroundTruthModel(dogs)  # each image's dogs, label 1, as detections and proposals
    fake = {"boxes": np.array([[0, 0, 30, 30]], np.float32), "labels": np.array([1]),
            "scores": np.array([2.0], np.float32), "masks": np.ones((1, 1, 64, 48), np.float32)}
    model.answers[TINY_SIZES[2]] = fake  # a dog where there is none, ranked first
    metrics = evaluate_model(model, dogs, progress=False)
    # reference: pycocotools on the full ground truth, told the category (params.catIds)
    outputs = [model.answers[TINY_SIZES[image_id]] for image_id in dogs.ids]
    results = detections_to_coco(outputs, dogs.ids, {1: 5})
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(tiny_dataset.coco, tiny_dataset.coco.loadRes(
            [{k: v for k, v in r.items() if k != "segmentation"} for r in results]), "bbox")
        evaluator.params.catIds = [5]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    expected = dict(zip(COCO_STAT_NAMES, evaluator.stats))
    for name in COCO_STAT_NAMES:
        assert_metric(metrics["bbox"][name], None if expected[name] < 0 else expected[name])
    assert metrics["bbox"]["AP"] < 1.0  # the false positive counts against the dogs
    # proposals: both dogs found → recall 1 (by hand); on every object it would be 2/5
    assert metrics["proposals"]["AR@100"] == pytest.approx(1.0)
    same = {image_id: output["boxes"] for image_id, output in zip(dogs.ids, outputs)}
    assert proposal_recall(tiny_dataset.coco, same)["AR@100"] == pytest.approx(2 / 5)


def test_evaluate_model_argument_errors(tiny_dataset):
    model = GroundTruthModel(tiny_dataset)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_model(model, tiny_dataset, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="max_images"):
        evaluate_model(model, tiny_dataset, max_images=0, progress=False)
    with pytest.raises(ValueError, match="unknown device"):
        evaluate_model(model, tiny_dataset, device="tpu", progress=False)


# ---------------------------------------------------------------------------
# format_metrics_table
# ---------------------------------------------------------------------------
def test_format_metrics_table():
    bbox = dict.fromkeys(COCO_STAT_NAMES, 0.0) | {"AP": 0.4321, "AP50": 0.6543, "AP75": 0.1,
                                                 "AP_small": math.nan, "AP_large": 0.777}
    segm = dict.fromkeys(COCO_STAT_NAMES, 0.0) | {"AP": 0.3333, "AP_medium": 0.0456}
    proposals = {"AR@100": 0.25, "AR@1000": 0.5, "AR_s@1000": 0.125, "AR_m@1000": 0.625,
                 "AR_l@1000": None}
    table = format_metrics_table({"bbox": bbox, "segm": segm, "proposals": proposals,
                                  "images": 12, "detections": 345})
    lines = table.splitlines()
    assert "12 images" in lines[0] and "345 detections" in lines[0]
    header = next(line for line in lines if "bbox" in line)
    assert header.index("bbox") < header.index("segm")
    row = {line.split()[0]: line.split()[1:] for line in lines if line and line.split()}
    assert row["AP"] == ["0.432", "0.333"] and row["AP50"] == ["0.654", "0.000"]
    assert row["AP75"] == ["0.100", "0.000"] and row["AP_s"] == ["n/a", "0.000"]
    assert row["AP_m"] == ["0.000", "0.046"] and row["AP_l"] == ["0.777", "0.000"]
    assert row["AR@1000"] == ["0.500"] and row["AR_s@1000"] == ["0.125"]
    assert row["AR_m@1000"] == ["0.625"] and row["AR_l@1000"] == ["n/a"]
    assert "proposal" in table
    assert len({len(line) for line in lines if line.startswith("AP")}) == 1  # fixed width
    bbox_only = format_metrics_table({"bbox": bbox})
    assert "segm" not in bbox_only and "proposal" not in bbox_only and "0.432" in bbox_only
