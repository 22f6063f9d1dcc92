"""The assembled detectors (``minifpn.models.detector``): calling convention, torchvision's
constructor, overfitting, and torchvision checkpoint compatibility.

References are independent of the code under test:

* torchvision's ``maskrcnn_resnet50_fpn`` state-dict layout, written out here
  from its naming rules (ResNet body with frozen BN, FPN ``inner_blocks`` /
  ``layer_blocks`` with the ``.0`` of ``Conv2dNormActivation``, the RPN head's
  ``conv.0.0``, ``box_head.fc6/fc7``, ``box_predictor.cls_score/bbox_pred``,
  ``mask_head.{0..3}.0``, ``mask_predictor.conv5_mask/mask_fcn_logits``) and
  the pre-0.13 spellings (``rpn.head.conv``, ``mask_head.mask_fcn1..4``,
  ``fpn.inner_blocks.0``), with shapes from the architecture;
* resizing: sizes worked out by hand from the min/max-size rule, and a
  2×-upsampled image must give exactly 2× the boxes (bilinear downsampling by
  2 of a pixel-doubled image gives back the original pixels);
* a tiny Mask R-CNN must overfit two synthetic images (losses fall, and the
  objects are found with the right class, box IoU and mask IoU).
"""

from collections import OrderedDict

import numpy as np
import pytest

import minifpn
from minifpn import backend, nn, optim
from minifpn.models import (
    FasterRCNN,
    GeneralizedRCNN,
    MaskRCNN,
    detector_parts,
    resnet_fpn_backbone,
)
from minifpn.nn.utils import clip_grad_norm_
from minifpn.ops import box_iou
from minifpn.weights import load_torchvision

RPN_LOSSES = {"loss_objectness", "loss_rpn_box_reg"}
BOX_LOSSES = {"loss_classifier", "loss_box_reg"}


def host(x):
    return backend.to_numpy(x.data if isinstance(x, minifpn.Tensor) else x)


# ---------------------------------------------------------------------------
# Synthetic data.
# ---------------------------------------------------------------------------
def shape_image(height, width, kind, box, label):
    """A grey image with one filled circle or square inside ``box``; its target."""
    yy, xx = np.mgrid[:height, :width]
    x1, y1, x2, y2 = box
    image = np.full((3, height, width), 0.2, np.float32)
    if kind == "circle":
        cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
        mask = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
        image[:, mask] = np.array([0.9, 0.3, 0.2])[:, None]
    else:
        mask = (xx >= x1) & (xx < x2) & (yy >= y1) & (yy < y2)
        image[:, mask] = np.array([0.2, 0.4, 0.9])[:, None]
    ys, xs = np.nonzero(mask)
    boxes = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    target = {"boxes": boxes, "labels": np.array([label]), "masks": mask[None].astype(np.uint8)}
    return image, target


def tiny_kwargs(**overrides):
    kwargs = dict(min_size=64, max_size=96,
                  rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
                  rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=30,
                  box_batch_size_per_image=32, box_score_thresh=0.0)
    kwargs.update(overrides)
    return kwargs


def tiny_faster_rcnn(**overrides):
    minifpn.manual_seed(0)
    backbone = resnet_fpn_backbone("resnet18", width=0.125, out_channels=16)
    return FasterRCNN(backbone, **detector_parts(16, 3, representation_size=32),
                      **tiny_kwargs(**overrides))


def tiny_mask_rcnn(**overrides):
    minifpn.manual_seed(0)
    backbone = resnet_fpn_backbone("resnet18", width=0.125, out_channels=16)
    parts = detector_parts(16, 3, representation_size=32, mask_layers=(8, 8, 8, 8),
                           mask_dim_reduced=8)
    return MaskRCNN(backbone, **parts, **tiny_kwargs(**overrides))


def two_images():
    """Images 80 × 100 and 120 × 90 (H × W): resized by hand to 64 × 80 and 85 × 64."""
    a, ta = shape_image(80, 100, "circle", (20, 15, 60, 55), 1)
    b, tb = shape_image(120, 90, "square", (30, 40, 70, 100), 2)
    return [a, b], [ta, tb]


