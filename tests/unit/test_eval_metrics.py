"""Eval token metrics (the task graders are tested in test_graders.py)."""

import math

import pytest
import torch


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


def _logits(*rows):
    """Logits whose softmax is exactly the given probability rows."""
    return torch.log(torch.tensor(rows, dtype=torch.float64))


def test_kl_and_jsd_match_hand_computed_values():
    from llmdistill.evaluate.metrics import finish, token_sums

    # p = (0.5, 0.5), q = (0.8, 0.2), m = (0.65, 0.35)
    # KL(p||q) = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2)                      = 0.2231436
    # KL(p||m) = 0.5 ln(0.5/0.65) + 0.5 ln(0.5/0.35)                    = 0.0471556
    # KL(q||m) = 0.8 ln(0.8/0.65) + 0.2 ln(0.2/0.35)                    = 0.0541880
    # JSD = (0.0471556 + 0.0541880) / 2                                 = 0.0506718
    m = finish(token_sums(_logits([0.5, 0.5]), _logits([0.8, 0.2]), torch.tensor([0]), k=1))
    assert m["kl_to_teacher"] == pytest.approx(0.2231436, abs=1e-6)
    assert m["jsd_to_teacher"] == pytest.approx(0.0506718, abs=1e-6)
    assert m["perplexity"] == pytest.approx(1 / 0.8)  # the student's probability of the reference token 0
    same = finish(token_sums(_logits([0.3, 0.7]), _logits([0.3, 0.7]), torch.tensor([1])))
    assert same["kl_to_teacher"] == pytest.approx(0.0, abs=1e-9)
    assert same["jsd_to_teacher"] == pytest.approx(0.0, abs=1e-9)
    # disjoint supports: JSD reaches its maximum ln 2
    far = finish(token_sums(torch.tensor([[30.0, -30.0]]), torch.tensor([[-30.0, 30.0]]), torch.tensor([0])))
    assert far["jsd_to_teacher"] == pytest.approx(math.log(2), abs=1e-6)


def test_top1_agreement_and_topk_overlap():
    from llmdistill.evaluate.metrics import finish, token_sums

    teacher = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    student = torch.tensor([[1.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    # row 1: top-2 {0, 1} vs {1, 2} -> 1/2, argmax 0 vs 1; row 2: identical -> 1, agree
    m = finish(token_sums(teacher, student, torch.tensor([0, 3]), k=2))
    assert m["topk_overlap"] == pytest.approx(0.75)
    assert m["top1_agreement"] == pytest.approx(0.5)
    assert finish(token_sums(teacher, student, torch.tensor([0, 3]), k=4))["topk_overlap"] == pytest.approx(1.0)


def test_expected_calibration_error_by_hand():
    from llmdistill.evaluate.metrics import expected_calibration_error, finish, token_sums

    # confidences 0.95, 0.95, 0.65, 0.65; the student's pick (token 0) is right for all but the second.
    # 10 bins: bin 9 holds two tokens (accuracy 0.5, confidence 0.95), bin 6 two (accuracy 1, confidence 0.65)
    # ECE = 2/4 * |0.5 - 0.95| + 2/4 * |1.0 - 0.65| = 0.225 + 0.175 = 0.4
    student = _logits([0.95, 0.05], [0.95, 0.05], [0.65, 0.35], [0.65, 0.35])
    teacher = student.clone()
    m = finish(token_sums(teacher, student, torch.tensor([0, 1, 0, 0]), bins=10))
    assert m["ece"] == pytest.approx(0.4, abs=1e-6)
    assert [(b["bin"], b["count"]) for b in m["calibration"]] == [(6, 2), (9, 2)]
    assert expected_calibration_error([0, 0], [0, 0], [0, 0]) != expected_calibration_error([0, 0], [0, 0], [0, 0])
    perfect = finish(token_sums(teacher, _logits([1.0, 0.0]).expand(4, 2).clone(), torch.tensor([0, 0, 0, 0])))
    assert perfect["ece"] == pytest.approx(0.0, abs=1e-6)


def test_sums_add_up_over_parts_and_chunks(monkeypatch):
    from llmdistill.evaluate import metrics as M

    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(37, 11, generator=g), torch.randn(37, 11, generator=g)
    y = torch.randint(0, 11, (37,), generator=g)
    whole = M.finish(M.token_sums(t, s, y, k=3))
    parts = M.add_sums(M.token_sums(t[:20], s[:20], y[:20], k=3), M.token_sums(t[20:], s[20:], y[20:], k=3))
    monkeypatch.setattr(M, "_CHUNK_ELEMENTS", 11 * 4)  # 4 rows per chunk
    chunked = M.finish(M.token_sums(t, s, y, k=3))
    for other in (M.finish(parts), chunked):
        for key in ("kl_to_teacher", "jsd_to_teacher", "top1_agreement", "topk_overlap", "perplexity", "ece"):
            assert other[key] == pytest.approx(whole[key], rel=1e-6), key
    assert M.token_stats(t[:0], s[:0], y[:0])["kl"].shape == (0,)
