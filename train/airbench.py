"""The airbench recipes (Keller Jordan, 2024; github.com/KellerJordan/cifar10-airbench) on our
framework: what ``python -m train.cifar10 --model airbench94`` (or ``airbench93``) runs.

    python -m train.cifar10 --model airbench94 --data ../shared/data/cifar-10-binary.tar.gz \\
        --no-epoch-eval --seed 0 --out runs/airbench94-s0

The recipe, as framework pieces (docs/airbench.md):

- the network ``models.airbench`` with its whitening layer initialised from the first 5,000
  training images (``tinygrad_cnn.init.whitening_``), its bias trained for 3 epochs only;
- SGD with Nesterov momentum 0.85 in two parameter groups, BatchNorm shifts at 64x the lr,
  hyper-parameters in airbench's decoupled form (``optim.decoupled_sgd_groups``), on the
  label-smoothed (0.2) cross-entropy summed over the batch of 1,024;
- the learning rate warmed up linearly from 0.2x to 1x over the first 23% of steps, then down
  to 0.07x (``optim.LambdaLR`` of ``lr_factor``);
- lookahead: every 5 steps the weights and BatchNorm statistics move to their EMA, whose
  decay rises as 0.95^5 * (step / total)^3, and the model takes the EMA at the end
  (``tinygrad_cnn.lookahead.Lookahead``);
- augmentation: random translation by up to 2 pixels with reflect padding
  (``data.RandomCrop(padding_mode="reflect")``) and alternating flips
  (``data.AlternatingFlip``); batches drop the last incomplete one, as airbench;
- evaluation with test-time augmentation (``tinygrad_cnn.tta``: mirror + 1-pixel translations).

9.9 epochs for airbench94 (476 steps of 1,024) and 11 for airbench93 (528): the last epoch
stops at ``ceil(steps_per_epoch * epochs)`` steps. The wall time in ``metrics.jsonl`` counts
everything from loading the data to the end of the final TTA evaluation; ``--no-epoch-eval``
leaves out the per-epoch test evaluation (as the timed runs of airbench do).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import tinygrad_cnn as tc
import tinygrad_cnn.functional as F
from tinygrad_cnn import data, optim, rng, tta
from tinygrad_cnn.io import atomic_write, save_state
from tinygrad_cnn.lookahead import Lookahead


@dataclass(frozen=True)
class Recipe:
    """airbench's hyper-parameters (its ``hyp`` dict), one set per network."""

    widths: tuple
    epochs: float
    batch_size: int = 1024
    lr: float = 11.5              # per 1,024 examples, decoupled from the momentum
    momentum: float = 0.85
    weight_decay: float = 0.0153  # per 1,024 examples, decoupled from the lr
    bias_lr_scale: float = 64.0   # BatchNorm shifts learn 64x faster (their decay is not scaled)
    label_smoothing: float = 0.2
    whiten_bias_epochs: int = 3   # the whitening conv's bias trains for this many epochs, then freezes
    whiten_images: int = 5000     # training images whose patches set the whitening filters
    whiten_eps: float = 5e-4
    translate: int = 2            # random translation, pixels (reflect padding)
    bn_momentum: float = 0.6      # airbench's: the weight of the old running statistics
    logit_scale: float = 1 / 9
    tta_level: int = 2            # 0 none, 1 mirror, 2 mirror + translate
    warmup: float = 0.23          # fraction of the steps with a rising lr
    lr_start: float = 0.2         # lr factor at step 0
    lr_end: float = 0.07          # lr factor at the last step
    lookahead_every: int = 5
    lookahead_decay: float = 0.95 ** 5


RECIPES = {
    "airbench94": Recipe(widths=(64, 256, 256), epochs=9.9),
    "airbench93": Recipe(widths=(64, 128, 128), epochs=11.0),
}


