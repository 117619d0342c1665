"""Data-parallel training over MPI: one process per core or machine, each with a whole copy of
the model, together training as one process would on the whole batch.

    mpiexec -n 4 python my_training.py        # or: python -m train.cifar10 ... under mpiexec

    import tinygrad_cnn.distributed as dist
    comm = dist.init()                        # rank, size of MPI_COMM_WORLD
    comm.bcast_parameters(model)              # every rank starts from rank 0's weights and buffers
    loader = comm.shard(DataLoader(train, 128, shuffle=True, seed=0, transform=aug))
    with comm.abort_on_failure():             # a rank that raises stops the whole job, named
        for x, y in loader:                   # this rank's slice of each global batch of 128
            optimizer.zero_grad()
            with comm.sync_batch_norm():      # BatchNorm uses the statistics of the global batch
                loss = F.cross_entropy(model(Tensor(x)), y)
                (loss * loader.loss_scale).backward()  # 1 unless the batch splits unevenly
            comm.allreduce_grads(model.parameters())  # the mean over ranks
            optimizer.step()                  # the same step on every rank: replicas stay equal

The design is ChainerMN's and Horovod's (PyTorch's DDP is the same idea over Gloo/NCCL):
MPI is the transport, numpy buffers travel without copies through ``mpi4py``, and nothing in
the framework's ops knows about processes. Every rank sees the same global batches in the
same order (it runs the same ``DataLoader`` with the same seed and keeps its slice), so a run
on N ranks trains as the single-process run with the same seed and batch does, up to float32
rounding (the gradient's sums run in another order). Ranks stay bit-identical: each applies
the same averaged gradient to the same weights.

What a step sends: one ``Allreduce`` of all gradients in one flat buffer per dtype (our
backward runs to completion before anything could be sent, so splitting it into buckets, as
DDP does to overlap sending with backward, would only add latency), and for each BatchNorm
layer in training mode two small gathers of per-channel sums (forward and backward).
``docs/scaling.md`` has the bytes per step and a cost model.

MPI is optional: ``pip install "tinygrad_cnn[mpi]"`` brings mpi4py and MPICH (whose
``mpiexec`` works from the wheel). Importing this module needs neither; ``init()`` raises
``MPIUnavailable`` saying what to install.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
from contextlib import contextmanager

import numpy as np

from . import threads
from .tensor import Tensor, _accumulate, writing

__all__ = ["MPIUnavailable", "Communicator", "ShardedLoader", "init", "launch_size", "INSTALL_HINT"]

INSTALL_HINT = 'pip install "tinygrad_cnn[mpi]" (or: pip install mpi4py mpich)'

# World sizes that MPI launchers put in each process's environment: MPICH's hydra and Slurm
# with PMI (PMI_SIZE), Open MPI (OMPI_COMM_WORLD_SIZE), MVAPICH (MV2_COMM_WORLD_SIZE).
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class MPIUnavailable(ImportError):
    """Distributed training was asked for, but mpi4py or an MPI library is missing."""


def launch_size() -> int | None:
    """The number of processes an MPI launcher (``mpiexec``, ``srun``) started this one among,
    read from the environment without loading MPI; None when not launched by one."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise MPIUnavailable(f"distributed training needs mpi4py and an MPI library, and mpi4py cannot be "
                             f"imported ({e}); install them with {INSTALL_HINT}") from None
    except (RuntimeError, OSError) as e:  # mpi4py is there, the MPI library it was built for is not
        raise MPIUnavailable(f"mpi4py found no MPI library to load ({e}); install one with "
                             f"{INSTALL_HINT}") from None
    return MPI


def init(comm=None) -> "Communicator":
    """The communicator of this job's processes: ``MPI.COMM_WORLD``, or the mpi4py
    communicator given. Every process of the communicator must call it (it is collective)."""
    MPI = _mpi()
    return Communicator(MPI.COMM_WORLD if comm is None else comm)


