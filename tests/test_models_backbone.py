"""The bottom-up ResNet, the FPN and the two together (``minifpn.models``).

References are independent of the code under test:

* feature-map sizes from the conv arithmetic ``(n + 2p − k) // s + 1`` applied
  layer by layer, plus hand-computed golden sizes (3×200×333 → C5 7×11);
* channel counts, parameter counts and MAC counts written out by hand or
  from the published ResNet-50 / torchvision figures;
* plain-NumPy re-implementations of the blocks, the whole ResNet and the
  FPN merge: a per-position loop convolution, loop group/batch norm, a loop
  max-pool and an integer-arithmetic nearest upsample (PyTorch's rule
  ``src = floor(dst · in / out)``);
* float64 central differences (``minifpn.gradcheck``) for the backward pass.
"""

import math
from collections import OrderedDict

import numpy as np
import pytest

import minifpn
from minifpn import backend, nn
from minifpn.models import (
    BackboneWithFPN,
    BasicBlock,
    Bottleneck,
    FeaturePyramidNetwork,
    ResNet,
    resnet,
    resnet18,
    resnet50,
    resnet_fpn_backbone,
)
from minifpn.nn.normalization import make_norm
from minifpn.tools.complexity import count_macs, count_parameters

EPS = 1e-5
LEVELS = ("C2", "C3", "C4", "C5")
P_LEVELS = ("P2", "P3", "P4", "P5", "P6")


def host(value):
    """A Tensor's or raw array's values as a NumPy array."""
    return backend.to_numpy(value.data if isinstance(value, minifpn.Tensor) else value)


def image(rng, *shape, dtype=np.float64, requires_grad=False, device="cpu"):
    return minifpn.Tensor(rng.standard_normal(shape).astype(dtype),
                          requires_grad=requires_grad, device=device)


# ---------------------------------------------------------------------------
# Independent NumPy references.
# ---------------------------------------------------------------------------
def conv_size(n, k, s, p):
    """Output length of a conv / pool along one axis."""
    return (n + 2 * p - k) // s + 1


def expected_sizes(h, w):
    """C2..C5 and P6 spatial sizes, by applying each strided layer in turn."""
    h, w = conv_size(h, 7, 2, 3), conv_size(w, 7, 2, 3)  # stem conv
    h, w = conv_size(h, 3, 2, 1), conv_size(w, 3, 2, 1)  # stem max-pool
    sizes = {"C2": (h, w)}  # layer1 keeps the resolution
    for name in ("C3", "C4", "C5"):  # each later stage: a stride-2 3×3 conv, padding 1
        h, w = conv_size(h, 3, 2, 1), conv_size(w, 3, 2, 1)
        sizes[name] = (h, w)
    sizes["P6"] = (conv_size(h, 1, 2, 0), conv_size(w, 1, 2, 0))  # 1×1 max-pool, stride 2
    return sizes


