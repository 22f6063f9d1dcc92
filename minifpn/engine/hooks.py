"""The pieces around each training step, as hooks (Detectron2's ``HookBase``).

The training loop (:mod:`~minifpn.engine.train`) is only this::

    hook.before_train()                        for each hook, in order
    for each iteration:
        hook.before_step()
        trainer.run_step():  batch → losses → hook.after_forward() → backward → SGD step
        hook.after_step()
    hook.after_train()

Everything else a run does is one of the hooks below, called in this order
(:func:`default_hooks`):

* :class:`StopCheck` — a Ctrl-C or SIGTERM stops the run between steps;
* :class:`DivergenceGuard` — a NaN or Inf loss stops it before the weights see it;
* :class:`MetricsWriter` — one line of ``metrics.jsonl`` per step;
* :class:`ProgressBar` — the bar, with every loss component;
* :class:`PeriodicCheckpoint` — a checkpoint every ``checkpoint_every`` steps and at the end;
* :class:`LossCurve` — ``loss_curve.png`` at the end;
* :class:`Evaluation` — COCO evaluation every ``eval_every`` steps and at the end.

**Writing one.** Override the stages you need; ``self.trainer`` is the run
in progress, whose attributes a hook may read: ``config``, ``model``,
``optimizer``, ``scheduler``, ``log`` (the
:class:`~minifpn.engine.metrics_log.MetricsLog`), ``out`` (the run folder),
``iteration`` (the step under way), ``done`` (steps finished), ``losses``
(the step's loss components as numbers, from ``after_forward`` on) and
``step_log`` (the step's line of the log, in ``after_step``) and ``comm``.
With several processes (:mod:`~minifpn.engine.distributed`) every rank runs
the hooks; only rank 0 (``trainer.comm.is_main``) writes files. Extra hooks run
after the built-in ones::

    class PrintLearningRate(HookBase):
        def after_step(self):
            print(self.trainer.done, self.trainer.scheduler.get_last_lr())

    train(config, hooks=[PrintLearningRate()])

A hook that raises stops the run as any error does: the last finished step
is checkpointed first (see :mod:`~minifpn.engine.train`).
"""

from __future__ import annotations

import math

from tqdm import tqdm

from minifpn.engine.evaluate import format_metrics_table
from minifpn.engine.metrics_log import save_loss_curve
from minifpn.serialization import write_json_atomic


class TrainingDiverged(FloatingPointError):
    """A loss became NaN or Inf; the message names it and the checkpoint kept."""

    #: Every rank of a data-parallel run sees the same (averaged) losses, so all
    #: raise it at the same iteration (:func:`~minifpn.engine.distributed.fail_together`).
    collective = True


class HookBase:
    """A piece of the training loop; override the stages you need (each does nothing here)."""

    #: The run in progress (set when the hook is registered; see the module docstring).
    trainer = None

    def before_train(self) -> None:
        """Before the first step of this run (or of this resumed part of a run)."""

    def before_step(self) -> None:
        """Before each step; ``trainer.iteration`` is the step about to run."""

    def after_forward(self) -> None:
        """After the forward pass, before the weights change (``trainer.losses`` is set)."""

    def after_step(self) -> None:
        """After each step's weight update; ``trainer.done`` counts it."""

    def after_train(self) -> None:
        """After the last step (not after a stop or an error)."""


class StopCheck(HookBase):
    """A Ctrl-C or SIGTERM (:mod:`~minifpn.engine.signals`) stops the run between steps.

    Checked before the first step (a stop while preparing leaves nothing),
    before every step, and before the final evaluation.
    """

    def before_train(self) -> None:
        self.trainer.stop.raise_if_requested(self.trainer.comm)

    def before_step(self) -> None:
        self.trainer.stop.raise_if_requested(self.trainer.comm)

    def after_train(self) -> None:
        self.trainer.stop.raise_if_requested(self.trainer.comm)


