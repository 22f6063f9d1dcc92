"""Evaluation with pycocotools' COCOeval.

Proposal recall (the FPN paper's Table 1): how many ground-truth objects are
covered by at least one of an image's top-k proposals, averaged over IoU
thresholds 0.50:0.05:0.95 ("AR"), class-agnostic, for k = 100 and 1000, and
for small (< 32²), medium and large (> 96²) objects at k = 1000. Crowd
regions are ignored, as COCOeval always does.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from minifpn import backend

#: (name, area range, max proposals) of each reported number; COCO's area ranges.
RECALL_METRICS = (
    ("AR@100", "all", 100),
    ("AR@1000", "all", 1000),
    ("AR_s@1000", "small", 1000),
    ("AR_m@1000", "medium", 1000),
    ("AR_l@1000", "large", 1000),
)


def proposals_to_coco(proposals: dict, scores: dict | None = None) -> list:
    """``{image_id: (P, 4) x1y1x2y2}`` → COCO result dicts (category 1, xywh boxes).

    Proposals are taken best first; without ``scores`` they are scored by rank.
    """
    results = []
    for image_id, boxes in proposals.items():
        boxes = backend.to_numpy(boxes).astype(np.float64).reshape(-1, 4)
        s = np.linspace(1.0, 0.0, len(boxes), endpoint=False) if scores is None else (
            backend.to_numpy(scores[image_id]).astype(np.float64))
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        results += [
            {"image_id": int(image_id), "category_id": 1, "bbox": b.tolist(), "score": float(v)}
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
        Images without proposals count as recalling nothing; no proposals at
        all gives zeros (not an error).
    """
    from pycocotools.cocoeval import COCOeval

    results = proposals_to_coco(proposals, scores)
    if not results:
        return {name: 0.0 for name, _, _ in RECALL_METRICS}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools narrates every step
        coco_dt = coco_gt.loadRes(results)
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
        metrics[name] = float(r[r > -1].mean()) if (r > -1).any() else 0.0
    return metrics
