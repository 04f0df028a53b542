"""Teacher signals: what the loss compares the student with, behind one interface.

`SparseSignal` is the stored top-k of the dataset (ids + log-probs, with the temperature they were
captured at). The loss only calls `forward_kl(student_logits, temperature)` and `take(index)`, so a
live-teacher signal with dense logits can sit beside it without the trainer knowing which it has.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmdistill.train import losses


@dataclass
class SparseSignal:
    """Stored teacher top-k for N tokens: ids [N, k] (int64), logprobs [N, k]."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    capture_temperature: float = 1.0
    tail: str = "bucket"

    def take(self, index: slice) -> SparseSignal:
        return SparseSignal(self.ids[index], self.logprobs[index], self.capture_temperature, self.tail)

    def forward_kl(self, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        return losses.forward_kl_sparse(student_logits, self.ids, self.logprobs, temperature, self.tail,
                                        self.capture_temperature)


@dataclass
class DenseSignal:
    """Full teacher logits for N tokens, [N, V] (a live teacher run under no_grad)."""

    logits: torch.Tensor

    def take(self, index: slice) -> DenseSignal:
        return DenseSignal(self.logits[index])

    def forward_kl(self, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        return losses.forward_kl_dense(student_logits, self.logits, temperature)
