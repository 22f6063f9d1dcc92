"""Fine-tuning on other classes, as torchvision's object-detection fine-tuning tutorial.

References are independent of the code under test: the weights every
tensor must hold afterwards are the source checkpoint's (perturbed so that
they differ from any fresh initialisation) or a fresh model's built with the
same seed; the tutorial's own lines are run with minifpn's imports.
"""

import json
import shutil

import numpy as np
import pytest

import minifpn
from minifpn import backend, cli, nn, optim
from minifpn.engine import config as config_module
from minifpn.engine.checkpoint import load_checkpoint
from minifpn.models import (
    FastRCNNPredictor,
    MaskRCNN,
    MaskRCNNPredictor,
    detector_parts,
    maskrcnn_resnet50_fpn,
    resnet_fpn_backbone,
)
from minifpn.weights import PREDICTOR_PREFIXES, load_pretrained

from .test_detector import two_images
from .test_train import MICRO, shapes  # noqa: F401  (the shapes fixture)


def host(value):
    return backend.to_numpy(value.data if isinstance(value, minifpn.Tensor) else value)


def small_maskrcnn(num_classes, seed=0, representation_size=32):
    minifpn.manual_seed(seed)
    backbone = resnet_fpn_backbone("resnet18", width=0.125, out_channels=16)
    return MaskRCNN(backbone, min_size=64, max_size=96, box_score_thresh=0.0,
                    **detector_parts(16, num_classes, representation_size=representation_size,
                                     mask_layers=(8,) * 4, mask_dim_reduced=8))


def state_of(model):
    return {k: host(v).copy() for k, v in model.state_dict().items()}


def perturbed(state, rng):
    """Trained-looking weights: none equal to a fresh initialisation, none far from it."""
    return {k: v + rng.uniform(1e-3, 2e-3, v.shape).astype(v.dtype)
            if v.dtype.kind == "f" else v for k, v in state.items()}


def is_predictor(key):
    return key.startswith(PREDICTOR_PREFIXES)


# ---------------------------------------------------------------------------
# The tutorial's recipe, by hand.
# ---------------------------------------------------------------------------
def test_the_tutorials_predictor_swap_runs_with_minifpn_imports():
    model = small_maskrcnn(num_classes=5)  # "pre-trained" on 5 classes
    before = state_of(model)
    num_classes = 3  # background + circle + square
    # torchvision's tutorial, line for line:
    in_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(in_features, num_classes)
    in_features_mask = model.roi_heads.mask_predictor.conv5_mask.in_channels
    hidden_layer = 8
    model.roi_heads.mask_predictor = MaskRCNNPredictor(in_features_mask, hidden_layer,
                                                       num_classes)
    after = state_of(model)
    assert list(after) == list(before)
    for key in before:
        if is_predictor(key):
            assert after[key].shape[0] in (num_classes, 4 * num_classes, hidden_layer,
                                           in_features_mask), key
        else:
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert after["roi_heads.box_predictor.cls_score.weight"].shape == (3, 32)
    assert after["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape == (3, 8, 1, 1)

    images, targets = two_images()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=0.0005)
    model.train()
    losses = model(images, targets)
    total = sum(losses.values())
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    assert np.isfinite(total.item())
    model.eval()
    with minifpn.no_grad():
        outputs = model(images)
    assert all(set(out["labels"].tolist()) <= {1, 2} for out in outputs)
    assert outputs[0]["masks"].shape[1:] == (1, 80, 100)


# ---------------------------------------------------------------------------
# load_pretrained: predictors replaced when the classes differ, the rest loaded.
# ---------------------------------------------------------------------------
def check_loaded(state, source, fresh, replaced, atol=0.0):
    """Every tensor is the source's, except the replaced predictors: the fresh model's."""
    for key, value in state.items():
        expected = fresh[key] if key in replaced else source[key]
        np.testing.assert_allclose(value, expected, rtol=0, atol=atol, err_msg=key)


def test_torchvision_format_weights_for_other_classes_keep_fresh_predictors(rng):
    source = perturbed(state_of(small_maskrcnn(num_classes=91)), rng)  # torchvision's 91
    model = small_maskrcnn(num_classes=4)
    fresh = state_of(model)
    report = load_pretrained(model, source)
    predictors = [k for k in fresh if is_predictor(k)]
    assert len(predictors) == 8  # cls_score, bbox_pred, conv5_mask, mask_fcn_logits × (w, b)
    assert report.replaced == predictors
    assert report.missing == [] and report.unused == []
    assert len(report.loaded) == len(fresh) - 8
    check_loaded(state_of(model), source, fresh, predictors)
    assert "8 predictor tensors replaced for the new classes" in str(report)


def test_weights_for_the_same_classes_load_completely(rng, tmp_path):
    source = perturbed(state_of(small_maskrcnn(num_classes=4)), rng)
    minifpn.save(source, tmp_path / "weights.npz")
    model = small_maskrcnn(num_classes=4)
    report = load_pretrained(model, tmp_path / "weights.npz")
    assert report.replaced == [] and report.missing == []
    check_loaded(state_of(model), source, {}, [])


def minifpn_checkpoint(state, class_names):
    return {"model": state, "optimizer": {}, "scheduler": {}, "iteration": 10,
            "config": {}, "meta": {"class_names": class_names}}


