"""Checks that run inside an MPI job, for tests/test_distributed.py:

    mpiexec -n 2 python tests/distributed_checks.py CHECK [CHECK...]
    mpiexec -n 2 python tests/distributed_checks.py train-CHECK [training-script arguments]

Each library check asserts on every rank and prints ``ok CHECK`` from rank 0. The ``train-*``
checks run ``train.cifar10.main`` with the arguments given, some with a fault injected
(a rank that raises, an interrupt after the first checkpoint) or with every rank's weights
compared after every optimizer step. The repository root must be on PYTHONPATH.
"""
from __future__ import annotations

import hashlib
import sys

import numpy as np

import tinygrad_cnn as tc
import tinygrad_cnn.distributed as dist
import tinygrad_cnn.functional as F
from tinygrad_cnn.data import ArrayDataset, DataLoader, RandomCrop, RandomHorizontalFlip, Compose, ToFloat
from models import FastCNN, SeedCNN

CHECKS = {}


def check(fn):
    CHECKS[fn.__name__.replace("_", "-")] = fn
    return fn


def _gather(comm, array):
    """Every rank's ``array`` (same shape on each), stacked in rank order."""
    a = np.ascontiguousarray(array)
    out = np.empty((comm.size,) + a.shape, a.dtype)
    comm.comm.Allgather(a, out)
    return out


@check
def allreduce_grads(comm):
    r, n = comm.rank, comm.size
    p, q, none_here, never = (tc.Tensor(np.zeros((2, 3), np.float32), requires_grad=True) for _ in range(4))
    p.grad = tc.Tensor(np.full((2, 3), r + 1.0, np.float32))
    kept = p.grad.data
    q.grad = tc.Tensor(np.full((2, 3), 2.0 * (r + 1), np.float32))
    held = (tc.Tensor(np.ones((2, 3), np.float32), requires_grad=True) * q.grad).sum()  # locks q.grad's array
    kept_q, kept_q_data = q.grad, q.grad.data
    none_here.grad = tc.Tensor(np.ones((2, 3), np.float32)) if r == 0 else None
    comm.allreduce_grads([p, q, none_here, never])
    mean = sum(k + 1.0 for k in range(n)) / n
    assert p.grad.data is kept and np.array_equal(p.grad, np.full((2, 3), mean, np.float32)), p.grad
    assert q.grad is kept_q and q.grad.data is kept_q_data and np.allclose(q.grad.data, 2 * mean)
    try:  # the graph that read q.grad before the average must not run on the averaged values
        held.backward()
    except RuntimeError as e:
        assert "written by allreduce_grads" in str(e), e
    else:
        raise AssertionError("a backward through a gradient allreduce_grads overwrote ran")
    assert isinstance(none_here.grad, tc.Tensor) and np.allclose(none_here.grad, 1.0 / n)  # zeros from the others
    assert never.grad is None  # no rank had one: still none, as an optimizer expects
    p.grad = tc.Tensor(np.full((2, 3), float(r + 1), np.float32))
    comm.allreduce_grads([p], average=False)
    assert np.array_equal(p.grad, np.full((2, 3), n * (n + 1) / 2, np.float32))
    for bad, message in (([p.data], "params must be Tensors; item 0 is a ndarray"),):
        try:
            comm.allreduce_grads(bad)
        except TypeError as e:
            assert message in str(e), e
        else:
            raise AssertionError("an ndarray accepted")


@check
def bcast(comm):
    tc.manual_seed(100 + comm.rank)  # a different initialisation on every rank
    model = FastCNN(in_channels=1, image_size=8)
    model.block1.bn.running_mean[...] = comm.rank + 5.0
    comm.bcast_parameters(model)
    states = [model.state_dict()]
    for k, v in states[0].items():
        everyone = _gather(comm, v)
        assert all(np.array_equal(e, everyone[0]) for e in everyone), k
    assert np.all(model.block1.bn.running_mean == 5.0)
    params = [tc.Tensor(np.full(3, float(comm.rank)), requires_grad=True)]
    held = (params[0] * params[0]).sum()  # a live graph holds the parameter's array (read-only)
    comm.bcast_parameters(params, root=comm.size - 1)
    assert np.all(params[0].data == comm.size - 1)
    if comm.rank != comm.size - 1:  # written here: the graph refuses to differentiate the old values
        try:
            held.backward()
        except RuntimeError as e:
            assert "written by bcast_parameters" in str(e), e
        else:
            raise AssertionError("a backward through parameters bcast_parameters overwrote ran")
    state = {"step": 3, "m": np.arange(4.0) * (comm.rank == 0), "nested": [{"lr": 0.1}, (1, "x")],
             "scalar": np.float32(2.5)} if comm.rank == 0 else None
    got = comm.bcast_state(state)
    assert got["step"] == 3 and np.array_equal(got["m"], np.arange(4.0)) and got["nested"] == [{"lr": 0.1}, (1, "x")]
    assert got["scalar"] == np.float32(2.5) and got["scalar"].dtype == np.float32
    assert comm.bcast_obj({"a": [1, 2.5, None]} if comm.rank == 0 else "ignored") == {"a": [1, 2.5, None]}
    assert list(comm.allreduce([1, comm.rank])) == [comm.size, sum(range(comm.size))]


