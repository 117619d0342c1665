"""Optimizers and LR schedules: torch.optim as the oracle (skipped without torch), plus exact
properties that always run (plain SGD, state-dict round trips, dtypes, errors)."""
import math
import warnings

import numpy as np
import pytest

from tinygrad_cnn import Tensor, optim
from tinygrad_cnn.io import load_state, save_state

SHAPES = [(3, 4), (5,), ()]


def _problem(dtype, steps, seed=0):
    """Initial values and a fixed sequence of synthetic gradients for a few parameters."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]
    return init, grads


def _params(init):
    return [Tensor(a.copy(), requires_grad=True) for a in init]


def _run(opt, params, grads, sched=None):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = Tensor(g.copy())
        opt.step()
        if sched is not None:
            sched.step()


OPTIMIZER_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.5, dampening=0.3, weight_decay=0.1)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, betas=(0.3, 0.9), amsgrad=True)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    ("AdamW", dict(lr=0.02, weight_decay=0.05, amsgrad=True)),
]


# ------------------------------------------------------------------------ torch oracle


def _step_both(torch, opt, topt, ps, tps, grads):
    """Feed the same gradients to our optimizer and torch's, one step per set."""
    for gs in grads:
        for p, tp, g in zip(ps, tps, gs):
            p.grad = Tensor(g.copy())
            tp.grad = torch.tensor(g.copy())
        opt.step()
        topt.step()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,kwargs", OPTIMIZER_CASES)
def test_optimizer_matches_torch(name, kwargs, dtype):
    torch = pytest.importorskip("torch")
    init, grads = _problem(dtype, 20)
    ps = _params(init)
    tps = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    _step_both(torch, getattr(optim, name)(ps, **kwargs), getattr(torch.optim, name)(tps, **kwargs),
               ps, tps, grads)
    rtol, atol = (1e-6, 1e-12) if dtype == np.float64 else (2e-5, 1e-6)
    for p, tp in zip(ps, tps):
        assert p.data.dtype == dtype
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=rtol, atol=atol)


def test_param_groups_match_torch():
    torch = pytest.importorskip("torch")
    init, grads = _problem(np.float64, 20, seed=1)
    ps = _params(init)
    tps = [torch.tensor(a.copy(), requires_grad=True) for a in init]

    def groups(p):
        return [{"params": p[:1]}, {"params": p[1:], "lr": 0.03, "weight_decay": 0.2, "betas": (0.5, 0.9)}]

    _step_both(torch, optim.Adam(groups(ps), lr=0.01), torch.optim.Adam(groups(tps), lr=0.01), ps, tps, grads)
    for p, tp in zip(ps, tps):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-6, atol=1e-12)


def _torch_two_groups(torch, kind):
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    groups = [{"params": [a]}, {"params": [b], "lr": 0.5}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    return torch.optim.Adam(groups, lr=0.1)


def _mine_two_groups(kind):
    a = Tensor(np.zeros(3), requires_grad=True)
    b = Tensor(np.zeros(2), requires_grad=True)
    groups = [{"params": [a]}, {"params": [b], "lr": 0.5}]
    if kind == "sgd":
        return optim.SGD(groups, lr=0.1, momentum=0.9)
    return optim.Adam(groups, lr=0.1)


def _momenta(opt):
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in opt.param_groups]


