"""Loading torchvision checkpoints (``minifpn.weights``) and the ``weights convert`` CLI.

The reference is torchvision's naming, written out here from its rules — not
read from the model under test: ``conv1.weight``, ``bn1.{weight, bias,
running_mean, running_var}``, ``layer{i}.{j}.conv{1,2,3}.weight``,
``layer{i}.0.downsample.{0,1}.*``, ``fpn.inner_blocks.{i}.0.*``,
``fpn.layer_blocks.{i}.0.*``, with each tensor's shape from the architecture
(He et al., Table 1; torchvision's ResNet v1.5). A fake checkpoint in that
format, with random values, must load strictly, and give the same outputs as
an identical model whose tensors were assigned by hand, attribute by
attribute.
"""

import importlib.util
import sys
from collections import OrderedDict

import numpy as np
import pytest

import minifpn
from minifpn import backend, nn
from minifpn.cli import main
from minifpn.models import resnet18, resnet50, resnet_fpn_backbone
from minifpn.nn import StateDictError
from minifpn.weights import (
    LEGACY_RENAMES,
    LoadReport,
    convert_checkpoint,
    load_torchvision,
    map_torchvision_keys,
)

BN_FIELDS = ("weight", "bias", "running_mean", "running_var")
WIDTH = 0.125
WIDTHS = (8, 16, 32, 64)  # round(64 · 0.125) · (1, 2, 4, 8), by hand
FULL_WIDTHS = (64, 128, 256, 512)
D = 16  # FPN channels in the slim tests


def host(value):
    return backend.to_numpy(value.data if isinstance(value, minifpn.Tensor) else value)


# ---------------------------------------------------------------------------
# torchvision's key layout, written out from its naming rules.
# ---------------------------------------------------------------------------
def _bn(prefix, channels, num_batches_tracked=False):
    entries = [(f"{prefix}.{f}", (channels,)) for f in BN_FIELDS]
    if num_batches_tracked:
        entries.append((f"{prefix}.num_batches_tracked", ()))
    return entries


def bottleneck_resnet_entries(widths, blocks=(3, 4, 6, 3), nbt=False):
    """``[(key, shape)]`` of torchvision's ResNet-50/101 body, in state-dict order."""
    entries = [("conv1.weight", (widths[0], 3, 7, 7))] + _bn("bn1", widths[0], nbt)
    c_in = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks), start=1):
        c_out = 4 * w
        for j in range(n):
            p = f"layer{i}.{j}"
            entries += [(f"{p}.conv1.weight", (w, c_in if j == 0 else c_out, 1, 1))]
            entries += _bn(f"{p}.bn1", w, nbt)
            entries += [(f"{p}.conv2.weight", (w, w, 3, 3))] + _bn(f"{p}.bn2", w, nbt)
            entries += [(f"{p}.conv3.weight", (c_out, w, 1, 1))] + _bn(f"{p}.bn3", c_out, nbt)
            if j == 0:  # every first block projects: 64 → 256 in layer1, stride 2 after
                entries += [(f"{p}.downsample.0.weight", (c_out, c_in, 1, 1))]
                entries += _bn(f"{p}.downsample.1", c_out, nbt)
        c_in = c_out
    return entries


def basic_resnet_entries(widths, blocks=(2, 2, 2, 2), nbt=False):
    """``[(key, shape)]`` of torchvision's ResNet-18/34 body."""
    entries = [("conv1.weight", (widths[0], 3, 7, 7))] + _bn("bn1", widths[0], nbt)
    c_in = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks), start=1):
        for j in range(n):
            p = f"layer{i}.{j}"
            entries += [(f"{p}.conv1.weight", (w, c_in if j == 0 else w, 3, 3))]
            entries += _bn(f"{p}.bn1", w, nbt)
            entries += [(f"{p}.conv2.weight", (w, w, 3, 3))] + _bn(f"{p}.bn2", w, nbt)
            if j == 0 and i > 1:  # layer1 keeps width and resolution: no projection
                entries += [(f"{p}.downsample.0.weight", (w, c_in, 1, 1))]
                entries += _bn(f"{p}.downsample.1", w, nbt)
        c_in = w
    return entries


