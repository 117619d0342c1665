"""Training-step time on N MPI ranks with one thread each against one process running the
training script's micro-batch threads, side by side.

    python -m benchmarks.distributed                       # SeedCNN and FastCNN, batch 128, 2 ranks
    python -m benchmarks.distributed --model fast_cnn --batch 128 --ranks 2 --rounds 5 --json runs/dist.json
    python -m benchmarks.distributed --tcp                  # the ranks talk over loopback TCP

Each round launches, for each model, one process as ``python -m train.cifar10`` runs it (its
per-model micro-batches on ``--micro-threads`` threads, BLAS left to its default) and an
``mpiexec -n RANKS`` job whose ranks each compute their slice of every batch on one thread
(OpenBLAS at 1 thread), which go first alternating from round to round, so that machine
noise hits both alike. A step is what ``train.cifar10.run`` does for a batch: draw it from
the loader (crop, flip, normalise), zero the gradients, forward and backward (BatchNorm
synchronised across the shards or ranks), average the gradients over ranks, and the
optimizer's update. Data are random uint8 images, so no dataset is needed. Printed: the
median step over all rounds [the range of the rounds' medians], and for the ranks where
their time goes (data, the Allreduce, waiting at BatchNorm's gathers) with an Allreduce of
the same size timed alone, for the cost model in docs/scaling.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------- one timed run


def _step_runner(model_name, batch, team, micro_threads=0, seed=0):
    """A function running one training step as ``train.cifar10.run``'s loop does, and the
    pieces it timed, for ``team`` (train.distributed)."""
    import tinygrad_cnn as tc
    import train.cifar10 as tr
    from tinygrad_cnn import data

    flags = ["--model", model_name, "--batch-size", str(batch)]
    flags += ["--micro-threads", str(micro_threads)] if micro_threads else []
    cfg = tr.config_from_args(tr.build_parser().parse_args(flags))
    tc.manual_seed(seed)
    model = tr.build_model(cfg, (3, 32, 32))
    team.bcast_parameters(model)
    sync_batch_norm = tr.uses_batch_statistics(model)
    micro_batch, micro_threads = team.micro_batching(cfg, sync_batch_norm)
    optimizer = tr.build_optimizer(cfg, model)
    params = list(model.parameters())
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch * 64, 3, 32, 32), dtype=np.uint8)
    dataset = data.ArrayDataset(images, rng.integers(0, 10, len(images)))
    transform = data.Compose([data.RandomCrop(32, padding=4), data.RandomHorizontalFlip(),
                              data.Normalize(data.CIFAR10_MEAN, data.CIFAR10_STD)])
    loader = team.shard(data.DataLoader(dataset, batch, shuffle=True, seed=seed, transform=transform))
    batches = iter(())
    parts = {"data": 0.0, "forward_backward": 0.0, "allreduce": 0.0, "optimizer": 0.0}

    def step():
        nonlocal batches
        t0 = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        t1 = time.perf_counter()
        optimizer.zero_grad()
        scale = team.loss_scale(loader)
        with team.sync_batch_norm():
            if micro_batch:
                tc.parallel.accumulate_gradients(
                    lambda xb, yb: tr._loss_and_logits(model, xb, yb, cfg.label_smoothing, scale), (x, y), params,
                    micro_batch, micro_threads, sync_batch_norm=sync_batch_norm)
            else:
                loss, _ = tr._loss_and_logits(model, x, y, cfg.label_smoothing, scale)
                loss.backward()
                loss.item()
        t2 = time.perf_counter()
        team.reduce_gradients(params)
        t3 = time.perf_counter()
        optimizer.step()
        parts["data"] += t1 - t0
        parts["forward_backward"] += t2 - t1
        parts["allreduce"] += t3 - t2
        parts["optimizer"] += time.perf_counter() - t3

    return step, parts, cfg, model


def worker(args):
    """Time ``args.steps`` steps after ``args.warmup``; rank 0 prints one JSON line."""
    from tinygrad_cnn.allocator import reuse_freed_memory
    from train.distributed import MPITeam, SingleProcess

    reuse_freed_memory()  # as train.cifar10.main does
    if args.worker == "ranks":
        import tinygrad_cnn.distributed as dist

        comm = dist.init()
        team = MPITeam(comm)
        gathers = {"time": 0.0, "count": 0}
        gather = comm._bn_group.gather

        def timed_gather(*a):  # BatchNorm's exchanges, waits for the slower rank included
            t = time.perf_counter()
            try:
                return gather(*a)
            finally:
                gathers["time"] += time.perf_counter() - t
                gathers["count"] += 1

        comm._bn_group.gather = timed_gather
    else:
        team = SingleProcess()
    with team.guard():
        step, parts, cfg, model = _step_runner(args.model, args.batch, team, args.micro_threads)
        for _ in range(args.warmup):
            step()
        for k in parts:
            parts[k] = 0.0
        if args.worker == "ranks":
            gathers.update(time=0.0, count=0)
            comm.barrier()
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        result = {"mode": args.worker, "model": args.model, "batch": args.batch, "step_ms": [1e3 * t for t in times],
                  "parameters": model.num_parameters(), **{f"{k}_ms": 1e3 * v / args.steps for k, v in parts.items()}}
        if args.worker == "threads":
            result.update(micro_batch=cfg.micro_batch, micro_threads=cfg.micro_threads)
        else:
            result.update(ranks=comm.size, gathers_per_step=gathers["count"] / args.steps,
                          gather_ms=1e3 * gathers["time"] / args.steps, **_allreduce_alone(comm, model))
        if team.is_root:
            print("RESULT " + json.dumps(result), flush=True)


def _allreduce_alone(comm, model, repeats=30):
    """Median time of an Allreduce of the gradients' size, and of one float (the latency)."""
    from mpi4py import MPI

    out = {}
    for name, n in (("allreduce_alone_ms", model.num_parameters()), ("allreduce_1_float_ms", 1)):
        buf = np.ones(n, np.float32)
        times = []
        for _ in range(repeats):
            comm.barrier()
            t = time.perf_counter()
            comm.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            times.append(time.perf_counter() - t)
        out[name] = 1e3 * statistics.median(times)
    return out


