"""The training loop: data → model → losses → SGD, with checkpoints that never lose a run.

One iteration::

    images, targets = next batch (resized inside the model; flipped at random)
    losses = model(images, targets)          # RPN + box + mask losses
    loss = Σ losses;  loss.backward()
    clip the global gradient norm; SGD step; schedule step

Around it: a progress bar with every loss component, ``metrics.jsonl``
(:mod:`~minifpn.engine.metrics_log`) and ``loss_curve.png`` in the run
folder, periodic and final COCO evaluation, and the safety nets:

* **the run folder** is locked for the run's life and never one of the
  user's (:mod:`~minifpn.engine.run_folder`);
* **bad data fails early**: every image's header is checked before the
  first iteration, and every bad file reported at once;
* **checkpoints** every ``checkpoint_every`` iterations and at the end,
  written atomically; ``resume=True`` continues bit for bit;
* **Ctrl-C or SIGTERM** finishes the current iteration, writes a checkpoint,
  and stops (a second one stops at once, still with a checkpoint of the last
  finished iteration);
* **any other error** after an iteration has finished — a bad image, a full
  disk, a failing evaluation — writes a checkpoint of the last finished
  iteration before it is raised, and the error's notes say where it is;
* **NaN/Inf losses** stop training with the component and iteration named,
  leaving the last good checkpoint untouched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minifpn import backend, optim
from minifpn.autograd import Tensor
from minifpn.engine.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    load_model_state,
    load_start_weights,
    restore_training_state,
    save_checkpoint,
)
from minifpn.engine.config import TrainConfig, build_model
from minifpn.engine.metrics_log import MetricsLog
from minifpn.engine.run_folder import RunFolder
from minifpn.engine.signals import StopRequest
from minifpn.models.transform import to_chw_float


class TrainingDiverged(FloatingPointError):
    """A loss became NaN or Inf; the message names it and the checkpoint kept."""


def resolve_data(data: str) -> Path:
    """``"shapes"`` (the embedded synthetic set), ``"coco-mini"``, or a folder path."""
    from minifpn.data import DATA_ENV, find_coco_mini, how_to_get_data

    if data == "shapes":
        from minifpn.data.shapes import shapes_root

        return Path(shapes_root())
    if data in ("coco-mini", "coco"):
        root = find_coco_mini()
        if root is None:
            raise FileNotFoundError(how_to_get_data())
        return root
    root = Path(os.path.expanduser(data))
    if not root.is_dir():
        raise FileNotFoundError(
            f"--data {data}: no such folder. Give a COCO-layout folder, 'shapes', or "
            f"'coco-mini' (or set {DATA_ENV})"
        )
    return root


def _batch_indices(config: TrainConfig, iteration: int, count: int) -> list:
    """The images of one iteration: walk a per-epoch permutation seeded by (seed, epoch).

    A pure function of the iteration, so a resumed run sees exactly the
    images the uninterrupted run would have.
    """
    indices = []
    for j in range(config.batch_size):
        position = iteration * config.batch_size + j
        epoch, offset = divmod(position, count)
        order = np.random.default_rng([config.seed, epoch]).permutation(count)
        indices.append(int(order[offset]))
    return indices


def _load_batch(dataset, indices, config: TrainConfig, iteration: int):
    from minifpn.data.transforms import random_horizontal_flip

    flip_rng = np.random.default_rng([config.seed, 7919, iteration])
    images, targets = [], []
    for index in indices:
        image, target = dataset[index]
        if config.flip:
            image, target = random_horizontal_flip(image, target, flip_rng)
        images.append(to_chw_float(image))
        targets.append(target)
    # The whole batch to the device in one copy per dtype (not one per array).
    keys = [[k for k, v in t.items() if isinstance(v, np.ndarray)] for t in targets]
    arrays = images + [t[k] for t, names in zip(targets, keys) for k in names]
    on_device = iter(backend.to_device_many(arrays, config.device))
    images = [Tensor(next(on_device)) for _ in images]
    targets = [{**t, **{k: next(on_device) for k in names}} for t, names in zip(targets, keys)]
    return images, targets


def save_loss_curve(metrics: list, path: Path) -> None:
    """Plot each loss component (and their total) against the iteration into a PNG."""
    from minifpn.viz import plot_loss_curves, save_figure

    rows = [m for m in metrics if "loss" in m]
    if not rows:
        return
    names = [k for k in rows[0] if k.startswith("loss_")]
    fig = plot_loss_curves({n: [m[n] for m in rows] for n in names},
                           smooth=max(1, len(rows) // 50), total=True, logy=True,
                           title=f"training losses ({len(rows)} iterations)")
    save_figure(fig, path)




#: Settings a resumed run may change: how long it runs, where, and what it reports.
#: Everything else defines the model, the data order or the optimisation, and must
#: match the checkpoint. (A changed ``iters`` keeps the schedule's milestones where the
#: original length put them: they are part of the saved schedule.)
RESUME_MAY_CHANGE = ("iters", "epochs", "device", "checkpoint_every", "eval_every",
                     "max_eval_images", "eval_split", "out")


def check_resume_config(saved: dict, config: TrainConfig) -> None:
    """Refuse to resume with a changed setting outside :data:`RESUME_MAY_CHANGE`."""
    given = json.loads(json.dumps(config.to_dict()))  # tuples → lists, as saved
    changed = [k for k in given if k not in RESUME_MAY_CHANGE and saved.get(k) != given[k]]
    if changed:
        raise ValueError(
            f"cannot resume {config.out} with a different {', '.join(changed)} ("
            + ", ".join(f"saved {k}={saved.get(k)!r}, given {given[k]!r}" for k in changed)
            + "): the checkpoint's weights, optimiser and schedule belong to the saved "
            "settings. Resume without changing them, or start a new run (another --out) from "
            f"this one's weights with --weights {config.out}"
        )


def train(config: TrainConfig, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> dict:
    """Run (or resume) a training run; returns the final evaluation metrics.

    Args:
        config: the run's settings. To resume, pass the checkpoint's config
            (``load_checkpoint(out)["config"]``), changed only in
            :data:`RESUME_MAY_CHANGE`.
        resume: continue from ``config.out``'s checkpoint, bit for bit.
        stop_after: stop with a checkpoint once this many iterations are done,
            exactly as an interruption would (the schedule still spans ``iters``).

    What a run guarantees (the README's "What a run guarantees" in full):
    the run folder is locked for the run's life (:mod:`~minifpn.engine.run_folder`);
    every image is checked before the first iteration; on *any* error or
    stop after an iteration has finished, a checkpoint of the last finished
    iteration is written before the error is raised (the error's notes say
    where), except after a NaN loss, when the last good checkpoint is kept;
    ``metrics.jsonl`` always agrees with the checkpoint on resume.

    Raises:
        FileExistsError: ``config.out`` is a run already (and ``resume`` is
            False) or a non-empty folder that is not a run.
        FileNotFoundError: ``resume`` is True but there is no checkpoint.
        RunFolderBusy: another process is training in ``config.out``.
        TrainingDiverged: a loss became NaN/Inf (the last good checkpoint is kept).
        StopRequested: after Ctrl-C or SIGTERM, once the checkpoint is written
            (:mod:`~minifpn.engine.signals`).
    """
    with StopRequest() as stop, RunFolder(config.out, resume) as folder:
        return _run(stop, folder, config, {}, progress, stop_after)


def resume_run(out, changes: dict | None = None, progress: bool = True,
               stop_after: int | None = None) -> dict:
    """Continue the run in ``out`` with its saved settings, changed by ``changes``.

    What ``minifpn train --out OUT --resume [--iters N …]`` calls: the saved
    config is read under the run folder's lock (so a run still going is
    reported as such), and ``changes`` must stay within
    :data:`RESUME_MAY_CHANGE`. Otherwise as :func:`train` with ``resume=True``.
    """
    with StopRequest() as stop, RunFolder(out, resume=True) as folder:
        changes = {**(changes or {}), "out": str(out)}
        return _run(stop, folder, None, changes, progress, stop_after)


def _run(stop, folder, config, changes, progress, stop_after) -> dict:
    """Prepare and train in a held run folder; on any error, keep what is finished.

    The stop request is in place before the folder is entered: a Ctrl-C or
    SIGTERM while preparing ends the run at the first check, leaving nothing.
    """
    run = _Run(config, folder, progress)
    try:
        run.prepare(changes)
        return run.train(stop, stop_after)
    except BaseException as error:
        try:
            run.salvage(error)
        except Exception as failure:  # never hide the error itself
            _add_note(error, f"(keeping what was finished failed too: {failure})")
        raise
    finally:
        run.close()


class _Run:
    """One training run's state, so that an error anywhere can save what is finished."""

    def __init__(self, config: TrainConfig, folder: RunFolder, progress: bool):
        self.config, self.folder, self.progress = config, folder, progress
        self.out = folder.path
        self.checkpoint_path = self.out / CHECKPOINT_NAME
        self.resume = folder.resume
        self.log = None
        self.start = self.done = self.saved_at = 0
        self.consistent = True  # False while the weights are being updated
        self.rng_state = None  # the random state the iteration after `done` starts from

    # -- before the first iteration -------------------------------------------------------
    def prepare(self, changes: dict) -> None:
        """Data, checks, model, optimiser — and, to resume, the checkpoint's state.

        Without a config (:func:`resume_run`), the saved one with ``changes``.
        """
        from minifpn.data.coco import CocoDetection
        from minifpn.engine.evaluate import write_json_atomic

        checkpoint = None
        if self.resume:
            if not self.checkpoint_path.exists():
                raise FileNotFoundError(
                    f"{self.out} holds a run that stopped before writing its first checkpoint: "
                    "nothing to resume. Start a new run in another --out (or delete this folder)"
                )
            checkpoint = load_checkpoint(self.checkpoint_path, for_resume=True)
            if self.config is None:
                self.config = TrainConfig.from_dict({**checkpoint["config"], **changes})
            check_resume_config(checkpoint["config"], self.config)
        config = self.config
        root = resolve_data(config.data)
        self.dataset = CocoDetection(root, "train", skip_empty=True, with_masks=True)
        self.count = count = (len(self.dataset) if config.train_images is None
                              else min(config.train_images, len(self.dataset)))
        if count == 0:
            raise ValueError(f"{root}: no training images with annotations")
        self.eval_dataset = CocoDetection(root, config.eval_split, verbose=False)
        # Bad data fails now, all of it at once, not at the iteration that first draws it.
        self.dataset.check_images(count, progress=self.progress)
        self.eval_dataset.check_images(config.max_eval_images, progress=self.progress)
        if config.epochs is not None:  # the length in passes over the data, as iterations
            iters = max(1, math.ceil(config.epochs * count / config.batch_size))
            print(f"{config.epochs:g} epochs of {count} images at {config.batch_size} per "
                  f"iteration = {iters} iterations")
            self.config = config = replace(config, iters=iters)

        backend.manual_seed(config.seed)
        self.model = build_model(config.preset, len(self.dataset.class_names), config.norm,
                                 config.model_overrides)
        if config.weights and checkpoint is None:
            print(load_start_weights(self.model, config.weights, self.dataset.class_names))
        self.model.to(config.device)
        self.optimizer = optim.SGD(self.model.parameters(), lr=config.lr,
                                   momentum=config.momentum, weight_decay=config.weight_decay)
        milestones = sorted({max(1, int(config.iters * m)) for m in config.milestones})
        self.scheduler = optim.WarmupMultiStepLR(
            self.optimizer, milestones, config.gamma,
            warmup_iters=min(config.warmup_iters, config.iters))
        if checkpoint is not None:
            load_model_state(self.model, checkpoint)
            restore_training_state(checkpoint, self.optimizer, self.scheduler)
            self.start = self.done = self.saved_at = int(checkpoint["iteration"])
            print(f"resuming {self.out} at iteration {self.start} of {config.iters}")
        self.rng_state = backend.get_rng_state()
        self.meta = {"class_names": self.dataset.class_names,
                     "category_ids": self.dataset.category_ids, "data": str(root)}
        write_json_atomic(self.out / "config.json", config.to_dict())
        self.log = MetricsLog(self.out / "metrics.jsonl", self.start)

    # -- the loop -------------------------------------------------------------------------
    def train(self, stop: StopRequest, stop_after: int | None) -> dict:
        from minifpn.engine.evaluate import format_metrics_table, write_json_atomic

        config, model = self.config, self.model
        stop.raise_if_requested()
        if self._evaluation_due(self.start) and not self.log.has_evaluation(self.start - 1):
            self._evaluate_now()  # the run stopped during this evaluation: do it again
        model.train()
        bar = tqdm(range(self.start, config.iters), initial=self.start, total=config.iters,
                   desc="training", unit="it", disable=not self.progress, mininterval=1.0,
                   dynamic_ncols=True)
        for iteration in bar:
            stop.raise_if_requested()
            values = self._step(iteration, stop)
            bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in values.items()},
                            refresh=False)
            if self.done % config.checkpoint_every == 0 or self.done == config.iters:
                self.checkpoint()
            if self._evaluation_due(self.done):
                self._evaluate_now()
            if self.done == stop_after:
                if self.saved_at != self.done:
                    self.checkpoint()
                save_loss_curve(self.log.entries, self.out / "loss_curve.png")
                print(f"stopped at iteration {self.done}; checkpoint written to "
                      f"{self.checkpoint_path}. Continue with: {self._resume_command()}")
                return {}
        bar.close()
        stop.raise_if_requested()
        save_loss_curve(self.log.entries, self.out / "loss_curve.png")
        metrics = _evaluate(model, self.eval_dataset, config, self.out / "eval_final",
                            self.progress)
        print(format_metrics_table(metrics))
        write_json_atomic(self.out / "metrics.json", metrics)  # strict JSON: NaN → null
        return metrics

    def _step(self, iteration: int, stop: StopRequest) -> dict:
        """One iteration: batch → losses → backward → clipped SGD step; returns the losses."""
        config, model = self.config, self.model
        began = time.perf_counter()
        images, targets = _load_batch(self.dataset, _batch_indices(config, iteration, self.count),
                                      config, iteration)
        losses = model(images, targets)
        total = sum(losses.values())
        # One device → host copy for every number logged (not one per loss).
        xp = backend.get_array_module(total.data)
        numbers = xp.stack([total.data] + [loss.data for loss in losses.values()]).tolist()
        total_value, values = numbers[0], dict(zip(losses, numbers[1:]))
        bad = [name for name, v in values.items() if not math.isfinite(v)]
        if bad:
            kept = (f"the last good checkpoint ({self.checkpoint_path}, iteration "
                    f"{self.saved_at}) is kept" if self.checkpoint_path.exists()
                    else "no checkpoint had been written yet")
            raise TrainingDiverged(
                f"{', '.join(bad)} became {values[bad[0]]} at iteration {iteration}; "
                f"{kept}. Try a lower --lr (now {config.lr}) or a longer warm-up."
            )
        self.optimizer.zero_grad()
        total.backward()
        grad_norm = optim.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
        with stop.deferred():  # the weights change: no iteration may end half-way through
            self.consistent = False
            self.optimizer.step()
            self.scheduler.step()
            self.done = iteration + 1
            self.rng_state = backend.get_rng_state()
            self.consistent = True
        self.log.append({"iter": iteration, "lr": self.scheduler.get_last_lr()[0],
                         "loss": total_value, **values, "grad_norm": float(grad_norm),
                         "time": round(time.perf_counter() - began, 4)})
        return values

    def _evaluation_due(self, done: int) -> bool:
        every = self.config.eval_every
        return bool(every) and done % every == 0 and 0 < done < self.config.iters

    def _evaluate_now(self) -> None:
        evaluation = _evaluate(self.model, self.eval_dataset, self.config,
                               self.out / f"eval_{self.done:06d}", self.progress)
        self.log.append({"iter": self.done - 1, "eval": evaluation})
        self.model.train()

    def checkpoint(self) -> None:
        """Write the checkpoint of the last finished iteration (``self.done``)."""
        save_checkpoint(self.checkpoint_path, self.model, self.optimizer, self.scheduler,
                        self.done, self.config.to_dict(), self.meta, rng_state=self.rng_state)
        self.saved_at = self.done

    def _resume_command(self) -> str:
        return f"minifpn train --out {self.out} --resume"

    # -- when anything goes wrong ---------------------------------------------------------
    def salvage(self, error: BaseException) -> None:
        """Keep what is finished: a checkpoint of the last finished iteration, and say so.

        The note added to ``error`` names the checkpoint kept and how to
        continue. A new run that finished no iteration leaves nothing behind.
        """
        if self.done == self.start:  # no iteration finished: nothing new to keep
            if not self.resume:
                self.folder.discard()
            return
        if isinstance(error, TrainingDiverged):
            return  # its message names the last good checkpoint, kept on purpose
        note = None
        if not self.consistent:
            note = "the weights were being updated when it happened, so they are not saved"
        elif self.done > self.saved_at:
            try:
                self.checkpoint()
            except BaseException as second:  # a full disk fails this write too
                note = f"could not write a checkpoint of iteration {self.done} either ({second})"
        with contextlib.suppress(Exception):
            save_loss_curve(self.log.entries, self.out / "loss_curve.png")
        kept = (f"checkpoint of iteration {self.saved_at} (the last finished"
                f"{'' if self.saved_at == self.done else ' one saved'}) is in "
                f"{self.checkpoint_path}" if self.checkpoint_path.exists() and self.saved_at
                else "no checkpoint was written")
        _add_note(error, "; ".join(filter(None, [note, kept]))
                  + f". Continue with: {self._resume_command()}")

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def _add_note(error: BaseException, note: str) -> None:
    """PEP 678 notes (``BaseException.add_note``, Python 3.11+; set by hand before)."""
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:
        error.__notes__ = [*getattr(error, "__notes__", []), note]


def _evaluate(model, dataset, config: TrainConfig, prefix: Path, progress: bool) -> dict:
    from minifpn.engine.evaluate import evaluate_model

    return evaluate_model(model, dataset, max_images=config.max_eval_images,
                          device=config.device,
                          results_path=Path(f"{prefix}_results.json"), progress=progress)
