"""Trained detectors for the lessons: the tiny preset trained on the shapes once, then cached.

Lessons 5–12 show what *training* does to a pyramid — which level answers for
which object size, what the RPN proposes, what the second stage keeps — so
they need a trained model, and no pre-trained weights can be downloaded.
:func:`shapes_detector` trains the main job's model (the ``tiny`` preset on the
synthetic shapes, :mod:`minifpn.data.shapes`) with :func:`~minifpn.engine.train`,
keeps the run folder in the cache beside the shapes dataset, and loads it
from there the next time — in this lesson or another one. The same settings
give the same model (training is seeded), so a lesson run on its own trains
exactly the model another lesson cached.

The run folder is a normal one (``metrics.jsonl``, ``loss_curve.png``,
``metrics.json`` with the final COCO evaluation): ``minifpn eval --checkpoint``
and ``minifpn predict`` work on it.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from minifpn.data.shapes import default_cache_dir, shapes_root
from minifpn.engine.checkpoint import load_checkpoint, load_model
from minifpn.engine.config import TrainConfig
from minifpn.engine.train import train

#: Iterations of 2 images for the lessons' trained model: about 6 minutes on a 2-core CPU
#: (0.4 s/it), enough for shapes of every size (the main job runs 1,300).
LESSON_ITERS = 800
#: The shapes dataset of fast mode (CI): a small one, so that its generation takes seconds.
FAST_SHAPES = dict(num_train=64, num_val=16)


def shapes_detector(iterations: int = LESSON_ITERS, top_down: bool = True, fast: bool = False,
                    seed: int = 0, cache_dir=None, progress: bool = False):
    """The tiny Mask R-CNN trained on the shapes for ``iterations``, trained now or loaded.

    Args:
        iterations: training iterations of 2 images (the schedule: the main job's,
            warm-up 100, drops at 75 % and 90 %).
        top_down: False trains the same model without the FPN's top-down pathway
            (each P_l from C_l alone; Table 1's row (d)).
        fast: train on the small shapes dataset of fast mode (:data:`FAST_SHAPES`).
        seed: the run's seed (initial weights, order, flips).
        cache_dir: where run folders are kept (default: ``<minifpn cache>/trained``,
            beside the shapes dataset; ``$MINIFPN_CACHE`` moves both).
        progress: show the training progress bar.

    Returns:
        ``(model, info)``: the model in eval mode, and ``info`` with ``run`` (the run
        folder), ``trained_now`` (False when it was loaded from the cache),
        ``config`` (its :class:`~minifpn.engine.config.TrainConfig`), ``class_names``
        and ``metrics`` (the final COCO evaluation on the validation shapes).
    """
    root = shapes_root(progress=False, **(FAST_SHAPES if fast else {}))
    base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir() / "trained"
    name = f"{root.name}-tiny-{'fpn' if top_down else 'no-top-down'}-{iterations}it-seed{seed}"
    out = (base / name).absolute()
    checkpoint = out / "checkpoint.npz"
    trained_now = False
    out.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(out.with_name(out.name + ".lock")):  # two lessons at once: one trains
        if not _finished(checkpoint, iterations):
            config = TrainConfig(preset="tiny", data=str(root), iters=iterations, seed=seed,
                                 warmup_iters=min(100, iterations), out=str(out),
                                 checkpoint_every=max(1, iterations // 4),
                                 model_overrides={} if top_down else {"top_down": False})
            resume = checkpoint.is_file()  # an interrupted run continues, bit for bit
            if resume:
                config = TrainConfig.from_dict(load_checkpoint(checkpoint)["config"])
            # The final evaluation table: in metrics.json (returned below), not on the page.
            page = io.StringIO() if not progress else None  # None: print as usual
            with contextlib.redirect_stdout(page) if page else contextlib.nullcontext():
                train(config, resume=resume, progress=progress)
            trained_now = True
            done = load_checkpoint(checkpoint)["iteration"]
            if done < iterations:  # stopped (Ctrl-C): the checkpoint waits for the next call
                raise RuntimeError(f"training stopped after {done} of {iterations} iterations; "
                                   f"call again to finish it (it resumes from {out})")
    model, config, meta = load_model(out)
    metrics_file = out / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return model, {"run": out, "trained_now": trained_now, "config": config,
                   "class_names": meta["class_names"], "metrics": metrics}


def _finished(checkpoint: Path, iterations: int) -> bool:
    """Whether ``checkpoint`` exists and holds all ``iterations``."""
    if not checkpoint.is_file():
        return False
    return load_checkpoint(checkpoint)["iteration"] >= iterations


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive lock on ``lock_path`` (waiting for it) while the block runs."""
    import fcntl  # POSIX, as the run folder's own lock

    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
