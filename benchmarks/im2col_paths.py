"""im2col's two paths for a 'same' 3x3 window, side by side: image rows against flat shifts.

    python -m benchmarks.im2col_paths [--threads 1] [--rounds 2]

For every 3x3 'same' layer shape of SeedCNN, FastCNN, ResNet-20 and airbench (a shard of 512),
in both layouts a convolution can get (channel-major, as a convolution hands its output on,
and NCHW, as images come), times ``kernels.conv._im2col_rows`` and ``_im2col_same`` into a
fresh buffer: best of 5, the two alternating for ``--rounds`` rounds; prints each and their
ratio. The two give the same columns (``tests/test_conv_naive.py``); ``im2col`` takes the
shift path for every such window on channel-major input, and on NCHW input whose image
planes have at most ``kernels.conv._SHORT_PLANE`` pixels (here it times the shift path on
every plane, to show where that line lies).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

# (name, batch, channels, size) of each 3x3 'same' layer's input
SHAPES = [("seed conv1", 64, 3, 32), ("seed conv2", 64, 16, 16), ("seed conv1 b1000", 500, 3, 32),
          ("fast 32@32", 128, 32, 32), ("fast 64@16", 128, 64, 16), ("fast 128@8", 128, 128, 8),
          ("airbench 24@31", 512, 24, 31), ("airbench 64@15", 512, 64, 15), ("airbench 128@7", 512, 128, 7),
          ("airbench 256@7", 512, 256, 7), ("airbench 128@3", 512, 128, 3), ("resnet 16@32", 128, 16, 32)]


def _best(fn, reps=5):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return 1e3 * best


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.im2col_paths", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="kernel threads ($TINYGRAD_CNN_THREADS)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--shapes", type=int, default=len(SHAPES), help="time only the first this many shapes")
    args = p.parse_args(argv)
    os.environ["TINYGRAD_CNN_THREADS"] = str(args.threads)
    from tinygrad_cnn.allocator import reuse_freed_memory
    from tinygrad_cnn.kernels import conv as conv_kernels

    reuse_freed_memory()
    rng = np.random.default_rng(0)
    window = ((3, 3), (1, 1, 1, 1), (1, 1))  # kernel, padding, dilation
    for name, n, c, size in SHAPES[:args.shapes]:
        for layout in ("channel-major", "NCHW"):
            if layout == "NCHW":
                x = rng.standard_normal((n, c, size, size), dtype=np.float32)
            else:
                x = np.ascontiguousarray(rng.standard_normal((c, n, size, size), dtype=np.float32)).transpose(1, 0, 2, 3)

            def rows():
                out = np.empty((9 * c, n * size * size), np.float32)
                conv_kernels._im2col_rows(x, out, window[0], (1, 1), window[1], (size, size), window[2])

            def shift():
                out = np.empty((9 * c, n * size * size), np.float32)
                conv_kernels._im2col_same(x, out, *window, src=conv_kernels._planes(x, max_plane=None))

            a, b = [], []
            for _ in range(args.rounds):
                a.append(_best(rows))
                b.append(_best(shift))
            print(f"{name:18s} {layout:13s} rows {min(a):7.1f} ms  shift {min(b):7.1f} ms  "
                  f"shift/rows {min(b) / min(a):.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
