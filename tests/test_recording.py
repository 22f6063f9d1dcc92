"""The recorder: what modules record is kept only inside a recording, under the module's name."""

import threading

import numpy as np
import pytest

import minifpn
from minifpn import nn
from minifpn.models import MaskRCNN, detector_parts, resnet_fpn_backbone
from minifpn.ops.poolers import map_rois_to_levels
from minifpn.recording import is_recording, record, recording


class Writer(nn.Module):
    """Records its input as "seen" and, only when asked for, an expensive "square"."""

    def __init__(self):
        super().__init__()
        self.squares = 0

    def forward(self, x):
        record(self, "seen", x)
        if is_recording(self):
            self.squares += 1
            record(self, "square", x * x)
        return x


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.left, self.right = Writer(), Writer()

    def forward(self, x):
        return self.left(x) + self.right(2 * x)


def test_nothing_is_recorded_outside_a_recording():
    pair = Pair()
    before = {name: dict(vars(m)) for name, m in pair.named_modules()}
    pair(3)
    assert pair.left.squares == 0  # is_recording said no: the expensive value was not built
    assert {name: dict(vars(m)) for name, m in pair.named_modules()} == before
    with recording(pair) as seen:
        pass
    assert seen == {}  # and nothing recorded before it was opened


def test_keys_are_the_module_names_inside_the_recorded_one():
    pair = Pair()
    with recording(pair) as seen:
        pair(3)
    assert seen == {"left.seen": 3, "left.square": 9, "right.seen": 6, "right.square": 36}
    with recording(pair.right) as seen:  # the module itself: just the value's name
        pair(3)
    assert seen == {"seen": 6, "square": 36}  # the left one is outside: not kept
    assert pair.left.squares == 1


def test_the_last_call_wins_and_values_outlive_the_block():
    writer = Writer()
    with recording(writer) as seen:
        writer(1)
        writer(2)
    writer(5)  # after the block: not recorded
    assert seen == {"seen": 2, "square": 4}


def test_nested_recordings_each_keep_what_is_inside_them():
    pair = Pair()
    with recording(pair) as outer, recording(pair.left) as inner:
        pair(1)
    assert outer == {"left.seen": 1, "left.square": 1, "right.seen": 2, "right.square": 4}
    assert inner == {"seen": 1, "square": 1}


def test_a_recording_closes_on_error_and_a_missing_key_lists_the_recorded_ones():
    writer = Writer()
    with pytest.raises(RuntimeError, match="in the block"), recording(writer) as seen:
        writer(1)
        raise RuntimeError("in the block")
    assert not is_recording(writer)
    with pytest.raises(KeyError, match=r"'levels'.*recorded: \['seen', 'square'\]"):
        seen.__getitem__("levels")


def test_a_recording_belongs_to_its_thread():
    writer = Writer()
    with recording(writer) as seen:
        thread = threading.Thread(target=writer, args=(7,))
        thread.start()
        thread.join()
    assert seen == {}


def tiny_mask_rcnn():
    minifpn.manual_seed(0)
    backbone = resnet_fpn_backbone("resnet18", width=0.125, out_channels=8)
    return MaskRCNN(backbone, min_size=64, max_size=96, box_score_thresh=0.0,
                    **detector_parts(8, 3, representation_size=16, mask_layers=(8,) * 4,
                                     mask_dim_reduced=8))


def test_a_detector_records_its_stages_and_computes_the_same_with_or_without():
    rng = np.random.default_rng(0)
    images = [rng.random((3, 64, 80)).astype(np.float32)]
    targets = [{"boxes": np.array([[4.0, 6.0, 40.0, 50.0]], np.float32),
                "labels": np.array([1]), "masks": np.ones((1, 64, 80), np.uint8)}]
    model = tiny_mask_rcnn().train()
    minifpn.manual_seed(1)
    plain = {k: v.item() for k, v in model(images, targets).items()}
    minifpn.manual_seed(1)
    with recording(model) as seen:
        recorded = {k: v.item() for k, v in model(images, targets).items()}
    assert recorded == plain  # recording changes nothing
    rois = seen["roi_heads.rois"][0]
    # the level of each sampled RoI: the k rule, evaluated on its own
    np.testing.assert_array_equal(seen["roi_heads.box_roi_pool.levels"],
                                  map_rois_to_levels(rois))
    assert seen["roi_heads.box_features"].shape[0] == len(rois)
    assert {"rpn.labels", "rpn.sampled_positive", "rpn.before_nms", "rpn.proposals",
            "roi_heads.samples", "roi_heads.mask_roi_pool.levels"} <= set(seen)
    num_positive = seen["roi_heads.samples"][0]["num_positive"]
    np.testing.assert_array_equal(seen["roi_heads.mask_roi_pool.levels"],
                                  map_rois_to_levels(rois[:num_positive]))
