"""Logit distillation across tokenizers (preflight outcome `cross_tokenizer`: chosen when the student's
vocabulary differs from the teacher's, offline mode, the stored signal).

The student trains on the teacher's completion text (the bytes its tokens spell) encoded with its own
tokenizer. Both token sequences
cover the same bytes, so each student token finds its teacher counterpart by byte offsets:

    exact   a teacher token spans the same bytes: both distributions predict a token for the same prefix and
            the same text. The teacher's top-k ids are mapped to the student's ids with the same bytes (its EOS
            to the student's EOS); ids the student lacks move into the tail. The configured divergence applies
            as on the teacher's own tokenizer.
    uld     a teacher token starts at the same byte but ends elsewhere: same prefix, different pieces. The
            tokenizer-free ULD distance (`losses.uld_distance`: sorted probabilities) applies, weighted by
            train.uld_weight.
    none    the student token starts inside a teacher token: no teacher distribution has that prefix; CE only.

The shares of the three kinds over the training tokens are logged and written to the training metrics
(`cross_tokenizer`), and shown in the report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmdistill import losses
from llmdistill.teachers.token_map import UNMAPPED_ID, id_bytes

NONE, EXACT, ULD = 0, 1, 2
KINDS = {"exact": EXACT, "uld": ULD, "none": NONE}


class Aligner:
    """Teacher and student tokenizers, compared once: each id's bytes and the teacher -> student id map."""

    def __init__(self, teacher_tokenizer, student_tokenizer):
        t_special = set(teacher_tokenizer.all_special_ids)
        s_special = set(student_tokenizer.all_special_ids)
        self.t_bytes = [None if i in t_special else b for i, b in enumerate(id_bytes(teacher_tokenizer))]
        self.s_bytes = [None if i in s_special else b for i, b in enumerate(id_bytes(student_tokenizer))]
        table: dict[bytes, int] = {}
        for i, b in enumerate(self.s_bytes):
            if b:
                table.setdefault(b, i)
        self.id_map = np.full(max(len(self.t_bytes), len(teacher_tokenizer)), UNMAPPED_ID, dtype=np.int64)
        for i, b in enumerate(self.t_bytes):
            if b and b in table:
                self.id_map[i] = table[b]
        self.t_eos = {i for i in (teacher_tokenizer.eos_token_id,) if i is not None}
        self.s_eos = student_tokenizer.eos_token_id
        if self.s_eos is not None:
            for i in self.t_eos:
                self.id_map[i] = self.s_eos
        self.shared = int((self.id_map != UNMAPPED_ID).sum())

    def teacher_text(self, teacher_ids: list[int]) -> str:
        """The text the teacher's tokens spell, byte for byte (a decoded completion may differ: decoders
        clean up spaces before punctuation, drop a leading space): what the student is trained on."""
        return b"".join(self.t_bytes[i] or b"" for i in teacher_ids if 0 <= i < len(self.t_bytes)).decode(
            "utf-8", errors="replace")

    def _spans(self, ids: list[int], table: list[bytes | None]) -> tuple[list[tuple[int, int]], bytes]:
        spans, pos, parts = [], 0, []
        for i in ids:
            b = table[i] if 0 <= i < len(table) else None
            n = len(b) if b else 0
            spans.append((pos, pos + n))
            pos += n
            if b:
                parts.append(b)
        return spans, b"".join(parts)

    def align(self, teacher_ids: list[int], student_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Per student token: its kind (NONE / EXACT / ULD) and the index of its teacher token (-1 for NONE)."""
        t_spans, t_text = self._spans(teacher_ids, self.t_bytes)
        s_spans, s_text = self._spans(student_ids, self.s_bytes)
        kinds = np.zeros(len(student_ids), dtype=np.int8)
        where = np.full(len(student_ids), -1, dtype=np.int64)
        # the texts agree up to `same` bytes: all of them, unless the teacher's bytes were not valid UTF-8 (a
        # random or cut-off token), which the student's text holds as U+FFFD; a leading space the teacher's first
        # token carries and the text lacks is skipped
        shift = 1 if t_text[:1] == b" " and s_text[:1] != b" " else 0
        same = _common_prefix(t_text[shift:], s_text)
        by_span, by_start = {}, {}
        for i, (a, b) in enumerate(t_spans):
            if b > a:
                by_span.setdefault((a - shift, b - shift), i)
                by_start.setdefault(a - shift, i)
        for j, (a, b) in enumerate(s_spans):
            if b > a and b <= same:
                if (a, b) in by_span:
                    kinds[j], where[j] = EXACT, by_span[(a, b)]
                elif a in by_start:
                    kinds[j], where[j] = ULD, by_start[a]
        if (student_ids and teacher_ids and student_ids[-1] == self.s_eos and teacher_ids[-1] in self.t_eos):
            kinds[-1], where[-1] = EXACT, len(teacher_ids) - 1  # both stopped: the EOS rows correspond
        return kinds, where

    def student_rows(self, teacher_ids, student_ids, topk_ids, topk_logprobs):
        """The teacher rows for each student completion token: ([n, k] ids in the student's vocabulary, [n, k]
        log-probs, [n] kinds). ULD rows keep the teacher's log-probs (their ids are not used)."""
        kinds, where = self.align(list(teacher_ids), list(student_ids))
        topk_ids = np.asarray(topk_ids, dtype=np.int64)
        topk_logprobs = np.asarray(topk_logprobs, dtype=np.float32)
        k = topk_ids.shape[1] if topk_ids.ndim == 2 else 1
        ids = np.full((len(student_ids), k), UNMAPPED_ID, dtype=np.int64)
        lps = np.full((len(student_ids), k), -np.inf, dtype=np.float32)
        has = where >= 0
        if has.any():
            rows = where[has]
            mapped = topk_ids[rows]
            ok = (mapped >= 0) & (mapped < len(self.id_map))
            ids[has] = np.where(ok, self.id_map[np.clip(mapped, 0, len(self.id_map) - 1)], UNMAPPED_ID)
            lps[has] = topk_logprobs[rows]
        return ids, lps, kinds


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if a[:mid] == b[:mid] else (lo, mid)
    return lo


def shares(kind_lists) -> dict[str, float]:
    """Share of the training tokens of each kind, e.g. {'exact': 0.81, 'uld': 0.12, 'none': 0.07, 'tokens': N}."""
    counts = np.zeros(3, dtype=np.int64)
    for kinds in kind_lists:
        counts += np.bincount(np.asarray(kinds, dtype=np.int64), minlength=3)[:3]
    total = int(counts.sum())
    return {**{name: round(float(counts[k]) / max(total, 1), 4) for name, k in KINDS.items()}, "tokens": total}


@dataclass
class CrossTokenizerSignal:
    """The stored teacher rows aligned to the student's tokens: ids [N, k] in the student's vocabulary,
    log-probs [N, k], kinds [N]. The loss's divergence at EXACT tokens, ULD at ULD tokens, 0 elsewhere."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    kinds: torch.Tensor
    capture_temperature: float = 1.0
    tail: str = "bucket"
    uld_weight: float = 1.0

    def take(self, index: slice) -> CrossTokenizerSignal:
        return CrossTokenizerSignal(self.ids[index], self.logprobs[index], self.kinds[index],
                                    self.capture_temperature, self.tail, self.uld_weight)

    def divergence(self, name: str, student_logp: torch.Tensor, temperature: float, **params) -> torch.Tensor:
        out = torch.zeros(student_logp.shape[0], dtype=torch.float32, device=student_logp.device)
        exact = (self.kinds == EXACT).nonzero()[:, 0]
        if exact.numel():
            out = out.index_put((exact,), losses.sparse_divergence_logp(
                name, student_logp[exact], self.ids[exact], self.logprobs[exact], temperature, self.tail,
                self.capture_temperature, **params).float())
        uld = (self.kinds == ULD).nonzero()[:, 0]
        if uld.numel() and self.uld_weight > 0:
            out = out.index_put((uld,), self.uld_weight * losses.uld_distance(
                student_logp[uld], self.logprobs[uld], temperature, self.capture_temperature).float())
        return out