def lr_factor(step, total_steps, warmup=0.23, start=0.2, end=0.07):
    """The lr multiplier at ``step`` (0-based): linear from ``start`` to 1 over the first
    ``int(warmup * total_steps)`` steps, then linear down to ``end`` at ``total_steps``."""
    rise = int(total_steps * warmup)
    if step < rise:
        frac = step / rise
        return start * (1 - frac) + frac
    frac = (step - rise) / max(total_steps - rise, 1)
    return (1 - frac) + end * frac


def lookahead_decay(step, total_steps, base=0.95 ** 5):
    """The lookahead's EMA decay after ``step`` optimizer steps: ``base * (step / total)^3``."""
    return base * (step / total_steps) ** 3


def total_steps(steps_per_epoch, epochs):
    return math.ceil(steps_per_epoch * epochs)


def normalize_images(images, mean, std):
    """uint8 (N, C, H, W) -> the float32 inputs the network sees."""
    return data.Normalize(mean, std)(images)


def build_optimizer(model, recipe: Recipe, batch_size, nesterov=True):
    """SGD, Nesterov, two groups: BatchNorm shifts (lr x ``bias_lr_scale``), and every other
    trainable parameter (conv and head weights, the whitening bias)."""
    from models.airbench import batch_norm_biases

    biases = batch_norm_biases(model)
    ids = {id(p) for p in biases}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = optim.decoupled_sgd_groups([{"params": biases, "lr_scale": recipe.bias_lr_scale},
                                         {"params": others}], recipe.lr, recipe.weight_decay,
                                        recipe.momentum, batch_size)
    return optim.SGD(groups, lr=groups[1]["lr"], momentum=recipe.momentum, nesterov=nesterov)


def train_transform(recipe: Recipe, seed, mean, std, size, augment=True):
    """Reflect-padded random translation and alternating flips (unless ``augment`` is off),
    then normalisation."""
    steps = [data.RandomCrop(size, padding=recipe.translate, padding_mode="reflect")] if recipe.translate else []
    steps = steps + [data.AlternatingFlip(seed)] if augment else []
    return data.Compose(steps + [data.Normalize(mean, std)])


def evaluate(model, images, labels, level, batch_size):
    """(mean cross-entropy, accuracy) of the model's TTA logits at ``level`` (0: plain)."""
    return _scores(tta.predict(model, images, level=level, batch_size=batch_size), labels)


def evaluate_plain_and_tta(model, images, labels, level, batch_size):
    """((loss, accuracy) of the images alone, (loss, accuracy) with TTA at ``level``), from one
    pass over the views (the first view is the image alone)."""
    logits, plain = tta.predict(model, images, level=level, batch_size=batch_size, return_plain=True)
    return _scores(plain, labels), _scores(logits, labels)


def _scores(logits, labels):
    """(mean cross-entropy, accuracy) of (N, classes) logits; NaNs for an empty test set."""
    if not len(labels):
        return float("nan"), float("nan")
    loss = F.cross_entropy(tc.Tensor(logits), labels).item()
    return loss, float((logits.argmax(axis=1) == labels).mean())


def _loss(model, x, y, label_smoothing, batch_size):
    """The label-smoothed cross-entropy summed over the batch, written as the micro-batch's mean
    times the whole batch's size: micro-batches then add up to the batch's sum."""
    logits = model(tc.Tensor(x))
    return F.cross_entropy(logits, y, label_smoothing=label_smoothing) * float(batch_size), logits.data


