"""Pre-training the backbone on object crops: ImageNet pre-training in miniature.

Shape shorthand:  N crops;  B crops per step;  K categories;  S the crop side.

Detectors are usually started from a ResNet trained to classify ImageNet's
1.28 million photos. None can be downloaded here, so this trains one on what
there is: every object of the training photos, cut out and labelled with its
category, as a K-way classification task — the detector's own data seen
one object at a time. He et al. ("Rethinking ImageNet Pre-training") find
pre-training matters most where the detection data is small; this measures
whether a miniature of it pays on coco-mini (``benchmarks/README.md``).

1. **Crops** (:func:`object_crops`): each object's box is made square (the
   longer side), widened by ``context`` on every side so the crop shows some
   surroundings, and resampled to ``crop_size`` × ``crop_size`` with our own
   :func:`~minifpn.ops.roi_align` — RoIAlign *is* crop-and-resize, the
   objects of one image in one call. Crowd regions and objects under
   ``min_side`` pixels are left out.
2. **Classifier** (:class:`CropClassifier`): the detector's ResNet (the
   preset's), global average pooling of C5, one linear layer —
   torchvision's ResNet classifier (``avgpool`` + ``fc``).
3. **Training** (:func:`pretrain_backbone`): SGD with momentum, warm-up and
   step drops, each crop randomly shifted (a ``size`` window of the
   ``crop_size`` crop), flipped and colour-jittered.
4. **Checkpoints**: after every epoch ``pretrain_checkpoint.npz`` holds the
   weights, the optimiser's momentum, the schedule and both random
   generators, so an interrupted run continues with ``resume=True``
   (``minifpn pretrain --resume``) and ends with the same weights, bit for
   bit, as one that was never stopped.
5. **Output**: ``backbone.npz`` in torchvision's ResNet layout (``conv1.weight``,
   ``layer1.0.conv1.weight``, …, ``fc.weight``), so that
   ``minifpn train --weights RUN/backbone.npz`` starts the detector's
   backbone from it (``fc.*`` is reported unused, the FPN and heads start
   fresh) — exactly how a torchvision ImageNet checkpoint is used.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from minifpn import backend, nn, optim, serialization
from minifpn.autograd import Tensor, no_grad
from minifpn.data import resolve_data
from minifpn.data.coco import CocoDetection
from minifpn.data.transforms import color_jitter, draw_color_jitter
from minifpn.engine.config import PRESETS
from minifpn.functional import cross_entropy
from minifpn.models.resnet import resnet
from minifpn.models.transform import IMAGENET_MEAN, IMAGENET_STD, to_chw_float
from minifpn.ops import roi_align


@dataclass
class PretrainConfig:
    """One pre-training run (saved as ``pretrain_config.json``)."""

    data: str = "coco-mini"
    #: The detector preset whose ResNet is trained (its depth and width).
    preset: str = "tiny"
    norm: str = "gn"
    #: Side of the stored crops; training sees a random ``size`` window of each.
    crop_size: int = 72
    size: int = 64
    #: Context around each (squared) box, as a fraction of its side, on every side.
    context: float = 0.15
    #: Objects narrower or lower than this (pixels) are not cropped.
    min_side: int = 16
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    #: More than detection's 1e-4: 3,000 crops overfit quickly.
    weight_decay: float = 5e-4
    warmup_iters: int = 100
    color_jitter: float = 0.4
    seed: int = 0
    device: str = "cpu"
    #: Crop only the first N images of each split (None: all of them).
    max_images: int | None = None
    out: str = "runs/pretrain-tiny"


#: The per-epoch checkpoint inside ``config.out``.
CHECKPOINT_NAME = "pretrain_checkpoint.npz"


def _saved_run(out: Path, config: PretrainConfig, resume: bool) -> dict | None:
    """The checkpoint to resume from (None: start afresh); refuses what would lose work."""
    checkpoint = out / CHECKPOINT_NAME
    if not resume:
        if checkpoint.exists() or (out / "backbone.npz").exists():
            raise FileExistsError(
                f"{out} holds a pre-training run already: continue it with resume=True "
                f"(`minifpn pretrain --out {out} --resume`), or choose another out folder")
        return None
    if not checkpoint.is_file():
        raise FileNotFoundError(f"nothing to resume in {out}: no {CHECKPOINT_NAME} (start the "
                                "run without --resume)")
    saved = serialization.load(checkpoint)
    then = {k: v for k, v in json.loads(str(saved["config"])).items() if k != "out"}
    now = {k: v for k, v in asdict(config).items() if k != "out"}
    changed = sorted(k for k in now if then.get(k) != now[k])
    if changed:
        raise ValueError(f"{checkpoint} was saved with other settings ("
                         + ", ".join(f"{k}: {then.get(k)!r} then, {now[k]!r} now" for k in changed)
                         + "); resume with the same settings, or start afresh in another folder")
    return saved


def object_crops(dataset: CocoDetection, crop_size: int = 72, context: float = 0.15,
                 min_side: int = 16, progress: bool = False, max_images: int | None = None):
    """Every non-crowd object of ``dataset`` (at least ``min_side`` pixels), cut out and resized.

    ``max_images`` crops only the first N images.

    Returns:
        ``crops`` ``(N, 3, S, S)`` float32 in [0, 1] (``S = crop_size``) and
        ``labels`` ``(N,)`` int64: the dataset's labels minus one (0..K−1).
    """
    from tqdm.auto import tqdm

    crops, labels = [], []
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    for index in tqdm(range(count), desc="cropping objects", disable=not progress):
        target = dataset.target(index)
        boxes = target["boxes"]
        keep = ((target["iscrowd"] == 0) & (boxes[:, 2] - boxes[:, 0] >= min_side)
                & (boxes[:, 3] - boxes[:, 1] >= min_side))
        if not keep.any():
            continue
        boxes = boxes[keep].astype(np.float64)
        # square boxes around each object's centre, widened by the context on every side
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2                         # (k, 2)
        half = (boxes[:, 2:] - boxes[:, :2]).max(axis=1, keepdims=True) * (0.5 + context)
        square = np.concatenate([centre - half, centre + half], axis=1)    # (k, 4)
        image = Tensor(to_chw_float(dataset.image(index))[None])           # (1, 3, H, W)
        with no_grad():
            cut = roi_align(image, [square], crop_size, sampling_ratio=2, aligned=True)
        crops.append(cut.data.astype(np.float32))
        labels.append(target["labels"][keep] - 1)
    if not crops:
        raise ValueError(f"no object of at least {min_side} pixels to crop in this dataset")
    return np.concatenate(crops), np.concatenate(labels).astype(np.int64)


class CropClassifier(nn.Module):
    """A ResNet trunk, global average pooling of C5 and a linear layer: K class scores."""

    def __init__(self, body, num_classes: int):
        super().__init__()
        self.body = body
        self.fc = nn.Linear(list(body.out_channels.values())[-1], num_classes)

    def forward(self, x):
        """``(B, 3, S, S)`` normalised crops → ``(B, K)`` logits."""
        c5 = list(self.body(x).values())[-1]                    # (B, C, S/32, S/32)
        return self.fc(c5.mean(axis=(2, 3)))                    # (B, C) → (B, K)


def _normalise(batch):
    """Crops in [0, 1] → ImageNet-normalised, as the detector's transform does."""
    xp = backend.get_array_module(batch)
    mean = xp.asarray(IMAGENET_MEAN, dtype=batch.dtype)[:, None, None]
    std = xp.asarray(IMAGENET_STD, dtype=batch.dtype)[:, None, None]
    return (batch - mean) / std


