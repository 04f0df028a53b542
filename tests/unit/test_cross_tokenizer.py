"""Cross-tokenizer distillation: byte alignment of two tokenizations, the teacher -> student id map, the ULD
distance and the signal that applies the divergence or ULD per token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import build_tokenizer
from llmdistill import losses
from llmdistill.teachers.token_map import UNMAPPED_ID
from llmdistill.train.cross_tokenizer import EXACT, NONE, ULD, Aligner, CrossTokenizerSignal, shares

TEXT = "the teacher learns why the sky is blue: naïve café, 東京の天気 🙂 12345 zebra quantum"


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    root = tmp_path_factory.mktemp("xt")
    return build_tokenizer(root / "a"), build_tokenizer(root / "b", vocab_size=300, seed_text="zebra quantum " * 50)


def test_alignment_by_bytes(toks):
    teacher, student = toks
    t_ids = teacher(TEXT, add_special_tokens=False)["input_ids"]
    s_ids = student(TEXT, add_special_tokens=False)["input_ids"]
    assert t_ids != s_ids  # two tokenizations of the same text
    aligner = Aligner(teacher, student)
    kinds, where = aligner.align(t_ids, s_ids)
    t_spans, _ = aligner._spans(t_ids, aligner.t_bytes)
    s_spans, _ = aligner._spans(s_ids, aligner.s_bytes)
    assert set(kinds.tolist()) == {EXACT, ULD, NONE}  # this text has all three
    for j, (kind, i) in enumerate(zip(kinds, where)):
        if kind == EXACT:  # the same bytes, so the ids map onto each other
            assert s_spans[j] == t_spans[i] and aligner.s_bytes[s_ids[j]] == aligner.t_bytes[t_ids[i]]
            assert aligner.id_map[t_ids[i]] == s_ids[j]
        elif kind == ULD:  # the same prefix, other pieces
            assert s_spans[j][0] == t_spans[i][0] and s_spans[j] != t_spans[i]
        else:  # starts inside a teacher token
            assert i == -1 and all(a != s_spans[j][0] for a, _ in t_spans)
    s = shares([kinds])
    assert s["tokens"] == len(s_ids) and abs(s["exact"] + s["uld"] + s["none"] - 1) < 1e-3


def test_one_tokenizer_aligns_everything_exactly(toks):
    teacher, _ = toks
    aligner = Aligner(teacher, teacher)
    ids = teacher(TEXT, add_special_tokens=False)["input_ids"] + [teacher.eos_token_id]
    kinds, where = aligner.align(ids, ids)
    assert (kinds == EXACT).all() and where.tolist() == list(range(len(ids)))
    assert all(aligner.id_map[i] == i for i in ids)


def test_a_dropped_leading_space_and_the_eos_rows(toks):
    teacher, student = toks
    aligner = Aligner(teacher, student)
    t_ids = teacher(" " + TEXT, add_special_tokens=False)["input_ids"] + [teacher.eos_token_id]
    s_ids = student(TEXT, add_special_tokens=False)["input_ids"] + [student.eos_token_id]
    kinds, where = aligner.align(t_ids, s_ids)
    assert kinds[-1] == EXACT and where[-1] == len(t_ids) - 1
    assert (kinds == EXACT).mean() > 0.3
    other = student("something else entirely", add_special_tokens=False)["input_ids"]
    assert (aligner.align(t_ids, other)[0] == NONE).all()  # not the same text: no teacher rows at all


def test_student_rows_map_ids_and_keep_log_probs(toks):
    teacher, student = toks
    aligner = Aligner(teacher, student)
    t_ids = teacher(TEXT, add_special_tokens=False)["input_ids"]
    s_ids = student(TEXT, add_special_tokens=False)["input_ids"]
    rng = np.random.default_rng(0)
    topk = np.stack([np.r_[i, rng.choice(len(teacher), 3, replace=False)] for i in t_ids]).astype(np.int32)
    lps = np.log(np.full((len(t_ids), 4), 0.2, dtype=np.float32))
    ids, out_lps, kinds = aligner.student_rows(t_ids, s_ids, topk, lps)
    kinds_ref, where = aligner.align(t_ids, s_ids)
    assert (kinds == kinds_ref).all() and ids.shape == (len(s_ids), 4)
    for j in np.flatnonzero(kinds == EXACT):
        assert ids[j, 0] == s_ids[j]  # the teacher's own token maps to the student's
        mapped = [aligner.id_map[t] for t in topk[where[j]]]
        assert ids[j].tolist() == mapped and np.allclose(out_lps[j], lps[where[j]])
    assert (ids[kinds == NONE] == UNMAPPED_ID).all() and np.isneginf(out_lps[kinds == NONE]).all()


def test_uld_distance():
    torch.manual_seed(0)
    logits = torch.randn(5, 50, dtype=torch.float64)
    logp = torch.log_softmax(logits, -1)
    top = logp.topk(8, -1).values
    # the same distribution, whatever the ids: 0
    perm = logp[:, torch.randperm(50)]
    assert torch.allclose(losses.uld_distance(perm, top), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    other = torch.log_softmax(torch.randn(5, 50, dtype=torch.float64) * 3, -1)
    d = losses.uld_distance(other, top)
    assert (d > 0).all() and (d <= 2 + 1e-9).all()  # an L1 distance between two distributions
    q = other.clone().requires_grad_(True)
    losses.uld_distance(q, top).sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_the_signal_applies_divergence_uld_or_nothing_per_token():
    torch.manual_seed(0)
    V, k = 40, 6
    student = torch.log_softmax(torch.randn(3, V), -1)
    teacher = torch.log_softmax(torch.randn(3, V), -1)
    lps, ids = teacher.topk(k, -1)
    kinds = torch.tensor([EXACT, ULD, NONE], dtype=torch.int8)
    signal = CrossTokenizerSignal(ids, lps, kinds, uld_weight=0.5)
    out = signal.divergence("forward_kl", student, 1.0)
    ref_exact = losses.sparse_divergence_logp("forward_kl", student[:1], ids[:1], lps[:1])
    ref_uld = 0.5 * losses.uld_distance(student[1:2], lps[1:2])
    torch.testing.assert_close(out, torch.cat([ref_exact, ref_uld, torch.zeros(1)]))
    assert signal.take(slice(1, 3)).divergence("forward_kl", student[1:], 1.0)[1] == 0