SCHEDULE_CASES = [
    ("CosineAnnealingLR", (7,), dict(eta_min=0.001), 30),
    ("CosineAnnealingLR", (10,), dict(), 10),
    ("StepLR", (3,), dict(gamma=0.3), 20),
    ("ConstantLR", (), dict(factor=0.25, total_iters=4), 10),
    ("LambdaLR", (lambda e: 0.9 ** e,), dict(), 15),
    ("OneCycleLR", ([1.0, 2.0], 50), dict(), 50),
    ("OneCycleLR", ([1.0, 2.0], 37), dict(pct_start=0.25, anneal_strategy="linear"), 37),
    ("OneCycleLR", ([1.0, 2.0], 40), dict(three_phase=True, div_factor=10.0, final_div_factor=100.0), 40),
    ("OneCycleLR", ([1.0, 2.0], 20), dict(cycle_momentum=False), 20),
    ("OneCycleLR", (0.3,), dict(epochs=3, steps_per_epoch=7, base_momentum=0.8, max_momentum=0.9), 21),
]


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("name,args,kwargs,steps", SCHEDULE_CASES)
def test_schedule_matches_torch(name, args, kwargs, steps, kind):
    torch = pytest.importorskip("torch")
    opt, topt = _mine_two_groups(kind), _torch_two_groups(torch, kind)
    sched = getattr(optim, name)(opt, *args, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tsched = getattr(torch.optim.lr_scheduler, name)(topt, *args, **kwargs)
        for _ in range(steps):
            np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose([g["lr"] for g in opt.param_groups], [g["lr"] for g in topt.param_groups],
                                       rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(_momenta(opt), _momenta(topt), rtol=1e-12)
            opt.step()
            topt.step()
            sched.step()
            tsched.step()


def test_onecycle_past_total_steps_raises_like_torch():
    torch = pytest.importorskip("torch")
    opt, topt = _mine_two_groups("adam"), _torch_two_groups(torch, "adam")
    sched = optim.OneCycleLR(opt, 1.0, total_steps=5)
    tsched = torch.optim.lr_scheduler.OneCycleLR(topt, 1.0, total_steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(5):
            sched.step()
            tsched.step()
        with pytest.raises(ValueError):
            tsched.step()
    with pytest.raises(ValueError, match="total steps is 5"):
        sched.step()


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    torch = pytest.importorskip("torch")
    _, grads = _problem(np.float64, 1, seed=3)
    ps = _params([np.zeros_like(g) for g in grads[0]])
    tps = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads[0]]
    for p, tp, g in zip(ps, tps, grads[0]):
        p.grad = Tensor(g.copy())
        tp.grad = torch.tensor(g.copy())
    total = optim.clip_grad_norm_(ps, max_norm, norm_type=norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tps, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    assert total == pytest.approx(float(ttotal), rel=1e-12)
    for p, tp in zip(ps, tps):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------- always-run properties


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_without_momentum_is_exactly_p_minus_lr_g(dtype):
    init, grads = _problem(dtype, 3)
    ps = _params(init)
    opt = optim.SGD(ps, lr=0.37)
    expect = [a.copy() for a in init]
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = Tensor(g.copy())
        opt.step()
        expect = [e - dtype(0.37) * g if e.ndim else np.asarray(e - dtype(0.37) * g) for e, g in zip(expect, gs)]
        for p, e in zip(ps, expect):
            assert p.data.dtype == dtype
            np.testing.assert_array_equal(p.data, e)
    assert opt.state == {}


@pytest.mark.parametrize("name,kwargs", OPTIMIZER_CASES)
def test_float32_stays_float32_and_grads_untouched(name, kwargs):
    init, grads = _problem(np.float32, 3)
    ps = _params(init)
    opt = getattr(optim, name)(ps, **kwargs)
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = Tensor(g.copy())
        opt.param_groups[0]["lr"] = np.float64(opt.param_groups[0]["lr"])  # a numpy scalar must not promote
        data_ids = [id(p.data) for p in ps]
        opt.step()
        assert [id(p.data) for p in ps] == data_ids  # updated in place
        for p, g in zip(ps, gs):
            assert p.data.dtype == np.float32
            np.testing.assert_array_equal(p.grad, g)  # the step never writes into .grad
    for st in opt.state.values():
        for k, v in st.items():
            if k != "step":
                assert v.dtype == np.float32, k


@pytest.mark.parametrize("name,kwargs", OPTIMIZER_CASES)
def test_steps_after_the_first_allocate_no_parameter_sized_arrays(name, kwargs):
    import tracemalloc

    p = Tensor(np.ones(50_000, np.float32), requires_grad=True)
    p.grad = Tensor(np.full(50_000, 0.5, np.float32))
    opt = getattr(optim, name)([p], **kwargs)
    opt.step()  # creates the state and the scratch arrays
    tracemalloc.start()
    try:
        for _ in range(3):
            opt.step()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < p.data.nbytes // 4, f"{name} allocated {peak} bytes per step"


@pytest.mark.parametrize("name,kwargs", OPTIMIZER_CASES)
def test_params_without_grad_are_untouched(name, kwargs):
    init, grads = _problem(np.float64, 4)
    ps = _params(init)
    frozen = Tensor(np.ones(3), requires_grad=False)
    opt = getattr(optim, name)(ps + [frozen], **kwargs)
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = Tensor(g.copy())
        ps[1].grad = None
        opt.step()
    np.testing.assert_array_equal(ps[1].data, init[1])
    np.testing.assert_array_equal(frozen.data, np.ones(3))
    assert ps[1] not in opt.state and frozen not in opt.state
    assert not np.array_equal(ps[0].data, init[0])


def test_zero_grad():
    ps = _params(_problem(np.float32, 0)[0])
    opt = optim.SGD(ps, lr=0.1)
    for p in ps:
        p.grad = Tensor(np.ones(p.shape, np.float32))
    opt.zero_grad(set_to_none=False)
    for p in ps:
        np.testing.assert_array_equal(p.grad, 0)
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


def test_zero_grad_keeping_arrays_cuts_history_and_stales_graphs_that_read_the_grad():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * x * x).sum().backward(create_graph=True)  # x.grad = 3x^2, with a graph
    assert x.grad.requires_grad
    penalty = (x.grad * x.grad).sum()  # a graph that reads x.grad's array
    kept = x.grad.data
    optim.SGD([x], lr=0.1).zero_grad(set_to_none=False)
    assert x.grad.data is kept and not x.grad.requires_grad and x.grad.grad_fn is None
    np.testing.assert_array_equal(x.grad, 0)
    with pytest.raises(RuntimeError, match="modified in place.*SGD.zero_grad"):
        penalty.backward()


@pytest.mark.parametrize("name, kwargs", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.1)),
                                          ("AdamW", dict(lr=0.1))])
