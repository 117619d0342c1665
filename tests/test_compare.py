"""The CNN-vs-FC study's report (``python -m train.compare``): the table, the targets, the
per-epoch lines and the plot, from run directories as ``train.cifar10`` writes them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from train import compare
from train.plots import epoch_positions


def _write_run(directory, model, accs, images, wall_step=10.0, recipe="default", seed=0):
    """A finished run's summary.json and metrics.jsonl, in train.cifar10's format."""
    directory.mkdir(parents=True)
    records = [{"epoch": i + 1, "train_loss": 2.0 - 0.1 * i, "train_acc": a - 0.01, "test_loss": 1.5 - 0.1 * i,
                "test_acc": a, "images": n, "lr": 0.1, "train_time": wall_step - 1, "eval_time": 1.0,
                "wall_time": wall_step * (i + 1)} for i, (a, n) in enumerate(zip(accs, images))]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    last = records[-1]
    summary = {"model": model, "recipe": recipe, "parameters": 1234, "epochs": len(records),
               "train_loss": last["train_loss"], "train_acc": last["train_acc"], "test_loss": last["test_loss"],
               "test_acc": last["test_acc"], "wall_time": last["wall_time"], "config": {"seed": seed},
               "command": f"python -m train.cifar10 --model {model} --out {directory}"}
    (directory / "summary.json").write_text(json.dumps(summary))
    return directory


def _report(tmp_path, *args):
    report = tmp_path / "docs" / "results.md"
    rc = compare.main(["--report-only", "--out", str(tmp_path / "runs"), "--report", str(report), *args])
    return rc, report


def test_epoch_positions_count_a_budget_cut_epoch_as_a_fraction():
    history = [{"epoch": 1, "images": 50000}, {"epoch": 2, "images": 50000}, {"epoch": 3, "images": 12500}]
    assert epoch_positions(history) == [1.0, 2.0, 2.25]
    assert epoch_positions([{"epoch": 1}, {"epoch": 2}]) == [1, 2]  # records without image counts
    assert compare.epochs_run(history) == "2.2" and compare.epochs_run(history[:2]) == "2"


def test_report_table_targets_and_plot_from_run_directories(tmp_path):
    runs = tmp_path / "runs"
    _write_run(runs / "seed_cnn", "seed_cnn", [0.5, 0.65, 0.70], [50000, 50000, 10000], wall_step=100.0)
    _write_run(runs / "fc", "fc", [0.45, 0.48], [50000, 50000], wall_step=100.0)
    _write_run(tmp_path / "fast", "fast_cnn", [0.7, 0.79], [50000, 50000], wall_step=700.0)  # 1400 s: over 20 min
    _write_run(tmp_path / "slow_start", "seed_cnn", [0.14, 0.16, 0.18], [50000] * 3, recipe="seed")
    rc, report = _report(tmp_path, "--budget", "300", "--extra", str(tmp_path / "fast"), str(tmp_path / "slow_start"))
    assert rc == 0
    text = report.read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert rows["seed_cnn (300 s budget)"][2:5] == ["2.2", "69.0%", "**70.0%**"]  # the third epoch cut at a fifth
    assert rows["fc (300 s budget)"][2] == "2" and rows["fast_cnn (fast)"][7] == "1400 s"
    assert "`python -m train.cifar10 --model fast_cnn" in rows["fast_cnn (fast)"][-1]
    assert rows["seed CNN (published)"][4] == "32.2%"
    assert "- SeedCNN, better recipe: >= 68% within 5 minutes: **met** by seed_cnn (300 s budget), 70.0% in 300 s" in text
    assert "- Stronger CNN: >= 80% within 20 minutes: not met by the runs in this table" in text
    assert "- FC baseline: >= 50%: not met by the runs in this table" in text
    assert "seed_cnn (slow_start) reached 14.0%, 16.0%, 18.0% after epochs 1-3" in text
    assert ("- seed_cnn (300 s budget): 50.0, 65.0, 70.0 (%, epochs 1..3, the last cut short by the budget after "
            "10,000 images; wall 300 s)") in text
    assert "- fc (300 s budget): 45.0, 48.0 (%, epochs 1..2; wall 200 s)" in text
    assert (report.parent / "img" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](img/compare.png)" in text


def test_a_rewrite_keeps_the_hand_written_part_of_the_report(tmp_path):
    """Regression: ``--report docs/results.md`` used to replace the whole file, hand-written
    sections (short ResNet runs, airbench) included."""
    _write_run(tmp_path / "runs" / "seed_cnn", "seed_cnn", [0.5, 0.6], [50000, 50000])
    rc, report = _report(tmp_path)
    assert rc == 0 and compare.HAND_WRITTEN not in report.read_text()
    hand = f"{compare.HAND_WRITTEN}\n\n## By hand\n\n| a row | 90% |\n"
    report.write_text(report.read_text() + "\n" + hand)
    _write_run(tmp_path / "runs" / "fc", "fc", [0.45], [50000])
    rc, _ = _report(tmp_path)
    text = report.read_text()
    assert rc == 0 and text.endswith(hand) and text.count(compare.HAND_WRITTEN) == 1
    assert "| fc (" in text  # the generated part was rewritten


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "summary.json").unlink(), "is not a finished run: summary.json is missing"),
    (lambda d: (d / "metrics.jsonl").write_text('{"epoch": 1, "test_acc"'), "has a corrupt summary.json or metrics.jsonl"),
    (lambda d: (d / "summary.json").write_bytes(b"\xff\xfe{"), "has a corrupt summary.json or metrics.jsonl"),
    (lambda d: (d / "metrics.jsonl").write_text(""), "metrics.jsonl has no epochs"),
])
def test_a_missing_or_corrupt_run_is_an_error_that_names_it(tmp_path, capsys, damage, message):
    run = _write_run(tmp_path / "broken", "fast_cnn", [0.8], [50000])
    damage(run)
    rc, report = _report(tmp_path, "--extra", str(run))
    assert rc == 2 and not report.exists()
    err = capsys.readouterr().err
    assert str(run) in err and message in err


def test_no_runs_to_report_is_an_error(tmp_path, capsys):
    rc, report = _report(tmp_path)
    assert rc == 2 and not report.exists()
    assert "no finished runs to report" in capsys.readouterr().err


def test_without_report_only_it_trains_both_models_under_the_budget(tmp_path, monkeypatch):
    calls = []

    def fake_main(argv):
        calls.append(argv)
        out = argv[argv.index("--out") + 1]
        model = argv[argv.index("--model") + 1]
        _write_run(Path(out), model, [0.6], [50000])
        return 0

    monkeypatch.setattr(compare.cifar10, "main", fake_main)
    report = tmp_path / "results.md"
    assert compare.main(["--budget", "60", "--seed", "3", "--data", "DATA", "--out", str(tmp_path / "runs"),
                         "--report", str(report)]) == 0
    assert calls == [["--model", m, "--budget", "60.0", "--seed", "3", "--out", str(tmp_path / "runs" / m),
                      "--no-progress", "--data", "DATA"] for m in ("seed_cnn", "fc")]
    assert "| seed_cnn (60 s budget) |" in report.read_text()


def test_a_failed_training_run_stops_the_study(tmp_path, monkeypatch):
    monkeypatch.setattr(compare.cifar10, "main", lambda argv: 2)
    report = tmp_path / "results.md"
    assert compare.main(["--out", str(tmp_path / "runs"), "--report", str(report)]) == 2
    assert not report.exists()


def test_the_report_goes_beside_the_runs_unless_the_tracked_copy_is_named(tmp_path, monkeypatch):
    """By default it used to overwrite the tracked docs/results.md of wherever it ran."""
    runs = tmp_path / "runs"
    _write_run(runs / "seed_cnn", "seed_cnn", [0.5, 0.7], [50000, 50000])
    tracked = tmp_path / "docs" / "results.md"
    tracked.parent.mkdir()
    tracked.write_text("the tracked report")
    monkeypatch.chdir(tmp_path)
    assert compare.main(["--report-only", "--out", str(runs)]) == 0
    assert tracked.read_text() == "the tracked report"
    assert "| seed_cnn (300 s budget) |" in (runs / "results.md").read_text()
    assert (runs / "img" / "compare.png").is_file()
    assert compare.main(["--report-only", "--out", str(runs), "--report", "docs/results.md"]) == 0
    assert "| seed_cnn (300 s budget) |" in tracked.read_text()


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        compare.main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 300.0)", "(default: runs/compare)", "(default: 0)", "default: OUT/results.md",
                    "default: $TINYGRAD_CNN_DATA"):
        assert default in text, default


@pytest.mark.parametrize("budget", ["nan", "inf", "0", "-5"])
def test_a_bad_budget_is_an_error_line(budget, capsys, tmp_path):
    assert compare.main(["--budget", budget, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --budget must be a finite number of seconds > 0") and len(err.splitlines()) == 1


def test_reports_and_the_readme_say_which_data_the_figures_come_from(tmp_path):
    """The figures come from a JPEG-rebuilt archive, and Fashion-MNIST needs a Debian package:
    the README, the tracked report and every regenerated one say so."""
    runs = tmp_path / "runs"
    _write_run(runs / "seed_cnn", "seed_cnn", [0.5, 0.7], [50000, 50000])
    rc, report = _report(tmp_path)
    assert rc == 0
    root = Path(__file__).resolve().parents[1]
    for text in (report.read_text(), (root / "docs" / "results.md").read_text(), (root / "README.md").read_text()):
        flat = " ".join(text.split())
        assert "rebuilt from the public JPEG copy of CIFAR-10" in flat
        assert "apt-get install -y dataset-fashion-mnist" in flat
    assert "\n".join(compare.DATA_NOTE) in (root / "docs" / "results.md").read_text()
