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

from minifpn.data import find_coco_mini, how_to_get_data, resolve_data
from minifpn.data.shapes import default_cache_dir, shapes_root
from minifpn.engine.checkpoint import load_checkpoint, load_model
from minifpn.engine.config import TrainConfig
from minifpn.engine.pretrain import CHECKPOINT_NAME, PretrainConfig, pretrain_backbone
from minifpn.engine.train import train

#: Iterations of 2 images for the lessons' trained model: about 6 minutes on a 2-core CPU
#: (0.4 s/it), enough for shapes of every size (the main job runs 1,300).
LESSON_ITERS = 800
#: The shapes dataset of fast mode (CI): a small one, so that its generation takes seconds.
FAST_SHAPES = dict(num_train=64, num_val=16)


#: Issue 18's person detector: the settings chosen by the ablation in benchmarks/README.md
#: ("coco-mini, person only"). Lesson 8b loads the model they train.
PERSON_RECIPE = dict(
    categories=("person",), min_size=(320, 352, 384, 416), max_size=560, color_jitter=0.4,
    copy_paste=0.5, iters=4800, eval_every=1000, checkpoint_every=500,
)
#: Pre-training of the recipe's backbone on object crops (None: from random weights).
PERSON_PRETRAIN = dict(epochs=30)
#: Fast mode (CI): the recipe on a few photos, for a few iterations.
FAST_PERSON = dict(iters=6, train_images=8, max_eval_images=4, eval_every=0,
                   checkpoint_every=6, warmup_iters=2)
FAST_PRETRAIN = dict(epochs=1, max_images=8)


def person_dirs(data=None, cache_dir=None) -> tuple:
    """Where :func:`person_detector` keeps (or finds) its runs: ``(pretrain, detector)``.

    Train them yourself with ``mpiexec`` (faster than one process) and
    :func:`person_detector` loads them::

        minifpn pretrain --data coco-mini --epochs 30 --out PRETRAIN
        mpiexec -n 2 minifpn train --data coco-mini --categories person \\
            --min-size 320,352,384,416 --max-size 560 --color-jitter 0.4 --copy-paste 0.5 \\
            --iters 4800 --eval-every 1000 --checkpoint-every 500 \\
            --weights PRETRAIN/backbone.npz --out DETECTOR
    """
    root = _coco(data)
    base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir() / "trained"
    pre = base / f"{root.name}-pretrain-tiny-{(PERSON_PRETRAIN or {}).get('epochs', 0)}ep"
    return pre.absolute(), (base / f"{root.name}-person-tiny-{PERSON_RECIPE['iters']}it"
                            ).absolute()


def _coco(data):
    root = resolve_data(data) if data else find_coco_mini()
    if root is None:
        raise FileNotFoundError(how_to_get_data())
    return root


def person_detector(fast: bool = False, data=None, cache_dir=None, progress: bool = False,
                    category: str = "person"):
    """The tiny Mask R-CNN trained to find people on coco-mini, trained now or loaded.

    :data:`PERSON_RECIPE` (with the backbone pre-trained on object crops,
    :data:`PERSON_PRETRAIN`) — about an hour on a 2-core CPU, so it is trained
    once and kept in the cache (:func:`person_dirs`), where a run made with
    the equivalent ``minifpn`` commands is found as well. ``fast`` runs the
    recipe on a few photos for a few iterations (numbers that mean nothing:
    the lessons' fast mode).

    ``data`` is coco-mini by default; ``category`` replaces the recipe's
    ``person`` (on a dataset without people: Lesson 8b's shapes stand-in).

    Returns:
        ``(model, info)`` as :func:`shapes_detector`, plus ``info["pretrain"]``:
        the pre-training's metrics (None without pre-training).
    """
    root = _coco(data)
    pre_dir, out = person_dirs(root, cache_dir)
    settings = {**PERSON_RECIPE, **(FAST_PERSON if fast else {})}
    if category != "person":
        settings["categories"] = (category,)
        out = out.with_name(out.name.replace("-person-", f"-{category}-"))
    if fast:
        pre_dir, out = pre_dir.with_name(pre_dir.name + "-fast"), out.with_name(out.name + "-fast")
    weights, pretrained = None, None
    if PERSON_PRETRAIN is not None:
        weights = pre_dir / "backbone.npz"
        pre_dir.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(pre_dir.with_name(pre_dir.name + ".lock")):
            if not weights.is_file():
                page = io.StringIO() if not progress else None
                with contextlib.redirect_stdout(page) if page else contextlib.nullcontext():
                    pretrain_backbone(PretrainConfig(data=str(root), out=str(pre_dir), **{
                        **PERSON_PRETRAIN, **(FAST_PRETRAIN if fast else {})}), progress=progress,
                        resume=(pre_dir / CHECKPOINT_NAME).is_file())  # an interrupted one
        pretrained = json.loads((pre_dir / "metrics.json").read_text())
    config = TrainConfig(preset="tiny", data=str(root), out=str(out),
                         weights=None if weights is None else str(weights), **settings)
    model, info = _cached_run(config, progress, same=("preset", *settings))
    return model, {**info, "pretrain": pretrained}


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
    config = TrainConfig(preset="tiny", data=str(root), iters=iterations, seed=seed,
                         warmup_iters=min(100, iterations), out=str((base / name).absolute()),
                         checkpoint_every=max(1, iterations // 4),
                         model_overrides={} if top_down else {"top_down": False})
    return _cached_run(config, progress)


def _cached_run(config: TrainConfig, progress: bool, same=()):
    """Train ``config`` into its ``out`` folder unless it is finished there; load it.

    A finished run whose saved settings differ from ``config`` in any of
    ``same`` is refused (it was trained with another recipe).
    """
    out = Path(config.out)
    checkpoint = out / "checkpoint.npz"
    trained_now = False
    out.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(out.with_name(out.name + ".lock")):  # two lessons at once: one trains
        saved = load_checkpoint(checkpoint) if checkpoint.is_file() else None
        if saved is not None:
            wanted = json.loads(json.dumps(config.to_dict()))  # tuples → lists, as saved
            other = [k for k in same if saved["config"].get(k) != wanted[k]]
            if other:
                raise ValueError(f"{out} holds a run with other settings ("
                                 + ", ".join(f"{k}={saved['config'].get(k)!r}, not {wanted[k]!r}"
                                             for k in other)
                                 + "); move it away to train this one there")
        if saved is None or saved["iteration"] < config.iters:
            if saved is not None:  # an interrupted run continues, bit for bit
                config = TrainConfig.from_dict(saved["config"])
            # The final evaluation table: in metrics.json (returned below), not on the page.
            page = io.StringIO() if not progress else None  # None: print as usual
            with contextlib.redirect_stdout(page) if page else contextlib.nullcontext():
                train(config, resume=saved is not None, progress=progress)
            trained_now = True
            done = load_checkpoint(checkpoint)["iteration"]
            if done < config.iters:  # stopped (Ctrl-C): the checkpoint waits for the next call
                raise RuntimeError(f"training stopped after {done} of {config.iters} "
                                   f"iterations; call again to finish it (it resumes from {out})")
    model, config, meta = load_model(out)
    metrics_file = out / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return model, {"run": out, "trained_now": trained_now, "config": config,
                   "class_names": meta["class_names"], "metrics": metrics}


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
