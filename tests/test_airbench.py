"""The airbench recipe (issue 18), piece by piece and end to end, on tiny inputs: the whitening
init decorrelates patches; dirac init is the identity; lookahead, alternating flip,
reflect-padded translation and TTA do what they claim; parameter groups in airbench's decoupled
form and frozen parameters update as PyTorch's do; the network matches its PyTorch twin
(``benchmarks/airbench_torch.py``); a few-step run of the whole recipe on 512 fabricated
images writes its files and resumes exactly; the CLI refuses what the recipe cannot do."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import tinygrad_cnn.functional as F
from tinygrad_cnn import Tensor, data, init, manual_seed, nn, optim, tta
from tinygrad_cnn.lookahead import Lookahead
from models import MODELS, Airbench93, Airbench94
from models.airbench import AirbenchNet, batch_norm_biases, gelu
from train import airbench
from train import cifar10 as cli

TORCH_GELU = "none"  # exact GELU, as airbench's


def _smooth_images(n, seed=0, size=12):
    """Images whose neighbouring pixels and channels are strongly correlated (as photos are)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 1, size + 1, size + 1))
    x = base[:, :, :-1, :-1] + base[:, :, 1:, :-1] + base[:, :, :-1, 1:] + 0.3 * rng.standard_normal((n, 3, size, size))
    return (x + np.array([0.5, -0.2, 0.1]).reshape(1, 3, 1, 1)).astype(np.float64)


# ------------------------------------------------------------------------ initialisation


def test_whitening_filters_decorrelate_the_patches_they_were_computed_from():
    x = _smooth_images(64)
    filters = init.patch_whitening(x, kernel_size=2, eps=1e-8)
    assert filters.shape == (24, 3, 2, 2) and filters.dtype == np.float64
    np.testing.assert_array_equal(filters[12:], -filters[:12])  # the second half: the negatives
    patches = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(2, 3))
    patches = patches.transpose(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    raw = patches.T @ patches / len(patches)
    off = raw - np.diag(np.diag(raw))
    assert np.abs(off).max() > 0.5  # the raw patches are far from decorrelated ...
    out = F.conv2d(Tensor(x), Tensor(filters[:12])).data  # ... the whitened ones are
    out = out.transpose(0, 2, 3, 1).reshape(-1, 12)
    np.testing.assert_allclose(out.T @ out / len(out), np.eye(12), atol=1e-6)
    # largest-variance direction first, as airbench orders them
    norms = np.linalg.norm(filters[:12].reshape(12, -1), axis=1)
    assert np.all(np.diff(norms) >= -1e-9)


def test_whitening_eps_caps_the_gain_of_flat_directions():
    x = np.repeat(_smooth_images(16)[:, :1], 3, axis=1)  # three identical channels: a 4-d subspace
    filters = init.patch_whitening(x, 2, eps=5e-4)
    assert np.isfinite(filters).all()
    assert np.linalg.norm(filters.reshape(24, -1), axis=1).max() <= 1 / np.sqrt(5e-4) + 1e-6


def test_model_whitening_layer_is_frozen_and_set_from_images():
    manual_seed(0)
    m = AirbenchNet((8, 16, 16))
    x = _smooth_images(8, size=32).astype(np.float32)
    m.init_whitening(x)
    np.testing.assert_allclose(m.whiten.weight.data, init.patch_whitening(x, 2, 5e-4), rtol=1e-6)
    assert not m.whiten.weight.requires_grad and m.whiten.bias.requires_grad
    assert not np.any(m.whiten.bias.data)
    assert all(not bn.weight.requires_grad for bn in m.modules() if isinstance(bn, nn.BatchNorm2d))
    with pytest.raises(ValueError, match="whitening_"):
        init.whitening_(m.group1.conv1.weight, x)
    with pytest.raises(ValueError, match="channels"):
        init.whitening_(m.whiten.weight, x[:, :2])


def test_dirac_init_makes_the_first_filters_the_identity():
    manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    rest = conv.weight.data[4:].copy()
    init.dirac_(Tensor(conv.weight.data[:4]))
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 5)).astype(np.float32)
    y = conv(Tensor(x)).data
    np.testing.assert_array_equal(y[:, :4], x)
    np.testing.assert_array_equal(conv.weight.data[4:], rest)  # the other filters keep their init
    with pytest.raises(ValueError, match="dirac_"):
        init.dirac_(Tensor(np.zeros((3, 3), np.float32)))


