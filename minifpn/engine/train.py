"""The training loop: data → model → losses → SGD, with checkpoints that never lose a run.

One iteration::

    images, targets = next batch (resized inside the model; flipped at random)
    losses = model(images, targets)          # RPN + box + mask losses
    loss = Σ losses;  loss.backward()
    clip the global gradient norm; SGD step; schedule step

Around it: a progress bar with every loss component, ``metrics.jsonl`` (one
line per iteration, appended as it goes) and ``loss_curve.png`` in the run
folder, periodic and final COCO evaluation, and three safety nets:

* **checkpoints** every ``checkpoint_every`` iterations and at the end,
  written atomically; ``resume=True`` continues bit for bit;
* **Ctrl-C** finishes the current iteration, writes a checkpoint, and stops;
* **NaN/Inf losses** stop training with the component and iteration named,
  leaving the last good checkpoint untouched.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minifpn import backend, optim
from minifpn.autograd import Tensor
from minifpn.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_model_state
from minifpn.engine.checkpoint import save_checkpoint as write_checkpoint
from minifpn.engine.config import TrainConfig, build_model
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


def _read_metrics(path: Path, before: int) -> list:
    """The lines of ``metrics.jsonl`` for iterations before ``before`` (for a resume)."""
    if not path.exists():
        return []
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return [line for line in lines if line.get("iter", -1) < before]


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


class _StopRequest:
    """Turn the first Ctrl-C into a polite request, checked between iterations."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("Ctrl-C: finishing this iteration and writing a checkpoint "
                   "(press again to stop at once)")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


#: Settings a resumed run must share with the checkpoint: they define the
#: model and the data order. (iters, device, checkpoint and evaluation
#: frequency may change; a changed ``iters`` keeps the saved LR milestones.)
RESUME_MUST_MATCH = ("preset", "norm", "model_overrides", "data", "seed", "batch_size",
                     "train_images", "flip")


