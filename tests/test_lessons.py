"""Every lesson notebook runs top to bottom without an error, in fast mode.

Each ``lessons/*.ipynb`` is one test case, so a new lesson is picked up
without touching this file. The notebook is executed on an in-memory copy
(the file on disk is never written), with ``MINIFPN_FAST=1`` so the slow
cells shrink, and ``MPLBACKEND=Agg`` so no window ever opens. Run only these
with ``pytest -m notebook``; skip them with ``pytest -m "not notebook"``.

The committed notebooks are also read without running them: every number
the prose quotes stands beside its ``quote(…)`` check, every exercise has a
checker, and no solution shows its answer.
"""

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
NOTEBOOKS = sorted(LESSONS.glob("*.ipynb"))
CELL_TIMEOUT_S = 600
EXERCISE = re.compile(r"\*\*Exercise (\d+)")


def _cells(path):
    return nbformat.read(path, as_version=4).cells


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_quoted_numbers_stand_in_the_prose_beside_their_checks(path):
    from minifpn.tools.exercises import unquoted_numbers

    assert unquoted_numbers(_cells(path)) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_exercise_has_a_checker_and_a_hidden_solution(path):
    cells = _cells(path)
    exercises = [(i, int(m.group(1))) for i, c in enumerate(cells)
                 if c.cell_type == "markdown" and (m := EXERCISE.match(c.source))]
    assert exercises, f"{path.name} has no exercises"
    for index, number in exercises:
        assert index + 2 < len(cells), f"{path.name}: exercise {number} has no answer cell"
        answer_cell = cells[index + 1]
        assert answer_cell.cell_type == "code" and "None" in answer_cell.source, (
            f"{path.name}: exercise {number} needs an answer cell after it (starting as None)")
        assert "check" in answer_cell.source, f"{path.name}: exercise {number} has no checker"
        solution = cells[index + 2]
        assert "solution" in solution.metadata.get("tags", []), (
            f"{path.name}: exercise {number}'s answer cell should be followed by its solution")
    for i, cell in enumerate(cells):
        if "solution" in cell.metadata.get("tags", []):
            hidden = cell.metadata.get("jupyter", {}).get("source_hidden")
            assert hidden, f"{path.name}: solution cell {i} is not collapsed"
            assert not cell.outputs, f"{path.name}: solution cell {i} shows its output"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_lesson_runs_top_to_bottom(path, monkeypatch):
    monkeypatch.setenv("MINIFPN_FAST", "1")
    monkeypatch.setenv("MINIFPN_CHECK_QUOTES", "1")  # quotes that hold at any size must hold
    monkeypatch.setenv("MPLBACKEND", "Agg")  # the kernel inherits this environment
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(LESSONS)}},  # the kernel's working directory
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        # The message holds the failing cell's source and the traceback.
        pytest.fail(f"{path.name} failed in a cell:\n{err}", pytrace=False)
    except nbclient.exceptions.CellTimeoutError as err:
        pytest.fail(
            f"{path.name}: a cell ran longer than {CELL_TIMEOUT_S} s:\n{err}", pytrace=False
        )
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: cells produced errors: {errors}"