def fpn_entries(in_channels, d):
    """torchvision's FeaturePyramidNetwork (>= 0.13): the laterals, then the outputs."""
    entries = []
    for i, c in enumerate(in_channels):
        entries += [(f"fpn.inner_blocks.{i}.0.weight", (d, c, 1, 1)),
                    (f"fpn.inner_blocks.{i}.0.bias", (d,))]
    for i in range(len(in_channels)):
        entries += [(f"fpn.layer_blocks.{i}.0.weight", (d, d, 3, 3)),
                    (f"fpn.layer_blocks.{i}.0.bias", (d,))]
    return entries


def backbone_entries(widths, d):
    body = [("body." + k, s) for k, s in bottleneck_resnet_entries(widths)]
    return body + fpn_entries([4 * w for w in widths], d)


def random_values(entries, rng):
    """A state dict of random float32 arrays (positive variances, int64 counters)."""
    state = OrderedDict()
    for key, shape in entries:
        if key.endswith("num_batches_tracked"):
            state[key] = np.array(7, dtype=np.int64)
        elif key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            scale = 0.5 if len(shape) == 1 else (1.0 / np.prod(shape[1:])) ** 0.5
            state[key] = (rng.standard_normal(shape) * scale).astype(np.float32)
    return state


def maskrcnn_checkpoint(rng, widths=WIDTHS, d=D):
    """A Mask R-CNN-style checkpoint: the backbone under ``backbone.``, plus heads."""
    state = OrderedDict(("backbone." + k, v) for k, v in
                        random_values(backbone_entries(widths, d), rng).items())
    state["rpn.head.conv.0.0.weight"] = rng.standard_normal((d, d, 3, 3)).astype(np.float32)
    state["roi_heads.box_predictor.cls_score.weight"] = np.zeros((91, 1024), np.float32)
    return state


def slim_backbone():
    return resnet_fpn_backbone("resnet50", norm="frozen_bn", width=WIDTH, out_channels=D)


def set_by_hand(model, state):
    """Assign every array to its attribute (``model.body.layer1[0].conv1.weight = …``)."""
    for key, value in state.items():
        *path, name = key.split(".")
        module = model
        for part in path:
            module = getattr(module, part)
        if isinstance(getattr(module, name), nn.Parameter):
            setattr(module, name, nn.Parameter(np.array(value)))
        else:
            setattr(module, name, np.array(value))


def snapshot(model):
    return {k: host(v).copy() for k, v in model.state_dict().items()}


def assert_state_equal(model, expected):
    state = model.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(host(state[key]), value, err_msg=key)


# ---------------------------------------------------------------------------
# Key names and shapes.
# ---------------------------------------------------------------------------
def test_key_counts_by_hand():
    # ResNet-50: 53 convs, 53 norms × 4 tensors (no fc, no num_batches_tracked).
    assert len(bottleneck_resnet_entries(WIDTHS)) == 53 + 53 * 4
    # ResNet-18: 20 convs (17 + 3 projections), 20 norms.
    assert len(basic_resnet_entries(WIDTHS)) == 20 + 20 * 4
    assert len(fpn_entries([1, 2, 3, 4], 5)) == 16


def test_slim_backbone_state_dict_keys_and_shapes():
    model = slim_backbone()
    state = model.state_dict()
    expected = backbone_entries(WIDTHS, D)
    assert list(state) == [k for k, _ in expected]  # same names, same order
    assert [tuple(v.shape) for v in state.values()] == [s for _, s in expected]
    # Frozen BN keeps its four vectors as buffers: no num_batches_tracked.
    assert not any(k.endswith("num_batches_tracked") for k in state)


