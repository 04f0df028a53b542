"""Teacher signals: what the loss compares the student with, behind one interface.

`SparseSignal` is the stored top-k of the dataset (ids + log-probs, with the temperature they were
captured at); `DenseSignal` holds full teacher logits; `LiveSignal` holds a live teacher's hidden
states and projects them through its head only inside the loss chunk; `RoutedSignal` puts several
together, each for the tokens of the samples its teacher wrote (generate.routing, a live teacher each).
The loss only calls `take(index)`, `divergence(name, student_logp, temperature, **params)` and, for the
sampled reverse-KL estimate on the student's own samples, `target_logprobs(targets)` (the teacher's log-prob of
each sequence token), so the trainer never needs to know which one it has. Divergences receive the student's
log-probs at the term's temperature (computed once per chunk and shared by every term).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmdistill import losses


@dataclass
class SparseSignal:
    """Stored teacher top-k for N tokens: ids [N, k] (int64), logprobs [N, k]; token_logprobs [N]: the teacher's
    log-prob of each sequence token itself, where the data stores it (the student's scored samples)."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    capture_temperature: float = 1.0
    tail: str = "bucket"
    token_logprobs: torch.Tensor | None = None

    def take(self, index: slice) -> SparseSignal:
        return SparseSignal(self.ids[index], self.logprobs[index], self.capture_temperature, self.tail,
                            None if self.token_logprobs is None else self.token_logprobs[index])

    def target_logprobs(self, targets: torch.Tensor) -> torch.Tensor:
        if self.token_logprobs is None:
            raise ValueError("these stored rows hold no log-prob of the sequence's own tokens (token_logprobs)")
        return self.token_logprobs

    def divergence(self, name: str, student_logp: torch.Tensor, temperature: float, **params) -> torch.Tensor:
        return losses.sparse_divergence_logp(name, student_logp, self.ids, self.logprobs, temperature, self.tail,
                                             self.capture_temperature, **params)


@dataclass
class DenseSignal:
    """Full teacher logits for N tokens, [N, V]."""

    logits: torch.Tensor

    def take(self, index: slice) -> DenseSignal:
        return DenseSignal(self.logits[index])

    def divergence(self, name: str, student_logp: torch.Tensor, temperature: float, **params) -> torch.Tensor:
        return losses.dense_divergence_logp(name, student_logp, self.logits, temperature, **params)

    def target_logprobs(self, targets: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.logits.float(), -1).gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


@dataclass
class LiveSignal:
    """A live teacher's final hidden states for N tokens, [N, H], and its LM head.

    Logits are projected chunk by chunk, under no_grad, only when a divergence asks for them, so the
    teacher's [N, V] logits never exist at once either. Rows beyond `vocab` (teacher padding rows the
    student lacks) are dropped.
    """

    hidden: torch.Tensor
    head: Callable[[torch.Tensor], torch.Tensor]
    vocab: int
    post: Callable[[torch.Tensor], torch.Tensor] | None = None  # e.g. final-logit soft-capping

    def take(self, index: slice) -> LiveSignal:
        return LiveSignal(self.hidden[index], self.head, self.vocab, self.post)

    def _logits(self) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.head(self.hidden)
            if self.post is not None:
                teacher_logits = self.post(teacher_logits)
            return teacher_logits[..., : self.vocab]

    def divergence(self, name: str, student_logp: torch.Tensor, temperature: float, **params) -> torch.Tensor:
        return losses.dense_divergence_logp(name, student_logp, self._logits(), temperature, **params)

    def target_logprobs(self, targets: torch.Tensor) -> torch.Tensor:
        return DenseSignal(self._logits()).target_logprobs(targets)


@dataclass
class RoutedSignal:
    """Several signals over one set of N tokens: `parts` pairs increasing token indices (into the N) with the
    signal for those tokens (e.g. each routed teacher's `LiveSignal` for the samples it wrote)."""

    parts: list[tuple[torch.Tensor, object]]

    def take(self, index: slice) -> RoutedSignal:
        start, stop = index.start or 0, index.stop
        out = []
        for idx, signal in self.parts:
            sel = ((idx >= start) & (idx < stop)).nonzero()[:, 0]
            if sel.numel():  # idx increases, so sel is one contiguous run
                out.append((idx[sel] - start, signal.take(slice(int(sel[0]), int(sel[-1]) + 1))))
        return RoutedSignal(out)

    def divergence(self, name: str, student_logp: torch.Tensor, temperature: float, **params) -> torch.Tensor:
        out = torch.zeros(student_logp.shape[0], dtype=torch.float32, device=student_logp.device)
        for idx, signal in self.parts:
            out = out.index_put((idx,), signal.divergence(name, student_logp[idx], temperature, **params).float())
        return out

    def target_logprobs(self, targets: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(targets.shape[0], dtype=torch.float32, device=targets.device)
        for idx, signal in self.parts:
            out = out.index_put((idx,), signal.target_logprobs(targets[idx]).float())
        return out
