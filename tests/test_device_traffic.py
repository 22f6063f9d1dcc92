"""Host↔device traffic stays at the edges: a fixed, small number of copies per iteration.

On a GPU every device→host copy makes the host wait for the device, and
every host→device copy of a small array costs a driver call; both must not
grow with the number of anchors, boxes or images. The CuPy stand-in counts
them (``tests/cupy_standin.py``), so this holds on every CI run.

One training iteration of the ``tiny`` preset, as the training engine runs
it: the batch copied over (``to_device_many``), the forward pass with its
losses, the logged numbers copied back in one go, backward, gradient
clipping, the SGD step. The inherent synchronisations, each commented where
it happens: RPN NMS (suppression bits out, kept rows in), the two samplers'
sample sizes, the two poolers' per-level counts, the mask targets' adaptive
sampling grids, the logged losses and the gradient norm.
"""

import numpy as np
import pytest

import minifpn
from minifpn import backend, optim
from minifpn.engine.config import build_model
from tests import cupy_standin

#: Bounds for one training iteration (data in, step, numbers out) and one
#: inference call: what they are now (benchmarks/README.md), so that any new
#: copy or sync shows up here. Training: 4 copies in for the batch (one per
#: dtype), RPN NMS out and back, sampler ×2, pooler ×2 and the mask targets'
#: grids out, the logged numbers and the gradient norm out. Inference: RPN
#: NMS out and back, the box pooler, the score filter, the detections' NMS
#: out and back, the mask pooler.
TRAIN_BOUND = {"d2h": 2, "h2d": 5, "syncs": 8}
EVAL_BOUND = {"d2h": 2, "h2d": 2, "syncs": 5}


@pytest.fixture
def standin():
    previous = backend.set_cuda_module(cupy_standin, cupy_standin.cupyx)
    try:
        yield
    finally:
        backend.set_cuda_module(*previous)


def batch(num_images, num_boxes, seed=0):
    """Host images (3, 256, 256) with ``num_boxes`` boxes, masks and labels each."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(num_images):
        images.append(rng.random((3, 256, 256), dtype=np.float32))
        x1, y1 = rng.integers(0, 180, (2, num_boxes))
        w, h = rng.integers(8, 70, (2, num_boxes))
        boxes = np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)
        masks = np.zeros((num_boxes, 256, 256), np.uint8)
        for k, (a, b, c, d) in enumerate(boxes.astype(int)):  # test data, not a hot path
            masks[k, b:d, a:c] = 1
        targets.append({"boxes": boxes, "labels": rng.integers(1, 4, num_boxes),
                        "iscrowd": np.zeros(num_boxes, bool), "masks": masks})
    return images, targets


def training_iteration(model, optimizer, images, targets):
    """What the engine does per iteration, on device "cuda"."""
    keys = [list(t) for t in targets]
    arrays = images + [t[k] for t, names in zip(targets, keys) for k in names]
    moved = iter(backend.to_device_many(arrays, "cuda"))
    images = [minifpn.Tensor(next(moved)) for _ in images]
    targets = [{k: next(moved) for k in names} for names in keys]
    losses = model(images, targets)
    total = sum(losses.values())
    xp = backend.get_array_module(total.data)
    xp.stack([total.data] + [loss.data for loss in losses.values()]).tolist()
    optimizer.zero_grad()
    total.backward()
    optim.clip_grad_norm_(model.parameters(), 10.0)
    optimizer.step()


def counts(traffic):
    return {"d2h": traffic.d2h, "h2d": traffic.h2d, "syncs": traffic.syncs}


def explain(traffic):
    return "\n".join(f"{kind:5s} {what} at {where}" for kind, what, where in traffic.log)


def tiny_model():
    minifpn.manual_seed(0)
    # Score threshold 0: an untrained model still sends detections to the mask head.
    model = build_model("tiny", num_classes=4, overrides={"box_score_thresh": 0.0}).to("cuda")
    return model, optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def test_a_training_iteration_has_the_same_small_traffic_for_any_batch(standin):
    model, optimizer = tiny_model()
    model.train()
    seen = {}
    for num_images, num_boxes in ((1, 2), (2, 5), (3, 12)):
        images, targets = batch(num_images, num_boxes)
        training_iteration(model, optimizer, images, targets)  # caches warm (anchors, resize)
        images, targets = batch(num_images, num_boxes, seed=1)
        with cupy_standin.counting() as traffic:
            training_iteration(model, optimizer, images, targets)
        got = counts(traffic)
        for kind, bound in TRAIN_BOUND.items():
            assert got[kind] <= bound, f"{num_images} images: {got}\n{explain(traffic)}"
        seen[(num_images, num_boxes)] = got
    assert len({tuple(c.values()) for c in seen.values()}) == 1, seen  # independent of the batch


def test_inference_has_the_same_small_traffic_for_any_batch(standin):
    model, _ = tiny_model()
    model.eval()
    seen = {}
    for num_images in (1, 3):
        images = [backend.to_device(im, "cuda") for im in batch(num_images, 1)[0]]
        with minifpn.no_grad():
            model(images)  # caches warm
            with cupy_standin.counting() as traffic:
                model(images)
        got = counts(traffic)
        for kind, bound in EVAL_BOUND.items():
            assert got[kind] <= bound, f"{num_images} images: {got}\n{explain(traffic)}"
        seen[num_images] = got
    assert seen[1] == seen[3], seen
