"""The training objective: weighted loss terms over completion tokens, computed chunk by chunk.

The student's logits for N tokens would be an [N, V] tensor (0.2 MB per token at V = 49k in fp32).
`chunked_loss` projects at most `chunk_tokens` hidden states through the LM head at a time and wraps
each chunk in activation checkpointing, so neither the forward nor the backward pass ever holds more
than one chunk's logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from llmdistill.train import losses


def chunked_loss(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    signal,
    terms: Sequence,
    chunk_tokens: int = 1024,
    per_token: str | None = None,
) -> dict[str, torch.Tensor]:
    """Sum over tokens of each term, unweighted, plus 'total' = sum(weight * scale * term).

    hidden: [N, H] student hidden states at the positions that predict `targets` [N].
    head: hidden [n, H] -> logits [n, V] (the LM head, plus any logit soft-capping).
    signal: teacher signal for the same N tokens (`signals.SparseSignal`/`DenseSignal`), or None when
        no KL term has weight.
    terms: `config.LossTerm`s; divergence terms are scaled by temperature ** 2.
    per_token: also return this term's per-token values, detached, as 'per_token' [N] (closed-loop
        curriculum).
    """
    names = [t.name for t in terms]
    sums = {name: hidden.new_zeros(()) for name in names}
    total = hidden.sum() * 0.0  # keeps the graph connected when there are no tokens (all masked)
    n = hidden.shape[0]

    kept: list[torch.Tensor] = []

    def chunk_values(h: torch.Tensor, tgt: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = head(h)
        part = None if signal is None else signal.take(slice(start, start + h.shape[0]))
        values, tokens = [], h.new_zeros(0)
        for t in terms:
            if t.name == "ce":
                per = losses.cross_entropy(logits, tgt)
            else:
                per = part.divergence(t.name, logits, t.temperature, **t.params)
            values.append(per.sum())
            if t.name == per_token:
                tokens = per.detach()
        return torch.stack(values), tokens

    for start in range(0, n, chunk_tokens):
        h, tgt = hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        if torch.is_grad_enabled() and h.requires_grad:
            values, tokens = checkpoint(chunk_values, h, tgt, start, use_reentrant=False)
        else:
            values, tokens = chunk_values(h, tgt, start)
        kept.append(tokens)
        for i, t in enumerate(terms):
            sums[t.name] = sums[t.name] + values[i]
            scale = 1.0 if t.name == "ce" else t.temperature**2
            total = total + t.weight * scale * values[i]
    sums["total"] = total
    if per_token is not None:
        sums["per_token"] = torch.cat(kept) if kept else hidden.new_zeros(0)
    return sums