def test_dirac_matches_torch():
    torch = pytest.importorskip("torch")
    w = torch.empty(5, 3, 3, 2)
    torch.nn.init.dirac_(w)
    ours = init.dirac_(Tensor(np.ones((5, 3, 3, 2), np.float32)))
    np.testing.assert_array_equal(ours.data, w.numpy())


# ------------------------------------------------------------------------ the network


def test_networks_sizes_and_frozen_parts():
    assert MODELS["airbench94"] is Airbench94 and MODELS["airbench93"] is Airbench93
    assert Airbench94().num_parameters() == 1_972_792 and Airbench94().widths == (64, 256, 256)
    assert Airbench93().num_parameters() == 569_656 and Airbench93().widths == (64, 128, 128)
    m = Airbench93()
    frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
    assert frozen == ["whiten.weight"] + [f"group{g}.norm{k}.weight" for g in (1, 2, 3) for k in (1, 2)]
    assert len(batch_norm_biases(m)) == 6
    assert m(Tensor(np.zeros((2, 3, 32, 32), np.float32))).shape == (2, 10)
    assert Airbench93(in_channels=1, image_size=28)(Tensor(np.zeros((1, 1, 28, 28), np.float32))).shape == (1, 10)
    with pytest.raises(ValueError, match="too small"):
        AirbenchNet(image_size=20)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_network_matches_its_torch_twin_float64(mode):
    torch = pytest.importorskip("torch")
    from benchmarks.airbench_torch import make_net

    manual_seed(0)
    ours = AirbenchNet((8, 12, 16)).astype(np.float64)
    ours.init_whitening(_smooth_images(4, size=32))
    theirs = make_net((8, 12, 16), gelu=TORCH_GELU).double()
    sd = ours.state_dict()
    if mode == "eval":
        rng = np.random.default_rng(5)
        for k in sd:
            if k.endswith("running_mean"):
                sd[k] = rng.standard_normal(sd[k].shape) * 0.1
            elif k.endswith("running_var"):
                sd[k] = rng.uniform(0.5, 2.0, sd[k].shape)
        ours.load_state_dict(sd)
    assert list(sd) == list(theirs.state_dict())
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
    ours.train(mode == "train")
    theirs.train(mode == "train")
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == \
        [n for n, p in theirs.named_parameters() if p.requires_grad]
    x = _smooth_images(3, seed=1, size=32)
    y = np.array([3, 1, 4])
    logits = ours(Tensor(x))
    tlogits = theirs(torch.from_numpy(x))
    np.testing.assert_allclose(logits.data, tlogits.detach().numpy(), rtol=1e-8, atol=1e-10)
    (F.cross_entropy(logits, y, label_smoothing=0.2) * 3.0).backward()
    torch.nn.functional.cross_entropy(tlogits, torch.from_numpy(y), label_smoothing=0.2, reduction="sum").backward()
    tparams = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        if not p.requires_grad:
            assert p.grad is None and tparams[name].grad is None, name
            continue
        tg = tparams[name].grad.numpy()
        np.testing.assert_allclose(p.grad, tg, rtol=1e-6, atol=1e-9 * max(np.abs(tg).max(), 1e-30), err_msg=name)
    if mode == "train":  # the running statistics moved alike (momentum 0.4, unbiased variance)
        tsd = theirs.state_dict()
        for k, v in ours.state_dict().items():
            if "running" in k:
                np.testing.assert_allclose(v, tsd[k].numpy(), rtol=1e-10, atol=1e-12, err_msg=k)


