"""What each process runs in tests/test_distributed.py, under ``mpiexec -n N``.

    python tests/mpi_worker.py '{"mode": …, "config": {…TrainConfig…}, …}'

Modes: ``collectives`` (each collective on known values, on the host and on the
CuPy stand-in's device),
``train`` (optionally ``stop_after``), ``resume``, ``evaluate`` (a checkpoint,
sharded), and the failures: ``kill`` (rank 1 kills itself with SIGKILL at
iteration ``at``), ``fail`` (rank 1 raises there), ``nan`` (rank 1's image turns
NaN there). What a rank has to say goes to ``<report>.<rank>`` as JSON (the
ranks' stdout lines may interleave): the collectives, the metrics, or how a
run ended ("stopped" and exit 130 / 143, "diverged" and exit 3).
"""

import json
import os
import signal
import sys

import numpy as np

from minifpn.engine import train as train_module
from minifpn.engine.config import TrainConfig
from minifpn.engine.distributed import MPICommunicator, world
from minifpn.engine.hooks import HookBase, TrainingDiverged
from minifpn.engine.signals import StopRequested


def collectives(comm) -> dict:
    # Rank r holds r + 1 everywhere; the mean over N ranks is (N + 1) / 2.
    arrays = [np.full((3, 2), comm.rank + 1, np.float32), np.full(5, comm.rank + 1, np.float64),
              np.full(4, comm.rank + 1, np.float32)]
    small = MPICommunicator(bucket_bytes=30)  # every array a bucket of its own
    small.allreduce_mean_(arrays[:1])
    comm.allreduce_mean_(arrays[1:])
    return {"rank": comm.rank, "size": comm.size, "arrays": [a.tolist() for a in arrays],
            "device": on_the_standin(comm),
            "dtypes": [str(a.dtype) for a in arrays], "mean": comm.mean([comm.rank, 10]),
            "any": [comm.any(comm.rank == 1), comm.any(False)],
            "broadcast": comm.broadcast(f"from {comm.rank}"), "gather": comm.gather(comm.rank),
            "shard": list(comm.shard(4))}


def on_the_standin(comm) -> dict:
    """The all-reduce of device arrays (the CuPy stand-in): staged through the host, one
    copy each way per bucket, and the result left on the device."""
    from minifpn import backend
    from tests import cupy_standin

    previous = backend.set_cuda_module(cupy_standin, cupy_standin.cupyx)
    try:
        arrays = backend.to_device_many([np.full(3, comm.rank + 1.0, np.float32),
                                         np.full(2, comm.rank + 1.0, np.float32)], "cuda")
        with cupy_standin.counting() as traffic:
            comm.allreduce_mean_(arrays)
        return {"on": [backend.device_of(a) for a in arrays], "d2h": traffic.d2h,
                "h2d": traffic.h2d, "values": [backend.to_numpy(a).tolist() for a in arrays]}
    finally:
        backend.set_cuda_module(*previous)


class AtIteration(HookBase):
    """On rank 1, once ``at`` iterations are done: kill this process, or raise."""

    def __init__(self, at: int, action: str):
        self.at, self.action = at, action

    def after_step(self):
        if self.trainer.comm.rank == 1 and self.trainer.done == self.at:
            if self.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure after iteration {self.at}")


def poison_rank_one_at(iteration: int) -> None:
    real_load = train_module._load_batch

    def poisoned(dataset, indices, cfg, it, *args):
        images, targets = real_load(dataset, indices, cfg, it, *args)
        if it == iteration and world().rank == 1:
            images[0].data[0, 0, 0] = np.nan
        return images, targets

    train_module._load_batch = poisoned


def main(args: dict) -> int:
    comm = world()
    mode = args["mode"]

    def report(**what):
        with open(f"{args['report']}.{comm.rank}", "w") as f:
            json.dump({"rank": comm.rank, **what}, f)

    if mode == "collectives":
        report(**collectives(comm))
        return 0
    if mode == "evaluate":
        from minifpn.data.coco import CocoDetection
        from minifpn.engine.checkpoint import load_model
        from minifpn.engine.evaluate import evaluate_model

        model = load_model(args["checkpoint"])[0]
        metrics = evaluate_model(model, CocoDetection(args["data"], "val", verbose=False),
                                 progress=False, results_path=args.get("results"), comm=comm)
        report(metrics=metrics)
        return 0
    hooks = [AtIteration(args["at"], mode)] if mode in ("kill", "fail") else []
    if mode == "nan":
        poison_rank_one_at(args["at"])
    try:
        if mode == "resume":
            train_module.resume_run(args["out"], progress=False, stop_after=args.get("stop_after"))
        else:
            train_module.train(TrainConfig.from_dict(args["config"]), progress=False,
                               stop_after=args.get("stop_after"), hooks=hooks)
    except StopRequested as stop:
        report(stopped=str(stop))
        return 128 + stop.signum
    except TrainingDiverged as error:
        report(diverged=str(error))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
