"""The airbench recipes in PyTorch (CPU, float32): the reference our ``--model airbench94`` /
``airbench93`` runs are compared with, on the same archive and machine.

    python -m benchmarks.airbench_torch --model airbench94 --seed 0 --threads 2 \\
        --data ../shared/data/cifar-10-binary.tar.gz

A re-expression of KellerJordan/cifar10-airbench ``legacy/airbench94.py`` (and its 64/128/128
variant, airbench93) for the CPU: the same network, whitening init, parameter groups, Nesterov
SGD, schedule, lookahead, alternating flip, reflect-padded translation and TTA, with
hyper-parameters from ``train.airbench.RECIPES`` (shared with our recipe, so the two cannot
drift apart). The data come from our reader (``tinygrad_cnn.data.load_cifar10``), normalised
with the same statistics, so both frameworks see the same images. Prints the test accuracy
with and without TTA, the wall time from data loading to the end of the TTA evaluation (per-epoch
evaluation only with ``--epoch-eval``, and then counted), the training time and the median step
time; ``--json`` writes them. torch is optional: without it this command exits with an error.

The network's parameter and buffer names are our ``models.airbench`` ones (``whiten``,
``group1.conv1``, ..., ``head``), so a state_dict moves between the two frameworks
(``benchmarks.torch_twins``, ``tests/test_airbench.py``).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time


def make_net(widths, in_channels=3, num_classes=10, bn_momentum=0.6, logit_scale=1 / 9, gelu="none"):
    """airbench's network in torch, named as ours; BatchNorm scales and the whitening weights
    frozen. ``gelu`` is GELU's ``approximate`` ("none": exact, as airbench)."""
    import torch
    from torch import nn

    def activation(x):
        return nn.functional.gelu(x, approximate=gelu)

    def batch_norm(c):
        bn = nn.BatchNorm2d(c, eps=1e-12, momentum=1 - bn_momentum)
        bn.weight.requires_grad_(False)
        return bn

    def conv3x3(c_in, c_out):
        conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        with torch.no_grad():
            nn.init.dirac_(conv.weight[:c_in])
        return conv

    class Group(nn.Module):
        def __init__(self, c_in, c_out):
            super().__init__()
            self.conv1, self.norm1 = conv3x3(c_in, c_out), batch_norm(c_out)
            self.conv2, self.norm2 = conv3x3(c_out, c_out), batch_norm(c_out)

        def forward(self, x):
            x = activation(self.norm1(nn.functional.max_pool2d(self.conv1(x), 2)))
            return activation(self.norm2(self.conv2(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            w = 2 * in_channels * 4
            self.whiten = nn.Conv2d(in_channels, w, 2, padding=0, bias=True)
            self.whiten.weight.requires_grad_(False)
            with torch.no_grad():
                self.whiten.bias.zero_()
            self.group1, self.group2, self.group3 = Group(w, widths[0]), Group(widths[0], widths[1]), \
                Group(widths[1], widths[2])
            self.head = nn.Linear(widths[2], num_classes, bias=False)

        def forward(self, x):
            x = activation(self.whiten(x))
            x = self.group3(self.group2(self.group1(x)))
            x = nn.functional.max_pool2d(x, 3).flatten(1)
            return self.head(x) * logit_scale

    return Net()


def init_whitening(conv, images, eps):
    """The whitening filters from the (uncentred) covariance of ``images``' 2x2 patches."""
    import torch

    c, (kh, kw) = images.shape[1], conv.weight.shape[2:]
    patches = images.unfold(2, kh, 1).unfold(3, kw, 1)              # (n, c, h', w', kh, kw)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw).double()
    cov = patches.T @ patches / patches.shape[0]
    values, vectors = torch.linalg.eigh(cov)
    values, vectors = values.flip(0), vectors.flip(1)              # largest first
    filters = (vectors.T / torch.sqrt(values.clamp(min=0) + eps)[:, None]).reshape(-1, c, kh, kw)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([filters, -filters]).float())


class Loader:
    """airbench's training loader: images normalised once; each image flipped at random once
    (fixed for the run), every image flipped again in odd epochs (alternating flip); a fresh
    random translation of up to ``translate`` pixels (reflect padding) every epoch; shuffled
    batches, the incomplete last one dropped."""

    def __init__(self, images, labels, batch_size, translate, generator):
        import torch

        self.labels, self.batch_size, self.translate, self.g = labels, batch_size, translate, generator
        flip = torch.rand(len(images), generator=generator) < 0.5
        base = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        pad = (translate,) * 4
        self.source = torch.nn.functional.pad(base, pad, mode="reflect") if translate else base
        self.size = images.shape[-1]
        self.epoch = 0

    def __len__(self):
        return len(self.labels) // self.batch_size

    def _translated(self):
        import torch

        if not self.translate:
            return self.source
        r, s, n = self.translate, self.size, len(self.labels)
        shifts = torch.randint(0, 2 * r + 1, (n, 2), generator=self.g)
        out = torch.empty((n, self.source.shape[1], s, s), dtype=self.source.dtype)
        for dy in range(2 * r + 1):  # one masked copy per offset pair: no per-image loop
            for dx in range(2 * r + 1):
                m = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
                out[m] = self.source[m, :, dy:dy + s, dx:dx + s]
        return out

    def __iter__(self):
        import torch

        images = self._translated()
        if self.epoch % 2 == 1:
            images = images.flip(-1)
        self.epoch += 1
        order = torch.randperm(len(images), generator=self.g)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield images[idx], self.labels[idx]


class Lookahead:
    """EMA of every floating entry of the state_dict, written back into the model."""

    def __init__(self, net):
        self.ema = {k: v.detach().clone() for k, v in net.state_dict().items()}

    def update(self, net, decay):
        import torch

        with torch.no_grad():
            for k, v in net.state_dict().items():
                if v.dtype.is_floating_point:
                    self.ema[k].lerp_(v, 1 - decay)
                    v.copy_(self.ema[k])


def tta_logits(net, images, level, batch_size=2000):
    """Logits averaged over the views of TTA ``level`` (0 plain, 1 mirror, 2 mirror + translate)."""
    import torch

    def mirror(x):
        return 0.5 * net(x) + 0.5 * net(x.flip(-1))

    def views(x):
        if level == 0:
            return net(x)
        if level == 1:
            return mirror(x)
        p = torch.nn.functional.pad(x, (1,) * 4, mode="reflect")
        s = x.shape[-1]
        shifted = 0.5 * (mirror(p[:, :, :s, :s]) + mirror(p[:, :, 2:s + 2, 2:s + 2]))
        return 0.5 * mirror(x) + 0.5 * shifted

    net.eval()
    with torch.no_grad():
        out = torch.cat([views(x) for x in images.split(batch_size)])
    net.train()
    return out


def train(model="airbench94", epochs=None, seed=0, threads=2, data=None, limit_train=None, limit_test=None,
          batch_size=None, tta_level=None, epoch_eval=False, eval_batch_size=2000, log=print):
    """One run of the recipe; returns a dict of results (accuracies, times)."""
    import numpy as np
    import torch

    from tinygrad_cnn import data as tdata
    from train.airbench import RECIPES, lookahead_decay, lr_factor, total_steps

    recipe = RECIPES[model]
    epochs = recipe.epochs if epochs is None else epochs
    batch_size = recipe.batch_size if batch_size is None else batch_size
    tta_level = recipe.tta_level if tta_level is None else tta_level
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    train_set = tdata.load_cifar10(data, split="train").head(limit_train)
    test_set = tdata.load_cifar10(data, split="test").head(limit_test)
    mean = torch.tensor(tdata.CIFAR10_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(tdata.CIFAR10_STD).view(1, -1, 1, 1)

    def normalize(u8):
        return (torch.from_numpy(np.ascontiguousarray(u8)).float() / 255 - mean) / std

    train_images, test_images = normalize(train_set.images), normalize(test_set.images)
    train_labels, test_labels = torch.from_numpy(train_set.labels), torch.from_numpy(test_set.labels)
    loader = Loader(train_images, train_labels, batch_size, recipe.translate, g)
    if len(loader) == 0:
        raise ValueError(f"{len(train_labels)} training images make no full batch of {batch_size} (the recipe "
                         f"drops incomplete batches); lower --batch-size or raise --limit-train")
    steps_total = total_steps(len(loader), epochs)

    net = make_net(recipe.widths, bn_momentum=recipe.bn_momentum, logit_scale=recipe.logit_scale)
    init_whitening(net.whiten, train_images[:recipe.whiten_images], recipe.whiten_eps)
    step_scale = 1024 * (1 + 1 / (1 - recipe.momentum))
    lr = recipe.lr / step_scale
    wd = recipe.weight_decay * batch_size / step_scale
    norm_biases = [p for n, p in net.named_parameters() if "norm" in n and p.requires_grad]
    others = [p for n, p in net.named_parameters() if "norm" not in n and p.requires_grad]
    lr_bias = lr * recipe.bias_lr_scale
    optimizer = torch.optim.SGD([dict(params=norm_biases, lr=lr_bias, weight_decay=wd / lr_bias),
                                 dict(params=others, lr=lr, weight_decay=wd / lr)],
                                momentum=recipe.momentum, nesterov=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, total_steps=steps_total, warmup=recipe.warmup,
                                     start=recipe.lr_start, end=recipe.lr_end))
    lookahead = Lookahead(net)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing, reduction="sum")

    def accuracy(level):
        logits = tta_logits(net, test_images, level, eval_batch_size)
        return float((logits.argmax(1) == test_labels).float().mean())

    steps, step_times, train_time, history = 0, [], 0.0, []
    for epoch in range(math.ceil(epochs)):
        net.whiten.bias.requires_grad_(epoch < recipe.whiten_bias_epochs)
        t0 = time.perf_counter()
        net.train()
        for x, y in loader:
            t = time.perf_counter()
            loss = loss_fn(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            steps += 1
            if steps % recipe.lookahead_every == 0:
                lookahead.update(net, lookahead_decay(steps, steps_total, recipe.lookahead_decay))
            if steps >= steps_total:
                lookahead.update(net, 1.0)
            step_times.append(time.perf_counter() - t)
            if steps >= steps_total:
                break
        train_time += time.perf_counter() - t0
        record = {"epoch": epoch + 1, "steps": steps, "train_loss": loss.item() / len(y),
                  "epoch_time": time.perf_counter() - t0}
        if epoch_eval:
            record["test_acc"] = accuracy(0)
        history.append(record)
        log(json.dumps(record))
    plain = accuracy(0)
    tta = accuracy(tta_level) if tta_level else plain
    wall = time.perf_counter() - started
    return {"model": model, "seed": seed, "threads": threads, "epochs": epochs, "steps": steps,
            "batch_size": batch_size, "test_acc": plain, "tta_level": tta_level, "tta_test_acc": tta,
            "train_time": train_time, "wall_time": wall, "median_step_s": statistics.median(step_times),
            "history": history, "torch": torch.__version__, "epoch_eval": epoch_eval, "step_times": step_times}


def main(argv=None):
    from train.airbench import RECIPES

    p = argparse.ArgumentParser(prog="python -m benchmarks.airbench_torch", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(RECIPES), default="airbench94")
    p.add_argument("--epochs", type=float, help="epochs (default: the recipe's, 9.9 or 11)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--data", help="CIFAR-10 archive (as train.cifar10's --data)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--limit-train", type=int)
    p.add_argument("--limit-test", type=int)
    p.add_argument("--tta-level", type=int, choices=[0, 1, 2])
    p.add_argument("--epoch-eval", action="store_true", help="evaluate after every epoch (counted in the wall time)")
    p.add_argument("--eval-batch-size", type=int, default=2000)
    p.add_argument("--reuse-freed-memory", action="store_true",
                   help="glibc malloc keeps freed large blocks (tinygrad_cnn.allocator.reuse_freed_memory, as our "
                        "training script does); default: PyTorch as it comes")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    for flag, value in (("--epochs", args.epochs), ("--threads", args.threads), ("--batch-size", args.batch_size),
                        ("--limit-train", args.limit_train), ("--limit-test", args.limit_test),
                        ("--eval-batch-size", args.eval_batch_size)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            p.error(f"{flag} must be a positive number; got {value}")
    if args.reuse_freed_memory:
        from tinygrad_cnn.allocator import reuse_freed_memory

        reuse_freed_memory()
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: this reference needs PyTorch (pip install torch); our own runs do not", file=sys.stderr)
        return 2
    from tinygrad_cnn.data import DatasetError

    try:
        r = train(args.model, args.epochs, args.seed, args.threads, args.data, args.limit_train, args.limit_test,
                  args.batch_size, args.tta_level, args.epoch_eval, args.eval_batch_size)
    except (DatasetError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\n{r['model']} (PyTorch {r['torch']}, {r['threads']} threads, seed {r['seed']}): "
          f"test accuracy {100 * r['test_acc']:.2f}%, with TTA level {r['tta_level']} {100 * r['tta_test_acc']:.2f}%\n"
          f"  {r['steps']} steps of {r['batch_size']}, median step {r['median_step_s']:.2f} s, training "
          f"{r['train_time']:.1f} s, wall time (data loading to the final TTA evaluation) {r['wall_time']:.1f} s")
    if args.json:
        from tinygrad_cnn.io import atomic_write

        atomic_write(args.json, lambda f: f.write(json.dumps(r, indent=2).encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
