"""Re-run the lesson notebooks and save them with their outputs, in place.

The repository keeps every lesson *executed*, so that GitHub shows the real
pictures and numbers. After editing a lesson, refresh it with::

    python lessons/run_all.py                    # all lessons, full mode
    python lessons/run_all.py 02_convolution     # just one (name or path)
    python lessons/run_all.py --fast             # fast mode (what CI runs)
    python lessons/run_all.py --check            # run, but do not save

Full mode is the default (``MINIFPN_FAST`` unset); ``--fast`` sets
``MINIFPN_FAST=1`` so the slow cells shrink. Figures are rendered with the
inline backend (``MPLBACKEND`` is unset for the kernel), pictures over 150 kB
are stored as JPEG (the photo grids), cells record no execution timestamps
(smaller diffs), and the exercises' solution cells (tagged ``solution``) are
run but saved collapsed and without their output, so that no answer shows.

A notebook is saved only if its checks pass: every number its prose quotes
must stand next to the ``quote(…)`` call that checks it (tested before the
run, :func:`minifpn.tools.exercises.unquoted_numbers`), and no cell may raise — the
kernel runs with ``MINIFPN_CHECK_QUOTES=1``, so a ``quote`` whose value has
moved, or a ``claim`` the run contradicts, fails its cell: stale prose is
never saved.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from minifpn.tools.exercises import unquoted_numbers

HERE = Path(__file__).resolve().parent


def find_notebooks(names: list[str]) -> list[Path]:
    """The notebooks named (by path, file name or stem), or all of them."""
    if not names:
        return sorted(HERE.glob("*.ipynb"))
    found = []
    for name in names:
        path = Path(name)
        candidates = [path, HERE / path, HERE / f"{path.name}.ipynb"]
        match = next((p for p in candidates if p.suffix == ".ipynb" and p.is_file()), None)
        if match is None:
            raise SystemExit(f"no lesson notebook called {name!r} in {HERE}")
        found.append(match.resolve())
    return found


def strip_volatile_metadata(nb) -> None:
    """Drop per-run metadata so that re-running changes only real outputs."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            for output in cell.get("outputs", []):
                output.get("metadata", {}).pop("execution", None)
    nb.metadata.pop("widgets", None)


#: A saved picture larger than this (PNG bytes) is stored as JPEG instead: the lessons'
#: photo grids (COCO images, masks) are megabytes as PNG and a fifth of that as JPEG,
#: while line plots stay far below it and keep PNG's sharp edges.
JPEG_ABOVE_BYTES = 150_000
JPEG_QUALITY = 85


def compress_large_pictures(nb) -> int:
    """Re-encode PNG outputs above :data:`JPEG_ABOVE_BYTES` as JPEG; returns how many."""
    import base64
    import io

    from PIL import Image

    count = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            png = data.get("image/png")
            if png is None or len(png) * 3 // 4 <= JPEG_ABOVE_BYTES:
                continue
            image = Image.open(io.BytesIO(base64.b64decode(png)))
            canvas = Image.new("RGB", image.size, "white")  # JPEG has no transparency
            canvas.paste(image, mask=image.getchannel("A") if image.mode == "RGBA" else None)
            buffer = io.BytesIO()
            canvas.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
            del data["image/png"]
            data["image/jpeg"] = base64.b64encode(buffer.getvalue()).decode("ascii")
            count += 1
    return count


#: The cell tag that marks an exercise's solution.
SOLUTION_TAG = "solution"


def hide_solutions(nb) -> int:
    """Collapse every solution cell and drop its output (the answer); returns how many."""
    count = 0
    for cell in nb.cells:
        if cell.cell_type == "code" and SOLUTION_TAG in cell.metadata.get("tags", []):
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.setdefault("jupyter", {})["source_hidden"] = True
            count += 1
    return count


def error_outputs(nb) -> list[str]:
    """Short descriptions of the error outputs in ``nb`` (should be none)."""
    found = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                found.append(f"cell {index}: {output.get('ename')}: {output.get('evalue')}")
    return found


def stderr_cells(nb) -> list[int]:
    """Indices of cells that wrote to stderr (warnings): worth a look."""
    return [
        index
        for index, cell in enumerate(nb.cells)
        if any(o.get("name") == "stderr" for o in cell.get("outputs", []))
    ]


def run_notebook(path: Path, timeout: int) -> tuple[object, float]:
    """Execute one notebook in a fresh kernel, working directory ``lessons/``."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,  # no per-cell timestamps in the saved file
        resources={"metadata": {"path": str(HERE)}},
    )
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="lessons to run (default: all)")
    parser.add_argument("--fast", action="store_true", help="fast mode (MINIFPN_FAST=1)")
    parser.add_argument("--check", action="store_true", help="execute only; do not save")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds allowed per cell")
    args = parser.parse_args(argv)

    # The kernel inherits this process's environment.
    if args.fast:
        os.environ["MINIFPN_FAST"] = "1"
    else:
        os.environ.pop("MINIFPN_FAST", None)
    os.environ.pop("MPLBACKEND", None)  # keep the inline backend: figures are saved
    os.environ["MINIFPN_CHECK_QUOTES"] = "1"  # a number that no longer matches its prose fails

    notebooks = find_notebooks(args.notebooks)
    mode = "fast" if args.fast else "full"
    print(f"running {len(notebooks)} notebook(s) in {mode} mode", flush=True)
    failed, timings = [], []
    for i, path in enumerate(notebooks, 1):
        print(f"[{i}/{len(notebooks)}] {path.name} ...", end=" ", flush=True)
        unchecked = unquoted_numbers(nbformat.read(path, as_version=4).cells)
        if unchecked:  # a quote checked in code but missing from the prose beside it
            print("FAILED (prose and checks disagree)")
            print("\n".join(unchecked), file=sys.stderr)
            failed.append(path.name)
            continue
        try:
            nb, seconds = run_notebook(path, args.timeout)
        except (CellExecutionError, CellTimeoutError) as err:
            print("FAILED")
            print(err, file=sys.stderr)
            failed.append(path.name)
            continue
        errors = error_outputs(nb)
        if errors:  # e.g. a cell tagged raises-exception; never save those
            print("FAILED (error outputs)")
            print("\n".join(errors), file=sys.stderr)
            failed.append(path.name)
            continue
        strip_volatile_metadata(nb)
        hide_solutions(nb)
        compress_large_pictures(nb)
        if not args.check:
            nbformat.write(nb, path)
        timings.append((path.name, seconds))
        note = "" if args.check else ", saved"
        print(f"ok in {seconds:.1f} s{note}", flush=True)
        if stderr_cells(nb):
            print(f"    note: cells {stderr_cells(nb)} wrote to stderr (warnings?)")

    print(f"\n{mode} mode run times:")
    for name, seconds in timings:
        print(f"  {name:40s} {seconds:7.1f} s")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
