"""Data-parallel training (minifpn.engine.distributed): N processes train what one would.

The collectives and the single-process default are tested in this process;
everything else runs real MPI processes (``mpiexec -n 2`` from the ``[mpi]``
extra, each rank running tests/mpi_worker.py) on the micro model of
test_train.py: 2 ranks × 1 image against 1 rank × 2 images, resume, sharded
evaluation, Ctrl-C, a NaN on one rank, a rank that fails or is killed.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minifpn import serialization
from minifpn.engine import distributed
from minifpn.engine import train as train_module
from tests.test_train import config, shapes  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("mpi_worker.py")


def _mpiexec():
    beside_python = Path(sys.executable).parent / "mpiexec"
    return str(beside_python) if beside_python.exists() else shutil.which("mpiexec")


def _has_mpi4py() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


needs_mpi = pytest.mark.skipif(
    not (_mpiexec() and _has_mpi4py()),
    reason="MPI tests need mpi4py and mpiexec: python3 -m pip install -e '.[mpi]'")


def mpirun(n: int, args: dict, timeout: float = 180, wait: bool = True):
    """``mpiexec -n n`` of the worker with ``args``; each rank on one BLAS thread.

    ``args["report"]`` names the files in which each rank reports (see :func:`reports`).
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [_mpiexec(), "-n", str(n), sys.executable, str(WORKER), json.dumps(args)]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def reports(prefix, n: int = 2) -> list:
    """What each of the ``n`` ranks reported, in rank order."""
    return [json.loads(Path(f"{prefix}.{rank}").read_text()) for rank in range(n)]


def losses(run) -> list:
    return [{k: v for k, v in entry.items() if k.startswith("loss")}
            for entry in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in entry]


def checkpoint(run) -> dict:
    return serialization.load(run / "checkpoint.npz")


def cfg_dict(shapes, out, **changes) -> dict:  # noqa: F811
    return config(shapes, out, **changes).to_dict()


# ---------------------------------------------------------------------------
# in this process: the pieces
# ---------------------------------------------------------------------------
def test_buckets_keep_order_and_dtype_and_stay_under_the_cap():
    arrays = [np.zeros(10, np.float32), np.zeros(10, np.float32), np.zeros(30, np.float32),
              np.zeros(2, np.float64), np.zeros(3, np.float32)]
    groups = distributed.buckets(arrays, bucket_bytes=80)
    assert [[a.size for a in g] for g in groups] == [[10, 10], [30], [2], [3]]
    assert [a for g in groups for a in g] == arrays  # same arrays, same order


class Rank(distributed.Communicator):
    def __init__(self, rank, size):
        super().__init__()
        self.rank, self.size = rank, size


def test_shards_cover_the_batch_once_in_order_and_a_batch_that_does_not_split_is_refused():
    assert [list(Rank(r, 3).shard(6)) for r in range(3)] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="batch of 4 images does not split over 3 processes"):
        Rank(0, 3).shard(4)


def test_one_process_is_the_default_and_its_collectives_are_the_identity():
    comm = distributed.world()
    assert (comm.rank, comm.size, comm.is_main) == (0, 1, True)
    grad = np.arange(3.0)
    comm.allreduce_mean_([grad])
    assert grad.tolist() == [0, 1, 2] and comm.mean([1, 2]) == [1.0, 2.0]
    assert comm.gather(5) == [5] and comm.broadcast("x") == "x" and comm.any(True)


def test_a_launcher_without_mpi4py_is_an_error_that_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py fails
    distributed.world.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"one of 2 processes.*\.\[mpi\]"):
            distributed.world()
    finally:
        distributed.world.cache_clear()


# ---------------------------------------------------------------------------
# real MPI processes
# ---------------------------------------------------------------------------
@needs_mpi
def test_the_collectives_across_two_processes(tmp_path):
    done = mpirun(2, {"mode": "collectives", "report": str(tmp_path / "report")})
    assert done.returncode == 0, done.stderr
    ranks = reports(tmp_path / "report")
    assert [r["size"] for r in ranks] == [2, 2]
    for r in ranks:  # each rank held rank + 1: the mean is 1.5, dtypes kept
        assert r["arrays"] == [[[1.5] * 2] * 3, [1.5] * 5, [1.5] * 4]
        assert r["dtypes"] == ["float32", "float64", "float32"]
        assert r["mean"] == [0.5, 10.0] and r["any"] == [True, False]
        assert r["broadcast"] == "from 0"
        # Device arrays: reduced through the host, one copy out and one back (one bucket).
        assert r["device"] == {"on": ["cuda", "cuda"], "d2h": 1, "h2d": 1,
                               "values": [[1.5] * 3, [1.5] * 2]}
    assert ranks[0]["gather"] == [0, 1] and ranks[1]["gather"] is None
    assert [r["shard"] for r in ranks] == [[0, 1], [2, 3]]


