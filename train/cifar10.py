"""Train a model on CIFAR-10 (or Fashion-MNIST) with tinygrad_cnn.

    python -m train.cifar10 --model seed_cnn --epochs 10 --out runs/seed_cnn
    python -m train.cifar10 --model fast_cnn --budget 1200 --out runs/fast_cnn
    python -m train.cifar10 --model seed_cnn --recipe seed --epochs 3 --out runs/seed_recipe
    python -m train.cifar10 --model resnet20 --epochs 164 --out runs/resnet20   # He et al.'s length

Each epoch appends train/test loss and accuracy and timings to ``OUT/metrics.jsonl`` and
writes a checkpoint (model, optimizer, schedule, RNG states, epoch) atomically to
``OUT/checkpoint.npz``; ``--resume`` continues from it and, without ``--budget``, produces
exactly the metrics of an uninterrupted run. At the end: ``OUT/curves.png``, ``OUT/model.npz``
and a one-screen summary. ``--budget SECONDS`` trains for a wall-clock budget (evaluation
included, see ``train/budget.py``) and runs the learning-rate schedule on elapsed time, so the
schedule completes whatever the machine's speed. Under ``mpiexec -n N`` the run spans N
processes, each computing its slice of every batch (``train/distributed.py``, ``docs/scaling.md``).

Ctrl-C stops at the end of the current step and saves a checkpoint there (mid-epoch), so
``--resume`` continues exactly; a second Ctrl-C stops at once (the last checkpoint stays valid).
A folder that already holds a run is never overwritten silently: ``--resume`` continues it
(and does nothing when it finished), ``--overwrite`` replaces it. Every setting is checked
before anything starts; a bad one, a bad checkpoint or missing data is one ``error:`` line and
exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

import tinygrad_cnn as tc
import tinygrad_cnn.functional as F
from tinygrad_cnn import data, optim, rng
from tinygrad_cnn.allocator import reuse_freed_memory
from tinygrad_cnn.data.download import show_progress
from tinygrad_cnn.io import CheckpointError, atomic_write, load_state, save_state
from models import MODELS
from models.seed_cnn import seed_init
from train import airbench
from train.airbench import RECIPES as AIRBENCH_RECIPES
from train.budget import Budget
from train.distributed import DISTRIBUTED_HELP, LaunchError, SingleProcess, team_from_args

CHECKPOINT = "checkpoint.npz"
UNCAPPED = 10**6  # the epoch "limit" of a --budget run without --epochs
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
RUN_FILES = (CHECKPOINT, METRICS, SUMMARY, "model.npz", "curves.png")
INTERRUPTED = 130  # the exit code of a run stopped by Ctrl-C (128 + SIGINT), as shells report it

clock = time.perf_counter  # the wall clock of a run (tests substitute a fake one)


class ConfigError(Exception):
    """A setting that cannot work, or an output folder that must not be touched: one
    ``error:`` line and exit code 2."""


class Interrupted(Exception):
    """Ctrl-C stopped the run at a step boundary, after saving a checkpoint there."""

PER_THREAD = "per_thread"  # a default micro-batch: the batch split evenly over the threads

# Per-model defaults (a flag on the command line overrides each one). FastCNN's BatchNorm
# layers need the batch's statistics, so its micro-batches are shards that all run at once.
DEFAULTS = {
    "seed_cnn": dict(optimizer="adam", lr=3e-3, schedule="onecycle", batch_size=128, weight_decay=0.0,
                     augment=True, label_smoothing=0.0, epochs=10, micro_batch=64, micro_threads=2),
    "fast_cnn": dict(optimizer="sgd", lr=0.2, schedule="onecycle", batch_size=128, weight_decay=5e-4,
                     momentum=0.9, nesterov=True, augment=True, label_smoothing=0.1, epochs=10,
                     micro_batch=PER_THREAD, micro_threads=2),
    "fc": dict(optimizer="adam", lr=1e-3, schedule="onecycle", batch_size=128, weight_decay=0.0,
               augment=False, label_smoothing=0.0, epochs=5),
    # He et al. 2016, section 4.2: SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, crop and flip.
    # Cosine stands in for their steps (lr / 10 at 50% and 75% of 164 epochs): it also runs on a --budget.
    "resnet20": dict(optimizer="sgd", lr=0.1, schedule="cosine", batch_size=128, weight_decay=1e-4, momentum=0.9,
                     nesterov=False, augment=True, label_smoothing=0.0, epochs=10, micro_batch=PER_THREAD,
                     micro_threads=2),
    # Page's DAWNBench ResNet-9: batch 512, Nesterov SGD, momentum 0.9, weight decay 5e-4, a linear warm-up
    # to lr 0.4 at 5/24 of the run then down to 0 (onecycle peaks at 1/4), crop and flip (24 epochs).
    "resnet9": dict(optimizer="sgd", lr=0.4, schedule="onecycle", batch_size=512, weight_decay=5e-4, momentum=0.9,
                    nesterov=True, augment=True, label_smoothing=0.0, epochs=10, micro_batch=PER_THREAD,
                    micro_threads=2),
}
# The airbench recipes (train/airbench.py): lr and weight decay in airbench's decoupled form,
# epochs None = the recipe's own (9.9 / 11); the batch runs as two synchronised shards.
for _name in AIRBENCH_RECIPES:
    DEFAULTS[_name] = dict(optimizer="sgd", lr=11.5, schedule="airbench", batch_size=1024, weight_decay=0.0153,
                           momentum=0.85, nesterov=True, augment=True, label_smoothing=0.2, epochs=None,
                           micro_batch=PER_THREAD, micro_threads=2, tta_level=2)
# The seed project's recipe, for a like-for-like baseline: batch 1000, plain gradient descent
# at lr 1e-3, its initialisation, pixels scaled to [0, 1], no augmentation, no normalisation.
# Its batch of 1000 is summed over four micro-batches of 250, two at a time (the same
# gradient, faster: docs/performance.md).
SEED_RECIPE = dict(optimizer="sgd", lr=1e-3, schedule="const", batch_size=1000, weight_decay=0.0, momentum=0.0,
                   nesterov=False, augment=False, normalize=False, label_smoothing=0.0, micro_batch=250,
                   micro_threads=2)


@dataclass
class Config:
    model: str = "seed_cnn"
    dataset: str = "cifar10"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "const"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = True
    normalize: bool = True
    recipe: str = "default"
    seed: int = 0
    data: str | None = None
    out: str = "runs/latest"
    resume: bool = False
    limit_train: int | None = None
    limit_test: int | None = None
    budget: float | None = None
    micro_batch: int = 0      # > 0: each batch's gradient is summed over micro-batches of this size
    micro_threads: int = 1    # micro-batches run at once (see tinygrad_cnn.parallel)
    eval_batch_size: int = 1000
    progress: bool = True
    tta_level: int = 0        # test-time augmentation of the final evaluation (airbench recipes)
    epoch_eval: bool = True   # evaluate on the test set after every epoch (else after the last only)


def _defaults_epilog():
    lines = ["defaults per --model (a flag given overrides each one):"]
    for model, d in DEFAULTS.items():
        lines.append(f"  {model:9s} " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in d.items()))
    lines.append("  --recipe seed: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in SEED_RECIPE.items()))
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m train.cifar10", description=__doc__.split("\n\n")[0],
                                epilog=_defaults_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="seed_cnn")
    p.add_argument("--dataset", choices=["cifar10", "fashion-mnist"], default="cifar10")
    p.add_argument("--epochs", type=int, help="number of epochs (with --budget: an optional cap)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate (the peak, with onecycle)")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    p.add_argument("--schedule", choices=["const", "cosine", "onecycle"])
    p.add_argument("--momentum", type=float, help="SGD momentum")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--weight-decay", type=float, help="applied to weights only (not biases or BatchNorm)")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop (4-pixel zero padding) and horizontal flip")
    p.add_argument("--recipe", choices=["default", "seed"], default="default",
                   help="'seed' reproduces the seed project's recipe exactly")
    p.add_argument("--seed", type=int, default=0, help="seed of everything random (default: %(default)s)")
    p.add_argument("--data", help="dataset archive or directory (else $TINYGRAD_CNN_DATA, else ~/.cache/tinygrad_cnn)")
    p.add_argument("--out", default=None, help="output directory (default runs/<model>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz (nothing to do when that "
                   "run finished)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in OUT (without it, an error)")
    p.add_argument("--limit-train", type=int, help="train on the first N training images only")
    p.add_argument("--limit-test", type=int, help="evaluate on the first N test images only")
    p.add_argument("--budget", type=float, help="wall-clock budget in seconds (training + evaluation)")
    p.add_argument("--eval-batch-size", type=int, default=1000, help="batch size of evaluation (default: %(default)s)")
    p.add_argument("--micro-batch", type=int, help="compute each batch's gradient over micro-batches of this "
                   "size (same gradient, faster; 0: one pass per batch; with BatchNorm, at most one per "
                   "thread, which then share the batch's statistics)")
    p.add_argument("--micro-threads", type=int, help="micro-batches run at once, one per core")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: only when stderr is a terminal, so a log stays readable)")
    p.add_argument("--tta-level", type=int, choices=[0, 1, 2], help="test-time augmentation of the final "
                   "evaluation: 0 none, 1 mirror, 2 mirror + translate (airbench recipes; default 2)")
    p.add_argument("--epoch-eval", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate after every epoch (airbench recipes; --no-epoch-eval: after the last only)")
    p.add_argument("--distributed", action=argparse.BooleanOptionalAction, default=None, help=DISTRIBUTED_HELP)
    return p


def config_from_args(args, parser=None) -> Config:
    """Per-model defaults, then the recipe, then the flags given. With ``--resume``, the saved
    run's settings replace the defaults, so ``--resume --out DIR`` alone continues a run."""
    parser = parser or build_parser()
    given = {k: v for k, v in vars(args).items() if v is not None and v != parser.get_default(k)}
    out = args.out or f"runs/{args.model}"
    if args.resume and (Path(out) / CHECKPOINT).exists():
        saved = load_checkpoint(Path(out) / CHECKPOINT)["config"]
        if not isinstance(saved, dict):
            raise CheckpointError(f"{Path(out) / CHECKPOINT}: its 'config' is not a dict of settings")
        values = dict(saved)
    else:
        values = dict(DEFAULTS[args.model], model=args.model, seed=args.seed, recipe=args.recipe)
        if args.recipe == "seed":
            if args.model != "seed_cnn":
                raise ConfigError("--recipe seed applies to --model seed_cnn only")
            values.update(SEED_RECIPE)
    values.update(given)
    values["micro_batch"] = resolve_micro_batch(values.get("micro_batch", 0), values["batch_size"],
                                                values.get("micro_threads", 1))
    if values.get("budget") is not None and "epochs" not in given and not args.resume:
        values["epochs"] = UNCAPPED  # with a budget and no --epochs, the clock alone ends the run
    values["progress"] = show_progress(args.progress)
    values["out"] = out
    names = {f.name for f in fields(Config)}
    cfg = Config(**{k: v for k, v in values.items() if k in names})
    check_config(cfg)
    return cfg


