"""Checked settings: one rule per kind of value, for Python callers and the command line alike.

A :class:`Rule` says what a setting must be ("a whole number ≥ 1") and
checks it in two places from that one definition:

* :meth:`Rule.check` — for a value given in Python (``TrainConfig(iters=0)``)
  or read back from a file (a checkpoint's saved config): a ``ValueError``
  naming the setting, what it must be, and what it was;
* :meth:`Rule.argparse_type` — for a value typed on the command line:
  ``--iters 0`` ends in argparse's usual ``argument --iters: must be a whole
  number ≥ 1, got '0'`` (exit status 2) before anything runs.

So ``--checkpoint-every 0``, ``--batch-size -2``, ``--epochs inf`` or
``--lr nan`` never reach the code that would divide by them, loop zero times
or train on NaN.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

from minifpn.backend import normalize_device


@dataclass(frozen=True)
class Rule:
    """What one setting must be.

    Attributes:
        what: the requirement, completing "must be …" (``"a whole number ≥ 1"``).
        parse: text → value, for the command line (``int``, ``float``, ``str``).
        accepts: value → whether it meets the requirement.
        optional: ``None`` is accepted too (the setting is off / unset).
    """

    what: str
    parse: Callable
    accepts: Callable
    optional: bool = False

    def check(self, name: str, value):
        """Return ``value`` if it meets the rule, else raise ``ValueError`` naming ``name``."""
        if (value is None and self.optional) or self.accepts(value):
            return value
        raise ValueError(f"{name} must be {self.what}, got {value!r}")

    def argparse_type(self) -> Callable:
        """A ``type=`` for ``argparse.add_argument`` that parses and checks one value."""

        def convert(text: str):
            try:
                value = self.parse(text)
            except ValueError:  # "3.5" for a whole number, "abc" for a number
                value = text
            if not self.accepts(value):
                raise argparse.ArgumentTypeError(f"must be {self.what}, got {text!r}")
            return value

        convert.__name__ = self.what
        return convert


def _is_whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def whole(low: int, optional: bool = False) -> Rule:
    """A whole number ≥ ``low`` (booleans are not numbers here)."""
    return Rule(f"a whole number ≥ {low}", int, lambda v: _is_whole(v) and v >= low, optional)


def positive(optional: bool = False) -> Rule:
    """A finite number > 0 (not NaN, not ±inf)."""
    return Rule("a finite number > 0", float, lambda v: _is_real(v) and v > 0, optional)


def non_negative() -> Rule:
    """A finite number ≥ 0."""
    return Rule("a finite number ≥ 0", float, lambda v: _is_real(v) and v >= 0)


def fraction() -> Rule:
    """A number in [0, 1] (a probability, a score threshold)."""
    return Rule("a number between 0 and 1", float, lambda v: _is_real(v) and 0 <= v <= 1)


def one_of(choices) -> Rule:
    """One of a fixed set of names."""
    choices = tuple(choices)
    return Rule(f"one of {', '.join(map(repr, choices))}", str, lambda v: v in choices)


def text(optional: bool = False) -> Rule:
    """A non-empty string (a path, a split name)."""
    return Rule("a non-empty text", str, lambda v: isinstance(v, str) and v.strip() != "",
                optional)


def flag() -> Rule:
    """``True`` or ``False``."""
    return Rule("True or False", bool, lambda v: isinstance(v, bool))


def fractions_list() -> Rule:
    """A list of numbers in (0, 1], ascending (the learning-rate milestones)."""
    def accepts(v):
        return (isinstance(v, (list, tuple)) and all(_is_real(m) and 0 < m <= 1 for m in v)
                and list(v) == sorted(v))

    return Rule("an ascending list of fractions in (0, 1]", float, accepts)


def _split(parse_one: Callable) -> Callable:
    """Text ``"a,b,c"`` → ``[parse_one("a"), parse_one("b"), parse_one("c")]``."""
    return lambda text: [parse_one(item.strip()) for item in text.split(",")]


def _comma_list(parse_one: Callable) -> Callable:
    """As :func:`_split`, but a single item is that item alone (``"256"`` → 256)."""
    def parse(text: str):
        items = _split(parse_one)(text)
        return items[0] if len(items) == 1 else items

    return parse


def _is_list(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0


def sizes(optional: bool = False) -> Rule:
    """A whole number ≥ 1 or a list of them (``min_size``: one is drawn per image)."""
    def accepts(v):
        return all(_is_whole(s) and s >= 1 for s in (v if _is_list(v) else [v]))

    return Rule("a whole number ≥ 1 or a comma-separated list of them",
                _comma_list(int), accepts, optional)


def jitter_strengths() -> Rule:
    """A finite number ≥ 0, or a list of three (brightness, contrast, saturation)."""
    def accepts(v):
        if isinstance(v, (list, tuple)):
            return len(v) == 3 and all(_is_real(s) and s >= 0 for s in v)
        return _is_real(v) and v >= 0

    return Rule("a number ≥ 0, or three (brightness,contrast,saturation)",
                _comma_list(float), accepts)


def ascending_list(optional: bool = False) -> Rule:
    """An ascending, non-empty list of finite numbers > 0 (epochs of the schedule)."""
    def accepts(v):
        return _is_list(v) and all(_is_real(m) and m > 0 for m in v) and list(v) == sorted(v)

    return Rule("an ascending comma-separated list of numbers > 0", _split(float), accepts,
                optional)


def names_or_ids(optional: bool = False) -> Rule:
    """A non-empty list of names and/or whole numbers ≥ 1 (COCO categories)."""
    def accepts(v):
        return _is_list(v) and all((isinstance(s, str) and s.strip() != "")
                                   or (_is_whole(s) and s >= 1) for s in v)

    return Rule("a comma-separated list of category names or ids",
                _split(lambda text: int(text) if text.isdigit() else text), accepts, optional)


def device() -> Rule:
    """``"cpu"`` or ``"cuda"`` (``"cuda:0"`` and ``"gpu"`` too: backend.normalize_device)."""
    def accepts(v):
        try:
            return isinstance(v, str) and bool(normalize_device(v))
        except ValueError:
            return False

    return Rule("'cpu' or 'cuda'", str, accepts)
