"""Backbone pre-training on object crops: the crops by hand, the classifier's gradient,
and weights the detector loads as it loads torchvision's ImageNet ResNets."""

import json

import numpy as np
import pytest
from PIL import Image

import minifpn
from minifpn import cli
from minifpn.data.coco import CocoDetection
from minifpn.engine import config as config_module
from minifpn.engine.pretrain import (
    CropClassifier,
    PretrainConfig,
    augment,
    object_crops,
    pretrain_backbone,
)
from minifpn.models.resnet import resnet
from minifpn.weights import load_pretrained
from tests.test_models_backbone import randomize, rescale_convs
from tests.test_train import MICRO, shapes  # noqa: F401 (the shapes fixture)


def write_one_image_dataset(root):
    """A 64 × 64 black PNG with a white 20 × 20 square at x 10..30, y 20..40."""
    (root / "annotations").mkdir(parents=True)
    (root / "train").mkdir()
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[20:40, 10:30] = 255
    Image.fromarray(pixels).save(root / "train" / "a.png")
    annotations = [
        {"id": 1, "image_id": 1, "bbox": [10, 20, 20, 20], "category_id": 7, "iscrowd": 0,
         "area": 400.0, "segmentation": [[10, 20, 30, 20, 30, 40, 10, 40]]},
        # too small to crop (under min_side = 16 pixels wide)
        {"id": 2, "image_id": 1, "bbox": [40, 5, 10, 30], "category_id": 3, "iscrowd": 0,
         "area": 300.0, "segmentation": [[40, 5, 50, 5, 50, 35, 40, 35]]},
        # a crowd region: never a crop
        {"id": 3, "image_id": 1, "bbox": [30, 30, 30, 30], "category_id": 3, "iscrowd": 1,
         "area": 900.0, "segmentation": [[30, 30, 60, 30, 60, 60, 30, 60]]},
    ]
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 64}],
            "annotations": annotations,
            "categories": [{"id": 3, "name": "thing"}, {"id": 7, "name": "square"}]}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(data))
    return root


def test_object_crops_by_hand(tmp_path):
    dataset = CocoDetection(write_one_image_dataset(tmp_path / "one"), "train", verbose=False)
    # context 0.15: the 20-px square's crop is 20 · 1.3 = 26 px wide, x 7..33, y 17..43, so
    # at crop_size 26 each output pixel is one input pixel. RoIAlign (aligned, 2 × 2
    # samples a bin) reads it as 1/8 · left + 3/4 · itself + 1/8 · right (same for rows):
    # 1 inside the square, 0 two pixels outside, 7/8 and 1/8 across its edge.
    crops, labels = object_crops(dataset, crop_size=26, context=0.15, min_side=16)
    assert crops.shape == (1, 3, 26, 26) and crops.dtype == np.float32
    np.testing.assert_array_equal(labels, [1])  # "square", the second category: label 2 − 1
    profile = np.array([0, 0, 1 / 8, 7 / 8] + [1] * 18 + [7 / 8, 1 / 8, 0, 0])
    expected = profile[:, None] * profile[None, :]
    for channel in range(3):
        np.testing.assert_allclose(crops[0, channel], expected, atol=1e-6)
    with pytest.raises(ValueError, match="no object of at least 40 pixels"):
        object_crops(dataset, min_side=40)


def test_augment_takes_a_window_and_flips_as_drawn():
    crops = np.arange(2 * 3 * 6 * 6, dtype=np.float32).reshape(2, 3, 6, 6)
    out = augment(crops, np.random.default_rng(5), size=4, jitter=0.0)
    rng = np.random.default_rng(5)  # the same draws, by hand
    ys, xs = rng.integers(0, 3, (2, 2))
    flips = rng.random(2) < 0.5
    for i in range(2):
        window = crops[i, :, ys[i]:ys[i] + 4, xs[i]:xs[i] + 4]
        np.testing.assert_array_equal(out[i], window[:, :, ::-1] if flips[i] else window)