# ---------------------------------------------------------------------------
# Calling convention.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["faster", "mask"])
def test_training_returns_named_losses(kind, device):
    model = tiny_faster_rcnn() if kind == "faster" else tiny_mask_rcnn()
    assert isinstance(model, GeneralizedRCNN)
    images, targets = two_images()
    images = [backend.to_device(im, device) for im in images]
    targets = [{k: backend.to_device(v, device) for k, v in t.items()} for t in targets]
    model.to(device).train()
    losses = model(images, targets)
    expected = RPN_LOSSES | BOX_LOSSES | ({"loss_mask"} if kind == "mask" else set())
    assert set(losses) == expected
    for name, loss in losses.items():
        assert loss.shape == () or loss.numel() == 1, name
        assert np.isfinite(float(loss.data)) and float(loss.data) >= 0, name
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    for name in ("backbone.body.conv1.weight", "rpn.head.cls_logits.weight",
                 "roi_heads.box_predictor.cls_score.weight"):
        assert params[name].grad is not None and np.abs(host(params[name].grad)).sum() > 0
    if kind == "mask":
        grad = params["roi_heads.mask_predictor.mask_fcn_logits.weight"].grad
        assert grad is not None and np.abs(host(grad)).sum() > 0


def test_training_needs_targets_and_masks():
    model = tiny_mask_rcnn()
    images, targets = two_images()
    model.train()
    with pytest.raises(ValueError, match="targets"):
        model(images)
    with pytest.raises(ValueError):
        model(images, targets[:1])
    for t in targets:
        del t["masks"]
    with pytest.raises(ValueError, match="masks"):
        model(images, targets)
    # A Faster R-CNN needs no masks.
    faster = tiny_faster_rcnn()
    faster.train()
    assert set(faster(images, targets)) == RPN_LOSSES | BOX_LOSSES


@pytest.mark.parametrize("kind", ["faster", "mask"])
def test_eval_outputs_in_original_pixels(kind):
    model = tiny_faster_rcnn() if kind == "faster" else tiny_mask_rcnn()
    images, _ = two_images()
    model.eval()
    with minifpn.no_grad():
        outputs = model(images)
        # The same pipeline, stage by stage, to get the boxes in resized pixels.
        image_list, _ = model.transform(images)
        features = model.backbone(image_list.tensors)
        proposals, _ = model.rpn(image_list, features)
        resized, _ = model.roi_heads(features, proposals, image_list.image_sizes)
    # min(64 / 80, 96 / 100) = 0.8 → 64 × 80;  min(64 / 90, 96 / 120) = 0.711 → 85 × 64.
    assert image_list.image_sizes == [(64, 80), (85, 64)]
    assert len(outputs) == 2
    scales = [(100 / 80, 80 / 64), (90 / 64, 120 / 85)]  # (x, y): original / resized
    for out, small, (sx, sy), image in zip(outputs, resized, scales, images):
        keys = {"boxes", "labels", "scores"} | ({"masks"} if kind == "mask" else set())
        assert set(out) == keys
        d = len(out["boxes"])
        assert d > 0 and out["scores"].shape == (d,) and out["labels"].shape == (d,)
        assert (out["labels"] >= 1).all() and (out["labels"] <= 2).all()
        np.testing.assert_allclose(out["boxes"], small["boxes"] * [sx, sy, sx, sy], rtol=1e-5,
                                   atol=1e-4)
        height, width = image.shape[1:]
        assert (out["boxes"] >= -1e-4).all()
        assert (out["boxes"][:, [0, 2]] <= width + 1e-3).all()
        assert (out["boxes"][:, [1, 3]] <= height + 1e-3).all()
        if kind == "mask":
            assert out["masks"].shape == (d, 1, height, width)
            assert (out["masks"] >= 0).all() and (out["masks"] <= 1).all()


def test_eval_needs_no_targets_and_is_deterministic():
    model = tiny_mask_rcnn()
    images, _ = two_images()
    model.eval()
    with minifpn.no_grad():
        a, b = model(images), model(images)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_manual_seed_makes_models_and_training_reproducible():
    images, targets = two_images()
    losses = []
    for _ in range(2):
        model = tiny_mask_rcnn()
        model.train()
        minifpn.manual_seed(5)
        losses.append({k: float(v.data) for k, v in model(images, targets).items()})
    assert losses[0] == losses[1]


