"""docs/tutorial.md runs: every ```python block, in order, in one namespace, in a fresh
working directory. Skipped cleanly when Fashion-MNIST (which the tutorial trains on) is not
installed; the graph step needs Graphviz's ``dot``."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import have_fashion_mnist

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks():
    return BLOCK.findall(TUTORIAL.read_text())




def test_tutorial_has_the_promised_steps():
    text = TUTORIAL.read_text()
    code = "\n".join(_blocks())
    assert len(_blocks()) >= 8
    assert "pip install" in text and "python -m train.cifar10" in text
    for needle in ("class SmallCNN(nn.Module)", "def forward", "data.DataLoader(", "F.cross_entropy(",
                   "loss.backward()", "optimizer.step()", "plot_curves(", ".save(", ".load(",
                   "from tinygrad_cnn.viz import draw_graph", "main(["):
        assert needle in code, needle
    # every block is valid Python on its own
    for i, block in enumerate(_blocks()):
        compile(block, f"tutorial block {i + 1}", "exec")


@pytest.mark.skipif(not have_fashion_mnist(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot not installed")
def test_every_python_block_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TINYGRAD_CNN_DATA", raising=False)
    namespace = {"__name__": "__tutorial__"}
    for i, block in enumerate(_blocks(), 1):
        try:
            exec(compile(block, f"{TUTORIAL.name} block {i}", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message says which block failed
            raise AssertionError(f"tutorial block {i} failed: {type(e).__name__}: {e}\n{block}") from e
    out = capsys.readouterr().out

    # what the page promises actually happened
    history = namespace["history"]
    assert len(history) == 2
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_acc"] > 0.6, history
    assert "reloaded model gives identical logits: True" in out
    assert namespace["same"] is True
    for name in ("curves.png", "small_cnn.npz", "checkpoint.npz", "small_cnn.svg"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in (tmp_path / "small_cnn.svg").read_text()
    assert namespace["code"] == 0
    run = tmp_path / "runs" / "fmnist"
    for name in ("metrics.jsonl", "curves.png", "model.npz", "checkpoint.npz", "summary.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"] == "fashion-mnist" and summary["epochs"] == 1
    assert np.isfinite(summary["test_loss"])
