"""train/cifar10.py end to end, kept fast: 512 training and 500 test images, 2 epochs of batch 32.

The CIFAR-10 reader insists on the official layout (10,000 records per ``.bin`` member), so a
tiny fabricated archive is refused by the training script; these tests read the real archive
(``$TINYGRAD_CNN_DATA`` / the cache, else ``shared/data/cifar-10-binary.tar.gz`` beside the
repository, where CI has it) with
``--limit-train 512 --limit-test 500`` and skip cleanly when it is absent. Reading a split
means decompressing the whole archive (~1 s), so the first run reads it and later runs in this
module reuse copies of what it read (see ``_cached_load_cifar10``).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinygrad_cnn import data
from data_fixtures import have_fashion_mnist
from tinygrad_cnn.io import load_arrays
from models import SeedCNN

import train.cifar10 as tr

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_archive(repo_root=REPO_ROOT):
    """Where CI has the archive: it runs in a fresh clone with a copy of shared/ beside it."""
    return Path(repo_root).parent / "shared" / "data" / "cifar-10-binary.tar.gz"

METRIC_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "images", "lr",
               "train_time", "eval_time", "wall_time"}
TIME_KEYS = {"train_time", "eval_time", "wall_time"}


def _find_archive(repo_root=REPO_ROOT):
    for where in (None, shared_archive(repo_root)):
        try:
            return data.find_cifar10(where, download=False)
        except FileNotFoundError:
            continue
    return None


ARCHIVE = _find_archive()
needs_cifar = pytest.mark.skipif(ARCHIVE is None, reason="CIFAR-10 binary archive not available")


def _args(out, *extra, epochs=2):
    """A small seed_cnn run; each batch of 32 is split into micro-batches of 8 on two threads
    (as the default recipe does with 64 of 128), so the runs below check that path too."""
    return ["--model", "seed_cnn", "--data", str(ARCHIVE), "--limit-train", "512", "--limit-test", "500",
            "--epochs", str(epochs), "--batch-size", "32", "--micro-batch", "8", "--no-progress",
            "--out", str(out), *extra]


def _metrics(out):
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _without_times(records):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in records]


def _assert_same_model(a, b):
    ma, mb = load_arrays(Path(a) / "model.npz"), load_arrays(Path(b) / "model.npz")
    assert sorted(ma) == sorted(mb)
    for k in ma:
        np.testing.assert_array_equal(ma[k], mb[k], err_msg=k)


_READ_CACHE: dict = {}
_real_load_cifar10 = data.load_cifar10


def _cached_load_cifar10(path=None, split="train", **kwargs):
    """``data.load_cifar10`` read once per (path, split, options) in this module: the first run
    goes through the real reader; later runs get fresh copies of the same arrays, which saves
    ~2 s of decompression per run."""
    key = (str(path), split, tuple(sorted(kwargs.items())))
    if key not in _READ_CACHE:
        _READ_CACHE[key] = _real_load_cifar10(path, split, **kwargs)
    d = _READ_CACHE[key]
    return data.ArrayDataset(d.images.copy(), d.labels.copy(), d.classes)


@pytest.fixture(autouse=True)
def _read_archive_once(monkeypatch):
    monkeypatch.setattr(data, "load_cifar10", _cached_load_cifar10)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted 2-epoch run with the default seed_cnn recipe (Adam, onecycle, augment)."""
    if ARCHIVE is None:
        pytest.skip("CIFAR-10 binary archive not available")
    out = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "load_cifar10", _cached_load_cifar10)
        assert tr.main(_args(out)) == 0
    return out


