"""The whole pipeline on the ``device`` fixture gives the CPU's numbers.

On ``standin`` (every CI run) and on a real GPU, each stage runs with its
arrays on device "cuda" and is compared with the same stage run on the CPU
from the same seeds: the RPN (proposals, losses, gradients), the poolers, the
RoI heads through a Mask R-CNN training step and an evaluation pass, the
training engine (``train()`` for a few iterations, checkpoints included),
COCO evaluation, prediction pictures, gradient statistics and weight loading.

The reference is the CPU run of the same code, so these tests say "the
device path is the same computation"; what each stage computes is checked
against independent references in its own test file. Models run in float64
so that a real GPU's different summation order cannot flip a top-k, a match
or an NMS decision.
"""

import json

import numpy as np
import pytest

import minifpn
from minifpn import backend, optim
from minifpn.autograd import raw
from minifpn.data.shapes import generate_shapes
from minifpn.engine import train as train_module
from minifpn.engine.checkpoint import load_model
from minifpn.engine.config import TrainConfig
from minifpn.engine.evaluate import evaluate_model
from minifpn.engine.predict import predict_images
from minifpn.ops import MultiScaleRoIAlign
from minifpn.serialization import load, save
from minifpn.tools.gradstats import gradient_norms
from minifpn.weights import load_torchvision
from tests.test_detector import tiny_mask_rcnn, two_images
from tests.test_train import MICRO

RTOL, ATOL = 1e-9, 1e-10  # float64 on both sides


def host(x):
    return backend.to_numpy(x.data if isinstance(x, minifpn.Tensor) else x)


def assert_same(on_device, on_cpu, what=""):
    """Nested dicts / lists / arrays / Tensors from the device equal the CPU's."""
    if isinstance(on_cpu, dict):
        assert on_device.keys() == on_cpu.keys(), what
        for key in on_cpu:
            assert_same(on_device[key], on_cpu[key], f"{what}[{key!r}]")
    elif isinstance(on_cpu, (list, tuple)):
        assert len(on_device) == len(on_cpu), what
        for i, (a, b) in enumerate(zip(on_device, on_cpu)):
            assert_same(a, b, f"{what}[{i}]")
    else:
        a, b = host(on_device), host(on_cpu)
        assert not isinstance(a, np.ndarray) or isinstance(b, np.ndarray), what
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=what)


