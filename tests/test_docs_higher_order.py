"""docs/higher-order.md runs: every ```python block, in order, in one namespace, in a fresh
working directory."""
from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "higher-order.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_every_python_block_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = BLOCK.findall(DOC.read_text())
    assert len(blocks) == 4
    namespace = {"__name__": "__higher_order__"}
    for i, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{DOC.name} block {i}", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message says which block failed
            raise AssertionError(f"higher-order.md block {i} failed: {type(e).__name__}: {e}\n{block}") from e
    out = capsys.readouterr().out
    assert "step 7:" in out and "ops in the graph of the 4th derivative" in out
    assert "digraph" in (tmp_path / "tanh_4th_derivative.dot").read_text()
    assert "penalty" in out


def test_the_readme_ten_lines_run(capsys):
    readme = DOC.parents[1] / "README.md"
    (block,) = re.findall(r"## Ten lines\n\n```python\n(.*?)^```", readme.read_text(), re.S | re.M)
    exec(compile(block, "README.md ten lines", "exec"), {"__name__": "__readme__"})
    assert "(16, 3, 3, 3)" in capsys.readouterr().out
