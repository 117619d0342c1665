"""The processes one training run spans: this one alone, or the ranks of an MPI job.

``train.cifar10.run`` asks its team at each point where a distributed run differs from a
single process: which slice of a batch to compute, when to combine gradients, which rank
writes files. ``SingleProcess`` answers as a plain run does; ``MPITeam`` answers with
``tinygrad_cnn.distributed`` underneath:

* every rank loads the data and builds the same loaders, then keeps its slice of each global
  batch (the single-process run's batches, in its order); evaluation splits the test set too;
* rank 0's settings and weights reach every rank at the start, and on ``--resume`` rank 0's
  checkpoint (it alone needs the output directory);
* each step averages the gradients in one Allreduce; BatchNorm layers use the global batch's
  statistics; with ``--budget``, rank 0's clock decides for everyone, so all ranks stop at the
  same step;
* only rank 0 writes metrics, checkpoints, curves, the summary and the progress bar;
* a rank that fails prints ``rank K failed: ...`` and ends the job (``MPI_Abort``).
"""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import asdict

from tinygrad_cnn import blas

DISTRIBUTED_HELP = ("train as one rank of an MPI job (mpiexec -n N python -m train.cifar10 ...): each rank "
                    "computes its slice of every batch; default: on when launched by mpiexec with N > 1")


class LaunchError(Exception):
    """The run asks for MPI that is not there, or was launched in a way that cannot work."""


def team_from_args(args):
    """The team for ``--distributed`` / ``--no-distributed`` / neither (then: distributed
    exactly when an MPI launcher started more than one process)."""
    from tinygrad_cnn import distributed

    launched = distributed.launch_size()
    wanted = getattr(args, "distributed", None)
    if wanted is False:
        if launched is not None and launched > 1:
            raise LaunchError(f"launched as {launched} MPI processes with --no-distributed: each would train "
                              f"alone and write the same files; drop --no-distributed, or run one process")
        return SingleProcess()
    if wanted is None and (launched is None or launched < 2):
        return SingleProcess()
    try:
        comm = distributed.init()
    except distributed.MPIUnavailable as e:
        how = "--distributed" if wanted else f"launched as {launched} MPI processes"
        raise LaunchError(f"{how}: {e}") from None
    return MPITeam(comm)


class SingleProcess:
    """One process does everything: every method is what ``run`` would do on its own."""

    rank, size, is_root = 0, 1, True

    def guard(self):
        return nullcontext()

    def agree(self, value):
        return value

    def agree_config(self, cfg):
        return cfg

    def shard(self, loader, evaluation=False):
        return loader

    def bcast_parameters(self, model):
        pass

    def load_checkpoint(self, load, path):
        return load(path)

    def micro_batching(self, cfg, uses_batch_statistics):
        return cfg.micro_batch, cfg.micro_threads

    def sync_batch_norm(self):
        return nullcontext()

    def loss_scale(self, loader):
        return 1.0

    def reduce_gradients(self, params):
        pass

    def sum(self, *values):
        return values

    def evaluate(self, evaluate, model, loader):
        return evaluate(model, loader)


class MPITeam:
    """The ranks of an MPI job, training one model together (see the module's docstring)."""

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size, self.is_root = comm.rank, comm.size, comm.rank == 0

    @contextmanager
    def guard(self):
        """Run the whole job: a failure on any rank ends every rank, naming the one that failed.
        Each rank gets its share of this machine's cores for BLAS and for the framework's
        threads, unless the environment already sets them."""
        from tinygrad_cnn.data import DatasetError
        from tinygrad_cnn.io import CheckpointError

        cores = max(1, len(os.sched_getaffinity(0)) // self.comm.local_size)
        os.environ.setdefault("TINYGRAD_CNN_THREADS", str(cores))
        blas_set = any(v in os.environ for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"))
        with self.comm.abort_on_failure(expected=(DatasetError, CheckpointError, OSError, LaunchError)):
            with nullcontext() if blas_set else blas.blas_threads(cores):
                yield

    def agree(self, value):
        """Rank 0's ``value`` (JSON: numbers, strings, lists, dicts) on every rank."""
        return self.comm.bcast_obj(value)

    def agree_config(self, cfg):
        return type(cfg)(**self.agree(asdict(cfg)))

    def shard(self, loader, evaluation=False):
        return self.comm.shard(loader, skip_empty=evaluation)

    def bcast_parameters(self, model):
        self.comm.bcast_parameters(model)

    def load_checkpoint(self, load, path):
        """Rank 0 reads the checkpoint and sends it to the others (which need no copy)."""
        return self.comm.bcast_state(load(path) if self.is_root else None)

    def micro_batching(self, cfg, uses_batch_statistics):
        """Ranks replace micro-batch threads: each rank computes its slice on one thread, in
        one pass when the model has BatchNorm (whose statistics are synchronised across ranks,
        not threads), else in micro-batches of ``--micro-batch``."""
        return (0 if uses_batch_statistics else cfg.micro_batch), 1

    def sync_batch_norm(self):
        return self.comm.sync_batch_norm()

    def loss_scale(self, loader):
        """What this rank's mean loss is multiplied by before backward: N times its share of
        the batch last drawn (1 unless the batch splits unevenly over the ranks)."""
        return loader.loss_scale

    def reduce_gradients(self, params):
        self.comm.allreduce_grads(params)  # the mean over ranks

    def sum(self, *values):
        """Each value summed over ranks (ints stay ints)."""
        sums = self.comm.allreduce(values)
        return tuple(type(v)(s) if isinstance(v, int) else float(s) for v, s in zip(values, sums))

    def evaluate(self, evaluate, model, loader):
        """``evaluate`` on this rank's slice of the test set, combined over ranks (each mean
        weighted by its rank's count of examples)."""
        n = loader.local_samples
        values = evaluate(model, loader)
        sums = self.comm.allreduce([v * n for v in values] + [n])
        return tuple(float(s / max(sums[-1], 1)) for s in sums[:-1])

