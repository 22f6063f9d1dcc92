"""Statistics per layer: the weights and the activations of every layer, with warnings.

A network that trains badly often has one layer that has stopped working long
before the loss says so. Two tables find it:

* :func:`weight_stats` — one row per parameter tensor: shape, mean, std, min,
  max. A conv or linear kernel whose values are all equal (``min == max``)
  cannot tell its inputs apart (``"dead"``); values beyond
  :data:`EXPLODING_WEIGHT` mean the updates have run away (``"exploding"``).
  Matterport's Mask R-CNN shows the same kind of table in its
  ``inspect_weights`` notebook.
* :func:`activation_stats` — one forward pass with a hook
  (:meth:`~minifpn.nn.Module.register_forward_hook`) on every conv, linear,
  norm and ReLU layer; one row per layer with the mean, std, min and max of
  its output, the fraction of exactly-zero values and of positive values.
  A ReLU that lets (almost) nothing through — its input ≤ 0 nearly
  everywhere — is ``"dead"``: no gradient passes it back, so the layers
  before it cannot learn their way out (the "dying ReLU").

Many ReLUs are functions (``relu(self.conv(x))``), not modules, so there is
nothing to hook after them. :func:`activation_stats` therefore also walks the
autograd graph back from the model's outputs and marks every hooked output
that is the input of a ``relu`` op: for those, a positive fraction at or below
``1 − DEAD_FRACTION`` means the ReLU after the layer is dead. (The graph
exists when gradients are enabled; in training mode, with targets, every ReLU
on the way to a loss is found.)

Statistics are reduced on the device inside the hook, so an in-place ReLU
that overwrites a norm's output afterwards does not change them, and a table
costs one device→host copy (:func:`minifpn.backend.to_numpy`), however many
layers it has. Nothing here changes the model, but a training-mode forward
pass draws from minifpn's random generator (the samplers) like any other.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict

import numpy as np

from minifpn import backend, nn
from minifpn.autograd import Tensor

#: The layers whose outputs :func:`activation_stats` records: everything that
#: computes (convs, linear layers), normalises or rectifies. Containers
#: (``Sequential``) return a child's output again and are left out.
HOOKED_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d,
                nn.FrozenBatchNorm2d, nn.GroupNorm, nn.ReLU)

#: A layer is dead when at least this fraction of the values leaving its ReLU is
#: exactly 0: 99 % zeros means 1 % of the positions still pass a gradient back,
#: too few for the layer (and everything before it) to learn from.
DEAD_FRACTION = 0.99

#: A tensor whose std is at most this fraction of max(1, |mean|) is constant:
#: float32 rounding of a constant leaves a relative spread of about 1e-7, so
#: 1e-6 catches "all the same value" and nothing that still varies.
CONSTANT_STD = 1e-6

#: |activation| beyond this is exploding. With normalised layers (GroupNorm,
#: BatchNorm) activations are O(1)–O(10): in the lessons' trained detector no
#: output of any layer reaches 100 (Lesson 9 prints the table), so 10,000 is
#: far outside anything healthy and still far below float32's overflow.
EXPLODING_ACTIVATION = 1e4

#: |weight| beyond this is exploding: He-initialised kernels are O(0.01–1) and
#: weight decay keeps trained ones there. Matterport's inspect_weights uses the
#: same limit (its "Overflow?" warning).
EXPLODING_WEIGHT = 1e3


def _moments(data):
    """``(6,)`` float64 on ``data``'s device: Σx, Σ(x − x̄)², min, max, #(x = 0), #(x > 0).

    The spread is summed around the tensor's own mean (two passes), not as
    Σx² − n·x̄², which loses every digit when |x̄| ≫ std.
    """
    xp = backend.get_array_module(data)
    flat = data.reshape(-1)
    wide = flat.astype(xp.float64)
    total = wide.sum()
    centred = wide - total / flat.size
    return xp.stack([total, (centred * centred).sum(), wide.min(), wide.max(),
                     (flat == 0).sum().astype(xp.float64), (flat > 0).sum().astype(xp.float64)])


def _combine(moments: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Host ``(K, 6)`` moments of K calls with ``counts`` (K,) values each → one ``(6,)`` row.

    The spreads add up around the overall mean (Chan et al.'s pairwise rule):
    Σ m2_k + Σ n_k (x̄_k − x̄)².
    """
    means = moments[:, 0] / counts
    mean = moments[:, 0].sum() / counts.sum()
    m2 = moments[:, 1].sum() + (counts * (means - mean) ** 2).sum()
    return np.array([moments[:, 0].sum(), m2, moments[:, 2].min(), moments[:, 3].max(),
                     moments[:, 4].sum(), moments[:, 5].sum()])


def _summary(moments: np.ndarray, count: int) -> dict:
    """Mean, std (population), min, max, zero and positive fractions from one ``(6,)`` row."""
    total, m2, low, high, zeros, positive = (float(v) for v in moments)
    return dict(mean=total / count, std=math.sqrt(max(m2, 0.0) / count), min=low, max=high,
                zeros=zeros / count, positive=positive / count)


