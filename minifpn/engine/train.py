"""The training loop: data → model → losses → SGD, with checkpoints that never lose a run.

A run is three parts, each a method of :class:`_Run` you can read on its own:

1. **setup** (:meth:`_Run.prepare`): the checkpoint to resume from, the data
   (every image checked), the model, the optimiser and the schedule;
2. **the loop** (:meth:`_Run.train`): for each iteration, the hooks'
   ``before_step``, one step, the hooks' ``after_step`` — where one step
   (:meth:`_Run.run_step`) is::

       images, targets = next batch (resized inside the model; flipped at random)
       losses = model(images, targets)          # RPN + box + mask losses
       loss = Σ losses;  loss.backward()
       clip the global gradient norm; SGD step; schedule step

3. **the hooks** (:mod:`~minifpn.engine.hooks`): everything around the step —
   the stop and NaN checks, ``metrics.jsonl`` (:mod:`~minifpn.engine.metrics_log`),
   the progress bar, checkpoints, ``loss_curve.png``, periodic and final COCO
   evaluation. ``train(config, hooks=[…])`` adds your own.

And the safety nets:

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

**Several processes.** Launched by ``mpiexec -n N`` the same code trains one
model with N data-parallel processes (:mod:`~minifpn.engine.distributed`):
each takes its share of every batch, the gradients are averaged with an
all-reduce before the SGD step, and only rank 0 holds the run folder, writes
files and shows the progress bar. A stop request or a NaN loss stops every
rank at the same iteration; an error one rank meets alone stops them all.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from minifpn import backend, optim
from minifpn.autograd import Tensor
from minifpn.data import resolve_data
from minifpn.data.coco import CocoDetection
from minifpn.data.copy_paste import random_copy_paste
from minifpn.data.transforms import color_jitter, draw_color_jitter, random_horizontal_flip
from minifpn.engine import distributed
from minifpn.engine.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    load_model_state,
    load_start_weights,
    restore_training_state,
    save_checkpoint,
)
from minifpn.engine.config import TrainConfig, build_model
from minifpn.engine.evaluate import evaluate_model
from minifpn.engine.hooks import TrainingDiverged, default_hooks
from minifpn.engine.metrics_log import MetricsLog, save_loss_curve
from minifpn.engine.run_folder import RunFolder, RunFolderOfRankZero
from minifpn.engine.signals import StopRequest
from minifpn.models.transform import to_chw_float
from minifpn.serialization import write_json_atomic

#: Seeds each image's augmentation generator together with (seed, iteration, position):
#: a stream of its own, apart from the model's generator.
AUGMENT_STREAM = 7919


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


def augmentation_rng(config: TrainConfig, iteration: int, position: int):
    """The random choices (flip, …) for the image at ``position`` of an iteration's batch.

    Keyed by the image's place in the whole batch, not by what was drawn
    before it: a batch split over several processes (data-parallel training)
    draws exactly what one process drawing the whole batch would.
    """
    return np.random.default_rng([config.seed, AUGMENT_STREAM, iteration, position])


def _load_batch(dataset, indices, config: TrainConfig, iteration: int, first: int = 0,
                count: int | None = None):
    """The images ``indices`` (positions ``first``, ``first + 1``, … of the batch), on the device.

    Each image's random choices come from its own :func:`augmentation_rng`:
    the flip first; then, with ``copy_paste``, whether to paste, the source
    (one of the first ``count`` images, default all), its flip and the paste's
    subset, scale and offset; then the colour jitter's order and factors
    (drawn here, applied on the device once the batch is there).
    """
    count = len(dataset) if count is None else count
    images, targets, jitters = [], [], []
    for position, index in enumerate(indices, start=first):
        image, target = dataset[index]
        rng = augmentation_rng(config, iteration, position)
        if config.flip:
            image, target = random_horizontal_flip(image, target, rng)
        if config.copy_paste and rng.random() < config.copy_paste:
            source, source_target = dataset[int(rng.integers(count))]
            if config.flip:
                source, source_target = random_horizontal_flip(source, source_target, rng)
            image, target = random_copy_paste(image, target, source, source_target, rng)
        if config.color_jitter:
            jitters.append(draw_color_jitter(rng, config.color_jitter))
        images.append(to_chw_float(image))
        targets.append(target)
    # The whole batch to the device in one copy per dtype (not one per array).
    keys = [[k for k, v in t.items() if isinstance(v, np.ndarray)] for t in targets]
    arrays = images + [t[k] for t, names in zip(targets, keys) for k in names]
    on_device = iter(backend.to_device_many(arrays, config.device))
    images = [next(on_device) for _ in images]
    if jitters:  # only the pixels' values change: boxes and masks stay as they are
        images = [color_jitter(image, *jitter, layout="chw")
                  for image, jitter in zip(images, jitters)]
    targets = [{**t, **{k: next(on_device) for k in names}} for t, names in zip(targets, keys)]
    return [Tensor(image) for image in images], targets


def milestone_iterations(config: TrainConfig, count: int) -> list:
    """``config.milestone_epochs`` as iterations, for ``count`` training images per epoch.

    Epoch ``e`` starts at image ``e · count`` of the run, i.e. in iteration
    ``ceil(e · count / batch_size)`` — the rule that turns ``epochs`` into
    ``iters``. The learning rate drops there.
    """
    if config.epochs is None:
        raise ValueError(f"milestone_epochs {list(config.milestone_epochs)} needs the run's "
                         "length in epochs: add --epochs (or use the fractional milestones)")
    beyond = [e for e in config.milestone_epochs if e > config.epochs]
    if beyond:
        raise ValueError(f"milestone_epochs {beyond} lie beyond the run's {config.epochs:g} "
                         "epochs: choose epochs within the run, or a longer --epochs")
    return sorted({math.ceil(e * count / config.batch_size) for e in config.milestone_epochs})


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
          stop_after: int | None = None, hooks=(), comm=None) -> dict:
    """Run (or resume) a training run; returns the final evaluation metrics.

    Args:
        config: the run's settings. To resume, pass the checkpoint's config
            (``load_checkpoint(out)["config"]``), changed only in
            :data:`RESUME_MAY_CHANGE`.
        resume: continue from ``config.out``'s checkpoint, bit for bit.
        stop_after: stop with a checkpoint once this many iterations are done,
            exactly as an interruption would (the schedule still spans ``iters``).
        hooks: your own :class:`~minifpn.engine.hooks.HookBase` pieces, called
            after the built-in ones at each stage of the loop (on every rank:
            ``trainer.comm.is_main`` says whether this one writes).
        comm: the processes training together
            (:class:`~minifpn.engine.distributed.Communicator`); default
            :func:`~minifpn.engine.distributed.world` — the MPI processes under
            ``mpiexec -n N``, else this process alone.

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
    comm = distributed.world() if comm is None else comm
    with distributed.fail_together(comm), _quiet_unless_main(comm), StopRequest() as stop, \
            _run_folder(comm, config.out, resume) as folder:
        return _run(stop, _Run(config, folder, progress, hooks, comm), {}, stop_after)


