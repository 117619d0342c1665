"""The layers of issue 15 against their PyTorch twins: BatchNorm1d, LayerNorm, GroupNorm,
Embedding, the activation modules, Identity/Flatten, ModuleList/ModuleDict (state_dict names)
and frozen parameters. Forward values and gradients in float64, odd shapes, batch 1."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn

import tinygrad_cnn as tc  # noqa: E402
import tinygrad_cnn.nn as nn  # noqa: E402
from tinygrad_cnn import Tensor  # noqa: E402

RTOL, ATOL = 1e-10, 1e-12


def _np(x):
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _close(ours, theirs, rtol=RTOL, atol=ATOL):
    ours, theirs = _np(ours), _np(theirs)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol)


def _load_twin(ours, theirs):
    """Copy the torch module's state into ours, by PyTorch's names (strict: the names match)."""
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})


def _compare(ours, theirs, x, seed=0, integer_input=False):
    """Forward, and the gradients of the input and of every parameter (by name)."""
    rng = np.random.default_rng(seed)
    if integer_input:
        xo, xt = Tensor(x), torch.tensor(x)
    else:
        xo, xt = Tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yo, yt = ours(xo), theirs(xt)
    _close(yo, yt)
    g = rng.standard_normal(yo.shape)
    yo.backward(g)
    yt.backward(torch.tensor(g))
    if not integer_input:
        _close(xo.grad, xt.grad)
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        t = theirs_params[name]
        if t.grad is None:
            assert p.grad is None or not np.any(_np(p.grad)), name
        else:
            _close(p.grad, t.grad)
    return yo


def _rand(shape, seed=0, scale=1.0, shift=0.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale + shift


# ------------------------------------------------------------------------------ BatchNorm1d


@pytest.mark.parametrize("shape", [(5, 3), (2, 3), (4, 3, 7), (1, 3, 5), (3, 1, 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_1d_trains_and_evaluates_as_torch(shape, affine):
    c = shape[1]
    theirs = tnn.BatchNorm1d(c, momentum=0.3, affine=affine).double()
    ours = nn.BatchNorm1d(c, momentum=0.3, affine=affine, dtype=np.float64)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    if affine:
        with torch.no_grad():
            theirs.weight.copy_(torch.tensor(_rand(c, 1) + 1))
            theirs.bias.copy_(torch.tensor(_rand(c, 2)))
    _load_twin(ours, theirs)
    for step in range(2):  # training: batch statistics; running statistics updated
        _compare(ours, theirs, _rand(shape, 3 + step, 2.0, 1.0), seed=step)
    for name, buf in theirs.named_buffers():
        _close(ours.state_dict()[name], buf)
    ours.eval(), theirs.eval()
    _compare(ours, theirs, _rand(shape, 9, 2.0, 1.0))


def test_batch_norm_1d_rejects_other_ranks_and_a_single_value_per_channel():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match=r"BatchNorm1d: expects \(N, 3\) or \(N, 3, L\) input; got shape \(2, 3, 4, 4\)"):
        bn(Tensor(np.zeros((2, 3, 4, 4), np.float32)))
    with pytest.raises(ValueError, match=r"BatchNorm1d: expects \(N, 3\) or \(N, 3, L\) input; got shape \(2, 4\)"):
        bn(Tensor(np.zeros((2, 4), np.float32)))
    with pytest.raises(ValueError, match="BatchNorm1d: expected more than 1 value per channel when training"):
        bn(Tensor(np.zeros((1, 3), np.float32)))  # as PyTorch: the batch variance would be 0/0
    bn.eval()(Tensor(np.zeros((1, 3), np.float32)))  # evaluation uses the running statistics: fine
    with pytest.raises(ValueError, match=r"BatchNorm2d: expects \(N, 3, H, W\) input; got shape \(2, 3\)"):
        nn.BatchNorm2d(3)(Tensor(np.zeros((2, 3), np.float32)))


# ------------------------------------------------------------------------------ LayerNorm


@pytest.mark.parametrize("shape, normalized", [((3, 5), 5), ((1, 4), (4,)), ((2, 3, 4), (3, 4)), ((2, 3, 5), 5),
                                               ((7,), 7)])
@pytest.mark.parametrize("affine, bias", [(True, True), (True, False), (False, False)])
def test_layer_norm_as_torch(shape, normalized, affine, bias):
    theirs = tnn.LayerNorm(normalized, eps=1e-4, elementwise_affine=affine, bias=bias).double()
    ours = nn.LayerNorm(normalized, eps=1e-4, elementwise_affine=affine, bias=bias, dtype=np.float64)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.tensor(_rand(tuple(p.shape), 5)))
    _load_twin(ours, theirs)
    _compare(ours, theirs, _rand(shape, 1, 3.0, -2.0))


def test_layer_norm_shape_errors():
    with pytest.raises(ValueError, match=r"layer_norm: normalized_shape \(4,\) must be the trailing sides of the "
                                         r"input's shape; got input of shape \(2, 3\)"):
        nn.LayerNorm(4)(Tensor(np.zeros((2, 3), np.float32)))


# ------------------------------------------------------------------------------ GroupNorm


@pytest.mark.parametrize("shape, groups", [((2, 6), 3), ((1, 4, 5), 2), ((3, 6, 2, 3), 1), ((2, 6, 3, 1), 6),
                                           ((1, 3, 2), 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_as_torch(shape, groups, affine):
    c = shape[1]
    theirs = tnn.GroupNorm(groups, c, eps=1e-3, affine=affine).double()
    ours = nn.GroupNorm(groups, c, eps=1e-3, affine=affine, dtype=np.float64)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.tensor(_rand(tuple(p.shape), 6)))
    _load_twin(ours, theirs)
    _compare(ours, theirs, _rand(shape, 2, 2.0, 0.5))


def test_group_norm_errors():
    with pytest.raises(ValueError, match=r"GroupNorm: num_channels \(5\) must divide into num_groups \(2\)"):
        nn.GroupNorm(2, 5)
    with pytest.raises(ValueError, match=r"GroupNorm: expects \(N, 4, ...\) input; got shape \(2, 3\)"):
        nn.GroupNorm(2, 4)(Tensor(np.zeros((2, 3), np.float32)))


# ------------------------------------------------------------------------------ Embedding


@pytest.mark.parametrize("padding_idx", [None, 0, 3, -1])
@pytest.mark.parametrize("idx_shape", [(5,), (2, 3), (1,), ()])
def test_embedding_as_torch(padding_idx, idx_shape):
    theirs = tnn.Embedding(7, 3, padding_idx=padding_idx).double()
    ours = nn.Embedding(7, 3, padding_idx=padding_idx, dtype=np.float64)
    if padding_idx is not None:  # the padding row starts at zero, as PyTorch's
        np.testing.assert_array_equal(ours.weight.data[padding_idx], 0.0)
        with torch.no_grad():
            theirs.weight[padding_idx] = 1.5  # a non-zero padding row: its value is used, its gradient is not
    _load_twin(ours, theirs)
    idx = np.random.default_rng(0).integers(0, 7, idx_shape)
    if padding_idx is not None and idx.ndim:
        idx.flat[0] = padding_idx % 7  # the padding row, used (twice when possible)
        idx.flat[-1] = padding_idx % 7
    out = _compare(ours, theirs, idx, integer_input=True)
    assert out.shape == idx_shape + (3,)


def test_embedding_from_pretrained_and_errors():
    w = _rand((4, 2))
    emb = nn.Embedding.from_pretrained(w)
    assert not emb.weight.requires_grad and not emb(np.array([1, 2])).requires_grad
    np.testing.assert_array_equal(emb(np.array([3])).data, w[[3]])
    assert nn.Embedding.from_pretrained(w, freeze=False).weight.requires_grad
    with pytest.raises(IndexError, match=r"embedding: indices must lie in \[0, 4\) for a weight of 4 rows; got values "
                                         r"from -1 to 2"):
        emb(np.array([-1, 2]))  # no silent wrap-around of negative indices
    with pytest.raises(TypeError, match="embedding: indices must be integers; got dtype float64"):
        emb(np.array([1.0]))
    with pytest.raises(ValueError, match=r"Embedding: padding_idx must lie in \[-4, 4\) for 4 embeddings; got 4"):
        nn.Embedding(4, 2, padding_idx=4)


# -------------------------------------------------------------------------- activations


ACTIVATIONS = [
    (lambda: nn.ReLU(), lambda: tnn.ReLU()),
    (lambda: nn.LeakyReLU(), lambda: tnn.LeakyReLU()),
    (lambda: nn.LeakyReLU(0.3), lambda: tnn.LeakyReLU(0.3)),
    (lambda: nn.ELU(0.5), lambda: tnn.ELU(0.5)),
    (lambda: nn.CELU(0.5), lambda: tnn.CELU(0.5)),
    (lambda: nn.SELU(), lambda: tnn.SELU()),
    (lambda: nn.GELU(), lambda: tnn.GELU()),
    (lambda: nn.GELU(approximate="tanh"), lambda: tnn.GELU(approximate="tanh")),
    (lambda: nn.SiLU(), lambda: tnn.SiLU()),
    (lambda: nn.Softplus(), lambda: tnn.Softplus()),
    (lambda: nn.Softplus(beta=2.0, threshold=3.0), lambda: tnn.Softplus(beta=2.0, threshold=3.0)),
    (lambda: nn.LogSigmoid(), lambda: tnn.LogSigmoid()),
    (lambda: nn.ReLU6(), lambda: tnn.ReLU6()),
    (lambda: nn.Hardtanh(-2.0, 1.5), lambda: tnn.Hardtanh(-2.0, 1.5)),
    (lambda: nn.Hardswish(), lambda: tnn.Hardswish()),
    (lambda: nn.Mish(), lambda: tnn.Mish()),
    (lambda: nn.Sigmoid(), lambda: tnn.Sigmoid()),
    (lambda: nn.Tanh(), lambda: tnn.Tanh()),
    (lambda: nn.Softmax(dim=1), lambda: tnn.Softmax(dim=1)),
    (lambda: nn.LogSoftmax(dim=-1), lambda: tnn.LogSoftmax(dim=-1)),
    (lambda: nn.Identity(54, unused="argument"), lambda: tnn.Identity(54, unused="argument")),
    (lambda: nn.Flatten(), lambda: tnn.Flatten()),
    (lambda: nn.Flatten(0, 1), lambda: tnn.Flatten(0, 1)),
    (lambda: nn.Dropout(0.3).eval(), lambda: tnn.Dropout(0.3).eval()),
]


@pytest.mark.parametrize("make", ACTIVATIONS, ids=lambda m: type(m[0]()).__name__ + repr(m[0]()))
def test_activation_modules_as_torch(make):
    ours, theirs = make[0](), make[1]()
    x = _rand((3, 4, 2), 0, 4.0)
    x[0, 0] = [0.0, -3.0]  # kinks
    x[1, 1] = [3.0, 6.0]
    _compare(ours, theirs, x)
    _compare(ours, theirs, x[:1])  # batch 1


def test_activation_module_reprs_and_arguments():
    assert repr(nn.LeakyReLU(0.2)) == "LeakyReLU(negative_slope=0.2)"
    assert nn.LeakyReLU(0.2).negative_slope == 0.2 and nn.Softplus().threshold == 20.0
    assert repr(nn.GELU(approximate="tanh")) == "GELU(approximate='tanh')"
    assert repr(nn.Flatten()) == "Flatten(start_dim=1, end_dim=-1)"
    with pytest.raises(ValueError, match="GELU: approximate must be 'none' or 'tanh'; got 'fast'"):
        nn.GELU("fast")
    with pytest.raises(ValueError, match="CELU: alpha must not be 0"):
        nn.CELU(0.0)


@pytest.mark.parametrize("shape", [(), (4,), (2, 3), (2, 3, 4), (2, 1, 3, 2)])
def test_softmax_modules_without_dim_choose_as_torch_with_a_warning(shape):
    x = _rand(shape, 1)
    for ours, theirs in ((nn.Softmax(), tnn.Softmax()), (nn.LogSoftmax(), tnn.LogSoftmax())):
        with pytest.warns(UserWarning, match="implicit dimension choice"):
            yo = ours(Tensor(x))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _close(yo, theirs(torch.tensor(x)))


# ----------------------------------------------------------------------------- containers


class OursNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 5, dtype=np.float64), nn.Linear(5, 3, dtype=np.float64)])
        self.heads = nn.ModuleDict({"cls": nn.Linear(3, 2, dtype=np.float64),
                                    "norm": nn.LayerNorm(3, dtype=np.float64)})
        self.blocks = nn.ModuleList()
        self.blocks.append(nn.Sequential(nn.Linear(3, 3, dtype=np.float64), nn.GELU()))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x).relu()
        for block in self.blocks:
            x = block(x)
        return self.heads["cls"](self.heads["norm"](x))


class TheirsNet(tnn.Module):
    def __init__(self):
        super().__init__()
        self.layers = tnn.ModuleList([tnn.Linear(4, 5), tnn.Linear(5, 3)])
        self.heads = tnn.ModuleDict({"cls": tnn.Linear(3, 2), "norm": tnn.LayerNorm(3)})
        self.blocks = tnn.ModuleList()
        self.blocks.append(tnn.Sequential(tnn.Linear(3, 3), tnn.GELU()))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x).relu()
        for block in self.blocks:
            x = block(x)
        return self.heads["cls"](self.heads["norm"](x))


def test_module_list_and_dict_give_torch_state_dict_names_and_values():
    torch.manual_seed(0)
    theirs = TheirsNet().double()
    ours = OursNet()
    assert list(ours.state_dict()) == list(theirs.state_dict())  # layers.0.weight, heads.cls.bias, blocks.0.0.weight
    _load_twin(ours, theirs)
    _compare(ours, theirs, _rand((3, 4), 2))
    _compare(ours, theirs, _rand((1, 4), 3))


def test_module_list_behaves_as_a_list():
    a, b, c = nn.ReLU(), nn.Tanh(), nn.Sigmoid()
    ml = nn.ModuleList([a, b])
    ml.append(c)
    assert len(ml) == 3 and ml[-1] is c and list(ml) == [a, b, c]
    assert isinstance(ml[1:], nn.ModuleList) and list(ml[1:]) == [b, c]
    ml.insert(0, c)
    assert list(ml._modules) == ["0", "1", "2", "3"] and ml[0] is c
    del ml[1]
    assert list(ml._modules) == ["0", "1", "2"] and list(ml) == [c, b, c]  # renumbered, as PyTorch
    ml[2] = a
    ml += [nn.Identity()]
    assert len(ml) == 4 and ml[2] is a
    with pytest.raises(IndexError, match="ModuleList: index 4 is out of range for 4 modules"):
        ml[4]
    with pytest.raises(TypeError, match="ModuleList: item 0 is a int, not a Module"):
        nn.ModuleList([1])
    with pytest.raises(NotImplementedError, match="ModuleList is not callable"):
        ml(Tensor(np.zeros(2)))


def test_module_dict_behaves_as_a_dict():
    md = nn.ModuleDict([("a", nn.ReLU()), ("b", nn.Tanh())])
    md["c"] = nn.Sigmoid()
    assert list(md) == ["a", "b", "c"] and "b" in md and len(md) == 3
    assert [k for k, _ in md.items()] == list(md.keys())
    assert isinstance(md.pop("a"), nn.ReLU) and list(md) == ["b", "c"]
    del md["b"]
    md.update({"d": nn.Identity()})
    assert list(md) == ["c", "d"]
    with pytest.raises(KeyError, match="ModuleDict: key 'x.y' must be a non-empty name without '.'"):
        md["x.y"] = nn.ReLU()
    with pytest.raises(KeyError, match="ModuleDict: key 'items' would shadow the attribute"):
        md["items"] = nn.ReLU()
    with pytest.raises(KeyError, match=r"ModuleDict: no module named 'zz' \(have \['c', 'd'\]\)"):
        md["zz"]
    with pytest.raises(TypeError, match="ModuleDict: the value for 'e' is a str, not a Module"):
        md["e"] = "relu"


# -------------------------------------------------------------------------- frozen parameters


def test_a_frozen_parameter_records_no_graph_and_gets_no_gradient():
    w = nn.Parameter(np.ones((2, 2)), requires_grad=False)
    x = Tensor(np.ones((3, 2)))
    out = x @ w
    assert not out.requires_grad and out.grad_fn is None  # nothing to differentiate: no graph at all
    v = nn.Parameter(np.ones(2))
    ((x @ w) * v).sum().backward()
    assert w.grad is None and v.grad is not None
    with pytest.raises(RuntimeError, match="grad: input 0 .* does not require grad"):
        tc.grad(((x @ w) * v).sum(), [w])


@pytest.mark.parametrize("make_opt", [
    lambda ps: tc.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    lambda ps: tc.optim.Adam(ps, lr=0.1, weight_decay=0.01),
    lambda ps: tc.optim.AdamW(ps, lr=0.1),
], ids=["SGD", "Adam", "AdamW"])
def test_optimizers_skip_frozen_parameters_and_the_rest_trains_as_torch(make_opt):
    """A model with its first layer frozen (module.requires_grad_(False)): the same gradients
    and updates as a PyTorch twin frozen the same way, and the frozen weights never move,
    not even when a gradient is left on them from before they were frozen."""
    torch.manual_seed(1)
    theirs = tnn.Sequential(tnn.Linear(3, 4), tnn.Tanh(), tnn.Linear(4, 2)).double()
    ours = nn.Sequential(nn.Linear(3, 4, dtype=np.float64), nn.Tanh(), nn.Linear(4, 2, dtype=np.float64))
    _load_twin(ours, theirs)
    ours[0].weight.grad = Tensor(np.ones((4, 3)))  # stale, from before the freeze
    ours[0].requires_grad_(False)
    theirs[0].requires_grad_(False)
    frozen = [p.data.copy() for p in ours[0].parameters()]
    opt = make_opt(list(ours.parameters()))
    t_opt = {"SGD": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
             "Adam": lambda ps: torch.optim.Adam(ps, lr=0.1, weight_decay=0.01),
             "AdamW": lambda ps: torch.optim.AdamW(ps, lr=0.1)}[type(opt).__name__](
        [p for p in theirs.parameters() if p.requires_grad])
    x, y = _rand((5, 3), 2), _rand((5, 2), 3)
    for _ in range(3):
        loss = ((ours(Tensor(x)) - y) ** 2).mean()
        t_loss = ((theirs(torch.tensor(x)) - torch.tensor(y)) ** 2).mean()
        loss.backward(), t_loss.backward()
        opt.step(), t_opt.step()  # the first step sees the stale gradient of the frozen weight
        opt.zero_grad(), t_opt.zero_grad()
    for p, before in zip(ours[0].parameters(), frozen):
        np.testing.assert_array_equal(p.data, before)
    for (name, p), (t_name, t) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert name == t_name
        _close(p.data, t, rtol=1e-9, atol=1e-12)
    ours[0].requires_grad_(True)  # unfreezing makes them learn again
    assert all(p.requires_grad for p in ours.parameters())


def test_the_training_cli_sees_batch_norm_1d_as_mixing_the_batch():
    """Micro-batching checks for layers with batch statistics: BatchNorm1d is one (regression:
    the check looked for BatchNorm2d only)."""
    from train.cifar10 import uses_batch_statistics
    assert uses_batch_statistics(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    assert uses_batch_statistics(nn.Sequential(nn.BatchNorm2d(2)))
    assert not uses_batch_statistics(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
