"""The training loop's hooks: the built-in ones, in order, and a user's own.

The resume, signal and fault guarantees the hooks carry are proven by
test_train.py, test_run_safety.py and test_faults.py; this file checks the
extension point itself.
"""

import json

import pytest

from minifpn import serialization
from minifpn.engine import hooks as hooks_module
from minifpn.engine import train as train_module
from minifpn.engine.hooks import HookBase
from tests.test_train import config, shapes  # noqa: F401  (shapes: a fixture)


class Spy(HookBase):
    """Writes down every stage it sees, with what the run shows it there."""

    def __init__(self):
        self.calls = []

    def before_train(self):
        self.calls.append(("before_train", self.trainer.done))

    def before_step(self):
        self.calls.append(("before_step", self.trainer.iteration))

    def after_forward(self):
        self.calls.append(("after_forward", self.trainer.iteration, dict(self.trainer.losses)))

    def after_step(self):
        # the built-in hooks ran first: the step's line is in the log already
        assert self.trainer.log.entries[-1] == self.trainer.step_log
        self.calls.append(("after_step", self.trainer.done))

    def after_train(self):
        self.calls.append(("after_train", self.trainer.done, dict(self.trainer.metrics)))


def test_the_built_in_hooks_in_the_order_they_run():
    assert [type(h).__name__ for h in hooks_module.default_hooks()] == [
        "StopCheck", "DivergenceGuard", "MetricsWriter", "ProgressBar", "PeriodicCheckpoint",
        "LossCurve", "Evaluation"]


def test_a_users_hook_sees_every_stage_of_every_step(shapes, tmp_path):  # noqa: F811
    spy = Spy()
    run = tmp_path / "run"
    metrics = train_module.train(config(shapes, run, iters=3), progress=False, hooks=[spy])
    stages = [call[0] for call in spy.calls]
    assert stages == ["before_train"] + ["before_step", "after_forward", "after_step"] * 3 + [
        "after_train"]
    assert [c[1] for c in spy.calls if c[0] == "before_step"] == [0, 1, 2]
    assert [c[1] for c in spy.calls if c[0] == "after_step"] == [1, 2, 3]
    # the losses a hook sees after the forward pass are those the log keeps
    logged = [json.loads(line) for line in open(run / "metrics.jsonl")]
    for (_, iteration, losses), line in zip([c for c in spy.calls if c[0] == "after_forward"],
                                           logged):
        assert line["iter"] == iteration
        assert losses == {k: v for k, v in line.items() if k.startswith("loss_")}
    assert spy.calls[-1] == ("after_train", 3, metrics)  # after the final evaluation


def test_a_resumed_run_calls_the_hooks_from_where_it_stopped(shapes, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    train_module.train(config(shapes, run, iters=4), progress=False, stop_after=2)
    spy = Spy()
    train_module.resume_run(run, progress=False, hooks=[spy])
    assert spy.calls[0] == ("before_train", 2)
    assert [c[1] for c in spy.calls if c[0] == "before_step"] == [2, 3]


def test_a_failing_hook_stops_the_run_with_the_last_step_kept(shapes, tmp_path):  # noqa: F811
    class FailAfterTwo(HookBase):
        def after_step(self):
            if self.trainer.done == 2:
                raise RuntimeError("my hook failed")

    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="my hook failed") as info:
        train_module.train(config(shapes, run, iters=6, checkpoint_every=100), progress=False,
                           hooks=[FailAfterTwo()])
    assert "checkpoint of iteration 2" in " ".join(info.value.__notes__)
    assert serialization.load(run / "checkpoint.npz")["iteration"] == 2
