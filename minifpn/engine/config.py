"""Training configurations, from a 2-core laptop to a GPU.

A run is described by one :class:`TrainConfig`. Its ``preset`` picks the
model size; everything else (data, schedule, checkpoints) is shared:

* ``"tiny"`` — a slim ResNet-18-FPN (half width, 64-channel pyramid, light
  heads with a GroupNorm conv box head, 256-pixel images): trains on the
  synthetic shapes in minutes on a CPU.
* ``"small"`` — a slim ResNet-50-FPN (quarter width, 128-channel pyramid),
  for CPU runs on real COCO images.
* ``"r50"`` — the paper's ResNet-50-FPN Mask R-CNN at full size (800 / 1333
  images, 256 channels, torchvision's defaults): for a GPU.

GroupNorm is the default everywhere: there are no pre-trained weights here,
and from-scratch detectors train well with it (He et al., "Rethinking
ImageNet Pre-training"). ``--weights`` starts from torchvision-format weights
(with ``--norm frozen_bn``, as torchvision's ResNets) or from a minifpn run,
with new predictors when the dataset has other classes.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field, fields

from minifpn import validation
from minifpn.models import MaskRCNN, detector_parts, resnet_fpn_backbone
from minifpn.models.detector import FasterRCNN

#: The backbone's norm layers (``minifpn.nn.normalization.make_norm``).
NORMS = ("gn", "frozen_bn", "bn")

#: Model and input settings per preset: backbone, part sizes and MaskRCNN arguments.
PRESETS = {
    "tiny": dict(
        backbone="resnet18", width=0.5, out_channels=64, min_size=256, max_size=320,
        # Half the paper's anchor sizes: they were chosen for 800-pixel images, and on
        # 256-pixel ones a small object sits inside many equally good anchors that all
        # learn to shrink (lesson 5). Measured on shapes: bbox AP50 0.21 → 0.49.
        rpn_anchor_sizes=(16, 32, 64, 128, 256),
        # Four GroupNorm'd 3×3 convs before one fc (the head of "Rethinking ImageNet
        # Pre-training" for from-scratch training) instead of the paper's two fc layers:
        # on shapes, bbox AP50 0.579 → 0.815 at 1,500 iterations (benchmarks/README.md).
        box_head="4conv1fc",
        representation_size=256, mask_layers=(32, 32, 32, 32), mask_dim_reduced=32,
        rpn_pre_nms_top_n_train=400, rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_train=200, rpn_post_nms_top_n_test=150,
        box_batch_size_per_image=64, box_detections_per_img=50,
    ),
    "small": dict(
        backbone="resnet50", width=0.25, out_channels=128, min_size=384, max_size=640,
        representation_size=512, mask_layers=(128, 128, 128, 128), mask_dim_reduced=128,
        rpn_pre_nms_top_n_train=1000, rpn_pre_nms_top_n_test=500,
        rpn_post_nms_top_n_train=1000, rpn_post_nms_top_n_test=500,
        box_batch_size_per_image=256,
    ),
    "r50": dict(backbone="resnet50", width=1.0, out_channels=256, min_size=800, max_size=1333),
}

#: Preset settings that size the detector's parts (:func:`~minifpn.models.detector_parts`);
#: the others are :class:`~minifpn.models.MaskRCNN` arguments.
PART_SETTINGS = ("representation_size", "box_head", "mask_layers", "mask_dim_reduced",
                 "rpn_anchor_sizes", "roi_canonical_size")


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved inside every checkpoint).

    The schedule: linear warm-up over ``warmup_iters``, then the learning rate
    drops ×``gamma`` at each fraction of the run in ``milestones`` — the
    detection recipe (Goyal et al.; Detectron), scaled to the run's length —
    or, with ``milestone_epochs``, at those epochs (Detectron2's "drop at
    epochs 8 and 11 of 12").

    Training options for real photos (all off by default):

    * ``categories``: train (and evaluate) on these COCO categories only,
      names or ids (``["person"]``); labels 1..K in the order given.
    * ``min_size`` / ``max_size``: the input size (default: the preset's); a
      list of ``min_size`` values is multi-scale training — each training image
      draws one short side (torchvision's tuple ``min_size``), evaluation uses
      the last.
    * ``color_jitter``: brightness / contrast / saturation jitter of that
      strength (one number for all three, or three), torchvision's ColorJitter
      (:func:`~minifpn.data.transforms.random_color_jitter`).
    * ``copy_paste``: the probability that a training image gets a random half
      of another training image's objects pasted onto it, cut out along their
      masks (Ghiasi et al.; :func:`~minifpn.data.copy_paste.random_copy_paste`).
    """

    preset: str = "tiny"
    data: str = "shapes"
    device: str = "cpu"
    #: 1,300 iterations of 2 images fit the main job in 15 minutes on a 2-core CPU.
    iters: int = 1300
    #: If set, the run's length in passes over the training images (replaces ``iters``).
    epochs: float | None = None
    batch_size: int = 2
    #: Peak learning rate. Detectron's 0.02 is for 16 images per step; for 2 (the
    #: default batch) the tiny preset on shapes measured bbox AP50 0.013 / 0.490 /
    #: 0.579 / 0.507 at lr 0.04 / 0.02 / 0.01 / 0.005 (1,500 iterations).
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    milestones: tuple = (0.75, 0.9)
    #: If set (with ``epochs``), the epochs at which the learning rate drops (replaces
    #: ``milestones``), converted to iterations with the run's images per epoch.
    milestone_epochs: tuple | None = None
    gamma: float = 0.1
    clip_grad_norm: float = 10.0
    norm: str = "gn"
    flip: bool = True
    #: Brightness / contrast / saturation jitter strength (0: off), or three of them.
    color_jitter: float | tuple = 0.0
    #: Probability of a copy-paste onto each training image (0: off).
    copy_paste: float = 0.0
    #: The input's short side (default: the preset's), or several: one drawn per image.
    min_size: int | tuple | None = None
    #: The cap on the input's long side (default: the preset's).
    max_size: int | None = None
    #: Only these COCO categories (names or ids; default: all).
    categories: tuple | None = None
    seed: int = 0
    checkpoint_every: int = 100
    eval_every: int = 0
    max_eval_images: int | None = None
    train_images: int | None = None
    eval_split: str = "val"
    out: str = "runs/shapes-tiny"
    weights: str | None = None
    model_overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        """Check every setting against :data:`RULES` (a ``ValueError`` naming the first bad one)."""
        for name in _LIST_SETTINGS:  # as read back from JSON, lists → tuples
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        for name, rule in RULES.items():
            rule.check(name, getattr(self, name))
        if not isinstance(self.model_overrides, dict):
            raise ValueError(f"model_overrides must be a dict of model settings, got "
                             f"{self.model_overrides!r}")
        unknown = sorted(set(self.model_overrides) - model_settings())
        if unknown:
            raise ValueError(f"model_overrides has unknown setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(model_settings()))}")
        twice = [k for k in ("min_size", "max_size")
                 if getattr(self, k) is not None and k in self.model_overrides]
        if twice:
            raise ValueError(f"{' and '.join(twice)} set both as a setting and in "
                             "model_overrides; set each once")

    def overrides(self) -> dict:
        """The model's settings on top of the preset: ``model_overrides`` and the input size."""
        sizes = {k: getattr(self, k) for k in ("min_size", "max_size")
                 if getattr(self, k) is not None}
        return {**self.model_overrides, **sizes}

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in _LIST_SETTINGS:
            if isinstance(d[name], tuple):
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The config saved by :meth:`to_dict` (in a checkpoint or config.json), checked."""
        if not isinstance(d, dict):
            raise ValueError(f"a training config must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**d)


#: What each setting of :class:`TrainConfig` must be (the command line uses the same rules).
RULES = {
    "preset": validation.one_of(sorted(PRESETS)),
    "data": validation.text(),
    "device": validation.device(),
    "iters": validation.whole(1),
    "epochs": validation.positive(optional=True),
    "batch_size": validation.whole(1),
    "lr": validation.positive(),
    "momentum": validation.non_negative(),
    "weight_decay": validation.non_negative(),
    "warmup_iters": validation.whole(0),
    "milestones": validation.fractions_list(),
    "milestone_epochs": validation.ascending_list(optional=True),
    "gamma": validation.positive(),
    "clip_grad_norm": validation.positive(),
    "norm": validation.one_of(NORMS),
    "flip": validation.flag(),
    "color_jitter": validation.jitter_strengths(),
    "copy_paste": validation.fraction(),
    "min_size": validation.sizes(optional=True),
    "max_size": validation.whole(1, optional=True),
    "categories": validation.names_or_ids(optional=True),
    "seed": validation.whole(0),
    "checkpoint_every": validation.whole(1),
    "eval_every": validation.whole(0),
    "max_eval_images": validation.whole(1, optional=True),
    "train_images": validation.whole(1, optional=True),
    "eval_split": validation.text(),
    "out": validation.text(),
    "weights": validation.text(optional=True),
}


#: Settings that hold a list (a tuple in Python, a list in JSON).
_LIST_SETTINGS = ("milestones", "milestone_epochs", "color_jitter", "min_size", "categories")


#: Settings of the backbone (:func:`~minifpn.models.resnet_fpn_backbone`); ``top_down`` and
#: ``lateral`` (default True) switch the FPN's two pathways off, as in the paper's Table 1.
BACKBONE_SETTINGS = ("backbone", "width", "out_channels", "top_down", "lateral")


def model_settings() -> set:
    """The names ``model_overrides`` (and a preset) may set: the backbone's and MaskRCNN's."""
    names = {*BACKBONE_SETTINGS, *PART_SETTINGS}
    for cls in (MaskRCNN, FasterRCNN):
        names |= set(inspect.signature(cls.__init__).parameters)
    return names - {"self", "num_classes", "kwargs", "mask_parts"}


def build_model(preset: str, num_classes: int, norm: str = "gn", overrides: dict | None = None):
    """A :class:`MaskRCNN` of the given preset for ``num_classes`` (including background)."""
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose from {', '.join(PRESETS)}")
    settings = {**PRESETS[preset], **(overrides or {})}
    try:
        return _build(settings, num_classes, norm)
    except (TypeError, ValueError) as error:  # e.g. a hand-edited model_overrides value
        raise ValueError(f"cannot build the {preset!r} model with model_overrides "
                         f"{overrides or {}}: {error}") from None


def _build(settings: dict, num_classes: int, norm: str):
    """The backbone from its settings, then MaskRCNN with the rest."""
    backbone = resnet_fpn_backbone(
        settings.pop("backbone"), norm=norm, width=settings.pop("width"),
        out_channels=settings.pop("out_channels"), top_down=settings.pop("top_down", True),
        lateral=settings.pop("lateral", True),
    )
    sized = {k: settings.pop(k) for k in PART_SETTINGS if k in settings}
    sized.setdefault("mask_layers", (256, 256, 256, 256))
    return MaskRCNN(backbone, **detector_parts(backbone.out_channels, num_classes, **sized),
                    **settings)
