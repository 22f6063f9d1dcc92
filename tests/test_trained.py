"""The lessons' cached trained detector (minifpn.tools.trained)."""

import numpy as np
import pytest

from minifpn.engine.checkpoint import load_checkpoint
from minifpn.tools.trained import shapes_detector
from tests.test_train import MICRO, shapes  # noqa: F401 (the shapes fixture)


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


def test_person_detector_pretrains_then_trains_once_and_refuses_another_recipe(
        shapes, cache, monkeypatch):  # noqa: F811
    import minifpn.tools.trained as trained
    from minifpn.engine import config as config_module

    # the recipe on the shapes (no people there: the circles stand in), a micro model
    monkeypatch.setitem(config_module.PRESETS, "tiny", {**config_module.PRESETS["tiny"], **MICRO})
    monkeypatch.setattr(trained, "PERSON_RECIPE", {**trained.PERSON_RECIPE,
                                                   "min_size": (48, 64), "max_size": 64})
    monkeypatch.setattr(trained, "FAST_PRETRAIN", {"epochs": 1, "max_images": 3,
                                                   "crop_size": 36, "size": 32, "min_side": 8})
    model, info = trained.person_detector(fast=True, data=str(shapes), cache_dir=cache,
                                          category="circle")
    pre_dir, out = trained.person_dirs(str(shapes), cache)
    assert info["trained_now"]
    assert info["run"].name == out.name.replace("person", "circle") + "-fast"
    assert info["config"].weights == str(pre_dir.with_name(pre_dir.name + "-fast") / "backbone.npz")
    assert info["config"].categories == ("circle",) and info["config"].copy_paste == 0.5
    assert info["pretrain"]["categories"] == 3 and info["class_names"][1:] == ["circle"]
    _, again = trained.person_detector(fast=True, data=str(shapes), cache_dir=cache,
                                       category="circle")
    assert not again["trained_now"]
    # a finished run of another recipe in the folder is not taken for this one
    monkeypatch.setattr(trained, "PERSON_RECIPE", {**trained.PERSON_RECIPE, "copy_paste": 0.25})
    with pytest.raises(ValueError, match="other settings.*copy_paste=0.5, not 0.25"):
        trained.person_detector(fast=True, data=str(shapes), cache_dir=cache, category="circle")