def device_arrays(tree, device):
    """Every array of images / targets moved to ``device`` (Tensors for images)."""
    if isinstance(tree, dict):
        return {k: device_arrays(v, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [device_arrays(v, device) for v in tree]
    return backend.to_device(tree, device)


def mask_rcnn(device):
    """The tests' tiny Mask R-CNN (test_detector's), in float64 on ``device``."""
    return tiny_mask_rcnn().to(device, np.float64)


def float64_batch():
    images, targets = two_images()
    return [im.astype(np.float64) for im in images], targets


def on_both(device, step):
    """``step(model, images, targets)`` run on the CPU and on ``device``, from the same seeds."""
    results = []
    for where in ("cpu", device):
        model = mask_rcnn(where)
        images, targets = float64_batch()
        minifpn.manual_seed(5)
        results.append(step(model, device_arrays(images, where), device_arrays(targets, where)))
    return results[1], results[0]


def test_rpn_proposals_losses_and_gradients(accelerator):
    def step(model, images, targets):
        model.train()
        image_list, targets = model.transform(images, targets)
        features = model.backbone(image_list.tensors)
        proposals, losses = model.rpn(image_list, features, targets)
        sum(losses.values()).backward()
        return {"proposals": proposals, "losses": losses,
                "grads": {n: p.grad for n, p in model.rpn.named_parameters()}}

    on_device, on_cpu = on_both(accelerator, step)
    assert len(on_cpu["proposals"][0]) > 0
    assert_same(on_device, on_cpu)


def test_multiscale_roi_align_forward_and_backward(accelerator):
    def pooled(where):
        features = {f"P{k}": minifpn.Tensor(
            np.random.default_rng(k).standard_normal((2, 3, 64 >> (k - 2), 48 >> (k - 2))),
            requires_grad=True, device=where) for k in (2, 3, 4, 5)}
        boxes = [backend.to_device(b, where) for b in (
            np.array([[4.0, 4, 60, 50], [10, 20, 30, 28], [0, 0, 250, 190]]),
            np.array([[100.0, 50, 180, 120], [1, 1, 9, 9]]))]
        out = MultiScaleRoIAlign(output_size=7, sampling_ratio=2)(features, boxes, (256, 192))
        (out * out).sum().backward()
        return out, [f.grad for f in features.values()]

    assert_same(pooled(accelerator), pooled("cpu"))


def test_mask_rcnn_training_step_and_sgd_update(accelerator):
    def step(model, images, targets):
        model.train()
        losses = model(images, targets)
        sgd = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        sgd.zero_grad()
        sum(losses.values()).backward()
        sgd.step()
        return {"losses": losses, "weights": {n: p for n, p in model.named_parameters()}}

    on_device, on_cpu = on_both(accelerator, step)
    assert set(on_cpu["losses"]) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                                     "loss_box_reg", "loss_mask"}
    assert_same(on_device, on_cpu)


def test_mask_rcnn_detections(accelerator):
    def step(model, images, targets):
        model.eval()
        with minifpn.no_grad():
            return model(images)

    on_device, on_cpu = on_both(accelerator, step)
    assert len(on_cpu[0]["boxes"]) > 0
    assert_same(on_device, on_cpu)
    assert backend.device_of(on_device[0]["boxes"]) == "cuda"  # results stay on the device


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    return generate_shapes(root, num_train=6, num_val=3, seed=0, image_size=64, min_size=8,
                           max_size=40, max_objects=3, progress=False)


def test_train_evaluate_and_predict(accelerator, shapes, tmp_path):
    runs = {}
    for where in ("cpu", accelerator):
        out = tmp_path / f"run-{where}"
        config = TrainConfig(data=str(shapes), out=str(out), iters=3, batch_size=2,
                             warmup_iters=2, checkpoint_every=2, max_eval_images=2,
                             model_overrides=MICRO, device=where)
        train_module.train(config, progress=False)
        model, _, meta = load_model(out, device=where)
        pictures = predict_images(model, [shapes / "val"], meta["class_names"], out / "pictures",
                                  device=where, score_threshold=0.0, progress=False)
        runs[where] = {
            "weights": load(out / "checkpoint.npz")["model"],
            "metrics": [json.loads(line) for line in open(out / "metrics.jsonl")],
            "evaluation": json.loads((out / "metrics.json").read_text()),
            "pictures": [p.read_bytes() for p in pictures],
        }
    on_device, on_cpu = runs[accelerator], runs["cpu"]
    assert on_device["weights"].keys() == on_cpu["weights"].keys()
    for key in on_cpu["weights"]:  # float32 training: the same arithmetic, to round-off
        np.testing.assert_allclose(on_device["weights"][key], on_cpu["weights"][key],
                                   rtol=1e-4, atol=1e-6, err_msg=key)
    for a, b in zip(on_device["metrics"], on_cpu["metrics"]):
        assert a.keys() == b.keys()
        for key in a:
            if key != "time":
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert_close_numbers(on_device["evaluation"], on_cpu["evaluation"])
    assert len(on_device["pictures"]) == len(on_cpu["pictures"]) == 3


def test_evaluate_model_on_the_device(accelerator, shapes):
    from minifpn.data.coco import CocoDetection
    from minifpn.engine.config import build_model

    dataset = CocoDetection(shapes, "val")
    metrics = {}
    for where in ("cpu", accelerator):
        minifpn.manual_seed(0)
        model = build_model("tiny", num_classes=4, overrides=MICRO).to(where)
        metrics[where] = evaluate_model(model, dataset, device=where, batch_size=2,
                                        progress=False)
    assert metrics["cpu"]["detections"] > 0
    assert_close_numbers(metrics[accelerator], metrics["cpu"])


def assert_close_numbers(on_device, on_cpu, what=""):
    """Nested dicts of numbers agree (NaN where the CPU has NaN: undefined metrics)."""
    if isinstance(on_cpu, dict):
        assert on_device.keys() == on_cpu.keys(), what
        for key in on_cpu:
            assert_close_numbers(on_device[key], on_cpu[key], f"{what}[{key!r}]")
    elif on_cpu is None or (isinstance(on_cpu, float) and np.isnan(on_cpu)):
        assert on_device is None or np.isnan(on_device), what
    else:
        assert on_device == pytest.approx(on_cpu, rel=1e-4, abs=1e-6), what


def test_gradient_norms_on_the_device(accelerator):
    def step(model, images, targets):
        model.train()
        sum(model(images, targets).values()).backward()
        return dict(gradient_norms(model, depth=2))

    on_device, on_cpu = on_both(accelerator, step)
    assert on_device.keys() == on_cpu.keys()
    for key in on_cpu:
        assert on_device[key] == pytest.approx(on_cpu[key], rel=1e-9), key


def test_torchvision_weights_load_onto_the_device(accelerator, tmp_path):
    source = mask_rcnn("cpu")
    state = {k: host(v) for k, v in source.state_dict().items()}
    save(state, tmp_path / "w.npz")
    target = mask_rcnn(accelerator)
    for p in target.parameters():  # scramble, so loading must do the work
        p.data *= 0
    report = load_torchvision(target, load(tmp_path / "w.npz"), strict=True)
    assert not report.missing
    for name, value in target.state_dict().items():
        assert backend.device_of(raw(value)) == "cuda", name
        np.testing.assert_array_equal(host(value), state[name], err_msg=name)