def ref_conv(x, weight, bias=None, stride=1, padding=0):
    """A convolution by an explicit loop over output positions (tiny inputs only)."""
    n, c, h, w = x.shape
    o, c2, kh, kw = weight.shape
    assert c == c2
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = conv_size(h, kh, stride, padding), conv_size(w, kw, stride, padding)
    out = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xpad[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.tensordot(patch, weight, axes=([1, 2, 3], [1, 2, 3]))
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out


def ref_max_pool(x, k=3, s=2, p=1):
    n, c, h, w = x.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    ho, wo = conv_size(h, k, s, p), conv_size(w, k, s, p)
    out = np.empty((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = xpad[:, :, i * s:i * s + k, j * s:j * s + k].max(axis=(2, 3))
    return out


def ref_group_norm(x, groups, weight, bias, eps=EPS):
    n, c = x.shape[:2]
    per = c // groups
    out = np.empty_like(x)
    for b in range(n):
        for g in range(groups):
            chunk = x[b, g * per:(g + 1) * per]
            mean = chunk.sum() / chunk.size
            var = ((chunk - mean) ** 2).sum() / chunk.size
            out[b, g * per:(g + 1) * per] = (chunk - mean) / math.sqrt(var + eps)
    return out * weight.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)


def ref_channel_norm(x, mean, var, weight, bias, eps=EPS):
    out = np.empty_like(x)
    for ch in range(x.shape[1]):
        out[:, ch] = (x[:, ch] - mean[ch]) / math.sqrt(var[ch] + eps) * weight[ch] + bias[ch]
    return out


def ref_norm(module, x):
    """Apply ``module`` (a GroupNorm / BatchNorm2d / FrozenBatchNorm2d) by formula."""
    if isinstance(module, nn.GroupNorm):
        return ref_group_norm(x, module.num_groups, host(module.weight), host(module.bias))
    if isinstance(module, nn.BatchNorm2d):
        if module.training:  # batch statistics: mean and biased variance over N, H, W
            count = x.shape[0] * x.shape[2] * x.shape[3]
            mean = np.array([x[:, ch].sum() / count for ch in range(x.shape[1])])
            var = np.array([((x[:, ch] - mean[ch]) ** 2).sum() / count
                            for ch in range(x.shape[1])])
        else:
            mean, var = host(module.running_mean), host(module.running_var)
        return ref_channel_norm(x, mean, var, host(module.weight), host(module.bias))
    if isinstance(module, nn.FrozenBatchNorm2d):
        return ref_channel_norm(x, host(module.running_mean), host(module.running_var),
                                host(module.weight), host(module.bias))
    raise TypeError(type(module))


def relu(x):
    return np.where(x > 0, x, 0.0)


def ref_shortcut(block, x, stride):
    if block.downsample is None:
        return x
    conv, norm = block.downsample[0], block.downsample[1]
    return ref_norm(norm, ref_conv(x, host(conv.weight), stride=stride))


def ref_basic_block(block, x, stride):
    """relu(bn2(conv3×3(relu(bn1(conv3×3_s(x))))) + shortcut(x))."""
    out = relu(ref_norm(block.bn1, ref_conv(x, host(block.conv1.weight), stride=stride,
                                            padding=1)))
    out = ref_norm(block.bn2, ref_conv(out, host(block.conv2.weight), padding=1))
    return relu(out + ref_shortcut(block, x, stride))


def ref_bottleneck(block, x, stride):
    """1×1 → 3×3 (stride here, "v1.5") → 1×1 expand, plus the shortcut."""
    out = relu(ref_norm(block.bn1, ref_conv(x, host(block.conv1.weight))))
    out = relu(ref_norm(block.bn2, ref_conv(out, host(block.conv2.weight), stride=stride,
                                            padding=1)))
    out = ref_norm(block.bn3, ref_conv(out, host(block.conv3.weight)))
    return relu(out + ref_shortcut(block, x, stride))


def ref_resnet(model, x, block_fn):
    """The whole body: stem, then stages with strides 1, 2, 2, 2 on their first block."""
    out = relu(ref_norm(model.bn1, ref_conv(x, host(model.conv1.weight), stride=2, padding=3)))
    out = ref_max_pool(out, 3, 2, 1)
    features = OrderedDict()
    for name, stage, stride in zip(LEVELS, (model.layer1, model.layer2, model.layer3,
                                            model.layer4), (1, 2, 2, 2)):
        for j, block in enumerate(stage):
            out = block_fn(block, out, stride if j == 0 else 1)
        features[name] = out
    return features


def nearest_index(in_size, out_size):
    """PyTorch's legacy nearest: src = floor(dst · in / out), in exact integer arithmetic."""
    return np.array([(d * in_size) // out_size for d in range(out_size)])


def ref_nearest(x, size):
    rows = nearest_index(x.shape[2], size[0])
    cols = nearest_index(x.shape[3], size[1])
    return x[:, :, rows][:, :, :, cols]


def ref_fpn(fpn, feats, top_down=True, lateral=True, extra_pool=True):
    """The FPN merge of Lin et al. §3, from the module's own weights."""
    maps = [host(f) for f in feats.values()]

    def lat(i, x):
        conv = fpn.inner_blocks[i][0]
        return ref_conv(x, host(conv.weight), host(conv.bias))

    def out(i, x):
        conv = fpn.layer_blocks[i][0]
        return ref_conv(x, host(conv.weight), host(conv.bias), padding=1)

    top = len(maps) - 1
    inner = lat(len(fpn.inner_blocks) - 1, maps[top])
    results = {top: out(top, inner)}
    for i in range(top - 1, -1, -1):
        if not top_down:
            inner = lat(i, maps[i])
        elif lateral:
            inner = lat(i, maps[i]) + ref_nearest(inner, maps[i].shape[2:])
        else:
            inner = ref_nearest(inner, maps[i].shape[2:])
        results[i] = out(i, inner)
    pyramid = OrderedDict((f"P{i + 2}", results[i]) for i in range(len(maps)))
    if extra_pool:
        pyramid[f"P{len(maps) + 2}"] = results[top][:, :, ::2, ::2]
    return pyramid


def randomize(module, rng):
    """Random values in every parameter and buffer (positive variances) — so that
    norm layers are not the identity and biases are not zero."""
    for name, value in module.state_dict().items():
        if value.dtype.kind != "f":
            continue
        if name.endswith("running_var"):
            value[...] = rng.uniform(0.5, 2.0, value.shape)
        elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
            value[...] = rng.uniform(0.5, 1.5, value.shape)
        else:
            value[...] = rng.standard_normal(value.shape) * (0.5 if value.ndim == 1 else 1.0)
    return module


def rescale_convs(module):
    """Conv weights ~ N(0, 1/fan_in), so activations stay O(1) through deep stacks."""
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            sub.weight.data[...] /= math.sqrt(math.prod(sub.weight.shape[1:]))
    return module


# ---------------------------------------------------------------------------
# Shapes, strides and channels.
# ---------------------------------------------------------------------------
def test_expected_sizes_golden_values():
    # The reference helper itself, against the sizes worked out by hand.
    assert expected_sizes(200, 333) == {
        "C2": (50, 84), "C3": (25, 42), "C4": (13, 21), "C5": (7, 11), "P6": (4, 6)
    }
    assert expected_sizes(224, 224) == {
        "C2": (56, 56), "C3": (28, 28), "C4": (14, 14), "C5": (7, 7), "P6": (4, 4)
    }


# Channel counts written out by hand: round(64·w)·(1, 2, 4, 8), ×4 for Bottleneck.
CHANNELS = {
    ("resnet18", 0.125): (8, 16, 32, 64),
    ("resnet18", 0.25): (16, 32, 64, 128),
    ("resnet50", 0.125): (32, 64, 128, 256),
    ("resnet50", 0.25): (64, 128, 256, 512),
}


@pytest.mark.parametrize("name,width", [("resnet18", 0.25), ("resnet50", 0.125)])
@pytest.mark.parametrize("size", [(200, 333), (224, 224), (65, 97), (33, 40)], ids=str)
def test_backbone_output_shapes_and_strides(rng, name, width, size):
    out_channels = 8
    model = resnet_fpn_backbone(name, width=width, out_channels=out_channels)
    x = image(rng, 2, 3, *size, dtype=np.float32)
    c = model.body(x)
    p = model.fpn(c)
    sizes = expected_sizes(*size)

    assert list(c) == list(LEVELS)
    assert list(p) == list(P_LEVELS)
    for level, channels in zip(LEVELS, CHANNELS[name, width]):
        assert c[level].shape == (2, channels, *sizes[level])
        # The documented strides: sizes round up, ⌈H / s⌉.
        s = model.body.strides[level]
        assert sizes[level] == (math.ceil(size[0] / s), math.ceil(size[1] / s))
    for level in P_LEVELS:
        expected = sizes[level] if level == "P6" else sizes["C" + level[1:]]
        assert p[level].shape == (2, out_channels, *expected)
        s = model.strides[level]
        assert expected == (math.ceil(size[0] / s), math.ceil(size[1] / s))
    assert model.body.strides == {"C2": 4, "C3": 8, "C4": 16, "C5": 32}
    assert model.strides == {"P2": 4, "P3": 8, "P4": 16, "P5": 32, "P6": 64}
    assert model.out_channels == out_channels
    assert model.body.out_channels == dict(zip(LEVELS, CHANNELS[name, width]))
    # The backbone is body then fpn.
    full = model(x)
    for level in P_LEVELS:
        np.testing.assert_array_equal(host(full[level]), host(p[level]))


def test_golden_shapes_200x333(rng):
    model = resnet_fpn_backbone("resnet18", width=0.125, out_channels=4)
    p = model(image(rng, 1, 3, 200, 333, dtype=np.float32))
    assert {k: v.shape[2:] for k, v in p.items()} == {
        "P2": (50, 84), "P3": (25, 42), "P4": (13, 21), "P5": (7, 11), "P6": (4, 6)
    }


def test_forward_shapes_on_device(device, rng):
    model = resnet_fpn_backbone("resnet18", width=0.125, out_channels=8).to(device)
    x = image(rng, 1, 3, 65, 97, dtype=np.float32, device=device)
    p = model(x)
    sizes = expected_sizes(65, 97)
    for level in P_LEVELS:
        key = level if level == "P6" else "C" + level[1:]
        assert p[level].shape == (1, 8, *sizes[key])
        assert p[level].device == device
        assert p[level].dtype == np.float32
        assert np.isfinite(host(p[level])).all()


def test_full_width_channels():
    assert resnet18().out_channels == {"C2": 64, "C3": 128, "C4": 256, "C5": 512}
    body = resnet50(norm="frozen_bn")
    assert body.out_channels == {"C2": 256, "C3": 512, "C4": 1024, "C5": 2048}
    # The last conv of each stage produces those channels (Bottleneck expansion 4).
    assert [stage[-1].conv3.weight.shape[0] for stage in
            (body.layer1, body.layer2, body.layer3, body.layer4)] == [256, 512, 1024, 2048]
    assert [stage[-1].conv2.weight.shape for stage in (body.layer1, body.layer4)] == [
        (64, 64, 3, 3), (512, 512, 3, 3)
    ]
    # Blocks per stage, He et al. Table 1.
    assert [len(s) for s in (body.layer1, body.layer2, body.layer3, body.layer4)] == [3, 4, 6, 3]
    r34 = resnet("resnet34", width=0.0625)
    assert [len(s) for s in (r34.layer1, r34.layer2, r34.layer3, r34.layer4)] == [3, 4, 6, 3]
    r101 = resnet("resnet101", width=0.0625)
    assert [len(s) for s in (r101.layer1, r101.layer2, r101.layer3, r101.layer4)] == [3, 4, 23, 3]
    assert isinstance(r34.layer1[0], BasicBlock) and isinstance(r101.layer1[0], Bottleneck)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="resnet"):
        resnet("resnet19")
    with pytest.raises(ValueError, match="norm"):
        make_norm("layernorm", 8)
    with pytest.raises(ValueError):
        resnet18(norm="sync_bn", width=0.125)


# ---------------------------------------------------------------------------
# Blocks, the ResNet body and the FPN against NumPy references.
# ---------------------------------------------------------------------------
NORM_MODES = ["gn", "bn_train", "bn_eval", "frozen_bn"]


def _norm_kind(mode):
    return "bn" if mode.startswith("bn") else mode


def _prepare(module, mode, rng):
    module.to(dtype=np.float64)
    randomize(module, rng)
    rescale_convs(module)
    module.train(mode != "bn_eval")
    return module


@pytest.mark.parametrize("mode", NORM_MODES)
@pytest.mark.parametrize("stride", [1, 2])
def test_basic_block_matches_numpy(rng, mode, stride):
    norm = _norm_kind(mode)
    if stride == 1:  # identity shortcut: in == out channels
        block = BasicBlock(6, 6, 1, None, norm)
        x = rng.standard_normal((2, 6, 7, 9))
    else:  # projection shortcut: strided 1×1 conv + norm
        down = nn.Sequential(nn.Conv2d(4, 6, 1, stride=2, bias=False), make_norm(norm, 6))
        block = BasicBlock(4, 6, 2, down, norm)
        x = rng.standard_normal((2, 4, 7, 9))
    _prepare(block, mode, rng)
    expected = ref_basic_block(block, x, stride)
    out = block(minifpn.Tensor(x))
    assert out.shape == expected.shape
    np.testing.assert_allclose(host(out), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", NORM_MODES)
@pytest.mark.parametrize("stride", [1, 2])
def test_bottleneck_matches_numpy(rng, mode, stride):
    norm = _norm_kind(mode)
    if stride == 1:
        block = Bottleneck(48, 12, 1, None, norm)
        x = rng.standard_normal((2, 48, 5, 6))
    else:
        down = nn.Sequential(nn.Conv2d(20, 48, 1, stride=2, bias=False), make_norm(norm, 48))
        block = Bottleneck(20, 12, 2, down, norm)
        x = rng.standard_normal((2, 20, 7, 9))
    assert block.conv3.weight.shape == (48, 12, 1, 1)  # expansion 4
    _prepare(block, mode, rng)
    expected = ref_bottleneck(block, x, stride)
    out = block(minifpn.Tensor(x))
    assert out.shape == expected.shape
    np.testing.assert_allclose(host(out), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,block_fn,norm", [
    ("resnet18", ref_basic_block, "gn"),
    ("resnet50", ref_bottleneck, "frozen_bn"),
])
def test_resnet_body_matches_numpy(rng, name, block_fn, norm):
    model = _prepare(resnet(name, norm=norm, width=0.125), norm, rng)
    x = rng.standard_normal((1, 3, 37, 45))
    expected = ref_resnet(model, x, block_fn)
    out = model(minifpn.Tensor(x))
    assert list(out) == list(LEVELS)
    for level in LEVELS:
        assert out[level].shape == expected[level].shape
        np.testing.assert_allclose(host(out[level]), expected[level], rtol=1e-9, atol=1e-9)


def test_nearest_index_golden():
    # floor(d · 7 / 13) and floor(d · 11 / 21), worked out by hand.
    assert nearest_index(7, 13).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    assert nearest_index(11, 21).tolist() == [d // 2 for d in range(21)]
    assert nearest_index(4, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert nearest_index(3, 10).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def _c_features(rng, channels, sizes, n=1, requires_grad=False):
    return OrderedDict(
        (level, minifpn.Tensor(rng.standard_normal((n, c, *hw)), requires_grad=requires_grad))
        for level, c, hw in zip(LEVELS, channels, sizes)
    )


FPN_SIZES = {
    "odd": [(50, 84), (25, 42), (13, 21), (7, 11)],  # a 200×333 image: upsampling is not 2×
    "even": [(16, 16), (8, 8), (4, 4), (2, 2)],
    # Not from a ResNet: ratios far from 2 (3 → 10 reads rows 0,0,0,0,1,1,1,2,2,2).
    "uneven": [(20, 30), (10, 14), (3, 6), (2, 4)],
}


@pytest.mark.parametrize("sizes", ["odd", "even", "uneven"])
@pytest.mark.parametrize("top_down,lateral,extra_pool", [
    (True, True, True), (False, True, True), (True, False, True), (True, True, False),
])
def test_fpn_matches_numpy(rng, sizes, top_down, lateral, extra_pool):
    channels = (4, 5, 6, 7)
    fpn = FeaturePyramidNetwork(list(channels), 3, top_down=top_down, lateral=lateral,
                                extra_pool=extra_pool).to(dtype=np.float64)
    randomize(fpn, rng)  # non-zero biases too
    feats = _c_features(rng, channels, FPN_SIZES[sizes])
    expected = ref_fpn(fpn, feats, top_down, lateral, extra_pool)
    out = fpn(feats)
    assert list(out) == list(expected)
    for level in expected:
        assert out[level].shape == expected[level].shape
        np.testing.assert_allclose(host(out[level]), expected[level], rtol=1e-10, atol=1e-10)
    if extra_pool:
        assert out["P6"].shape[2:] == {"odd": (4, 6), "even": (1, 1), "uneven": (1, 2)}[sizes]


def test_fpn_module_layout():
    fpn = FeaturePyramidNetwork([4, 5, 6, 7], 3)
    assert [b[0].weight.shape for b in fpn.inner_blocks] == [
        (3, 4, 1, 1), (3, 5, 1, 1), (3, 6, 1, 1), (3, 7, 1, 1)
    ]
    assert [b[0].weight.shape for b in fpn.layer_blocks] == [(3, 3, 3, 3)] * 4
    assert all(b[0].bias.shape == (3,) for b in list(fpn.inner_blocks) + list(fpn.layer_blocks))
    no_lateral = FeaturePyramidNetwork([4, 5, 6, 7], 3, lateral=False)
    # C5's lateral only, at the same index (and key) as in the full FPN
    assert [k for k in no_lateral.state_dict() if k.startswith("inner")] == [
        "inner_blocks.3.0.weight", "inner_blocks.3.0.bias"
    ]
    assert no_lateral.inner_blocks[3][0].weight.shape == (3, 7, 1, 1)
    full = FeaturePyramidNetwork([4, 5, 6, 7], 3)
    no_lateral.load_state_dict(full.state_dict(), strict=False)  # weights carry over by name
    np.testing.assert_array_equal(
        no_lateral.inner_blocks[3][0].weight.numpy(), full.inner_blocks[3][0].weight.numpy()
    )
    assert len(no_lateral.layer_blocks) == 4
    no_top_down = FeaturePyramidNetwork([4, 5, 6, 7], 3, top_down=False)
    assert len(no_top_down.inner_blocks) == 4


# ---------------------------------------------------------------------------
# Ablation switches change the wiring.
# ---------------------------------------------------------------------------
def _grad_is_zero(t):
    return t.grad is None or not np.any(host(t.grad))


def _fpn_grads(rng, target, **switches):
    channels = (4, 5, 6, 7)
    fpn = FeaturePyramidNetwork(list(channels), 3, **switches).to(dtype=np.float64)
    randomize(fpn, rng)
    feats = _c_features(rng, channels, FPN_SIZES["even"], requires_grad=True)
    fpn(feats)[target].sum().backward()
    return feats


def test_top_down_false_cuts_c5_from_p3(rng):
    feats = _fpn_grads(rng, "P3", top_down=False)
    assert _grad_is_zero(feats["C5"]) and _grad_is_zero(feats["C4"])
    assert _grad_is_zero(feats["C2"])
    assert not _grad_is_zero(feats["C3"])
    # With the top-down pathway, P3 sees C5 (and C4).
    feats = _fpn_grads(rng, "P3")
    assert not _grad_is_zero(feats["C5"]) and not _grad_is_zero(feats["C4"])
    assert not _grad_is_zero(feats["C3"]) and _grad_is_zero(feats["C2"])


def test_lateral_false_cuts_c2_to_c4(rng):
    feats = _fpn_grads(rng, "P2", lateral=False)
    for level in ("C2", "C3", "C4"):
        assert _grad_is_zero(feats[level]), level
    assert not _grad_is_zero(feats["C5"])
    feats = _fpn_grads(rng, "P2")
    for level in LEVELS:
        assert not _grad_is_zero(feats[level]), level


def test_both_switches_off_raise():
    with pytest.raises(ValueError):
        FeaturePyramidNetwork([4, 5, 6, 7], 3, top_down=False, lateral=False)
    with pytest.raises(ValueError):
        resnet_fpn_backbone("resnet18", width=0.125, top_down=False, lateral=False)


def test_backbone_passes_switches_to_fpn():
    model = resnet_fpn_backbone("resnet18", width=0.125, out_channels=4, lateral=False)
    assert isinstance(model, BackboneWithFPN) and isinstance(model.body, ResNet)
    assert model.fpn.lateral is False and model.fpn.top_down is True
    assert sum(1 for _ in model.fpn.inner_blocks.parameters()) == 2  # C5's weight and bias


# ---------------------------------------------------------------------------
# Gradients: float64 central differences through a tiny ResNet + FPN.
# ---------------------------------------------------------------------------
# The network is only piecewise smooth (ReLU, max-pool): central differences are
# wrong whenever a step of eps moves some pre-activation across 0. In the slim
# ResNet-50, GroupNorm over 1-channel groups of a few pixels amplifies, so a stem
# parameter moves deep pre-activations ~100× as far as itself and eps = 1e-6
# crosses kinks (the analytic gradient agrees with differences at eps ≤ 1e-7,
# which converge there); hence its smaller step. The input size keeps every
# GroupNorm group above one value (a 32×32 ResNet-18 has 1×1 C5 maps).
@pytest.mark.parametrize("name,norm,batch,size,eps", [
    ("resnet18", "gn", 1, 48, 1e-6),
    ("resnet50", "gn", 1, 32, 1e-7),
    ("resnet18", "bn", 2, 48, 1e-6),  # BN in training mode needs > 1 value per channel
])
def test_backbone_gradcheck(rng, name, norm, batch, size, eps):
    model = resnet_fpn_backbone(name, norm=norm, width=0.0625, out_channels=8)
    model.to(dtype=np.float64).train()
    randomize(model, rng)
    rescale_convs(model)
    x = image(rng, batch, 3, size, size, requires_grad=True)
    level_weights = {k: minifpn.Tensor(np.array(rng.standard_normal())) for k in P_LEVELS}

    def fn(images):
        pyramid = model(images)
        total = None
        for level, out in pyramid.items():  # a weighted sum of every P level
            term = (out * level_weights[level]).sum()
            total = term if total is None else total + term
        return total

    last = model.body.layer4[-1]
    params = [
        model.body.conv1.weight,
        model.body.bn1.weight,
        model.body.layer1[0].conv1.weight,
        model.body.layer2[0].downsample[0].weight,
        model.body.layer3[0].bn2.bias,
        last.conv2.weight,
        model.fpn.inner_blocks[0][0].weight,
        model.fpn.inner_blocks[3][0].bias,
        model.fpn.layer_blocks[1][0].weight,
        model.fpn.layer_blocks[3][0].bias,
    ]
    assert minifpn.gradcheck(fn, [x], eps=eps, atol=1e-6, rtol=1e-4,
                             wrt=[x, *params], max_elements=4)


# ---------------------------------------------------------------------------
# freeze_at and norm options.
# ---------------------------------------------------------------------------
# Which parts each freeze_at value freezes, written out (Detectron2's FREEZE_AT).
FROZEN_PARTS = {
    0: set(),
    1: {"stem"},
    2: {"stem", "layer1"},
    3: {"stem", "layer1", "layer2"},
    4: {"stem", "layer1", "layer2", "layer3"},
    5: {"stem", "layer1", "layer2", "layer3", "layer4"},
}


def _part(param_name):
    head = param_name.split(".")[0]
    return "stem" if head in ("conv1", "bn1") else head


@pytest.mark.parametrize("freeze_at", sorted(FROZEN_PARTS))
def test_freeze_at_requires_grad(freeze_at):
    model = resnet18(norm="gn", width=0.125, freeze_at=freeze_at)
    names = [name for name, _ in model.named_parameters()]
    assert {_part(n) for n in names} == {"stem", "layer1", "layer2", "layer3", "layer4"}
    for name, param in model.named_parameters():
        assert param.requires_grad == (_part(name) not in FROZEN_PARTS[freeze_at]), name
    trainable = sum(p.numel() for n, p in model.named_parameters()
                    if _part(n) not in FROZEN_PARTS[freeze_at])
    assert count_parameters(model, trainable_only=True) == trainable


@pytest.mark.parametrize("freeze_at", [0, 2, 5])
def test_freeze_at_backward_leaves_frozen_grads_empty(rng, freeze_at):
    model = resnet_fpn_backbone("resnet18", norm="gn", width=0.125, out_channels=4,
                                freeze_at=freeze_at)
    x = image(rng, 1, 3, 32, 32, dtype=np.float32, requires_grad=True)
    pyramid = model(x)
    total = pyramid["P2"].sum()
    for level in P_LEVELS[1:]:
        total = total + pyramid[level].sum()
    total.backward()
    for name, param in model.body.named_parameters():
        frozen = _part(name) in FROZEN_PARTS[freeze_at]
        assert (param.grad is None) == frozen, name
    for name, param in model.fpn.named_parameters():  # the FPN always trains
        assert param.requires_grad and param.grad is not None, name
    assert x.grad is not None and np.any(host(x.grad))


@pytest.mark.parametrize("bad", [-1, 6])
def test_freeze_at_invalid_raises(bad):
    with pytest.raises(ValueError, match="freeze_at"):
        resnet18(width=0.125, freeze_at=bad)
    with pytest.raises(ValueError, match="freeze_at"):
        resnet_fpn_backbone("resnet18", width=0.125, freeze_at=bad)


@pytest.mark.parametrize("norm,layer_type", [
    ("gn", nn.GroupNorm), ("bn", nn.BatchNorm2d), ("frozen_bn", nn.FrozenBatchNorm2d),
])
def test_norm_option_layer_types(norm, layer_type):
    norm_types = (nn.GroupNorm, nn.BatchNorm2d, nn.FrozenBatchNorm2d)
    for name, count in (("resnet18", 1 + 2 * 8 + 3), ("resnet50", 1 + 3 * 16 + 4)):
        # stem + one per conv in each block + one per downsample (ResNet-18: layers
        # 2–4; ResNet-50: all four, as 64 ≠ 256 in layer1).
        model = resnet(name, norm=norm, width=0.125)
        norms = [m for m in model.modules() if isinstance(m, norm_types)]
        assert len(norms) == count
        assert all(type(m) is layer_type for m in norms)
        # They keep torchvision's names whatever the type.
        assert isinstance(model.bn1, layer_type)
        assert isinstance(model.layer2[0].downsample[1], layer_type)
    if norm == "frozen_bn":  # frozen BN has buffers, no parameters
        model = resnet18(norm=norm, width=0.125)
        assert all("conv" in n or "downsample.0" in n for n, _ in model.named_parameters())


def test_group_norm_group_counts():
    # gcd(32, C), worked out by hand for a few widths.
    for channels, groups in {64: 32, 256: 32, 48: 16, 24: 8, 8: 8, 4: 4, 6: 2, 3: 1}.items():
        layer = make_norm("gn", channels)
        assert isinstance(layer, nn.GroupNorm)
        assert (layer.num_groups, layer.num_channels) == (groups, channels)
    # In a model: ResNet-18 at width 0.375 has stages of 24, 48, 96, 192 channels.
    model = resnet18(norm="gn", width=0.375)
    expected = {24: 8, 48: 16, 96: 32, 192: 32}
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert {m.num_channels for m in gns} == set(expected)
    for m in gns:
        assert m.num_groups == expected[m.num_channels]


def test_norm_initialised_to_identity():
    model = resnet18(norm="gn", width=0.125)
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert np.all(host(m.weight) == 1) and np.all(host(m.bias) == 0)
    fpn = FeaturePyramidNetwork([4, 5, 6, 7], 3)
    assert all(not np.any(host(b[0].bias)) for b in fpn.layer_blocks)


# ---------------------------------------------------------------------------
# Complexity: parameters and multiply-adds.
# ---------------------------------------------------------------------------
def test_count_parameters_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),                 # 3·8·9 + 8 = 224
        nn.Conv2d(8, 4, 1, bias=False),     # 32
        nn.BatchNorm2d(4),                  # 8 (running stats are buffers)
        nn.FrozenBatchNorm2d(4),            # 0
        nn.Flatten(),
        nn.Linear(10, 5),                   # 55
    )
    assert count_parameters(model) == 224 + 32 + 8 + 55
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 32 + 8 + 55
    assert count_parameters(model) == 319
    shared = nn.Linear(3, 3)                # 12, counted once though used twice
    assert count_parameters(nn.Sequential(shared, shared)) == 12


def test_count_macs_by_hand(rng):
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)    # 9×9 → 5×5
    macs = count_macs(conv, image(rng, 2, 3, 9, 9, dtype=np.float32))
    assert macs == {"": 2 * 3 * 3 * 3 * 5 * 5 * 8}    # N·C_in·k·k·H_out·W_out·C_out

    linear = nn.Linear(10, 5)
    assert count_macs(linear, image(rng, 4, 10, dtype=np.float32)) == {"": 4 * 10 * 5}

    # Transposed conv 3×5 → 6×10, kernel 2 stride 2: every input element spreads a
    # C_out·2·2 patch, i.e. C_in·H·W·C_out·k·k MACs.
    deconv = nn.ConvTranspose2d(4, 6, 2, stride=2)
    assert count_macs(deconv, image(rng, 1, 4, 3, 5, dtype=np.float32)) == {
        "": 4 * 3 * 5 * 6 * 2 * 2
    }

    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(3, 4, 1))
    macs = count_macs(model, image(rng, 1, 2, 6, 7, dtype=np.float32))
    assert macs == {"0": 2 * 9 * 6 * 7 * 3, "2": 3 * 1 * 6 * 7 * 4}
    assert list(macs) == ["0", "2"]
    # No hooks are left behind.
    assert all(not m._forward_hooks for m in model.modules())


def _resnet50_conv_macs(h, w):
    """ResNet-50's conv MACs (He et al., Table 1, torchvision v1.5), layer by layer."""
    def conv(c_in, c_out, k, s, p, hw):
        ho, wo = conv_size(hw[0], k, s, p), conv_size(hw[1], k, s, p)
        return c_in * k * k * ho * wo * c_out, (ho, wo)

    total, hw = conv(3, 64, 7, 2, 3, (h, w))
    hw = (conv_size(hw[0], 3, 2, 1), conv_size(hw[1], 3, 2, 1))
    c_in = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for j in range(blocks):
            s = stride if j == 0 else 1
            m1, _ = conv(c_in, width, 1, 1, 0, hw)
            m2, out_hw = conv(width, width, 3, s, 1, hw)
            m3, _ = conv(width, 4 * width, 1, 1, 0, out_hw)
            total += m1 + m2 + m3
            if j == 0:
                md, _ = conv(c_in, 4 * width, 1, s, 0, hw)
                total += md
            c_in, hw = 4 * width, out_hw
    return total


def test_resnet50_fpn_complexity(rng):
    model = resnet_fpn_backbone("resnet50", norm="gn")
    # torchvision's resnet50 has 25,557,032 parameters, 2,049,000 of them in the fc.
    assert count_parameters(model.body) == 25_557_032 - 2_049_000 == 23_508_032
    # torchvision's FPN for ResNet-50 (d = 256): laterals 256·(256+512+1024+2048) + 4·256,
    # outputs 4·(256·256·9 + 256).
    assert count_parameters(model.fpn) == 3_344_384 == 256 * 3840 + 1024 + 4 * (589_824 + 256)

    macs = count_macs(model, image(rng, 1, 3, 224, 224, dtype=np.float32))
    body = sum(v for k, v in macs.items() if k.startswith("body."))
    fpn = sum(v for k, v in macs.items() if k.startswith("fpn."))
    assert body == _resnet50_conv_macs(224, 224)
    assert body == pytest.approx(4.1e9, rel=0.01)  # the published "4.1 GFLOPs" (multiply-adds)
    assert macs["body.conv1"] == 3 * 49 * 112 * 112 * 64 == 118_013_952
    # FPN: 1×1 laterals and 3×3 outputs at 56², 28², 14², 7².
    pixels = (56 * 56, 28 * 28, 14 * 14, 7 * 7)
    lateral = sum(c * 256 * n for c, n in zip((256, 512, 1024, 2048), pixels))
    output = sum(256 * 9 * 256 * n for n in pixels)
    assert fpn == lateral + output
    assert macs["fpn.layer_blocks.0.0"] == 256 * 9 * 256 * 56 * 56
