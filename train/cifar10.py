"""Train a model on CIFAR-10 (or Fashion-MNIST) with tinygrad_cnn.

    python -m train.cifar10 --model seed_cnn --epochs 10 --out runs/seed_cnn
    python -m train.cifar10 --model fast_cnn --budget 1200 --out runs/fast_cnn
    python -m train.cifar10 --model seed_cnn --recipe seed --epochs 3 --out runs/seed_recipe

Each epoch appends train/test loss and accuracy and timings to ``OUT/metrics.jsonl`` and
writes a checkpoint (model, optimizer, schedule, RNG states, epoch) atomically to
``OUT/checkpoint.npz``; ``--resume`` continues from it and, without ``--budget``, produces
exactly the metrics of an uninterrupted run. At the end: ``OUT/curves.png``, ``OUT/model.npz``
and a one-screen summary. ``--budget SECONDS`` trains for a wall-clock budget (evaluation
included) and runs the learning-rate schedule on elapsed time, so the schedule completes
whatever the machine's speed. Under ``mpiexec -n N`` the run spans N processes, each computing
its slice of every batch (``train/distributed.py``, ``docs/scaling.md``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

import tinygrad_cnn as tc
import tinygrad_cnn.functional as F
from tinygrad_cnn import data, optim, rng
from tinygrad_cnn.backend import reuse_freed_memory
from tinygrad_cnn.io import CheckpointError, atomic_write, load_state, save_state
from models import MODELS
from models.seed_cnn import seed_init
from train.distributed import DISTRIBUTED_HELP, LaunchError, SingleProcess, team_from_args

CHECKPOINT = "checkpoint.npz"
UNCAPPED = 10**6  # the epoch "limit" of a --budget run without --epochs
METRICS = "metrics.jsonl"

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
}
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


def build_parser():
    p = argparse.ArgumentParser(prog="python -m train.cifar10", description=__doc__.split("\n\n")[0])
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="dataset archive or directory (else $TINYGRAD_CNN_DATA, else ~/.cache/tinygrad_cnn)")
    p.add_argument("--out", default=None, help="output directory (default runs/<model>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    p.add_argument("--limit-train", type=int, help="train on the first N training images only")
    p.add_argument("--limit-test", type=int, help="evaluate on the first N test images only")
    p.add_argument("--budget", type=float, help="wall-clock budget in seconds (training + evaluation)")
    p.add_argument("--eval-batch-size", type=int, default=1000)
    p.add_argument("--micro-batch", type=int, help="compute each batch's gradient over micro-batches of this "
                   "size (same gradient, faster; 0: one pass per batch; with BatchNorm, at most one per "
                   "thread, which then share the batch's statistics)")
    p.add_argument("--micro-threads", type=int, help="micro-batches run at once, one per core")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action=argparse.BooleanOptionalAction, default=None, help=DISTRIBUTED_HELP)
    return p


def config_from_args(args, parser=None) -> Config:
    """Per-model defaults, then the recipe, then the flags given. With ``--resume``, the saved
    run's settings replace the defaults, so ``--resume --out DIR`` alone continues a run."""
    parser = parser or build_parser()
    given = {k: v for k, v in vars(args).items() if v is not None and v != parser.get_default(k)}
    out = args.out or f"runs/{args.model}"
    if args.resume and (Path(out) / CHECKPOINT).exists():
        values = dict(load_checkpoint(Path(out) / CHECKPOINT)["config"])
    else:
        values = dict(DEFAULTS[args.model], model=args.model, seed=args.seed, recipe=args.recipe)
        if args.recipe == "seed":
            if args.model != "seed_cnn":
                raise SystemExit("error: --recipe seed applies to --model seed_cnn only")
            values.update(SEED_RECIPE)
    values.update(given)
    values["micro_batch"] = resolve_micro_batch(values.get("micro_batch", 0), values["batch_size"],
                                                values.get("micro_threads", 1))
    if values.get("budget") is not None and "epochs" not in given and not args.resume:
        values["epochs"] = UNCAPPED  # with a budget and no --epochs, the clock alone ends the run
    values["progress"] = not args.no_progress
    values["out"] = out
    names = {f.name for f in fields(Config)}
    return Config(**{k: v for k, v in values.items() if k in names})