def test_the_archive_is_found_in_shared_beside_any_clone(tmp_path, monkeypatch):
    """It used to be looked for at an absolute path of one build machine only, so the tests on
    the real archive were always skipped in CI."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    clone = tmp_path / "ci" / "clone"
    clone.mkdir(parents=True)
    assert _find_archive(clone) is None  # truly absent: then (and only then) the tests skip
    archive = tmp_path / "ci" / "shared" / "data" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"")
    assert _find_archive(clone) == archive


# ------------------------------------------------------------------------ smoke run


@needs_cifar
def test_smoke_run_learns_and_writes_its_files(reference_run):
    out = reference_run
    records = _metrics(out)
    assert len(records) == 2
    for i, r in enumerate(records, 1):
        assert set(r) == METRIC_KEYS
        assert r["epoch"] == i and r["images"] == 512
        assert all(np.isfinite(r[k]) for k in METRIC_KEYS)
        assert r["train_time"] > 0 and r["eval_time"] > 0
    assert records[1]["wall_time"] > records[0]["wall_time"]
    assert records[1]["train_loss"] < records[0]["train_loss"], "training loss did not fall"
    assert records[1]["test_loss"] < records[0]["test_loss"], "test loss did not fall"
    assert records[0]["train_loss"] < np.log(10) + 0.1  # started near chance, not diverging
    # 2 x 16 steps of batch 32: seeds 0-3 reach 19-25% on these 500 test images (chance: 10%)
    assert records[-1]["test_acc"] > 0.15, "test accuracy is not above chance (0.10)"

    for name in ("metrics.jsonl", "curves.png", "model.npz", "checkpoint.npz", "summary.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp")]  # atomic writes cleaned up

    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "seed_cnn" and summary["parameters"] == 136_874 and summary["epochs"] == 2
    assert summary["test_acc"] == records[-1]["test_acc"]
    assert summary["best_test_acc"] == max(r["test_acc"] for r in records)

    model = SeedCNN()
    model.load(out / "model.npz")  # strict: the names and shapes of a SeedCNN
    state = tr.load_checkpoint(out / "checkpoint.npz")
    assert state["epoch"] == 2 and _without_times(state["history"]) == _without_times(records)
    assert state["config"]["model"] == "seed_cnn" and state["config"]["limit_train"] == 512
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(state["model"][k], v)
    assert state["optimizer"]["state"], "optimizer state (Adam moments) missing from the checkpoint"


@needs_cifar
def test_same_seed_gives_identical_metrics_and_weights(reference_run, tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"stale": true}\n')  # a fresh run starts a fresh log
    assert tr.main(_args(out)) == 0
    again = _metrics(out)
    assert len(again) == 2
    assert _without_times(again) == _without_times(_metrics(reference_run))
    _assert_same_model(out, reference_run)


def _interrupt_after_first_checkpoint(out, monkeypatch):
    """Start the reference 2-epoch run in ``out`` and kill it right after epoch 1's checkpoint."""
    real_save = tr.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # the machine goes away after the first checkpoint

    monkeypatch.setattr(tr, "save_checkpoint", save_then_die)
    assert tr.main(_args(out)) == tr.INTERRUPTED  # a message saying how to resume, not a traceback
    monkeypatch.setattr(tr, "save_checkpoint", real_save)


@needs_cifar
def test_resume_after_an_interruption_equals_the_uninterrupted_run(reference_run, tmp_path, monkeypatch):
    """A 2-epoch run killed right after epoch 1's checkpoint, then ``--resume``d, gives exactly
    the metrics and weights of the uninterrupted run (onecycle schedule, Adam, augmentation)."""
    out = tmp_path / "interrupted"
    _interrupt_after_first_checkpoint(out, monkeypatch)
    assert (out / "checkpoint.npz").exists() and not (out / "model.npz").exists()
    assert tr.load_checkpoint(out / "checkpoint.npz")["epoch"] == 1

    assert tr.main(_args(out, "--resume")) == 0
    resumed = _metrics(out)
    assert len(resumed) == 2
    assert _without_times(resumed) == _without_times(_metrics(reference_run))
    _assert_same_model(out, reference_run)


@needs_cifar
def test_resume_needs_only_the_output_directory(reference_run, tmp_path, monkeypatch):
    """``--resume --out DIR`` alone continues with the saved run's settings (model, data,
    limits, batch size, epochs), not the command line's defaults."""
    out = tmp_path / "bare"
    _interrupt_after_first_checkpoint(out, monkeypatch)
    assert tr.main(["--resume", "--out", str(out), "--no-progress"]) == 0
    assert _without_times(_metrics(out)) == _without_times(_metrics(reference_run))
    _assert_same_model(out, reference_run)


