"""Evaluation with pycocotools' COCOeval: detections, masks and proposals.

Three kinds of numbers, all computed by pycocotools' ``COCOeval`` (so they are
the official COCO metrics, comparable with published results):

* **bbox** and **segm** — the twelve numbers of COCOeval's summary, named
  after its summary lines (:data:`COCO_STAT_NAMES`): ``AP`` (IoU 0.50:0.95),
  ``AP50``, ``AP75``, ``AP_small`` / ``AP_medium`` / ``AP_large``, ``AR@1`` /
  ``AR@10`` / ``AR@100`` and ``AR_small`` / ``AR_medium`` / ``AR_large``.
  Masks are scored by mask IoU, and their small / medium / large split uses
  the *mask* area (as Detectron2 does: the ``bbox`` field is dropped for segm).
* **proposals** — class-agnostic proposal recall (the FPN paper's Table 1):
  how many ground-truth objects are covered by at least one of an image's
  top-k proposals, averaged over IoU thresholds 0.50:0.05:0.95 ("AR"), for
  k = 100 and 1000, and for small (< 32²), medium and large (> 96²) objects
  at k = 1000. Crowd regions are ignored, as COCOeval always does.

**A category subset** (``minifpn train --categories person``): the dataset
is loaded with ``CocoDetection(..., categories=…)``, whose ``coco`` index holds
only those categories and their objects (every image kept). So COCOeval's
``params.catIds`` — by default the index's categories — is exactly those, and
the class-agnostic proposal recall counts only their objects: an object of
another category is not in the ground truth, so a proposal on it is neither
a hit nor a miss.

**Undefined numbers are NaN.** COCOeval reports −1 where a number has no
ground truth to be measured against (no small objects among the evaluated
images, say); minifpn turns that into ``float("nan")`` — never 0, which would
read as "the model fails on small objects" — and writes it as ``null`` in
JSON files. Where ground truth exists but the model found nothing (an image
without detections, or no detections at all) the numbers are honest zeros.

Typical use::

    metrics = evaluate_model(model, CocoDetection(root, "val"), results_path="coco_results.json")
    print(format_metrics_table(metrics))
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from minifpn import backend
from minifpn.autograd import no_grad, raw
from minifpn.engine.distributed import Communicator
from minifpn.engine.inference import check_model_device, inference_mode
from minifpn.models.transform import to_chw_float
from minifpn.serialization import write_json_atomic

#: (name, area range, max proposals) of each reported number; COCO's area ranges.
RECALL_METRICS = (
    ("AR@100", "all", 100),
    ("AR@1000", "all", 1000),
    ("AR_s@1000", "small", 1000),
    ("AR_m@1000", "medium", 1000),
    ("AR_l@1000", "large", 1000),
)

#: Names of ``COCOeval.stats``' twelve numbers, in order (its summary lines:
#: AP at IoU 0.50:0.95 / 0.50 / 0.75 and by area at 100 detections; AR at
#: 1 / 10 / 100 detections and by area at 100).
COCO_STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR@1", "AR@10", "AR@100", "AR_small", "AR_medium", "AR_large",
)

IOU_TYPES = ("bbox", "segm")


# ---------------------------------------------------------------------------
# pycocotools plumbing
# ---------------------------------------------------------------------------
def _quiet():
    """Swallow pycocotools' narration ("Loading and preparing results...", …)."""
    return contextlib.redirect_stdout(io.StringIO())


def _nan_if_undefined(value) -> float:
    """COCOeval's −1 ("no ground truth for this number") → NaN; other values as floats."""
    value = float(value)
    return math.nan if value < 0 else value


def _load_results(coco_gt, results: list):
    """A COCO object of ``results`` — also for an empty list, which ``loadRes`` rejects.

    The dicts are copied: ``loadRes`` adds ``id``, ``area``, ``iscrowd`` (and
    polygon ``segmentation`` for box results) to each one it is given.
    """
    with _quiet():
        if results:
            return coco_gt.loadRes([dict(r) for r in results])
        coco_dt = COCO()
        coco_dt.dataset = {
            "images": list(coco_gt.dataset.get("images", [])),
            "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
            "annotations": [],
        }
        coco_dt.createIndex()
    return coco_dt


