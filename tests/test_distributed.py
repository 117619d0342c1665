"""Data-parallel training over MPI (tinygrad_cnn/distributed.py, train/distributed.py), run for
real: each test launches ``mpiexec -n 2`` (or 3) on this machine's loopback, a second or two
per launch. They skip, saying why, only where mpi4py or mpiexec is missing
(``pip install -e ".[mpi]"`` brings both); CI installs them.

The training runs use small fabricated Fashion-MNIST files (100 training images, 30 test),
so they need no download; batches of 32 leave a last batch of 4, and 100 = 3 x 32 + 4.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import train.cifar10 as tr
from data_fixtures import write_fashion_mnist
from tinygrad_cnn.io import load_arrays

ROOT = Path(__file__).resolve().parent.parent
CHECKS = Path(__file__).resolve().parent / "distributed_checks.py"
TIME_KEYS = {"train_time", "eval_time", "wall_time"}


def _mpiexec():
    beside = Path(sys.executable).parent / "mpiexec"  # the one installed with this Python's mpich
    return str(beside) if beside.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(
    not (MPIEXEC and HAVE_MPI4PY),
    reason=f"MPI not installed ({'mpiexec' if not MPIEXEC else 'mpi4py'} missing): pip install -e \".[mpi]\"")


def mpirun(n, *args, timeout=120):
    """``mpiexec -n n python args...`` from the repository root; the completed process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TINYGRAD_CNN_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(directory, n_train=100, n_test=30, seed=1)
    return directory


def train_args(data, out, *extra, model="fast_cnn", epochs=1):
    return ["--dataset", "fashion-mnist", "--data", str(data), "--model", model, "--epochs", str(epochs),
            "--batch-size", "32", "--lr", "0.01", "--no-progress", "--out", str(out), *extra]


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def without_times(records):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in records]


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


# ---------------------------------------------------------------------------- the library


@needs_mpi
def test_collectives():
    """allreduce_grads (mean, sum, grads missing on some ranks or all, grads that are Tensors),
    bcast_parameters (weights and buffers), bcast_state, bcast_obj, allreduce, scatter_dataset,
    and models that differ between ranks raising on every rank: one launch, several checks."""
    checks = ["allreduce-grads", "bcast", "mismatched-models-raise-on-every-rank", "scatter-dataset"]
    out = ok(mpirun(2, CHECKS, *checks)).stdout
    assert all(f"ok {c}" in out for c in checks)


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_batch_norm_and_data_across_ranks_equal_the_single_process_batch(ranks):
    """BatchNorm under sync_batch_norm equals the whole batch's (3 ranks: a batch of 13 splits
    4/4/5, which the loss scaling makes up for), and the sharded loader's slices are the
    single-process loader's batches; the profiler shows a rank's wait for a late one as a wait."""
    out = ok(mpirun(ranks, CHECKS, "sync-batch-norm", "sharded-loader", "profiled-waits")).stdout
    assert "ok sync-batch-norm" in out and "ok sharded-loader" in out and "ok profiled-waits" in out


@needs_mpi
def test_a_failing_rank_ends_the_job_naming_itself():
    proc = mpirun(2, CHECKS, "failing-rank-aborts", timeout=60)  # the other rank waits in a barrier
    assert proc.returncode != 0
    assert "rank 1 failed: RuntimeError: injected failure" in proc.stderr
    assert "not reached" not in proc.stdout


@needs_mpi
def test_a_killed_rank_ends_the_job():
    proc = mpirun(2, CHECKS, "killed-rank-ends-the-job", timeout=60)
    assert proc.returncode != 0 and "not reached" not in proc.stdout
    assert "BAD TERMINATION" in proc.stdout + proc.stderr  # hydra's report, naming the process


# ---------------------------------------------------------------------------- the training script


