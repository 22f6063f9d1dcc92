"""Detection ops, as ``torchvision.ops``: box geometry, box coding and NMS
(:mod:`~minifpn.ops.boxes`), RoIAlign and RoIPool (:mod:`~minifpn.ops.roi_pooling`),
and the multi-scale RoIAlign of FPN with its RoI-to-level rule (:mod:`~minifpn.ops.poolers`).

As in torchvision, the functions are the front door's names::

    from minifpn.ops import nms, roi_align
    keep = nms(boxes, scores, 0.5)
    pooled = roi_align(features, rois, output_size=7, spatial_scale=1 / 16, sampling_ratio=2)

No module here shares a name with a function, so ``minifpn.ops.roi_align`` is
always the function.
"""

from minifpn.ops.boxes import (
    BBOX_XFORM_CLIP,
    BoxCoder,
    batched_nms,
    box_area,
    box_ioa,
    box_iou,
    clip_boxes_to_image,
    nms,
    remove_small_boxes,
)
from minifpn.ops.poolers import MultiScaleRoIAlign, map_rois_to_levels
from minifpn.ops.roi_pooling import convert_boxes_to_roi_format, roi_align, roi_pool

__all__ = [
    "BBOX_XFORM_CLIP",
    "BoxCoder",
    "MultiScaleRoIAlign",
    "batched_nms",
    "box_area",
    "box_ioa",
    "box_iou",
    "clip_boxes_to_image",
    "convert_boxes_to_roi_format",
    "map_rois_to_levels",
    "nms",
    "remove_small_boxes",
    "roi_align",
    "roi_pool",
]
