"""The paper's Table 1 variants (``minifpn.tools.ablations``): what each RPN sees.

Checked against hand-computed counts: a 64 × 96 image has a 4 × 6 C4 map
(stride 16) and a 16 × 24 P2 map (stride 4); single-map variants put 5 scales
× 3 ratios = 15 anchors on each cell, the pyramid ones 3 per cell on 5 levels.
"""

import numpy as np
import pytest

import minifpn
from minifpn.recording import recording
from minifpn.tools.ablations import PAPER_AR1K, VARIANTS, table1_rpn

TINY = dict(backbone="resnet18", width=0.125, out_channels=16, min_size=64, max_size=96,
            anchor_sizes=(16, 32, 64, 128, 256))


def _batch():
    rng = np.random.default_rng(0)
    image = minifpn.Tensor(rng.uniform(0, 1, (3, 64, 96)).astype(np.float32))
    target = {"boxes": np.array([[10, 12, 40, 50], [50, 5, 90, 30]], np.float32),
              "labels": np.array([1, 1])}
    return [image], [target]


def test_the_paper_rows_are_all_there():
    assert set(PAPER_AR1K) == set(VARIANTS)
    assert PAPER_AR1K["FPN"] == 56.3 and PAPER_AR1K["C4"] == 48.3
    assert max(PAPER_AR1K, key=PAPER_AR1K.get) == "FPN"
    with pytest.raises(ValueError, match="unknown variant"):
        table1_rpn("P3 only", **TINY)


@pytest.mark.parametrize("variant, levels, anchors", [
    ("C4", ["C4"], 4 * 6 * 15),
    ("P2 only", ["P2"], 16 * 24 * 15),
    ("FPN", ["P2", "P3", "P4", "P5", "P6"], 3 * (16 * 24 + 8 * 12 + 4 * 6 + 2 * 3 + 1 * 2)),
    ("no top-down", ["P2", "P3", "P4", "P5", "P6"], 3 * (384 + 96 + 24 + 6 + 2)),
    ("no lateral", ["P2", "P3", "P4", "P5", "P6"], 3 * (384 + 96 + 24 + 6 + 2)),
])
def test_each_variant_sees_its_levels_and_trains(variant, levels, anchors):
    minifpn.manual_seed(0)
    model = table1_rpn(variant, **TINY)
    images, targets = _batch()
    model.train()
    with recording(model) as seen:
        losses = model(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"}
    assert sum(len(a) for a in seen["rpn.anchors_per_level"]) == anchors
    features = model.backbone(minifpn.Tensor(np.zeros((1, 3, 64, 96), np.float32)))
    assert list(features) == levels
    sum(losses.values()).backward()
    assert all(np.isfinite(p.grad).all() for p in model.rpn.parameters())
    model.eval()
    (out,) = model(images)
    assert out["boxes"].shape[1] == 4 and len(out["boxes"]) > 0


def test_p2_only_trains_the_whole_top_down_path_but_no_other_output_conv():
    minifpn.manual_seed(0)
    model = table1_rpn("P2 only", **TINY)
    images, targets = _batch()
    sum(model(images, targets).values()).backward()
    fpn = model.backbone.fpn
    assert fpn.layer_blocks[0][0].weight.grad is not None
    assert all(fpn.layer_blocks[i][0].weight.grad is None for i in (1, 2, 3))  # P3..P5 unused
    assert all(fpn.inner_blocks[i][0].weight.grad is not None for i in range(4))  # C2..C5 reach P2


def test_variants_share_weight_names_so_weights_carry_over():
    keys = {v: set(table1_rpn(v, **TINY).state_dict()) for v in VARIANTS}
    assert keys["P2 only"] == keys["FPN"]
    assert {k for k in keys["C4"] if k.startswith("backbone.body.")} == \
           {k for k in keys["FPN"] if k.startswith("backbone.body.")}