@needs_mpi
@pytest.mark.parametrize("model", ["fast_cnn", "seed_cnn"])
def test_two_ranks_train_as_one_process_does(fmnist, tmp_path, model):
    """One epoch on 2 ranks (auto-detected from the launch) against one process with the same
    seed and global batch (FastCNN's BatchNorm: its default thread shards; SeedCNN: its
    micro-batches): the same weights and running statistics up to float32 rounding. (Adam,
    SeedCNN's optimizer, moves a weight whose gradient is nearly zero by about lr whatever its
    size, so a rounding-level difference there shows as up to ~1e-4 lr: hence atol 1e-3 lr.)
    Only rank 0 writes, and no temporary file is left behind."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert tr.main(train_args(fmnist, single, model=model)) == 0
    proc = ok(mpirun(2, "-m", "train.cifar10", *train_args(fmnist, multi, model=model)))
    assert "distributed: 2 ranks" in proc.stdout and proc.stdout.count("epoch   1") == 1  # rank 0 alone logs
    a, b = load_arrays(single / "model.npz"), load_arrays(multi / "model.npz")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-5, err_msg=k)  # lr 0.01
    (ma,), (mb,) = metrics(single), metrics(multi)
    assert mb["images"] == ma["images"] == 100
    for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert abs(ma[k] - mb[k]) < 1e-5, k
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())


@needs_mpi
def test_ranks_hold_identical_weights_after_every_step_under_a_budget(fmnist, tmp_path):
    """Every rank's parameters and BatchNorm buffers hash alike after every optimizer step,
    through a --budget run that the clock ends: rank 0's clock decides for every rank, so all
    stop at the same step and see the same learning rates."""
    out = tmp_path / "budget"
    argv = train_args(fmnist, out, "--budget", "2", "--distributed")
    argv[argv.index("--epochs"):argv.index("--epochs") + 2] = []  # the budget alone ends the run
    proc = ok(mpirun(2, CHECKS, "train-identical-replicas", *argv))
    steps = int(proc.stdout.split("identical after ")[1].split()[0])
    epochs = len(metrics(out))
    assert epochs >= 1 and 4 * (epochs - 1) < steps <= 4 * epochs  # 4 batches an epoch; the last may stop early


@needs_mpi
def test_resume_after_an_interruption_equals_the_uninterrupted_run(fmnist, tmp_path):
    """Rank 0 is interrupted right after writing epoch 1's checkpoint, which ends the job;
    ``--resume`` on 2 ranks then gives the uninterrupted 2-rank run's metrics and weights,
    bit for bit. The checkpoint survived whole (one writer, written atomically)."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    ok(mpirun(2, "-m", "train.cifar10", *train_args(fmnist, whole, epochs=2)))
    proc = mpirun(2, CHECKS, "train-interrupted", *train_args(fmnist, cut, epochs=2))
    assert proc.returncode != 0 and "rank 0 failed: interrupted" in proc.stderr
    assert tr.load_checkpoint(cut / tr.CHECKPOINT)["epoch"] == 1 and not list(cut.glob(".tmp-*"))
    ok(mpirun(2, "-m", "train.cifar10", "--resume", "--out", cut, "--no-progress"))
    assert without_times(metrics(cut)) == without_times(metrics(whole))
    a, b = load_arrays(whole / "model.npz"), load_arrays(cut / "model.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@needs_mpi
def test_a_rank_that_raises_ends_the_job_with_its_rank_named(fmnist, tmp_path):
    proc = mpirun(2, CHECKS, "train-rank-one-fails", *train_args(fmnist, tmp_path / "fail"), timeout=60)
    assert proc.returncode != 0
    assert "rank 1 failed: RuntimeError: injected failure in evaluation" in proc.stderr


@needs_mpi
def test_a_user_error_under_mpi_is_one_line_per_rank_and_exit_2(tmp_path):
    proc = mpirun(2, "-m", "train.cifar10", *train_args(tmp_path / "nowhere", tmp_path / "out"), timeout=60)
    assert proc.returncode == 2
    assert "failed: error: Fashion-MNIST train files" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------- without MPI


def test_distributed_without_mpi4py_is_a_one_line_error(tmp_path):
    """--distributed where mpi4py cannot be imported: exit 2 and what to install (this test
    runs everywhere: it hides mpi4py rather than needing it)."""
    code = ("import sys; sys.modules['mpi4py'] = None; import train.cifar10 as tr; "
            f"sys.exit(tr.main(['--distributed', '--out', {str(tmp_path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: --distributed: distributed training needs mpi4py")
    assert 'pip install "tinygrad_cnn[mpi]"' in proc.stderr and "Traceback" not in proc.stderr


def test_no_distributed_under_an_mpi_launch_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PMI_SIZE", "2")  # as mpiexec -n 2 sets it
    assert tr.main(["--no-distributed", "--out", str(tmp_path)]) == 2
    assert "launched as 2 MPI processes with --no-distributed" in capsys.readouterr().err


def test_a_single_process_run_needs_no_mpi(monkeypatch):
    """Without a launcher or --distributed, the script never loads MPI."""
    from train.distributed import SingleProcess, team_from_args

    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    assert isinstance(team_from_args(tr.build_parser().parse_args([])), SingleProcess)
    monkeypatch.setenv("PMI_SIZE", "1")  # mpiexec -n 1: one process, nothing to distribute
    assert isinstance(team_from_args(tr.build_parser().parse_args([])), SingleProcess)


@needs_mpi
def test_the_benchmark_runs_and_writes_json(tmp_path, capsys):
    """benchmarks/distributed.py end to end on a tiny batch (timings are never asserted)."""
    from benchmarks import distributed as bench

    out = tmp_path / "dist.json"
    assert bench.main(["--model", "seed_cnn", "--batch", "8", "--rounds", "1", "--steps", "1", "--warmup", "0",
                       "--json", str(out)]) == 0
    runs = json.loads(out.read_text())
    assert sorted(r["mode"] for r in runs) == ["ranks", "threads"]
    ranks = next(r for r in runs if r["mode"] == "ranks")
    assert ranks["ranks"] == 2 and ranks["allreduce_alone_ms"] > 0 and len(ranks["step_ms"]) == 1
    text = capsys.readouterr().out
    assert "| seed_cnn |" in text and "Allreduce alone" in text