# ---------------------------------------------------------------------------
# A tiny Mask R-CNN overfits two images.
# ---------------------------------------------------------------------------
def mask_iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_tiny_mask_rcnn_overfits_two_images():
    minifpn.manual_seed(0)
    circle, t_circle = shape_image(128, 150, "circle", (30, 30, 90, 90), 1)
    square, t_square = shape_image(128, 156, "square", (60, 40, 120, 96), 2)
    images, targets = [circle, square], [t_circle, t_square]
    backbone = resnet_fpn_backbone("resnet18", width=0.25, out_channels=32)
    parts = detector_parts(32, 3, representation_size=128, mask_layers=(32,) * 4,
                           mask_dim_reduced=32)
    model = MaskRCNN(backbone, min_size=128, max_size=160, **parts,
                     rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=200,
                     rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100,
                     box_batch_size_per_image=64)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optim.SGD(params, lr=0.02, momentum=0.9)
    history = []
    model.train()
    for _ in range(60):
        losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        clip_grad_norm_(params, 10.0)
        optimizer.step()
        history.append({k: float(v.data) for k, v in losses.items()})
    totals = [sum(h.values()) for h in history]
    assert np.isfinite(totals).all()
    assert np.mean(totals[-5:]) <= totals[0] / 3, totals
    for name in ("loss_classifier", "loss_mask", "loss_objectness"):
        assert np.mean([h[name] for h in history[-5:]]) < history[0][name] / 2, name

    model.eval()
    with minifpn.no_grad():
        outputs = model(images)
    for out, target, image in zip(outputs, targets, images):
        assert len(out["boxes"]) >= 1
        best = int(np.argmax(out["scores"]))
        assert out["labels"][best] == target["labels"][0]
        assert box_iou(out["boxes"][best:best + 1], target["boxes"])[0, 0] > 0.5
        assert out["masks"].shape == (len(out["boxes"]), 1) + image.shape[1:]
        pasted = out["masks"][best, 0] > 0.5
        assert mask_iou(pasted, target["masks"][0].astype(bool)) > 0.5
        # No confident detection of the other class.
        other = out["labels"] != target["labels"][0]
        assert (out["scores"][other] < 0.5).all()

    # The circle at twice the size is resized back to 128 × 150 — pixel for pixel the
    # original (bilinear ½ of a doubled image) — so the boxes come back doubled.
    big = circle.repeat(2, axis=1).repeat(2, axis=2)
    with minifpn.no_grad():
        big_out = model([big, square])
    np.testing.assert_allclose(big_out[0]["boxes"], 2 * outputs[0]["boxes"], rtol=1e-4,
                               atol=1e-3)
    np.testing.assert_allclose(big_out[0]["scores"], outputs[0]["scores"], rtol=1e-4,
                               atol=1e-5)
    assert big_out[0]["masks"].shape == (len(big_out[0]["boxes"]), 1, 256, 300)
    best = int(np.argmax(big_out[0]["scores"]))
    big_mask = t_circle["masks"][0].repeat(2, axis=0).repeat(2, axis=1).astype(bool)
    assert mask_iou(big_out[0]["masks"][best, 0] > 0.5, big_mask) > 0.5


# ---------------------------------------------------------------------------
# torchvision checkpoint layout.
# ---------------------------------------------------------------------------
BN = ("weight", "bias", "running_mean", "running_var")


def resnet50_body(widths):
    """torchvision's ResNet-50 body with FrozenBatchNorm2d: ``[(key, shape)]`` in order."""
    out = [("conv1.weight", (widths[0], 3, 7, 7))] + [(f"bn1.{f}", (widths[0],)) for f in BN]
    c_in = widths[0]
    for stage, (w, blocks) in enumerate(zip(widths, (3, 4, 6, 3)), start=1):
        for j in range(blocks):
            p = f"layer{stage}.{j}"
            out.append((f"{p}.conv1.weight", (w, c_in if j == 0 else 4 * w, 1, 1)))
            out += [(f"{p}.bn1.{f}", (w,)) for f in BN]
            out.append((f"{p}.conv2.weight", (w, w, 3, 3)))
            out += [(f"{p}.bn2.{f}", (w,)) for f in BN]
            out.append((f"{p}.conv3.weight", (4 * w, w, 1, 1)))
            out += [(f"{p}.bn3.{f}", (4 * w,)) for f in BN]
            if j == 0:
                out.append((f"{p}.downsample.0.weight", (4 * w, c_in, 1, 1)))
                out += [(f"{p}.downsample.1.{f}", (4 * w,)) for f in BN]
        c_in = 4 * w
    return out


