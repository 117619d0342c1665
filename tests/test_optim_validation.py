"""Every optimizer and schedule setting that would train on NaN is refused up front, with the
setting named: infinities and NaN as hyper-parameters, NaN as a schedule's progress."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tinygrad_cnn import Tensor, nn, optim

INF, NAN = float("inf"), float("nan")


def params():
    return [nn.Parameter(np.ones(2, np.float32))]


@pytest.mark.parametrize("make, needle", [
    (lambda: optim.SGD(params(), lr=INF), "SGD: invalid learning rate lr inf (must be finite)"),
    (lambda: optim.SGD(params(), lr=0.1, momentum=INF), "SGD: invalid momentum inf"),
    (lambda: optim.SGD(params(), lr=0.1, dampening=-INF), "SGD: invalid dampening -inf"),
    (lambda: optim.SGD(params(), lr=0.1, weight_decay=INF), "SGD: invalid weight_decay inf"),
    (lambda: optim.Adam(params(), lr=INF), "Adam: invalid learning rate lr inf"),
    (lambda: optim.AdamW(params(), lr=0.1, eps=INF), "AdamW: invalid eps inf"),
    (lambda: optim.Adam(params(), lr=0.1, weight_decay=NAN), "Adam: invalid weight_decay nan"),
    (lambda: optim.StepLR(optim.SGD(params(), lr=0.1), 2, gamma=INF), "StepLR: invalid gamma inf"),
    (lambda: optim.CosineAnnealingLR(optim.SGD(params(), lr=0.1), 5, eta_min=INF), "eta_min inf"),
    (lambda: optim.OneCycleLR(optim.SGD(params(), lr=0.1), max_lr=INF, total_steps=5), "max_lr inf"),
    (lambda: optim.OneCycleLR(optim.SGD(params(), lr=0.1), max_lr=-0.1, total_steps=5), "max_lr -0.1 (must be >= 0)"),
    (lambda: optim.OneCycleLR(optim.SGD(params(), lr=0.1), max_lr=[NAN], total_steps=5), "max_lr nan"),
    (lambda: optim.OneCycleLR(optim.Adam(params()), max_lr=0.1, total_steps=5, max_momentum=INF), "max_momentum inf"),
])
def test_non_finite_hyper_parameters_are_refused(make, needle):
    with pytest.raises(ValueError) as info:
        make()
    assert needle in str(info.value)


def test_a_loaded_state_with_an_infinite_lr_is_refused():
    opt = optim.SGD(params(), lr=0.1)
    state = opt.state_dict()
    state["param_groups"][0]["lr"] = INF
    with pytest.raises(ValueError, match="SGD.load_state_dict: param group 0: .*lr inf"):
        opt.load_state_dict(state)


def _schedules():
    return [optim.CosineAnnealingLR(optim.SGD(params(), lr=0.1), T_max=10),
            optim.OneCycleLR(optim.SGD(params(), lr=0.1, momentum=0.9), max_lr=0.1, total_steps=10),
            optim.OneCycleLR(optim.Adam(params()), max_lr=0.1, total_steps=10)]


@pytest.mark.parametrize("i", range(3))
def test_a_nan_progress_is_an_error_and_changes_nothing(i):
    sched = _schedules()[i]
    sched.set_progress(0.5)
    before = [dict(g) for g in sched.optimizer.param_groups]
    for call in (sched.set_progress, sched.lr_at) + ((sched.momentum_at,) if hasattr(sched, "momentum_at") else ()):
        with pytest.raises(ValueError, match=rf"{type(sched).__name__}: invalid progress fraction nan"):
            call(NAN)
        with pytest.raises(TypeError, match="progress fraction must be a real number"):
            call("0.5")
    assert [dict(g) for g in sched.optimizer.param_groups] == before


@pytest.mark.parametrize("i", range(3))
def test_progress_is_clamped_to_the_schedule(i):
    sched = _schedules()[i]
    assert sched.lr_at(INF) == sched.lr_at(1.0) and sched.lr_at(-INF) == sched.lr_at(0.0)
    assert sched.lr_at(np.float32(0.5)) == sched.lr_at(0.5)
    assert all(math.isfinite(v) for v in sched.lr_at(0.3))


def test_clip_grad_norm_still_takes_an_infinite_max_norm():
    p = params()[0]
    p.grad = Tensor(np.full(2, 3.0, np.float32))
    assert optim.clip_grad_norm_([p], INF) == pytest.approx(math.sqrt(18))
    np.testing.assert_array_equal(p.grad, [3.0, 3.0])