def _whole(flag, value, low, optional=False):
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{flag} must be an integer >= {low}; got {value!r}")


def _number(flag, value, low, high=math.inf, low_open=False, optional=False, unit=""):
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        rule = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high != math.inf else "")
        raise ConfigError(f"{flag} must be a finite number{unit} {rule}; got {value!r}")


def check_config(cfg: Config):
    """Every setting in range before anything starts (NaN, infinities, zero or negative
    counts would otherwise train on NaN, divide by zero, or report accuracy 0), named by its
    flag. Settings read back from a checkpoint go through the same checks."""
    airbench_recipe = cfg.model in AIRBENCH_RECIPES
    _whole("--epochs", cfg.epochs, 1, optional=airbench_recipe)  # None: the recipe's own
    _whole("--batch-size", cfg.batch_size, 1)
    _whole("--eval-batch-size", cfg.eval_batch_size, 1)
    _whole("--micro-batch", cfg.micro_batch, 0)
    _whole("--micro-threads", cfg.micro_threads, 1)
    _whole("--seed", cfg.seed, 0)
    _whole("--limit-train", cfg.limit_train, 1, optional=True)
    _whole("--limit-test", cfg.limit_test, 1, optional=True)
    _number("--lr", cfg.lr, 0)
    _number("--momentum", cfg.momentum, 0)
    _number("--weight-decay", cfg.weight_decay, 0)
    _number("--label-smoothing", cfg.label_smoothing, 0, 1)
    _number("--budget", cfg.budget, 0, low_open=True, optional=True, unit=" of seconds")
    for flag, value, choices in (("--model", cfg.model, MODELS), ("--dataset", cfg.dataset, ("cifar10", "fashion-mnist")),
                                 ("--optimizer", cfg.optimizer, ("sgd", "adam", "adamw")),
                                 ("--schedule", cfg.schedule, ("airbench",) if airbench_recipe else
                                  ("const", "cosine", "onecycle")),
                                 ("--tta-level", cfg.tta_level, (0, 1, 2)),
                                 ("--recipe", cfg.recipe, ("default", "seed"))):
        if value not in choices:
            raise ConfigError(f"{flag} must be one of {', '.join(map(str, sorted(choices)))}; got {value!r}")
    if not airbench_recipe and (cfg.tta_level or not cfg.epoch_eval):
        raise ConfigError("--tta-level and --no-epoch-eval apply to the airbench recipes (--model airbench94 or "
                          "airbench93)")


