"""Data-parallel training over several processes: synchronized SGD, as the FPN paper's 8 GPUs.

Shape shorthand:  N processes ("ranks", numbered 0 … N−1);  B images per
iteration in all (the *global* batch, ``TrainConfig.batch_size``), B/N per rank.

The FPN paper trains on 8 GPUs with 2 images each: 16 images per step, one
model. Every process runs its own copy of the model on its own images, and the
copies stay identical because they all take the same step:

1. **Same start.** Every rank builds the model from the same seed and then
   takes rank 0's weights and training state (:meth:`Communicator.broadcast`).
2. **Own shard.** Of each iteration's B images — the images a single process
   would take, in the same order — rank r takes positions r·B/N … (r+1)·B/N − 1
   (:meth:`Communicator.shard`). Its random draws (flips, sampled anchors and
   RoIs) are keyed by those positions, so they are what one process would draw.
3. **Average the gradients.** Each rank back-propagates its own images' losses.
   An *all-reduce* sums each gradient over the ranks and hands every rank the
   sum; divided by N it is the mean gradient (:meth:`Communicator.allreduce_mean_`).
   The gradients travel packed into a few large *buckets* (PyTorch's
   DistributedDataParallel packs 25 MB), not one message per parameter: every
   message has a fixed cost, whatever its size.
4. **Same step.** Every rank clips and applies SGD to identical weights with the
   identical gradient: the copies never drift apart, and no weights are sent.

When is the mean of the shards' gradients *exactly* the whole batch's? When
each loss is a sum over images divided by a count fixed per image. The RPN's
losses (256 sampled anchors per image) and the box head's
(``box_batch_size_per_image`` RoIs per image) are; the mask loss, a mean over
however many foreground RoIs the images happen to have, becomes the mean of
the shards' means — as in torchvision and Detectron2 on several GPUs. GroupNorm
normalises each image on its own, so the backbone does not see the split
(BatchNorm would: its statistics would come from B/N images).

Which communicator (:func:`world` picks):

* :class:`Communicator` — one process, the default: every collective is the identity.
* :class:`MPICommunicator` — N processes started by ``mpiexec -n N`` (or a
  scheduler such as SLURM's ``srun``), through mpi4py (the ``[mpi]`` extra).
  NumPy buffers go to MPI without a copy; CuPy buffers are copied to the host
  and back, one copy each way per bucket (NCCL or a CUDA-aware MPI would keep
  them on the GPUs; README: "Training on several processes").

When one rank fails alone (a bad file, a full disk, a bug), the others would
wait for it forever inside the next all-reduce: :func:`fail_together` prints
the error with its rank and stops every rank (``MPI_Abort``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time

import numpy as np

from minifpn import backend

#: Environment variables in which MPI launchers give the number of processes:
#: MPICH's and Intel MPI's Hydra, and SLURM's ``srun --mpi=pmi2`` (PMI_SIZE);
#: Open MPI's ``mpirun`` (OMPI_COMM_WORLD_SIZE).
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")

#: Seconds a failing rank waits between printing its error and MPI_Abort: the launcher
#: forwards each rank's output as it comes, and an abort may cut off what it has not yet.
ABORT_GRACE_SECONDS = 0.5

#: Bytes per all-reduce message at most: PyTorch DistributedDataParallel's default
#: bucket (25 MB). The tiny preset's 4.0 M float32 gradients (16 MB) fit one.
BUCKET_BYTES = 25 * 2**20


class Communicator:
    """One process alone (the default): rank 0 of 1, and every collective is the identity.

    The methods are the collectives data-parallel training needs; :class:`MPICommunicator`
    implements them across processes. Attributes: ``rank``, ``size`` (N),
    ``local_rank`` / ``local_size`` (the ranks on this machine), and
    ``communication_seconds`` (time spent in :meth:`allreduce_mean_`, for benchmarks).
    """

    rank, size, local_rank, local_size = 0, 1, 0, 1

    def __init__(self):
        self.communication_seconds = 0.0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files, prints and shows the progress bar."""
        return self.rank == 0

    def shard(self, batch_size: int) -> range:
        """The positions of a ``batch_size``-image batch this rank takes (B/N of them)."""
        if batch_size % self.size:
            raise ValueError(
                f"a batch of {batch_size} images does not split over {self.size} processes: "
                f"choose --batch-size as a multiple of {self.size} (it is the global batch; "
                f"each process takes batch_size / {self.size} images)")
        per_rank = batch_size // self.size
        return range(self.rank * per_rank, (self.rank + 1) * per_rank)

    def allreduce_mean_(self, arrays) -> None:
        """Replace each array by its mean over the ranks, in place."""

    def mean(self, numbers) -> list:
        """The mean over the ranks of each number (floats, on the host)."""
        return [float(x) for x in numbers]

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any."""
        return bool(flag)

    def broadcast(self, value):
        """Rank 0's ``value`` (any picklable object), on every rank."""
        return value

    def gather(self, value) -> list | None:
        """On rank 0, the list of every rank's ``value`` in rank order; None elsewhere."""
        return [value]

    def abort(self, code: int = 1) -> None:
        """Stop every rank at once (only a multi-process communicator does anything)."""

    def describe(self) -> str:
        return "1 process"