def test_a_minifpn_checkpoint_replaces_predictors_when_the_names_differ(rng):
    source = perturbed(state_of(small_maskrcnn(num_classes=3)), rng)
    trained_on = ["__background__", "circle", "square"]
    # Same number of classes, other names: the rows mean other things — replaced.
    model = small_maskrcnn(num_classes=3)
    fresh = state_of(model)
    report = load_pretrained(model, minifpn_checkpoint(source, trained_on),
                             class_names=["__background__", "cat", "dog"])
    assert len(report.replaced) == 8
    check_loaded(state_of(model), source, fresh, report.replaced)
    # The same names: everything loads.
    model = small_maskrcnn(num_classes=3)
    report = load_pretrained(model, minifpn_checkpoint(source, trained_on),
                             class_names=trained_on)
    assert report.replaced == []
    check_loaded(state_of(model), source, {}, [])


def test_weights_that_do_not_fit_outside_the_predictors_are_refused(rng):
    source = perturbed(state_of(small_maskrcnn(num_classes=3, representation_size=24)), rng)
    model = small_maskrcnn(num_classes=5)
    fresh = state_of(model)
    with pytest.raises(nn.StateDictError, match="box_head.fc6.weight"):
        load_pretrained(model, source)
    check_loaded(state_of(model), fresh, fresh, [])  # nothing loaded


# ---------------------------------------------------------------------------
# The builders: torchvision's names, converted weights, no downloads.
# ---------------------------------------------------------------------------
def test_maskrcnn_resnet50_fpn_loads_converted_weights_as_torchvision():
    random = maskrcnn_resnet50_fpn()  # no weights: batch norm, everything trainable
    assert isinstance(random.backbone.body.bn1, nn.BatchNorm2d)
    assert all(p.requires_grad for p in random.parameters())
    assert random.roi_heads.box_predictor.cls_score.out_features == 91
    weights = state_of(random)
    model = maskrcnn_resnet50_fpn(weights=weights)
    state = model.state_dict()
    for key, value in weights.items():
        if key in state:  # frozen BN has no num_batches_tracked
            np.testing.assert_array_equal(host(state[key]), value, err_msg=key)
    frozen = [m for m in model.modules() if isinstance(m, nn.FrozenBatchNorm2d)]
    assert frozen and all(m.eps == 0.0 for m in frozen)  # torchvision's COCO_V1 setting
    # trainable_backbone_layers=3: the stem and layer1 frozen, layer2..4 train
    body = model.backbone.body
    assert not body.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    with pytest.raises(ValueError, match="91 classes, not 3"):
        maskrcnn_resnet50_fpn(weights=weights, num_classes=3)


def test_builders_say_where_torchvisions_weights_are():
    with pytest.raises(FileNotFoundError, match="maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth.*"
                                                "minifpn weights convert"):
        maskrcnn_resnet50_fpn(weights="DEFAULT")


# ---------------------------------------------------------------------------
# minifpn train --weights W --data D
# ---------------------------------------------------------------------------
def renamed_dataset(shapes_root, out, names):  # noqa: F811
    """A copy of the shapes dataset whose categories are called ``names``."""
    shutil.copytree(shapes_root, out)
    for split in ("train", "val"):
        path = out / "annotations" / f"instances_{split}.json"
        data = json.loads(path.read_text())
        for category, name in zip(data["categories"], names):
            category["name"] = name
        path.write_text(json.dumps(data))
    return out


@pytest.mark.parametrize("weights_as", ["file", "run folder"])
def test_cli_train_fine_tunes_a_checkpoint_on_other_classes(shapes, tmp_path, capsys,  # noqa: F811
                                                            monkeypatch, weights_as):
    monkeypatch.setitem(config_module.PRESETS, "tiny", {**config_module.PRESETS["tiny"], **MICRO})
    # lr 1e-30 (lr must be positive): one step moves no weight by more than ~1e-30.
    common = ["--iters", "1", "--max-eval-images", "1", "--quiet", "--lr", "1e-30"]
    # W: a "trained" checkpoint on shapes (circle, square, triangle), weights moved off
    # their initial values so that loading them is visible.
    first = tmp_path / "first"
    assert cli.main(["train", "--data", str(shapes), "--out", str(first), *common]) == 0
    checkpoint = load_checkpoint(first)
    rng = np.random.default_rng(0)
    checkpoint["model"] = perturbed({k: host(v) for k, v in checkpoint["model"].items()}, rng)
    minifpn.save({k: v for k, v in checkpoint.items() if k != "path"}, first / "checkpoint.npz")
    capsys.readouterr()

    # D: the same pictures, other classes. lr 1e-30: the weights stay what was loaded.
    other = renamed_dataset(shapes, tmp_path / "other", ["disc", "block", "wedge"])
    second = tmp_path / "second"
    weights = first / "checkpoint.npz" if weights_as == "file" else first
    assert cli.main(["train", "--data", str(other), "--out", str(second), "--weights",
                     str(weights), *common]) == 0
    printed = capsys.readouterr().out
    assert "8 predictor tensors replaced for the new classes" in printed
    assert "roi_heads.box_predictor.cls_score.weight" in printed

    tuned = {k: host(v) for k, v in load_checkpoint(second)["model"].items()}
    minifpn.manual_seed(0)  # the run's seed: its fresh predictors
    fresh = state_of(config_module.build_model("tiny", 4))
    replaced = [k for k in tuned if is_predictor(k)]
    assert len(replaced) == 8
    check_loaded(tuned, checkpoint["model"], fresh, replaced, atol=1e-20)


def test_cli_train_takes_the_norm_for_torchvisions_weights():
    args = cli.build_parser().parse_args(["train", "--norm", "frozen_bn", "--weights", "w.npz"])
    assert (args.norm, args.weights) == ("frozen_bn", "w.npz")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--norm", "batchnorm"])
