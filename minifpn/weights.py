"""Bringing torchvision checkpoints into minifpn.

minifpn's modules carry torchvision's names, so a checkpoint mostly loads
key for key. Three things stand in the way, and :func:`load_torchvision`
handles each:

1. **Where the model starts.** A detector checkpoint says
   ``backbone.body.layer1.0.conv1.weight``; a :class:`BackboneWithFPN` calls
   that ``body.layer1.0.conv1.weight``, a bare ResNet ``layer1.0.conv1.weight``.
   Wrapper prefixes (``module.`` from DataParallel, ``backbone.``, ``body.``)
   are tried off and on until the key names a tensor of the model.
2. **Renamed layers.** torchvision 0.13 wrapped several convs in a
   ``Conv2dNormActivation`` (a Sequential), adding ``.0`` to their keys;
   older checkpoints use the old names (:data:`LEGACY_RENAMES`).
3. **Parts the model does not have** — an ImageNet classifier's ``fc.*``,
   BatchNorm's ``num_batches_tracked`` for a frozen-BN model — are reported,
   not loaded.

Fine-tuning on other classes (:func:`load_pretrained`) takes one more step,
the one torchvision's fine-tuning tutorial takes by hand: the predictors —
the layers with one output per class — keep the model's own fresh weights,
and everything else is loaded.

A ``.pth`` file is a pickle that only PyTorch can read; convert it once with
``minifpn weights convert model.pth model.npz`` (which needs torch), then
load the ``.npz`` anywhere (which does not)::

    from minifpn import load
    from minifpn.models import resnet_fpn_backbone
    from minifpn.weights import load_torchvision

    backbone = resnet_fpn_backbone("resnet50", norm="frozen_bn")
    report = load_torchvision(backbone, load("maskrcnn_resnet50_fpn.npz"), strict=False)
    print(report)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from minifpn import backend, serialization
from minifpn.autograd import raw
from minifpn.nn import StateDictError

#: Old torchvision key spellings → today's, as (pattern, replacement) pairs.
LEGACY_RENAMES = (
    # FPN convs before torchvision 0.13: inner_blocks.0.weight → inner_blocks.0.0.weight
    (re.compile(r"(fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), r"\1.0.\2"),
    # the RPN head's shared 3×3 conv: rpn.head.conv.weight → rpn.head.conv.0.0.weight
    (re.compile(r"(rpn\.head\.conv)\.(weight|bias)$"), r"\1.0.0.\2"),
    # mask head convs: mask_head.mask_fcn1.weight → mask_head.0.0.weight (1-based → 0-based)
    (
        re.compile(r"(mask_head)\.mask_fcn(\d+)\.(weight|bias)$"),
        lambda m: f"{m[1]}.{int(m[2]) - 1}.0.{m[3]}",
    ),
)

_WRAPPERS = ("module.", "backbone.", "body.")


@dataclass
class LoadReport:
    """What :func:`load_torchvision` did with every key."""

    loaded: list = field(default_factory=list)  # model keys that received a value
    missing: list = field(default_factory=list)  # model keys the checkpoint did not provide
    unused: list = field(default_factory=list)  # checkpoint keys with no place in the model
    renamed: dict = field(default_factory=dict)  # checkpoint key → model key, where they differ
    replaced: list = field(default_factory=list)  # predictor keys kept fresh for new classes

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.replaced:
            lines.append(f"{len(self.replaced)} predictor tensors replaced for the new classes "
                         f"(trained from scratch): {', '.join(self.replaced)}")
        if self.renamed:
            lines.append(f"{len(self.renamed)} matched under another name, e.g. "
                         + ", ".join(f"{a} → {b}" for a, b in list(self.renamed.items())[:3]))
        for title, keys in (("missing from the checkpoint", self.missing),
                            ("in the checkpoint but unused", self.unused)):
            if keys:
                more = f", … ({len(keys) - 8} more)" if len(keys) > 8 else ""
                lines.append(f"{len(keys)} {title}: {', '.join(keys[:8])}{more}")
        return "\n".join(lines)


def _as_array(value):
    """A NumPy array from a NumPy/CuPy array, a minifpn Tensor or a torch tensor."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        return value.detach().cpu().numpy()
    return backend.to_numpy(raw(value))


def _candidates(key: str):
    """Names this checkpoint key may have in the model, most literal first."""
    for pattern, replacement in LEGACY_RENAMES:
        key = pattern.sub(replacement, key)
    names = [key]
    stripped = key
    while True:  # take wrapper prefixes off: backbone.body.x → body.x → x
        prefix = next((p for p in _WRAPPERS if stripped.startswith(p)), None)
        if prefix is None:
            break
        stripped = stripped[len(prefix):]
        names.append(stripped)
    # … or put them on: a bare ResNet checkpoint loading into a backbone or detector
    names += [p + stripped for p in ("body.", "backbone.body.")]
    return names


def map_torchvision_keys(state_dict, model_keys):
    """Match checkpoint keys to model keys. Returns ``(mapped, renamed, unused)``."""
    model_keys = set(model_keys)
    mapped, renamed, unused = {}, {}, []
    for key, value in state_dict.items():
        target = next((name for name in _candidates(key) if name in model_keys), None)
        if target is None:
            unused.append(key)
            continue
        mapped[target] = _as_array(value)
        if target != key:
            renamed[key] = target
    return mapped, renamed, unused