def _is_constant(row: dict) -> bool:
    return row["std"] <= CONSTANT_STD * max(1.0, abs(row["mean"]))


def _finite(row: dict) -> bool:
    return all(math.isfinite(row[key]) for key in ("mean", "std", "min", "max"))


def weight_stats(model, prefix: str = "") -> list[dict]:
    """One row per parameter: ``name``, ``shape``, ``mean``, ``std``, ``min``, ``max``, ``flag``.

    Args:
        model: a :class:`~minifpn.nn.Module`.
        prefix: only parameters whose name starts with this (e.g. ``"rpn."``).

    Returns:
        A list of dicts in registration order. ``flag`` is ``""`` or:

        * ``"non-finite"`` — a NaN or an infinity among the values;
        * ``"exploding"`` — some ``|w| > EXPLODING_WEIGHT``;
        * ``"dead"`` — a kernel (2 or more dimensions) whose values are all
          equal. One-dimensional tensors are not flagged: a bias or a norm's
          scale starts constant (0 or 1) by design.

        The std is the population std (``np.std``).
    """
    named = [(name, p) for name, p in model.named_parameters() if name.startswith(prefix)]
    if not named:
        return []
    xp = backend.get_array_module(named[0][1].data)
    moments = backend.to_numpy(xp.stack([_moments(p.data) for _, p in named]))  # one copy
    rows = []
    for (name, parameter), values in zip(named, moments):
        row = dict(name=name, shape=tuple(parameter.shape),
                   **{k: v for k, v in _summary(values, parameter.data.size).items()
                      if k in ("mean", "std", "min", "max")})
        if not _finite(row):
            row["flag"] = "non-finite"
        elif max(abs(row["min"]), abs(row["max"])) > EXPLODING_WEIGHT:
            row["flag"] = "exploding"
        elif parameter.data.ndim >= 2 and row["min"] == row["max"]:
            row["flag"] = "dead"
        else:
            row["flag"] = ""
        rows.append(row)
    return rows