def test_the_network_uses_the_exact_gelu():
    x = np.linspace(-4, 4, 41)
    from math import erf, sqrt
    exact = np.array([v * 0.5 * (1 + erf(v / sqrt(2))) for v in x])
    np.testing.assert_allclose(gelu(Tensor(x)).data, exact, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------ lookahead


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(np.zeros(3, np.float64))
        self.frozen = nn.Parameter(np.full(2, 7.0), requires_grad=False)
        self.register_buffer("stat", np.zeros(2, np.float64))
        self.register_buffer("count", np.zeros((), np.int64))


def test_lookahead_averages_every_k_steps_and_writes_back():
    m = _Tiny()
    la = Lookahead(m, every=2, decay=lambda step: 0.5)
    ema_w, ema_s = np.zeros(3), np.zeros(2)
    for step in range(1, 7):
        m.w.data[...] = m.w.data + step  # what an optimizer step would do
        m.stat[...] = m.stat + 2 * step
        m._buffers["count"] = m.count + 1
        next_w, next_s = 0.5 * ema_w + 0.5 * m.w.data, 0.5 * ema_s + 0.5 * m.stat
        updated = la.step()
        assert updated == (step % 2 == 0)
        if updated:
            ema_w, ema_s = next_w, next_s
            np.testing.assert_allclose(m.w.data, ema_w)  # the model jumps back to the average
            np.testing.assert_allclose(m.stat, ema_s)
    np.testing.assert_array_equal(m.frozen.data, 7.0)
    assert int(m.count) == 6  # integer buffers are not averaged
    # decay 0: the average follows the weights; decay 1 (finish): the weights take the average
    m.w.data[...] = 100.0
    la.finish()
    np.testing.assert_allclose(m.w.data, ema_w)
    la.update(0.0)
    np.testing.assert_allclose(la.average["w"], ema_w)
    with pytest.raises(ValueError, match="decay"):
        la.update(1.5)
    with pytest.raises(ValueError, match="every"):
        Lookahead(m, every=0)


def test_lookahead_state_round_trips_and_matches_torch_lerp():
    torch = pytest.importorskip("torch")
    m = _Tiny()
    la = Lookahead(m, every=1, decay=0.3)
    m.w.data[...] = [1.0, 2.0, 3.0]
    la.step()
    t = torch.zeros(3, dtype=torch.float64).lerp_(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), 0.7)
    np.testing.assert_array_equal(la.average["w"], t.numpy())
    state = la.state_dict()
    other = Lookahead(_Tiny(), every=1, decay=0.3)
    other.load_state_dict(state)
    assert other.steps == 1
    np.testing.assert_array_equal(other.average["w"], la.average["w"])
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"steps": 1, "average": {}})


def test_lookahead_write_makes_a_recorded_graph_refuse_backward():
    m = _Tiny()
    la = Lookahead(m, every=1, decay=0.5)
    loss = (m.w * m.w).sum()
    m.w.data  # noqa: B018 - the graph holds it now
    la.step()
    with pytest.raises(RuntimeError, match="Lookahead"):
        loss.backward()


# ------------------------------------------------------------------------ augmentation


def test_alternating_flip_flips_each_image_every_other_epoch():
    flip = data.AlternatingFlip(seed=3)
    x = np.arange(400 * 4).reshape(400, 1, 1, 4).astype(np.uint8)
    idx = np.arange(400)
    epochs = [flip(x, None, indices=idx, epoch=e) for e in range(4)]
    mirrored = [(e[:, 0, 0, 0] != x[:, 0, 0, 0]) for e in epochs]
    assert 0.4 < mirrored[0].mean() < 0.6  # a fair coin in the first epoch
    np.testing.assert_array_equal(mirrored[1], ~mirrored[0])  # the opposite in the next
    np.testing.assert_array_equal(mirrored[2], mirrored[0])
    np.testing.assert_array_equal(epochs[0][mirrored[0]], x[mirrored[0]][..., ::-1])
    # keyed by dataset index, not batch position; another seed, other coins
    sub = flip(x[[5, 9]], None, indices=np.array([5, 9]), epoch=1)
    np.testing.assert_array_equal(sub, epochs[1][[5, 9]])
    assert (data.AlternatingFlip(4).first_epoch_bits(idx) != flip.first_epoch_bits(idx)).any()
    with pytest.raises(ValueError, match="indices"):
        flip(x, None, indices=idx[:3], epoch=0)