class Communicator:
    """This process's place among the job's ranks, and the collective operations training needs.

    Every method here is collective: all ranks call it, in the same order, with arguments of
    the same structure (the same parameter shapes, the same state layout); a rank that reaches
    another point raises instead of pairing mismatched buffers, where the mismatch shows.
    ``rank`` runs over 0..size-1; ``local_rank`` and ``local_size`` count the ranks on this
    machine (for choosing thread counts)."""

    def __init__(self, mpi_comm):
        self._MPI = _mpi()
        self.comm = mpi_comm
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        local = mpi_comm.Split_type(self._MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self._bn_group = _BatchNormGroup(self)
        self._checked = set()  # layouts every rank has already agreed on (see _agree_on)
        self._buffers: dict = {}  # dtype -> flat gradient buffer, reused between steps

    def __repr__(self):
        return f"Communicator(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    # ------------------------------------------------------------------ gradients and weights

    def allreduce_grads(self, params, average=True):
        """Replace each parameter's ``.grad`` by its mean over ranks (Horovod's and ChainerMN's
        average), or with ``average=False`` its sum.

        When each rank's gradient is that of its mean loss times its ``ShardedLoader``'s
        ``loss_scale``, the mean is the gradient of the global batch's mean loss, as one
        process computing the whole batch would get. One ``Allreduce`` per dtype (usually one),
        in place in each ``.grad``'s array (through ``tensor.writing``: a graph that read the
        old gradient refuses backward afterwards); a parameter with no gradient on any rank
        keeps ``grad=None``, as the optimizers expect, and one with a gradient on some ranks
        only counts zeros for the others."""
        params = list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"allreduce_grads: params must be Tensors; item {i} is a {type(p).__name__}")
        weight = 1.0 / self.size if average else 1.0  # applied before the sum: exact for 2, 4, 8... ranks
        groups: dict = {}  # dtype -> parameters, in order
        for p in params:
            groups.setdefault(np.dtype(p.dtype), []).append(p)
        self._agree_on("allreduce_grads", [(str(d), [p.shape for p in ps]) for d, ps in groups.items()])
        for dtype, ps in groups.items():
            sizes = [int(np.prod(p.shape)) for p in ps]
            total = sum(sizes)
            flat = self._buffer(dtype, total + len(ps))  # the gradients, then one "has a gradient" flag each
            offset = 0
            for k, (p, n) in enumerate(zip(ps, sizes)):
                g = _grad_array(p)
                view = flat[offset:offset + n].reshape(p.shape)
                if g is None:
                    view[...] = 0
                else:
                    np.multiply(g, weight, out=view)
                flat[total + k] = g is not None
                offset += n
            self.comm.Allreduce(self._MPI.IN_PLACE, flat, op=self._MPI.SUM)
            offset = 0
            for k, (p, n) in enumerate(zip(ps, sizes)):
                summed, g = flat[offset:offset + n].reshape(p.shape), _grad_array(p)
                if g is not None:
                    with writing(g, "allreduce_grads"):
                        g[...] = summed
                elif flat[total + k]:  # another rank had one: take the sum, as backward would
                    _accumulate(p, Tensor._wrap(summed, False))  # (a private copy is made of it)
                offset += n

    def bcast_parameters(self, module_or_params, root=0):
        """Copy ``root``'s parameters (and a module's buffers: BatchNorm's running statistics)
        into every rank's, in place: call once before training, so that all replicas start
        equal (Horovod's ``broadcast_parameters``, ChainerMN's ``bcast_data``)."""
        arrays = _parameter_arrays(module_or_params)
        self._agree_on("bcast_parameters", [(str(a.dtype), a.shape) for _, a in arrays])
        payload = _pack([a for _, a in arrays]) if self.rank == root else np.empty(
            sum(a.nbytes for _, a in arrays), np.uint8)
        self.comm.Bcast(payload, root=root)
        if self.rank != root:
            for (store, a), value in zip(arrays, _unpack(payload, [(a.dtype, a.shape) for _, a in arrays])):
                store(value)

    def bcast_state(self, state, root=0):
        """``root``'s nested state (dicts, lists, arrays, numbers, strings: an optimizer's
        ``state_dict()``, a whole checkpoint) on every rank; other ranks' ``state`` is ignored.
        Arrays travel as raw bytes, the structure as JSON: no pickle."""
        from .io import _decode, _encode

        if self.rank == root:
            arrays = {}
            skeleton = _encode(state, arrays)
            for key, a in arrays.items():
                if a.dtype.hasobject:
                    raise TypeError(f"bcast_state: array {key} holds Python objects; only numeric arrays travel")
            layout = [[key, a.dtype.str, list(a.shape)] for key, a in arrays.items()]
            header = self.bcast_obj({"skeleton": skeleton, "layout": layout}, root)
            payload = _pack(list(arrays.values()))
        else:
            header = self.bcast_obj(None, root)
            payload = np.empty(sum(np.dtype(d).itemsize * int(np.prod(s)) for _, d, s in header["layout"]),
                               np.uint8)
        self.comm.Bcast(payload, root=root)
        if self.rank == root:
            return state
        values = _unpack(payload, [(np.dtype(d), tuple(s)) for _, d, s in header["layout"]])
        return _decode(header["skeleton"], {key: v for (key, _, _), v in zip(header["layout"], values)})

    def bcast_obj(self, obj, root=0):
        """``root``'s ``obj`` on every rank, sent as JSON (so: dicts with string keys, lists,
        strings, numbers, booleans, None; tuples come back as lists)."""
        if self.rank == root:
            try:
                data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
            except TypeError as e:
                raise TypeError(f"bcast_obj: sends JSON values only; {e}") from None
            length = np.array([data.size], np.int64)
        else:
            length = np.zeros(1, np.int64)
        self.comm.Bcast(length, root=root)
        if self.rank != root:
            data = np.empty(int(length[0]), np.uint8)
        self.comm.Bcast(data, root=root)
        return obj if self.rank == root else json.loads(data.tobytes().decode())

    def allreduce(self, values, op="sum"):
        """``values`` (a number or an array-like) combined over ranks by ``op`` ("sum", "max"
        or "min"), as float64, on every rank: for metrics such as summed losses and counts."""
        ops = {"sum": self._MPI.SUM, "max": self._MPI.MAX, "min": self._MPI.MIN}
        if op not in ops:
            raise ValueError(f"allreduce: op must be one of {sorted(ops)}; got {op!r}")
        buf = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=ops[op])
        return buf

    def barrier(self):
        self.comm.Barrier()

    # ------------------------------------------------------------------ data

    def shard(self, loader, skip_empty=False) -> "ShardedLoader":
        """``loader`` (a ``DataLoader``, every rank's built alike) giving this rank's slice of
        each of its batches: see ``ShardedLoader``."""
        return ShardedLoader(loader, self, skip_empty=skip_empty)

    def scatter_dataset(self, dataset, root=0, shuffle=False, seed=None, force_equal_length=True):
        """``root``'s ``ArrayDataset`` split into ``size`` parts, one per rank, sent over MPI
        (other ranks may pass None): ChainerMN's ``scatter_dataset``. ``shuffle`` splits a
        permutation (drawn from ``seed``) instead of consecutive runs. With
        ``force_equal_length`` every part has ``ceil(n / size)`` examples, the last parts
        topped up with examples from the start, so that every rank runs the same number of
        batches (a rank with one batch more than the others would wait for them forever).

        Each rank then trains on its own part: the global batches are not the single-process
        run's. To keep those, give every rank the whole dataset and ``shard`` its loader."""
        from .data import ArrayDataset

        if self.rank == root:
            if not isinstance(dataset, ArrayDataset):
                raise TypeError(f"scatter_dataset: root's dataset must be an ArrayDataset; got "
                                f"{type(dataset).__name__}")
            n = len(dataset)
            if n < self.size:
                raise ValueError(f"scatter_dataset: {n} examples cannot give each of {self.size} ranks one")
            order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
            if force_equal_length:
                per = -(-n // self.size)
                order = np.concatenate([order, order[:per * self.size - n]])
            parts = np.array_split(order, self.size)
            meta = {"counts": [len(p) for p in parts], "image": [dataset.images.dtype.str, dataset.images.shape[1:]],
                    "label": [dataset.labels.dtype.str, dataset.labels.shape[1:]], "classes": list(dataset.classes)}
            self.bcast_obj(meta, root)
            order = np.concatenate(parts)
            images, labels = dataset.images[order], dataset.labels[order]
        else:
            meta = self.bcast_obj(None, root)
        counts = meta["counts"]
        out = []
        for (dtype, tail), source in zip((meta["image"], meta["label"]),
                                         ((images, labels) if self.rank == root else (None, None))):
            dtype, tail = np.dtype(dtype), tuple(tail)
            row = dtype.itemsize * int(np.prod(tail))
            mine = np.empty((counts[self.rank],) + tail, dtype)
            sizes = [c * row for c in counts]
            send = None
            if self.rank == root:
                send = [np.ascontiguousarray(source).reshape(-1).view(np.uint8), sizes,
                        np.cumsum([0] + sizes[:-1]).tolist(), self._MPI.BYTE]
            self.comm.Scatterv(send, mine.reshape(-1).view(np.uint8), root=root)
            out.append(mine)
        return ArrayDataset(out[0], out[1], meta["classes"])

    # ------------------------------------------------------------------ BatchNorm across ranks

    @contextmanager
    def sync_batch_norm(self):
        """Inside the block, BatchNorm layers in training mode normalise with the statistics of
        the global batch, gathered from every rank, and their backward pass uses its sums: the
        multi-node BatchNorm of ChainerMN, PyTorch's SyncBatchNorm. Run a whole forward and
        backward pass inside it, on every rank, with the same layers (the gathers pair up by
        order). Every rank updates its running statistics with the global batch's, so the
        replicas' buffers stay equal too. Inside, run the pass on this thread: the thread
        shards of ``tinygrad_cnn.parallel`` (``sync_batch_norm=True``) would replace these."""
        if self.size == 1:
            yield
            return
        # Each process holds its own replica of the model, and is the one shard that updates
        # its running statistics: shard 0 of its own batch, as far as the op is concerned.
        with threads.batch_shard(self._bn_group, 0):
            yield

    # ------------------------------------------------------------------ failures

    @contextmanager
    def abort_on_failure(self, expected=(), file=None):
        """Run the block; if this rank raises (or exits) inside it, print ``rank K failed:
        ...`` and end the whole job with ``MPI_Abort``, so that the other ranks, which would
        wait for it forever in their next collective, stop too. Exceptions of the ``expected``
        types (user errors, such as a missing data file) print as ``error: message`` and abort
        with code 2; others print their traceback and abort with 1. Leave the block normally
        on every rank when done."""
        try:
            yield
        except BaseException as e:  # noqa: BLE001 (every way out of the block must end the job)
            code, message = _failure(e, expected)
            file = file or sys.stderr
            sys.stdout.flush()
            print(f"rank {self.rank} failed: {message}", file=file, flush=True)
            self.abort(code)

    def abort(self, code=1):
        """End every rank of the job now (``MPI_Abort``), with exit code ``code``; never returns.
        (MPICH's ``MPI_Abort`` can return to its caller while the launcher ends the job: this
        process then exits at once rather than run on into the next collective.)"""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(0.2)  # the launcher forwards output asynchronously: let the message reach it first
        self.comm.Abort(int(code))
        os._exit(int(code))

    # ------------------------------------------------------------------ helpers

    def _buffer(self, dtype, n):
        buf = self._buffers.get(dtype)
        if buf is None or buf.size != n:
            buf = self._buffers[dtype] = np.empty(n, dtype)
        return buf

    def _agree_on(self, what, layout):
        """Check once per distinct ``layout`` that every rank passed the same one."""
        key = (what, repr(layout))
        if key in self._checked:
            return
        self.check_same(what, repr(layout))
        self._checked.add(key)

    def check_same(self, what, text):
        """Raise ``RuntimeError`` on every rank unless every rank passed the same ``text``
        (compared by a 64-bit digest; the texts themselves travel only when they differ)."""
        digest = np.frombuffer(hashlib.blake2b(text.encode(), digest_size=8).digest(), np.int64)
        digests = np.empty(self.size, np.int64)
        self.comm.Allgather(digest, digests)
        if (digests == digests[0]).all():
            return
        texts = self._allgather_text(text)
        lines = "; ".join(f"rank {r}: {t}" for r, t in enumerate(texts))
        raise RuntimeError(f"{what}: the ranks disagree ({lines}); every rank must run the same code on "
                           f"the same model")

    def _allgather_text(self, text, limit=300):
        raw = text.encode()[:limit].ljust(limit, b"\0")
        out = np.empty((self.size, limit), np.uint8)
        self.comm.Allgather(np.frombuffer(raw, np.uint8), out)
        return [bytes(row).rstrip(b"\0").decode(errors="replace") for row in out]


class _BatchNormGroup:
    """The ranks of a job as the shard group that ``ops/norm.py``'s BatchNorm gathers its
    per-channel statistics from (``threads.ShardGroup``'s contract, across processes):
    ``gather(rank, what, value)`` returns every rank's ``value`` in rank order. ``value`` is a
    tuple of numbers and arrays; they travel as raw bytes, so each comes back with its exact
    bits and type (a Python int stays an int). A digest of ``what`` and of the values' layout
    travels with them: ranks at different points raise instead of mixing up values."""

    def __init__(self, comm: Communicator):
        self.comm = comm
        self.size = comm.size

    def gather(self, rank, what, value):
        # ``rank`` is the caller's shard within this process (always 0 here); the rank that
        # counts is this process's. Each rank's bytes start with a digest of ``what`` and of
        # the values' layout, checked after the one Allgather.
        items = [np.asarray(v) for v in value]
        layout = [(a.dtype, a.shape) for a in items]
        digest = hashlib.blake2b(f"{what}|{[(d.str, s) for d, s in layout]}".encode(), digest_size=8).digest()
        mine = _pack([np.frombuffer(digest, np.uint8)] + items)
        everyone = np.empty((self.size, mine.size), np.uint8)
        listener = threads.wait_listener
        started = time.perf_counter()
        self.comm.comm.Allgather(mine, everyone)  # also the wait for the slowest rank
        if listener is not None:
            listener(time.perf_counter() - started)
        others = [r for r in range(self.size) if bytes(everyone[r, :8]) != digest]
        if others:
            raise RuntimeError(f"{what}: rank(s) {', '.join(map(str, others))} reached another point (another "
                               f"op, or other shapes) than rank {self.comm.rank}; every rank must run the "
                               f"same layers on batches of the same shape but for the batch axis")
        scalar = [not isinstance(v, (np.ndarray, np.generic)) for v in value]
        out = []
        for row in everyone:
            values = _unpack(row[8:], layout)
            out.append(tuple(v.item() if s else v for v, s in zip(values, scalar)))
        return out

    def abort(self):
        """Part of the shard-group contract; across processes a failing rank ends the job
        (``Communicator.abort_on_failure``) instead."""


class ShardedLoader:
    """A ``DataLoader`` whose batches are cut into one slice per rank: rank r of N gets
    examples ``[r*n//N, (r+1)*n//N)`` of each global batch of n. Every rank must build the same
    loader (same dataset, batch size, seed, transform): each then draws the same permutation
    and the same augmentation for the whole global batch, so the slices together are exactly
    the single-process run's batches, in its order. (Each rank loads and transforms the whole
    batch to keep its slice: a few percent of a step's time, the price of that equality.)

    ``loss_scale`` goes with the batch last yielded: N times this rank's fraction of it (1
    when the batch splits evenly). Multiply the slice's mean loss by it before ``backward``
    and ``allreduce_grads``' mean is the gradient of the global batch's mean loss, also when
    the last batch of an epoch splits unevenly. (Scaling the gradients after backward would
    not do with ``sync_batch_norm``: its backward mixes every rank's gradients, which must be
    on one scale.) ``len()``, ``state_dict()``, ``load_state_dict()`` and every other
    attribute are the wrapped loader's, so schedules count global batches and checkpoints
    resume the same way. A rank whose slice of some batch would be empty (a batch smaller than
    the rank count) has nothing to compute a loss on: that raises here, unless ``skip_empty``
    (for loops with no collective inside, such as evaluation), which skips those slices."""

    def __init__(self, loader, comm, skip_empty=False):
        self.loader, self.comm, self.skip_empty = loader, comm, bool(skip_empty)
        self.loss_scale = 1.0
        sizes = _batch_sizes(len(loader.dataset), loader.batch_size, getattr(loader, "drop_last", False))
        smallest = min(sizes, default=comm.size)
        if smallest < comm.size and not self.skip_empty:
            raise ValueError(f"ShardedLoader: a batch of {smallest} examples (of {len(loader.dataset)} in batches "
                             f"of {loader.batch_size}) cannot give each of {comm.size} ranks one; use a larger batch, "
                             f"drop_last=True, or fewer ranks")
        self.local_samples = sum(self.bounds(n)[1] - self.bounds(n)[0] for n in sizes)

    def bounds(self, n):
        """This rank's ``[lo, hi)`` within a global batch of ``n`` examples."""
        r, size = self.comm.rank, self.comm.size
        return r * n // size, (r + 1) * n // size

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            lo, hi = self.bounds(len(y))
            if hi == lo and self.skip_empty:
                continue
            self.loss_scale = (hi - lo) * self.comm.size / len(y)
            yield x[lo:hi], y[lo:hi]

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)

    def __getattr__(self, name):  # dataset, batch_size, epoch, ...: the wrapped loader's
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __repr__(self):
        return f"ShardedLoader({self.loader!r}, rank={self.comm.rank}, size={self.comm.size})"