def resolve_micro_batch(micro_batch, batch_size, threads):
    """The micro-batch size in images (``PER_THREAD``: one micro-batch per thread)."""
    return -(-batch_size // max(1, threads)) if micro_batch == PER_THREAD else micro_batch


# ----------------------------------------------------------------------------------- pieces


def load_data(cfg: Config):
    if cfg.dataset == "cifar10":
        # a path given with --data must hold the archive: a typo is an error, never a download
        where = dict(download=cfg.data is None, progress=cfg.progress)
        train = data.load_cifar10(cfg.data, split="train", **where)
        test = data.load_cifar10(cfg.data, split="test", **where)
        mean, std = data.CIFAR10_MEAN, data.CIFAR10_STD
    else:
        train = data.load_fashion_mnist(cfg.data, split="train")
        test = data.load_fashion_mnist(cfg.data, split="test")
        mean, std = data.FASHION_MNIST_MEAN, data.FASHION_MNIST_STD
    train, test = train.head(cfg.limit_train), test.head(cfg.limit_test)
    scale = [data.Normalize(mean, std)] if cfg.normalize else [data.ToFloat()]
    size = train.images.shape[-1]
    augment = [data.RandomCrop(size, padding=4), data.RandomHorizontalFlip()] if cfg.augment else []
    train_loader = data.DataLoader(train, cfg.batch_size, shuffle=True, drop_last=False, seed=cfg.seed,
                                   transform=data.Compose(augment + scale))
    test_loader = data.DataLoader(test, cfg.eval_batch_size, shuffle=False, transform=data.Compose(scale))
    return train_loader, test_loader


def build_model(cfg: Config, image_shape):
    channels, size = image_shape[0], image_shape[-1]
    cls = MODELS[cfg.model]
    if cfg.model == "fc":
        model = cls(sizes=(channels * size * size, 256, 64, 10))
    else:
        model = cls(in_channels=channels, image_size=size)
    if cfg.recipe == "seed":
        seed_init(model, np.random.default_rng(cfg.seed))
    return model


def uses_batch_statistics(model) -> bool:
    """True when a layer mixes the examples of a batch (BatchNorm in training mode)."""
    return any(isinstance(m, tc.nn._BatchNorm) for m in model.modules())  # BatchNorm1d and 2d


def check_micro_batching(cfg: Config, model):
    if cfg.micro_batch < 0 or cfg.micro_threads < 1:
        raise ConfigError(f"--micro-batch must be >= 0 and --micro-threads >= 1; got {cfg.micro_batch} "
                          f"and {cfg.micro_threads}")
    if cfg.micro_batch and uses_batch_statistics(model) and cfg.micro_batch * cfg.micro_threads < cfg.batch_size:
        raise ConfigError(f"--micro-batch {cfg.micro_batch}: {cfg.model} has BatchNorm layers, whose "
                         f"statistics come from the whole batch only when its micro-batches all run at "
                         f"once ({cfg.micro_threads} x {cfg.micro_batch} < batch {cfg.batch_size}); use "
                         f"--micro-batch {resolve_micro_batch(PER_THREAD, cfg.batch_size, cfg.micro_threads)} or 0")


def _loss_and_logits(model, x, y, label_smoothing, scale=1.0):
    logits = model(tc.Tensor(x))
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    return (loss if scale == 1.0 else loss * scale), logits.data


def build_optimizer(cfg: Config, model):
    params = list(model.parameters())
    if cfg.weight_decay:
        decay = [p for p in params if p.ndim > 1]
        rest = [p for p in params if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    else:
        groups = params
    if cfg.optimizer == "sgd":
        return optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return optim.Adam(groups, lr=cfg.lr)
    return optim.AdamW(groups, lr=cfg.lr)


def build_schedule(cfg: Config, optimizer, steps_per_epoch):
    total = max(cfg.epochs * steps_per_epoch, 1)
    if cfg.schedule == "cosine":
        return optim.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.schedule == "onecycle":
        return optim.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.25,
                                cycle_momentum=False)
    return None


def evaluate(model, loader):
    """Mean loss and accuracy over a loader, in eval mode, recording no graph."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    with tc.no_grad():
        for x, y in loader:
            logits = model(tc.Tensor(x))
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.data.argmax(axis=1) == y).sum())
            count += len(y)
    model.train()
    if not count:  # no test image: no figure, rather than an accuracy of 0
        return math.nan, math.nan
    return total_loss / count, correct / count


def _progress(total, desc, enabled, initial=0):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                file=sys.stderr)


class _StopOnInterrupt:
    """While active (in the main thread), the first Ctrl-C asks the training loop to stop at the
    next step boundary, where a checkpoint can be saved; a second one stops at once."""

    requested = False

    def __enter__(self):
        self.requested, self._installed, self._previous = False, False, None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: stopping after this step to save a checkpoint (Ctrl-C again to stop at once)",
              file=sys.stderr)

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
        return False


_StopOnInterrupt.never = _StopOnInterrupt()  # for run() called without a handler: never requested


# ----------------------------------------------------------------------------------- the run


def check_out(out: Path, resume: bool, overwrite: bool):
    """A fresh run never replaces a run already in ``out`` unless told to (``--overwrite``)."""
    held = [name for name in (CHECKPOINT, SUMMARY) if (out / name).exists()]
    if resume or not held:
        return
    if not overwrite:
        state = "a finished run" if SUMMARY in held else "a run in progress"
        raise ConfigError(f"{out} already holds {state} ({', '.join(held)}); continue it with --resume, choose "
                          f"another --out, or pass --overwrite to replace it")
    for name in RUN_FILES:  # so that nothing of the old run is mistaken for the new one's
        (out / name).unlink(missing_ok=True)


def _setup(cfg: Config, team):
    """Data (each rank's slice of it), model (rank 0's weights), optimizer and schedule; a
    setting they refuse is a ConfigError."""
    try:
        train_loader, test_loader = load_data(cfg)
        train_loader, test_loader = team.shard(train_loader), team.shard(test_loader, evaluation=True)
        model = build_model(cfg, train_loader.dataset.images.shape[1:])
        team.bcast_parameters(model)
        check_micro_batching(cfg, model)
        optimizer = build_optimizer(cfg, model)
        schedule = build_schedule(cfg, optimizer, len(train_loader))
    except data.DatasetError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    return train_loader, test_loader, model, optimizer, schedule


def _restore(path, state, model, optimizer, schedule, train_loader, extra=None):
    """Load a checkpoint's states; one that does not fit this run is a CheckpointError naming
    the part (model, optimizer, schedule, loader, one of ``extra``, rng, history) and the
    reason. ``extra``: further {name: object with load_state_dict} saved under those names (the
    airbench recipe's lookahead), loaded after the loader."""
    part = "model"
    try:
        model.load_state_dict(state["model"])
        part = "optimizer"
        optimizer.load_state_dict(state["optimizer"])
        part = "schedule"
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
        part = "loader"
        train_loader.load_state_dict(state["loader"])
        for part, obj in (extra or {}).items():
            obj.load_state_dict(state[part])
        part = "rng"
        rng.set_state(state["rng"])
        part = "history"
        history = [dict(r) for r in state["history"]]
        epoch, elapsed = int(state["epoch"]), float(state["elapsed"])
        partial = state.get("partial")
        partial = None if partial is None else {k: partial[k] for k in ("loss_sum", "correct", "seen", "train_time")}
        if epoch != len(history) or any(r["epoch"] != i + 1 for i, r in enumerate(history)):
            raise ValueError(f"epoch {epoch} but a history of {len(history)} epochs")
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise _unfit(path, part, e) from None
    return history, elapsed, partial


def _unfit(path, part, e):
    """The CheckpointError for a checkpoint whose ``part`` state does not fit this run."""
    detail = e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) else e
    return CheckpointError(f"{path}: cannot resume from it: its {part} state does not fit this run "
                           f"({type(e).__name__}: {detail})")


def run(cfg: Config, log=print, command=None, overwrite=False, interrupt=None, team=None):
    """Train as ``cfg`` says; return the summary dict (also written to OUT/summary.json).

    Raises ``ConfigError`` for a setting that cannot work or an output folder holding another
    run (unless ``overwrite``), and ``CheckpointError`` for a checkpoint that cannot be resumed.
    ``interrupt`` (``main`` passes its Ctrl-C handler): once its ``requested`` is true, the run
    saves a checkpoint after the current step and raises ``Interrupted``. ``team``
    (``train.distributed``): the processes the run spans; by default this one. Every decision
    that ends a step or the run (budget, interrupt) is rank 0's, so all ranks take it together."""
    interrupt = interrupt or _StopOnInterrupt.never
    team = team or SingleProcess()
    if cfg.model in AIRBENCH_RECIPES:  # its own loop: train/airbench.py
        if team.size > 1:
            raise ConfigError(f"--model {cfg.model}: the airbench recipes run on one process (no --distributed)")
        return airbench.run(cfg, log=log, command=command, overwrite=overwrite, interrupt=interrupt)
    cfg = team.agree_config(cfg)  # rank 0's settings: its output directory may be the only one
    log = log if team.is_root else (lambda *args, **kwargs: None)
    check_config(cfg)
    out = Path(cfg.out)
    if team.is_root:
        check_out(out, cfg.resume, overwrite)
        out.mkdir(parents=True, exist_ok=True)
    rng.manual_seed(cfg.seed)
    train_loader, test_loader, model, optimizer, schedule = _setup(cfg, team)
    sync_batch_norm = uses_batch_statistics(model)  # its micro-batches are shards of one batch
    micro_batch, micro_threads = team.micro_batching(cfg, sync_batch_norm)
    params = list(model.parameters())
    history, elapsed, partial, budget_spent = [], 0.0, None, False

    if cfg.resume:
        state = team.load_checkpoint(load_checkpoint, out / CHECKPOINT)
        check_resumable(cfg, state["config"], out / CHECKPOINT)
        history, elapsed, partial = _restore(out / CHECKPOINT, state, model, optimizer, schedule, train_loader)
        budget_spent = bool(state.get("budget_spent", False))
        if partial is not None and not team.is_root:
            partial = dict(partial, loss_sum=0.0, correct=0, seen=0)  # the epoch's sums so far are rank 0's
        if team.is_root:
            write_metrics(out, history)
    elif team.is_root and (out / METRICS).exists():
        (out / METRICS).unlink()  # a fresh run starts a fresh log
    if team.size > 1:
        log(f"distributed: {team.size} ranks, each computing 1/{team.size} of every batch of {cfg.batch_size}")

    started = clock() - elapsed
    budget = None
    if cfg.budget is not None:
        evals = [r["eval_time"] for r in history if "eval_time" in r]
        budget = Budget(cfg.budget, spent=elapsed, clock=clock, eval_time=max(evals) if evals else None)
        budget_spent = team.agree(budget_spent or (bool(history) and partial is None and not budget.room_for_step()))
    if cfg.resume and partial is None and (len(history) >= cfg.epochs or budget_spent):
        done = team.agree(_finished_summary(out))  # rank 0's files decide
        if done is not None:  # nothing to train, nothing to rewrite
            log(f"nothing to do: the run in {out} finished ({len(history)} epochs"
                + (", its budget used" if budget_spent else "") + f"); its results are in {out / SUMMARY}")
            return done
    if cfg.resume:
        log(f"resumed from {out / CHECKPOINT} after epoch {len(history)}"
            + (f" and {partial['seen']} images of the next" if partial else ""))

    for epoch in range(len(history), cfg.epochs):
        if budget_spent:
            break
        t0 = clock()
        loss_sum, correct, seen = 0.0, 0, 0
        if partial is not None:  # resuming inside an epoch
            loss_sum, correct, seen = partial["loss_sum"], partial["correct"], partial["seen"]
            t0 -= partial["train_time"]
            partial = None
        total = "" if cfg.epochs == UNCAPPED else f"/{cfg.epochs}"
        bar = _progress(len(train_loader), f"epoch {epoch + 1}{total}", cfg.progress and team.is_root,
                        initial=-(-seen // cfg.batch_size))
        for x, y in train_loader:  # with several ranks: this rank's slice of each batch
            if budget is not None and not team.agree(budget.room_for_step()):
                budget_spent = True  # this step and the evaluation after it would not fit
                break
            step_start = clock()
            if budget is not None and schedule is not None:
                schedule.set_progress(team.agree(budget.progress()))  # rank 0's clock sets every rank's lr
            optimizer.zero_grad()
            scale = team.loss_scale(train_loader)  # 1, unless this rank's slice is not 1/N of the batch
            with team.sync_batch_norm():
                if micro_batch:
                    loss, logits = tc.parallel.accumulate_gradients(
                        lambda xb, yb: _loss_and_logits(model, xb, yb, cfg.label_smoothing, scale), (x, y), params,
                        micro_batch, micro_threads, sync_batch_norm=sync_batch_norm)
                else:
                    loss, logits = _loss_and_logits(model, x, y, cfg.label_smoothing, scale)
                    loss.backward()
                    loss = loss.item()
            loss /= scale
            team.reduce_gradients(params)
            optimizer.step()
            if budget is None and schedule is not None:
                schedule.step()
            loss_sum += loss * len(y)
            correct += int((logits.argmax(axis=1) == y).sum())
            seen += len(y)
            if budget is not None:
                budget.note_step(clock() - step_start, len(y), len(test_loader.dataset))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{seen * team.size / (clock() - t0):.0f}", refresh=False)
            if team.agree(interrupt.requested):
                interrupt.requested = True
                break
        if bar is not None:
            bar.close()
        train_time = clock() - t0
        if interrupt.requested and train_loader.state_dict()["batch"]:  # stopped inside the epoch
            loss_sum, correct, seen = team.sum(loss_sum, correct, seen)  # over every rank's slices
            partial = {"loss_sum": loss_sum, "correct": correct, "seen": seen, "train_time": train_time}
            if team.is_root:
                save_checkpoint(out / CHECKPOINT, cfg, model, optimizer, schedule, train_loader, history,
                                clock() - started, partial=partial)
            raise Interrupted(f"in epoch {epoch + 1}, after {seen} of its images")
        loss_sum, correct, seen = team.sum(loss_sum, correct, seen)  # over every rank's slices
        if seen == 0:  # the budget ended the run at an epoch boundary: the last evaluation stands
            break
        test_loss, test_acc = team.evaluate(evaluate, model, test_loader)
        elapsed = clock() - started
        record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                  "test_loss": test_loss, "test_acc": test_acc, "images": seen,
                  "lr": float(optimizer.param_groups[0]["lr"]), "train_time": train_time,
                  "eval_time": clock() - t0 - train_time, "wall_time": elapsed}
        record = team.agree(record)  # rank 0's timings, so that every rank plans the budget alike
        history.append(record)
        if budget is not None:
            budget.note_eval(record["eval_time"])
            budget_spent = team.agree(budget_spent or not budget.room_for_step())
        if team.is_root:  # the one writer: no file is ever written by two ranks
            save_checkpoint(out / CHECKPOINT, cfg, model, optimizer, schedule, train_loader, history, elapsed,
                            budget_spent=budget_spent)
            with open(out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
        log(f"epoch {epoch + 1:3d}  train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}  "
            f"test loss {test_loss:.4f} acc {test_acc:.4f}  {train_time:.1f}s (+{record['eval_time']:.1f}s eval)  "
            f"wall {elapsed:.0f}s")
        if interrupt.requested and epoch + 1 < cfg.epochs and not budget_spent:
            raise Interrupted(f"after epoch {epoch + 1}")

    summary = summarize(cfg, model, history)
    summary["command"] = command or ""
    if not team.is_root:
        return summary
    model.save(out / "model.npz")
    atomic_write(out / SUMMARY, lambda f: f.write(json.dumps(summary, indent=2).encode()))
    if history:
        from train.plots import plot_curves

        plot_curves({cfg.model: history}, out / "curves.png", title=f"{cfg.model} on {cfg.dataset}")
    log(format_summary(summary, out))
    return summary


def _finished_summary(out):
    """The summary of the finished run in ``out``, or None when its final files are incomplete
    (a run killed after its last checkpoint): then resuming writes them."""
    try:
        summary = json.loads((out / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and (out / "model.npz").exists() else None


def save_checkpoint(path, cfg, model, optimizer, schedule, loader, history, elapsed, partial=None,
                    budget_spent=False):
    """Everything to continue the run exactly: at an epoch boundary, or inside an epoch with
    ``partial`` (the epoch's running sums so far; the loader knows its position)."""
    save_state(path, {
        "format": 1, "config": asdict(cfg), "model_class": f"{type(model).__module__}:{type(model).__name__}",
        "epoch": len(history), "elapsed": elapsed, "history": history, "partial": partial,
        "budget_spent": budget_spent,
        "model": dict(model.state_dict()), "optimizer": optimizer.state_dict(),
        "schedule": None if schedule is None else schedule.state_dict(),
        "loader": loader.state_dict(), "rng": rng.get_state(),
    })


def load_checkpoint(path):
    if not Path(path).exists():
        raise CheckpointError(f"{path}: no checkpoint to resume from (run once without --resume)")
    state = load_state(path)
    missing = [k for k in ("model", "optimizer", "schedule", "loader", "rng", "history", "epoch", "elapsed")
               if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (missing {', '.join(missing)})")
    return state


# Settings that may change between a run and its resumption without changing the result.
FREE_ON_RESUME = {"resume", "progress", "out", "data", "eval_batch_size", "epochs", "tta_level", "epoch_eval"}


def check_resumable(cfg, saved, path):
    """Refuse to resume with settings that would make the run differ from an uninterrupted one."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: its 'config' is not a dict of settings")
    now = asdict(cfg)
    changed = [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in now if k not in FREE_ON_RESUME and saved.get(k) != now[k]]
    if now["epochs"] != saved.get("epochs") and cfg.schedule != "const" and cfg.budget is None:
        changed.append(f"epochs: {saved.get('epochs')!r} -> {now['epochs']!r} (the {cfg.schedule} schedule "
                       f"spans all epochs)")
    if changed:
        raise CheckpointError(f"{path}: cannot resume with different settings: " + "; ".join(changed))


def write_metrics(out, history):
    text = "".join(json.dumps(r) + "\n" for r in history).encode()
    atomic_write(Path(out) / METRICS, lambda f: f.write(text))


def summarize(cfg, model, history):
    last = history[-1] if history else {}
    return {"model": cfg.model, "dataset": cfg.dataset, "recipe": cfg.recipe, "parameters": model.num_parameters(),
            "epochs": len(history), "train_loss": last.get("train_loss"), "train_acc": last.get("train_acc"),
            "test_loss": last.get("test_loss"), "test_acc": last.get("test_acc"),
            "best_test_acc": max((r["test_acc"] for r in history), default=None),
            "wall_time": last.get("wall_time"), "config": asdict(cfg)}


def format_summary(s, out):
    if not s["epochs"]:
        return f"{s['model']}: no epoch completed"
    return "\n".join([
        "",
        f"{s['model']} on {s['dataset']} ({s['parameters']:,} parameters, recipe {s['recipe']})",
        f"  epochs      {s['epochs']}",
        f"  train       loss {s['train_loss']:.4f}  accuracy {100 * s['train_acc']:.2f}%",
        f"  test        loss {s['test_loss']:.4f}  accuracy {100 * s['test_acc']:.2f}%  "
        f"(best {100 * s['best_test_acc']:.2f}%)",
        f"  wall time   {s['wall_time']:.1f} s",
        f"  files       {out / METRICS}, {out / 'curves.png'}, {out / 'model.npz'}, {out / CHECKPOINT}",
    ])


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    reuse_freed_memory()  # big per-step arrays: reuse heap blocks instead of page-faulting fresh mmaps
    out = Path(args.out or f"runs/{args.model}")
    resume = f"python -m train.cifar10 --resume --out {out}"
    try:
        argv = sys.argv[1:] if argv is None else argv
        cfg = config_from_args(args, parser)
        team = team_from_args(args)
        with team.guard(), _StopOnInterrupt() as interrupt:  # under MPI a failing rank ends the job, naming itself
            run(cfg, command=" ".join(["python -m train.cifar10", *argv]), overwrite=args.overwrite,
                interrupt=interrupt, team=team)
    except (data.DatasetError, CheckpointError, ConfigError, OSError, LaunchError) as e:  # OSError: data not found
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"interrupted {e}; the checkpoint in {out} holds everything up to there: resume with `{resume}`",
              file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        if (out / CHECKPOINT).exists():
            print(f"interrupted; {out / CHECKPOINT} holds the last completed epoch (or step): resume with "
                  f"`{resume}`", file=sys.stderr)
        else:
            print("interrupted before the first checkpoint; nothing to resume, run the command again",
                  file=sys.stderr)
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