def _check_results(coco_gt, results: list) -> None:
    """Clear errors for results COCOeval would reject with an assert, or silently ignore."""
    known_images = set(coco_gt.getImgIds())
    unknown = sorted({r["image_id"] for r in results} - known_images)
    if unknown:
        raise ValueError(
            f"results name image ids the ground truth does not have: {unknown[:5]}"
            + (" …" if len(unknown) > 5 else "")
        )
    known_cats = set(coco_gt.getCatIds())
    unknown = sorted({r["category_id"] for r in results} - known_cats)
    if unknown:
        raise ValueError(
            f"results use category ids the ground truth does not have: {unknown[:5]}"
            + (" …" if len(unknown) > 5 else "")
            + " — map the model's contiguous labels back with dataset.category_id(label)"
        )


# ---------------------------------------------------------------------------
# Detections → COCO results, and COCOeval
# ---------------------------------------------------------------------------
def _category_lookup(category_id_of):
    if callable(category_id_of):
        return category_id_of
    return category_id_of.__getitem__  # a dict or a sequence indexed by label


def detections_to_coco(outputs, image_ids, category_id_of, mask_threshold: float = 0.5) -> list:
    """Detector outputs → COCO result dicts, ready for ``loadRes`` and for ``json.dump``.

    Args:
        outputs: the eval-mode outputs of a detector, one dict per image with
            ``"boxes"`` ``(D, 4)`` x1y1x2y2 in original pixels, ``"labels"``
            ``(D,)`` contiguous 1..K, ``"scores"`` ``(D,)`` and optionally
            ``"masks"`` ``(D, 1, H, W)`` (or ``(D, H, W)``) probabilities.
            NumPy or CuPy arrays, or Tensors.
        image_ids: the COCO image id of each output.
        category_id_of: contiguous label → COCO category id, e.g.
            ``dataset.category_id``; a dict or a list indexed by label works too.
        mask_threshold: a mask pixel belongs to the object where its
            probability is above this (0.5).

    Returns:
        A list with one dict per detection: ``image_id``, ``category_id``,
        ``bbox`` ``[x, y, w, h]`` (floats), ``score`` and, when the outputs have
        masks, ``segmentation``: a compressed RLE whose ``counts`` is a str.
    """
    outputs, image_ids = list(outputs), list(image_ids)
    if len(outputs) != len(image_ids):
        raise ValueError(f"got {len(outputs)} outputs but {len(image_ids)} image ids")
    category_of = _category_lookup(category_id_of)
    results = []
    for output, image_id in zip(outputs, image_ids):
        if "labels" not in output or "scores" not in output:
            raise ValueError(
                "detections need 'boxes', 'labels' and 'scores' (these outputs look like a "
                "proposal-only model's: use proposals_to_coco / proposal_recall)"
            )
        boxes = backend.to_numpy(raw(output["boxes"])).astype(np.float64).reshape(-1, 4)
        scores = backend.to_numpy(raw(output["scores"])).astype(np.float64).reshape(-1)
        labels = backend.to_numpy(raw(output["labels"])).astype(np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and "
                             f"{len(labels)} labels")
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ValueError(f"image {image_id}: the model produced non-finite boxes or scores "
                             "(did training diverge?)")
        if (labels < 1).any():
            raise ValueError(f"image {image_id}: label {int(labels.min())} — detections' labels "
                             "are contiguous 1..K (0 is background)")
        categories = {int(lab): int(category_of(int(lab))) for lab in np.unique(labels)}
        rles = None
        if output.get("masks") is not None:
            rles = _mask_rles(output["masks"], len(boxes), image_id, mask_threshold)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        for d in range(len(boxes)):
            result = {"image_id": int(image_id), "category_id": categories[int(labels[d])],
                      "bbox": xywh[d].tolist(), "score": float(scores[d])}
            if rles is not None:
                result["segmentation"] = rles[d]
            results.append(result)
    return results