def _setup(cfg, recipe, datasets):
    """Data, model (whitening set), optimizer, schedule, lookahead; a setting they refuse is
    a ConfigError."""
    from models import MODELS
    from models.airbench import AirbenchNet
    from train.cifar10 import ConfigError

    if datasets is None:
        where = dict(download=cfg.data is None, progress=cfg.progress)  # a --data path must hold the archive
        datasets = data.load_cifar10(cfg.data, split="train", **where), data.load_cifar10(cfg.data, split="test", **where)
    train_set, test_set = datasets[0].head(cfg.limit_train), datasets[1].head(cfg.limit_test)
    if len(train_set) < cfg.batch_size:
        raise ConfigError(f"{len(train_set)} training images make no full batch of {cfg.batch_size} (the recipe "
                          f"drops incomplete batches); lower --batch-size or raise --limit-train")
    mean, std = data.CIFAR10_MEAN, data.CIFAR10_STD
    channels, size = train_set.images.shape[1], train_set.images.shape[-1]
    loader = data.DataLoader(train_set, cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed,
                             transform=train_transform(recipe, cfg.seed, mean, std, size, cfg.augment))
    epochs = recipe.epochs if cfg.epochs is None else cfg.epochs
    steps_total = total_steps(len(loader), epochs)
    net = dict(in_channels=channels, image_size=size, bn_momentum=recipe.bn_momentum, logit_scale=recipe.logit_scale)
    model = MODELS[cfg.model](**net)
    if model.widths != tuple(recipe.widths):  # a recipe given by a program, with its own widths
        model = AirbenchNet(recipe.widths, **net)
    model.init_whitening(normalize_images(train_set.images[:recipe.whiten_images], mean, std), recipe.whiten_eps)
    recipe = dataclasses.replace(recipe, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                 label_smoothing=cfg.label_smoothing)  # the flags' values (default: airbench's)
    optimizer = build_optimizer(model, recipe, cfg.batch_size, nesterov=cfg.nesterov)
    schedule = optim.LambdaLR(optimizer, functools.partial(lr_factor, total_steps=steps_total, warmup=recipe.warmup,
                                                           start=recipe.lr_start, end=recipe.lr_end))
    lookahead = Lookahead(model, every=recipe.lookahead_every,
                          decay=functools.partial(lookahead_decay, total_steps=steps_total, base=recipe.lookahead_decay))
    test_images = normalize_images(test_set.images, mean, std)
    return (loader, (test_images, test_set.labels), model, optimizer, schedule, lookahead, epochs, steps_total)


def _restore(path, state, model, optimizer, schedule, loader, lookahead):
    """train.cifar10's restore, with the lookahead's averages and the step count; a
    CheckpointError names the part that does not fit."""
    from train import cifar10 as cli

    history, elapsed, partial = cli._restore(path, state, model, optimizer, schedule, loader,
                                             extra={"lookahead": lookahead})
    try:
        steps = int(state["steps"])
        if lookahead.steps != steps:
            raise ValueError(f"{steps} steps with a lookahead at {lookahead.steps}")
    except (KeyError, ValueError, TypeError) as e:
        raise cli._unfit(path, "steps", e) from None
    return history, elapsed, steps, partial


