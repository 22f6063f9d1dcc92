"""The lessons' cached trained detector (minifpn.tools.trained)."""

import numpy as np
import pytest

from minifpn.engine.checkpoint import load_checkpoint
from minifpn.tools.trained import shapes_detector


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("trained")


def test_trains_once_then_loads_the_same_weights(cache):
    model, info = shapes_detector(iterations=2, fast=True, cache_dir=cache)
    assert info["trained_now"]
    assert load_checkpoint(info["run"])["iteration"] == 2
    assert set(info["metrics"]) >= {"bbox", "segm"}  # the run's final evaluation
    again, info_again = shapes_detector(iterations=2, fast=True, cache_dir=cache)
    assert not info_again["trained_now"] and info_again["run"] == info["run"]
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert not model.training


def test_without_top_down_is_another_run_with_the_pathway_off(cache):
    with_td, info = shapes_detector(iterations=2, fast=True, cache_dir=cache)
    without, info_off = shapes_detector(iterations=2, fast=True, cache_dir=cache, top_down=False)
    assert info_off["run"] != info["run"]
    assert with_td.backbone.fpn.top_down and not without.backbone.fpn.top_down
    assert info_off["config"].model_overrides == {"top_down": False}


def test_an_interrupted_run_is_finished_not_restarted(cache, monkeypatch):
    import minifpn.tools.trained as trained

    calls = []
    real_train = trained.train

    def stop_early(config, resume=False, progress=True):
        calls.append(resume)
        return real_train(config, resume=resume, progress=progress, stop_after=1)

    monkeypatch.setattr(trained, "train", stop_early)
    with pytest.raises(RuntimeError, match="stopped after 1 of 3 iterations"):
        shapes_detector(iterations=3, fast=True, cache_dir=cache, seed=1)
    monkeypatch.setattr(trained, "train", real_train)
    _, info = shapes_detector(iterations=3, fast=True, cache_dir=cache, seed=1)
    assert calls == [False] and info["trained_now"]
    assert load_checkpoint(info["run"])["iteration"] == 3
