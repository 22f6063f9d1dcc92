"""Checking a learner's answers in the lesson notebooks.

Every lesson ends with exercises: the learner writes an answer where a cell
says ``None`` and runs ``check(answer, expected, "exercise 3")`` — where
``expected`` is computed by the library, never typed in — which prints a
tick, a hint that nothing was tried yet, or fails with "not right yet".
"""

from __future__ import annotations

import numpy as np


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