def test_full_width_resnet50_fpn_key_set_and_shapes():
    model = resnet_fpn_backbone("resnet50", norm="frozen_bn")
    state = model.state_dict()
    expected = dict(backbone_entries(FULL_WIDTHS, 256))
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert state["body.layer4.0.downsample.0.weight"].shape == (2048, 1024, 1, 1)
    assert state["fpn.inner_blocks.3.0.weight"].shape == (256, 2048, 1, 1)


def test_bn_resnet18_state_dict_keys():
    model = resnet18(norm="bn", width=WIDTH)
    entries = basic_resnet_entries(WIDTHS, nbt=True)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == entries


# ---------------------------------------------------------------------------
# Loading a detector checkpoint.
# ---------------------------------------------------------------------------
def test_load_maskrcnn_checkpoint_strict(rng):
    checkpoint = maskrcnn_checkpoint(rng)
    model = slim_backbone()
    report = load_torchvision(model, checkpoint, strict=True)

    keys = [k for k, _ in backbone_entries(WIDTHS, D)]
    assert isinstance(report, LoadReport)
    assert report.loaded == keys
    assert report.missing == []
    assert report.unused == ["rpn.head.conv.0.0.weight",
                             "roi_heads.box_predictor.cls_score.weight"]
    assert report.renamed == {"backbone." + k: k for k in keys}
    assert_state_equal(model, {k: checkpoint["backbone." + k] for k in keys})
    assert str(report).startswith(f"loaded {len(keys)} tensors")


def test_loaded_model_matches_model_set_by_hand(rng):
    checkpoint = maskrcnn_checkpoint(rng)
    loaded = slim_backbone()
    load_torchvision(loaded, checkpoint)

    by_hand = slim_backbone()
    by_hand.body.conv1.weight = nn.Parameter(checkpoint["backbone.body.conv1.weight"].copy())
    by_hand.fpn.layer_blocks[3][0].bias = nn.Parameter(
        checkpoint["backbone.fpn.layer_blocks.3.0.bias"].copy())
    set_by_hand(by_hand, {k[len("backbone."):]: v for k, v in checkpoint.items()
                          if k.startswith("backbone.")})
    untouched = slim_backbone()

    x = minifpn.Tensor(rng.standard_normal((1, 3, 64, 80)).astype(np.float32))
    out_loaded, out_hand, out_fresh = loaded(x), by_hand(x), untouched(x)
    for level in ("P2", "P3", "P4", "P5", "P6"):
        np.testing.assert_array_equal(host(out_loaded[level]), host(out_hand[level]))
        assert not np.allclose(host(out_loaded[level]), host(out_fresh[level]))
    # Loading copies into the existing arrays: Parameters keep their identity.
    assert loaded.fpn.inner_blocks[0][0].weight is dict(
        loaded.named_parameters())["fpn.inner_blocks.0.0.weight"]


def test_load_from_npz_path(rng, tmp_path):
    checkpoint = maskrcnn_checkpoint(rng)
    path = tmp_path / "maskrcnn.npz"
    minifpn.save(dict(checkpoint), path)
    model = slim_backbone()
    report = load_torchvision(model, path)
    assert report.missing == []
    np.testing.assert_array_equal(host(model.state_dict()["fpn.layer_blocks.2.0.weight"]),
                                  checkpoint["backbone.fpn.layer_blocks.2.0.weight"])
    model2 = slim_backbone()
    load_torchvision(model2, str(path))
    assert_state_equal(model2, snapshot(model))


def test_wrapper_prefixes_are_stripped(rng):
    checkpoint = maskrcnn_checkpoint(rng)
    wrapped = OrderedDict(("module." + k, v) for k, v in checkpoint.items())  # DataParallel
    model = slim_backbone()
    report = load_torchvision(model, wrapped)
    assert report.missing == []
    assert report.renamed["module.backbone.body.conv1.weight"] == "body.conv1.weight"
    # Keys already named as in the model load as they are, not "renamed".
    plain = OrderedDict((k[len("backbone."):], v) for k, v in checkpoint.items()
                        if k.startswith("backbone."))
    report = load_torchvision(slim_backbone(), plain)
    assert report.renamed == {} and report.unused == [] and report.missing == []


