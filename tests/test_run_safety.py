"""What a training run guarantees, case by case, in-process (the CLI as a user drives it is
in ``test_faults.py``).

* the run folder: a lock for the run's life, never a folder of the user's,
  nothing left behind by a failed start, stray temporary files removed;
* nothing finished is lost: on any error after an iteration has finished a
  checkpoint of it is written, and resuming from it gives bit for bit the
  weights of an uninterrupted run;
* ``metrics.jsonl``: a torn last line is dropped on resume, the log agrees
  with the checkpoint, a kill during an evaluation redoes it;
* checkpoints: hand-edited or damaged ones are refused naming the file;
  changed settings on resume are refused; ``--weights`` takes a run;
* arguments: out-of-range values are refused by argparse before anything runs.

The reference for "bit for bit" is an uninterrupted run with the same config.
"""

import errno
import json
import os
import signal

import numpy as np
import pytest

import minifpn
from minifpn import cli, serialization
from minifpn.data import DataError
from minifpn.engine import train as train_module
from minifpn.engine.checkpoint import load_checkpoint, load_start_weights
from minifpn.engine.config import build_model
from minifpn.engine.run_folder import MARKER, RunFolder, RunFolderBusy
from minifpn.engine.signals import StopRequest, StopRequested
from tests.test_train import MICRO, config, shapes, weights  # noqa: F401  (shapes: a fixture)


def full_message(error):
    """An error's message and its notes (what a failed run kept), as the CLI prints them."""
    return "\n".join([str(error), *getattr(error, "__notes__", [])])


def metrics_lines(run):
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