def resume_run(out, changes: dict | None = None, progress: bool = True,
               stop_after: int | None = None, hooks=(), comm=None) -> dict:
    """Continue the run in ``out`` with its saved settings, changed by ``changes``.

    What ``minifpn train --out OUT --resume [--iters N …]`` calls: the saved
    config is read under the run folder's lock (so a run still going is
    reported as such), and ``changes`` must stay within
    :data:`RESUME_MAY_CHANGE`. Otherwise as :func:`train` with ``resume=True``.
    """
    comm = distributed.world() if comm is None else comm
    with distributed.fail_together(comm), _quiet_unless_main(comm), StopRequest() as stop, \
            _run_folder(comm, out, resume=True) as folder:
        changes = {**(changes or {}), "out": str(out)}
        return _run(stop, _Run(None, folder, progress, hooks, comm), changes, stop_after)


def _run_folder(comm, out, resume: bool):
    """Rank 0 holds the run folder (locked); the other ranks write nothing into it."""
    return RunFolder(out, resume) if comm.is_main else RunFolderOfRankZero(out, resume)


def _quiet_unless_main(comm):
    """Only rank 0 prints (errors still reach every rank's stderr)."""
    return contextlib.nullcontext() if comm.is_main else contextlib.redirect_stdout(io.StringIO())