def maskrcnn_resnet50_fpn_entries(widths, d, num_classes, representation, mask_layers,
                                  dim_reduced, anchors=3):
    """torchvision's ``maskrcnn_resnet50_fpn`` keys and shapes (≥ 0.13 naming)."""
    out = [("backbone.body." + k, s) for k, s in resnet50_body(widths)]
    for i, w in enumerate(widths):
        out += [(f"backbone.fpn.inner_blocks.{i}.0.weight", (d, 4 * w, 1, 1)),
                (f"backbone.fpn.inner_blocks.{i}.0.bias", (d,))]
    for i in range(4):
        out += [(f"backbone.fpn.layer_blocks.{i}.0.weight", (d, d, 3, 3)),
                (f"backbone.fpn.layer_blocks.{i}.0.bias", (d,))]
    out += [
        ("rpn.head.conv.0.0.weight", (d, d, 3, 3)), ("rpn.head.conv.0.0.bias", (d,)),
        ("rpn.head.cls_logits.weight", (anchors, d, 1, 1)),
        ("rpn.head.cls_logits.bias", (anchors,)),
        ("rpn.head.bbox_pred.weight", (4 * anchors, d, 1, 1)),
        ("rpn.head.bbox_pred.bias", (4 * anchors,)),
        ("roi_heads.box_head.fc6.weight", (representation, d * 7 * 7)),
        ("roi_heads.box_head.fc6.bias", (representation,)),
        ("roi_heads.box_head.fc7.weight", (representation, representation)),
        ("roi_heads.box_head.fc7.bias", (representation,)),
        ("roi_heads.box_predictor.cls_score.weight", (num_classes, representation)),
        ("roi_heads.box_predictor.cls_score.bias", (num_classes,)),
        ("roi_heads.box_predictor.bbox_pred.weight", (4 * num_classes, representation)),
        ("roi_heads.box_predictor.bbox_pred.bias", (4 * num_classes,)),
    ]
    c_in = d
    for i, c in enumerate(mask_layers):
        out += [(f"roi_heads.mask_head.{i}.0.weight", (c, c_in, 3, 3)),
                (f"roi_heads.mask_head.{i}.0.bias", (c,))]
        c_in = c
    out += [
        ("roi_heads.mask_predictor.conv5_mask.weight", (c_in, dim_reduced, 2, 2)),  # (in, out)
        ("roi_heads.mask_predictor.conv5_mask.bias", (dim_reduced,)),
        ("roi_heads.mask_predictor.mask_fcn_logits.weight", (num_classes, dim_reduced, 1, 1)),
        ("roi_heads.mask_predictor.mask_fcn_logits.bias", (num_classes,)),
    ]
    return out


def old_name(key):
    """The pre-0.13 torchvision spelling of a key."""
    key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
    for i in range(4):
        key = key.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
        key = key.replace(f"fpn.inner_blocks.{i}.0.", f"fpn.inner_blocks.{i}.")
        key = key.replace(f"fpn.layer_blocks.{i}.0.", f"fpn.layer_blocks.{i}.")
    return key


SMALL = dict(widths=(8, 16, 32, 64), d=16, num_classes=5, representation=32,
             mask_layers=(16, 16, 16, 16), dim_reduced=8)


def small_maskrcnn(**overrides):
    backbone = resnet_fpn_backbone("resnet50", norm="frozen_bn", width=0.125, out_channels=16)
    parts = detector_parts(16, 5, representation_size=32, mask_layers=(16,) * 4,
                           mask_dim_reduced=8)
    return MaskRCNN(backbone, **parts, min_size=64, max_size=96,
                    rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=20,
                    box_score_thresh=0.0, **overrides)


def random_checkpoint(entries, rng):
    state = OrderedDict()
    for key, shape in entries:
        if key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        elif len(shape) == 1:
            state[key] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        else:
            fan_in = np.prod(shape[1:])
            state[key] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return state


def test_old_names_by_hand():
    assert old_name("rpn.head.conv.0.0.weight") == "rpn.head.conv.weight"
    assert old_name("roi_heads.mask_head.0.0.bias") == "roi_heads.mask_head.mask_fcn1.bias"
    assert old_name("roi_heads.mask_head.3.0.weight") == "roi_heads.mask_head.mask_fcn4.weight"
    assert old_name("backbone.fpn.inner_blocks.0.0.weight") == "backbone.fpn.inner_blocks.0.weight"
    assert old_name("backbone.fpn.layer_blocks.3.0.bias") == "backbone.fpn.layer_blocks.3.bias"
    assert old_name("backbone.body.layer1.0.conv1.weight") == "backbone.body.layer1.0.conv1.weight"