def assert_same_weights(run_a, run_b):
    a, b = weights(run_a), weights(run_b)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def straight(shapes, tmp_path_factory):  # noqa: F811
    """An uninterrupted 6-iteration run: the reference for every resumed one."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train_module.train(config(shapes, run, iters=6, checkpoint_every=100), progress=False)
    return run


def copy_of(shapes, tmp_path):  # noqa: F811
    """A private copy of the shapes set, to break."""
    import shutil

    return shutil.copytree(shapes, tmp_path / "shapes")


def first_iteration_drawing(cfg, count, index):
    """The first iteration whose batch holds training image ``index``."""
    return next(i for i in range(100) if index in train_module._batch_indices(cfg, i, count))


# ---------------------------------------------------------------------------
# the run folder
# ---------------------------------------------------------------------------
def test_a_locked_run_folder_refuses_a_second_run(shapes, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    with RunFolder(run):
        with pytest.raises(RunFolderBusy, match=rf"in use by another training process \(pid "
                                                rf"{os.getpid()} on "):
            train_module.train(config(shapes, run), progress=False)
        with pytest.raises(RunFolderBusy):
            RunFolder(run, resume=True).__enter__()
    assert sorted(p.name for p in run.iterdir()) == [MARKER]  # the refused runs wrote nothing


def test_a_run_folder_is_a_run_before_any_checkpoint(shapes, tmp_path):  # noqa: F811
    # a run killed (kill -9) before its first checkpoint: its folder is still a run
    run = tmp_path / "run"
    with RunFolder(run):
        (run / "metrics.jsonl").write_text('{"iter": 0, "loss": 1.0}\n')
    with pytest.raises(FileExistsError, match="already holds a training run"):
        train_module.train(config(shapes, run), progress=False)
    with pytest.raises(FileNotFoundError, match="stopped before writing its first checkpoint"):
        train_module.train(config(shapes, run), resume=True, progress=False)
    assert (run / "metrics.jsonl").read_text() == '{"iter": 0, "loss": 1.0}\n'


def test_a_folder_of_the_users_is_never_written(shapes, tmp_path):  # noqa: F811
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "metrics.json").write_text('{"my": "results"}')
    with pytest.raises(FileExistsError, match="is not empty and is not a minifpn run folder"):
        train_module.train(config(shapes, mine), progress=False)
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "metrics.json"]
    assert (mine / "config.json").read_text() == '{"my": "settings"}'
    with pytest.raises(FileNotFoundError, match="no minifpn run to resume"):
        train_module.train(config(shapes, mine), resume=True, progress=False)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        train_module.train(config(shapes, tmp_path / "a-file"), progress=False)


def test_a_failed_start_leaves_nothing_behind(shapes, tmp_path):  # noqa: F811
    data = copy_of(shapes, tmp_path)
    (data / "train" / "000000000002.png").write_bytes(b"not a png")
    new, empty = tmp_path / "runs" / "new", tmp_path / "empty"
    empty.mkdir()
    for out in (new, empty):
        with pytest.raises(DataError, match=r"image id 2: cannot read image"):
            train_module.train(config(data, out), progress=False)
    assert not new.exists() and (tmp_path / "runs").is_dir()  # only what the run made
    assert empty.is_dir() and list(empty.iterdir()) == []  # the user's empty folder stays


def test_stray_temporary_files_are_removed_on_resume(shapes, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    train_module.train(config(shapes, run, iters=4), progress=False, stop_after=2)
    stray = run / ".checkpoint.npz.k2j4h1.tmp"  # what a kill during a checkpoint write leaves
    stray.write_bytes(b"half a checkpoint")
    (run / MARKER).unlink()  # a run folder from before the marker: known by its checkpoint
    train_module.train(config(shapes, run, iters=4), resume=True, progress=False)
    assert not stray.exists() and "removed 1 temporary file" in capsys.readouterr().out
    assert not list(run.glob(".*.tmp"))


# ---------------------------------------------------------------------------
# nothing finished is lost
# ---------------------------------------------------------------------------
def test_a_bad_image_found_mid_run_keeps_every_finished_iteration(shapes, straight, tmp_path):  # noqa: F811,E501
    data = copy_of(shapes, tmp_path)
    cfg = config(data, tmp_path / "run", iters=6, checkpoint_every=100)
    dataset = minifpn.data.CocoDetection(data, "train", skip_empty=True, verbose=False)
    # an image first drawn after some iterations have finished
    broken_at, index = max((first_iteration_drawing(cfg, len(dataset), i), i)
                           for i in range(len(dataset)))
    assert 0 < broken_at < 6
    path = dataset.image_path(index)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # the header is fine: only reading finds it
    with pytest.raises(DataError, match=rf"image id {dataset.ids[index]}") as info:
        train_module.train(cfg, progress=False)
    assert (f"checkpoint of iteration {broken_at} (the last finished) is in"
            in full_message(info.value))
    assert load_checkpoint(tmp_path / "run")["iteration"] == broken_at
    path.write_bytes(good)  # the user restores the image and continues
    train_module.train(cfg, resume=True, progress=False)
    assert_same_weights(tmp_path / "run", straight)
    assert [m["loss"] for m in metrics_lines(tmp_path / "run")] == [
        m["loss"] for m in metrics_lines(straight)]


def test_a_full_disk_names_the_file_and_the_checkpoint_kept(shapes, tmp_path, monkeypatch):  # noqa: F811,E501
    real_append = train_module.MetricsLog.append

    def append_until_full(log, entry):
        if entry.get("iter") == 3:  # the disk fills up while iteration 3 is logged
            class FullDisk:
                def write(self, text):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                def flush(self):
                    pass

                close = flush

            log._file.close()
            log._file = FullDisk()
        return real_append(log, entry)

    monkeypatch.setattr(train_module.MetricsLog, "append", append_until_full)
    run = tmp_path / "run"
    with pytest.raises(OSError, match=r"could not append to .*metrics\.jsonl: No space left") \
            as info:
        train_module.train(config(shapes, run, iters=6, checkpoint_every=2), progress=False)
    assert "checkpoint of iteration 4 (the last finished) is in" in full_message(info.value)
    assert load_checkpoint(run)["iteration"] == 4


def test_a_failing_evaluation_is_redone_on_resume(shapes, straight, tmp_path, monkeypatch):  # noqa: F811,E501
    run = tmp_path / "run"
    cfg = config(shapes, run, iters=6, checkpoint_every=100, eval_every=3)
    real_evaluate = train_module._evaluate
    calls = []

    def evaluate_fails_once(model, dataset, cfg, prefix, progress, comm=None):
        calls.append(prefix.name)
        if len(calls) == 1:
            raise DataError("image id 7: cannot read image … (injected)")
        return real_evaluate(model, dataset, cfg, prefix, progress, comm)

    monkeypatch.setattr(train_module, "_evaluate", evaluate_fails_once)
    with pytest.raises(DataError, match="checkpoint of iteration 3 .*Continue with"):
        train_module.train(cfg, progress=False)
    train_module.train(cfg, resume=True, progress=False)
    assert calls == ["eval_000003", "eval_000003", "eval_final"]
    evals = [m["iter"] for m in metrics_lines(run) if "eval" in m]
    assert evals == [2]  # once, after iteration 2 (the third)
    assert_same_weights(run, straight)


def test_a_second_signal_waits_for_the_weight_update():
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(StopRequested, match="SIGINT again"):
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGINT)  # held back …
                finished_the_update = True  # … until the block is over
        assert finished_the_update


# ---------------------------------------------------------------------------
# metrics.jsonl
# ---------------------------------------------------------------------------
def test_a_torn_last_line_is_dropped_on_resume(shapes, straight, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    cfg = config(shapes, run, iters=6, checkpoint_every=100)
    train_module.train(cfg, progress=False, stop_after=3)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iter": 3, "lr": 0.0004, "loss": 4.1, "loss_obj')  # a crash mid-write
    train_module.train(cfg, resume=True, progress=False)
    lines = metrics_lines(run)
    assert [m["iter"] for m in lines] == [0, 1, 2, 3, 4, 5]
    assert [m["loss"] for m in lines] == [m["loss"] for m in metrics_lines(straight)]
    assert_same_weights(run, straight)


def test_the_log_is_cut_back_to_the_checkpoint_and_damage_is_named(shapes, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    cfg = config(shapes, run, iters=6, checkpoint_every=2)
    train_module.train(cfg, progress=False, stop_after=3)  # checkpoints at 2, then 3
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2, is not a log entry"):
        train_module.train(cfg, resume=True, progress=False)
    assert load_checkpoint(run)["iteration"] == 3  # nothing was changed
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    train_module.train(cfg, resume=True, progress=False, stop_after=4)
    assert [m["iter"] for m in metrics_lines(run)] == [0, 1, 2, 3]


# ---------------------------------------------------------------------------
# checkpoints and settings
# ---------------------------------------------------------------------------
def rewrite(path, edit=None, drop=None):
    """Hand-edit a checkpoint: change its table of contents, or delete an array."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    contents = json.loads(str(arrays.pop("__minifpn_meta__")))
    if edit:
        edit(contents["tree"]["dict"])
    if drop:
        del arrays[drop]
    arrays["__minifpn_meta__"] = np.array(json.dumps(contents))
    np.savez(path, **arrays)