def _mask_rles(masks, count: int, image_id, threshold: float) -> list:
    """One image's ``count`` mask probabilities → COCO's compressed RLEs (``counts`` a str)."""
    masks = raw(masks)
    if masks.ndim == 4:
        masks = masks[:, 0]
    if len(masks) != count:
        raise ValueError(f"image {image_id}: {len(masks)} masks for {count} boxes")
    # threshold where the masks live (a GPU sends back a quarter of the bytes)
    binary = backend.to_numpy(masks > threshold).astype(np.uint8)
    if not len(binary):
        return []
    rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def coco_evaluate(coco_gt, results: list, iou_types=IOU_TYPES, image_ids=None,
                  verbose: bool = False) -> dict:
    """COCOeval's twelve summary numbers for each IoU type.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` with the ground truth (e.g.
            ``dataset.coco``).
        results: COCO result dicts (:func:`detections_to_coco`); may be empty.
            ``"segm"`` needs a ``segmentation`` in every result.
        iou_types: ``"bbox"`` and/or ``"segm"``.
        image_ids: the images to evaluate (default: every image of
            ``coco_gt``). Objects in these images that no result finds count as
            missed; results for other images are ignored.
        verbose: also print COCOeval's own summary table (otherwise every
            line pycocotools prints is swallowed).

    Returns:
        ``{"bbox": {"AP": …, "AP50": …, …, "AR_large": …}, "segm": {…}}`` — the
        names of :data:`COCO_STAT_NAMES`, values in [0, 1], or NaN where there
        is no ground truth to measure against (COCOeval's −1; see the module
        docstring). Empty ``results`` give zeros (not an error).
    """
    if isinstance(iou_types, str):
        iou_types = (iou_types,)
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"unknown iou type {iou_type!r}: use 'bbox' or 'segm'")
    results = list(results)
    _check_results(coco_gt, results)
    if image_ids is None:
        image_ids = coco_gt.getImgIds()
    image_ids = sorted({int(i) for i in image_ids})
    if not image_ids:
        raise ValueError("no images to evaluate")
    unknown = sorted(set(image_ids) - set(coco_gt.getImgIds()))
    if unknown:
        raise ValueError(f"image ids not in the ground truth: {unknown[:5]}")

    return {iou_type: _summary(coco_gt, results, iou_type, image_ids, verbose)
            for iou_type in iou_types}


