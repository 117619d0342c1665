"""Where airbench's time goes, ours against PyTorch: whole recipe steps, and layer by layer.

    python -m benchmarks.airbench_speed steps --model airbench94 --data ../shared/data/cifar-10-binary.tar.gz
    python -m benchmarks.airbench_speed layers --model airbench94 --batch 512 [--only GELU,BatchNorm]
    python -m benchmarks.airbench_speed tta --model airbench94 --images 1000

``steps`` times training steps of the recipe as the two runs take them (ours: ``train.airbench``'s
loader, two synchronised shards, Nesterov groups, schedule and lookahead; PyTorch:
``benchmarks.airbench_torch``'s loader and step), on the same images, in alternating blocks in one
process with the same thread count, and prints each block and the medians. ``--micro-batch 0``
times our step as one pass over the batch instead of shards.

``layers`` times forward + backward of each layer shape of the network on one thread each (a
training shard's share of the work: ``--batch 512`` is one of the two shards of 1,024), ours and
PyTorch's alternately, best of the medians of two blocks: which kernels lose how much. BatchNorm
and GELU get their input in the layout each framework's convolutions produce (ours
channel-major, PyTorch's NCHW).
``tta`` profiles ``tinygrad_cnn.tta.predict`` (level 2) of a seeded, untrained network on random
images with ``tc.profile`` and prints the per-op table (ours only).
The machine is shared and noisy: only ratios from the same run mean anything.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def _median_time(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def steps(model, data_path, threads, per_block, rounds, micro_batch, images=10240, whiten_bias=True, log=print,
          profile=False):
    """Median step times, ours and PyTorch's, in alternating blocks. ``whiten_bias``: the
    whitening bias trains (the recipe's first epochs: the first conv's input gradient is
    needed) or is frozen (the epochs after). ``profile``: then ``per_block`` more of our steps
    under ``tc.profile``, whose table shows the shards' time per op and waiting for each other."""
    import torch

    import tinygrad_cnn as tc
    from tinygrad_cnn import data
    from benchmarks import airbench_torch as ref
    from train import airbench
    from train import cifar10 as cli

    where = dict(download=data_path is None)
    train_set = data.load_cifar10(data_path, "train", **where).head(images)
    test_set = data.load_cifar10(data_path, "test", **where).head(10)
    flags = ["--model", model, "--out", "/nonexistent", "--micro-threads", str(threads)]
    flags += [] if micro_batch is None else ["--micro-batch", str(micro_batch)]
    cfg = cli.config_from_args(cli.build_parser().parse_args(flags))
    recipe = airbench.RECIPES[model]
    loader, _, net, opt, schedule, lookahead, _, _ = airbench._setup(cfg, recipe, (train_set, test_set))
    net.whiten.bias.requires_grad = whiten_bias
    params = [p for p in net.parameters() if p.requires_grad]
    batches = iter(loader)

    def ours():
        x, y = next(batches)
        t = time.perf_counter()
        opt.zero_grad()
        if cfg.micro_batch:
            tc.parallel.accumulate_gradients(lambda xb, yb: airbench._loss(net, xb, yb, cfg.label_smoothing, len(y)),
                                             (x, y), params, cfg.micro_batch, cfg.micro_threads, sync_batch_norm=True)
        else:
            loss, _ = airbench._loss(net, x, y, cfg.label_smoothing, len(y))
            loss.backward()
        opt.step()
        schedule.step()
        lookahead.step()
        return time.perf_counter() - t

    torch.set_num_threads(threads)
    tnet = ref.make_net(recipe.widths, bn_momentum=recipe.bn_momentum, logit_scale=recipe.logit_scale)
    mean = torch.tensor(data.CIFAR10_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(data.CIFAR10_STD).view(1, -1, 1, 1)
    timages = (torch.from_numpy(np.ascontiguousarray(train_set.images)).float() / 255 - mean) / std
    ref.init_whitening(tnet.whiten, timages[:recipe.whiten_images], recipe.whiten_eps)
    tnet.whiten.bias.requires_grad_(whiten_bias)
    tloader = ref.Loader(timages, torch.from_numpy(train_set.labels), cfg.batch_size, recipe.translate,
                         torch.Generator().manual_seed(0))
    topt = torch.optim.SGD([p for p in tnet.parameters() if p.requires_grad], lr=1e-4, momentum=recipe.momentum,
                           nesterov=True)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing, reduction="sum")
    tbatches = [iter(tloader)]

    def theirs():
        try:
            x, y = next(tbatches[0])
        except StopIteration:
            tbatches[0] = iter(tloader)
            x, y = next(tbatches[0])
        t = time.perf_counter()
        loss = loss_fn(tnet(x), y)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()
        return time.perf_counter() - t

    needed = per_block * (rounds + bool(profile)) + 1
    if needed > len(loader):
        raise SystemExit(f"error: {needed} steps need more than the {images} images of --images")
    ours()
    theirs()  # warm-up
    a, b = [], []
    for r in range(rounds):
        a += [ours() for _ in range(per_block)]
        b += [theirs() for _ in range(per_block)]
        log(f"  block {r}: ours {' '.join(f'{v:.2f}' for v in a[-per_block:])} s   "
            f"torch {' '.join(f'{v:.2f}' for v in b[-per_block:])} s")
    how = f"two shards of {cfg.micro_batch}" if cfg.micro_batch else "one pass"
    log(f"{model}, batch {cfg.batch_size}, {threads} threads, whitening bias {'trained' if whiten_bias else 'frozen'}, "
        f"ours as {how}: ours median {statistics.median(a):.2f} s, "
        f"torch median {statistics.median(b):.2f} s, ratio {statistics.median(a) / statistics.median(b):.2f}")
    if profile:
        with tc.profile() as prof:
            for _ in range(per_block):
                ours()
        log(f"ours, {per_block} more steps profiled (op times summed over the shards' threads):\n{prof.table()}")
    return statistics.median(a), statistics.median(b)