@check
def mismatched_models_raise_on_every_rank(comm):
    model = SeedCNN(in_channels=1, image_size=8 if comm.rank == 0 else 12)
    try:
        comm.bcast_parameters(model)
    except RuntimeError as e:
        assert "bcast_parameters: the ranks disagree" in str(e) and "rank 1:" in str(e), e
    else:
        raise AssertionError("different models were not noticed")


@check
def sync_batch_norm(comm):
    """Each rank's slice of an unevenly split batch through FastCNN under sync_batch_norm,
    its loss scaled by the loader's rule: the gradients, averaged, and the running statistics
    are the whole batch's (to rounding), and the same bits on every rank."""
    rng = np.random.default_rng(0)
    n = 4 * comm.size + 1  # an uneven split
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, n)
    tc.manual_seed(0)
    ref = FastCNN(in_channels=1, image_size=8)
    start = ref.state_dict()
    F.cross_entropy(ref(tc.Tensor(x)), y).backward()
    tc.manual_seed(0)
    model = FastCNN(in_channels=1, image_size=8)
    lo, hi = comm.rank * n // comm.size, (comm.rank + 1) * n // comm.size
    with comm.sync_batch_norm():
        (F.cross_entropy(model(tc.Tensor(x[lo:hi])), y[lo:hi]) * ((hi - lo) * comm.size / n)).backward()
    comm.allreduce_grads(model.parameters())
    for (name, p), (_, want) in zip(model.named_parameters(), ref.named_parameters()):
        np.testing.assert_allclose(p.grad, want.grad, rtol=2e-4, atol=2e-6, err_msg=name)
        everyone = _gather(comm, p.grad)
        assert all(np.array_equal(e, everyone[0]) for e in everyone), name
    for name, b in model.state_dict().items():
        np.testing.assert_allclose(b, ref.state_dict()[name], rtol=1e-5, atol=1e-6, err_msg=name)
        if name.endswith(("running_mean", "running_var")):
            assert not np.array_equal(b, start[name]), name  # they moved
            everyone = _gather(comm, b)
            assert all(np.array_equal(e, everyone[0]) for e in everyone), name
    # ranks that run different layers raise on every rank instead of pairing wrong values
    try:
        with comm.sync_batch_norm():
            model(tc.Tensor(x[lo:hi] if comm.rank == 0 else np.zeros((2, 1, 16, 16), np.float32)))
    except RuntimeError as e:
        assert "reached another point" in str(e), e
    else:
        raise AssertionError("mismatched passes were not noticed")


@check
def profiled_waits(comm):
    """Under ``tc.profile``, the time a rank waits in BatchNorm's exchange for a late rank is
    the ``(shard wait)`` row's, not batch_norm's."""
    import time

    delay = 0.3
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    bn = tc.nn.BatchNorm2d(3)
    with tc.profile() as prof, comm.sync_batch_norm():
        if comm.rank == comm.size - 1:
            time.sleep(delay)  # the last rank reaches the exchange late
        bn(tc.Tensor(x))
    forward = {name: f for name, _, f, _, _ in prof.rows()}["batch_norm"]
    if comm.rank == 0:
        assert prof.wait >= 0.8 * delay and prof.waits >= 1, (prof.wait, prof.waits)
    assert forward < 0.5 * delay, forward


