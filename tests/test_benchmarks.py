"""The benchmark harness runs end to end on a tiny batch (timings are never asserted)."""
from __future__ import annotations

import json

import pytest

from benchmarks import step


@pytest.mark.parametrize("model,micro", [("seed_cnn", "4"), ("fast_cnn", "0")])
def test_step_benchmark_runs_and_writes_json(tmp_path, capsys, model, micro):
    out = tmp_path / "bench.json"
    assert step.main(["--model", model, "--batch", "8", "--steps", "2", "--rounds", "1",
                      "--micro-batch", micro, "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    assert r["model"] == model and r["batch"] == 8 and r["steps"] == 2
    assert r["ours_ms"][0] > 0 and r["gemm_bound_ms"] > 0 and r["graph_saved_mb"] > 0
    assert set(r["split_ms"]) >= {"matmul", "im2col", "col2im", "max_pool2d", "batch_norm", "optimizer",
                                  "graph bookkeeping", "elementwise/other ops"}
    assert ("micro" in r) == (micro != "0")
    if micro != "0":
        assert r["micro"]["micro_batch"] == 4 and r["micro"]["ours_ms"][0] > 0
    text = capsys.readouterr().out
    assert "ours   training step" in text and "GEMM-only bound" in text


def test_the_training_script_and_the_benchmark_agree_on_micro_batches():
    import train.cifar10 as tr

    def script(*args):
        return tr.config_from_args(tr.build_parser().parse_args(list(args))).micro_batch

    assert step.training_micro_batch("seed_cnn", 128) == script("--model", "seed_cnn") == 64
    assert step.training_micro_batch("seed_cnn", 1000) == script("--model", "seed_cnn", "--recipe", "seed") == 250
    assert step.training_micro_batch("fast_cnn", 128) == script("--model", "fast_cnn") == 64  # one per thread
    assert step.training_micro_batch("fast_cnn", 200) == script("--model", "fast_cnn", "--batch-size", "200") == 100


@pytest.mark.parametrize("flag, value, low", [("--batch", "0", 1), ("--batch", "-8", 1), ("--steps", "0", 1),
                                              ("--rounds", "0", 1), ("--threads", "0", 1), ("--micro-batch", "-1", 0),
                                              ("--micro-threads", "0", 1), ("--steps", "2.5", 1)])
def test_every_count_is_checked_by_the_parser(capsys, flag, value, low):
    with pytest.raises(SystemExit) as info:
        step.main([flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}: must be an integer >= {low}; got '{value}'" in err and "Traceback" not in err


def test_saved_bytes_counts_each_block_a_graph_keeps_once():
    import numpy as np

    import tinygrad_cnn as tc

    x = tc.Tensor(np.ones((10, 10)), requires_grad=True)  # 800 bytes
    y = x.reshape(100)  # a view of x: the same memory
    loss = (y * y).sum()  # mul reads y twice, sum reads y * y (800 bytes more)
    assert step.saved_bytes(loss) == 800 + 800


def test_layers_benchmark_runs_a_tiny_case_and_writes_json(tmp_path, capsys):
    from benchmarks import layers

    out = tmp_path / "layers.json"
    assert layers.main(["depthwise3x3", "conv_transpose4x4s2", "avg_pool2d_3x3_s2_p1", "--batch", "2", "--steps", "1", "--rounds", "1",
                        "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [r["case"] for r in results] == ["depthwise3x3", "conv_transpose4x4s2", "avg_pool2d_3x3_s2_p1"]
    assert all(r["input"][0] == 2 and r["ours_ms"] > 0 for r in results)
    text = capsys.readouterr().out
    assert "depthwise3x3" in text and "ours ms" in text


def test_layers_benchmark_rejects_an_unknown_case(capsys):
    from benchmarks import layers

    with pytest.raises(SystemExit) as info:
        layers.main(["no_such_layer"])
    assert info.value.code == 2
    assert "error: unknown case 'no_such_layer'" in capsys.readouterr().err