EDITS = {
    "a missing array": (None, "model/rpn.head.cls_logits.weight",
                        "refers to array 'model/rpn.head.cls_logits.weight', which is missing"),
    "no class names": (lambda t: t["meta"]["dict"].pop("class_names"), None,
                       r"meta\['class_names'\] is None"),
    "a malformed node": (lambda t: t.update(iteration={"bogus": 1}), None,
                         "'iteration' in the top level is a malformed entry"),
    "unknown model_overrides": (
        lambda t: t["config"]["dict"]["model_overrides"]["dict"].update(foo={"value": 1}),
        None, r"unknown setting\(s\) foo"),
    "a preset given as a list": (
        lambda t: t["config"]["dict"].update(preset={"list": [{"value": "tiny"}]}), None,
        r"preset must be one of 'r50', 'small', 'tiny', got \['tiny'\]"),
}


@pytest.fixture(scope="module")
def finished(shapes, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("finished") / "run"
    train_module.train(config(shapes, run, iters=2), progress=False, stop_after=1)
    return run


@pytest.mark.parametrize("case", EDITS)
def test_a_hand_edited_checkpoint_is_refused_naming_the_file(finished, tmp_path, case, capsys):
    edit, drop, problem = EDITS[case]
    path = tmp_path / "checkpoint.npz"
    path.write_bytes((finished / "checkpoint.npz").read_bytes())
    rewrite(path, edit, drop)
    with pytest.raises(ValueError, match=problem) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert cli.main(["eval", "--checkpoint", str(path)]) == 2  # one message, no traceback
    assert str(path) in capsys.readouterr().err


def test_resume_refuses_changed_hyper_parameters(shapes, finished, tmp_path, capsys):  # noqa: F811
    saved = load_checkpoint(finished)["config"]
    for change, shown in [(dict(lr=0.5), "saved lr=0.01, given 0.5"),
                          (dict(momentum=0.5, gamma=0.5), "different momentum, gamma")]:
        with pytest.raises(ValueError, match=shown):
            train_module.train(config(shapes, finished, iters=2, **change), resume=True,
                               progress=False)
    assert cli.main(["train", "--out", str(finished), "--resume", "--lr", "0.5", "--quiet"]) == 2
    assert "different lr (saved lr=0.01, given 0.5)" in capsys.readouterr().err
    assert load_checkpoint(finished)["config"] == saved  # nothing recorded


def test_weights_may_be_a_minifpn_run(finished, tmp_path):
    checkpoint = load_checkpoint(finished)
    model = build_model("tiny", len(checkpoint["meta"]["class_names"]), "gn", MICRO)
    report = load_start_weights(model, finished)  # the run folder itself
    assert "minifpn checkpoint (iteration 1)" in report
    loaded = model.state_dict()
    assert f"loaded {len(loaded)} tensors" in report
    for key, value in checkpoint["model"].items():
        np.testing.assert_array_equal(minifpn.backend.to_numpy(loaded[key].data), value, key)
    unrelated = tmp_path / "unrelated.npz"
    serialization.save({"fc.weight": np.zeros((2, 2), np.float32)}, unrelated)
    with pytest.raises(ValueError, match=r"none of its 1 tensors fits this model"):
        load_start_weights(model, unrelated)


def test_weights_convert_never_overwrites_without_force(finished, capsys):
    before = (finished / "checkpoint.npz").read_bytes()
    assert cli.main(["weights", "convert", "model.pth", str(finished / "checkpoint.npz")]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert (finished / "checkpoint.npz").read_bytes() == before


# ---------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    ("train --checkpoint-every 0", "argument --checkpoint-every: must be a whole number ≥ 1"),
    ("train --batch-size 0", "argument --batch-size: must be a whole number ≥ 1"),
    ("train --batch-size -2", "argument --batch-size: must be a whole number ≥ 1"),
    ("train --train-images -3", "argument --train-images: must be a whole number ≥ 1"),
    ("train --epochs inf", "argument --epochs: must be a finite number > 0, got 'inf'"),
    ("train --epochs nan", "argument --epochs: must be a finite number > 0"),
    ("train --iters 0", "argument --iters: must be a whole number ≥ 1, got '0'"),
    ("train --iters -5", "argument --iters: must be a whole number ≥ 1"),
    ("train --iters 2.5", "argument --iters: must be a whole number ≥ 1, got '2.5'"),
    ("train --lr 0", "argument --lr: must be a finite number > 0"),
    ("train --seed -1", "argument --seed: must be a whole number ≥ 0"),
    ("train --eval-every -1", "argument --eval-every: must be a whole number ≥ 0"),
    ("train --device tpu", "argument --device: must be 'cpu' or 'cuda'"),
    ("eval --checkpoint x --max-images 0", "argument --max-images: must be a whole number ≥ 1"),
    ("predict --checkpoint x a.png --out o --score-threshold 2",
     "argument --score-threshold: must be a number between 0 and 1"),
    ("demo --batch-size 0", "argument --batch-size: must be a whole number ≥ 1"),
])
def test_bad_arguments_are_refused_before_anything_runs(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(argv.split())
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_setting_from_python_names_it():
    from minifpn.engine.config import TrainConfig

    for change, message in [(dict(checkpoint_every=0), "checkpoint_every must be a whole"),
                            (dict(batch_size=True), "batch_size must be a whole number"),
                            (dict(milestones=(0.9, 0.5)), "milestones must be an ascending")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**change)


def test_a_named_pipe_among_the_images_fails_the_start_instead_of_hanging(shapes, tmp_path):  # noqa: F811,E501
    data = copy_of(shapes, tmp_path)
    path = data / "train" / "000000000001.png"
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(DataError, match=r"image id 1: .*is a named pipe"):
        train_module.train(config(data, tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()