def test_crop_classifier_gradcheck(rng):
    body = resnet("resnet18", norm="gn", width=0.0625)
    model = CropClassifier(body, num_classes=3)
    model.to(dtype=np.float64).train()
    randomize(model, rng)
    rescale_convs(model)
    x = minifpn.Tensor(rng.standard_normal((2, 3, 48, 48)), requires_grad=True)
    weights = minifpn.Tensor(rng.standard_normal((2, 3)))
    assert model(x).shape == (2, 3)

    def fn(images):
        return (model(images) * weights).sum()

    params = [body.conv1.weight, body.layer2[0].downsample[0].weight, body.layer4[-1].bn2.bias,
              model.fc.weight, model.fc.bias]
    assert minifpn.gradcheck(fn, [x], eps=1e-6, atol=1e-6, rtol=1e-4, wrt=[x, *params],
                             max_elements=4)


def test_pretrained_weights_load_into_the_detectors_backbone(shapes, tmp_path,  # noqa: F811
                                                              monkeypatch, capsys):
    monkeypatch.setitem(config_module.PRESETS, "tiny", {**config_module.PRESETS["tiny"], **MICRO})
    out = tmp_path / "pre"
    assert cli.main(["pretrain", "--data", str(shapes), "--epochs", "2", "--batch-size", "8",
                     "--crop-size", "36", "--size", "32", "--out", str(out), "--quiet"]) == 0
    assert "top-1 accuracy" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["categories"] == 3 and len(metrics["history"]) == 2
    assert 0 <= metrics["val_top1"] <= 1 and metrics["train_crops"] > 0
    assert json.loads((out / "pretrain_config.json").read_text())["epochs"] == 2

    saved = minifpn.load(out / "backbone.npz")
    assert "conv1.weight" in saved and "layer4.1.conv2.weight" in saved
    assert saved["fc.weight"].shape == (3, saved["layer4.1.conv2.weight"].shape[0])
    model = config_module.build_model("tiny", num_classes=2)
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    report = load_pretrained(model, out / "backbone.npz")
    after = model.state_dict()
    body = [k for k in after if k.startswith("backbone.body.")]
    assert body and sorted(report.loaded) == sorted(body)
    for key in body:  # the backbone is the pre-trained one …
        np.testing.assert_array_equal(after[key], saved[key[len("backbone.body."):]], key)
    for key in after:  # … and everything else (FPN, RPN, heads) starts fresh
        if key not in body:
            np.testing.assert_array_equal(after[key], before[key], key)
    assert sorted(report.unused) == ["fc.bias", "fc.weight"]


def test_pretrain_refuses_a_window_larger_than_the_crop():
    with pytest.raises(ValueError, match="size must be in 1..crop_size"):
        pretrain_backbone(PretrainConfig(crop_size=32, size=40), progress=False)


def test_an_interrupted_pretraining_resumes_to_the_same_weights(shapes, tmp_path,  # noqa: F811
                                                                 monkeypatch, capsys):
    """Stopped after epoch 1 of 3 and resumed = never stopped, bit for bit; what it refuses."""
    monkeypatch.setitem(config_module.PRESETS, "tiny", {**config_module.PRESETS["tiny"], **MICRO})
    settings = dict(data=str(shapes), epochs=3, batch_size=8, crop_size=36, size=32,
                    warmup_iters=2, max_images=6)
    whole = pretrain_backbone(PretrainConfig(out=str(tmp_path / "whole"), **settings),
                              progress=False)
    config = PretrainConfig(out=str(tmp_path / "cut"), **settings)
    assert pretrain_backbone(config, progress=False, stop_after=1) is None
    assert not (tmp_path / "cut" / "backbone.npz").exists()
    assert "--resume" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="resume=True"):  # not overwritten by accident
        pretrain_backbone(config, progress=False)
    with pytest.raises(ValueError, match="lr: 0.05 then, 0.1 now"):
        pretrain_backbone(PretrainConfig(**{**vars(config), "lr": 0.1}), progress=False,
                          resume=True)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        pretrain_backbone(PretrainConfig(out=str(tmp_path / "none"), **settings),
                          progress=False, resume=True)
    resumed = pretrain_backbone(config, progress=False, resume=True)
    assert "resuming after epoch 1 of 3" in capsys.readouterr().out
    a = minifpn.load(tmp_path / "whole" / "backbone.npz")
    b = minifpn.load(tmp_path / "cut" / "backbone.npz")
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], key)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    assert resumed["val_top1"] == whole["val_top1"]
