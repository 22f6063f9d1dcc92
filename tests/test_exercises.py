"""The lessons' answer checker (``minifpn.tools.exercises.check``)."""

import pytest

from minifpn.tools.exercises import check


def test_none_means_not_tried(capsys):
    check(None, 3, "exercise 1")
    assert "no answer yet" in capsys.readouterr().out


def test_right_answers_pass_within_tolerance(capsys):
    check(0.1 + 0.2, 0.3, "sum")
    check((64, 4, 28, 28), (64, 4, 28, 28))
    check("P4", "P4")
    check(["a", "b"], ["a", "b"])
    assert capsys.readouterr().out.count("✓ correct") == 4


@pytest.mark.parametrize("answer, expected", [
    (3, 4), ((64, 4, 28), (64, 4, 28, 28)), ("P3", "P4"), (1.01, 1.0), ([1, 2], [2, 1]),
])
def test_wrong_answers_fail_and_say_so(answer, expected):
    with pytest.raises(AssertionError, match="not right yet"):
        check(answer, expected)