def load_torchvision(model, state_dict, strict: bool = True) -> LoadReport:
    """Load a torchvision-format state dict (a dict of arrays, or a ``.npz`` path) into ``model``.

    Keys are matched as described in the module docstring. Shape mismatches
    always raise :class:`~minifpn.nn.StateDictError` (and nothing is loaded).
    With ``strict=True`` (default) a model tensor the checkpoint does not
    provide also raises; keys the model has no place for never do — they
    are listed in the report (e.g. an ImageNet ``fc`` when loading a backbone).

    Returns:
        A :class:`LoadReport`; ``print`` it for a summary.
    """
    state_dict = _read(state_dict)
    mapped, renamed, unused = map_torchvision_keys(state_dict, model.state_dict())
    return _load_mapped(model, mapped, renamed, unused, strict)


#: Where a detector's predictors live: their shapes follow the number of classes.
PREDICTOR_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.")


def load_pretrained(model, weights, class_names=None) -> LoadReport:
    """Start a detector from trained weights, replacing its predictors if the classes differ.

    What torchvision's fine-tuning tutorial does by hand — a new
    ``FastRCNNPredictor`` and ``MaskRCNNPredictor`` for the new classes — done
    for any weights: every tensor under ``roi_heads.box_predictor`` and
    ``roi_heads.mask_predictor`` keeps the model's fresh initialisation, and
    everything else (backbone, FPN, RPN, box and mask heads) is loaded.

    Args:
        model: the detector, built for the new classes.
        weights: torchvision-format weights (a ``.npz`` path or a state dict),
            or a minifpn training checkpoint (its path, or the loaded dict).
        class_names: the model's class names, background first. The classes
            differ when a minifpn checkpoint was trained on other names; for
            weights without names (torchvision's), when a predictor's shape
            differs from the model's.

    Returns:
        A :class:`LoadReport` listing the ``replaced`` predictor tensors.

    Raises:
        StateDictError: a tensor outside the predictors does not fit the model
            (another preset or backbone); nothing is loaded.
    """
    checkpoint = _read(weights)
    trained_classes = None
    if isinstance(checkpoint.get("model"), dict):  # a minifpn training checkpoint
        trained_classes = (checkpoint.get("meta") or {}).get("class_names")
        checkpoint = checkpoint["model"]
    model_state = model.state_dict()
    mapped, renamed, unused = map_torchvision_keys(checkpoint, model_state)
    predictors = [key for key in model_state if key.startswith(PREDICTOR_PREFIXES)]
    if trained_classes is not None and class_names is not None:
        new_classes = list(trained_classes) != list(class_names)
    else:
        new_classes = any(key in mapped and mapped[key].shape != tuple(model_state[key].shape)
                          for key in predictors)
    replaced = predictors if new_classes else []
    for key in replaced:
        mapped.pop(key, None)
    renamed = {old: new for old, new in renamed.items() if new not in replaced}
    return _load_mapped(model, mapped, renamed, unused, strict=False, replaced=replaced)


def _read(state_dict) -> dict:
    """A state dict (or checkpoint) as given, or read from a ``.npz`` path."""
    if isinstance(state_dict, (str, bytes)) or hasattr(state_dict, "__fspath__"):
        return serialization.load(state_dict)
    return state_dict


def _load_mapped(model, mapped, renamed, unused, strict, replaced=()) -> LoadReport:
    """Load the matched tensors and report on every key (see :func:`load_torchvision`)."""
    model_keys = list(model.state_dict())
    report = LoadReport(
        loaded=[k for k in model_keys if k in mapped],
        missing=[k for k in model_keys
                 if k not in mapped and k not in replaced and not _optional(k)],
        unused=unused,
        renamed=renamed,
        replaced=list(replaced),
    )
    if strict and report.missing:
        raise StateDictError(
            f"load_torchvision: the checkpoint does not fit the model\n{report}\n"
            f"(pass strict=False to load what matches)",
            report.missing, unused, [],
        )
    model.load_state_dict(mapped, strict=False)
    return report


def _optional(key: str) -> bool:
    """Keys whose absence is harmless: BatchNorm's step counter."""
    return key.endswith("num_batches_tracked")


def convert_checkpoint(src, dst) -> int:
    """Convert a PyTorch ``.pth`` checkpoint to minifpn's ``.npz``; returns the tensor count.

    Needs PyTorch — only for this step. Checkpoints that wrap the weights
    (``{"model": …}`` or ``{"state_dict": …}``) are unwrapped.
    """
    try:
        import torch
    except ImportError:
        raise RuntimeError(
            "converting a PyTorch .pth checkpoint needs PyTorch, which minifpn itself does not "
            "use. Install it just for this step (`python3 -m pip install torch`), or convert on "
            "a machine that has it; the .npz it writes loads here without torch."
        ) from None
    try:
        checkpoint = torch.load(src, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such checkpoint: {src}") from None
    except Exception as error:
        raise ValueError(f"{src} is not a readable PyTorch checkpoint ({error})") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
    arrays = {k: np.ascontiguousarray(_as_array(v)) for k, v in checkpoint.items()
              if hasattr(v, "detach")}
    if not arrays:
        raise ValueError(f"{src} holds no tensors: is it a state dict?")
    serialization.save(arrays, dst)
    return len(arrays)
