"""The teacher-signal sources' contract (train/sources.py), one row per source.

Every source's collate half pickles (the served one runs in a DataLoader worker) and collates the same after the
round trip; sources that describe the same teacher agree token for token: the stored top-k at k = V, the same
rows served by a server, the same rows aligned "across" a tokenizer the student shares, and the live teacher
they were all taken from give the same divergence at every label position, packed or not.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from conftest import build_llama, build_tokenizer
from llmdistill import models
from llmdistill.config import literal_values
from llmdistill.config.train import TeacherSignal
from llmdistill.train import sources
from llmdistill.train.cross_tokenizer import EXACT
from llmdistill.train.data import Collator


class TableServer:
    """A deterministic, picklable stand-in for a served teacher (`served.RoutedScorer`'s call): each sequence's
    ([L, k] ids, [L, k] log-probs), looked up."""

    def __init__(self, table: dict):
        self.table = table

    def __call__(self, sequences, teachers):
        return [self.table[tuple(seq)] for seq in sequences]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny teacher and student on one tokenizer, and rows whose stored top-k is the teacher's whole
    distribution (k = V) at every completion token."""
    tmp = tmp_path_factory.mktemp("sources")
    tok = build_tokenizer(tmp / "tok")
    teacher = models.load_causal_lm(str(build_llama(tmp / "t", tok, layers=2, seed=0)), "float32", "cpu").eval()
    student = models.load_causal_lm(str(build_llama(tmp / "s", tok, layers=1, seed=1)), "float32", "cpu").eval()
    V = teacher.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    rows, full = [], []
    for i, (prompt, completion) in enumerate([(4, 5), (3, 7), (6, 2), (2, 4)]):
        ids = torch.randint(4, V, (prompt + completion,), generator=gen).tolist()
        with torch.no_grad():
            logp = torch.log_softmax(teacher(torch.tensor([ids])).logits[0].float(), -1)  # [L, V]: position i -> i+1
        order = torch.argsort(logp, -1, descending=True)
        full.append((order, torch.gather(logp, -1, order)))
        rows.append({"input_ids": ids, "prompt_len": prompt, "row": i, "teacher": "default",
                     "topk_ids": order[prompt - 1 : -1].tolist(),
                     "topk_logprobs": full[-1][1][prompt - 1 : -1].tolist()})

    # a server holding the same teacher: row i of a sequence's arrays is the distribution of token i
    pad = np.zeros((1, V))
    scorer = TableServer({tuple(r["input_ids"]): (np.concatenate([pad, order[:-1].numpy()]).astype(np.int64),
                                                  np.concatenate([pad, lps[:-1].numpy()]).astype(np.float32))
                          for r, (order, lps) in zip(rows, full)})

    return {"teacher": teacher, "student": student, "rows": rows, "scorer": scorer, "V": V}


def cross_rows(rows):
    """The rows as a cross-tokenizer source sees them from a teacher on the student's own tokenizer: every
    token an exact match (the aligner keeps a same-tokenizer teacher's ids)."""
    return [{**r, "xt_kind": [EXACT] * (len(r["input_ids"]) - r["prompt_len"])} for r in rows]


# one row per source: (name, how to make it from the world, the rows it collates)
ROWS = {
    "none": (lambda w: sources.Source(), lambda w: w["rows"]),
    "stored": (lambda w: sources.StoredTopK(1.0, "bucket"), lambda w: w["rows"]),
    "cross_tokenizer": (lambda w: sources.CrossTokenizer(1.0, "bucket", 1.0, {"default": None}),
                        lambda w: cross_rows(w["rows"])),
    "served": (lambda w: sources.Served(w["scorer"], "bucket"), lambda w: w["rows"]),
    "live": (lambda w: sources.Live({0: w["teacher"]}), lambda w: w["rows"]),
}


def test_every_teacher_signal_has_a_source_and_a_contract_row():
    assert set(sources.SOURCES) == set(literal_values(TeacherSignal))
    assert set(sources.SOURCES) | {"none", "cross_tokenizer"} == set(ROWS)


def _signal(source, rows, student, pack_to=None):
    batch = Collator(0, source=source, pack_to=pack_to)(rows)
    mask = batch["labels"][:, 1:] != -100
    return batch, source.signal(batch, mask, student)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_the_collate_half_pickles_and_collates_the_same(world, name):
    make, data = ROWS[name]
    source, rows = make(world), data(world)
    again = pickle.loads(pickle.dumps(source))
    for pack_to in (None, 16):
        a = Collator(0, source=source, pack_to=pack_to)(rows)
        b = Collator(0, source=again, pack_to=pack_to)(rows)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], msg=key)
    assert ("teacher_ids" in a) == (name in ("stored", "cross_tokenizer", "served"))


@pytest.mark.parametrize("pack_to", [None, 16])
def test_sources_of_one_teacher_agree_token_for_token(world, pack_to):
    student, V = world["student"], world["V"]
    _, none = _signal(sources.Source(), world["rows"], student, pack_to)
    assert none is None
    values = {}
    for name in ("stored", "cross_tokenizer", "served", "live"):
        make, data = ROWS[name]
        batch, signal = _signal(make(world), data(world), student, pack_to)
        n = int((batch["labels"][:, 1:] != -100).sum())
        student_logp = torch.log_softmax(torch.randn(n, V, generator=torch.Generator().manual_seed(1)), -1)
        values[name] = {d: signal.divergence(d, student_logp, 1.0) for d in ("forward_kl", "reverse_kl")}
        # the loss takes chunks of the signal: they see the same values
        chunked = torch.cat([signal.take(slice(i, min(i + 5, n))).divergence("forward_kl", student_logp[i : i + 5], 1.0)
                             for i in range(0, n, 5)])
        torch.testing.assert_close(chunked, values[name]["forward_kl"])
    for name in ("cross_tokenizer", "served", "live"):
        for d in ("forward_kl", "reverse_kl"):
            torch.testing.assert_close(values[name][d], values["stored"][d], rtol=1e-4, atol=1e-5, msg=f"{name} {d}")
