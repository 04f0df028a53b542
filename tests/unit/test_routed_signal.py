"""Routed live teachers: each sample's tokens are scored by the teacher that wrote it, exactly as that teacher
alone would score them, whatever the chunking."""

from __future__ import annotations

import torch

from conftest import build_llama, build_tokenizer
from llmdistill import models
from llmdistill.train.sources import Live, live_signal


def test_each_row_is_scored_by_its_own_teacher(tmp_path):
    tok = build_tokenizer(tmp_path / "tok")
    a = models.load_causal_lm(str(build_llama(tmp_path / "a", tok, layers=2, seed=0)), "float32", "cpu")
    b = models.load_causal_lm(str(build_llama(tmp_path / "b", tok, layers=2, seed=1)), "float32", "cpu")
    torch.manual_seed(0)
    input_ids = torch.randint(4, len(tok), (3, 9))
    attention = torch.ones_like(input_ids)
    attention[2, 7:] = 0  # a padded row
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[0, 2:] = mask[1, 4:] = mask[2, 3:6] = True  # the positions that predict a label
    inputs = {"input_ids": input_ids, "attention_mask": attention, "teacher_index": torch.tensor([0, 1, 0])}
    student = models.load_causal_lm(str(build_llama(tmp_path / "s", tok, layers=1, seed=2)), "float32", "cpu")
    signal = Live({0: a, 1: b}, {"a": 0, "b": 1}).signal(inputs, mask, student)
    n = int(mask.sum())
    student_logp = torch.log_softmax(torch.randn(n, len(tok)), -1)
    routed = signal.divergence("forward_kl", student_logp, 1.0)
    expected, start = [], 0
    for row, teacher in enumerate((a, b, a)):
        m = mask[row : row + 1]
        count = int(m.sum())
        own = live_signal(teacher, input_ids[row : row + 1], (attention[row : row + 1], None), m, len(tok))
        expected.append(own.divergence("forward_kl", student_logp[start : start + count], 1.0))
        start += count
    torch.testing.assert_close(routed, torch.cat(expected), rtol=1e-5, atol=1e-6)
    # chunks of the loss see the same values
    chunked = torch.cat([signal.take(slice(i, min(i + 4, n))).divergence("forward_kl", student_logp[i : i + 4], 1.0)
                         for i in range(0, n, 4)])
    torch.testing.assert_close(chunked, routed)
    # and a teacher is not interchangeable with the other
    swapped = Live({0: b, 1: a}, {"a": 0, "b": 1}).signal(inputs, mask, student).divergence("forward_kl", student_logp,
                                                                                          1.0)
    assert not torch.allclose(swapped, routed)
