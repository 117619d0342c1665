"""Training curves: accuracy and loss per epoch, train (dashed) vs test (solid), as in the
seed project's plot; several runs overlay in one figure."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from tinygrad_cnn.io import atomic_write  # noqa: E402


def epoch_positions(history):
    """Where each record falls in epochs: the images trained so far over the first epoch's
    (a run stopped by its wall-clock budget ends inside its last epoch, e.g. at 24.2).
    Records without an image count fall at their epoch number."""
    if not all("images" in r for r in history):
        return [r["epoch"] for r in history]
    seen, full, positions = 0, history[0]["images"], []
    for r in history:
        seen += r["images"]
        positions.append(seen / full)
    return positions


def plot_curves(runs: dict, path, title=None):
    """``runs``: {label: list of per-epoch metric dicts}. Writes a PNG atomically."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (label, history) in enumerate(runs.items()):
        color = f"C{i}"
        epochs = epoch_positions(history)
        # a run may evaluate only some epochs (airbench's --no-epoch-eval): test points where it did
        tested = [(e, r) for e, r in zip(epochs, history) if r.get("test_acc") is not None]
        ax_acc.plot([e for e, _ in tested], [100 * r["test_acc"] for _, r in tested], "-o", color=color, ms=3,
                    label=f"{label} test")
        ax_acc.plot(epochs, [100 * r["train_acc"] for r in history], "--", color=color, label=f"{label} train")
        ax_loss.plot([e for e, _ in tested], [r["test_loss"] for _, r in tested], "-o", color=color, ms=3,
                     label=f"{label} test")
        ax_loss.plot(epochs, [r["train_loss"] for r in history], "--", color=color, label=f"{label} train")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