def train(config: TrainConfig, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> dict:
    """Run (or resume) a training run; returns the final evaluation metrics.

    Args:
        config: the run's settings. To resume, pass the checkpoint's config
            (``load_checkpoint(out)["config"]``), changed only where allowed.
        resume: continue from ``config.out``'s checkpoint, bit for bit.
        stop_after: stop with a checkpoint once this many iterations are done,
            exactly as an interruption would (the schedule still spans ``iters``).

    Raises:
        FileExistsError: ``config.out`` already holds a run and ``resume`` is False.
        FileNotFoundError: ``resume`` is True but there is no checkpoint.
        TrainingDiverged: a loss became NaN/Inf (the last good checkpoint is kept).
        KeyboardInterrupt: after Ctrl-C, once the checkpoint is written.
    """
    from minifpn.data.coco import CocoDetection
    from minifpn.engine.evaluate import format_metrics_table, write_json_atomic

    out = Path(config.out)
    checkpoint_path = out / CHECKPOINT_NAME
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(checkpoint_path)
        saved = checkpoint["config"]
        given = json.loads(json.dumps(config.to_dict()))  # tuples → lists, as saved
        changed = [k for k in RESUME_MUST_MATCH if saved[k] != given[k]]
        if changed:
            raise ValueError(
                f"cannot resume {out} with different {', '.join(changed)} "
                f"(saved: {', '.join(f'{k}={saved[k]!r}' for k in changed)})"
            )
    elif checkpoint_path.exists():
        raise FileExistsError(
            f"{out} already holds a training run; continue it with --resume, "
            f"or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)

    root = resolve_data(config.data)
    dataset = CocoDetection(root, "train", skip_empty=True, with_masks=True)
    count = len(dataset) if config.train_images is None else min(config.train_images,
                                                                 len(dataset))
    if count == 0:
        raise ValueError(f"{root}: no training images with annotations")
    if config.epochs is not None:  # the length in passes over the data, as iterations
        if config.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {config.epochs}")
        iters = max(1, math.ceil(config.epochs * count / config.batch_size))
        print(f"{config.epochs:g} epochs of {count} images at {config.batch_size} per "
              f"iteration = {iters} iterations")
        config = replace(config, iters=iters)
    backend.manual_seed(config.seed)
    model = build_model(config.preset, len(dataset.class_names), config.norm,
                        config.model_overrides)
    if config.weights and checkpoint is None:  # fine-tuning: new classes get new predictors
        from minifpn.weights import load_pretrained

        weights = Path(config.weights)
        print(load_pretrained(model, weights / CHECKPOINT_NAME if weights.is_dir() else weights,
                              class_names=dataset.class_names))
    model.to(config.device)
    optimizer = optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    milestones = sorted({max(1, int(config.iters * m)) for m in config.milestones})
    scheduler = optim.WarmupMultiStepLR(optimizer, milestones, config.gamma,
                                        warmup_iters=min(config.warmup_iters, config.iters))
    start = 0
    if checkpoint is not None:
        load_model_state(model, checkpoint)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        backend.set_rng_state(checkpoint["rng"])
        start = int(checkpoint["iteration"])
        print(f"resuming {out} at iteration {start} of {config.iters}")
    meta = {"class_names": dataset.class_names, "category_ids": dataset.category_ids,
            "data": str(root)}
    write_json_atomic(out / "config.json", config.to_dict())

    metrics_path = out / "metrics.jsonl"
    history = _read_metrics(metrics_path, start)
    with open(metrics_path, "w") as f:  # drop lines a resumed run will redo
        f.writelines(json.dumps(line) + "\n" for line in history)

    def checkpoint_now(iteration):
        write_checkpoint(checkpoint_path, model, optimizer, scheduler, iteration,
                         config.to_dict(), meta)

    model.train()
    done = start
    bar = tqdm(range(start, config.iters), initial=start, total=config.iters, desc="training",
               unit="it", disable=not progress, mininterval=1.0, dynamic_ncols=True)
    with _StopRequest() as stop, open(metrics_path, "a") as log:
        for iteration in bar:
            began = time.perf_counter()
            images, targets = _load_batch(dataset, _batch_indices(config, iteration, count),
                                          config, iteration)
            losses = model(images, targets)
            total = sum(losses.values())
            # One device → host copy for every number logged (not one per loss).
            xp = backend.get_array_module(total.data)
            numbers = xp.stack([total.data] + [loss.data for loss in losses.values()]).tolist()
            total_value, values = numbers[0], dict(zip(losses, numbers[1:]))
            bad = [name for name, v in values.items() if not math.isfinite(v)]
            if bad:
                kept = (f"the last good checkpoint ({checkpoint_path}, iteration "
                        f"{load_checkpoint(checkpoint_path)['iteration']}) is kept"
                        if checkpoint_path.exists() else "no checkpoint had been written yet")
                raise TrainingDiverged(
                    f"{', '.join(bad)} became {values[bad[0]]} at iteration {iteration}; "
                    f"{kept}. Try a lower --lr (now {config.lr}) or a longer warm-up."
                )
            optimizer.zero_grad()
            total.backward()
            grad_norm = optim.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            done = iteration + 1

            line = {"iter": iteration, "lr": scheduler.get_last_lr()[0], "loss": total_value,
                    **values, "grad_norm": float(grad_norm),
                    "time": round(time.perf_counter() - began, 4)}
            log.write(json.dumps(line) + "\n")
            log.flush()
            history.append(line)
            bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in values.items()},
                            refresh=False)
            if done % config.checkpoint_every == 0 or done == config.iters:
                checkpoint_now(done)
            if config.eval_every and done % config.eval_every == 0 and done < config.iters:
                evaluation = _evaluate(model, root, config, out / f"eval_{done:06d}", progress)
                history.append({"iter": iteration, "eval": evaluation})
                log.write(json.dumps(history[-1]) + "\n")
                model.train()
            if stop.requested or done == stop_after:
                checkpoint_now(done)
                save_loss_curve(history, out / "loss_curve.png")
                message = (f"stopped at iteration {done}; checkpoint written to "
                           f"{checkpoint_path}. Continue with: minifpn train --out {out} --resume")
                if stop.requested:
                    raise KeyboardInterrupt(message)
                print(message)
                return {}
    bar.close()
    save_loss_curve(history, out / "loss_curve.png")

    metrics = _evaluate(model, root, config, out / "eval_final", progress)
    print(format_metrics_table(metrics))
    write_json_atomic(out / "metrics.json", metrics)  # strict JSON: NaN ("no such objects") → null
    return metrics


def _evaluate(model, root, config: TrainConfig, prefix: Path, progress: bool) -> dict:
    from minifpn.data.coco import CocoDetection
    from minifpn.engine.evaluate import evaluate_model

    dataset = CocoDetection(root, config.eval_split, verbose=False)
    return evaluate_model(model, dataset, max_images=config.max_eval_images,
                          device=config.device,
                          results_path=Path(f"{prefix}_results.json"), progress=progress)