def test_step_writes_parameters_a_live_graph_holds_and_that_graph_refuses_backward(name, kwargs):
    p = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    opt = getattr(optim, name)([p], **kwargs)
    loss = (p * p).sum()
    loss.backward(retain_graph=True)  # the graph still holds p's array: it is read-only to numpy
    with pytest.raises(ValueError, match="read-only"):
        p.data[0] = 5.0
    before = p.data.copy()
    opt.step()  # the optimizer may write it all the same
    assert not np.array_equal(p.data, before)
    with pytest.raises(RuntimeError, match=f"modified in place: input . of 'mul' .*written by {name}.step"):
        loss.backward()  # would differentiate at the new values with the old ones' graph
    p.grad = None
    (p * p).sum().backward()  # a graph recorded after the step is fine
    np.testing.assert_array_equal(p.grad, 2 * p.data)


def test_clip_grad_norm_scales_a_grad_that_a_graph_reads():
    x = Tensor(np.array([3.0, 4.0]), requires_grad=True)
    (x * x).sum().backward(create_graph=True)  # x.grad = 2x = (6, 8), with a graph
    penalty = (x.grad * x.grad).sum()
    assert optim.clip_grad_norm_([x], 1.0) == pytest.approx(10.0)
    np.testing.assert_allclose(x.grad, [0.6, 0.8], rtol=1e-6)
    with pytest.raises(RuntimeError, match="written by clip_grad_norm_"):
        penalty.backward()


def test_a_grad_that_is_not_a_tensor_is_refused_when_assigned():
    p = Tensor(np.zeros(3), requires_grad=True)
    with pytest.raises(TypeError, match=r"grad: assigned a ndarray; a gradient is a Tensor"):
        p.grad = np.ones(3)
    assert p.grad is None


def _state_roundtrip_case(name, kwargs, sched_factory, through_file, tmp_path):
    init, grads = _problem(np.float32, 10, seed=5)

    def make(ps):
        opt = getattr(optim, name)([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.02}], **kwargs)
        return opt, (sched_factory(opt) if sched_factory else None)

    ref = _params(init)
    ref_opt, ref_sched = make(ref)
    _run(ref_opt, ref, grads, ref_sched)

    first = _params(init)
    opt, sched = make(first)
    _run(opt, first, grads[:5], sched)
    osd = opt.state_dict()
    ssd = sched.state_dict() if sched else None
    snapshot = [p.data.copy() for p in first]  # the model checkpoint taken with them
    if through_file:
        save_state(tmp_path / "ck.npz", {"opt": osd, "sched": ssd})
        back = load_state(tmp_path / "ck.npz")
        osd, ssd = back["opt"], back["sched"]
    _run(opt, first, grads[5:], sched)  # the saved dicts must not change with the optimizer

    resumed = _params(snapshot)
    opt2, sched2 = make(resumed)
    opt2.load_state_dict(osd)
    if sched2:
        sched2.load_state_dict(ssd)
    _run(opt2, resumed, grads[5:], sched2)
    for p, q in zip(resumed, ref):
        np.testing.assert_array_equal(p.data, q.data)
    for p, q in zip(resumed, ref):
        for k, v in ref_opt.state.get(q, {}).items():
            np.testing.assert_array_equal(opt2.state[p][k], v)
    if sched2:
        assert sched2.get_last_lr() == ref_sched.get_last_lr()


