"""Checkpoints that let a run stop anywhere and continue bit for bit.

A checkpoint holds everything the next iteration depends on:

* the model's state dict (parameters and buffers),
* the optimiser's state (momentum buffers) and the schedule's position,
* the iteration count,
* minifpn's random generator (RoI/anchor sampling draws from it),
* the run's configuration and class names (so ``eval``/``predict`` can
  rebuild the model from the file alone).

The data order needs no saved state: batch and flip choices are drawn from
generators seeded by (seed, epoch) and (seed, iteration), so iteration i sees
the same images whether or not the run was interrupted before it.

Files are written by :func:`minifpn.save`: temporary file + rename, so a
crash while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minifpn import backend, serialization
from minifpn.engine.config import TrainConfig, build_model
from minifpn.nn import StateDictError
from minifpn.weights import load_pretrained

#: The file name inside a run folder.
CHECKPOINT_NAME = "checkpoint.npz"


def save_checkpoint(path, model, optimizer, scheduler, iteration: int, config: dict,
                    meta: dict, rng_state: dict | None = None) -> Path:
    """Write a complete checkpoint atomically; returns its path.

    ``rng_state`` is the random generator's state the next iteration starts
    from (default: its state now).
    """
    path = Path(path)
    serialization.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "iteration": int(iteration),
            "rng": backend.get_rng_state() if rng_state is None else rng_state,
            "config": config,
            "meta": meta,
        },
        path,
    )
    return path


def load_checkpoint(path, for_resume: bool = False) -> dict:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    ``path`` is the file or its run folder. ``for_resume`` also requires the
    optimiser, schedule and random state a resumed run needs.

    Raises ``FileNotFoundError`` if there is none, and ``ValueError`` naming
    the file and the part for anything that is not a minifpn checkpoint or
    was damaged or hand-edited (:func:`validate_checkpoint`).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: train first (`minifpn train --out {path.parent}`)"
        )
    checkpoint = serialization.load(path)
    validate_checkpoint(checkpoint, path, for_resume)
    checkpoint["path"] = str(path)
    return checkpoint


def is_training_checkpoint(content) -> bool:
    """Whether a loaded ``.npz`` is a minifpn training checkpoint (vs. a plain state dict)."""
    return isinstance(content, dict) and {"model", "config", "meta", "iteration"} <= set(content)


def validate_checkpoint(checkpoint, path, for_resume: bool = False) -> None:
    """Check a loaded checkpoint's structure; a ``ValueError`` naming ``path`` and the part.

    The checks are the ones the code that reads it relies on: the weights are
    a dict of arrays; the config is a valid :class:`TrainConfig` (known
    preset, known ``model_overrides``, every value in range); ``meta`` names
    the classes; the iteration is a whole number; and, to resume, the
    optimiser, schedule and random state are there.
    """
    def refuse(problem):
        raise ValueError(f"{path} is not a usable minifpn training checkpoint: {problem}. Use "
                         "an intact checkpoint (a run folder's checkpoint.npz)")

    if not is_training_checkpoint(checkpoint):
        missing = sorted({"model", "config", "meta", "iteration"} - set(checkpoint))
        refuse(f"no {', '.join(missing)} (a plain weights file? give it to --weights)")
    if not (isinstance(checkpoint["model"], dict) and checkpoint["model"]
            and all(isinstance(v, np.ndarray) for v in checkpoint["model"].values())):
        refuse("'model' is not a dict of arrays")
    iteration = checkpoint["iteration"]
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        refuse(f"'iteration' is {iteration!r}, not a whole number")
    try:
        TrainConfig.from_dict(checkpoint["config"])
    except (TypeError, ValueError) as error:
        refuse(f"its saved config is not valid ({error})")
    meta = checkpoint["meta"]
    names = meta.get("class_names") if isinstance(meta, dict) else None
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)):
        refuse(f"meta['class_names'] is {names!r}, not the list of class names")
    if for_resume:
        parts = {"optimizer": ("state", "param_groups"), "scheduler": ("last_epoch", "milestones"),
                 "rng": ("bit_generator", "state")}
        for part, keys in parts.items():
            content = checkpoint.get(part)
            if not (isinstance(content, dict) and set(keys) <= set(content)):
                refuse(f"its {part!r} state is missing or malformed (needs {', '.join(keys)})")


def restore_training_state(checkpoint: dict, optimizer, scheduler) -> None:
    """Load a validated checkpoint's optimiser, schedule and random state for a resume."""
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        backend.set_rng_state(checkpoint["rng"])
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise ValueError(
            f"{checkpoint.get('path', 'the checkpoint')}: its optimiser, schedule or random "
            f"state does not fit this run ({type(error).__name__}: {error}); it was edited or "
            "damaged — use an intact checkpoint"
        ) from None


def load_model_state(model, checkpoint: dict) -> None:
    """Load a checkpoint's weights, naming the file when shapes do not fit the model."""
    try:
        model.load_state_dict(checkpoint["model"])
    except StateDictError as error:
        raise StateDictError(
            f"checkpoint {checkpoint.get('path', '?')} does not fit this model — was it "
            f"trained with another preset or number of classes?\n{error}",
            error.missing_keys, error.unexpected_keys, error.mismatched_keys,
        ) from None


def load_start_weights(model, path, class_names=None) -> str:
    """Start a new run from ``--weights``: a torchvision ``.npz`` or a minifpn checkpoint / run.

    A minifpn training checkpoint (or its run folder) gives its model
    weights; any other ``.npz`` is read as a torchvision-format state dict.
    Either way the tensors are matched by name and loaded by
    :func:`~minifpn.weights.load_pretrained`: when the classes differ from
    ``class_names`` (the new dataset's), the box and mask predictors keep
    their fresh initialisation and the report lists them. A file of which
    *no* tensor fits the model is refused rather than silently training from
    scratch. Returns the load report as text.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file")
    content = serialization.load(path)
    if is_training_checkpoint(content):
        validate_checkpoint(content, path)
        source = f"minifpn checkpoint (iteration {content['iteration']})"
        arrays = content["model"]
    else:
        source = "weights"
        content = arrays = {k: v for k, v in content.items() if isinstance(v, np.ndarray)}
    report = load_pretrained(model, content, class_names)
    if not report.loaded:
        raise ValueError(
            f"--weights {path}: none of its {len(arrays)} tensors fits this model (e.g. "
            f"{', '.join(list(arrays)[:3]) or 'no tensors at all'}); give a torchvision-format "
            "state dict (`minifpn weights convert`) or a minifpn run's checkpoint"
        )
    return f"--weights {path} ({source}):\n{report}"


def load_model(path, device: str = "cpu"):
    """The trained model of a run folder (or checkpoint file), in eval mode.

    Returns:
        ``(model, config, meta)``: the :class:`~minifpn.models.detector.MaskRCNN`
        rebuilt from the saved preset and weights, the run's
        :class:`~minifpn.engine.config.TrainConfig`, and ``meta`` with the
        ``class_names`` and COCO ``category_ids`` it was trained on.
    """
    checkpoint = load_checkpoint(path)
    config = TrainConfig.from_dict(checkpoint["config"])
    meta = checkpoint["meta"]
    model = build_model(config.preset, len(meta["class_names"]), config.norm,
                        config.overrides())
    load_model_state(model, checkpoint)
    model.to(device).eval()
    return model, config, meta
