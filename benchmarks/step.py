"""Time a full training step (forward, backward, optimizer update) of our model against the
identical PyTorch CPU network, in the same process, with the same thread count.

    python -m benchmarks.step --model seed_cnn --batch 128 1000
    python -m benchmarks.step --model fast_cnn --batch 128 --json runs/bench.json

Ours and torch run in alternating blocks, so machine noise hits both alike; each figure is
the median over the timed steps (min-max in brackets). Also printed: the GEMM-only lower
bound (the same matmul shapes timed alone in numpy), the per-primitive split from the
built-in profiler, an inference step under no_grad, and the memory a step needs.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import numpy as np

import tinygrad_cnn as tc
import tinygrad_cnn.functional as F
from tinygrad_cnn.allocator import reuse_freed_memory
from tinygrad_cnn.graph import nodes
from tinygrad_cnn.ops import Matmul
from tinygrad_cnn.kernels.gemm import product
from benchmarks.torch_twins import torch_model
from models import MODELS


def median_range(xs):
    return statistics.median(xs), min(xs), max(xs)


def training_micro_batch(name, batch):
    """The micro-batch size the training script (train/cifar10.py) uses for this model at this
    batch size: its per-model default, or the seed recipe's when the batch is the recipe's."""
    from train.cifar10 import DEFAULTS, SEED_RECIPE, resolve_micro_batch

    settings = SEED_RECIPE if name == "seed_cnn" and batch == SEED_RECIPE["batch_size"] else DEFAULTS[name]
    return resolve_micro_batch(settings.get("micro_batch", 0), batch, settings.get("micro_threads", 1))


def make_ours(name, batch, dtype, micro_batch=0, micro_threads=2, seed=0):
    from train.cifar10 import uses_batch_statistics

    tc.manual_seed(seed)
    model = MODELS[name]()
    model.astype(dtype)
    opt = tc.optim.Adam(model.parameters(), lr=1e-3)
    params = [p for p in model.parameters() if p.requires_grad]  # airbench freezes some
    sync_batch_norm = uses_batch_statistics(model)  # micro-batches as shards, as the training script runs them
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(dtype)
    y = rng.integers(0, 10, batch)

    def step():
        loss = F.cross_entropy(model(tc.Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    def micro_step():
        opt.zero_grad()
        loss = tc.parallel.accumulate_gradients(lambda xb, yb: F.cross_entropy(model(tc.Tensor(xb)), yb),
                                                (x, y), params, micro_batch, micro_threads,
                                                sync_batch_norm=sync_batch_norm)
        opt.step()
        return loss

    def infer():
        with tc.no_grad():
            return model(tc.Tensor(x))

    return model, opt, x, y, step, (micro_step if micro_batch else None), infer


def torch_twin(name, model, x, y, threads):
    """The same network in PyTorch with our weights copied in (names and shapes match)."""
    import torch

    torch.set_num_threads(threads)
    tm = torch_model(name)
    state = {k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}
    tm.load_state_dict(state, strict=True)
    tm = tm.to(torch.float32 if x.dtype == np.float32 else torch.float64)
    opt = torch.optim.Adam(tm.parameters(), lr=1e-3)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        loss = torch.nn.functional.cross_entropy(tm(tx), ty)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return step


def matmul_shapes(step):
    """The (a, b) shapes and layouts (strides) of every product one training step runs: the
    forward's and the VJPs' (Tensor code, so each gradient product is a matmul too)."""
    shapes = []
    orig = Matmul.forward

    def spy(self, a, b, transpose_a=False, transpose_b=False):
        ea = a.swapaxes(-1, -2) if transpose_a else a  # the operands as the product sees them
        eb = b.swapaxes(-1, -2) if transpose_b else b
        shapes.append(((ea.shape, ea.strides), (eb.shape, eb.strides), a.dtype))
        return orig(self, a, b, transpose_a=transpose_a, transpose_b=transpose_b)

    Matmul.forward = spy
    try:
        step()
    finally:
        Matmul.forward = orig
    return shapes


def ones_like_layout(shape, strides, dtype):
    """An array of ones with the given shape and memory layout (strides, e.g. padded rows)."""
    itemsize = np.dtype(dtype).itemsize
    if any(s < 0 for s in strides):
        return np.ones(shape, dtype)
    span = 1 + sum((n - 1) * s for n, s in zip(shape, strides)) // itemsize if all(shape) else 0
    return np.lib.stride_tricks.as_strided(np.ones(span, dtype), shape, strides)


def gemm_lower_bound(shapes, repeats=5):
    """Seconds for the step's GEMMs alone: every product the step ran (``matmul_shapes``), in
    the orientation the Matmul op computes it (``kernels.gemm.product``), on operands laid out
    as the step's were."""
    work = [(ones_like_layout(sa, stride_a, dtype), ones_like_layout(sb, stride_b, dtype))
            for (sa, stride_a), (sb, stride_b), dtype in shapes]

    def run():
        for a, b in work:
            product(a, b)

    run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def saved_bytes(loss):
    """Bytes of the arrays the graph keeps for backward (before backward frees them): every
    node's inputs, which its VJP reads, and what it saved beside them (masks, indices), each
    block of memory once (a view counts as the array it views)."""
    seen, total = set(), 0
    for op in nodes([loss]):
        for a in [p.data for p in op.parents] + list(op.saved or ()):
            while getattr(a, "base", None) is not None and hasattr(a.base, "nbytes"):
                a = a.base
            if hasattr(a, "nbytes") and id(a) not in seen:
                seen.add(id(a))
                total += a.nbytes
    return total