def augment(crops, rng, size: int, jitter: float):
    """A random ``size`` window of each crop, flipped half the time, colour-jittered."""
    count, _, side, _ = crops.shape
    out = np.empty((count, 3, size, size), np.float32)
    ys, xs = rng.integers(0, side - size + 1, (2, count))
    flips = rng.random(count) < 0.5
    for i in range(count):  # a loop over crops, as over images: each its own draws
        window = crops[i, :, ys[i]:ys[i] + size, xs[i]:xs[i] + size]
        window = window[:, :, ::-1] if flips[i] else window
        out[i] = color_jitter(window, *draw_color_jitter(rng, jitter), layout="chw") \
            if jitter else window
    return out


def accuracy(model, crops, labels, size: int, device: str, batch_size: int = 256) -> float:
    """Top-1 accuracy on the centre ``size`` window of each crop."""
    offset = (crops.shape[-1] - size) // 2
    correct = 0
    model.eval()
    with no_grad():
        for start in range(0, len(crops), batch_size):
            batch = crops[start:start + batch_size, :, offset:offset + size, offset:offset + size]
            logits = model(Tensor(_normalise(backend.to_device(batch, device))))
            predicted = backend.to_numpy(logits.data.argmax(axis=1))
            correct += int((predicted == labels[start:start + batch_size]).sum())
    model.train()
    return correct / max(1, len(crops))