class DivergenceGuard(HookBase):
    """A NaN or Inf loss stops training before the backward pass, naming it and the step.

    The weights that produced it are not saved: the last good checkpoint is
    kept, and the message names it.
    """

    def after_forward(self) -> None:
        trainer = self.trainer
        losses = trainer.losses
        bad = [name for name, value in losses.items() if not math.isfinite(value)]
        if not bad:
            return
        kept = (f"the last good checkpoint ({trainer.checkpoint_path}, iteration "
                f"{trainer.saved_at}) is kept" if trainer.checkpoint_path.exists()
                else "no checkpoint had been written yet")
        raise TrainingDiverged(
            f"{', '.join(bad)} became {losses[bad[0]]} at iteration {trainer.iteration}; "
            f"{kept}. Try a lower --lr (now {trainer.config.lr}) or a longer warm-up."
        )


class MetricsWriter(HookBase):
    """Each step's line of ``metrics.jsonl``: iteration, learning rate, losses, gradient, time."""

    def after_step(self) -> None:
        self.trainer.log.append(self.trainer.step_log)


class ProgressBar(HookBase):
    """A tqdm bar over the run's iterations, showing the last step's loss components."""

    bar = None

    def before_train(self) -> None:
        trainer = self.trainer
        self.bar = tqdm(total=trainer.config.iters, initial=trainer.start, desc="training",
                        unit="it", disable=not trainer.progress, mininterval=1.0,
                        dynamic_ncols=True)

    def after_step(self) -> None:
        losses = self.trainer.losses
        self.bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in losses.items()},
                             refresh=False)
        self.bar.update()

    def after_train(self) -> None:
        self.bar.close()


class PeriodicCheckpoint(HookBase):
    """A checkpoint every ``config.checkpoint_every`` steps, and after the last one."""

    def after_step(self) -> None:
        trainer = self.trainer
        done, config = trainer.done, trainer.config
        if done % config.checkpoint_every == 0 or done == config.iters:
            trainer.checkpoint()


class LossCurve(HookBase):
    """``loss_curve.png``: every loss component against the iteration, after the last step."""

    def after_train(self) -> None:
        if self.trainer.comm.is_main:
            save_loss_curve(self.trainer.log.entries, self.trainer.out / "loss_curve.png")


class Evaluation(HookBase):
    """COCO evaluation every ``config.eval_every`` steps (into the log) and after the last.

    An evaluation a stopped run did not finish is done again when it resumes.
    The final one is printed and written to ``metrics.json`` (strict JSON:
    NaN as ``null``), and is what the run returns.
    """

    def due(self, done: int) -> bool:
        every, iters = self.trainer.config.eval_every, self.trainer.config.iters
        return bool(every) and done % every == 0 and 0 < done < iters

    def before_train(self) -> None:
        trainer = self.trainer
        if self.due(trainer.start) and not trainer.log.has_evaluation(trainer.start - 1):
            self.evaluate_now()  # the run stopped during this evaluation: do it again

    def after_step(self) -> None:
        if self.due(self.trainer.done):
            self.evaluate_now()

    def evaluate_now(self) -> None:
        trainer = self.trainer
        evaluation = trainer.evaluate(f"eval_{trainer.done:06d}")
        trainer.log.append({"iter": trainer.done - 1, "eval": evaluation})
        trainer.model.train()

    def after_train(self) -> None:
        trainer = self.trainer
        trainer.metrics = trainer.evaluate("eval_final")
        if trainer.comm.is_main:
            print(format_metrics_table(trainer.metrics))
            write_json_atomic(trainer.out / "metrics.json", trainer.metrics)


def default_hooks() -> list:
    """Every run's hooks, in the order they are called (see the module docstring)."""
    return [StopCheck(), DivergenceGuard(), MetricsWriter(), ProgressBar(), PeriodicCheckpoint(),
            LossCurve(), Evaluation()]
