"""Time one layer's forward + backward, ours against PyTorch's, on one input shape.

    python -m benchmarks.layers                          # every case in CASES
    python -m benchmarks.layers depthwise3x3 dilated3x3  # some of them
    python -m benchmarks.layers --batch 8 --steps 3      # a quick look

Each case builds the same layer in both frameworks (``nn`` and ``torch.nn``, same class name
and arguments, our weights copied into PyTorch's), then times ``out = layer(x)`` and the
backward of ``sum(out * g)`` (the input's and the parameters' gradients). The two run in
alternating blocks, so machine noise hits both alike; each figure is the median over the
timed steps. Without torch installed only our times are printed.
"""
from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time

import numpy as np

import tinygrad_cnn as tc
import tinygrad_cnn.nn as nn
from tinygrad_cnn.allocator import reuse_freed_memory

# name -> the layer (an ``nn`` class name, the same in torch.nn), its arguments and the input
# shape (N, C, H, W). A plain dict, one line a case, so cases from other branches merge.
CASES = {
    "conv3x3": {"layer": "Conv2d", "args": (64, 64, 3), "kwargs": {"padding": 1}, "input": (128, 64, 16, 16)},
    "grouped3x3": {"layer": "Conv2d", "args": (64, 64, 3), "kwargs": {"padding": 1, "groups": 8},
                   "input": (128, 64, 16, 16)},
    "depthwise3x3": {"layer": "Conv2d", "args": (64, 64, 3), "kwargs": {"padding": 1, "groups": 64},
                     "input": (128, 64, 16, 16)},
    "dilated3x3": {"layer": "Conv2d", "args": (64, 64, 3), "kwargs": {"padding": 2, "dilation": 2},
                   "input": (128, 64, 16, 16)},
    "conv_transpose4x4s2": {"layer": "ConvTranspose2d", "args": (64, 32, 4), "kwargs": {"stride": 2, "padding": 1},
                            "input": (128, 64, 8, 8)},
    "max_pool2d_2x2": {"layer": "MaxPool2d", "args": (2,), "kwargs": {}, "input": (128, 32, 32, 32)},
    "max_pool2d_3x3_s2_p1_ceil": {"layer": "MaxPool2d", "args": (3, 2, 1), "kwargs": {"ceil_mode": True},
                                  "input": (128, 64, 16, 16)},
    "max_pool2d_3x3_dilated": {"layer": "MaxPool2d", "args": (3, 1, 1), "kwargs": {"dilation": 2},
                               "input": (128, 32, 16, 16)},
    "avg_pool2d_2x2": {"layer": "AvgPool2d", "args": (2,), "kwargs": {}, "input": (128, 32, 32, 32)},
    "avg_pool2d_3x3_s2_p1": {"layer": "AvgPool2d", "args": (3, 2, 1), "kwargs": {}, "input": (128, 64, 16, 16)},
    "avg_pool2d_3x3_s2_p1_ceil_exclude": {"layer": "AvgPool2d", "args": (3, 2, 1),
                                          "kwargs": {"ceil_mode": True, "count_include_pad": False},
                                          "input": (128, 64, 16, 16)},
    "adaptive_avg_pool2d_global": {"layer": "AdaptiveAvgPool2d", "args": (1,), "kwargs": {},
                                   "input": (128, 256, 8, 8)},
    "adaptive_avg_pool2d_4x4": {"layer": "AdaptiveAvgPool2d", "args": (4,), "kwargs": {}, "input": (128, 64, 16, 16)},
    "adaptive_avg_pool2d_7x7_uneven": {"layer": "AdaptiveAvgPool2d", "args": (7,), "kwargs": {},
                                       "input": (32, 64, 15, 15)},
}


def make_ours(case, batch, dtype, seed=0):
    """Our layer, an input of the case's shape (batch ``batch`` if given) and an output gradient."""
    cls = getattr(nn, case["layer"])
    seeded = {"rng": np.random.default_rng(seed)} if "rng" in inspect.signature(cls).parameters else {}
    layer = cls(*case["args"], **case["kwargs"], **seeded)  # pooling layers have no weights to draw
    layer.astype(dtype)
    shape = (batch or case["input"][0],) + tuple(case["input"][1:])
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal(shape).astype(dtype)
    with tc.no_grad():
        out_shape = layer(tc.Tensor(x)).shape
    g = rng.standard_normal(out_shape).astype(dtype)
    return layer, x, g


