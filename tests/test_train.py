"""The training engine: resume bit for bit, the NaN guard, run protection, Ctrl-C, the CLI.

Everything runs a micro model (a few thousand parameters, 64-pixel images) on
a tiny generated shapes set, so the whole file takes seconds.
"""

import json
import os
import signal

import numpy as np
import pytest

import minifpn
from minifpn import cli, serialization
from minifpn.data.shapes import generate_shapes
from minifpn.engine import train as train_module
from minifpn.engine.checkpoint import load_model
from minifpn.engine.config import TrainConfig

MICRO = dict(
    width=0.125, out_channels=16, min_size=64, max_size=64, representation_size=32,
    mask_layers=(16, 16, 16, 16), mask_dim_reduced=16, rpn_pre_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_train=50, rpn_post_nms_top_n_test=25,
    box_batch_size_per_image=16, box_detections_per_img=10,
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    return generate_shapes(root, num_train=6, num_val=3, seed=0, image_size=64, min_size=8,
                           max_size=40, max_objects=3, progress=False)


def config(shapes, out, **changes):
    base = dict(data=str(shapes), out=str(out), iters=4, batch_size=2, warmup_iters=2,
                checkpoint_every=2, max_eval_images=2, model_overrides=MICRO)
    return TrainConfig(**{**base, **changes})


def weights(run):
    return serialization.load(run / "checkpoint.npz")["model"]


def test_resume_continues_bit_for_bit(shapes, tmp_path):
    straight = tmp_path / "straight"
    train_module.train(config(shapes, straight, iters=4), progress=False)
    halves = tmp_path / "halves"
    train_module.train(config(shapes, halves, iters=4), progress=False, stop_after=2)
    assert serialization.load(halves / "checkpoint.npz")["iteration"] == 2
    train_module.train(config(shapes, halves, iters=4), resume=True, progress=False)
    a, b = weights(straight), weights(halves)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    first = [json.loads(line) for line in open(straight / "metrics.jsonl")]
    second = [json.loads(line) for line in open(halves / "metrics.jsonl")]
    assert [m["loss"] for m in first] == [m["loss"] for m in second]  # identical losses too


def test_a_run_folder_is_never_overwritten(shapes, tmp_path):
    run = tmp_path / "run"
    train_module.train(config(shapes, run, iters=2), progress=False)
    before = (run / "checkpoint.npz").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train_module.train(config(shapes, run, iters=2), progress=False)
    assert (run / "checkpoint.npz").read_bytes() == before


def test_resume_refuses_a_different_model(shapes, tmp_path):
    run = tmp_path / "run"
    train_module.train(config(shapes, run, iters=4), progress=False, stop_after=2)
    with pytest.raises(ValueError, match="different preset"):
        train_module.train(config(shapes, run, iters=4, preset="small"), resume=True,
                           progress=False)


def test_cli_resume_keeps_the_saved_settings(shapes, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train_module.train(config(shapes, run, iters=4), progress=False, stop_after=2)
    seen = {}
    monkeypatch.setattr(train_module._Run, "train",
                        lambda self, stop, stop_after: seen.update(cfg=self.config,
                                                                   start=self.start))
    assert cli.main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert seen["start"] == 2 and seen["cfg"].iters == 4 and seen["cfg"].data == str(shapes)
    assert seen["cfg"].model_overrides == json.loads(json.dumps(MICRO))  # as saved


def test_epochs_set_the_run_length_from_the_number_of_training_images(shapes, tmp_path):
    run = tmp_path / "run"
    # 6 training images, 2 per iteration: 1.5 epochs = 9 images = ceil(4.5) = 5 iterations
    train_module.train(config(shapes, run, epochs=1.5, checkpoint_every=100), progress=False)
    assert serialization.load(run / "checkpoint.npz")["iteration"] == 5
    lines = [json.loads(line) for line in open(run / "metrics.jsonl") if '"loss"' in line]
    assert [m["iter"] for m in lines] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="epochs must be a finite number > 0"):
        config(shapes, tmp_path / "bad", epochs=0)


def test_cli_iters_and_epochs_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--iters", "5", "--epochs", "2"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_resume_without_a_checkpoint_fails_loudly(shapes, tmp_path):
    with pytest.raises(FileNotFoundError, match="no minifpn run to resume"):
        train_module.train(config(shapes, tmp_path / "empty"), resume=True, progress=False)
    assert not (tmp_path / "empty").exists()  # nothing made


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(shapes, tmp_path,
                                                                      monkeypatch):
    run = tmp_path / "run"
    real_load = train_module._load_batch

    def poisoned(dataset, indices, cfg, iteration, *args):
        images, targets = real_load(dataset, indices, cfg, iteration, *args)
        if iteration == 3:  # an injected NaN pixel poisons every loss from here on
            images[0].data[0, 0, 0] = np.nan
        return images, targets

    monkeypatch.setattr(train_module, "_load_batch", poisoned)
    with pytest.raises(train_module.TrainingDiverged, match=r"at iteration 3.*iteration 2"):
        train_module.train(config(shapes, run, iters=6), progress=False)
    kept = serialization.load(run / "checkpoint.npz")
    assert kept["iteration"] == 2
    assert all(np.isfinite(v).all() for v in kept["model"].values())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_ctrl_c_or_sigterm_writes_a_checkpoint_and_stops(shapes, tmp_path, monkeypatch, signum):
    run = tmp_path / "run"
    real_step = minifpn.optim.SGD.step
    steps = []
    handler = signal.getsignal(signum)

    def step_then_signal(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 3:  # the user (or a scheduler) stops it during the third iteration
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(minifpn.optim.SGD, "step", step_then_signal)
    with pytest.raises(KeyboardInterrupt, match="iteration 3") as info:
        train_module.train(config(shapes, run, iters=8, checkpoint_every=100), progress=False)
    assert info.value.signum == signum  # the CLI exits with 128 + signum
    assert serialization.load(run / "checkpoint.npz")["iteration"] == 3
    assert (run / "loss_curve.png").exists()
    assert signal.getsignal(signum) is handler  # handler restored


def test_the_run_folder_holds_metrics_curve_config_and_evaluation(shapes, tmp_path):
    run = tmp_path / "run"
    metrics = train_module.train(config(shapes, run, iters=2), progress=False)
    lines = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [line["iter"] for line in lines] == [0, 1]
    assert {"loss", "loss_mask", "loss_objectness", "lr", "grad_norm"} <= lines[0].keys()
    assert (run / "loss_curve.png").stat().st_size > 1000
    assert json.load(open(run / "config.json"))["iters"] == 2
    assert "bbox" in metrics and "segm" in metrics
    def refuse(token):
        raise AssertionError(f"metrics.json holds non-standard JSON token {token}")

    saved = json.loads((run / "metrics.json").read_text(), parse_constant=refuse)
    assert saved.keys() == metrics.keys()


def test_cli_train_eval_predict_end_to_end(shapes, tmp_path, capsys):
    run = tmp_path / "cli-run"
    args = ["train", "--data", str(shapes), "--out", str(run), "--iters", "2",
            "--max-eval-images", "2", "--quiet"]
    # the micro model comes from model_overrides, which the CLI does not expose: patch the preset
    from minifpn.engine import config as config_module

    original = dict(config_module.PRESETS["tiny"])
    config_module.PRESETS["tiny"].update(MICRO)
    try:
        assert cli.main(args) == 0
        assert cli.main(["eval", "--checkpoint", str(run), "--max-images", "2"]) == 0
        image = sorted((shapes / "val").iterdir())[0]
        assert cli.main(["predict", "--checkpoint", str(run), str(image),
                         "--out", str(tmp_path / "pictures")]) == 0
    finally:
        config_module.PRESETS["tiny"].clear()
        config_module.PRESETS["tiny"].update(original)
    assert (tmp_path / "pictures" / f"{image.stem}.png").exists()
    assert "AP" in capsys.readouterr().out


def test_cli_reports_a_missing_checkpoint_clearly(tmp_path, capsys):
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_cli_reports_unknown_data_clearly(tmp_path, capsys):
    assert cli.main(["train", "--data", str(tmp_path / "nope"), "--out",
                     str(tmp_path / "run"), "--quiet"]) == 2
    assert "no such folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# training options: categories, multi-scale, colour jitter, milestone epochs
# ---------------------------------------------------------------------------
#: MICRO without its input size, which the options set instead.
MICRO_UNSIZED = {k: v for k, v in MICRO.items() if k not in ("min_size", "max_size")}
OPTIONS = dict(categories=("square", "circle"), min_size=(48, 56, 64), max_size=64,
               color_jitter=0.4, model_overrides=MICRO_UNSIZED)


def test_resume_with_the_training_options_continues_bit_for_bit(shapes, tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train_module.train(config(shapes, straight, **OPTIONS), progress=False)
    train_module.train(config(shapes, halves, **OPTIONS), progress=False, stop_after=2)
    train_module.resume_run(halves, progress=False)  # the saved settings, as the CLI does
    a, b = weights(straight), weights(halves)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    first = [json.loads(line) for line in open(straight / "metrics.jsonl")]
    second = [json.loads(line) for line in open(halves / "metrics.jsonl")]
    assert [m["loss"] for m in first] == [m["loss"] for m in second]
    # recorded in config.json and in the checkpoint; the model and labels follow them
    saved = json.load(open(halves / "config.json"))
    assert (saved["categories"], saved["min_size"], saved["max_size"], saved["color_jitter"]) \
        == (["square", "circle"], [48, 56, 64], 64, 0.4)
    model, loaded, meta = load_model(halves)
    assert (loaded.categories, loaded.min_size, loaded.max_size, loaded.color_jitter) == (
        ("square", "circle"), (48, 56, 64), 64, 0.4)
    assert meta["class_names"] == ["__background__", "square", "circle"]
    assert meta["category_ids"] == [2, 1]
    assert (model.transform.min_size, model.transform.max_size) == ((48, 56, 64), 64)
    # the options changed the run: without them the losses differ
    plain = tmp_path / "plain"
    train_module.train(config(shapes, plain), progress=False)
    assert [json.loads(line)["loss"] for line in open(plain / "metrics.jsonl")] != \
        [m["loss"] for m in first]


def test_resume_refuses_changed_training_options(shapes, tmp_path):
    run = tmp_path / "run"
    train_module.train(config(shapes, run, **OPTIONS), progress=False, stop_after=2)
    with pytest.raises(ValueError, match="different color_jitter"):
        train_module.resume_run(run, {"color_jitter": 0.2}, progress=False)


def test_milestone_epochs_drop_the_learning_rate_at_those_epochs(shapes, tmp_path):
    run = tmp_path / "run"
    # 6 images, 2 per iteration: 3 iterations an epoch; 2 epochs = 6 iterations. Epoch 1
    # starts at iteration 3, epoch 1.5 at image 9 = iteration ceil(4.5) = 5.
    train_module.train(config(shapes, run, epochs=2, milestone_epochs=(1, 1.5), lr=0.01,
                              checkpoint_every=100, max_eval_images=1), progress=False)
    assert serialization.load(run / "checkpoint.npz")["scheduler"]["milestones"] == [3, 5]
    # the log's lr is the rate after the iteration's schedule step: that of iterations 2..6
    rates = [json.loads(line)["lr"] for line in open(run / "metrics.jsonl") if '"lr"' in line]
    assert rates[1:] == pytest.approx([0.01, 0.001, 0.001, 0.0001, 0.0001])


@pytest.mark.parametrize("changes, message", [
    (dict(iters=4, milestone_epochs=(1,)), "needs the run's length in epochs"),
    (dict(epochs=2, milestone_epochs=(1, 2.5)), r"milestone_epochs \[2.5\] lie beyond"),
])
def test_milestone_epochs_errors(shapes, tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        train_module.train(config(shapes, tmp_path / "run", **changes), progress=False)
    assert not (tmp_path / "run").exists()  # nothing left behind


def test_unknown_categories_fail_before_training(shapes, tmp_path):
    with pytest.raises(ValueError, match=r"unknown category 'dog'.*1 \(circle\), 2 \(square\)"):
        train_module.train(config(shapes, tmp_path / "run", categories=("dog",)),
                           progress=False)


@pytest.mark.parametrize("changes, message", [
    (dict(color_jitter=-0.1), "color_jitter must be a number ≥ 0"),
    (dict(color_jitter=(0.1, 0.2)), "color_jitter must be"),
    (dict(min_size=(0, 64)), "min_size must be a whole number ≥ 1"),
    (dict(max_size=0), "max_size must be a whole number ≥ 1"),
    (dict(categories="person"), "categories must be a comma-separated list"),
    (dict(categories=()), "categories must be"),
    (dict(milestone_epochs=(3, 2)), "milestone_epochs must be an ascending"),
    (dict(min_size=64, model_overrides=MICRO), "min_size set both"),
])
def test_training_options_are_checked(shapes, tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        config(shapes, tmp_path, **{"model_overrides": MICRO_UNSIZED, **changes})


def test_training_options_round_trip_and_default_to_off():
    options = TrainConfig(categories=["person", 3], min_size=[224, 256], color_jitter=[0.4, 0.4,
                          0.2], milestone_epochs=[8, 11], epochs=12)
    assert options.categories == ("person", 3) and options.min_size == (224, 256)
    assert TrainConfig.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    assert options.overrides() == {"min_size": (224, 256)}
    default = TrainConfig()
    assert (default.categories, default.min_size, default.max_size, default.color_jitter,
            default.milestone_epochs) == (None, None, None, 0.0, None)
    assert default.overrides() == default.model_overrides == {}


def test_cli_training_options(shapes, tmp_path, capsys, monkeypatch):
    parse = cli.build_parser().parse_args
    args = parse(["train", "--categories", "person,3,traffic light", "--min-size", "224,256",
                  "--max-size", "400", "--color-jitter", "0.4", "--epochs", "12",
                  "--milestone-epochs", "8,11"])
    assert (args.categories, args.min_size, args.max_size, args.color_jitter,
            args.milestone_epochs) == (["person", 3, "traffic light"], [224, 256], 400, 0.4,
                                       [8.0, 11.0])
    assert parse(["train", "--min-size", "256", "--color-jitter", "0.4,0.3,0.2"]).min_size == 256
    for bad in (["--color-jitter", "-1"], ["--min-size", "0,256"], ["--color-jitter", "1,2"],
                ["--milestone-epochs", "11,8"]):
        with pytest.raises(SystemExit):
            parse(["train", *bad])
        assert "must be" in capsys.readouterr().err
    # a run on a category subset, then `minifpn eval` on the same categories
    from minifpn.engine import config as config_module

    monkeypatch.setitem(config_module.PRESETS, "tiny", {**config_module.PRESETS["tiny"], **MICRO})
    run = tmp_path / "cli-run"
    assert cli.main(["train", "--data", str(shapes), "--out", str(run), "--iters", "1",
                     "--max-eval-images", "1", "--categories", "square", "--min-size", "48,64",
                     "--color-jitter", "0.3", "--quiet"]) == 0
    saved = json.load(open(run / "config.json"))
    assert (saved["categories"], saved["min_size"], saved["color_jitter"]) == (["square"],
                                                                              [48, 64], 0.3)
    assert cli.main(["eval", "--checkpoint", str(run), "--max-images", "1"]) == 0