def _layer_cases(widths, batch, rng):
    """(name, ours, theirs) for every layer shape of the network (forward + backward each)."""
    import torch

    import tinygrad_cnn as tc
    import tinygrad_cnn.functional as F
    from models.airbench import gelu

    def pair(build_ours, build_torch, shape, channel_major=False):
        x = rng.standard_normal(shape).astype(np.float32)
        tx = torch.from_numpy(x.copy()).requires_grad_()
        if channel_major:  # the layout our convolutions (and pooling) hand to BatchNorm and GELU
            x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)

        def ours():
            xt = tc.Tensor(x, requires_grad=True)
            y = build_ours(xt)
            y.backward(tc.Tensor(np.ones(y.shape, np.float32)))

        def theirs():
            tx.grad = None
            y = build_torch(tx)
            y.backward(torch.ones_like(y))

        return ours, theirs

    def conv(c_in, c_out, k, pad, size, bias=False):
        w = (rng.standard_normal((c_out, c_in, k, k)) * 0.1).astype(np.float32)
        wt = tc.Tensor(w, requires_grad=True)
        bt = tc.Tensor(np.zeros(c_out, np.float32), requires_grad=True) if bias else None
        tw = torch.from_numpy(w.copy()).requires_grad_()
        tb = torch.zeros(c_out, requires_grad=True) if bias else None
        return pair(lambda x: F.conv2d(x, wt, bt, padding=pad),
                    lambda x: torch.nn.functional.conv2d(x, tw, tb, padding=pad), (batch, c_in, size, size))

    def norm(c, size):
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        w, b = tc.Tensor(np.ones(c, np.float32)), tc.Tensor(np.zeros(c, np.float32), requires_grad=True)
        bn = torch.nn.BatchNorm2d(c, eps=1e-12, momentum=0.4)
        bn.weight.requires_grad_(False)
        return pair(lambda x: F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.4, eps=1e-12), bn,
                    (batch, c, size, size), channel_major=True)

    def act(c, size):
        return pair(gelu, torch.nn.functional.gelu, (batch, c, size, size), channel_major=True)

    def pool(c, size):
        return pair(lambda x: F.max_pool2d(x, 2), lambda x: torch.nn.functional.max_pool2d(x, 2), (batch, c, size, size))

    w1, w2, w3 = widths
    return [("whitening conv 3->24, 2x2 @32", conv(3, 24, 2, 0, 32, bias=True), 1),
            ("GELU 24 @31", act(24, 31), 1),
            (f"conv {24}->{w1} @31", conv(24, w1, 3, 1, 31), 1),
            (f"max-pool 2, {w1} @31", pool(w1, 31), 1),
            (f"BatchNorm {w1} @15", norm(w1, 15), 2),
            (f"GELU {w1} @15", act(w1, 15), 2),
            (f"conv {w1}->{w1} @15", conv(w1, w1, 3, 1, 15), 1),
            (f"conv {w1}->{w2} @15", conv(w1, w2, 3, 1, 15), 1),
            (f"max-pool 2, {w2} @15", pool(w2, 15), 1),
            (f"BatchNorm {w2} @7", norm(w2, 7), 2),
            (f"GELU {w2} @7", act(w2, 7), 2),
            (f"conv {w2}->{w2} @7", conv(w2, w2, 3, 1, 7), 1),
            (f"conv {w2}->{w3} @7", conv(w2, w3, 3, 1, 7), 1),
            (f"max-pool 2, {w3} @7", pool(w3, 7), 1),
            (f"BatchNorm {w3} @3", norm(w3, 3), 2),
            (f"GELU {w3} @3", act(w3, 3), 2),
            (f"conv {w3}->{w3} @3", conv(w3, w3, 3, 1, 3), 1)]


