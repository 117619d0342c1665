"""The Hessian-vector-product benchmark runs end to end on a tiny batch and its HVP agrees
with PyTorch's when torch is installed (timings are never asserted)."""
from __future__ import annotations

import re

from benchmarks import hvp


def test_hvp_benchmark_runs(capsys):
    assert hvp.main(["--model", "seed_cnn", "--batch", "4", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"ours\s+gradient .* HVP/gradient \d+\.\d\d", out)
    agree = re.search(r"HVPs agree with torch to ([0-9.e+-]+)", out)
    if agree:  # torch installed: float32 products of two frameworks agree to rounding
        assert float(agree.group(1)) < 1e-3