def resolve_micro_batch(micro_batch, batch_size, threads):
    """The micro-batch size in images (``PER_THREAD``: one micro-batch per thread)."""
    return -(-batch_size // max(1, threads)) if micro_batch == PER_THREAD else micro_batch


# ----------------------------------------------------------------------------------- pieces


def load_data(cfg: Config):
    if cfg.dataset == "cifar10":
        train = data.load_cifar10(cfg.data, split="train")
        test = data.load_cifar10(cfg.data, split="test")
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
    return any(isinstance(m, tc.nn.BatchNorm2d) for m in model.modules())


def check_micro_batching(cfg: Config, model):
    if cfg.micro_batch < 0 or cfg.micro_threads < 1:
        raise SystemExit(f"error: --micro-batch must be >= 0 and --micro-threads >= 1; got {cfg.micro_batch} "
                         f"and {cfg.micro_threads}")
    if cfg.micro_batch and uses_batch_statistics(model) and cfg.micro_batch * cfg.micro_threads < cfg.batch_size:
        raise SystemExit(f"error: --micro-batch {cfg.micro_batch}: {cfg.model} has BatchNorm layers, whose "
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
    return total_loss / max(count, 1), correct / max(count, 1)


def _progress(total, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True, file=sys.stderr)


# ----------------------------------------------------------------------------------- the run


def run(cfg: Config, log=print, command=None, team=None):
    """Train as ``cfg`` says; return the summary dict (also written to OUT/summary.json).
    ``team`` (``train.distributed``): the processes the run spans; by default this one."""
    team = team or SingleProcess()
    cfg = team.agree_config(cfg)  # rank 0's settings: its output directory may be the only one
    log = log if team.is_root else (lambda *args, **kwargs: None)
    out = Path(cfg.out)
    if team.is_root:
        out.mkdir(parents=True, exist_ok=True)
    rng.manual_seed(cfg.seed)
    train_loader, test_loader = load_data(cfg)
    train_loader, test_loader = team.shard(train_loader), team.shard(test_loader, evaluation=True)
    model = build_model(cfg, train_loader.dataset.images.shape[1:])
    team.bcast_parameters(model)
    check_micro_batching(cfg, model)
    sync_batch_norm = uses_batch_statistics(model)  # its micro-batches are shards of one batch
    micro_batch, micro_threads = team.micro_batching(cfg, sync_batch_norm)
    optimizer = build_optimizer(cfg, model)
    params = list(model.parameters())
    schedule = build_schedule(cfg, optimizer, len(train_loader))
    history, start_epoch, elapsed = [], 0, 0.0

    if cfg.resume:
        state = team.load_checkpoint(load_checkpoint, out / CHECKPOINT)
        check_resumable(cfg, state["config"], out / CHECKPOINT)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
        train_loader.load_state_dict(state["loader"])
        rng.set_state(state["rng"])
        history, start_epoch, elapsed = list(state["history"]), int(state["epoch"]), float(state["elapsed"])
        if team.is_root:
            write_metrics(out, history)
        log(f"resumed from {out / CHECKPOINT} after epoch {start_epoch}")
    elif team.is_root and (out / METRICS).exists():
        (out / METRICS).unlink()  # a fresh run starts a fresh log
    if team.size > 1:
        log(f"distributed: {team.size} ranks, each computing 1/{team.size} of every batch of {cfg.batch_size}")

    started = time.perf_counter() - elapsed
    out_of_time = False
    # With a budget, training stops early enough for the final evaluation to fit in it too
    # (estimated by the last evaluation's time), and the schedule runs over the training part.
    eval_reserve = 1.5 * history[-1]["eval_time"] if history else 0.0
    for epoch in range(start_epoch, cfg.epochs):
        if out_of_time:
            break
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        total = "" if cfg.epochs == UNCAPPED else f"/{cfg.epochs}"
        bar = _progress(len(train_loader), f"epoch {epoch + 1}{total}", cfg.progress and team.is_root)
        for x, y in train_loader:  # with several ranks: this rank's slice of each batch
            if cfg.budget is not None and schedule is not None:
                now = team.agree(time.perf_counter() - started)  # rank 0's clock sets every rank's lr
                schedule.set_progress(min(now / (cfg.budget - eval_reserve), 1.0))
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
            if cfg.budget is None and schedule is not None:
                schedule.step()
            loss_sum += loss * len(y)
            correct += int((logits.argmax(axis=1) == y).sum())
            seen += len(y)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{seen * team.size / (time.perf_counter() - t0):.0f}", refresh=False)
            if cfg.budget is not None and team.agree(time.perf_counter() - started) + eval_reserve >= cfg.budget:
                out_of_time = True
                break
        if bar is not None:
            bar.close()
        loss_sum, correct, seen = team.sum(loss_sum, correct, seen)  # over every rank's slices
        train_time = time.perf_counter() - t0
        test_loss, test_acc = team.evaluate(evaluate, model, test_loader)
        elapsed = time.perf_counter() - started
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                  "test_loss": test_loss, "test_acc": test_acc, "images": seen,
                  "lr": float(optimizer.param_groups[0]["lr"]), "train_time": train_time,
                  "eval_time": time.perf_counter() - t0 - train_time, "wall_time": elapsed}
        record = team.agree(record)  # rank 0's timings, so that every rank plans the budget alike
        history.append(record)
        eval_reserve = 1.5 * record["eval_time"]
        if team.is_root:  # the one writer: no file is ever written by two ranks
            save_checkpoint(out / CHECKPOINT, cfg, model, optimizer, schedule, train_loader, history, elapsed)
            with open(out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
        log(f"epoch {epoch + 1:3d}  train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}  "
            f"test loss {test_loss:.4f} acc {test_acc:.4f}  {train_time:.1f}s (+{record['eval_time']:.1f}s eval)  "
            f"wall {elapsed:.0f}s")

    summary = summarize(cfg, model, history)
    summary["command"] = command or ""
    if not team.is_root:
        return summary
    model.save(out / "model.npz")
    atomic_write(out / "summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))
    if history:
        from train.plots import plot_curves

        plot_curves({cfg.model: history}, out / "curves.png", title=f"{cfg.model} on {cfg.dataset}")
    log(format_summary(summary, out))
    return summary


def save_checkpoint(path, cfg, model, optimizer, schedule, loader, history, elapsed):
    save_state(path, {
        "format": 1, "config": asdict(cfg), "model_class": f"{type(model).__module__}:{type(model).__name__}",
        "epoch": history[-1]["epoch"], "elapsed": elapsed, "history": history,
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
FREE_ON_RESUME = {"resume", "progress", "out", "data", "eval_batch_size", "epochs"}


def check_resumable(cfg, saved, path):
    """Refuse to resume with settings that would make the run differ from an uninterrupted one."""
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
    try:
        argv = sys.argv[1:] if argv is None else argv
        team = team_from_args(args)
        with team.guard():  # under MPI: a rank that fails ends the job, naming itself
            run(config_from_args(args, parser), command=" ".join(["python -m train.cifar10", *argv]), team=team)
    except (data.DatasetError, CheckpointError, OSError, LaunchError) as e:  # OSError: data not found, download failed
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