def test_loader_passes_indices_and_epochs_to_alternating_flip():
    images = np.arange(32 * 2).reshape(32, 1, 1, 2).astype(np.uint8)
    ds = data.ArrayDataset(images, np.arange(32))
    loader = data.DataLoader(ds, 8, shuffle=True, seed=0,
                             transform=data.Compose([data.AlternatingFlip(1), data.ToFloat()]))
    bits = data.AlternatingFlip(1).first_epoch_bits(np.arange(32))
    for epoch in range(3):
        for x, y in loader:
            flipped = x[:, 0, 0, 0] > x[:, 0, 0, 1]
            np.testing.assert_array_equal(flipped, bits[y] ^ bool(epoch % 2))
    # a resumed loader flips as the uninterrupted one
    state = loader.state_dict()
    again = data.DataLoader(ds, 8, shuffle=True, seed=0,
                            transform=data.Compose([data.AlternatingFlip(1), data.ToFloat()]))
    again.load_state_dict(state)
    for (a, ya), (b, yb) in zip(loader, again):
        np.testing.assert_array_equal(a, b)


def test_reflect_padded_random_translation():
    x = np.random.default_rng(0).integers(0, 255, (300, 2, 6, 5), dtype=np.uint8)
    crop = data.RandomCrop((6, 5), padding=2, padding_mode="reflect")
    out = crop(x, np.random.default_rng(1))
    assert out.shape == x.shape and out.dtype == np.uint8
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if np.array_equal(out[i], padded[i, :, dy:dy + 6, dx:dx + 5])]
        assert hits, i
        offsets.add(hits[0])
    assert len(offsets) == 25  # every shift of up to 2 pixels each way occurs
    assert "reflect" in repr(crop)
    with pytest.raises(ValueError, match="padding_mode"):
        data.RandomCrop(4, padding=1, padding_mode="wrap")
    with pytest.raises(ValueError, match="reflect"):
        data.RandomCrop(2, padding=2, padding_mode="reflect")(np.zeros((1, 1, 2, 2), np.uint8))


def test_reflect_padding_is_torchs():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    ours = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    theirs = torch.nn.functional.pad(torch.from_numpy(x), (2,) * 4, mode="reflect").numpy()
    np.testing.assert_array_equal(ours, theirs)


# ------------------------------------------------------------------------ test-time augmentation


class _Probe:
    """A "classifier" whose two logits read fixed pixels: which view it saw is visible."""

    training = True

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode

    def __call__(self, x):
        assert not self.training
        return Tensor(np.stack([x.data[:, 0, 0, 0], x.data[:, 0, 1, 2]], axis=1))


def test_tta_views_and_weights():
    x = np.arange(2 * 1 * 4 * 4, dtype=np.float64).reshape(2, 1, 4, 4)
    probe = _Probe()

    def logits(v):
        return np.stack([v[:, 0, 0, 0], v[:, 0, 1, 2]], axis=1)

    mirror = x[..., ::-1]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    down_right, up_left = padded[:, :, :4, :4], padded[:, :, 2:, 2:]
    np.testing.assert_array_equal(tta.predict(probe, x, level=0), logits(x))
    np.testing.assert_allclose(tta.predict(probe, x, level=1), 0.5 * (logits(x) + logits(mirror)))
    expected = 0.25 * (logits(x) + logits(mirror)) + 0.125 * (
        logits(down_right) + logits(down_right[..., ::-1]) + logits(up_left) + logits(up_left[..., ::-1]))
    np.testing.assert_allclose(tta.predict(probe, x, level=2), expected)
    np.testing.assert_allclose(tta.predict(probe, x, level=2, batch_size=6), expected)  # one image per pass
    for level, batch_size in ((2, 1000), (2, 6), (1, 3), (0, 1)):  # the plain logits come with any level's
        logits_, plain = tta.predict(probe, x, level=level, batch_size=batch_size, return_plain=True)
        np.testing.assert_array_equal(logits_, tta.predict(probe, x, level=level, batch_size=batch_size))
        np.testing.assert_array_equal(plain, logits(x))
    assert probe.training  # the mode is restored
    assert tta.views(x, 2).shape == (12, 1, 4, 4)
    with pytest.raises(ValueError, match="level"):
        tta.predict(probe, x, level=3)


