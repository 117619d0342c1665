"""PyTorch as an oracle for second-order gradients: gradient penalties (double backprop)
through training-mode batch_norm, in float64, against ``torch.autograd.grad(...,
create_graph=True)``. Skipped cleanly when torch is not installed."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
TF = torch.nn.functional

import tinygrad_cnn as tc  # noqa: E402
import tinygrad_cnn.functional as F  # noqa: E402
from tinygrad_cnn import Tensor  # noqa: E402

RTOL, ATOL = 1e-9, 1e-11


def _close(ours, theirs, what):
    theirs = theirs.detach().numpy()
    assert ours.shape == theirs.shape, what
    np.testing.assert_allclose(np.asarray(ours.data), theirs, rtol=RTOL, atol=ATOL, err_msg=what)


def _penalty(lib, x, w, b, r, over):
    """loss = sum(tanh(batch_norm(x)) * r); penalty = |d loss / d over|^2 (each of ``over``),
    plus the loss: the gradients of it reach every input through both orders."""
    if lib is torch:
        y = TF.batch_norm(x, None, None, w, b, training=True, eps=1e-5)
        loss = (torch.tanh(y) * r).sum()
        grads = torch.autograd.grad(loss, over, create_graph=True)
    else:
        y = F.batch_norm(x, None, None, w, b, training=True, eps=1e-5)
        loss = (y.tanh() * Tensor(r)).sum()
        grads = tc.grad(loss, over, create_graph=True)
    return loss + sum((g * g).sum() for g in grads)


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 4), (3, 2, 7)])
@pytest.mark.parametrize("channel_major", [False, True])
@pytest.mark.parametrize("over", ["x", "x,w", "w,b"])
def test_gradient_penalty_through_batch_norm(shape, channel_major, over):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape) * 2 + 0.5
    if channel_major:  # a convolution's output layout
        order = (1, 0) + tuple(range(2, len(shape)))
        x = np.ascontiguousarray(x.transpose(order)).transpose(order)
    w, b = rng.uniform(0.5, 2.0, shape[1]), rng.standard_normal(shape[1])
    r = rng.standard_normal(shape)
    ours = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    theirs = [torch.tensor(np.ascontiguousarray(a), requires_grad=True) for a in (x, w, b)]
    pick = {"x": 0, "w": 1, "b": 2}
    idx = [pick[k] for k in over.split(",")]
    p_ours = _penalty(tc, *ours, r, [ours[i] for i in idx])
    p_theirs = _penalty(torch, *theirs, torch.tensor(r), [theirs[i] for i in idx])
    _close(p_ours, p_theirs, "penalty")
    got = tc.grad(p_ours, ours, allow_unused=True)
    want = torch.autograd.grad(p_theirs, theirs, allow_unused=True)
    for name, g_ours, g_theirs in zip("xwb", got, want):
        _close(g_ours, g_theirs, f"d penalty / d {name}")


def test_hessian_vector_product_through_batch_norm():
    """d/dv of <grad(loss), v>: a Hessian-vector product in x, weight and bias at once."""
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal((5, 3, 2, 2)), rng.uniform(0.5, 2.0, 3), rng.standard_normal(3)]
    vs = [rng.standard_normal(a.shape) for a in arrays]
    r = rng.standard_normal(arrays[0].shape)
    ours = [Tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    loss = (F.batch_norm(ours[0], None, None, ours[1], ours[2], training=True).tanh() * Tensor(r)).sum()
    grads = tc.grad(loss, ours, create_graph=True)
    hv = tc.grad(sum((g * Tensor(v)).sum() for g, v in zip(grads, vs)), ours)
    t_loss = (torch.tanh(TF.batch_norm(theirs[0], None, None, theirs[1], theirs[2], training=True))
              * torch.tensor(r)).sum()
    t_grads = torch.autograd.grad(t_loss, theirs, create_graph=True)
    t_hv = torch.autograd.grad(sum((g * torch.tensor(v)).sum() for g, v in zip(t_grads, vs)), theirs)
    for name, a, e in zip("xwb", hv, t_hv):
        _close(a, e, f"Hv in {name}")