# ---------------------------------------------------------------------------- the comparison


def _launch(mode, model, args):
    cmd = [sys.executable, "-m", "benchmarks.distributed", "--worker", mode, "--model", model,
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if mode == "ranks":
        cmd = [args.mpiexec, "-n", str(args.ranks)] + cmd
        env.update(OPENBLAS_NUM_THREADS="1", TINYGRAD_CNN_THREADS="1")
        if args.tcp:  # MPICH's network module over loopback TCP instead of shared memory
            env.update(MPIR_CVAR_NOLOCAL="1", UCX_TLS="tcp,self")
    else:  # as `python -m train.cifar10` runs: BLAS and the framework's threads at their defaults
        for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "TINYGRAD_CNN_THREADS"):
            env.pop(k, None)
        cmd += ["--micro-threads", str(args.micro_threads)] if args.micro_threads else []
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"error: {' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[0][len("RESULT "):])


def compare(args):
    results = {(m, mode): [] for m in args.model for mode in ("threads", "ranks")}
    for r in range(args.rounds):
        for m in args.model:
            order = ("threads", "ranks") if r % 2 == 0 else ("ranks", "threads")
            for mode in order:
                results[m, mode].append(_launch(mode, m, args))
            print(f"round {r + 1}/{args.rounds} {m}: " + ", ".join(
                f"{mode} {statistics.median(results[m, mode][-1]['step_ms']):.1f} ms" for mode in order), flush=True)
    return results


def _summary(runs):
    steps = [t for run in runs for t in run["step_ms"]]
    medians = [statistics.median(run["step_ms"]) for run in runs]
    return statistics.median(steps), min(medians), max(medians)


def report(results, args):
    lines = ["", f"Training step, batch {args.batch}: 1 process x micro-batch threads vs {args.ranks} MPI ranks "
                 f"x 1 thread{' over loopback TCP' if args.tcp else ''} ({args.rounds} rounds x {args.steps} steps; "
                 f"median [range of round medians])", "",
             f"| model | 1 process, threads (micro-batch) | {args.ranks} ranks x 1 thread | ranks / threads |",
             "| --- | --- | --- | --- |"]
    for m in args.model:
        th, rk = results[m, "threads"], results[m, "ranks"]
        (t_med, t_lo, t_hi), (r_med, r_lo, r_hi) = _summary(th), _summary(rk)
        lines.append(f"| {m} | {t_med:.1f} ms [{t_lo:.1f}-{t_hi:.1f}] ({th[0]['micro_batch']} x "
                     f"{th[0]['micro_threads']} threads) | {r_med:.1f} ms [{r_lo:.1f}-{r_hi:.1f}] "
                     f"| {r_med / t_med:.2f} |")
    lines += ["", f"Where rank 0's step goes (ms, medians of the runs' means; the Allreduce and BatchNorm's gathers "
                  f"include waiting for the slower rank), and the same Allreduce timed alone:", "",
              "| model | data | forward + backward | of which BatchNorm gathers | Allreduce | optimizer "
              "| Allreduce alone (bytes) | 1-float Allreduce |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in args.model:
        rk = results[m, "ranks"]
        med = lambda key: statistics.median(run[key] for run in rk)  # noqa: E731
        lines.append(f"| {m} | {med('data_ms'):.1f} | {med('forward_backward_ms'):.1f} | {med('gather_ms'):.2f} "
                     f"({med('gathers_per_step'):.0f} a step) | {med('allreduce_ms'):.2f} | {med('optimizer_ms'):.1f} "
                     f"| {med('allreduce_alone_ms'):.3f} ({4 * rk[0]['parameters']:,}) "
                     f"| {med('allreduce_1_float_ms'):.4f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=["seed_cnn", "fast_cnn"], choices=["seed_cnn", "fast_cnn", "fc"])
    p.add_argument("--batch", type=int, default=128, help="the global batch")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--micro-threads", type=int, default=0, help="threads of the one process (default: the "
                   "training script's per-model setting)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tcp", action="store_true", help="ranks talk over loopback TCP (MPICH's network path, as "
                   "between machines) instead of shared memory")
    p.add_argument("--json", help="also write every run's figures here")
    p.add_argument("--mpiexec", default=None, help="the launcher (default: mpiexec beside this Python, or on PATH)")
    p.add_argument("--worker", choices=["threads", "ranks"], help=argparse.SUPPRESS)  # one timed run
    args = p.parse_args(argv)
    if args.worker:
        args.model = args.model[0]
        worker(args)
        return 0
    import shutil

    beside = Path(sys.executable).parent / "mpiexec"
    args.mpiexec = args.mpiexec or (str(beside) if beside.exists() else shutil.which("mpiexec"))
    if not args.mpiexec:
        raise SystemExit('error: no mpiexec found: pip install -e ".[mpi]"')
    results = compare(args)
    print(report(results, args), flush=True)
    if args.json:
        from tinygrad_cnn.io import atomic_write

        runs = [dict(run) for rs in results.values() for run in rs]
        atomic_write(args.json, lambda f: f.write(json.dumps(runs, indent=2).encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