@needs_cifar
def test_one_epoch_then_resume_to_two_equals_two_epochs(tmp_path):
    """``--epochs 1`` then ``--resume --epochs 2`` == ``--epochs 2`` for a schedule that does not
    depend on the epoch count (here const; onecycle/cosine refuse to be extended, see below)."""
    const = ("--schedule", "const", "--lr", "2e-3")
    a, b = tmp_path / "straight", tmp_path / "pieces"
    assert tr.main(_args(a, *const, epochs=2)) == 0
    logs = []
    summary = tr.run(tr.config_from_args(tr.build_parser().parse_args(_args(b, *const, epochs=1))),
                     log=logs.append)
    assert summary["epochs"] == 1 and len(_metrics(b)) == 1
    assert tr.main(_args(b, *const, "--resume", epochs=2)) == 0
    straight, pieces = _metrics(a), _metrics(b)
    assert len(pieces) == 2
    assert _without_times(pieces) == _without_times(straight)
    _assert_same_model(a, b)


@needs_cifar
def test_resume_refuses_to_stretch_a_onecycle_schedule(reference_run, tmp_path, capsys):
    out = tmp_path / "stretch"
    shutil.copytree(reference_run, out)
    before = (out / "checkpoint.npz").read_bytes()
    assert tr.main(_args(out, "--resume", epochs=3)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
    assert "epochs" in err and "checkpoint.npz" in err
    assert (out / "checkpoint.npz").read_bytes() == before


@needs_cifar
def test_resume_without_checkpoint_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "empty"
    code = tr.main(_args(out, "--resume"))
    assert code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error:") and "checkpoint" in err and str(out) in err
    assert "Traceback" not in captured.err


@needs_cifar
def test_corrupt_checkpoint_on_resume_is_a_one_line_error(reference_run, tmp_path, capsys):
    out = tmp_path / "corrupt"
    shutil.copytree(reference_run, out)
    raw = (out / "checkpoint.npz").read_bytes()
    (out / "checkpoint.npz").write_bytes(raw[: len(raw) // 3])
    assert tr.main(_args(out, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "checkpoint.npz" in err


def test_missing_dataset_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "no-such-dir"
    missing.mkdir()
    code = tr.main(["--dataset", "fashion-mnist", "--model", "fc", "--data", str(missing), "--epochs", "1",
                    "--no-progress", "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and str(missing) in err


# ------------------------------------------------------------------------ configuration


def _config(*argv):
    return tr.config_from_args(tr.build_parser().parse_args(list(argv)))


def test_seed_recipe_sets_the_seed_projects_settings():
    cfg = _config("--model", "seed_cnn", "--recipe", "seed")
    assert cfg.recipe == "seed"
    assert cfg.batch_size == 1000 and cfg.optimizer == "sgd" and cfg.lr == 1e-3
    assert cfg.momentum == 0.0 and not cfg.nesterov and cfg.weight_decay == 0.0
    assert cfg.schedule == "const" and cfg.augment is False and cfg.normalize is False
    assert cfg.label_smoothing == 0.0
    assert (cfg.micro_batch, cfg.micro_threads) == (250, 2)  # the batch of 1000 in four parts, two at once
    # the model gets the seed's initialisation, from the run's seed
    manual = SeedCNN()
    from models.seed_cnn import seed_init
    seed_init(manual, np.random.default_rng(cfg.seed))
    built = tr.build_model(cfg, (3, 32, 32))
    for k, v in manual.state_dict().items():
        np.testing.assert_array_equal(built.state_dict()[k], v)
    opt = tr.build_optimizer(cfg, built)
    assert type(opt).__name__ == "SGD" and opt.param_groups[0]["momentum"] == 0.0
    assert tr.build_schedule(cfg, opt, 50) is None
    # a flag on the command line still wins over the recipe
    assert _config("--recipe", "seed", "--epochs", "3", "--batch-size", "500").batch_size == 500
    with pytest.raises(tr.ConfigError, match="--recipe seed applies to --model seed_cnn only"):
        _config("--model", "fast_cnn", "--recipe", "seed")


def test_default_recipes_and_flags():
    cfg = _config("--model", "seed_cnn")
    assert (cfg.optimizer, cfg.schedule, cfg.batch_size, cfg.augment, cfg.normalize) == \
        ("adam", "onecycle", 128, True, True)
    assert cfg.out == "runs/seed_cnn" and cfg.recipe == "default"
    assert _config("--progress").progress and not _config("--no-progress").progress
    fast = _config("--model", "fast_cnn", "--no-augment", "--lr", "0.1", "--no-progress", "--out", "x")
    assert fast.optimizer == "sgd" and fast.nesterov and fast.augment is False and fast.lr == 0.1
    assert fast.out == "x" and not fast.progress
    assert tr.build_model(_config("--model", "fc"), (1, 28, 28)).sizes == (784, 256, 64, 10)


def test_micro_batching_defaults_and_its_refusal_for_batchnorm_models(tmp_path):
    seed = _config("--model", "seed_cnn")
    assert (seed.micro_batch, seed.micro_threads) == (64, 2)  # same gradient as one pass, faster
    assert _config("--model", "seed_cnn", "--micro-batch", "0").micro_batch == 0
    fast = _config("--model", "fast_cnn")  # BatchNorm: one micro-batch per thread, sharing its statistics
    assert (fast.micro_batch, fast.micro_threads) == (64, 2)
    tr.check_micro_batching(fast, tr.build_model(fast, (3, 32, 32)))
    assert _config("--model", "fast_cnn", "--batch-size", "100", "--micro-threads", "3").micro_batch == 34
    assert _config("--model", "fast_cnn", "--micro-batch", "0").micro_batch == 0
    fast = _config("--model", "fast_cnn", "--micro-batch", "32")
    with pytest.raises(tr.ConfigError, match=r"fast_cnn has BatchNorm layers.*use --micro-batch 64 or 0"):
        tr.check_micro_batching(fast, tr.build_model(fast, (3, 32, 32)))
    with pytest.raises(tr.ConfigError, match="--micro-threads must be an integer >= 1; got 0"):
        _config("--model", "seed_cnn", "--micro-threads", "0")


@needs_cifar
def test_micro_batched_run_matches_one_pass_per_batch(reference_run, tmp_path):
    """The default seed_cnn run sums micro-batch gradients on two threads; one pass per
    batch gives the same training up to float32 rounding."""
    out = tmp_path / "one_pass"
    assert tr.main(_args(out, "--micro-batch", "0")) == 0
    ref, got = _metrics(reference_run), _metrics(out)
    assert len(ref) == len(got) == 2
    for a, b in zip(ref, got):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-3 and abs(a["test_acc"] - b["test_acc"]) < 0.02


@needs_cifar
def test_fast_cnn_run_on_two_shards_matches_one_pass_per_batch(tmp_path):
    """FastCNN's default splits each batch over two threads whose BatchNorm layers share the
    batch's statistics: the same training as one pass, up to float32 rounding, running
    statistics included."""
    runs = {}
    for name, extra in (("shards", ()), ("one_pass", ("--micro-batch", "0"))):
        out = tmp_path / name
        assert tr.main(["--model", "fast_cnn", "--data", str(ARCHIVE), "--limit-train", "96", "--limit-test",
                        "50", "--epochs", "1", "--batch-size", "32", "--lr", "0.02", "--no-progress", "--out", str(out),
                        *extra]) == 0
        runs[name] = (_metrics(out)[0], load_arrays(out / "model.npz"))
    (m_a, w_a), (m_b, w_b) = runs["shards"], runs["one_pass"]
    assert abs(m_a["train_loss"] - m_b["train_loss"]) < 1e-4
    for k in w_a:
        np.testing.assert_allclose(w_a[k], w_b[k], rtol=1e-3, atol=1e-4, err_msg=k)


# ------------------------------------------------------------------------ Fashion-MNIST




@pytest.mark.skipif(not have_fashion_mnist(), reason="Fashion-MNIST files not available")
def test_fashion_mnist_fc_run(tmp_path):
    out = tmp_path / "fmnist"
    assert tr.main(["--dataset", "fashion-mnist", "--model", "fc", "--limit-train", "1024", "--limit-test",
                    "500", "--epochs", "1", "--no-progress", "--out", str(out)]) == 0
    (r,) = _metrics(out)
    assert r["images"] == 1024 and r["test_acc"] > 0.4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "fashion-mnist" and summary["parameters"] == 784 * 256 + 256 + 256 * 64 + 64 + 650