def test_state_dict_is_torchvisions_small():
    entries = maskrcnn_resnet50_fpn_entries(**SMALL)
    assert len(entries) == 307  # 265 body + 16 FPN + 6 RPN + 8 box + 12 mask
    state = small_maskrcnn().state_dict()
    assert list(state) == [k for k, _ in entries]
    assert [tuple(v.shape) for v in state.values()] == [s for _, s in entries]


def test_state_dict_is_torchvisions_full_size():
    backbone = resnet_fpn_backbone("resnet50", norm="frozen_bn")
    state = MaskRCNN(backbone, num_classes=91).state_dict()
    entries = maskrcnn_resnet50_fpn_entries((64, 128, 256, 512), 256, 91, 1024, (256,) * 4, 256)
    assert [(k, tuple(v.shape)) for k, v in state.items()] == entries
    assert state["roi_heads.box_head.fc6.weight"].shape == (1024, 12544)


def test_faster_rcnn_state_dict_has_no_mask_keys():
    backbone = resnet_fpn_backbone("resnet50", norm="frozen_bn", width=0.125, out_channels=16)
    state = FasterRCNN(backbone, **detector_parts(16, 5, representation_size=32)).state_dict()
    entries = [k for k, _ in maskrcnn_resnet50_fpn_entries(**SMALL) if "mask" not in k]
    assert list(state) == entries


def set_by_hand(model, state):
    """Assign every array to its attribute: ``model.roi_heads.mask_head[0][0].weight = …``."""
    for key, value in state.items():
        *path, name = key.split(".")
        module = model
        for part in path:
            module = module[int(part)] if part.isdigit() else getattr(module, part)
        if isinstance(getattr(module, name), nn.Parameter):
            setattr(module, name, nn.Parameter(np.array(value)))
        else:
            setattr(module, name, np.array(value))


def detect(model, image):
    model.eval()
    with minifpn.no_grad():
        return model([image])[0]


@pytest.mark.parametrize("naming", ["new", "old"])
def test_load_torchvision_checkpoint_strictly(rng, naming):
    entries = maskrcnn_resnet50_fpn_entries(**SMALL)
    checkpoint = random_checkpoint(entries, rng)
    if naming == "old":
        checkpoint = OrderedDict((old_name(k), v) for k, v in checkpoint.items())
        assert "rpn.head.conv.weight" in checkpoint
        assert "roi_heads.mask_head.mask_fcn1.weight" in checkpoint
        assert "backbone.fpn.inner_blocks.0.weight" in checkpoint
    checkpoint["roi_heads.box_predictor.num_batches_tracked"] = np.array(3)  # stray: unused

    model = small_maskrcnn()
    report = load_torchvision(model, checkpoint, strict=True)
    assert report.missing == []
    assert report.unused == ["roi_heads.box_predictor.num_batches_tracked"]
    assert report.loaded == [k for k, _ in entries]
    if naming == "old":
        assert report.renamed["rpn.head.conv.weight"] == "rpn.head.conv.0.0.weight"
        assert report.renamed["roi_heads.mask_head.mask_fcn4.bias"] == \
            "roi_heads.mask_head.3.0.bias"
        assert report.renamed["backbone.fpn.layer_blocks.2.weight"] == \
            "backbone.fpn.layer_blocks.2.0.weight"
    else:
        assert report.renamed == {}
    state = model.state_dict()
    for key, _ in entries:
        source = old_name(key) if naming == "old" else key
        np.testing.assert_array_equal(host(state[key]), checkpoint[source], err_msg=key)

    # Same outputs as a model whose tensors were assigned by hand.
    by_hand = small_maskrcnn()
    set_by_hand(by_hand, random_checkpoint(entries, np.random.default_rng(99)))  # overwritten:
    set_by_hand(by_hand, OrderedDict((k, checkpoint[old_name(k) if naming == "old" else k])
                                     for k, _ in entries))
    image = np.random.default_rng(7).uniform(0, 1, (3, 70, 90)).astype(np.float32)
    loaded_out, hand_out = detect(model, image), detect(by_hand, image)
    assert len(loaded_out["boxes"]) > 0
    assert set(loaded_out) == {"boxes", "labels", "scores", "masks"}
    for key in loaded_out:
        np.testing.assert_array_equal(loaded_out[key], hand_out[key], err_msg=key)
    fresh_out = detect(small_maskrcnn(), image)
    assert fresh_out["scores"].shape != loaded_out["scores"].shape or not np.allclose(
        fresh_out["scores"], loaded_out["scores"])


