"""Detection ops, as ``torchvision.ops``: box geometry, box coding, NMS (and, later,
RoIAlign / RoIPool)."""

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