def run(cfg, log=print, command=None, overwrite=False, interrupt=None, datasets=None, recipe=None):
    """Train with the airbench recipe named by ``cfg.model``. ``cfg`` is train.cifar10's Config
    (its DEFAULTS hold the recipe's lr, momentum, weight decay, label smoothing and batch size,
    which flags may change); ``overwrite`` and ``interrupt`` (Ctrl-C: a checkpoint after the
    current step, then ``Interrupted``) as train.cifar10's ``run``. Writes metrics.jsonl,
    checkpoints, curves, model.npz and summary.json; returns the summary. For programs and
    tests: ``datasets`` = (train, test) ArrayDatasets instead of reading ``cfg.data``, and
    ``recipe`` a ``Recipe`` instead of ``RECIPES[cfg.model]``."""
    from train import cifar10 as cli

    interrupt = interrupt or cli._StopOnInterrupt.never
    recipe = RECIPES[cfg.model] if recipe is None else recipe
    cli.check_config(cfg)
    if cfg.budget is not None:
        raise cli.ConfigError("--budget does not apply to the airbench recipes (their schedule is by step); use --epochs")
    if cfg.optimizer != "sgd" or cfg.dataset != "cifar10" or not cfg.normalize:
        raise cli.ConfigError(f"the {cfg.model} recipe trains with SGD on normalised CIFAR-10; got --optimizer "
                              f"{cfg.optimizer} --dataset {cfg.dataset}")
    if cfg.micro_batch and cfg.micro_batch * cfg.micro_threads < cfg.batch_size:
        raise cli.ConfigError(f"--micro-batch {cfg.micro_batch}: the batch of {cfg.batch_size} must run as at most "
                              f"--micro-threads {cfg.micro_threads} shards at once (its BatchNorm statistics are "
                              f"the whole batch's); use --micro-batch {-(-cfg.batch_size // cfg.micro_threads)} or 0")
    out = Path(cfg.out)
    started = cli.clock()  # the wall time counts the data loading and the whitening init too
    cli.check_out(out, cfg.resume, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    rng.manual_seed(cfg.seed)
    try:
        loader, (test_images, test_labels), model, optimizer, schedule, lookahead, epochs, steps_total = \
            _setup(cfg, recipe, datasets)
    except (ValueError, TypeError) as e:
        if isinstance(e, data.DatasetError):
            raise
        raise cli.ConfigError(str(e)) from None
    history, steps, partial = [], 0, None
    if cfg.resume:
        state = cli.load_checkpoint(out / cli.CHECKPOINT)
        cli.check_resumable(cfg, state["config"], out / cli.CHECKPOINT)
        history, elapsed, steps, partial = _restore(out / cli.CHECKPOINT, state, model, optimizer, schedule,
                                                    loader, lookahead)
        cli.write_metrics(out, history)
        started = cli.clock() - elapsed
        if partial is None and steps >= steps_total:
            done = cli._finished_summary(out)
            if done is not None:
                log(f"nothing to do: the run in {out} finished ({len(history)} epochs); its results are in "
                    f"{out / cli.SUMMARY}")
                return done
        log(f"resumed from {out / cli.CHECKPOINT} after epoch {len(history)}"
            + (f" and {partial['seen']} images of the next" if partial else ""))
    elif (out / cli.METRICS).exists():
        (out / cli.METRICS).unlink()  # a fresh run starts a fresh log

    n_epochs = math.ceil(epochs)
    for epoch in range(len(history), n_epochs):
        t0 = cli.clock()
        loss_sum, correct, seen = 0.0, 0, 0
        if partial is not None:  # resuming inside an epoch
            loss_sum, correct, seen, t0 = partial["loss_sum"], partial["correct"], partial["seen"], \
                t0 - partial["train_time"]
            partial = None
        model.train()
        model.whiten.bias.requires_grad = epoch < recipe.whiten_bias_epochs
        params = [p for p in model.parameters() if p.requires_grad]
        bar = cli._progress(min(len(loader), steps_total - steps + seen // cfg.batch_size),
                            f"epoch {epoch + 1}/{n_epochs}", cfg.progress, initial=seen // cfg.batch_size)
        for x, y in loader:
            optimizer.zero_grad()
            if cfg.micro_batch and cfg.micro_batch < len(y):  # shards of one batch, their BatchNorm in sync
                loss, logits = tc.parallel.accumulate_gradients(
                    lambda xb, yb: _loss(model, xb, yb, cfg.label_smoothing, len(y)), (x, y), params,
                    cfg.micro_batch, cfg.micro_threads, sync_batch_norm=True)
            else:
                loss, logits = _loss(model, x, y, cfg.label_smoothing, len(y))
                loss.backward()
                loss = loss.item()
            optimizer.step()
            schedule.step()
            steps += 1
            lookahead.step()
            if steps >= steps_total:
                lookahead.finish()
            loss_sum += loss
            correct += int((logits.argmax(axis=1) == y).sum())
            seen += len(y)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{seen / (cli.clock() - t0):.0f}", refresh=False)
            if steps >= steps_total or interrupt.requested:
                break
        if bar is not None:
            bar.close()
        train_time = cli.clock() - t0
        if interrupt.requested and steps < steps_total and loader.state_dict()["batch"]:  # inside the epoch
            partial = {"loss_sum": loss_sum, "correct": correct, "seen": seen, "train_time": train_time}
            save_checkpoint(out / cli.CHECKPOINT, cfg, model, optimizer, schedule, loader, lookahead, history,
                            cli.clock() - started, steps, partial)
            raise cli.Interrupted(f"in epoch {epoch + 1}, after {seen} of its images")
        last = epoch == n_epochs - 1
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                  "test_loss": None, "test_acc": None, "images": seen, "steps": steps,
                  "lr": float(optimizer.param_groups[1]["lr"]), "train_time": train_time}
        if last and cfg.tta_level:  # plain and TTA scores from one pass over the views
            (record["test_loss"], record["test_acc"]), (record["tta_test_loss"], record["tta_test_acc"]) = \
                evaluate_plain_and_tta(model, test_images, test_labels, cfg.tta_level, cfg.eval_batch_size)
        elif cfg.epoch_eval or last:
            record["test_loss"], record["test_acc"] = evaluate(model, test_images, test_labels, 0, cfg.eval_batch_size)
        elapsed = cli.clock() - started
        record["eval_time"] = cli.clock() - t0 - train_time
        record["wall_time"] = elapsed
        history.append(record)
        save_checkpoint(out / cli.CHECKPOINT, cfg, model, optimizer, schedule, loader, lookahead, history,
                        elapsed, steps)
        with open(out / cli.METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        test = "" if record["test_acc"] is None else f"  test loss {record['test_loss']:.4f} acc {record['test_acc']:.4f}"
        tta_text = f"  tta acc {record['tta_test_acc']:.4f}" if "tta_test_acc" in record else ""
        log(f"epoch {epoch + 1:3d}  train loss {record['train_loss']:.4f} acc {record['train_acc']:.4f}{test}"
            f"{tta_text}  {train_time:.1f}s (+{record['eval_time']:.1f}s eval)  wall {elapsed:.0f}s")
        if interrupt.requested and not last:
            raise cli.Interrupted(f"after epoch {epoch + 1}")

    last = history[-1] if history else {}
    evaluated = [r["test_acc"] for r in history if r["test_acc"] is not None]
    summary = {"model": cfg.model, "dataset": cfg.dataset, "recipe": cfg.model, "parameters": model.num_parameters(),
               "epochs": len(history), "steps": steps, "train_loss": last.get("train_loss"),
               "train_acc": last.get("train_acc"), "test_loss": last.get("test_loss"), "test_acc": last.get("test_acc"),
               "best_test_acc": max(evaluated, default=None), "tta_level": cfg.tta_level,
               "tta_test_acc": last.get("tta_test_acc"), "tta_test_loss": last.get("tta_test_loss"),
               "train_time": sum(r["train_time"] for r in history), "wall_time": last.get("wall_time"),
               "config": asdict(cfg), "recipe_settings": asdict(recipe), "command": command or ""}
    model.save(out / "model.npz")
    atomic_write(out / cli.SUMMARY, lambda f: f.write(json.dumps(summary, indent=2).encode()))
    if history:
        from train.plots import plot_curves

        plot_curves({cfg.model: history}, out / "curves.png", title=f"{cfg.model} on {cfg.dataset}")
    log(cli.format_summary(summary, out))
    if summary["tta_test_acc"] is not None:
        log(f"  TTA         level {cfg.tta_level}: accuracy {100 * summary['tta_test_acc']:.2f}%")
    return summary


def save_checkpoint(path, cfg, model, optimizer, schedule, loader, lookahead, history, elapsed, steps, partial=None):
    """train.cifar10's checkpoint, plus the step count and the lookahead's averages."""
    save_state(path, {
        "format": 1, "config": asdict(cfg), "model_class": f"{type(model).__module__}:{type(model).__name__}",
        "epoch": len(history), "elapsed": elapsed, "history": history, "partial": partial, "steps": steps,
        "model": dict(model.state_dict()), "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(), "loader": loader.state_dict(), "rng": rng.get_state(),
        "lookahead": lookahead.state_dict(),
    })