def pretrain_backbone(config: PretrainConfig, progress: bool = True, resume: bool = False,
                      stop_after: int | None = None) -> dict:
    """Train a :class:`CropClassifier` on the training photos' objects; save its weights.

    Writes into ``config.out``: ``backbone.npz`` (torchvision's ResNet
    layout), ``pretrain_config.json`` and ``metrics.json`` (losses per epoch,
    train and validation top-1 accuracy, seconds), and after every epoch
    ``pretrain_checkpoint.npz``. Returns the metrics.

    Args:
        resume: continue the run whose checkpoint is in ``config.out`` (its
            settings must be ``config``'s); without it, a folder that holds a
            pre-training already is refused rather than overwritten.
        stop_after: stop after this many epochs as an interruption would (the
            checkpoint written, no ``backbone.npz``); returns None. For tests.
    """
    from tqdm.auto import tqdm

    if config.preset not in PRESETS:
        raise ValueError(f"unknown preset {config.preset!r}: choose from {', '.join(PRESETS)}")
    if not 0 < config.size <= config.crop_size:
        raise ValueError(f"size must be in 1..crop_size ({config.crop_size}), got {config.size}")
    out = Path(config.out)
    saved = _saved_run(out, config, resume)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter() - (saved["seconds"] if saved else 0.0)
    root = resolve_data(config.data)
    train_set = CocoDetection(root, "train", skip_empty=True, verbose=False)
    val_set = CocoDetection(root, "val", skip_empty=True, verbose=False)
    crops, labels = object_crops(train_set, config.crop_size, config.context, config.min_side,
                                 progress, config.max_images)
    val_crops, val_labels = object_crops(val_set, config.crop_size, config.context,
                                         config.min_side, progress, config.max_images)
    num_classes = len(train_set.class_names) - 1
    print(f"{len(crops)} training crops and {len(val_crops)} validation crops of "
          f"{num_classes} categories, {config.crop_size}×{config.crop_size} pixels")

    backend.manual_seed(config.seed)
    settings = PRESETS[config.preset]
    body = resnet(settings["backbone"], norm=config.norm, width=settings["width"])
    model = CropClassifier(body, num_classes).to(config.device)
    steps_per_epoch = math.ceil(len(crops) / config.batch_size)
    total = config.epochs * steps_per_epoch
    optimizer = optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    scheduler = optim.WarmupMultiStepLR(optimizer, [int(0.7 * total), int(0.9 * total)],
                                        warmup_iters=min(config.warmup_iters, total))
    rng = np.random.default_rng(config.seed)
    history, first = [], 0
    if saved:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        rng.bit_generator.state = saved["rng"]
        backend.set_rng_state(saved["backend_rng"])
        history, first = json.loads(saved["history"]), saved["epoch"]
        print(f"resuming after epoch {first} of {config.epochs}")
    bar = tqdm(total=total, initial=first * steps_per_epoch, desc="pre-training",
               disable=not progress)
    for epoch in range(first, config.epochs):
        order = rng.permutation(len(crops))
        losses = []
        for start in range(0, len(crops), config.batch_size):
            chosen = order[start:start + config.batch_size]
            batch = augment(crops[chosen], rng, config.size, config.color_jitter)
            logits = model(Tensor(_normalise(backend.to_device(batch, config.device))))
            loss = cross_entropy(logits, backend.to_device(labels[chosen], config.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.data))
            bar.update(1)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)),
                        "seconds": round(time.perf_counter() - began, 1)})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
        serialization.save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": rng.bit_generator.state,
            "backend_rng": backend.get_rng_state(), "epoch": epoch + 1,
            "history": json.dumps(history), "seconds": time.perf_counter() - began,
            "config": json.dumps(asdict(config)),
        }, out / CHECKPOINT_NAME)
        if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < config.epochs:
            bar.close()
            print(f"stopped after epoch {epoch + 1}: continue with "
                  f"`minifpn pretrain --out {out} --resume`")
            return None
    bar.close()
    metrics = {
        "train_crops": len(crops), "val_crops": len(val_crops), "categories": num_classes,
        "train_top1": accuracy(model, crops, labels, config.size, config.device),
        "val_top1": accuracy(model, val_crops, val_labels, config.size, config.device),
        # what always answering the most frequent category scores: the floor to beat
        "val_majority_top1": float((val_labels == np.bincount(labels).argmax()).mean()),
        "seconds": round(time.perf_counter() - began, 1), "history": history,
    }
    state = {**model.body.state_dict(), **model.fc.state_dict(prefix="fc.")}
    serialization.save({k: backend.to_numpy(v) for k, v in state.items()}, out / "backbone.npz")
    (out / "pretrain_config.json").write_text(json.dumps(asdict(config), indent=1))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"top-1 accuracy: train {metrics['train_top1']:.3f}, validation "
          f"{metrics['val_top1']:.3f} (always the most frequent category: "
          f"{metrics['val_majority_top1']:.3f}); {metrics['seconds']:.0f} s; "
          f"weights in {out / 'backbone.npz'}")
    return metrics