def test_old_fpn_key_names_load(rng):
    checkpoint = maskrcnn_checkpoint(rng)
    old = OrderedDict()
    for key, value in checkpoint.items():  # before torchvision 0.13: no ".0" on FPN convs
        old[key.replace(".0.weight", ".weight").replace(".0.bias", ".bias")
            if ".fpn." in key else key] = value
    assert "backbone.fpn.inner_blocks.0.weight" in old
    assert "backbone.fpn.layer_blocks.3.bias" in old
    model = slim_backbone()
    report = load_torchvision(model, old, strict=True)
    assert report.missing == []
    assert report.renamed["backbone.fpn.inner_blocks.0.weight"] == "fpn.inner_blocks.0.0.weight"
    assert report.renamed["backbone.fpn.layer_blocks.3.bias"] == "fpn.layer_blocks.3.0.bias"
    np.testing.assert_array_equal(host(model.fpn.inner_blocks[2][0].weight),
                                  checkpoint["backbone.fpn.inner_blocks.2.0.weight"])


def test_num_batches_tracked_ignored_for_frozen_bn(rng):
    checkpoint = maskrcnn_checkpoint(rng)
    counters = [k[:-len("running_var")] + "num_batches_tracked" for k in checkpoint
                if k.endswith("running_var")]
    assert len(counters) == 53
    for key in counters:
        checkpoint[key] = np.array(123, dtype=np.int64)
    model = slim_backbone()
    report = load_torchvision(model, checkpoint, strict=True)
    assert report.missing == []
    assert set(counters) <= set(report.unused)
    assert not any(k.endswith("num_batches_tracked") for k in report.loaded)
    assert not any(k.endswith("num_batches_tracked") for k in model.state_dict())


def test_bn_model_loads_num_batches_tracked_and_tolerates_its_absence(rng):
    entries = basic_resnet_entries(WIDTHS, nbt=True)
    state = random_values(entries, rng)
    model = resnet18(norm="bn", width=WIDTH)
    report = load_torchvision(model, state, strict=True)
    assert report.loaded == [k for k, _ in entries] and report.unused == []
    assert int(host(model.bn1.num_batches_tracked)) == 7
    assert_state_equal(model, state)
    # An old checkpoint without the counters still loads strictly; they start at 0.
    old = OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    model = resnet18(norm="bn", width=WIDTH)
    report = load_torchvision(model, old, strict=True)
    assert report.missing == []
    assert int(host(model.layer3[0].downsample[1].num_batches_tracked)) == 0
    np.testing.assert_array_equal(host(model.layer3[0].bn2.running_mean),
                                  old["layer3.0.bn2.running_mean"])


def imagenet_resnet50_checkpoint(rng):
    """A torchvision ImageNet classifier: bare keys, BN counters and an fc head."""
    state = random_values(bottleneck_resnet_entries(WIDTHS, nbt=True), rng)
    state["fc.weight"] = rng.standard_normal((1000, 4 * WIDTHS[-1])).astype(np.float32)
    state["fc.bias"] = rng.standard_normal(1000).astype(np.float32)
    return state


def test_imagenet_checkpoint_into_bare_resnet(rng):
    state = imagenet_resnet50_checkpoint(rng)
    model = resnet50(norm="frozen_bn", width=WIDTH)
    report = load_torchvision(model, state, strict=True)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert report.unused == counters + ["fc.weight", "fc.bias"]
    assert report.missing == [] and report.renamed == {}
    assert_state_equal(model, {k: v for k, v in state.items()
                               if k not in report.unused})