class MPICommunicator(Communicator):
    """The collectives over MPI (mpi4py's ``comm``, by default ``MPI.COMM_WORLD``).

    On creation, each rank's CPU threads are set to its share of the machine's
    cores (cores // ranks on this machine), unless ``MINIFPN_NUM_THREADS``,
    ``OMP_NUM_THREADS`` or ``OPENBLAS_NUM_THREADS`` says otherwise: two ranks
    with two BLAS threads each on two cores would spend their time waiting
    for each other.
    """

    def __init__(self, comm=None, bucket_bytes: int = BUCKET_BYTES):
        super().__init__()
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.bucket_bytes = bucket_bytes
        self.threads = _share_the_cores(self.local_size)

    def allreduce_mean_(self, arrays) -> None:
        began = time.perf_counter()
        for bucket in buckets(arrays, self.bucket_bytes):
            xp = backend.get_array_module(bucket[0])
            flat = xp.concatenate([a.reshape(-1) for a in bucket])  # (Σ sizes,)
            host = flat if xp is np else backend.to_numpy(flat)  # one copy out per bucket
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            host /= self.size
            flat = host if xp is np else xp.asarray(host)  # … and one back
            offset = 0
            for a in bucket:
                a[...] = flat[offset:offset + a.size].reshape(a.shape)
                offset += a.size
        self.communication_seconds += time.perf_counter() - began

    def mean(self, numbers) -> list:
        values = np.asarray(numbers, dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, values, op=self.MPI.SUM)
        return (values / self.size).tolist()

    def any(self, flag: bool) -> bool:
        return bool(self.comm.allreduce(bool(flag), op=self.MPI.LOR))

    def broadcast(self, value):
        return self.comm.bcast(value, root=0)

    def gather(self, value) -> list | None:
        return self.comm.gather(value, root=0)

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)

    def describe(self) -> str:
        return (f"{self.size} processes (MPI; {self.local_size} on this machine, "
                f"{self.threads} CPU thread{'s' * (self.threads != 1)} each)")


def buckets(arrays, bucket_bytes: int = BUCKET_BYTES) -> list:
    """``arrays`` in order, grouped into runs of one dtype of at most ``bucket_bytes`` each.

    An array larger than ``bucket_bytes`` is a bucket of its own.
    """
    groups, current, size = [], [], 0
    for a in arrays:
        if current and (a.dtype != current[0].dtype or size + a.nbytes > bucket_bytes):
            groups.append(current)
            current, size = [], 0
        current.append(a)
        size += a.nbytes
    if current:
        groups.append(current)
    return groups


def _share_the_cores(ranks_here: int) -> int:
    """Give this rank cores // ranks_here CPU threads (BLAS and minifpn's), unless set by hand."""
    if any(os.environ.get(name, "").strip() for name in
           ("MINIFPN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")):
        return backend.cpu_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // ranks_here)
    backend.set_cpu_threads(threads)
    try:  # BLAS sized its thread pool when NumPy was imported: resize it now
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")
    except ImportError:
        print(f"minifpn: threadpoolctl is not installed, so BLAS keeps its own threads; set "
              f"OMP_NUM_THREADS={threads} for {ranks_here} processes on {cores} cores",
              file=sys.stderr)
    return threads


def launched_size() -> int:
    """How many processes the MPI launcher started (1 when not launched by one)."""
    for name in LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 1


@functools.cache
def world() -> Communicator:
    """This process's communicator: MPI's world under ``mpiexec -n N`` (N > 1), else one process.

    mpi4py is imported only then, so a plain run never starts MPI.
    """
    size = launched_size()
    if size <= 1:
        return Communicator()
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise RuntimeError(
            f"started by an MPI launcher as one of {size} processes, but mpi4py is not "
            "installed: python3 -m pip install -e '.[mpi]' (mpi4py and the mpich wheel), or "
            "run without mpiexec") from None
    return MPICommunicator()


@contextlib.contextmanager
def fail_together(comm: Communicator):
    """If this rank meets an error the others do not, stop them all instead of hanging.

    Errors every rank meets at the same step (a stop request or a NaN loss,
    which the ranks agree on) are raised normally on each (``error.collective``
    is True). Any other error is printed with the rank, then ``MPI_Abort``
    ends every process of the job.
    """
    try:
        yield
    except BaseException as error:
        if comm.size > 1 and not getattr(error, "collective", False):
            notes = "".join(f"\n{note}" for note in getattr(error, "__notes__", []))
            print(f"minifpn: rank {comm.rank} of {comm.size} failed: "
                  f"{type(error).__name__}: {error}{notes}\nStopping all {comm.size} processes "
                  "(the checkpoint last written is kept).", file=sys.stderr, flush=True)
            time.sleep(ABORT_GRACE_SECONDS)
            comm.abort(1)
        raise
