"""The seed project's study, redone: a CNN against a fully connected network on CIFAR-10,
under the same wall-clock budget, written up as a markdown report with an overlay plot.

    python -m train.compare --budget 300 --data ../shared/data/cifar-10-binary.tar.gz
    python -m train.compare --report-only --extra runs/fast_cnn runs/seed_recipe
    python -m train.compare --report-only --extra ... --report docs/results.md   # the tracked copy

The report goes to ``OUT/results.md`` unless ``--report`` names another file: the tracked
``docs/results.md`` is only ever rewritten when asked for by name.

Each run is an ordinary ``train.cifar10`` run in ``OUT/<name>``; the report reads their
``summary.json`` and ``metrics.jsonl``, so runs made separately (``--extra``) join the table.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

from train import cifar10
from train.plots import epoch_positions, plot_curves
from tinygrad_cnn.io import atomic_write

# The seed project's published figures (its README): 90 epochs of plain gradient descent at
# batch 1000, "more than 12 hours"; the FC network was trained with Adam.
SEED_REFERENCE = [
    {"name": "seed CNN (published)", "epochs": 90, "train_acc": 0.3189, "test_acc": 0.322, "wall": "> 12 h",
     "parameters": 136874, "command": "the seed project's numpy code"},
    {"name": "seed FC (published)", "epochs": 90, "train_acc": None, "test_acc": 0.247, "wall": "—",
     "parameters": None, "command": "the seed project's numpy code"},
]


# What the figures were measured on: said in every report, as in the README.
DATA_NOTE = [
    "Data: every CIFAR-10 figure here comes from `shared/data/cifar-10-binary.tar.gz` (sha256 `8da5152f...`),",
    "the official binary layout *rebuilt from the public JPEG copy of CIFAR-10*: the JPEG round trip lowers",
    "accuracies a little, so the official archive gives somewhat higher figures with the same commands.",
    "Runs with `--dataset fashion-mnist` need Fashion-MNIST's files: `apt-get install -y dataset-fashion-mnist`",
    "(Debian's package, into `/usr/share/datasets/fashion-mnist/`).",
]


# The targets: (what, model, recipe, test accuracy at least, within seconds of wall time).
TARGETS = [
    ("SeedCNN, better recipe: >= 68% within 5 minutes", "seed_cnn", "default", 0.68, 300.0),
    ("Stronger CNN: >= 80% within 20 minutes", "fast_cnn", "default", 0.80, 1200.0),
    ("FC baseline: >= 50%", "fc", "default", 0.50, None),
]


def machine():
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"


def target_lines(runs):
    """One line per target: met or not, by which run (the first that meets it)."""
    lines = []
    for what, model, recipe, acc, seconds in TARGETS:
        hits = [(label, s) for label, s, _ in runs if s["model"] == model and s["recipe"] == recipe
                and s["test_acc"] is not None and s["test_acc"] >= acc
                and (seconds is None or s["wall_time"] <= seconds)]
        if hits:
            label, s = hits[0]
            lines.append(f"- {what}: **met** by {label}, {pct(s['test_acc'])} in {s['wall_time']:.0f} s")
        else:
            lines.append(f"- {what}: not met by the runs in this table")
    for label, s, history in runs:
        if s["recipe"] == "seed":
            accs = ", ".join(f"{100 * r['test_acc']:.1f}%" for r in history[:3])
            lines.append(f"- The seed's recipe reproduces its slow start: {label} reached {accs} after epochs "
                         f"1-3 (PyTorch with the same recipe: 12.1%, 14.1%, 15.5%), so the gain comes from "
                         f"correct gradients, the recipe and speed")
    return lines


class RunError(Exception):
    """A run directory that is not a finished ``train.cifar10`` run."""


def read_run(directory):
    """``(summary, history)`` of a finished run: its ``summary.json`` and the records of
    ``metrics.jsonl``, one per epoch."""
    directory = Path(directory)
    files = {name: directory / name for name in ("summary.json", cifar10.METRICS)}
    for path in files.values():
        if not path.is_file():
            raise RunError(f"train.compare: {directory} is not a finished run: {path.name} is missing")
    try:
        summary = json.loads(files["summary.json"].read_text())
        history = [json.loads(line) for line in files[cifar10.METRICS].read_text().splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"train.compare: {directory} has a corrupt summary.json or {cifar10.METRICS}: {e}") from None
    if not history:
        raise RunError(f"train.compare: {directory}/{cifar10.METRICS} has no epochs")
    return summary, history


def epochs_run(history):
    """Epochs trained, as the table shows them: 24.2 for a run its budget stopped inside
    its 25th epoch."""
    done = epoch_positions(history)[-1]
    return f"{done:.0f}" if abs(done - round(done)) < 0.05 else f"{done:.1f}"


def pct(v):
    return "—" if v is None else f"{100 * v:.1f}%"


def num(v, fmt="{:.3f}"):
    return "—" if v is None else fmt.format(v)


def write_report(runs, path, plot_path):
    """``runs``: [(label, summary, history)]. Writes the markdown table and the overlay plot."""
    plot_curves({label: history for label, _, history in runs}, plot_path, title="CIFAR-10: test (solid) and train (dashed)")
    lines = [
        "# Results: the seed's CNN-vs-FC study, redone",
        "",
        f"Machine: {machine()}. Train accuracy/loss are running averages over each epoch's (augmented)",
        "batches; test figures are on the 10,000 test images after the epoch. Wall time includes the",
        "per-epoch evaluation. Regenerate with the commands in the last column (and",
        "`python -m train.compare --report-only --extra DIR ... --report docs/results.md` for the table).",
        "",
        *DATA_NOTE,
        "",
        "| run | seed | epochs | train acc | test acc | train loss | test loss | wall time | parameters | command |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, s, history in runs:
        tta = f" (TTA {pct(s['tta_test_acc'])})" if s.get("tta_test_acc") is not None else ""  # airbench runs
        lines.append(f"| {label} | {s['config']['seed']} | {epochs_run(history)} | {pct(s['train_acc'])} | **{pct(s['test_acc'])}**{tta} | "
                     f"{num(s['train_loss'])} | {num(s['test_loss'])} | {s['wall_time']:.0f} s | "
                     f"{s['parameters']:,} | `{s.get('command', '')}` |")
    for r in SEED_REFERENCE:
        params = "—" if r["parameters"] is None else f"{r['parameters']:,}"
        lines.append(f"| {r['name']} | — | {r['epochs']} | {pct(r['train_acc'])} | {pct(r['test_acc'])} | — | — | "
                     f"{r['wall']} | {params} | {r['command']} |")
    lines += ["", "## Targets", ""] + target_lines(runs)
    lines += ["", f"![curves]({Path(plot_path).relative_to(Path(path).parent)})", ""]
    lines += ["## Per-epoch test accuracy", ""]
    for label, _, history in runs:
        accs = ", ".join("—" if r["test_acc"] is None else f"{100 * r['test_acc']:.1f}" for r in history)
        cut = epoch_positions(history)[-1] < len(history) - 1e-9  # the last epoch saw fewer images
        last = f", the last cut short by the budget after {history[-1]['images']:,} images" if cut else ""
        lines.append(f"- {label}: {accs} (%, epochs 1..{len(history)}{last}; wall {history[-1]['wall_time']:.0f} s)")
    text = "\n".join(lines) + "\n" + _hand_written(path)
    atomic_write(path, lambda f: f.write(text.encode()))


# Everything from this line on in a report is written by hand (figures of runs this study does
# not make), and a rewrite of the report keeps it.
HAND_WRITTEN = "<!-- written by hand from here on: train.compare keeps this part when it rewrites the report -->"


def _hand_written(path):
    """The hand-written tail of the report at ``path`` (from the ``HAND_WRITTEN`` line on), or ''."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return ""
    at = text.find(HAND_WRITTEN)
    return "" if at < 0 else "\n" + text[at:]


