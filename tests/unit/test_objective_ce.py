"""The objective always measures the CE on the teacher's tokens (the quantity the report compares across
students), from the logits each chunk already has: no extra projection, and nothing added to the loss."""

import math

import pytest
import torch

from llmdistill.config import LossTerm
from llmdistill.train import objective
from llmdistill.train.objective import chunked_loss
from llmdistill.train.signals import SparseSignal

V, K, N = 11, 4, 13


def setup(seed=3):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, 5, generator=g, requires_grad=True)
    head = torch.nn.Linear(5, V, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, 5, generator=g))
    teacher = torch.log_softmax(torch.randn(N, V, generator=g) * 2, -1)
    lps, ids = teacher.topk(K, -1)
    targets = torch.randint(0, V, (N,), generator=g)
    return h, head, targets, SparseSignal(ids, lps)


def naive_ce(logits, targets) -> float:
    """sum over tokens of -log softmax(z)[y], from the definition in float64."""
    total = 0.0
    for z, y in zip(logits.double().tolist(), targets.tolist()):
        m = max(z)
        total += -(z[y] - m - math.log(sum(math.exp(v - m) for v in z)))
    return total


@pytest.mark.parametrize("terms", [
    [LossTerm(name="forward_kl", weight=1.0, temperature=2.0)],                                   # no CE term
    [LossTerm(name="forward_kl", weight=1.0, temperature=1.0)],                                   # T = 1: shared
    [LossTerm(name="reverse_kl", weight=0.9, temperature=2.0), LossTerm(name="ce", weight=0.0)],  # weight 0
])
def test_ce_on_the_teacher_tokens_is_measured_for_every_objective(terms):
    h, head, targets, signal = setup()
    out = chunked_loss(h, head, targets, signal, terms, chunk_tokens=4)
    assert out["ce"].item() == pytest.approx(naive_ce(head(h).detach(), targets), rel=1e-5)
    assert not out["ce"].requires_grad
    # the measurement changes neither the loss nor its gradient
    T = terms[0].temperature
    alone = chunked_loss(h, head, targets, signal, terms[:1], chunk_tokens=4)
    torch.testing.assert_close(out["total"], alone["total"])
    torch.testing.assert_close(out["total"], T**2 * terms[0].weight * out[terms[0].name])
    (grad_with,) = torch.autograd.grad(out["total"], [h])
    (grad_alone,) = torch.autograd.grad(alone["total"], [h])
    torch.testing.assert_close(grad_with, grad_alone)


def test_measuring_ce_costs_no_extra_projection(monkeypatch):
    calls = []
    real = objective._project
    monkeypatch.setattr(objective, "_project", lambda h, w, b: calls.append(h.shape[0]) or real(h, w, b))
    h, head, targets, signal = setup()
    out = chunked_loss(h, head, targets, signal, [LossTerm(name="forward_kl", weight=1.0, temperature=2.0)],
                       chunk_tokens=4)
    out["total"].backward()
    assert calls == [4, 4, 4, 1]  # one projection per chunk, in the forward pass only
    assert set(out) == {"forward_kl", "ce", "total"}