@check
def sharded_loader(comm):
    """The ranks' slices, put together, are the single-process loader's batches, augmentation
    included; resuming mid-epoch works as the loader's own state does."""
    images = np.arange(24 * 1 * 4 * 4, dtype=np.uint8).reshape(24, 1, 4, 4)
    ds = ArrayDataset(images, np.arange(24))

    def loader(ds=ds):
        return DataLoader(ds, 7, shuffle=True, seed=5,
                          transform=Compose([RandomCrop(4, padding=1), RandomHorizontalFlip(), ToFloat()]))

    whole, sharded = loader(), comm.shard(loader())
    assert len(sharded) == len(whole) == 4 and sharded.batch_size == 7
    for (x, y), (xs, ys) in zip(whole, sharded):
        lo, hi = sharded.bounds(len(y))
        assert np.array_equal(xs, x[lo:hi]) and np.array_equal(ys, y[lo:hi])
        assert sharded.loss_scale == (hi - lo) * comm.size / len(y)
    assert sharded.local_samples == sum(b - a for a, b in (sharded.bounds(k) for k in (7, 7, 7, 3)))
    it = iter(sharded)
    next(it)
    state = sharded.state_dict()
    rest = [y for _, y in it]
    again = comm.shard(loader())
    again.load_state_dict(state)
    assert all(np.array_equal(a, b) for a, b in zip(rest, [y for _, y in again]))
    try:  # 22 examples: a last batch of 1 leaves a rank without examples
        comm.shard(loader(ArrayDataset(images[:22], np.arange(22))))
    except ValueError as e:
        assert "a batch of 1 examples (of 22 in batches of 7) cannot give each of" in str(e), e
    else:
        raise AssertionError("an empty slice was accepted")
    evaluation = comm.shard(DataLoader(ds, 1), skip_empty=True)  # batches of one: most ranks skip
    assert sum(len(y) for _, y in evaluation) == evaluation.local_samples


@check
def scatter_dataset(comm):
    ds = ArrayDataset(np.arange(11 * 2, dtype=np.int16).reshape(11, 2), np.arange(11) * 10,
                      ["a", "b"]) if comm.rank == 0 else None
    part = comm.scatter_dataset(ds, shuffle=True, seed=3)
    per = -(-11 // comm.size)
    assert len(part) == per and part.classes == ("a", "b") and part.images.dtype == np.int16
    assert np.array_equal(part.images[:, 0] // 2 * 10, part.labels)  # rows stay with their labels
    labels = _gather(comm, part.labels)
    assert set(labels.ravel()) == set(range(0, 110, 10))  # every example somewhere


@check
def failing_rank_aborts(comm):
    with comm.abort_on_failure():
        if comm.rank == comm.size - 1:
            raise RuntimeError("injected failure")
        comm.barrier()  # the others wait here for a rank that never comes
    print("not reached", flush=True)


@check
def killed_rank_ends_the_job(comm):
    """A rank killed outright (out of memory, kill -9) cannot say anything: mpiexec notices."""
    import os
    import signal

    if comm.rank == comm.size - 1:
        os.kill(os.getpid(), signal.SIGKILL)
    comm.barrier()
    print("not reached", flush=True)


# ---------------------------------------------------------------------------- training script


def _train(argv):
    import train.cifar10 as tr

    sys.exit(tr.main(argv))


@check
def train(comm, argv):
    _train(argv)


@check
def train_identical_replicas(comm, argv):
    """Train, comparing every rank's parameters and buffers after every optimizer step."""
    import train.cifar10 as tr

    models, steps = [], [0]
    build = tr.build_model

    def build_and_keep(*args, **kwargs):
        models.append(build(*args, **kwargs))
        return models[-1]

    tr.build_model = build_and_keep
    step = tc.optim.Optimizer.step

    def step_and_compare(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        digest = hashlib.sha256()
        for k, v in models[-1].state_dict().items():
            digest.update(k.encode() + np.ascontiguousarray(v).tobytes())
        comm.check_same(f"weights after step {steps[0] + 1}", digest.hexdigest())
        steps[0] += 1
        return out

    tc.optim.Optimizer.step = step_and_compare
    code = tr.main(argv)
    if comm.rank == 0:
        print(f"identical after {steps[0]} steps", flush=True)
    sys.exit(code)


@check
def train_interrupted(comm, argv):
    """Train until rank 0 has written the first checkpoint, then interrupt rank 0."""
    import train.cifar10 as tr

    save = tr.save_checkpoint

    def save_then_interrupt(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    tr.save_checkpoint = save_then_interrupt
    _train(argv)


@check
def train_rank_one_fails(comm, argv):
    import train.cifar10 as tr

    evaluate = tr.evaluate

    def fail_on_rank_one(*args, **kwargs):
        if comm.rank == 1:
            raise RuntimeError("injected failure in evaluation")
        return evaluate(*args, **kwargs)

    tr.evaluate = fail_on_rank_one
    _train(argv)


def main():
    comm = dist.init()
    if sys.argv[1].startswith("train"):
        CHECKS[sys.argv[1]](comm, sys.argv[2:])
        return
    for name in sys.argv[1:]:  # library checks, one after another
        with comm.abort_on_failure():
            CHECKS[name](comm)
        if comm.rank == 0:
            print(f"ok {name}", flush=True)


if __name__ == "__main__":
    main()