def _run(stop: StopRequest, run: _Run, changes: dict, stop_after: int | None) -> dict:
    """Prepare and train in a held run folder; on any error, keep what is finished.

    The stop request is in place before the folder is entered: a Ctrl-C or
    SIGTERM while preparing ends the run at the first check, leaving nothing.
    """
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
    """One training run: setup, the loop over steps with its hooks, and what is kept on failure.

    Its attributes are what hooks read (:mod:`~minifpn.engine.hooks`):
    ``config``, ``model``, ``optimizer``, ``scheduler``, ``log``, ``out``,
    ``stop``, ``iteration``, ``done``, ``losses``, ``step_log``, ``comm``.
    """

    def __init__(self, config: TrainConfig | None, folder, progress: bool, hooks=(),
                 comm: distributed.Communicator | None = None):
        self.comm = distributed.Communicator() if comm is None else comm
        self.config, self.folder = config, folder
        self.progress = progress and self.comm.is_main
        self.stop = None  # the run's StopRequest, from train() on
        self.out = folder.path
        self.checkpoint_path = self.out / CHECKPOINT_NAME
        self.resume = folder.resume
        self.log = None
        self.start = self.done = self.saved_at = 0
        self.iteration = None  # the step under way
        self.consistent = True  # False while the weights are being updated
        self.rng_state = None  # the random state the iteration after `done` starts from
        self.losses, self.step_log, self.metrics = {}, {}, {}
        self.hooks = []
        for hook in [*default_hooks(), *hooks]:
            hook.trainer = self
            self.hooks.append(hook)

    # -- setup: before the first iteration ------------------------------------------------
    def prepare(self, changes: dict) -> None:
        """Checkpoint, data, checks, model, optimiser — and, to resume, the saved state.

        Without a config (:func:`resume_run`), the saved one with ``changes``.
        With several processes, rank 0 reads the checkpoint and hands every
        rank its settings and state.
        """
        comm = self.comm
        checkpoint = self._read_checkpoint(changes) if self.resume and comm.is_main else None
        self.config, checkpoint = comm.broadcast((self.config, checkpoint))
        self.shard = comm.shard(self.config.batch_size)  # this rank's positions in each batch
        root = self._load_data()
        config = self.config
        backend.manual_seed(config.seed)
        self.model = build_model(config.preset, len(self.dataset.class_names), config.norm,
                                 config.overrides())
        if config.weights and checkpoint is None:
            print(load_start_weights(self.model, config.weights, self.dataset.class_names))
        self.model.to(config.device)
        self.optimizer = optim.SGD(self.model.parameters(), lr=config.lr,
                                   momentum=config.momentum, weight_decay=config.weight_decay)
        if config.milestone_epochs is None or checkpoint is not None:  # resumed: saved ones
            milestones = sorted({max(1, int(config.iters * m)) for m in config.milestones})
        else:
            milestones = milestone_iterations(config, self.count)
        self.scheduler = optim.WarmupMultiStepLR(
            self.optimizer, milestones, config.gamma,
            warmup_iters=min(config.warmup_iters, config.iters))
        if checkpoint is not None:
            load_model_state(self.model, checkpoint)
            restore_training_state(checkpoint, self.optimizer, self.scheduler)
            self.start = self.done = self.saved_at = int(checkpoint["iteration"])
            print(f"resuming {self.out} at iteration {self.start} of {config.iters}")
            _say_if_the_processes_changed(checkpoint["meta"].get("processes", 1), comm.size,
                                          config.batch_size)
        if comm.size > 1:  # every rank starts from rank 0's weights (the same seed gave them)
            self.model.load_state_dict(comm.broadcast(
                {k: backend.to_numpy(v) for k, v in self.model.state_dict().items()}))
            print(f"training on {comm.describe()}: {len(self.shard)} of the "
                  f"{config.batch_size} images of each iteration per process")
        self.rng_state = backend.get_rng_state()
        self.meta = {"class_names": self.dataset.class_names,
                     "category_ids": self.dataset.category_ids, "data": str(root),
                     "processes": comm.size}
        if comm.is_main:
            write_json_atomic(self.out / "config.json", config.to_dict())
            self.log = MetricsLog(self.out / "metrics.jsonl", self.start)
        # Every rank keeps the log in memory: hooks decide from it, and must decide alike.
        entries = comm.broadcast(self.log.entries if comm.is_main else None)
        if not comm.is_main:
            self.log = MetricsLog.in_memory(entries)

    def _read_checkpoint(self, changes: dict) -> dict:
        """The checkpoint to resume from; the saved config (with ``changes``) if none was given."""
        if not self.checkpoint_path.exists():
            raise FileNotFoundError(
                f"{self.out} holds a run that stopped before writing its first checkpoint: "
                "nothing to resume. Start a new run in another --out (or delete this folder)"
            )
        checkpoint = load_checkpoint(self.checkpoint_path, for_resume=True)
        if self.config is None:
            self.config = TrainConfig.from_dict({**checkpoint["config"], **changes})
        check_resume_config(checkpoint["config"], self.config)
        return checkpoint

    def _load_data(self) -> Path:
        """The training and evaluation sets, every image used checked now; the data's folder.

        With ``epochs``, the run's length is set here, in iterations.
        """
        config = self.config
        root = resolve_data(config.data)
        self.dataset = CocoDetection(root, "train", skip_empty=True, with_masks=True,
                                     categories=config.categories)
        self.count = count = (len(self.dataset) if config.train_images is None
                              else min(config.train_images, len(self.dataset)))
        if count == 0:
            chosen = "" if config.categories is None else " of the chosen categories"
            raise ValueError(f"{root}: no training images with annotations{chosen}")
        self.eval_dataset = CocoDetection(root, config.eval_split, verbose=False,
                                          categories=config.categories)
        # Bad data fails now, all of it at once, not at the iteration that first draws it
        # (rank 0 checks for every rank: a failure there stops them all).
        if self.comm.is_main:
            self.dataset.check_images(count, progress=self.progress)
            self.eval_dataset.check_images(config.max_eval_images, progress=self.progress)
        if config.epochs is not None:  # the length in passes over the data, as iterations
            iters = max(1, math.ceil(config.epochs * count / config.batch_size))
            print(f"{config.epochs:g} epochs of {count} images at {config.batch_size} per "
                  f"iteration = {iters} iterations")
            self.config = replace(config, iters=iters)
        return root

    # -- the loop ---------------------------------------------------------------------------
    def train(self, stop: StopRequest, stop_after: int | None) -> dict:
        """Every remaining iteration between its hooks; returns the final evaluation.

        With ``stop_after``, stops once that many iterations are done, as an
        interruption would (a checkpoint, then ``{}``).
        """
        self.stop = stop
        self.model.train()
        self._call_hooks("before_train")
        for iteration in range(self.start, self.config.iters):
            self.iteration = iteration
            self._call_hooks("before_step")
            self.run_step()
            self._call_hooks("after_step")
            if self.done == stop_after:
                return self._pause()
        self._call_hooks("after_train")
        return self.metrics

    def run_step(self) -> None:
        """One iteration: batch → losses → backward → clipped SGD step.

        Sets ``losses`` (the components, as numbers) before the backward pass
        and ``step_log`` (the iteration's line of the log) after the update.
        With several processes, this rank's share of the batch (``shard``):
        the logged losses and the gradients are the means over the ranks.
        """
        config, model, iteration, comm, shard = (self.config, self.model, self.iteration,
                                                 self.comm, self.shard)
        began = time.perf_counter()
        indices = _batch_indices(config, iteration, self.count)[shard.start:shard.stop]
        images, targets = _load_batch(self.dataset, indices, config, iteration, shard.start,
                                      self.count)
        with backend.batch_rows_from(shard.start):  # sample as one process holding all would
            losses = model(images, targets)
        total = sum(losses.values())
        # One device → host copy for every number logged (not one per loss).
        xp = backend.get_array_module(total.data)
        numbers = comm.mean(xp.stack([total.data] + [loss.data for loss in losses.values()])
                            .tolist())
        self.losses = dict(zip(losses, numbers[1:]))
        self._call_hooks("after_forward")  # the NaN guard: before the weights see the losses
        self.optimizer.zero_grad()
        total.backward()
        communicated = comm.communication_seconds
        if comm.size > 1:
            _average_gradients(comm, model.parameters())
        grad_norm = optim.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
        with self.stop.deferred():  # the weights change: no iteration may end half-way through
            self.consistent = False
            self.optimizer.step()
            self.scheduler.step()
            self.done = iteration + 1
            self.rng_state = backend.get_rng_state()
            self.consistent = True
        self.step_log = {"iter": iteration, "lr": self.scheduler.get_last_lr()[0],
                         "loss": numbers[0], **self.losses, "grad_norm": float(grad_norm),
                         "time": round(time.perf_counter() - began, 4)}
        if comm.size > 1:  # the all-reduce's share of the step
            self.step_log["allreduce_time"] = round(comm.communication_seconds - communicated, 4)

    def _call_hooks(self, stage: str) -> None:
        for hook in self.hooks:
            getattr(hook, stage)()

    def checkpoint(self) -> None:
        """Write the checkpoint of the last finished iteration (``self.done``); rank 0 only."""
        if self.comm.is_main:
            save_checkpoint(self.checkpoint_path, self.model, self.optimizer, self.scheduler,
                            self.done, self.config.to_dict(), self.meta,
                            rng_state=self.rng_state)
        self.saved_at = self.done

    def evaluate(self, name: str) -> dict:
        """COCO evaluation of the model now; results in ``<run>/<name>_results.json``."""
        return _evaluate(self.model, self.eval_dataset, self.config, self.out / name,
                         self.progress, self.comm)

    def _pause(self) -> dict:
        """Stop after ``stop_after`` iterations: checkpoint, loss curve, how to continue."""
        if self.saved_at != self.done:
            self.checkpoint()
        if not self.comm.is_main:
            return {}
        save_loss_curve(self.log.entries, self.out / "loss_curve.png")
        print(f"stopped at iteration {self.done}; checkpoint written to "
              f"{self.checkpoint_path}. Continue with: {self._resume_command()}")
        return {}

    def _resume_command(self) -> str:
        return f"minifpn train --out {self.out} --resume"

    # -- when anything goes wrong ---------------------------------------------------------
    def salvage(self, error: BaseException) -> None:
        """Keep what is finished: a checkpoint of the last finished iteration, and say so.

        The note added to ``error`` names the checkpoint kept and how to
        continue. A new run that finished no iteration leaves nothing behind.
        Only rank 0 keeps anything: the others hold no files.
        """
        if not self.comm.is_main:
            return
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


def _average_gradients(comm, parameters) -> None:
    """Every gradient becomes its mean over the ranks (a parameter this rank's images
    did not reach counts as a zero gradient, as for DistributedDataParallel)."""
    parameters = list(parameters)
    for p in parameters:
        if p.grad is None:
            p.grad = backend.get_array_module(p.data).zeros_like(p.data)
    comm.allreduce_mean_([p.grad for p in parameters])


def _say_if_the_processes_changed(saved: int, now: int, batch_size: int) -> None:
    if saved != now:
        print(f"this run was trained by {saved} process{'es' * (saved != 1)} and continues on "
              f"{now}: the global batch stays {batch_size} images per iteration, now "
              f"{batch_size // now} per process (the same images; the mask loss is averaged "
              "over a different split, so it is not bit for bit the run it would have been)")


def _evaluate(model, dataset, config: TrainConfig, prefix: Path, progress: bool,
              comm=None) -> dict:
    return evaluate_model(model, dataset, max_images=config.max_eval_images,
                          device=config.device,
                          results_path=Path(f"{prefix}_results.json"), progress=progress,
                          comm=comm)