@pytest.mark.parametrize("through_file", [False, True])
@pytest.mark.parametrize("name,kwargs", [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("SGD", dict(lr=0.1, momentum=0.8, dampening=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
    ("AdamW", dict(lr=0.01)),
])
def test_state_dict_round_trip_is_bitwise(name, kwargs, through_file, tmp_path):
    _state_roundtrip_case(name, kwargs, None, through_file, tmp_path)


@pytest.mark.parametrize("through_file", [False, True])
@pytest.mark.parametrize("name,sched", [
    ("SGD", lambda o: optim.OneCycleLR(o, [0.5, 0.2], total_steps=10)),
    ("Adam", lambda o: optim.OneCycleLR(o, 0.01, total_steps=12, three_phase=True)),
    ("Adam", lambda o: optim.CosineAnnealingLR(o, T_max=10, eta_min=1e-4)),
    ("SGD", lambda o: optim.StepLR(o, 3, gamma=0.5)),
])
def test_state_dict_round_trip_with_schedule(name, sched, through_file, tmp_path):
    kwargs = dict(lr=0.1, momentum=0.9) if name == "SGD" else dict(lr=0.01)
    _state_roundtrip_case(name, kwargs, sched, through_file, tmp_path)


def test_state_dict_layout_is_plain(tmp_path):
    ps = _params(_problem(np.float64, 0)[0])
    opt = optim.Adam([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.1}])
    for p in ps:
        p.grad = Tensor(np.ones(p.shape))
    opt.step()
    ps[0].grad = None
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1, 2]]
    assert sd["param_groups"][1]["lr"] == 0.1 and sd["param_groups"][0]["betas"] == (0.9, 0.999)
    assert set(sd["state"]) == {0, 1, 2}
    assert sd["state"][2]["step"] == 1 and isinstance(sd["state"][2]["step"], int)
    assert isinstance(sd["state"][2]["exp_avg"], np.ndarray)
    save_state(tmp_path / "opt.npz", sd)  # plain data: an .npz without pickle holds it
    back = load_state(tmp_path / "opt.npz")
    assert back["param_groups"] == sd["param_groups"] and set(back["state"]) == {0, 1, 2}