def test_load_torchvision_strict_reports_a_missing_head_key(rng):
    entries = maskrcnn_resnet50_fpn_entries(**SMALL)
    checkpoint = random_checkpoint(entries, rng)
    del checkpoint["roi_heads.mask_predictor.mask_fcn_logits.bias"]
    with pytest.raises(nn.StateDictError, match="mask_fcn_logits.bias"):
        load_torchvision(small_maskrcnn(), checkpoint, strict=True)
    report = load_torchvision(small_maskrcnn(), checkpoint, strict=False)
    assert report.missing == ["roi_heads.mask_predictor.mask_fcn_logits.bias"]


# ---------------------------------------------------------------------------
# torchvision's constructor.
# ---------------------------------------------------------------------------
# torchvision 0.28's FasterRCNN.__init__, written out from its documentation, in order;
# its **kwargs go to GeneralizedRCNNTransform (size_divisible, fixed_size).
TORCHVISION_FASTER_RCNN_ARGS = [
    "min_size", "max_size", "image_mean", "image_std",
    "rpn_anchor_generator", "rpn_head", "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test", "rpn_nms_thresh",
    "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_batch_size_per_image",
    "rpn_positive_fraction", "rpn_score_thresh",
    "box_roi_pool", "box_head", "box_predictor", "box_score_thresh", "box_nms_thresh",
    "box_detections_per_img", "box_fg_iou_thresh", "box_bg_iou_thresh",
    "box_batch_size_per_image", "box_positive_fraction", "bbox_reg_weights",
]


def test_constructors_take_torchvisions_arguments_in_its_order():
    import inspect

    params = list(inspect.signature(FasterRCNN.__init__).parameters.values())[1:]
    assert [p.name for p in params[:2]] == ["backbone", "num_classes"]
    assert params[1].default is None
    rest = [p for p in params[2:] if p.kind == p.KEYWORD_ONLY]
    assert [p.name for p in rest] == TORCHVISION_FASTER_RCNN_ARGS + ["size_divisible",
                                                                     "fixed_size"]
    mask = list(inspect.signature(MaskRCNN.__init__).parameters)[1:]
    assert mask == ["backbone", "num_classes", "mask_roi_pool", "mask_head", "mask_predictor",
                    "kwargs"]


def test_injected_parts_and_options_are_used():
    from minifpn.models import (
        AnchorGenerator,
        FastRCNNPredictor,
        MaskRCNNHeads,
        MaskRCNNPredictor,
        MultiScaleRoIAlign,
        RPNHead,
        TwoMLPHead,
    )

    minifpn.manual_seed(0)
    backbone = resnet_fpn_backbone("resnet18", width=0.125, out_channels=16)
    # torchvision's per-level spelling of the anchors, with other ratios per level
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,), (256,)),
                              ((0.5, 1.0, 2.0),) * 4 + ((0.25, 1.0, 4.0),))
    parts = dict(rpn_anchor_generator=anchors, rpn_head=RPNHead(16, 3),
                 box_roi_pool=MultiScaleRoIAlign(["P2", "P3", "P4", "P5"], 5, 1),
                 box_head=TwoMLPHead(16 * 5 * 5, 24), box_predictor=FastRCNNPredictor(24, 3),
                 mask_roi_pool=MultiScaleRoIAlign(["P2", "P3", "P4", "P5"], 7, 1),
                 mask_head=MaskRCNNHeads(16, (8, 8)), mask_predictor=MaskRCNNPredictor(8, 4, 3))
    model = MaskRCNN(backbone, None, min_size=(56, 64), max_size=96, rpn_score_thresh=0.25,
                     rpn_pre_nms_top_n_test=77, box_score_thresh=0.0, box_nms_thresh=0.4,
                     box_detections_per_img=9, bbox_reg_weights=(5.0, 5.0, 2.0, 2.0),
                     size_divisible=16, **parts)
    assert model.rpn.anchor_generator is anchors and model.rpn.head is parts["rpn_head"]
    for name in ("box_roi_pool", "box_head", "box_predictor", "mask_roi_pool", "mask_head",
                 "mask_predictor"):
        assert getattr(model.roi_heads, name) is parts[name], name
    assert (model.rpn.score_thresh, model.rpn.pre_nms_top_n["testing"]) == (0.25, 77)
    heads = model.roi_heads
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == (0.0, 0.4, 9)
    assert heads.box_coder.weights == (5.0, 5.0, 2.0, 2.0)
    assert (model.transform.min_size, model.transform.size_divisible) == ((56, 64), 16)
    images, targets = two_images()
    model.train()
    losses = model(images, targets)
    assert set(losses) == RPN_LOSSES | BOX_LOSSES | {"loss_mask"}
    model.eval()
    with minifpn.no_grad():
        outputs = model(images)
    assert all(len(out["boxes"]) <= 9 for out in outputs)
    assert outputs[0]["masks"].shape[1:] == (1, 80, 100)