def _summary(coco_gt, results: list, iou_type: str, image_ids: list, verbose: bool) -> dict:
    """COCOeval's twelve numbers for one IoU type (see :func:`coco_evaluate`)."""
    if iou_type == "segm":
        if any("segmentation" not in r for r in results):
            raise ValueError("'segm' evaluation needs a 'segmentation' in every result "
                             "(a model without masks: evaluate iou_types=('bbox',))")
        # the mask's own area decides small / medium / large (loadRes would use the box's)
        typed = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    else:
        typed = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    coco_dt = _load_results(coco_gt, typed)
    summary = io.StringIO()
    with _quiet():
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        with contextlib.redirect_stdout(summary):
            evaluator.summarize()
    if verbose:
        print(f"COCOeval {iou_type}:\n{summary.getvalue()}", end="")
    return {name: _nan_if_undefined(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}


# ---------------------------------------------------------------------------
# Proposals
# ---------------------------------------------------------------------------
def proposals_to_coco(proposals: dict, scores: dict | None = None, category_id: int = 1) -> list:
    """``{image_id: (P, 4) x1y1x2y2}`` → COCO result dicts (xywh boxes, one category).

    Proposals are taken best first; without ``scores`` they are scored by rank.
    ``category_id`` must be one of the ground truth's ids even for
    class-agnostic evaluation (COCOeval drops results of unknown categories).
    """
    results = []
    for image_id, boxes in proposals.items():
        boxes = backend.to_numpy(boxes).astype(np.float64).reshape(-1, 4)
        s = np.linspace(1.0, 0.0, len(boxes), endpoint=False) if scores is None else (
            backend.to_numpy(scores[image_id]).astype(np.float64))
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        results += [
            {"image_id": int(image_id), "category_id": category_id, "bbox": b.tolist(),
             "score": float(v)}
            for b, v in zip(xywh, s)
        ]
    return results


def proposal_recall(coco_gt, proposals: dict, scores: dict | None = None) -> dict:
    """Class-agnostic average recall of proposals, as in the FPN paper.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` with the ground truth.
        proposals: ``{image_id: (P, 4)}`` boxes in original-image pixels, best
            first. Exactly the images given are evaluated: pass an empty
            ``(0, 4)`` array for an image without proposals, so that its
            objects count as missed.
        scores: optional ``{image_id: (P,)}``; default: by rank.

    Returns:
        ``{"AR@100": …, "AR@1000": …, "AR_s@1000": …, "AR_m@1000": …, "AR_l@1000": …}``.
        Images without proposals count as recalling nothing; an empty
        ``proposals`` dict gives zeros (not an error). A number without
        ground truth to measure (no small objects in these images, say) is NaN.
    """
    if not proposals:
        return {name: 0.0 for name, _, _ in RECALL_METRICS}
    # any category of the ground truth will do (class-agnostic), but it must be one of them
    category_id = min(coco_gt.getCatIds(), default=1)
    coco_dt = _load_results(coco_gt, proposals_to_coco(proposals, scores, category_id))
    with _quiet():  # pycocotools narrates every step
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted(int(i) for i in proposals)
        evaluator.params.useCats = 0  # class-agnostic: any proposal may cover any object
        evaluator.params.maxDets = [100, 1000]
        evaluator.evaluate()
        evaluator.accumulate()
    recall = evaluator.eval["recall"]  # (IoU thresholds, categories, areas, maxDets); −1 = none
    area_index = {label: i for i, label in enumerate(evaluator.params.areaRngLbl)}
    metrics = {}
    for name, area, max_dets in RECALL_METRICS:
        r = recall[:, :, area_index[area], evaluator.params.maxDets.index(max_dets)]
        metrics[name] = float(r[r > -1].mean()) if (r > -1).any() else math.nan
    return metrics


# ---------------------------------------------------------------------------
# Whole-model evaluation
# ---------------------------------------------------------------------------
def metrics_path_for(results_path) -> Path:
    """Where :func:`evaluate_model` writes the metrics of ``results_path``.

    ``runs/coco_results.json`` → ``runs/coco_results_metrics.json``.
    """
    results_path = Path(results_path)
    return results_path.with_name(results_path.stem + "_metrics.json")


def _has_mask_head(model) -> bool:
    return bool(getattr(getattr(model, "roi_heads", None), "has_mask", False))


def evaluate_model(model, dataset, max_images: int | None = None, device: str = "cpu",
                   batch_size: int = 1, results_path=None, progress: bool = True,
                   comm=None) -> dict:
    """Run ``model`` over ``dataset`` and compute COCO box / mask AP and proposal AR.

    The model runs in eval mode under ``no_grad`` with ``return_proposals``
    on; its training mode and ``return_proposals`` are restored afterwards, so
    this can be called in the middle of training.

    Args:
        model: a :class:`~minifpn.models.detector.FasterRCNN` (bbox + proposal
            AR), :class:`~minifpn.models.detector.MaskRCNN` (also segm) or a
            proposal-only ``GeneralizedRCNN`` (proposal AR only), already on
            ``device``.
        dataset: a :class:`~minifpn.data.coco.CocoDetection` (or anything with
            ``.coco``, ``.ids``, ``.image(i)`` and ``.category_id(label)``).
        max_images: evaluate only the first this many images (default: all).
        device: ``"cpu"`` or ``"cuda"``: where the images are sent.
        batch_size: images per forward pass.
        results_path: if given, the COCO-format results (one dict per
            detection, with ``segmentation`` RLEs for a mask model) are written
            there as JSON, and the returned metrics next to it, at
            :func:`metrics_path_for` (``<stem>_metrics.json``). Both are
            written atomically.
        progress: show a tqdm progress bar.
        comm: several processes evaluating together
            (:class:`~minifpn.engine.distributed.Communicator`): rank r runs
            the model on images r, r + N, r + 2N, …; rank 0 gathers every
            rank's detections, scores them in one COCOeval and writes the
            files; every rank returns the metrics. Default: this process alone.

    Returns:
        ``{"bbox": {…12 COCOeval numbers…}, "segm": {…} (mask models only),
        "proposals": {"AR@100": …, …}, "images": N, "detections": D}`` — see
        :func:`coco_evaluate` and :func:`proposal_recall`; undefined numbers
        are NaN (``null`` in the JSON file).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    ids = list(dataset.ids)
    count = len(ids) if max_images is None else min(max_images, len(ids))
    if count == 0:
        raise ValueError("the dataset has no images to evaluate")
    device = backend.normalize_device(device)
    check_model_device(model, device)
    comm = Communicator() if comm is None else comm
    run = _run_model(model, dataset, range(comm.rank, count, comm.size), device, batch_size,
                     progress and comm.is_main)
    runs = comm.gather(run)
    if comm.is_main:
        metrics = _score(dataset, ids[:count], _ModelRun.merge(runs), results_path)
    return comm.broadcast(metrics if comm.is_main else None)


def _score(dataset, ids: list, run: _ModelRun, results_path) -> dict:
    """COCOeval (and proposal recall) of a model's run over the images ``ids``."""
    count = len(ids)
    metrics = {}
    if run.detector:
        iou_types = ("bbox", "segm") if run.masks else ("bbox",)
        metrics.update(coco_evaluate(dataset.coco, run.results, iou_types, image_ids=ids))
    if run.proposals:
        metrics["proposals"] = proposal_recall(dataset.coco, run.proposals)
    metrics["images"] = count
    metrics["detections"] = len(run.results)
    if results_path is not None:
        write_json_atomic(results_path, run.results)
        write_json_atomic(metrics_path_for(results_path), metrics)
    return metrics


@dataclass
class _ModelRun:
    """What a model produced over a dataset, in COCO terms."""

    results: list = field(default_factory=list)  # COCO result dicts of the detections
    proposals: dict = field(default_factory=dict)  # image id → (P, 4) proposals, host
    detector: bool = False  # the model gave labelled detections (not proposals only)
    masks: bool = False  # … with masks

    @staticmethod
    def merge(runs: list) -> _ModelRun:
        """One run of the images of all ``runs`` (each rank's share of a dataset)."""
        return _ModelRun([r for run in runs for r in run.results],
                         {k: v for run in runs for k, v in run.proposals.items()},
                         any(run.detector for run in runs), any(run.masks for run in runs))


def _run_model(model, dataset, positions: range, device: str, batch_size: int,
               progress: bool) -> _ModelRun:
    """The model's outputs on the dataset's images at ``positions``, ``batch_size`` at a time."""
    ids = list(dataset.ids)
    run = _ModelRun(masks=_has_mask_head(model))
    with inference_mode(model, return_proposals=True), no_grad(), tqdm(
            total=len(positions), desc="evaluating", unit="img", disable=not progress,
            mininterval=0.5) as bar:
        for start in range(0, len(positions), batch_size):
            indices = positions[start:start + batch_size]
            images = [backend.to_device(to_chw_float(dataset.image(i)), device) for i in indices]
            batch_ids = [ids[i] for i in indices]
            outputs = model(images)
            for image_id, output in zip(batch_ids, outputs):
                if "labels" in output:
                    run.detector = True
                    run.masks = run.masks or output.get("masks") is not None
                boxes = output.get("proposals", None if "labels" in output else output["boxes"])
                if boxes is not None:  # a proposal-only model's boxes are its proposals
                    run.proposals[image_id] = backend.to_numpy(raw(boxes))
            if run.detector:
                run.results += detections_to_coco(outputs, batch_ids, dataset.category_id)
            bar.update(len(batch_ids))
            bar.set_postfix(detections=len(run.results), refresh=False)
    return run


# ---------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------
#: (row label, key) of the detection part of :func:`format_metrics_table`.
TABLE_ROWS = (
    ("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"),
    ("AP_s", "AP_small"), ("AP_m", "AP_medium"), ("AP_l", "AP_large"),
    ("AR@100", "AR@100"),
)


def _cell(value, width: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a".rjust(width)
    return f"{value:.3f}".rjust(width)


def format_metrics_table(metrics: dict) -> str:
    """A fixed-width table of :func:`evaluate_model`'s metrics, for printing.

    Detection rows (AP, AP50, AP75, AP_s, AP_m, AP_l, AR@100) with a column
    for each of ``bbox`` / ``segm`` present, then the class-agnostic proposal
    recall (AR@100, AR@1000, AR_s/m/l@1000). Three decimals (fractions, as
    COCOeval prints them); ``n/a`` marks an undefined number (NaN, or ``None``
    as read back from the metrics JSON's ``null``).
    """
    width, label_width = 8, 12
    lines = []
    if "images" in metrics:
        detections = f", {metrics['detections']} detections" if "detections" in metrics else ""
        lines.append(f"COCO evaluation on {metrics['images']} images{detections}")
    columns = [t for t in IOU_TYPES if metrics.get(t)]
    if columns:
        lines.append("".ljust(label_width) + "".join(c.rjust(width) for c in columns))
        for label, key in TABLE_ROWS:
            lines.append(label.ljust(label_width)
                         + "".join(_cell(metrics[c].get(key), width) for c in columns))
    if metrics.get("proposals"):
        if columns:
            lines.append("")
        lines.append("proposal recall (class-agnostic)")
        for name, _, _ in RECALL_METRICS:
            lines.append(name.ljust(label_width) + _cell(metrics["proposals"].get(name), width))
    if not columns and not metrics.get("proposals"):
        lines.append("(no metrics)")
    return "\n".join(lines)