def test_load_state_dict_validates_and_changes_nothing_on_error():
    ps = _params(_problem(np.float64, 0)[0])
    opt = optim.Adam(ps, lr=0.01)
    for p in ps:
        p.grad = Tensor(np.ones(p.shape))
    opt.step()
    good = opt.state_dict()

    other = optim.Adam([Tensor(np.zeros((3, 4)), requires_grad=True)])
    with pytest.raises(ValueError, match="Adam.load_state_dict: param group 0 has 3 parameter"):
        other.load_state_dict(good)

    two = optim.Adam([{"params": ps[:1]}, {"params": ps[1:]}])
    with pytest.raises(ValueError, match="2 param group"):
        optim.Adam(ps).load_state_dict(two.state_dict())

    bad = opt.state_dict()
    bad["state"][1]["exp_avg"] = np.zeros(4)
    fresh = optim.Adam(ps, lr=0.5)
    with pytest.raises(ValueError, match=r"'exp_avg' of parameter 1 has shape \(4,\).*\(5,\)"):
        fresh.load_state_dict(bad)
    assert fresh.state == {} and fresh.param_groups[0]["lr"] == 0.5

    sgd = optim.SGD(ps, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="unknown entries"):
        sgd.load_state_dict(good)

    bad = opt.state_dict()
    del bad["state"][2]["exp_avg_sq"]
    with pytest.raises(ValueError, match=r"parameter 2 lacks \['exp_avg_sq'\]"):
        fresh.load_state_dict(bad)

    bad = opt.state_dict()
    bad["state"][7] = bad["state"].pop(0)
    with pytest.raises(ValueError, match="index 7"):
        fresh.load_state_dict(bad)

    bad = opt.state_dict()
    bad["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match="learning rate"):
        fresh.load_state_dict(bad)

    with pytest.raises(ValueError, match="param_groups"):
        fresh.load_state_dict({"state": {}})


@pytest.mark.parametrize("make,match", [
    (lambda ps: optim.SGD(ps, lr=-0.1), r"SGD: invalid learning rate lr -0\.1"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5), r"SGD: invalid momentum -0\.5"),
    (lambda ps: optim.SGD(ps, lr=0.1, weight_decay=-1), r"SGD: invalid weight_decay -1"),
    (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), "SGD: Nesterov momentum requires"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "dampening 0"),
    (lambda ps: optim.Adam(ps, lr=-1e-3), r"Adam: invalid learning rate lr -0\.001"),
    (lambda ps: optim.Adam(ps, betas=(1.0, 0.999)), r"Adam: invalid beta1 in betas 1\.0"),
    (lambda ps: optim.Adam(ps, betas=(0.9, -0.1)), r"Adam: invalid beta2 in betas -0\.1"),
    (lambda ps: optim.Adam(ps, betas=(0.9,)), "Adam: betas must be a pair"),
    (lambda ps: optim.Adam(ps, eps=-1e-8), "Adam: invalid eps"),
    (lambda ps: optim.AdamW(ps, weight_decay=-0.01), r"AdamW: invalid weight_decay -0\.01"),
    (lambda ps: optim.AdamW(ps, lr=float("nan")), "AdamW: invalid learning rate lr nan"),
    (lambda ps: optim.Adam([{"params": ps[:1]}, {"params": ps[1:], "lr": -2.0}]), "Adam: invalid learning rate lr -2"),
    (lambda ps: optim.SGD([], lr=0.1), "SGD: got an empty parameter list"),
    (lambda ps: optim.Adam([{"params": []}]), "Adam: param group 0 has an empty parameter list"),
    (lambda ps: optim.Adam(ps + ps[:1]), "appears more than once"),
    (lambda ps: optim.Adam([{"params": ps[:2]}, {"params": ps[1:]}]), "appears more than once"),
])
def test_bad_arguments_raise_value_error(make, match):
    ps = _params(_problem(np.float32, 0)[0])
    with pytest.raises(ValueError, match=match):
        make(ps)


@pytest.mark.parametrize("make,match", [
    (lambda ps: optim.SGD(ps + [np.zeros(3)], lr=0.1), "SGD: param group 0, parameter 3 is a ndarray"),
    (lambda ps: optim.Adam(ps[0]), "Adam: params must be an iterable.*single Tensor"),
    (lambda ps: optim.Adam(set(ps)), "not a set"),
    (lambda ps: optim.Adam(ps, lr="0.1"), "Adam: learning rate lr must be a real number"),
    (lambda ps: optim.Adam([Tensor(np.arange(3))]), "only floating-point"),
    (lambda ps: optim.Adam(ps, amsgrad=1), "amsgrad must be True or False"),
])
def test_bad_argument_types_raise_type_error(make, match):
    ps = _params(_problem(np.float32, 0)[0])
    with pytest.raises(TypeError, match=match):
        make(ps)


def test_step_checks_grad_shape():
    """A gradient of another shape cannot be assigned; one left behind when the parameter's
    data was replaced by hand is refused by step."""
    p = Tensor(np.zeros(3), requires_grad=True)
    opt = optim.Adam([p])
    with pytest.raises(ValueError, match=r"gradient of shape \(4,\)"):
        p.grad = Tensor(np.zeros(4))
    p.grad = Tensor(np.zeros(3))
    p.data = np.zeros(4)
    with pytest.raises(ValueError, match=r"grad has shape \(3,\)"):
        opt.step()


def test_step_closure_returns_loss():
    p = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    opt = optim.SGD([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss.item()) == 5.0
    np.testing.assert_allclose(p.data, [0.8, -1.6])


@pytest.mark.parametrize("make", [lambda ps: optim.Adam(ps, lr=0.1), lambda ps: optim.AdamW(ps, lr=0.1),
                                  lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9)])