def test_constructor_refuses_what_torchvision_refuses():
    from minifpn.models import FastRCNNPredictor, MaskRCNNPredictor

    backbone = resnet_fpn_backbone("resnet18", width=0.125, out_channels=8)
    with pytest.raises(ValueError, match="num_classes must be None when box_predictor"):
        FasterRCNN(backbone, 3, box_predictor=FastRCNNPredictor(1024, 3))
    with pytest.raises(ValueError, match="give num_classes"):
        FasterRCNN(backbone)
    with pytest.raises(ValueError, match="num_classes must be None when mask_predictor"):
        MaskRCNN(backbone, 3, mask_predictor=MaskRCNNPredictor(256, 256, 3))
    with pytest.raises(ValueError, match="give num_classes .* or a mask_predictor"):
        MaskRCNN(backbone, box_predictor=FastRCNNPredictor(1024, 3))
    with pytest.raises(TypeError, match="rpn_anchor_generator must be a AnchorGenerator"):
        FasterRCNN(backbone, 3, rpn_anchor_generator=(32, 64))
    with pytest.raises(TypeError, match="box_roi_pool must be a MultiScaleRoIAlign"):
        FasterRCNN(backbone, 3, box_roi_pool="P2")
    with pytest.raises(ValueError, match="out_channels"):
        FasterRCNN(nn.Identity(), 3)
    with pytest.raises(TypeError):  # keyword only after num_classes, as the issue asks
        FasterRCNN(backbone, 3, 800)


def test_torchvisions_custom_backbone_example_runs():
    # torchvision's FasterRCNN docstring: a backbone returning one Tensor (level "0"),
    # 5 sizes × 3 ratios on it, and a pooler over ["0"] — stride inferred from the sizes.
    from minifpn.models import AnchorGenerator, MultiScaleRoIAlign

    minifpn.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, stride=4, padding=1))  # stride 16
    backbone.out_channels = 8
    anchor_generator = AnchorGenerator(sizes=((32, 64, 128, 256, 512),),
                                       aspect_ratios=((0.5, 1.0, 2.0),))
    roi_pooler = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    model = FasterRCNN(backbone, num_classes=2, rpn_anchor_generator=anchor_generator,
                       box_roi_pool=roi_pooler, min_size=64, max_size=96)
    images, targets = two_images()
    for t in targets:
        t["labels"] = np.ones(1, np.int64)
    model.train()
    assert set(model(images, targets)) == RPN_LOSSES | BOX_LOSSES
    model.eval()
    with minifpn.no_grad():
        predictions = model(images)
    assert len(predictions) == 2 and set(predictions[0]) == {"boxes", "labels", "scores"}


def test_float64_detector_computes_in_float64():
    # Every loss, gradient and output of a float64 model is float64 (torchvision's too):
    # no float32 anchors, targets or pasted masks on the way.
    model = tiny_mask_rcnn().double()
    images, targets = two_images()
    images = [image.astype(np.float64) for image in images]
    model.train()
    losses = model(images, targets)
    assert {name: loss.dtype for name, loss in losses.items()} == {
        name: np.float64 for name in RPN_LOSSES | BOX_LOSSES | {"loss_mask"}}
    sum(losses.values()).backward()
    assert all(p.grad.dtype == np.float64 for p in model.parameters() if p.grad is not None)
    model.eval()
    with minifpn.no_grad():
        (out, _) = model(images)
    assert out["boxes"].dtype == out["scores"].dtype == out["masks"].dtype == np.float64