@needs_mpi
def test_two_ranks_of_one_image_train_what_one_process_of_two_images_does(shapes, tmp_path):  # noqa: F811,E501
    # One training image, no flips: both images of every batch are the same, so the
    # mask loss (a mean over each shard's foreground RoIs) averages exactly too.
    same = dict(train_images=1, flip=False, iters=3, checkpoint_every=3)
    one = mpirun(1, {"mode": "train", "config": cfg_dict(shapes, tmp_path / "one", **same)})
    two = mpirun(2, {"mode": "train", "config": cfg_dict(shapes, tmp_path / "two", **same)})
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    for a, b in zip(losses(tmp_path / "one"), losses(tmp_path / "two"), strict=True):
        assert a == pytest.approx(b, rel=1e-4)
    a, b = checkpoint(tmp_path / "one"), checkpoint(tmp_path / "two")
    assert a["meta"]["processes"] == 1 and b["meta"]["processes"] == 2
    for name, value in a["model"].items():
        np.testing.assert_allclose(b["model"][name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    # Different images: the RPN's and the box head's losses still agree at the first
    # iteration (fixed counts per image); the mask loss is the mean of the shards' means.
    first = dict(iters=1, checkpoint_every=1)
    one = mpirun(1, {"mode": "train", "config": cfg_dict(shapes, tmp_path / "one_b", **first)})
    two = mpirun(2, {"mode": "train", "config": cfg_dict(shapes, tmp_path / "two_b", **first)})
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = losses(tmp_path / "one_b")[0], losses(tmp_path / "two_b")[0]
    for name in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"):
        assert a[name] == pytest.approx(b[name], rel=1e-5), name


@needs_mpi
def test_a_stopped_two_rank_run_resumes_bit_for_bit_and_says_when_the_ranks_change(
        shapes, tmp_path, capsys):  # noqa: F811
    straight, paused = tmp_path / "straight", tmp_path / "paused"
    assert mpirun(2, {"mode": "train", "config": cfg_dict(shapes, straight)}).returncode == 0
    stopped = mpirun(2, {"mode": "train", "config": cfg_dict(shapes, paused), "stop_after": 2})
    assert stopped.returncode == 0 and checkpoint(paused)["iteration"] == 2, stopped.stderr
    shutil.copytree(paused, tmp_path / "on_one")
    resumed = mpirun(2, {"mode": "resume", "out": str(paused)})
    assert resumed.returncode == 0, resumed.stderr
    assert losses(paused) == losses(straight)
    a, b = checkpoint(paused), checkpoint(straight)
    for name, value in a["model"].items():
        np.testing.assert_array_equal(value, b["model"][name], err_msg=name)
    # Resumed by one process: allowed, and said.
    train_module.resume_run(tmp_path / "on_one", progress=False)
    assert "trained by 2 processes and continues on 1" in capsys.readouterr().out


@needs_mpi
def test_evaluation_sharded_over_two_ranks_equals_one_process(shapes, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    assert mpirun(1, {"mode": "train", "config": cfg_dict(shapes, run, iters=2)}).returncode == 0
    results = {}
    for n in (1, 2):
        done = mpirun(n, {"mode": "evaluate", "checkpoint": str(run), "data": str(shapes),
                          "results": str(tmp_path / f"results_{n}.json"),
                          "report": str(tmp_path / f"report_{n}")})
        assert done.returncode == 0, done.stderr
        results[n] = reports(tmp_path / f"report_{n}", n)
    (single,), (rank0, rank1) = results[1], results[2]
    assert single["metrics"]["images"] == 3  # every validation image, once
    assert rank0["metrics"] == rank1["metrics"] == single["metrics"]
    on_one = json.loads((tmp_path / "results_1.json").read_text())
    on_two = json.loads((tmp_path / "results_2.json").read_text())
    key = lambda r: (r["image_id"], -r["score"], r["category_id"])  # noqa: E731
    assert sorted(on_two, key=key) == sorted(on_one, key=key)
    # `mpiexec -n 2 minifpn eval`: the same sharing out, one table, one results file.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "minifpn", "eval",
                           "--checkpoint", str(run), "--data", str(shapes), "--out",
                           str(tmp_path / "cli")], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("COCO evaluation on 3 images") == 1, done.stdout
    on_cli = json.loads((tmp_path / "cli" / "val_results.json").read_text())
    assert sorted(on_cli, key=key) == sorted(on_one, key=key)


@needs_mpi
def test_ctrl_c_stops_every_rank_at_the_same_iteration_with_a_checkpoint(shapes, tmp_path):  # noqa: F811,E501
    run = tmp_path / "run"
    job = mpirun(2, {"mode": "train", "report": str(tmp_path / "report"),
                     "config": cfg_dict(shapes, run, iters=500, checkpoint_every=1000)},
                 wait=False)
    log = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):
        assert job.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.2)
    job.send_signal(signal.SIGINT)  # mpiexec passes Ctrl-C on to every rank
    output, _ = job.communicate(timeout=120)
    assert job.returncode == 130, output
    assert all("stopped (all 2 processes)" in r["stopped"] for r in reports(tmp_path / "report"))
    done = checkpoint(run)["iteration"]
    assert 3 <= done < 500 and len(losses(run)) == done  # the log agrees with the checkpoint


@needs_mpi
def test_a_nan_on_one_rank_stops_both_and_keeps_the_last_good_checkpoint(shapes, tmp_path):  # noqa: F811,E501
    run = tmp_path / "run"
    done = mpirun(2, {"mode": "nan", "at": 3, "config": cfg_dict(shapes, run, iters=6),
                      "report": str(tmp_path / "report")})
    assert done.returncode == 3, done.stdout + done.stderr
    assert all("nan at iteration 3" in r["diverged"] for r in reports(tmp_path / "report"))
    assert checkpoint(run)["iteration"] == 2


@needs_mpi
@pytest.mark.parametrize("how", ["fail", "kill"])
def test_a_rank_that_fails_or_dies_ends_the_job_instead_of_hanging(shapes, tmp_path, how):  # noqa: F811,E501
    run = tmp_path / "run"
    began = time.monotonic()
    done = mpirun(2, {"mode": how, "at": 3, "config": cfg_dict(shapes, run, iters=50)},
                  timeout=120)
    assert done.returncode != 0 and time.monotonic() - began < 120
    if how == "fail":
        assert "rank 1 of 2 failed: RuntimeError: injected failure after iteration 3" in (
            done.stderr), done.stderr
    assert checkpoint(run)["iteration"] == 2  # the last periodic checkpoint is kept