def test_descends_a_quadratic_built_with_tensor_ops(make):
    rng = np.random.default_rng(0)
    target = Tensor(rng.standard_normal((4, 3)).astype(np.float32))
    scale = Tensor(np.linspace(0.5, 2.0, 12, dtype=np.float32).reshape(4, 3))
    x = Tensor(np.zeros((4, 3), np.float32), requires_grad=True)
    opt = make([x])

    def loss_fn():
        d = (x - target) * scale
        return (d * d).sum()

    first = float(loss_fn().item())
    for _ in range(300):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert x.data.dtype == np.float32
    assert float(loss_fn().item()) < 1e-3 * first
    np.testing.assert_allclose(x.data, target.data, atol=0.05)


def test_clip_grad_norm_properties():
    a = Tensor(np.zeros(2), requires_grad=True)
    b = Tensor(np.zeros(1), requires_grad=True)
    c = Tensor(np.zeros(1), requires_grad=True)
    a.grad, b.grad = Tensor(np.array([3.0, 0.0])), Tensor(np.array([4.0]))
    assert optim.clip_grad_norm_([a, b, c], 10.0) == 5.0
    np.testing.assert_array_equal(a.grad, [3.0, 0.0])  # under the limit: untouched
    assert optim.clip_grad_norm_([a, b, c], 1.0) == 5.0
    np.testing.assert_allclose(np.sqrt((a.grad.data ** 2).sum() + (b.grad.data ** 2).sum()), 1.0, rtol=1e-6)
    assert optim.clip_grad_norm_([c], 1.0) == 0.0
    f = Tensor(np.zeros(2, np.float32), requires_grad=True)
    f.grad = Tensor(np.array([30.0, 40.0], np.float32))
    optim.clip_grad_norm_(f, 5.0)
    assert f.grad.dtype == np.float32
    f.grad = Tensor(np.array([np.inf, 0.0], np.float32))
    with pytest.raises(RuntimeError, match="error_if_nonfinite"):
        optim.clip_grad_norm_([f], 1.0, error_if_nonfinite=True)


# ----------------------------------------------------------------------------- schedules


def _sgd(lr=0.1, momentum=0.9, groups=1):
    ps = [Tensor(np.zeros(2), requires_grad=True) for _ in range(groups)]
    return optim.SGD([{"params": [p]} for p in ps], lr=lr, momentum=momentum)


def test_onecycle_known_values_and_progress_function():
    opt = _sgd()
    sched = optim.OneCycleLR(opt, max_lr=1.0, total_steps=10, pct_start=0.3, div_factor=25.0,
                             final_div_factor=1e4)  # warm-up ends at step 0.3 * 10 - 1 = 2
    lrs, moms = [], []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.04) and moms[0] == pytest.approx(0.95)
    assert lrs[2] == max(lrs) == pytest.approx(1.0) and moms[2] == min(moms) == pytest.approx(0.85)
    assert lrs[-1] == pytest.approx(0.04 / 1e4)
    # the progress function gives the same curve: step k is fraction k / (total_steps - 1)
    for k in (0, 1, 2, 5, 9):
        assert sched.lr_at(k / 9)[0] == pytest.approx(lrs[k], rel=1e-12)
        assert sched.momentum_at(k / 9)[0] == pytest.approx(moms[k], rel=1e-12)
    assert sched.lr_at(2.0) == sched.lr_at(1.0) and sched.lr_at(-1) == sched.lr_at(0)
    sched.set_progress(0.5)
    assert opt.param_groups[0]["lr"] == sched.lr_at(0.5)[0] == sched.get_last_lr()[0]
    assert opt.param_groups[0]["momentum"] == sched.momentum_at(0.5)[0]


def test_onecycle_with_adam_cycles_beta1_only():
    p = Tensor(np.zeros(2), requires_grad=True)
    opt = optim.Adam([p], lr=0.1, betas=(0.9, 0.99))
    sched = optim.OneCycleLR(opt, max_lr=0.01, total_steps=10)
    assert opt.param_groups[0]["betas"] == (0.95, 0.99)
    for _ in range(3):
        sched.step()
    b1, b2 = opt.param_groups[0]["betas"]
    assert 0.85 <= b1 < 0.95 and b2 == 0.99
    none = optim.OneCycleLR(optim.Adam([Tensor(np.zeros(1), requires_grad=True)]), 0.1, 10,
                            cycle_momentum=False)
    assert none.momentum_at(0.5) is None


