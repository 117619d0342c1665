"""What a Hessian-vector product costs against a gradient, ours and PyTorch's, on one model.

    python -m benchmarks.hvp --model seed_cnn --batch 128

For the model's mean cross-entropy over a batch of random images, times (alternating ours
and torch in each round, medians over rounds): one gradient (forward + backward), and one
Hessian-vector product with respect to every parameter (forward, backward with
``create_graph=True``, the inner product with v, and a second backward). The ratio
HVP / gradient is the figure to compare: PyTorch's is the yardstick. Both run with the same
thread count; the two HVPs are checked to agree before anything is timed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import tinygrad_cnn as tc
import tinygrad_cnn.functional as F
from tinygrad_cnn.allocator import reuse_freed_memory
from benchmarks.torch_twins import torch_model
from models import MODELS


def ours(name, x, y, v_seed):
    tc.manual_seed(0)
    model = MODELS[name]()
    params = list(model.parameters())
    rng = np.random.default_rng(v_seed)
    vs = [tc.Tensor(rng.standard_normal(p.shape).astype(p.dtype)) for p in params]

    def loss():
        return F.cross_entropy(model(tc.Tensor(x)), y)

    def gradient():
        return tc.grad(loss(), params)

    def hvp():
        gs = tc.grad(loss(), params, create_graph=True)
        inner = None
        for g, v in zip(gs, vs):
            term = (g * v).sum()
            inner = term if inner is None else inner + term
        return tc.grad(inner, params)

    return model, gradient, hvp


def theirs(name, model, v_seed):
    import torch

    twin = torch_model(name)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    params = list(twin.parameters())
    rng = np.random.default_rng(v_seed)
    vs = [torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32)) for p in params]

    def make(x, y):
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def gradient():
            return torch.autograd.grad(torch.nn.functional.cross_entropy(twin(tx), ty), params)

        def hvp():
            loss = torch.nn.functional.cross_entropy(twin(tx), ty)
            gs = torch.autograd.grad(loss, params, create_graph=True)
            return torch.autograd.grad(sum((g * v).sum() for g, v in zip(gs, vs)), params)

        return gradient, hvp

    return make


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="seed_cnn", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    reuse_freed_memory()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    model, our_grad, our_hvp = ours(args.model, x, y, 1)
    runs = {"ours": (our_grad, our_hvp)}
    try:
        import torch

        torch.set_num_threads(tc.threads.num_threads())
        runs["torch"] = theirs(args.model, model, 1)(x, y)
        ours_h = [h.data for h in our_hvp()]
        torch_h = [h.numpy() for h in runs["torch"][1]()]
        worst = max(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12)) for a, b in zip(ours_h, torch_h))
        print(f"HVPs agree with torch to {worst:.1e} (relative, worst parameter)")
    except ImportError:
        print("torch not installed: timing ours only")
    times = {k: {"grad": [], "hvp": []} for k in runs}
    for _ in range(args.rounds + 1):  # the first round warms up
        for k, (g, h) in runs.items():
            times[k]["grad"].append(timed(g))
            times[k]["hvp"].append(timed(h))
    print(f"{args.model}, batch {args.batch}, {args.rounds} rounds (medians):")
    for k, t in times.items():
        g, h = statistics.median(t["grad"][1:]), statistics.median(t["hvp"][1:])
        print(f"  {k:5s}  gradient {1e3 * g:7.1f} ms   HVP {1e3 * h:7.1f} ms   HVP/gradient {h / g:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