def collect_runs(args, out):
    """Run (unless ``--report-only``) and read the budget runs, then the ``--extra`` ones:
    ``[(label, summary, history)]``; None when a training run failed."""
    runs = []
    for name in ("seed_cnn", "fc"):
        run_dir = out / name
        if not args.report_only:
            argv_run = ["--model", name, "--budget", str(args.budget), "--seed", str(args.seed),
                        "--out", str(run_dir), "--no-progress"]
            if args.data:
                argv_run += ["--data", args.data]
            if args.overwrite:
                argv_run += ["--overwrite"]
            if cifar10.main(argv_run) != 0:
                return None
        if (run_dir / "summary.json").exists():
            s, h = read_run(run_dir)
            runs.append((f"{name} ({args.budget:.0f} s budget)", s, h))
    for d in args.extra:
        s, h = read_run(d)
        runs.append((f"{s['model']} ({Path(d).name})", s, h))
    return runs


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m train.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=300.0, help="wall-clock seconds per model (default: %(default)s)")
    p.add_argument("--data", help="CIFAR-10 archive or folder (default: $TINYGRAD_CNN_DATA, else the cache)")
    p.add_argument("--out", default="runs/compare",
                   help="folder of the runs, one subfolder per model (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default: %(default)s)")
    p.add_argument("--report", help="markdown report to write, its plot in img/ beside it (default: OUT/results.md; "
                   "docs/results.md updates the tracked copy)")
    p.add_argument("--extra", nargs="*", default=[], metavar="DIR",
                   help="more run directories to include in the table (default: none)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from existing runs")
    p.add_argument("--overwrite", action="store_true", help="replace runs already in OUT (without it, an error)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not args.report_only and not (args.budget > 0 and args.budget < float("inf")):
        print(f"error: --budget must be a finite number of seconds > 0; got {args.budget!r}", file=sys.stderr)
        return 2
    try:
        runs = collect_runs(args, out)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if runs is None:
        return 2
    if not runs:
        print("error: no finished runs to report", file=sys.stderr)
        return 2
    report = Path(args.report) if args.report else out / "results.md"
    write_report(runs, report, report.parent / "img" / "compare.png")
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
