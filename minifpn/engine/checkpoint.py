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

from minifpn import backend, serialization
from minifpn.nn import StateDictError

#: The file name inside a run folder.
CHECKPOINT_NAME = "checkpoint.npz"


def save_checkpoint(path, model, optimizer, scheduler, iteration: int, config: dict,
                    meta: dict) -> Path:
    """Write a complete checkpoint atomically; returns its path."""
    path = Path(path)
    serialization.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "iteration": int(iteration),
            "rng": backend.get_rng_state(),
            "config": config,
            "meta": meta,
        },
        path,
    )
    return path


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (clear errors otherwise)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: train first (`minifpn train --out {path.parent}`)"
        )
    checkpoint = serialization.load(path)
    missing = {"model", "config", "meta", "iteration"} - set(checkpoint)
    if missing:
        raise ValueError(f"{path} is not a minifpn training checkpoint (no {', '.join(missing)})")
    checkpoint["path"] = str(path)
    return checkpoint


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


def load_model(path, device: str = "cpu"):
    """The trained model of a run folder (or checkpoint file), in eval mode.

    Returns:
        ``(model, config, meta)``: the :class:`~minifpn.models.detector.MaskRCNN`
        rebuilt from the saved preset and weights, the run's
        :class:`~minifpn.engine.config.TrainConfig`, and ``meta`` with the
        ``class_names`` and COCO ``category_ids`` it was trained on.
    """
    from minifpn.engine.config import TrainConfig, build_model

    checkpoint = load_checkpoint(path)
    config = TrainConfig.from_dict(checkpoint["config"])
    meta = checkpoint["meta"]
    model = build_model(config.preset, len(meta["class_names"]), config.norm,
                        config.model_overrides)
    load_model_state(model, checkpoint)
    model.to(device).eval()
    return model, config, meta
