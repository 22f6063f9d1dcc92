"""Independent references for box geometry and NMS: the definitions, one box pair at a time.

Shared by the box, RPN and RoI-head tests, so each compares the vectorised
code with the same plain-Python reading of the definitions.
"""


def naive_intersection(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih


def naive_area(a):
    return (a[2] - a[0]) * (a[3] - a[1])


def naive_iou(a, b):
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 for two empty boxes."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    inter = naive_intersection(a, b)
    union = naive_area(a) + naive_area(b) - inter
    return inter / union if union > 0 else 0.0


def naive_ioa(a, b):
    """Intersection over the area of ``a``."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    area = naive_area(a)
    return naive_intersection(a, b) / area if area > 0 else 0.0


def naive_nms(boxes, scores, threshold):
    """The sequential definition: best first, keep unless IoU > t with a kept box."""
    order = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))  # stable for ties
    keep = []
    for i in order:
        if all(naive_iou(boxes[i], boxes[k]) <= threshold for k in keep):
            keep.append(i)
    return keep
