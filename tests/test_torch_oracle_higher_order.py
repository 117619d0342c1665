"""PyTorch as the oracle for second derivatives: Hessian-vector products of a CNN loss and
gradient penalties (double backprop) through conv2d, max_pool2d, relu, log_softmax and
cross_entropy with label smoothing, against ``torch.autograd.grad(..., create_graph=True)``
in float64. Skipped cleanly when torch is not installed."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
TF = torch.nn.functional

import tinygrad_cnn as tc  # noqa: E402
import tinygrad_cnn.functional as F  # noqa: E402
from tinygrad_cnn import Tensor  # noqa: E402

RTOL, ATOL = 1e-9, 1e-11


def _close(ours, theirs):
    theirs = theirs.detach().numpy()
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL)


def _distinct(shape, seed):
    """Values with no ties (max-pool's derivative is ambiguous at ties) and none at 0 (relu)."""
    n = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    return ((rng.permutation(n) + 0.5 - n / 2) / n * 3).reshape(shape)


def _pair(arrays):
    ours = [Tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    return ours, theirs


CASES = {
    # name: (our network, torch's network), each (x, w) -> logits
    "conv2d_stride_padding": (
        lambda x, w: F.conv2d(x, w, stride=(2, 1), padding=(1, 2)).tanh().reshape(x.shape[0], -1),
        lambda x, w: torch.tanh(TF.conv2d(x, w, stride=(2, 1), padding=(1, 2))).reshape(x.shape[0], -1)),
    "max_pool2d_overlapping": (
        lambda x, w: F.max_pool2d(F.conv2d(x, w, padding=1), 3, 2, 1).sigmoid().reshape(x.shape[0], -1),
        lambda x, w: torch.sigmoid(TF.max_pool2d(TF.conv2d(x, w, padding=1), 3, 2, 1)).reshape(x.shape[0], -1)),
    "relu_pool": (
        lambda x, w: F.relu(F.max_pool2d(F.conv2d(x, w, padding=1) * 1.5, 2)).reshape(x.shape[0], -1),
        lambda x, w: TF.relu(TF.max_pool2d(TF.conv2d(x, w, padding=1) * 1.5, 2)).reshape(x.shape[0], -1)),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_input_gradient_penalty_matches_torch(name, smoothing):
    """loss + ||d loss / d x||^2, differentiated with respect to the weights and the input."""
    ours_fn, torch_fn = CASES[name]
    x, w = _distinct((3, 2, 6, 5), 0), _distinct((4, 2, 3, 3), 1) * 0.4
    labels = np.array([1, 0, 3])
    (ox, ow), (tx, tw) = _pair([x, w])

    logits = ours_fn(ox, ow)
    loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    (gx,) = tc.grad(loss, [ox], create_graph=True)
    total = loss + (gx * gx).sum() * 3.0
    ours = tc.grad(total, [ox, ow])

    t_logits = torch_fn(tx, tw)
    t_loss = TF.cross_entropy(t_logits, torch.tensor(labels), label_smoothing=smoothing)
    (tgx,) = torch.autograd.grad(t_loss, [tx], create_graph=True)
    t_total = t_loss + (tgx * tgx).sum() * 3.0
    theirs = torch.autograd.grad(t_total, [tx, tw])

    _close(gx, tgx)
    for a, b in zip(ours, theirs):
        _close(a, b)


def test_log_softmax_double_backward_matches_torch():
    z = _distinct((4, 5), 2)
    v = np.random.default_rng(3).standard_normal((4, 5))
    (oz,), (tz,) = _pair([z])
    (g,) = tc.grad(F.log_softmax(oz, axis=1), [oz], grad_outputs=Tensor(v), create_graph=True)
    ours = tc.grad((g * g * g).sum(), [oz])
    (tg,) = torch.autograd.grad(TF.log_softmax(tz, dim=1), [tz], grad_outputs=torch.tensor(v), create_graph=True)
    theirs = torch.autograd.grad((tg * tg * tg).sum(), [tz])
    _close(g, tg)
    _close(ours[0], theirs[0])


def test_hessian_vector_product_of_a_cnn_loss_matches_torch():
    x, labels = _distinct((4, 3, 8, 8), 4), np.array([0, 1, 2, 1])
    w1, w2 = _distinct((6, 3, 3, 3), 5) * 0.3, _distinct((3, 6 * 4 * 4), 6) * 0.1
    v1, v2 = (np.random.default_rng(s).standard_normal(a.shape) for s, a in ((7, w1), (8, w2)))

    def ours_loss(a, b):
        h = F.relu(F.max_pool2d(F.conv2d(Tensor(x), a, padding=1), 2))
        return F.cross_entropy(h.reshape(4, -1) @ b.T, labels, label_smoothing=0.1)

    _, (h1, h2) = tc.autograd.hvp(ours_loss, (w1, w2), (v1, v2))

    (tw1, tw2) = (torch.tensor(a, requires_grad=True) for a in (w1, w2))
    h = TF.relu(TF.max_pool2d(TF.conv2d(torch.tensor(x), tw1, padding=1), 2))
    t_loss = TF.cross_entropy(h.reshape(4, -1) @ tw2.T, torch.tensor(labels), label_smoothing=0.1)
    g1, g2 = torch.autograd.grad(t_loss, [tw1, tw2], create_graph=True)
    t1, t2 = torch.autograd.grad((g1 * torch.tensor(v1)).sum() + (g2 * torch.tensor(v2)).sum(), [tw1, tw2])
    _close(h1, t1)
    _close(h2, t2)