def test_tta_matches_the_torch_reference():
    torch = pytest.importorskip("torch")
    from benchmarks.airbench_torch import make_net, tta_logits

    manual_seed(1)
    ours = AirbenchNet((8, 8, 8)).astype(np.float64)
    theirs = make_net((8, 8, 8), gelu=TORCH_GELU).double()
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})
    x = _smooth_images(5, size=32)
    for level in (0, 1, 2):
        np.testing.assert_allclose(tta.predict(ours, x, level, batch_size=7),
                                   tta_logits(theirs, torch.from_numpy(x), level, 2).numpy(), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------ optimizer groups


def test_decoupled_groups_follow_airbenchs_formulas():
    a, b = Tensor(np.zeros(2, np.float32), requires_grad=True), Tensor(np.zeros(3, np.float32), requires_grad=True)
    groups = optim.decoupled_sgd_groups([{"params": [a], "lr_scale": 64.0}, {"params": [b], "tag": 1}],
                                        lr=11.5, weight_decay=0.0153, momentum=0.85, batch_size=1024)
    scale = 1024 * (1 + 1 / 0.15)
    assert groups[1]["lr"] == pytest.approx(11.5 / scale) and groups[1]["tag"] == 1
    assert groups[0]["lr"] == pytest.approx(64 * 11.5 / scale)
    # the decay per step, lr * weight_decay, is the same in both groups: only the lr is scaled
    assert groups[0]["lr"] * groups[0]["weight_decay"] == pytest.approx(0.0153 * 1024 / scale)
    assert groups[1]["lr"] * groups[1]["weight_decay"] == pytest.approx(0.0153 * 1024 / scale)
    assert "lr_scale" not in groups[0]
    with pytest.raises(ValueError, match="momentum"):
        optim.decoupled_sgd_groups([{"params": [a]}], 1.0, 0.0, 1.0, 8)
    with pytest.raises(TypeError, match="group 0"):
        optim.decoupled_sgd_groups([[a]], 1.0, 0.0, 0.5, 8)


def test_groups_schedule_and_frozen_parameters_update_as_torch():
    """airbench's optimizer on a tiny problem, ours and torch's side by side: two groups with
    their own lr and decay, Nesterov, LambdaLR, a parameter frozen from the start and one frozen
    after two steps (the whitening bias): same values after every step."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    init_vals = [rng.standard_normal(s) for s in [(3,), (4, 3), (4,), (2,)]]
    ours = [Tensor(v.copy(), requires_grad=True) for v in init_vals]
    theirs = [torch.tensor(v.copy(), requires_grad=True) for v in init_vals]
    ours[3].requires_grad = False
    theirs[3].requires_grad_(False)
    groups = optim.decoupled_sgd_groups([{"params": [ours[0]], "lr_scale": 64.0}, {"params": ours[1:]}],
                                        lr=11.5, weight_decay=0.0153, momentum=0.85, batch_size=8)
    opt = optim.SGD(groups, lr=groups[1]["lr"], momentum=0.85, nesterov=True)
    topt = torch.optim.SGD([{"params": [theirs[0]], "lr": groups[0]["lr"], "weight_decay": groups[0]["weight_decay"]},
                            {"params": theirs[1:], "lr": groups[1]["lr"], "weight_decay": groups[1]["weight_decay"]}],
                           momentum=0.85, nesterov=True)

    def factor(step):
        return airbench.lr_factor(step, 6)

    sched, tsched = optim.LambdaLR(opt, factor), torch.optim.lr_scheduler.LambdaLR(topt, factor)
    x = rng.standard_normal((8, 3))
    for step in range(6):
        if step == 2:  # freeze the "whitening bias"
            ours[2].requires_grad = False
            theirs[2].requires_grad_(False)
        h = Tensor(x) * ours[0]
        loss = (((h @ ours[1].T) + ours[2]) ** 2).sum() + (ours[3] * ours[3]).sum() * 0
        th = torch.from_numpy(x.copy()) * theirs[0]
        tloss = (((th @ theirs[1].T) + theirs[2]) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        topt.zero_grad(set_to_none=True)
        tloss.backward()
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
        for o, t in zip(ours, theirs):
            np.testing.assert_allclose(o.data, t.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(ours[3].data, init_vals[3])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["lr"] for g in topt.param_groups])


def test_recipe_schedule_shapes():
    total = 476  # airbench94: ceil(48 * 9.9)
    assert airbench.total_steps(48, 9.9) == total and airbench.total_steps(48, 11.0) == 528
    assert airbench.lr_factor(0, total) == pytest.approx(0.2)
    rise = int(total * 0.23)
    assert airbench.lr_factor(rise, total) == pytest.approx(1.0)
    assert airbench.lr_factor(total, total) == pytest.approx(0.07)
    assert airbench.lookahead_decay(total, total) == pytest.approx(0.95 ** 5)
    assert airbench.lookahead_decay(5, total) < 1e-5


def test_build_optimizer_puts_batchnorm_shifts_in_the_fast_group():
    m = AirbenchNet((8, 8, 8))
    opt = airbench.build_optimizer(m, airbench.RECIPES["airbench94"], 1024)
    fast, rest = opt.param_groups
    assert {id(p) for p in fast["params"]} == {id(p) for p in batch_norm_biases(m)}
    assert any(p is m.whiten.bias for p in rest["params"]) and not any(p is m.whiten.weight for p in rest["params"])
    assert fast["lr"] == pytest.approx(64 * rest["lr"]) and opt.param_groups[0]["nesterov"]


# ------------------------------------------------------------------------ the whole recipe


def _fabricated(n, seed):
    """Images whose class shows in their colour, so that a few steps can learn something."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 120, (n, 3, 32, 32))
    images[:, 0] += 12 * labels[:, None, None]
    images[:, 2] += 12 * (9 - labels[:, None, None])
    return data.ArrayDataset(images.astype(np.uint8), labels)


SMALL = dataclasses.replace(airbench.RECIPES["airbench93"], widths=(8, 16, 16), epochs=2.5, whiten_bias_epochs=1,
                            whiten_images=64)


def _run(out, *flags, log=lambda *a, **k: None, interrupt=None):
    args = cli.build_parser().parse_args(["--model", "airbench93", "--batch-size", "128", "--no-progress",
                                          "--out", str(out), "--eval-batch-size", "128", *flags])
    return airbench.run(cli.config_from_args(args), log=log, datasets=(_fabricated(512, 0), _fabricated(64, 1)),
                        recipe=SMALL, interrupt=interrupt)


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("airbench")
    return out, _run(out)


def test_recipe_smoke_run_writes_its_files(small_run):
    out, summary = small_run
    records = _records(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["steps"] for r in records] == [4, 8, 10]  # ceil(4 * 2.5): the last epoch stops early
    assert [r["images"] for r in records] == [512, 512, 256]
    assert all(r["test_acc"] is not None for r in records)
    assert "tta_test_acc" in records[-1] and "tta_test_acc" not in records[0]
    assert all(np.isfinite(r["train_loss"]) for r in records)
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert records[-1]["wall_time"] > records[0]["wall_time"] > 0
    assert summary["tta_test_acc"] == records[-1]["tta_test_acc"] and summary["steps"] == 10
    assert summary["recipe_settings"]["widths"] == [8, 16, 16] or summary["recipe_settings"]["widths"] == (8, 16, 16)
    for name in ("metrics.jsonl", "curves.png", "model.npz", "checkpoint.npz", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    state = cli.load_checkpoint(out / "checkpoint.npz")
    assert state["steps"] == 10 and state["lookahead"]["steps"] == 10
    # the model ends at the lookahead's average (finish) and the whitening bias froze after epoch 1
    m = AirbenchNet((8, 16, 16))
    m.load(out / "model.npz")
    np.testing.assert_array_equal(m.head.weight.data, state["lookahead"]["average"]["head.weight"])


class _CtrlC:
    """Ctrl-C pressed during the ``after``-th step (the loop asks once per step)."""

    def __init__(self, after):
        self.asked, self.after = 0, after

    @property
    def requested(self):
        self.asked += 1
        return self.asked >= self.after


KEEP = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "tta_test_acc", "steps", "lr", "images")


def _same_metrics(a, b):
    assert [{k: r.get(k) for k in KEEP} for r in _records(a)] == [{k: r.get(k) for k in KEEP} for r in _records(b)]


def test_recipe_resumes_exactly_after_an_epoch_and_inside_one(small_run, tmp_path):
    full_out, full = small_run

    class Stop(Exception):
        pass

    def stop_after_first_epoch(line, *a, **k):
        if line.startswith("epoch   1"):
            raise Stop

    out = tmp_path / "after_epoch"
    with pytest.raises(Stop):
        _run(out, log=stop_after_first_epoch)
    _run(out, "--resume")
    _same_metrics(full_out, out)
    out = tmp_path / "inside_epoch"
    with pytest.raises(cli.Interrupted, match="in epoch 2, after 256"):
        _run(out, interrupt=_CtrlC(after=8))  # 6 reads in epoch 1, then 2 steps
    assert cli.load_checkpoint(out / "checkpoint.npz")["steps"] == 6
    summary = _run(out, "--resume")
    _same_metrics(full_out, out)
    assert summary["tta_test_acc"] == full["tta_test_acc"]
    m, m_full = AirbenchNet((8, 16, 16)), AirbenchNet((8, 16, 16))
    m.load(out / "model.npz")
    m_full.load(full_out / "model.npz")
    for (k, v), w in zip(m.state_dict().items(), m_full.state_dict().values()):
        np.testing.assert_array_equal(v, w, err_msg=k)
    lines = []
    assert _run(out, "--resume", log=lines.append)["tta_test_acc"] == full["tta_test_acc"]
    assert lines[0].startswith("nothing to do")


@pytest.mark.parametrize("tamper, part", [
    (lambda s: s.pop("lookahead"), "lookahead"),
    (lambda s: s["lookahead"].update(steps=3), "steps"),
    (lambda s: s.update(steps="many"), "steps"),
    (lambda s: s["history"].pop(), "history"),
])
def test_recipe_refuses_a_checkpoint_that_does_not_fit_naming_the_part(small_run, tmp_path, tamper, part):
    from tinygrad_cnn.io import CheckpointError, load_state, save_state

    full_out, _ = small_run
    out = tmp_path / "tampered"
    out.mkdir()
    state = load_state(full_out / "checkpoint.npz")
    tamper(state)
    save_state(out / "checkpoint.npz", state)
    with pytest.raises(CheckpointError, match=f"cannot resume from it: its {part} state does not fit this run"):
        _run(out, "--resume")


def test_the_final_evaluation_is_one_pass_over_the_views(tmp_path, monkeypatch):
    """The plain and TTA scores of the last epoch come from one pass (the first view is the
    plain image): predict runs once, not once per score."""
    calls, real = [], tta.predict
    monkeypatch.setattr(tta, "predict", lambda *a, **k: calls.append(k) or real(*a, **k))
    out = tmp_path / "once"
    _run(out, "--no-epoch-eval", "--tta-level", "2")
    assert [(k["level"], k.get("return_plain")) for k in calls] == [(2, True)]
    last = _records(out)[-1]
    assert 0 <= last["test_acc"] <= 1 and 0 <= last["tta_test_acc"] <= 1


def test_recipe_without_epoch_eval_trains_the_same(small_run, tmp_path):
    full_out, _ = small_run
    quiet = tmp_path / "quiet"
    _run(quiet, "--no-epoch-eval", "--tta-level", "1")
    records, full = _records(quiet), _records(full_out)
    assert [r["test_acc"] is None for r in records] == [True, True, False]
    assert [r["train_loss"] for r in records] == [r["train_loss"] for r in full]
    assert records[-1]["test_acc"] == full[-1]["test_acc"] and "tta_test_acc" in records[-1]
    assert (quiet / "curves.png").stat().st_size > 0


def test_cli_refuses_what_the_recipe_cannot_do(tmp_path, capsys):
    for argv, says in ((["--model", "airbench94", "--budget", "60"], "--budget"),
                       (["--model", "seed_cnn", "--tta-level", "2"], "airbench"),
                       (["--model", "fast_cnn", "--no-epoch-eval"], "airbench"),
                       (["--model", "airbench94", "--optimizer", "adam"], "SGD"),
                       (["--model", "airbench94", "--schedule", "cosine"], "--schedule"),
                       (["--model", "airbench94", "--micro-batch", "100"], "--micro-batch"),
                       (["--model", "airbench94", "--epochs", "0"], "--epochs")):
        assert cli.main(argv + ["--out", str(tmp_path / "x"), "--data", str(tmp_path / "missing.tar.gz")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and "Traceback" not in err, (argv, err)
    cfg = cli.config_from_args(cli.build_parser().parse_args(["--model", "airbench93", "--out", str(tmp_path)]))
    assert (cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.label_smoothing, cfg.tta_level,
            cfg.epochs, cfg.micro_batch) == (1024, 11.5, 0.85, 0.0153, 0.2, 2, None, 512)
    with pytest.raises(cli.ConfigError, match="no full batch"):
        airbench.run(dataclasses.replace(cfg, limit_train=100), datasets=(_fabricated(100, 0), _fabricated(10, 1)))


# ------------------------------------------------------------------------ the PyTorch reference and speed tools


def _archive():
    """The archive where test_train looks for it: $TINYGRAD_CNN_DATA or the cache, else
    ``shared/data/`` beside the clone (where CI has it); None when absent."""
    from test_train import _find_archive

    return _find_archive()


def test_torch_reference_runs_the_recipe_on_the_archive(tmp_path, capsys):
    pytest.importorskip("torch")
    archive = _archive()
    if archive is None:
        pytest.skip("CIFAR-10 binary archive not available")
    from benchmarks import airbench_torch

    out = tmp_path / "ref.json"
    assert airbench_torch.main(["--model", "airbench93", "--data", str(archive), "--epochs", "1.5", "--batch-size",
                                "128", "--limit-train", "256", "--limit-test", "32", "--threads", "1",
                                "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["steps"] == 3 and r["epochs"] == 1.5 and len(r["history"]) == 2  # ceil(2 * 1.5) steps
    assert 0 <= r["test_acc"] <= 1 and 0 <= r["tta_test_acc"] <= 1 and r["tta_level"] == 2
    assert r["wall_time"] >= r["train_time"] > 0
    assert "with TTA level 2" in capsys.readouterr().out


def test_layer_comparison_runs(capsys):
    pytest.importorskip("torch")
    from benchmarks import airbench_speed

    ours, theirs = airbench_speed.layers("airbench93", batch=2, reps=1)
    assert ours > 0 and theirs > 0
    text = capsys.readouterr().out
    assert "GELU 64 @15" in text and "the network (sum)" in text


def test_layer_comparison_can_time_some_rows(capsys):
    pytest.importorskip("torch")
    from benchmarks import airbench_speed

    airbench_speed.layers("airbench93", batch=2, reps=1, only=["batchnorm"])
    text = capsys.readouterr().out
    assert "BatchNorm 64 @15" in text and "GELU" not in text and "these rows (sum)" in text


def test_tta_profile_runs(capsys):
    from benchmarks import airbench_speed

    assert airbench_speed.main(["tta", "--model", "airbench93", "--images", "4"]) == 0
    text = capsys.readouterr().out
    assert "tta.predict level 2 of 4 images (24 views)" in text and "gelu" in text and "channel_affine" in text


def test_conv_limits_prints_every_3x3_layer_and_its_winograd_prototype_is_a_convolution(capsys):
    import numpy as np

    from benchmarks import conv_limits
    from tinygrad_cnn.kernels.conv import naive_conv2d

    assert conv_limits.main(["--model", "airbench93", "--batch", "2", "--reps", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sgemm 1024^3")
    assert [ln.split(":")[0].strip() for ln in lines[2:]] == [
        "24->64 @31", "64->64 @15", "64->128 @15", "128->128 @7", "128->128 @3"]
    # the prototype computes the 'same' 3x3 convolution, odd and even sizes, channel-major in and out
    rng = np.random.default_rng(0)
    for size in (3, 4, 7):
        x = rng.standard_normal((2, 3, size, size))
        w = rng.standard_normal((5, 3, 3, 3))
        (_, _, _), got = conv_limits.winograd_conv3x3(np.ascontiguousarray(x.transpose(1, 0, 2, 3)), w, reps=1)
        want = naive_conv2d(x, w, None, (3, 3), (1, 1), (1, 1, 1, 1))
        np.testing.assert_allclose(got.transpose(1, 0, 2, 3), want, rtol=1e-10, atol=1e-10)


def test_im2col_paths_benchmark_times_both_paths(capsys, monkeypatch):
    from benchmarks import im2col_paths

    monkeypatch.setenv("TINYGRAD_CNN_THREADS", "1")  # restored after the test (main sets it too)

    assert im2col_paths.main(["--rounds", "1", "--shapes", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("rows" in ln and "shift/rows" in ln for ln in lines)