def ours_step(layer, x, g):
    params = [p for p in layer.parameters() if p.requires_grad]

    def step():
        for p in params:
            p.grad = None
        xt = tc.Tensor(x, requires_grad=True)
        layer(xt).backward(tc.Tensor(g))
    return step


def torch_step(case, layer, x, g, threads):
    """The same layer in PyTorch with our weights, or None where torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    theirs = getattr(torch.nn, case["layer"])(*case["args"], **case["kwargs"])
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in layer.state_dict().items()}, strict=True)
    theirs = theirs.to(torch.float32 if x.dtype == np.float32 else torch.float64)
    tx, tg = torch.from_numpy(x), torch.from_numpy(g)

    def step():
        theirs.zero_grad(set_to_none=True)
        xt = tx.clone().requires_grad_(True)
        theirs(xt).backward(tg)
    return step


def _times(step, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)
    return out


def bench(name, batch, dtype, steps, rounds, threads):
    case = CASES[name]
    layer, x, g = make_ours(case, batch, dtype)
    ours, theirs = ours_step(layer, x, g), torch_step(case, layer, x, g, threads)
    for _ in range(2):  # warm-up: allocator, BLAS threads, caches
        ours()
        if theirs:
            theirs()
    t_ours, t_torch = [], []
    per_round = max(1, -(-steps // rounds))
    for _ in range(rounds):
        t_ours += _times(ours, per_round)
        if theirs:
            t_torch += _times(theirs, per_round)
    result = {"case": name, "layer": case["layer"], "args": list(case["args"]), "kwargs": case["kwargs"],
              "input": list(x.shape), "dtype": str(x.dtype), "threads": threads, "steps": len(t_ours),
              "ours_ms": 1e3 * statistics.median(t_ours)}
    if theirs:
        result["torch_ms"] = 1e3 * statistics.median(t_torch)
        result["ratio"] = result["ours_ms"] / result["torch_ms"]
    return result


_WIDTH = max(map(len, CASES))  # the case column fits every name


def report(results):
    lines = [f"{'case':<{_WIDTH}} {'input':<18} {'ours ms':>9} {'torch ms':>9} {'ratio':>6}"]
    for r in results:
        torch_ms = f"{r['torch_ms']:9.2f}" if "torch_ms" in r else f"{'-':>9}"
        ratio = f"{r['ratio']:6.2f}" if "ratio" in r else f"{'-':>6}"
        lines.append(f"{r['case']:<{_WIDTH}} {'x'.join(map(str, r['input'])):<18} {r['ours_ms']:9.2f} {torch_ms} {ratio}")
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
    p = argparse.ArgumentParser(prog="python -m benchmarks.layers", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", metavar="case", help=f"cases to run (default: all): {', '.join(CASES)}")
    p.add_argument("--batch", type=_at_least(1), default=None, help="batch size (default: each case's own)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--steps", type=_at_least(1), default=12, help="timed steps per framework")
    p.add_argument("--rounds", type=_at_least(1), default=3, help="alternating blocks the steps are split into")
    p.add_argument("--threads", type=_at_least(1), default=2)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in CASES]
    if unknown:
        p.error(f"unknown case {', '.join(map(repr, unknown))}; choose from {', '.join(CASES)}")
    reuse_freed_memory()  # applies to torch too: both run in this process
    results = []
    for name in args.names or list(CASES):
        results.append(bench(name, args.batch, np.dtype(args.dtype), args.steps, args.rounds, args.threads))
        print(report(results[-1:]).split("\n", 1)[1] if len(results) > 1 else report(results), flush=True)
    if args.json:
        from tinygrad_cnn.io import atomic_write

        atomic_write(args.json, lambda f: f.write(json.dumps(results, indent=2).encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