def test_bare_resnet_checkpoint_into_backbone_body(rng):
    state = imagenet_resnet50_checkpoint(rng)
    model = slim_backbone()
    fpn_before = {k: v for k, v in snapshot(model).items() if k.startswith("fpn.")}
    report = load_torchvision(model, state, strict=False)
    body_keys = [k for k, _ in bottleneck_resnet_entries(WIDTHS)]
    assert report.loaded == ["body." + k for k in body_keys]
    assert report.renamed == {k: "body." + k for k in body_keys}
    assert report.missing == [k for k, _ in fpn_entries([4 * w for w in WIDTHS], D)]
    assert "fc.weight" in report.unused and "fc.bias" in report.unused
    after = snapshot(model)
    for key in body_keys:
        np.testing.assert_array_equal(after["body." + key], state[key], err_msg=key)
    for key, value in fpn_before.items():  # the FPN keeps its initialisation
        np.testing.assert_array_equal(after[key], value)
    with pytest.raises(StateDictError, match="fpn.inner_blocks.0.0.weight"):
        load_torchvision(slim_backbone(), state, strict=True)


# ---------------------------------------------------------------------------
# Errors leave the model as it was.
# ---------------------------------------------------------------------------
def test_missing_key_strict_raises_naming_it(rng):
    checkpoint = maskrcnn_checkpoint(rng)
    del checkpoint["backbone.body.layer3.2.conv2.weight"]
    model = slim_backbone()
    before = snapshot(model)
    with pytest.raises(StateDictError, match=r"body\.layer3\.2\.conv2\.weight") as info:
        load_torchvision(model, checkpoint, strict=True)
    assert info.value.missing_keys == ["body.layer3.2.conv2.weight"]
    assert_state_equal(model, before)
    # Without strict, everything else loads and the report names the gap.
    report = load_torchvision(model, checkpoint, strict=False)
    assert report.missing == ["body.layer3.2.conv2.weight"]
    after = snapshot(model)
    np.testing.assert_array_equal(after["body.layer3.2.conv2.weight"],
                                  before["body.layer3.2.conv2.weight"])
    np.testing.assert_array_equal(after["body.layer3.2.conv1.weight"],
                                  checkpoint["backbone.body.layer3.2.conv1.weight"])


@pytest.mark.parametrize("strict", [True, False])
def test_wrong_shape_raises_and_leaves_model_unchanged(rng, strict):
    checkpoint = maskrcnn_checkpoint(rng)
    key = "backbone.body.layer2.0.conv2.weight"
    assert checkpoint[key].shape == (16, 16, 3, 3)
    checkpoint[key] = np.ones((16, 16, 3, 1), np.float32)
    model = slim_backbone()
    before = snapshot(model)
    with pytest.raises(StateDictError, match=r"body\.layer2\.0\.conv2\.weight") as info:
        load_torchvision(model, checkpoint, strict=strict)
    assert info.value.mismatched_keys == [
        ("body.layer2.0.conv2.weight", (16, 16, 3, 1), (16, 16, 3, 3))
    ]
    assert_state_equal(model, before)  # nothing was loaded, not even the good tensors


# ---------------------------------------------------------------------------
# Key mapping rules.
# ---------------------------------------------------------------------------
def test_map_torchvision_keys_legacy_renames():
    model_keys = [
        "backbone.fpn.inner_blocks.0.0.weight",
        "backbone.fpn.layer_blocks.2.0.bias",
        "rpn.head.conv.0.0.weight",
        "rpn.head.conv.0.0.bias",
        "roi_heads.mask_head.0.0.weight",
        "roi_heads.mask_head.3.0.bias",
        "roi_heads.box_head.fc6.weight",
    ]
    old = {
        "backbone.fpn.inner_blocks.0.weight": np.full((2,), 1.0),
        "backbone.fpn.layer_blocks.2.bias": np.full((2,), 2.0),
        "rpn.head.conv.weight": np.full((2,), 3.0),
        "rpn.head.conv.bias": np.full((2,), 4.0),
        "roi_heads.mask_head.mask_fcn1.weight": np.full((2,), 5.0),  # 1-based → 0-based
        "roi_heads.mask_head.mask_fcn4.bias": np.full((2,), 6.0),
        "roi_heads.box_head.fc6.weight": np.full((2,), 7.0),  # unchanged name
        "roi_heads.mask_head.mask_fcn5.weight": np.full((2,), 8.0),  # no such layer
        "roi_heads.box_predictor.bbox_pred.weight": np.full((2,), 9.0),
    }
    mapped, renamed, unused = map_torchvision_keys(old, model_keys)
    assert renamed == {
        "backbone.fpn.inner_blocks.0.weight": "backbone.fpn.inner_blocks.0.0.weight",
        "backbone.fpn.layer_blocks.2.bias": "backbone.fpn.layer_blocks.2.0.bias",
        "rpn.head.conv.weight": "rpn.head.conv.0.0.weight",
        "rpn.head.conv.bias": "rpn.head.conv.0.0.bias",
        "roi_heads.mask_head.mask_fcn1.weight": "roi_heads.mask_head.0.0.weight",
        "roi_heads.mask_head.mask_fcn4.bias": "roi_heads.mask_head.3.0.bias",
    }
    assert unused == ["roi_heads.mask_head.mask_fcn5.weight",
                      "roi_heads.box_predictor.bbox_pred.weight"]
    assert set(mapped) == set(model_keys)
    assert [float(mapped[k][0]) for k in model_keys] == [1, 2, 3, 4, 5, 6, 7]
    assert all(isinstance(v, np.ndarray) for v in mapped.values())