def layers(model, batch, reps, only=None, log=print):
    import torch

    from tinygrad_cnn.blas import blas_threads
    from tinygrad_cnn.threads import run_serially
    from train.airbench import RECIPES

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    total_ours = total_torch = 0.0
    log(f"{model}, batch {batch}, one thread each, forward + backward (ms), x = times in the network")
    with run_serially(), blas_threads(1):
        for name, (ours, theirs), times in _layer_cases(RECIPES[model].widths, batch, rng):
            if only and not any(word.lower() in name.lower() for word in only):
                continue
            ours()
            theirs()
            o = min(_median_time(ours, reps), _median_time(ours, reps))
            t = min(_median_time(theirs, reps), _median_time(theirs, reps))
            total_ours += times * o
            total_torch += times * t
            log(f"  {name:<32} x{times}  ours {1e3 * o:8.1f}  torch {1e3 * t:8.1f}  ratio {o / t:5.2f}")
    log(f"  {'the network (sum)' if not only else 'these rows (sum)':<35} ours {1e3 * total_ours:8.1f}  torch {1e3 * total_torch:8.1f}  "
        f"ratio {total_ours / total_torch:5.2f}")
    return total_ours, total_torch


def tta(model, images, log=print):
    import tinygrad_cnn as tc
    from tinygrad_cnn import tta as tta_
    from models.airbench import Airbench93, Airbench94

    rng = np.random.default_rng(0)
    net = {"airbench94": Airbench94, "airbench93": Airbench93}[model](rng=np.random.default_rng(0))
    x = rng.standard_normal((images, 3, 32, 32)).astype(np.float32)
    net.init_whitening(x[:max(2, images // 2)])
    tta_.predict(net, x[:min(images, 100)])  # warm-up
    t = time.perf_counter()
    with tc.profile() as prof:
        tta_.predict(net, x)
    wall = time.perf_counter() - t
    log(f"{model}: tta.predict level 2 of {images} images ({6 * images} views): {wall:.2f} s wall")
    log(prof.table())
    return wall


def main(argv=None):
    from train.airbench import RECIPES

    p = argparse.ArgumentParser(prog="python -m benchmarks.airbench_speed", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("steps", help="whole recipe steps, alternating blocks")
    s.add_argument("--model", choices=sorted(RECIPES), default="airbench94")
    s.add_argument("--data", help="CIFAR-10 archive (as train.cifar10's --data)")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--per-block", type=int, default=3)
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--micro-batch", type=int, help="our shards' size (default: the recipe's, 512; 0: one pass)")
    s.add_argument("--images", type=int, default=10240, help="training images to draw the batches from")
    s.add_argument("--frozen-whitening-bias", action="store_true",
                   help="time the epochs after the whitening bias freezes (default: the first epochs, where it trains)")
    s.add_argument("--profile", action="store_true",
                   help="then profile --per-block more of our steps: time per op, and the shards' waits for each other")
    lay = sub.add_parser("layers", help="each layer shape on one thread")
    lay.add_argument("--model", choices=sorted(RECIPES), default="airbench94")
    lay.add_argument("--batch", type=int, default=512)
    lay.add_argument("--reps", type=int, default=2)
    lay.add_argument("--only", type=lambda v: [w for w in v.split(",") if w],
                     help="comma-separated words: time only the rows whose name contains one (e.g. GELU,BatchNorm)")
    tt = sub.add_parser("tta", help="profile test-time augmentation (ours only)")
    tt.add_argument("--model", choices=["airbench94", "airbench93"], default="airbench94")
    tt.add_argument("--images", type=int, default=1000)
    args = p.parse_args(argv)
    if args.what == "tta":
        from tinygrad_cnn.allocator import reuse_freed_memory

        reuse_freed_memory()
        tta(args.model, args.images)
        return 0
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: this comparison needs PyTorch", file=sys.stderr)
        return 2
    from tinygrad_cnn.allocator import reuse_freed_memory

    reuse_freed_memory()
    if args.what == "steps":
        steps(args.model, args.data, args.threads, args.per_block, args.rounds, args.micro_batch, args.images,
              whiten_bias=not args.frozen_whitening_bias, profile=args.profile)
    else:
        layers(args.model, args.batch, args.reps, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
