"""Eval metrics: task graders and token metrics."""

import torch

from llmdistill.evaluate.metrics import grade


def test_task_graders():
    assert grade("contains", "The capital of France is Paris.", "Paris")
    assert not grade("contains", "Parisian food is great", "Paris")
    assert grade("contains", "It is New York City.", "new york")
    assert grade("number", "3 + 4 = 7, so the answer is 7.", "7")
    assert grade("number", "That makes 1,200 apples", "1200")
    assert not grade("number", "seven", "7")
    assert grade("exact", "  Blue! ", "blue") and not grade("exact", "light blue", "blue")


def test_token_metrics_on_a_shared_width():
    from llmdistill.evaluate.metrics import finish, token_sums

    t = torch.randn(5, 10)
    sums = token_sums(t, t.clone(), torch.arange(5))
    m = finish(sums)
    assert m["kl_to_teacher"] < 1e-6 and m["top1_agreement"] == 1.0 and m["tokens"] == 5
    padded = torch.cat([t, torch.full((5, 3), -1e9)], -1)  # a student with 3 unused padding rows
    assert finish(token_sums(t, padded, torch.arange(5)))["kl_to_teacher"] < 1e-6


def test_lm_head_applies_final_logit_softcapping():
    from types import SimpleNamespace

    from llmdistill import models

    linear = torch.nn.Linear(4, 6, bias=False)
    plain = SimpleNamespace(config=SimpleNamespace(), get_output_embeddings=lambda: linear)
    assert models.lm_head(plain) == (linear, None)
    capped = SimpleNamespace(config=SimpleNamespace(final_logit_softcapping=2.0), get_output_embeddings=lambda: linear)
    head, post = models.lm_head(capped)
    z = torch.tensor([-100.0, 0.0, 1.0, 100.0])
    torch.testing.assert_close(post(z), torch.tanh(z / 2.0) * 2.0)
