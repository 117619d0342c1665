"""DataLoader (coverage, reproducibility, checkpointing) and the vectorised batch transforms
(checked against naive per-image loops)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

from tinygrad_cnn import rng as tc_rng
from tinygrad_cnn.data import (CIFAR10_MEAN, CIFAR10_STD, ArrayDataset, Compose, DataLoader, Normalize,
                               RandomCrop, RandomHorizontalFlip, ToFloat)


def indexed_dataset(n, shape=(3, 4, 4)):
    """Image i is filled with (i % 250) + 1 (never 0, so zero padding is recognisable); label i."""
    images = np.broadcast_to(((np.arange(n) % 250) + 1).astype(np.uint8).reshape(n, 1, 1, 1),
                             (n, *shape)).copy()
    return ArrayDataset(images, np.arange(n, dtype=np.int64))


def epoch_labels(loader):
    return [y.copy() for _, y in loader]


# ----------------------------------------------------------------------------- coverage


@pytest.mark.parametrize("n,bs", [(10, 3), (12, 4), (5, 8), (1, 1), (7, 7)])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch(n, bs, shuffle, drop_last):
    loader = DataLoader(indexed_dataset(n), bs, shuffle=shuffle, drop_last=drop_last, seed=1)
    expected_batches = n // bs if drop_last else -(-n // bs)
    assert len(loader) == expected_batches
    for _ in range(3):
        batches = list(loader)
        assert len(batches) == expected_batches
        sizes = [len(y) for _, y in batches]
        if drop_last:
            assert all(s == bs for s in sizes)
        else:
            assert all(s == bs for s in sizes[:-1]) and (not sizes or 1 <= sizes[-1] <= bs)
        seen = np.concatenate([y for _, y in batches]) if batches else np.array([], np.int64)
        assert len(np.unique(seen)) == len(seen)  # nothing twice
        if drop_last:
            assert len(seen) == (n // bs) * bs
        else:
            assert sorted(seen.tolist()) == list(range(n))  # everything once
        if not shuffle:
            assert seen.tolist() == list(range(len(seen)))
        for x, y in batches:  # images travel with their labels
            assert x.shape == (len(y), 3, 4, 4) and x.dtype == np.uint8
            assert np.array_equal(x[:, 0, 0, 0], (y % 250 + 1).astype(np.uint8))


def test_batches_are_copies():
    ds = indexed_dataset(6)
    for shuffle in (False, True):
        for x, y in DataLoader(ds, 4, shuffle=shuffle, seed=0):
            x[...] = 0
            y[...] = -1
    assert ds.images.min() > 0 and ds.labels.min() == 0


def test_new_permutation_each_epoch():
    loader = DataLoader(indexed_dataset(50), 50, shuffle=True, seed=0)
    a, b = (np.concatenate(epoch_labels(loader)) for _ in range(2))
    assert not np.array_equal(a, b) and not np.array_equal(a, np.arange(50))
    assert loader.epoch == 2


def test_batch_size_validation():
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            DataLoader(indexed_dataset(3), bad)


# ----------------------------------------------------------------------------- reproducibility

AUG = Compose([RandomCrop(4, padding=1), RandomHorizontalFlip(), ToFloat()])


def run(loader, epochs):
    return [[(x.copy(), y.copy()) for x, y in loader] for _ in range(epochs)]


def same_runs(a, b):
    return len(a) == len(b) and all(
        len(ea) == len(eb) and all(np.array_equal(xa, xb) and np.array_equal(ya, yb)
                                   for (xa, ya), (xb, yb) in zip(ea, eb))
        for ea, eb in zip(a, b))


def test_same_seed_same_batches():
    ds = indexed_dataset(23)
    a = run(DataLoader(ds, 5, shuffle=True, seed=7, transform=AUG), 3)
    b = run(DataLoader(ds, 5, shuffle=True, seed=7, transform=AUG), 3)
    c = run(DataLoader(ds, 5, shuffle=True, seed=8, transform=AUG), 3)
    assert same_runs(a, b) and not same_runs(a, c)


def test_augmentation_differs_between_epochs_without_shuffle():
    ds = indexed_dataset(16, shape=(1, 6, 6))
    loader = DataLoader(ds, 16, seed=0, transform=Compose([RandomCrop(6, padding=2), ToFloat()]))
    (x1, y1), = list(loader)
    (x2, y2), = list(loader)
    assert np.array_equal(y1, y2) and not np.array_equal(x1, x2)


def test_seed_none_follows_framework_manual_seed():
    saved = tc_rng.get_state()
    try:
        tc_rng.manual_seed(123)
        a = run(DataLoader(indexed_dataset(9), 4, shuffle=True), 2)
        tc_rng.manual_seed(123)
        b = run(DataLoader(indexed_dataset(9), 4, shuffle=True), 2)
    finally:
        tc_rng.set_state(saved)
    assert same_runs(a, b)


def test_state_dict_between_epochs_reproduces_remaining_epochs():
    ds = indexed_dataset(17)
    ref = run(DataLoader(ds, 4, shuffle=True, seed=3, transform=AUG), 4)
    loader = DataLoader(ds, 4, shuffle=True, seed=3, transform=AUG)
    run(loader, 2)
    state = json.loads(json.dumps(loader.state_dict()))  # plain, serialisable values
    assert state["epoch"] == 2 and state["batch"] == 0
    run(loader, 1)  # move on, then rewind from the checkpoint in a fresh loader
    fresh = DataLoader(ds, 4, shuffle=True, seed=999, transform=AUG)
    fresh.load_state_dict(state)
    assert same_runs(run(fresh, 2), ref[2:])
    assert fresh.epoch == 4


@pytest.mark.parametrize("stop_after", [1, 3, 5])
def test_state_dict_mid_epoch_resumes_at_next_batch(stop_after):
    ds = indexed_dataset(20)
    ref = run(DataLoader(ds, 4, shuffle=True, seed=5, transform=AUG), 4)  # 5 batches an epoch
    loader = DataLoader(ds, 4, shuffle=True, seed=5, transform=AUG)
    run(loader, 1)
    for i, _ in enumerate(loader):
        if i + 1 == stop_after:
            state = loader.state_dict()
            break
    fresh = DataLoader(ds, 4, shuffle=True, seed=0, transform=AUG)
    fresh.load_state_dict(state)
    resumed = run(fresh, 2)
    if stop_after == 5:  # the last batch was handed out: the checkpoint points at epoch 2's start
        assert state["epoch"] == 2 and state["batch"] == 0
        assert same_runs(resumed, ref[2:4])
    else:  # the rest of epoch 1, then epoch 2 as in the uninterrupted run
        assert state["epoch"] == 1 and state["batch"] == stop_after
        assert same_runs(resumed, [ref[1][stop_after:], ref[2]])


def test_load_state_dict_rejects_other_geometry():
    state = DataLoader(indexed_dataset(10), 4, shuffle=True, seed=0).state_dict()
    with pytest.raises(ValueError, match="batch_size=4"):
        DataLoader(indexed_dataset(10), 5, shuffle=True).load_state_dict(state)
    with pytest.raises(ValueError, match="num_samples=10"):
        DataLoader(indexed_dataset(11), 4, shuffle=True).load_state_dict(state)


def test_transform_gets_whole_batch_and_an_rng():
    calls = []

    def transform(x, rng):
        calls.append((x.shape, type(rng)))
        return x.astype(np.float32)

    out = list(DataLoader(indexed_dataset(10), 4, transform=transform, seed=0))
    assert [c[0][0] for c in calls] == [4, 4, 2]
    assert all(c[1] is np.random.Generator for c in calls)
    assert all(x.dtype == np.float32 for x, _ in out)


# ----------------------------------------------------------------------------- transforms


def naive_crop(x, size, padding, oy, ox):
    out = []
    for i in range(len(x)):
        p = np.pad(x[i], ((0, 0), (padding, padding), (padding, padding)))
        out.append(p[:, oy[i]:oy[i] + size[0], ox[i]:ox[i] + size[1]])
    return np.stack(out) if out else np.zeros((0, x.shape[1], *size), x.dtype)


@given(n=st.integers(0, 5), c=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7),
       padding=st.integers(0, 3), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_random_crop_matches_naive_loop(n, c, h, w, padding, seed, data):
    ch = data.draw(st.integers(1, h + 2 * padding))
    cw = data.draw(st.integers(1, w + 2 * padding))
    x = np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)
    out = RandomCrop((ch, cw), padding)(x, np.random.default_rng(seed))
    draw = np.random.default_rng(seed)  # the same draws, in the same order
    oy = draw.integers(0, h + 2 * padding - ch + 1, size=n)
    ox = draw.integers(0, w + 2 * padding - cw + 1, size=n)
    assert out.shape == (n, c, ch, cw) and out.dtype == np.uint8
    assert np.array_equal(out, naive_crop(x, (ch, cw), padding, oy, ox))


def test_random_crop_offsets_are_per_image_and_cover_the_range():
    x = np.ones((2000, 1, 32, 32), np.uint8)
    out = RandomCrop(32, padding=4)(x, np.random.default_rng(0))
    # the zero rows/cols tell the offset: top zero rows = 4 - oy when oy < 4
    top_zero = (out[:, 0, :, 16] == 0).argmin(axis=1)
    left_zero = (out[:, 0, 16, :] == 0).argmin(axis=1)
    assert set(np.unique(top_zero)) == set(range(5)) and set(np.unique(left_zero)) == set(range(5))
    assert len({(a, b) for a, b in zip(top_zero, left_zero)}) > 20


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_random_crop_padding_zero_is_identity(dtype):
    x = np.random.default_rng(1).random((4, 3, 8, 8)).astype(dtype)
    out = RandomCrop(8, padding=0)(x, np.random.default_rng(0))
    assert out.dtype == dtype and np.array_equal(out, x) and out is not x


def test_random_crop_rejects_bad_geometry():
    with pytest.raises(ValueError, match="larger than the padded image"):
        RandomCrop(12, padding=1)(np.zeros((1, 1, 8, 8), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="N, C, H, W"):
        RandomCrop(2)(np.zeros((8, 8), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="padding"):
        RandomCrop(2, padding=-1)


@given(n=st.integers(0, 6), p=st.sampled_from([0.0, 0.3, 0.5, 1.0]), seed=st.integers(0, 2**32 - 1))
def test_flip_matches_naive_loop(n, p, seed):
    x = np.random.default_rng(seed).integers(0, 256, size=(n, 2, 3, 5), dtype=np.uint8)
    out = RandomHorizontalFlip(p)(x, np.random.default_rng(seed))
    flips = np.random.default_rng(seed).random(n) < p
    expected = np.stack([x[i][..., ::-1] if flips[i] else x[i] for i in range(n)]) if n else x
    assert out.dtype == x.dtype and np.array_equal(out, expected)


def test_flip_extremes_and_twice():
    x = np.random.default_rng(0).integers(0, 256, size=(5, 3, 4, 6), dtype=np.uint8)
    assert np.array_equal(RandomHorizontalFlip(0.0)(x, np.random.default_rng(0)), x)
    once = RandomHorizontalFlip(1.0)(x, np.random.default_rng(0))
    assert np.array_equal(once, x[..., ::-1])
    assert np.array_equal(RandomHorizontalFlip(1.0)(once, np.random.default_rng(1)), x)
    many = RandomHorizontalFlip(0.5)(np.repeat(x[:1], 400, axis=0), np.random.default_rng(2))
    flipped = np.all(many == x[:1, ..., ::-1], axis=(1, 2, 3))
    assert 120 < flipped.sum() < 280  # per-image decisions, about half


def test_to_float_and_normalize():
    x = np.random.default_rng(0).integers(0, 256, size=(4, 3, 5, 5), dtype=np.uint8)
    f = ToFloat()(x)
    assert f.dtype == np.float32 and f.min() >= 0 and f.max() <= 1
    assert np.allclose(f, x / 255.0, atol=1e-7)
    norm = Normalize(CIFAR10_MEAN, CIFAR10_STD)
    out = norm(x)
    ref = (x / 255.0 - np.array(CIFAR10_MEAN)[:, None, None]) / np.array(CIFAR10_STD)[:, None, None]
    assert out.dtype == np.float32 and out.shape == x.shape
    assert np.allclose(out, ref, atol=1e-5)
    assert np.allclose(norm(f), ref, atol=1e-5)  # float input is taken to be in [0, 1]
    assert np.allclose(Normalize(0.5, 0.25)(x), (x / 255.0 - 0.5) / 0.25, atol=1e-5)
    with pytest.raises(ValueError, match="3 channel statistics, batch has 1"):
        norm(x[:, :1])
    with pytest.raises(ValueError, match="positive"):
        Normalize([0.5], [0.0])


def test_compose_pipeline_through_loader_keeps_shapes_dtype_and_labels():
    ds = indexed_dataset(37, shape=(3, 32, 32))
    aug = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), Normalize([0, 0, 0], [1, 1, 1])])
    loader = DataLoader(ds, 8, shuffle=True, seed=0, transform=aug)
    seen = []
    for x, y in loader:
        assert x.dtype == np.float32 and x.shape == (len(y), 3, 32, 32)
        assert y.dtype == np.int64
        # every non-padding pixel still carries its own label's value
        value = ((y % 250 + 1) / 255.0).astype(np.float32).reshape(-1, 1, 1, 1)
        assert np.all((x == 0) | np.isclose(x, value))
        assert np.all((x != 0).sum(axis=(1, 2, 3)) >= 3 * 28 * 28)
        seen.extend(y.tolist())
    assert sorted(seen) == list(range(37))


def test_transforms_without_rng_use_framework_generator():
    saved = tc_rng.get_state()
    try:
        x = np.random.default_rng(0).integers(0, 256, size=(6, 3, 8, 8), dtype=np.uint8)
        aug = Compose([RandomCrop(8, padding=2), RandomHorizontalFlip()])
        tc_rng.manual_seed(4)
        a = aug(x)
        tc_rng.manual_seed(4)
        b = aug(x)
    finally:
        tc_rng.set_state(saved)
    assert np.array_equal(a, b)
