"""Fault injection: the ``minifpn`` command driven as a user would, then broken on purpose.

Every test runs ``minifpn train`` in a subprocess (a micro model on a tiny
generated shapes set, so a whole run takes about two seconds) and checks
what a user is promised (README, "What a run guarantees"):

* **signals at random points** — SIGINT, SIGTERM or SIGKILL sent once a
  random number of iterations is logged, plus a random delay, so they land
  in a forward pass, a checkpoint write, an evaluation, …; then the run is
  continued with ``--resume`` (or started again when nothing was kept, as
  the error says). The result must equal an uninterrupted run bit for bit,
  with ``metrics.jsonl`` holding each iteration and each evaluation exactly
  once and no temporary file left;
* **concurrent runs** into one ``--out``: exactly one trains;
* **a torn metrics.jsonl** (a crash mid-line): ``--resume`` trims it;
* **a full disk** (a file-size limit makes every checkpoint write fail):
  one message naming the file and saying which checkpoint is kept.

The random points are drawn from a seeded generator, so a failure can be
reproduced.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minifpn import serialization
from tests.test_train import MICRO, shapes  # noqa: F401  (shapes: a fixture)

#: ``python -c`` program: the ``minifpn`` command with the tiny preset made micro.
RUNNER = (f"import sys; from minifpn.engine import config; "
          f"config.PRESETS['tiny'].update({MICRO!r}); "
          f"from minifpn.cli import main; sys.exit(main(sys.argv[1:]))")
ITERS, CHECKPOINT_EVERY, EVAL_EVERY = 8, 3, 4
#: Seconds any one command may take before the test calls it hung.
PATIENCE = 120


def start(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUNNER, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(process) -> tuple:
    out, err = process.communicate(timeout=PATIENCE)
    return process.returncode, out, err


def train_args(data, out, *extra):
    return ["train", "--data", data, "--out", out, "--iters", ITERS, "--checkpoint-every",
            CHECKPOINT_EVERY, "--eval-every", EVAL_EVERY, "--max-eval-images", 1, "--quiet",
            *extra]


def log_of(run) -> list:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line.strip()]


def weights(run):
    return serialization.load(run / "checkpoint.npz")["model"]


@pytest.fixture(scope="module")
def straight(shapes, tmp_path_factory):  # noqa: F811
    """The uninterrupted run every broken one must end up equal to."""
    run = tmp_path_factory.mktemp("faults") / "straight"
    code, _, err = finish(start(*train_args(shapes, run)))
    assert code == 0, err
    return run


def assert_equal_to_straight(run, straight):
    a, b = weights(run), weights(straight)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    lines = [json.loads(line) for line in log_of(run)]
    reference = [json.loads(line) for line in log_of(straight)]
    losses = [(m["iter"], m["loss"]) for m in lines if "loss" in m]
    assert losses == [(m["iter"], m["loss"]) for m in reference if "loss" in m]
    assert [m["iter"] for m in lines if "eval" in m] == [EVAL_EVERY - 1]  # once
    assert not list(run.glob(".*.tmp")), "a temporary file was left behind"


TRIALS = [(signal.SIGINT, 0), (signal.SIGINT, 1), (signal.SIGTERM, 2), (signal.SIGTERM, 3),
          (signal.SIGKILL, 4), (signal.SIGKILL, 5), (signal.SIGKILL, 6)]
#: What each signal may end a run with: stopped politely (128 + signal), killed by it
#: (before the handler was installed, or SIGKILL), or finished before it arrived.
ENDINGS = {signal.SIGINT: {0, 130}, signal.SIGTERM: {0, 143, -signal.SIGTERM},
           signal.SIGKILL: {0, -signal.SIGKILL}}


@pytest.mark.parametrize("signum, seed", TRIALS,
                         ids=[f"{signal.Signals(s).name}-{seed}" for s, seed in TRIALS])
def test_a_signal_at_a_random_point_loses_nothing(shapes, straight, tmp_path, signum, seed):  # noqa: F811,E501
    rng = np.random.default_rng(seed)
    run = tmp_path / "run"
    wait_for_lines = int(rng.integers(0, ITERS))
    delay = float(rng.uniform(0, 0.4))
    process = start(*train_args(shapes, run))
    deadline = time.monotonic() + PATIENCE
    while (len(log_of(run)) < wait_for_lines and process.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.01)
    time.sleep(delay)
    if process.poll() is None:
        process.send_signal(signum)
    code, _, err = finish(process)
    if wait_for_lines and signum != signal.SIGKILL:  # the handler was in place by then
        assert code in (0, 128 + signum), err
    assert code in ENDINGS[signum], err
    finished = sum('"loss"' in line for line in log_of(run))
    if code == 128 + signum and finished:  # a polite stop keeps every finished iteration
        assert serialization.load(run / "checkpoint.npz")["iteration"] == finished
        assert "Continue with: minifpn train --out" in err
    for _ in range(3):  # continue as the user would, until the run is complete
        if (run / "checkpoint.npz").exists():
            code, _, err = finish(start(*train_args(shapes, run, "--resume")))
        else:  # nothing kept (stopped in its first iteration): start again
            if run.exists():
                for path in run.iterdir():
                    path.unlink()
                run.rmdir()
            code, _, err = finish(start(*train_args(shapes, run)))
        if code == 0:
            break
    assert code == 0, err
    assert_equal_to_straight(run, straight)


def test_two_runs_into_one_folder_one_trains(shapes, straight, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    first, second = start(*train_args(shapes, run)), start(*train_args(shapes, run))
    (code1, _, err1), (code2, _, err2) = finish(first), finish(second)
    assert sorted([code1, code2]) == [0, 2], (err1, err2)
    refused = err2 if code2 else err1
    assert ("in use by another training process" in refused
            or "already holds a training run" in refused), refused
    assert_equal_to_straight(run, straight)
    code, _, err = finish(start(*train_args(shapes, run, "--resume")))  # complete: a no-op
    assert code == 0, err


def test_resume_while_the_run_is_still_going_is_refused(shapes, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    first = start(*train_args(shapes, run))
    deadline = time.monotonic() + PATIENCE
    while not log_of(run) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    code, _, err = finish(start(*train_args(shapes, run, "--resume")))
    still_running = first.poll() is None
    first.kill()
    finish(first)
    if still_running:  # (on a very fast machine the first run may already be done)
        assert code == 2 and f"pid {first.pid}" in err, err


def test_a_torn_metrics_log_does_not_block_resume(shapes, straight, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    process = start(*train_args(shapes, run))
    deadline = time.monotonic() + PATIENCE
    while len(log_of(run)) < 5 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    code, _, err = finish(process)
    assert code in (0, 130), err
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iter": 5, "lr": 0.001, "loss": 2.5, "loss_objec')  # a crash mid-line
    code, out, err = finish(start(*train_args(shapes, run, "--resume")))
    assert code == 0, err
    assert "dropped its torn last line" in out
    assert_equal_to_straight(run, straight)


def test_a_full_disk_is_one_message_naming_the_file_and_what_is_kept(shapes, tmp_path):  # noqa: F811,E501
    import resource

    def small_files_only():  # every checkpoint write fails as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of dying
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    run = tmp_path / "run"
    code, _, err = finish(start(*train_args(shapes, run), preexec_fn=small_files_only))
    assert code == 2, err
    assert "Traceback" not in err
    assert f"could not write {run / 'checkpoint.npz'}: File too large" in err
    assert f"could not write a checkpoint of iteration {CHECKPOINT_EVERY} either" in err
    assert "no checkpoint was written" in err
    assert len(log_of(run)) == CHECKPOINT_EVERY  # the log of the finished iterations is kept
    assert not list(run.glob(".*.tmp"))
    assert os.path.exists(run / "config.json")