def _tensors_in(value):
    """Every Tensor in a model's output (a Tensor, or dicts / lists / tuples of them)."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors_in(item)


def relu_inputs(outputs) -> list:
    """Every tensor that is the input of a ``relu`` op in the graph behind ``outputs``.

    Walks ``_parents`` from the output tensors back to the leaves (each node
    once). Empty when the outputs were computed without gradients.
    """
    stack, seen, found = list(_tensors_in(outputs)), set(), []
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if tensor._op == "relu" and tensor._parents:
            found.append(tensor._parents[0])
        stack.extend(tensor._parents)
    return found


class ActivationStats:
    """Record the output statistics of every conv / linear / norm / ReLU layer of ``model``.

    Usage::

        with ActivationStats(model) as recorder:
            losses = model(images, targets)
        rows = recorder.rows(losses)   # pass the outputs: ReLUs found in their graph

    Every forward call of a layer inside the ``with`` block adds to its row (a
    layer called once per pyramid level, as the RPN head's conv, gets one row
    over all its calls). ``prefix`` restricts the hooks to layers whose name
    starts with it — cheaper, for watching one layer during training.
    """

    def __init__(self, model, prefix: str = "", types=HOOKED_TYPES):
        self.layers = [(name, module) for name, module in model.named_modules()
                       if name.startswith(prefix) and isinstance(module, types)]
        self._handles = []
        self.reset()

    def reset(self) -> None:
        """Forget what was recorded (the hooks stay)."""
        self._moments = OrderedDict()  # name → list of (6,) device arrays, one per call
        self._counts = OrderedDict()  # name → number of values of each call
        # id(output) → (name, weak reference): for the ReLU search, without keeping graphs alive
        self._outputs = {}

    def _hook_for(self, name: str, module):
        def hook(module, inputs, output):
            if not isinstance(output, Tensor):
                return
            self._moments.setdefault(name, []).append(_moments(output.data))
            self._counts.setdefault(name, []).append(output.data.size)
            if output.requires_grad:  # in a graph: may be a relu's input
                self._outputs[id(output)] = (name, weakref.ref(output))
        return hook

    def __enter__(self) -> ActivationStats:
        self._handles = [module.register_forward_hook(self._hook_for(name, module))
                         for name, module in self.layers]
        return self

    def __exit__(self, *exc) -> bool:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return False

    def rows(self, outputs=None) -> list[dict]:
        """One row per layer that ran: see :func:`activation_stats` for the columns and flags.

        Args:
            outputs: what the model returned; its autograd graph tells which
                layers feed a functional ReLU (``feeds_relu``). Without it,
                only ReLU modules are known to be followed by a ReLU.
        """
        if not self._moments:
            return []
        followed = set()
        for tensor in relu_inputs(outputs):  # alive: the graph behind `outputs` holds them
            name, ref = self._outputs.get(id(tensor), (None, None))
            if ref is not None and ref() is tensor:  # the same tensor, not a reused id
                followed.add(name)
        names = list(self._moments)
        calls = [len(self._moments[name]) for name in names]
        xp = backend.get_array_module(self._moments[names[0]][0])
        host = backend.to_numpy(xp.stack([m for name in names for m in self._moments[name]]))
        kinds = dict((name, type(module).__name__) for name, module in self.layers)
        rows, start = [], 0
        for name, n in zip(names, calls):
            counts = np.asarray(self._counts[name], dtype=np.float64)
            combined = _combine(host[start:start + n], counts)
            start += n
            row = dict(name=name, kind=kinds[name], calls=n, feeds_relu=name in followed,
                       **_summary(combined, int(counts.sum())))
            row["flag"] = _activation_flag(row)
            rows.append(row)
        return rows


def _activation_flag(row: dict) -> str:
    """``"non-finite"``, ``"exploding"``, ``"dead"`` or ``""`` for one activation row."""
    if not _finite(row):
        return "non-finite"
    if max(abs(row["min"]), abs(row["max"])) > EXPLODING_ACTIVATION:
        return "exploding"
    # The fraction of zeros leaving the ReLU: this layer's own zeros, or its ReLU's.
    after_relu = 1.0 - row["positive"] if row["feeds_relu"] else row["zeros"]
    if after_relu >= DEAD_FRACTION or _is_constant(row):
        return "dead"
    return ""


def activation_stats(model, images, targets=None, prefix: str = "") -> list[dict]:
    """Run ``model(images[, targets])`` once and describe every layer's output.

    Args:
        model: a :class:`~minifpn.nn.Module`; its mode (train / eval) is kept.
        images: the model's input (for a detector, a list of ``(3, H, W)`` images).
        targets: passed as the second argument when given (a detector in
            training mode then returns its losses, whose graph reaches every ReLU).
        prefix: only layers whose name starts with this.

    Returns:
        A list of dicts, one per layer that ran, in the order of
        ``model.named_modules()``: ``name``, ``kind`` (the layer's class),
        ``calls`` (forward calls, e.g. one per pyramid level), ``feeds_relu``
        (a ReLU takes this output as its input), ``mean``, ``std``, ``min``,
        ``max`` (over every value of every call), ``zeros`` and ``positive``
        (fractions of values exactly 0 and > 0), and ``flag``:

        * ``"non-finite"`` — a NaN or an infinity in the output;
        * ``"exploding"`` — some ``|x| > EXPLODING_ACTIVATION``;
        * ``"dead"`` — at least :data:`DEAD_FRACTION` of what leaves the ReLU
          is 0 (a ReLU module's ``zeros``, or ``1 − positive`` for a layer
          that ``feeds_relu``), or the output is constant (std at most
          ``CONSTANT_STD · max(1, |mean|)``); ``""`` otherwise.
    """
    with ActivationStats(model, prefix=prefix) as recorder:
        outputs = model(images) if targets is None else model(images, targets)
        return recorder.rows(outputs)


#: Columns of :func:`format_table`: (key, header, format), shown when the rows have the key.
_COLUMNS = (("shape", "shape", "{}"), ("kind", "layer", "{}"), ("mean", "mean", "{:.3g}"),
            ("std", "std", "{:.3g}"), ("min", "min", "{:.3g}"), ("max", "max", "{:.3g}"),
            ("zeros", "= 0", "{:.1%}"), ("positive", "> 0", "{:.1%}"),
            ("feeds_relu", "→ ReLU", "{}"), ("flag", "flag", "{}"))


def _cell(key: str, fmt: str, value) -> str:
    if key == "feeds_relu":
        return "yes" if value else ""
    return fmt.format(value)


def format_table(rows: list[dict], only_flagged: bool = False, limit: int | None = None) -> str:
    """The rows of :func:`weight_stats` or :func:`activation_stats` as a text table.

    Args:
        rows: the rows; the columns shown are those the rows have (``= 0`` and
            ``> 0``: the fractions of zero and positive values; ``→ ReLU``:
            the output is a ReLU's input).
        only_flagged: show only rows with a flag.
        limit: show at most this many rows (a last line says how many were left out).
    """
    shown = [row for row in rows if row["flag"] or not only_flagged]
    left_out = max(0, len(shown) - limit) if limit is not None else 0
    shown = shown[:len(shown) - left_out]
    columns = [c for c in _COLUMNS if rows and c[0] in rows[0]]
    lines = [["name"] + [header for _, header, _ in columns]]
    for row in shown:
        lines.append([row["name"]] + [_cell(key, fmt, row[key]) for key, _, fmt in columns])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    left = {0, len(widths) - 1}  # names and flags left-aligned, numbers right-aligned
    text = ["  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(line, widths))).rstrip() for line in lines]
    text.insert(1, "-" * max(len(line) for line in text))
    if left_out:
        text.append(f"… {left_out} more rows")
    if not shown:
        text.append("(no rows with a flag)" if only_flagged else "(no rows)")
    return "\n".join(text)
