"""Checks for the lesson notebooks: the learner's answers, and the lessons' own prose.

Every lesson ends with exercises: the learner writes an answer where a cell
says ``None`` and runs ``check(answer, expected, "exercise 3")`` — where
``expected`` is computed by the library, never typed in — which prints a
tick, a hint that nothing was tried yet, or fails with "not right yet".

The lessons' prose quotes numbers their cells compute ("AR@1000 rises to
0.128"). So that a re-run can never leave such a sentence stale, the cell next
to it calls ``quote("0.128", recall["AR@1000"])``: the value must still round
to the quoted text. Under ``lessons/run_all.py`` and the tests
(``MINIFPN_CHECK_QUOTES=1``) a value that has moved fails its cell, so the
lesson is not saved; a learner running the lesson on another machine, where
the last digits may differ, gets a printed note instead of a broken lesson.
:func:`unquoted_numbers` checks the other half — that each quoted text really
stands in the prose beside its check — without running anything, so editing
the prose alone cannot break the link either.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

#: The environment variable that puts a lesson in fast mode (tiny runs whose numbers
#: mean nothing): :func:`quote` then checks only the quotes marked ``any_size=True``.
FAST_MODE_VARIABLE = "MINIFPN_FAST"

#: Set to "1" (as ``lessons/run_all.py`` and the tests do) to make :func:`quote` raise
#: when a value no longer matches its prose, instead of printing a note.
CHECK_QUOTES_VARIABLE = "MINIFPN_CHECK_QUOTES"

#: A number as prose writes it: an optional sign (ASCII or Unicode minus), digits with
#: optional thousands commas, optional decimals, or a mantissa and a power of ten (3.0e-11).
_NUMBER = re.compile(r"[-−]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-−]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def check(answer, expected, what: str = "your answer", rtol: float = 1e-4,
          atol: float = 1e-6) -> None:
    """Compare ``answer`` with ``expected``; ``None`` means "not tried yet".

    Strings (or sequences of strings) must be equal; numbers, arrays and
    shape tuples must have the same shape and agree within ``rtol``/``atol``.

    Returns nothing (so that a notebook cell ending in ``check(...)`` shows
    only the printed verdict).

    Raises:
        AssertionError: "not right yet", with the answer, when it is wrong.
    """
    if answer is None:
        print(f"{what}: no answer yet — write one, or expand the solution below")
        return
    words = isinstance(expected, (list, tuple)) and expected and all(
        isinstance(e, str) for e in expected)
    if isinstance(expected, str) or words:
        assert answer == expected, f"{what}: {answer!r} is not right yet — try again"
    else:
        given, wanted = np.asarray(answer, dtype=float), np.asarray(expected, dtype=float)
        assert given.shape == wanted.shape and np.allclose(given, wanted, rtol=rtol, atol=atol), (
            f"{what}: {answer} is not right yet — try again"
        )
    print(f"{what}: {answer} ✓ correct")


def fast_mode() -> bool:
    """True when the lessons run in fast mode (``MINIFPN_FAST=1``)."""
    return os.environ.get(FAST_MODE_VARIABLE) == "1"


def parse_quoted(text: str) -> tuple[float, float]:
    """The number a prose quote stands for, and half a unit of its last digit.

    ``"0.128"`` → (0.128, 0.0005); ``"3,740"`` → (3740, 0.5); ``"−1.16"`` (a
    Unicode minus, as typeset prose writes it) → (−1.16, 0.005); ``"1.2e-05"``
    → (1.2e-05, 5e-07).

    Raises:
        ValueError: ``text`` is not a single plain number.
    """
    if not isinstance(text, str) or not _NUMBER.fullmatch(text.strip()):
        raise ValueError(f"a quote must be one number as the prose writes it, such as "
                         f"'0.128', '3,740' or '−1.16'; got {text!r}")
    plain = text.strip().replace(",", "").replace("−", "-")
    mantissa, _, exponent = plain.partition("e")
    decimals = len(mantissa.partition(".")[2])
    return float(plain), 0.5 * 10.0 ** (int(exponent or 0) - decimals)


def quote(text: str, value, what: str = "", *, any_size: bool = False) -> None:
    """Check that ``value`` still reads as ``text``, the number the prose quotes for it.

    The value must round to the quoted digits: ``quote("0.128", 0.1283)``
    passes, ``quote("0.128", 0.1312)`` fails. Put the call in the code cell
    next to the sentence that quotes the number (the markdown cell just
    before or after it): :func:`unquoted_numbers` checks that the text is there.

    In fast mode the lessons' runs are too small for their numbers to mean
    anything, so only quotes marked ``any_size=True`` — exact results that do
    not depend on the run's size or the data, such as a count of anchors —
    are checked. A mismatch raises when ``MINIFPN_CHECK_QUOTES=1`` (how the
    lessons are saved and tested), and otherwise prints a note.

    Args:
        text: the number exactly as the prose writes it, e.g. ``"0.128"``,
            ``"3,740"``, ``"−1.16"``; percentages without the sign (``"24"``,
            with ``value`` in percent).
        value: the computed number (a float, a 0-d array or Tensor, an int).
        what: what the number is, for the error message.
        any_size: the quote holds in fast mode too.

    Raises:
        AssertionError: (with ``MINIFPN_CHECK_QUOTES=1``) the value no longer
            rounds to ``text`` — update the sentence and this call together.
        ValueError: ``text`` is not a plain number.
    """
    quoted, half_unit = parse_quoted(text)
    if fast_mode() and not any_size:
        return
    actual = float(np.asarray(getattr(value, "data", value), dtype=np.float64))
    if abs(actual - quoted) <= half_unit * (1 + 1e-9):
        return
    message = (f"the prose says {text}{' for ' + what if what else ''}, but the value is "
               f"{actual:.6g}")
    if os.environ.get(CHECK_QUOTES_VARIABLE) == "1":
        raise AssertionError(f"{message}: update the sentence that quotes it, and this check")
    print(f"note: {message} in your run (numbers move a little between machines)")


def claim(holds, what: str, *, any_size: bool = False) -> None:
    """Check a statement the prose makes about a result, such as an ordering.

    For sentences that quote no number but still read a result ("the
    top-down signal grows on the way down", "barely above"): pass the
    condition computed from the result, and the sentence in ``what``. Like
    :func:`quote`, it is skipped in fast mode unless ``any_size=True``,
    raises under ``MINIFPN_CHECK_QUOTES=1`` and otherwise prints a note.

    Raises:
        AssertionError: (with ``MINIFPN_CHECK_QUOTES=1``) the statement is false.
    """
    if (fast_mode() and not any_size) or bool(holds):
        return
    if os.environ.get(CHECK_QUOTES_VARIABLE) == "1":
        raise AssertionError(f"the prose says {what!r}, which this run contradicts: update it")
    print(f"note: the text says {what!r}, which your run does not show")


def quotes_in(source: str) -> list[str | None]:
    """The texts of the ``quote("…", …)`` calls in one code cell (IPython ``%`` lines skipped).

    A call whose text is not a literal string (``quote(text, value)`` in a
    loop) gives None: the prose next to it cannot be checked without running
    the cell, so :func:`unquoted_numbers` reports it.
    """
    code = "\n".join(line for line in source.splitlines()
                     if not line.lstrip().startswith(("%", "!")))
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        calls_quote = isinstance(node, ast.Call) and getattr(node.func, "id", None) == "quote"
        if calls_quote:
            text = node.args[0] if node.args else None
            literal = isinstance(text, ast.Constant) and isinstance(text.value, str)
            found.append((node.lineno, node.col_offset, text.value if literal else None))
    return [text for *_, text in sorted(found)]


def _stands_in(text: str, prose: str) -> bool:
    """Whether ``text`` appears in ``prose`` as a whole number (not inside 0.1284 or 1.28)."""
    number = re.escape(text).replace("−", "[-−]").replace(r"\-", "[-−]")
    return re.search(rf"(?<![\d.,]){number}(?![\d]|[.,]\d)", prose) is not None


def unquoted_numbers(cells: Sequence[Mapping]) -> list[str]:
    """Quotes checked in a notebook's code but missing from the prose beside them.

    For every ``quote("text", …)`` in a code cell, ``text`` must stand in the
    nearest markdown cell above or the nearest below it: the sentence the
    check guards. An empty list means every quote is where its check says.

    Args:
        cells: the notebook's cells, as ``nbformat`` reads them (mappings with
            ``"cell_type"`` and ``"source"``).

    Returns:
        One message per quote whose text is not in the prose next to it.
    """
    kinds = [cell["cell_type"] for cell in cells]
    missing = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        above = next((cells[i]["source"] for i in range(index - 1, -1, -1)
                      if kinds[i] == "markdown"), "")
        below = next((cells[i]["source"] for i in range(index + 1, len(cells))
                      if kinds[i] == "markdown"), "")
        for text in quotes_in(cell["source"]):
            if text is None:
                missing.append(f"cell {index} calls quote() with a text that is not a literal "
                               f"string: write each quote as quote(\"0.128\", value)")
            elif not (_stands_in(text, above) or _stands_in(text, below)):
                missing.append(f"cell {index} checks the quote {text!r}, but the markdown cells "
                               f"next to it do not say {text}")
    return missing