def test_cosine_progress_function():
    opt = _sgd(lr=1.0)
    sched = optim.CosineAnnealingLR(opt, T_max=8, eta_min=0.1)
    seen = []
    for _ in range(9):
        seen.append(sched.get_last_lr()[0])
        sched.step()
    assert seen[0] == 1.0 and seen[-1] == pytest.approx(0.1)
    assert sched.lr_at(0.5)[0] == pytest.approx(0.55)
    for k in range(9):
        assert sched.lr_at(k / 8)[0] == pytest.approx(seen[k], rel=1e-12)
    sched.set_progress(0.25)
    assert opt.param_groups[0]["lr"] == pytest.approx(seen[2])


def test_schedule_state_dict_round_trip_and_errors(tmp_path):
    opt = _sgd(groups=2)
    sched = optim.OneCycleLR(opt, [0.5, 1.0], total_steps=20, three_phase=True)
    for _ in range(7):
        sched.step()
    sd = sched.state_dict()
    assert all(isinstance(v, (int, float, bool, list)) for v in sd.values())
    save_state(tmp_path / "sched.npz", sd)
    opt2 = _sgd(groups=2)
    sched2 = optim.OneCycleLR(opt2, [0.5, 1.0], total_steps=20, three_phase=True)
    sched2.load_state_dict(load_state(tmp_path / "sched.npz"))
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    assert [g["momentum"] for g in opt2.param_groups] == [g["momentum"] for g in opt.param_groups]
    for _ in range(5):
        sched.step()
        sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr()

    one = optim.StepLR(_sgd(groups=1), 2)
    with pytest.raises(ValueError, match="2 param group"):
        optim.StepLR(_sgd(groups=2), 2).load_state_dict(one.state_dict())
    with pytest.raises(ValueError, match="missing"):
        one.load_state_dict({"last_epoch": 3})


def test_schedule_argument_errors():
    opt = _sgd()
    with pytest.raises(ValueError, match="total_steps"):
        optim.OneCycleLR(opt, 0.1, total_steps=0)
    with pytest.raises(ValueError, match="pct_start"):
        optim.OneCycleLR(opt, 0.1, total_steps=10, pct_start=1.5)
    with pytest.raises(ValueError, match="anneal_strategy"):
        optim.OneCycleLR(opt, 0.1, total_steps=10, anneal_strategy="exp")
    with pytest.raises(ValueError, match="expected 1 values for max_lr"):
        optim.OneCycleLR(opt, [0.1, 0.2], total_steps=10)
    with pytest.raises(ValueError, match="T_max"):
        optim.CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(ValueError, match="StepLR: step_size must be a positive integer; got 0"):
        optim.StepLR(opt, 0)
    with pytest.raises(ValueError, match="ConstantLR: total_iters must be a non-negative integer; got -1"):
        optim.ConstantLR(opt, total_iters=-1)
    with pytest.raises(ValueError, match="OneCycleLR: steps_per_epoch must be a positive integer; got 2.5"):
        optim.OneCycleLR(opt, 0.1, epochs=2, steps_per_epoch=2.5)
    with pytest.raises(ValueError, match="OneCycleLR: epochs must be a positive integer; got True"):
        optim.OneCycleLR(opt, 0.1, epochs=True, steps_per_epoch=2)
    with pytest.raises(TypeError, match="not an Optimizer"):
        optim.CosineAnnealingLR(object(), 5)
    with pytest.raises(ValueError, match="lr_lambdas"):
        optim.LambdaLR(opt, [lambda e: 1.0, lambda e: 1.0])


def test_lambda_and_constant_schedules():
    opt = _sgd(lr=0.2)
    sched = optim.LambdaLR(opt, lambda e: 1.0 / (1 + e))
    for e in range(1, 4):
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.2 / (1 + e))
    opt = _sgd(lr=0.2)
    const = optim.ConstantLR(opt, factor=1.0, total_iters=3)
    for _ in range(5):
        assert const.get_last_lr() == [0.2]
        const.step()