# ---------------------------------------------------------------------------- helpers


def _batch_sizes(n, batch_size, drop_last):
    full, rest = divmod(n, batch_size)
    return [batch_size] * full + ([rest] if rest and not drop_last else [])


def _grad_array(p):
    """``p.grad``'s array, or None."""
    return None if p.grad is None else p.grad.data  # a Tensor: assignment accepts nothing else


def _parameter_arrays(module_or_params):
    """[(store(value), array)] for every parameter (and a module's buffers), in order."""
    from .nn import Module

    pairs = []
    if isinstance(module_or_params, Module):
        for _, m in module_or_params.named_modules():
            for p in m._parameters.values():
                pairs.append(_param_slot(p))
            for name, b in m._buffers.items():
                def store(value, m=m, name=name):
                    m._buffers[name][...] = value
                pairs.append((store, np.asarray(b)))
        return pairs
    for i, p in enumerate(module_or_params):
        if not isinstance(p, Tensor):
            raise TypeError(f"bcast_parameters: expects a Module or Tensors; item {i} is a {type(p).__name__}")
        pairs.append(_param_slot(p))
    return pairs


def _param_slot(p):
    def store(value):  # in place, past a graph's read-only lock: that graph then refuses backward
        with writing(p.data, "bcast_parameters") as d:
            d[...] = value
    return store, p.data


def _pack(arrays):
    """The arrays' bytes, one after another, as one uint8 buffer."""
    parts = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays]
    return np.concatenate(parts) if parts else np.empty(0, np.uint8)


def _unpack(buffer, layout):
    """Arrays of the given (dtype, shape)s, copied out of ``_pack``'s buffer."""
    out, offset = [], 0
    for dtype, shape in layout:
        dtype = np.dtype(dtype)
        n = dtype.itemsize * int(np.prod(shape))
        out.append(buffer[offset:offset + n].view(dtype).reshape(shape).copy())
        offset += n
    return out


def _failure(e, expected):
    """(exit code, one-line or traceback message) for an exception that ends a rank."""
    if isinstance(e, SystemExit):
        if isinstance(e.code, str):
            return 2, e.code
        if e.code in (None, 0):
            return 1, "exited (sys.exit) before the other ranks"
        return int(e.code) if isinstance(e.code, int) else 1, f"exited with status {e.code}"
    if isinstance(e, KeyboardInterrupt):
        return 130, "interrupted"
    if expected and isinstance(e, expected):
        return 2, f"error: {e}"
    text = "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip()
    return 1, f"{type(e).__name__}: {e}\n{text}"
