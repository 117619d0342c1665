"""How fast a 3x3 convolution can go here: the pieces of ours, against BLAS's peak, PyTorch's
convolution and a Winograd F(2x2, 3x3) prototype, on the airbench network's 3x3 layers.

    python -m benchmarks.conv_limits --model airbench93 --batch 512

One thread each (a training shard's share of the work), the process's malloc tuned as in
training. For every 3x3 layer shape of the network:

* **ours, by piece**: ``im2col``, the forward GEMM ``W @ cols``, the weight-gradient GEMM
  ``g @ cols.T``, the input-gradient GEMM ``W.T @ g`` and ``col2im``, as ``kernels.conv`` and
  ``kernels.gemm`` run them on channel-major activations (the layout our layers hand on); each
  GEMM in GFLOP/s;
* **PyTorch** (when installed): ``conv2d`` forward + backward, in GFLOP/s of the same three
  products;
* **Winograd F(2x2, 3x3)** forward (Lavin and Gray, 2016): 2.25x fewer multiplications as 16
  GEMMs of (C_out x C_in) @ (C_in x tiles) between an input transform (4x the input's size) and
  an output transform (4x the output's): its three parts in ms, and its error against ours.

And the yardstick: sgemm 1024^3 on one thread. Each figure is the best of ``--reps`` runs. The
Winograd code here is a measuring prototype, not a kernel of the framework: it answers whether
such a kernel, in numpy, would beat im2col + GEMM (docs/airbench.md, "Where the time goes now").
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from tinygrad_cnn.allocator import reuse_freed_memory
from tinygrad_cnn.blas import blas_threads
from tinygrad_cnn.kernels import conv as conv_kernels
from tinygrad_cnn.kernels.gemm import product
from tinygrad_cnn.threads import run_serially

# Winograd F(2x2, 3x3): out_tile = A^T [(G w G^T) * (B^T d B)] A for a 4x4 input tile d
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def _best(fn, reps):
    best, result = float("inf"), None
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def winograd_input(x, tiles):
    """(C, N, H, W) channel-major input, padding 1 -> V (16, C, N*th*tw): B^T d B for every 4x4
    tile d (stride 2), rows first, then columns."""
    C, N, H, W = x.shape
    th, tw = tiles
    padded = np.zeros((C, N, 2 * th + 2, 2 * tw + 2), x.dtype)
    padded[:, :, 1:1 + H, 1:1 + W] = x
    rows = [padded[:, :, a:a + 2 * th:2] for a in range(4)]
    t = [rows[0] - rows[2], rows[1] + rows[2], rows[2] - rows[1], rows[1] - rows[3]]
    v = np.empty((4, 4, C, N, th, tw), x.dtype)
    for a in range(4):
        c = [t[a][..., b:b + 2 * tw:2] for b in range(4)]
        np.subtract(c[0], c[2], out=v[a, 0])
        np.add(c[1], c[2], out=v[a, 1])
        np.subtract(c[2], c[1], out=v[a, 2])
        np.subtract(c[1], c[3], out=v[a, 3])
    return v.reshape(16, C, N * th * tw)


def winograd_weight(w):
    """(C_out, C_in, 3, 3) -> U (16, C_out, C_in): G w G^T, in float64, rounded once."""
    u = np.einsum("ai,bj,ocij->aboc", _G, _G, w.astype(np.float64))
    return u.astype(w.dtype).reshape(16, w.shape[0], w.shape[1])


def winograd_output(m, c_out, n, tiles, out_hw):
    """M (16, C_out, N*th*tw) -> (C_out, N, Ho, Wo): A^T M A per tile, rows first."""
    th, tw = tiles
    m = m.reshape(4, 4, c_out, n, th, tw)
    s = (m[0] + m[1] + m[2], m[1] - m[2] - m[3])
    out = np.empty((c_out, n, 2 * th, 2 * tw), m.dtype)
    for r in range(2):
        np.add(s[r][0], s[r][1], out=out[:, :, r::2, 0::2])
        out[:, :, r::2, 0::2] += s[r][2]
        np.subtract(s[r][1], s[r][2], out=out[:, :, r::2, 1::2])
        out[:, :, r::2, 1::2] -= s[r][3]
    return out[:, :, :out_hw[0], :out_hw[1]]


def winograd_conv3x3(x, w, reps):
    """Time the three parts of a Winograd forward ('same' 3x3, stride 1); return (ms each, output)."""
    C, N, H, W = x.shape
    tiles = (-(-H // 2), -(-W // 2))
    t_in, v = _best(lambda: winograd_input(x, tiles), reps)
    u = winograd_weight(w)

    def gemms():
        m = np.empty((16, w.shape[0], v.shape[2]), x.dtype)
        for k in range(16):
            np.matmul(u[k], v[k], out=m[k])
        return m

    t_mm, m = _best(gemms, reps)
    t_out, out = _best(lambda: winograd_output(m, w.shape[0], N, tiles, (H, W)), reps)
    return (1e3 * t_in, 1e3 * t_mm, 1e3 * t_out), out


def conv_shapes(model):
    """(C_in, C_out, size) of every 3x3 layer of the network (repeated shapes once)."""
    from train.airbench import RECIPES

    w1, w2, w3 = RECIPES[model].widths
    shapes = [(24, w1, 31), (w1, w1, 15), (w1, w2, 15), (w2, w2, 7), (w2, w3, 7), (w3, w3, 3)]
    return list(dict.fromkeys(shapes))


def torch_conv(c_in, c_out, size, batch, reps, rng):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    x = torch.from_numpy(rng.standard_normal((batch, c_in, size, size)).astype(np.float32)).requires_grad_()
    w = torch.from_numpy(rng.standard_normal((c_out, c_in, 3, 3)).astype(np.float32)).requires_grad_()

    def step():
        x.grad = w.grad = None
        y = torch.nn.functional.conv2d(x, w, padding=1)
        y.backward(torch.ones_like(y))

    step()
    return _best(step, reps)[0]


def main(argv=None):
    from train.airbench import RECIPES

    p = argparse.ArgumentParser(prog="python -m benchmarks.conv_limits", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(RECIPES), default="airbench93")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    reuse_freed_memory()
    rng = np.random.default_rng(0)
    with run_serially(), blas_threads(1):
        a = rng.standard_normal((1024, 1024)).astype(np.float32)
        out = np.empty_like(a)
        t, _ = _best(lambda: np.matmul(a, a, out=out), args.reps + 2)
        print(f"sgemm 1024^3, one thread: {2 * 1024 ** 3 / t / 1e9:.0f} GFLOP/s")
        print(f"{args.model}, batch {args.batch}, one thread; ms, and GFLOP/s of each product in ()")
        for c_in, c_out, size in conv_shapes(args.model):
            n = args.batch
            x = rng.standard_normal((c_in, n, size, size)).astype(np.float32)  # channel-major, as our layers give
            xn = x.transpose(1, 0, 2, 3)
            w = (rng.standard_normal((c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32)
            wm = w.reshape(c_out, -1)
            window = ((3, 3), (1, 1), (1, 1, 1, 1), (size, size))
            gflop = 2 * c_out * c_in * 9 * n * size * size / 1e9
            t_im2col, cols = _best(lambda: conv_kernels.im2col(xn, *window), args.reps)
            t_fwd, y = _best(lambda: product(wm, cols), args.reps)
            t_wgrad, _ = _best(lambda: product(y, cols.T), args.reps)
            t_xgrad, gcols = _best(lambda: product(wm.T, y), args.reps)
            t_col2im, _ = _best(lambda: conv_kernels.col2im(gcols, xn.shape, *window), args.reps)
            ours = t_im2col + t_fwd + t_wgrad + t_xgrad + t_col2im
            theirs = torch_conv(c_in, c_out, size, n, args.reps, rng)
            (w_in, w_mm, w_out), wy = winograd_conv3x3(x, w, args.reps)
            direct = y.reshape(c_out, n, size, size)
            err = float(np.abs(wy - direct).max() / np.abs(direct).max())
            rate = lambda s: f"({gflop / s:.0f})"  # noqa: E731
            line = (f"  {c_in}->{c_out} @{size}: ours {1e3 * ours:.0f} = im2col {1e3 * t_im2col:.0f} + fwd "
                    f"{1e3 * t_fwd:.0f} {rate(t_fwd)} + wgrad {1e3 * t_wgrad:.0f} {rate(t_wgrad)} + xgrad "
                    f"{1e3 * t_xgrad:.0f} {rate(t_xgrad)} + col2im {1e3 * t_col2im:.0f}")
            if theirs is not None:
                line += f" | torch {1e3 * theirs:.0f} ({3 * gflop / theirs:.0f})"
            line += (f" | forward: ours {1e3 * (t_im2col + t_fwd):.0f}, winograd {w_in + w_mm + w_out:.0f} = in "
                     f"{w_in:.0f} + gemms {w_mm:.0f} + out {w_out:.0f} (rel err {err:.0e})")
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