CATEGORIES = {"im2col": ("im2col", "forward"), "col2im": ("im2col", "backward"), "matmul": ("matmul", None),
              "max_pool2d": ("max_pool2d", None), "batch_norm": ("batch_norm", None)}


def split(prof):
    """Per-category seconds of one profile: im2col, col2im, matmul, max_pool2d, batch_norm, elementwise."""
    out = {k: 0.0 for k in CATEGORIES}
    out["elementwise/other ops"] = 0.0
    for name, _calls, f, b, _t in prof.rows():
        placed = False
        for cat, (op, phase) in CATEGORIES.items():
            if name == op:
                out[cat] += f if phase == "forward" else b if phase == "backward" else f + b
                placed = placed or phase is None
        if name == "im2col":
            placed = True
        if name == "col2im":
            out["col2im"] += f
            out["im2col"] += b
            placed = True
        if not placed:
            out["elementwise/other ops"] += f + b
    return out


def bench(name, batch, dtype, steps, threads, rounds, micro_batch, micro_threads):
    model, opt, x, y, step, micro_step, infer = make_ours(name, batch, dtype, micro_batch, micro_threads)
    try:
        t_step = torch_twin(name, model, x, y, threads)
    except ImportError:
        t_step = None
    for _ in range(2):  # warm-up: allocator, BLAS threads, caches
        step()
        infer()
        if micro_step:
            micro_step()
        if t_step:
            t_step()
    ours, micro, theirs, inference = [], [], [], []
    per_block = max(steps // rounds, 1)
    for _ in range(rounds):
        for _ in range(per_block):
            t = time.perf_counter()
            step()
            ours.append(time.perf_counter() - t)
        for _ in range(per_block if micro_step else 0):
            t = time.perf_counter()
            micro_step()
            micro.append(time.perf_counter() - t)
        for _ in range(per_block):
            t = time.perf_counter()
            infer()
            inference.append(time.perf_counter() - t)
        if t_step:
            for _ in range(per_block):
                t = time.perf_counter()
                t_step()
                theirs.append(time.perf_counter() - t)
    # one profiled step, split into primitive categories, the optimizer and the rest
    with tc.profile() as prof:
        loss = F.cross_entropy(model(tc.Tensor(x)), y)
        graph = saved_bytes(loss)
        opt.zero_grad()
        loss.backward()
        t = time.perf_counter()
        opt.step()
        t_opt = time.perf_counter() - t
    parts = split(prof)
    parts["optimizer"] = t_opt
    parts["graph bookkeeping"] = max(prof.wall - prof.ops_time() - t_opt, 0.0)
    gemm = gemm_lower_bound(matmul_shapes(step))
    o = median_range(ours)
    result = {"model": name, "batch": batch, "dtype": str(np.dtype(dtype)), "threads": threads,
              "ours_ms": [1e3 * v for v in o], "inference_ms": [1e3 * v for v in median_range(inference)],
              "gemm_bound_ms": 1e3 * gemm, "gemm_share": gemm / o[0], "split_ms": {k: 1e3 * v for k, v in parts.items()},
              "profiled_step_ms": 1e3 * prof.wall, "graph_saved_mb": graph / 2**20,
              "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "steps": len(ours)}
    if micro:
        result["micro"] = {"micro_batch": micro_batch, "threads": micro_threads,
                           "as_training": micro_batch == training_micro_batch(name, batch),
                           "ours_ms": [1e3 * v for v in median_range(micro)]}
    if theirs:
        t = median_range(theirs)
        result["torch_ms"] = [1e3 * v for v in t]
        result["ratio"] = o[0] / t[0]
        if micro:
            result["micro"]["ratio"] = statistics.median(micro) / t[0]
    return result


def report(r):
    lo = lambda v: f"{v[0]:.1f} ms [{v[1]:.1f}-{v[2]:.1f}]"  # noqa: E731
    lines = [f"\n{r['model']}  batch {r['batch']}  {r['dtype']}  {r['threads']} threads  ({r['steps']} timed steps)",
             f"  ours   training step   {lo(r['ours_ms'])}  (one pass over the batch)"]
    m = r.get("micro")
    if m:
        lines.append(f"  ours   training step   {lo(m['ours_ms'])}  (micro-batches of {m['micro_batch']} on "
                     f"{m['threads']} threads{', as the training script' if m['as_training'] else ''})")
    if "torch_ms" in r:
        lines.append(f"  torch  training step   {lo(r['torch_ms'])}")
        lines.append(f"  ratio ours/torch      {r['ratio']:.2f}" +
                     (f"  (micro-batched: {m['ratio']:.2f})" if m else ""))
    lines.append(f"  inference (no_grad)   {lo(r['inference_ms'])}  = {r['ours_ms'][0] / r['inference_ms'][0]:.1f}x "
                 f"faster than a training step")
    lines.append(f"  GEMM-only bound       {r['gemm_bound_ms']:.1f} ms  (GEMMs are {100 * r['gemm_share']:.0f}% of our step)")
    lines.append(f"  memory                saved for backward {r['graph_saved_mb']:.1f} MiB, peak RSS {r['max_rss_mb']:.0f} MiB")
    total = r["profiled_step_ms"]
    lines.append(f"  split of one profiled step ({total:.1f} ms):")
    for k, v in sorted(r["split_ms"].items(), key=lambda kv: -kv[1]):
        if k == "batch_norm" and not v:
            continue  # a model without BatchNorm
        lines.append(f"    {k:<22}{v:>8.1f} ms {100 * v / total:>5.1f}%")
    return "\n".join(lines)


def _at_least(low):
    """An argparse type: an integer >= ``low`` (else argparse's one-line error, exit code 2)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}; got {text!r}")
        return value
    return parse


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="seed_cnn")
    p.add_argument("--batch", type=_at_least(1), nargs="+", default=[128, 1000])
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--steps", type=_at_least(1), default=12, help="timed steps per framework (>= 10)")
    p.add_argument("--rounds", type=_at_least(1), default=4, help="alternating blocks the steps are split into")
    p.add_argument("--threads", type=_at_least(1), default=2)
    p.add_argument("--micro-batch", type=_at_least(0), default=None,
                   help="also time steps summed over micro-batches of this size (0: no; default: what "
                        "the training script uses for this model and batch)")
    p.add_argument("--micro-threads", type=_at_least(1), default=2, help="micro-batches run at once")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--no-reuse-memory", action="store_true",
                   help="leave glibc's malloc settings alone (see tinygrad_cnn.allocator.reuse_freed_memory)")
    args = p.parse_args(argv)
    if not args.no_reuse_memory:
        reuse_freed_memory()  # applies to torch too: both run in this process
    results = []
    for b in args.batch:
        micro = training_micro_batch(args.model, b) if args.micro_batch is None else args.micro_batch
        r = bench(args.model, b, np.dtype(args.dtype), args.steps, args.threads, args.rounds, micro,
                  args.micro_threads)
        print(report(r), flush=True)
        results.append(r)
    if args.json:
        from tinygrad_cnn.io import atomic_write

        atomic_write(args.json, lambda f: f.write(json.dumps(results, indent=2).encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
