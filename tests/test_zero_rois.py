"""Zero RoIs: every head, the poolers and the detector with nothing to look at.

A detector can be left with no proposals at all — after a diverged training
run, with NaN weights, or on an image where nothing scores — and must then
return empty detections instead of crashing. Each head is run on K = 0 RoIs,
forward and backward. The reference is exact: the outputs have zero rows of
the right width, and every gradient is a sum over no RoIs, i.e. zero.
"""

import numpy as np
import pytest

import minifpn
from minifpn import backend
from minifpn.models import detector_parts, resnet_fpn_backbone
from minifpn.models.box_head import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from minifpn.models.detector import FasterRCNN, MaskRCNN
from minifpn.models.mask_head import MaskRCNNHeads, MaskRCNNPredictor
from minifpn.ops import MultiScaleRoIAlign


def empty(*shape, device="cpu"):
    return minifpn.Tensor(np.zeros((0, *shape), np.float32), requires_grad=True, device=device)


HEADS = {
    "TwoMLPHead": (lambda: TwoMLPHead(8 * 7 * 7, 16), (8, 7, 7), (16,)),
    "FastRCNNConvFCHead (GroupNorm)": (
        lambda: FastRCNNConvFCHead((8, 7, 7), (8, 8), (16,), norm="gn"), (8, 7, 7), (16,)),
    "FastRCNNPredictor": (lambda: FastRCNNPredictor(16, 3), (16,), None),
    "MaskRCNNHeads": (lambda: MaskRCNNHeads(8, (8, 8)), (8, 14, 14), (8, 14, 14)),
    "MaskRCNNPredictor": (lambda: MaskRCNNPredictor(8, 8, 3), (8, 14, 14), (3, 28, 28)),
}


@pytest.mark.parametrize("name", HEADS)
def test_every_head_takes_zero_rois_forward_and_backward(name, device):
    make, in_shape, out_shape = HEADS[name]
    minifpn.manual_seed(0)
    head = make().to(device)
    x = empty(*in_shape, device=device)
    out = head(x)
    outputs = out if isinstance(out, tuple) else (out,)
    if name == "FastRCNNPredictor":  # class logits (K, 3) and deltas (K, 12)
        assert [o.shape for o in outputs] == [(0, 3), (0, 12)]
    else:
        assert [o.shape for o in outputs] == [(0, *out_shape)]
    total = sum(o.sum() for o in outputs)
    total.backward()
    assert x.grad.shape == x.shape
    for key, param in head.named_parameters():
        assert param.grad is not None, key
        np.testing.assert_array_equal(backend.to_numpy(param.grad), 0, err_msg=key)


def test_the_pooler_takes_zero_rois_forward_and_backward(device):
    rng = np.random.default_rng(0)
    features = {f"P{level}": minifpn.Tensor(
        rng.standard_normal((2, 4, 64 >> level, 64 >> level)).astype(np.float32),
        requires_grad=True, device=device) for level in (2, 3, 4, 5)}
    pooler = MultiScaleRoIAlign(output_size=7, sampling_ratio=2)
    nothing = backend.to_device(np.zeros((0, 4), np.float32), device)
    pooled = pooler(features, [nothing, nothing], (64, 64))
    assert pooled.shape == (0, 4, 7, 7)
    pooled.sum().backward()
    for name, feature in features.items():
        np.testing.assert_array_equal(backend.to_numpy(feature.grad), 0, err_msg=name)


def test_roi_heads_with_no_proposals_detect_nothing():
    from tests.test_heads import tiny_features, tiny_roi_heads

    heads = tiny_roi_heads(with_masks=True).eval()
    features = tiny_features(np.random.default_rng(0))
    nothing = np.zeros((0, 4), np.float32)
    detections, losses = heads(features, [nothing, nothing], [(64, 64), (64, 64)])
    assert losses == {}
    assert len(detections) == 2
    for detection in detections:
        assert detection["boxes"].shape == (0, 4)
        assert detection["scores"].shape == detection["labels"].shape == (0,)
        assert detection["masks"].shape[0] == 0


@pytest.mark.parametrize("kind", [FasterRCNN, MaskRCNN])
def test_a_detector_with_nan_weights_returns_empty_detections(kind):
    # NaN weights (a diverged run) make every proposal NaN; NaN boxes are dropped, so the
    # heads see no RoI at all — the 4conv1fc box head (GroupNorm) included.
    minifpn.manual_seed(0)
    backbone = resnet_fpn_backbone("resnet18", width=0.125, out_channels=16)
    extra = dict(mask_layers=(16,) * 4, mask_dim_reduced=16) if kind is MaskRCNN else {}
    parts = detector_parts(16, 4, representation_size=32, box_head="4conv1fc", **extra)
    model = kind(backbone, min_size=64, max_size=96, **parts).eval()
    for param in model.parameters():
        param.data[...] = np.nan
    image = np.random.default_rng(0).random((3, 50, 70)).astype(np.float32)
    model.return_proposals = True
    (output,) = model([image])
    assert output["proposals"].shape == (0, 4)
    assert output["boxes"].shape == (0, 4)
    assert output["scores"].shape == output["labels"].shape == (0,)
    if kind is MaskRCNN:
        assert output["masks"].shape == (0, 1, 50, 70)