def test_legacy_renames_leave_current_names_alone():
    current = ["fpn.inner_blocks.0.0.weight", "rpn.head.conv.0.0.bias",
               "roi_heads.mask_head.2.0.weight", "body.layer1.0.bn1.weight"]
    for key in current:
        for pattern, replacement in LEGACY_RENAMES:
            assert pattern.sub(replacement, key) == key
    mapped, renamed, unused = map_torchvision_keys({k: np.zeros(1) for k in current}, current)
    assert renamed == {} and unused == [] and list(mapped) == current


def test_map_torchvision_keys_accepts_tensors():
    mapped, _, _ = map_torchvision_keys(
        {"conv1.weight": minifpn.Tensor(np.arange(4.0))}, ["body.conv1.weight"])
    np.testing.assert_array_equal(mapped["body.conv1.weight"], np.arange(4.0))


# ---------------------------------------------------------------------------
# Converting .pth files (needs torch) and the CLI.
# ---------------------------------------------------------------------------
@pytest.fixture
def no_torch(monkeypatch):
    """Make ``import torch`` fail even where torch is installed."""
    monkeypatch.setitem(sys.modules, "torch", None)


def test_convert_checkpoint_without_torch_raises(no_torch, tmp_path):
    src = tmp_path / "model.pth"
    src.write_bytes(b"not read")
    with pytest.raises(RuntimeError, match="pip install torch"):
        convert_checkpoint(src, tmp_path / "model.npz")
    assert not (tmp_path / "model.npz").exists()


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_convert_checkpoint_really_without_torch(tmp_path):
    with pytest.raises(RuntimeError, match="pip install torch"):
        convert_checkpoint(tmp_path / "model.pth", tmp_path / "model.npz")


def test_cli_convert_without_torch_returns_2(no_torch, tmp_path, capsys):
    src, dst = tmp_path / "model.pth", tmp_path / "model.npz"
    src.write_bytes(b"not read")
    assert main(["weights", "convert", str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "pip install torch" in err
    assert not dst.exists()


def test_convert_checkpoint_round_trip_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    state = OrderedDict([
        ("conv1.weight", torch.randn(4, 3, 7, 7)),
        ("bn1.running_var", torch.rand(4) + 0.5),
        ("bn1.num_batches_tracked", torch.tensor(5)),
    ])
    src, dst = tmp_path / "model.pth", tmp_path / "model.npz"
    torch.save({"model": state}, src)  # wrapped, as detection training scripts save
    assert convert_checkpoint(src, dst) == 3
    loaded = minifpn.load(dst)
    assert list(loaded) == list(state)
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key], value.numpy())
        assert loaded[key].dtype == value.numpy().dtype
    assert main(["weights", "convert", str(src), str(tmp_path / "cli.npz")]) == 0
    assert list(minifpn.load(tmp_path / "cli.npz")) == list(state)
