"""The lessons' checks: the answer checker (``check``) and the prose quotes (``quote``)."""

import numpy as np
import pytest

from minifpn.tools.exercises import (
    check,
    claim,
    parse_quoted,
    quote,
    quotes_in,
    unquoted_numbers,
)


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


# --- the lessons' prose: quote() and unquoted_numbers() -------------------------------------


@pytest.mark.parametrize("text, number, half_unit", [
    ("0.128", 0.128, 0.0005), ("3,740", 3740.0, 0.5), ("−1.16", -1.16, 0.005), ("54", 54.0, 0.5),
    ("-0.7", -0.7, 0.05), ("1,234.5", 1234.5, 0.05), ("1.2e-05", 1.2e-5, 5e-7),
    ("3e-11", 3e-11, 5e-12),
])
def test_parse_quoted_reads_the_number_and_its_precision(text, number, half_unit):
    assert parse_quoted(text) == pytest.approx((number, half_unit))


@pytest.mark.parametrize("text", ["about 0.1", "0.1 %", "1e-3e4", "", "3 740", "2·10⁻⁶", 0.128])
def test_parse_quoted_refuses_anything_but_a_plain_number(text):
    with pytest.raises(ValueError, match="one number"):
        parse_quoted(text)


@pytest.fixture
def strict(monkeypatch):
    """Full mode, quotes checked strictly (as lessons/run_all.py runs the lessons)."""
    monkeypatch.delenv("MINIFPN_FAST", raising=False)
    monkeypatch.setenv("MINIFPN_CHECK_QUOTES", "1")


def test_quote_passes_when_the_value_rounds_to_the_text(strict):
    quote("0.128", 0.1283)
    quote("0.128", 0.12750001)
    quote("24", 100 * 879 / 3740)  # 23.5 % rounds to 24
    quote("−1.16", np.log(10 / 32))
    quote("3,740", np.array(3740))
    quote("1.2e-05", 1.1668e-5)


@pytest.mark.parametrize("text, value", [
    ("0.128", 0.1312), ("0.128", 0.1274), ("54", 30), ("33", 23.5),
])
def test_quote_fails_with_both_numbers_when_the_value_has_moved(strict, text, value):
    with pytest.raises(AssertionError, match=f"the prose says {text} for AR.*update the sentence"):
        quote(text, value, "AR")


def test_quote_only_notes_a_moved_value_when_not_checking_strictly(monkeypatch, capsys):
    monkeypatch.delenv("MINIFPN_FAST", raising=False)
    monkeypatch.delenv("MINIFPN_CHECK_QUOTES", raising=False)
    quote("0.128", 0.1312, "AR@1000")  # a learner's run on another machine: no exception
    out = capsys.readouterr().out
    assert "note: the prose says 0.128 for AR@1000, but the value is 0.1312" in out


def test_fast_mode_checks_only_quotes_that_hold_at_any_size(strict, monkeypatch):
    monkeypatch.setenv("MINIFPN_FAST", "1")
    quote("0.128", 0.02)  # a tiny run: not checked
    with pytest.raises(AssertionError):
        quote("54", 30, any_size=True)
    with pytest.raises(ValueError):  # a malformed quote is an error in every mode
        quote("about 3", 3)


def test_claim_checks_a_statement_like_a_quote(strict, monkeypatch, capsys):
    claim(0.128 > 0.124, "AR@1000 ends above the untrained RPN")
    with pytest.raises(AssertionError, match="'it rises', which this run contradicts"):
        claim(False, "it rises")
    monkeypatch.setenv("MINIFPN_FAST", "1")
    claim(False, "a full-mode statement")  # not checked in fast mode …
    with pytest.raises(AssertionError):
        claim(False, "a statement about geometry", any_size=True)  # … unless it holds at any size
    monkeypatch.delenv("MINIFPN_FAST")
    monkeypatch.delenv("MINIFPN_CHECK_QUOTES")
    claim(False, "it rises")  # a learner's run: a note, no exception
    assert "note: the text says 'it rises'" in capsys.readouterr().out


def _cells(*pairs):
    return [{"cell_type": kind, "source": source} for kind, source in pairs]


def test_quotes_in_finds_the_literal_texts_of_quote_calls():
    source = ('%matplotlib inline\nx = 1\nquote("0.128", ar, "AR")\n'
              'if True:\n    quote("54", n, any_size=True)\nquote(text, 3)')
    assert quotes_in(source) == ["0.128", "54", None]  # None: not a literal, cannot be checked
    assert quotes_in("def broken(:\n    quote('1', 1)") == []


def test_unquoted_numbers_accepts_a_quote_beside_its_prose():
    checks = 'quote("0.128", a)\nquote("54", b)\nquote("−1.16", c)\nquote("1.2e-05", d)'
    cells = _cells(("markdown", "Recall rises to 0.128, with 54 positives (−1.16), error 1.2e-05."),
                   ("code", checks),
                   ("code", "print(1)"),
                   ("markdown", "Later: 3,740 instances."),
                   ("code", 'quote("3,740", n)'))
    assert unquoted_numbers(cells) == []
    below = _cells(("code", 'quote("0.5", a)'), ("markdown", "half of it: 0.5."))
    assert unquoted_numbers(below) == []


@pytest.mark.parametrize("prose", [
    "Recall rises to 0.131.",  # a different number
    "Recall rises to 0.1284.",  # the quote is only the start of a longer number
    "Recall rises to 10.128.",  # … or the end of one
    "",
])
def test_unquoted_numbers_reports_a_quote_missing_from_its_prose(prose):
    cells = _cells(("markdown", prose), ("code", 'quote("0.128", a, "AR")'))
    (message,) = unquoted_numbers(cells)
    assert "cell 1" in message and "0.128" in message


def test_unquoted_numbers_refuses_quotes_it_cannot_read():
    cells = _cells(("markdown", "0.128"), ("code", 'for t, v in [("0.128", a)]:\n    quote(t, v)'))
    (message,) = unquoted_numbers(cells)
    assert "not a literal" in message


def test_unquoted_numbers_looks_only_at_the_neighbouring_prose():
    cells = _cells(("markdown", "0.128 here"), ("markdown", "not here"),
                   ("code", 'quote("0.128", a)'), ("markdown", "nor here"))
    assert len(unquoted_numbers(cells)) == 1
