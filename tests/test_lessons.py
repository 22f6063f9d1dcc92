"""Every lesson notebook runs top to bottom without an error, in fast mode.

Each ``lessons/*.ipynb`` is one test case, so a new lesson is picked up
without touching this file. The notebook is executed on an in-memory copy
(the file on disk is never written), with ``MINIFPN_FAST=1`` so the slow
cells shrink, and ``MPLBACKEND=Agg`` so no window ever opens. Run only these
with ``pytest -m notebook``; skip them with ``pytest -m "not notebook"``.
"""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
NOTEBOOKS = sorted(LESSONS.glob("*.ipynb"))
CELL_TIMEOUT_S = 600


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_lesson_runs_top_to_bottom(path, monkeypatch):
    monkeypatch.setenv("MINIFPN_FAST", "1")
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
