"""Time one layer's forward and backward, ours against PyTorch's CPU op, in the same process.

    python -m benchmarks.layers                      # every case
    python -m benchmarks.layers avg_pool2d_2x2 adaptive_avg_pool2d_global --rounds 7

``CASES`` maps a name to a layer shape: the input's shape and the call on each side. Each
timed iteration is a forward on a fresh leaf and a backward with a fixed upstream gradient.
Ours and torch run in alternating rounds, so machine noise hits both alike; figures are
medians over the rounds (min-max in brackets), each round the mean of ``--repeat`` runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

import tinygrad_cnn as tc
import tinygrad_cnn.functional as F


def _torch_f():
    import torch.nn.functional as TF

    return TF


# name -> (input shape (N, C, H, W), our call, torch's call (on torch.nn.functional))
CASES = {
    "max_pool2d_2x2": ((128, 32, 32, 32), lambda x: F.max_pool2d(x, 2), lambda TF, x: TF.max_pool2d(x, 2)),
    "max_pool2d_3x3_s2_p1_ceil": ((128, 64, 16, 16), lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                                  lambda TF, x: TF.max_pool2d(x, 3, 2, 1, ceil_mode=True)),
    "max_pool2d_3x3_dilated": ((128, 32, 16, 16), lambda x: F.max_pool2d(x, 3, 1, 1, dilation=2),
                               lambda TF, x: TF.max_pool2d(x, 3, 1, 1, dilation=2)),
    "avg_pool2d_2x2": ((128, 32, 32, 32), lambda x: F.avg_pool2d(x, 2), lambda TF, x: TF.avg_pool2d(x, 2)),
    "avg_pool2d_3x3_s2_p1": ((128, 64, 16, 16), lambda x: F.avg_pool2d(x, 3, 2, 1),
                             lambda TF, x: TF.avg_pool2d(x, 3, 2, 1)),
    "avg_pool2d_3x3_s2_p1_ceil_exclude": ((128, 64, 16, 16),
                                          lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
                                          lambda TF, x: TF.avg_pool2d(x, 3, 2, 1, ceil_mode=True,
                                                                      count_include_pad=False)),
    "adaptive_avg_pool2d_global": ((128, 256, 8, 8), lambda x: F.adaptive_avg_pool2d(x, 1),
                                   lambda TF, x: TF.adaptive_avg_pool2d(x, 1)),
    "adaptive_avg_pool2d_4x4": ((128, 64, 16, 16), lambda x: F.adaptive_avg_pool2d(x, 4),
                                lambda TF, x: TF.adaptive_avg_pool2d(x, 4)),
    "adaptive_avg_pool2d_7x7_uneven": ((32, 64, 15, 15), lambda x: F.adaptive_avg_pool2d(x, 7),
                                       lambda TF, x: TF.adaptive_avg_pool2d(x, 7)),
}


def median_range(xs):
    return statistics.median(xs), min(xs), max(xs)


def bench(name, batch=None, dtype=np.float32, rounds=5, repeat=3, threads=2):
    """{"name", "shape", "ours_ms": [...], "torch_ms": [...] (absent without torch)} for one case."""
    shape, ours_fn, torch_fn = CASES[name]
    shape = ((batch,) if batch else shape[:1]) + tuple(shape[1:])
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    with tc.no_grad():
        g = rng.standard_normal(ours_fn(tc.Tensor(x)).shape).astype(dtype)

    def ours():
        out = ours_fn(tc.Tensor(x, requires_grad=True))
        out.backward(g)

    try:
        import torch

        torch.set_num_threads(threads)
        TF, tx, tg = _torch_f(), torch.from_numpy(x), torch.from_numpy(g)

        def theirs():
            out = torch_fn(TF, tx.detach().requires_grad_())
            out.backward(tg)
    except ImportError:
        theirs = None

    for _ in range(2):  # warm-up: allocator, threads, caches
        ours()
        if theirs:
            theirs()
    times = {"ours": [], "torch": []}
    for _ in range(rounds):
        for side, fn in (("ours", ours), ("torch", theirs)):
            if fn is None:
                continue
            t = time.perf_counter()
            for _ in range(repeat):
                fn()
            times[side].append((time.perf_counter() - t) / repeat)
    result = {"name": name, "shape": list(shape), "dtype": str(np.dtype(dtype)), "threads": threads,
              "ours_ms": [1e3 * v for v in times["ours"]]}
    if theirs:
        result["torch_ms"] = [1e3 * v for v in times["torch"]]
        result["ratio"] = statistics.median(times["ours"]) / statistics.median(times["torch"])
    return result


def report(r):
    def ms(xs):
        m, lo, hi = median_range(xs)
        return f"{m:8.2f} ms [{lo:.2f}-{hi:.2f}]"

    line = f"{r['name']:<36} {'x'.join(map(str, r['shape'])):<16} ours {ms(r['ours_ms'])}"
    if "torch_ms" in r:
        line += f"  torch {ms(r['torch_ms'])}  ours/torch {r['ratio']:.2f}"
    return line


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
    p = argparse.ArgumentParser(prog="python -m benchmarks.layers", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", metavar="name", help=f"cases to run (default: all): {', '.join(CASES)}")
    p.add_argument("--batch", type=_at_least(1), default=None, help="override each case's batch size")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--rounds", type=_at_least(1), default=5, help="alternating rounds (the median is reported)")
    p.add_argument("--repeat", type=_at_least(1), default=3, help="forward+backward runs per round")
    p.add_argument("--threads", type=_at_least(1), default=2, help="torch's intra-op threads")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in CASES]
    if unknown:
        p.error(f"unknown case {unknown[0]!r}; choose from: {', '.join(CASES)}")
    results = []
    for name in args.names or list(CASES):
        r = bench(name, args.batch, np.dtype(args.dtype), args.rounds, args.repeat, args.threads)
        print(report(r), flush=True)
        results.append(r)
    if args.json:
        from tinygrad_cnn.io import atomic_write

        atomic_write(args.json, lambda f: f.write(json.dumps(results, indent=2).encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
