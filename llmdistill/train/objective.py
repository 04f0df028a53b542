"""The training objective: weighted loss terms over completion tokens, computed chunk by chunk.

The student's logits for N tokens would be an [N, V] tensor (0.2 MB per token at V = 49k in fp32).
`chunked_loss` projects at most `chunk_tokens` hidden states through the LM head at a time. When a
gradient is needed it is computed right there, chunk by chunk, inside the forward pass (the approach of
Liger's fused linear cross-entropy): each chunk's logits live only while its loss and its gradients
with respect to the hidden states and the head's weights are taken. The backward pass then only scales
those stored gradients, so no [N, V] tensor exists in either pass and the head is never recomputed.

Within a chunk the student's log-softmax is computed once per distinct temperature and shared by every
term (CE uses the T = 1 one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def auto_chunk_tokens(vocab: int) -> int:
    """Tokens per chunk so that one chunk's fp32 logits take about 64 MB (2^24 values), within 16..1024."""
    return max(16, min(1024, 2**24 // max(vocab, 1)))


def chunked_loss(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    signal,
    terms: Sequence,
    chunk_tokens: int | None = None,
    per_token: str | None = None,
    head_params: Sequence[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Sum over tokens of each term, unweighted, plus 'total' = sum(weight * scale * term).

    hidden: [N, H] student hidden states at the positions that predict `targets` [N].
    head: hidden [n, H] -> logits [n, V] (the LM head, plus any logit soft-capping).
    signal: teacher signal for the same N tokens (see `signals`), or None when every term is CE.
    terms: `config.LossTerm`s; divergence terms are scaled by temperature ** 2.
    per_token: also return this term's per-token values, detached, as 'per_token' [N] (closed-loop
        curriculum).
    head_params: the head's trainable tensors (default: those of `head` if it is a module). Gradients
        reach `hidden` and these; only 'total' carries them.
    chunk_tokens: None picks `auto_chunk_tokens` of the head's output width.
    """
    from llmdistill.train.losses import student_logprobs

    if head_params is None:
        head_params = [p for p in head.parameters() if p.requires_grad] if hasattr(head, "parameters") else []

    def chunk(h: torch.Tensor, tgt: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = head(h)
        part = None if signal is None else signal.take(slice(start, start + h.shape[0]))
        logp: dict[float, torch.Tensor] = {}
        values, tokens = [], h.new_zeros(0)
        total = h.new_zeros(())
        for t in terms:
            temperature = 1.0 if t.name == "ce" else t.temperature
            if temperature not in logp:
                logp[temperature] = student_logprobs(logits, temperature)
            if t.name == "ce":
                per = -logp[1.0].gather(-1, tgt.long().unsqueeze(-1)).squeeze(-1)
            else:
                per = part.divergence(t.name, logp[temperature], temperature, **t.params)
            value = per.sum()
            values.append(value.detach())
            total = total + t.weight * (1.0 if t.name == "ce" else temperature**2) * value
            if t.name == per_token:
                tokens = per.detach()
        return total, torch.stack(values), tokens

    if chunk_tokens is None:
        with torch.no_grad():
            chunk_tokens = auto_chunk_tokens(head(hidden[:1].detach()).shape[-1] if hidden.shape[0] else 1)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head_params))
    if needs_grad:
        total, values, tokens = _GradientInForward.apply(hidden, targets, chunk, chunk_tokens, len(head_params),
                                                         *head_params)
    else:
        total, values, tokens = _run_chunks(hidden, targets, chunk, chunk_tokens)
    sums = {t.name: values[i] for i, t in enumerate(terms)}
    sums["total"] = total
    if per_token is not None:
        sums["per_token"] = tokens
    return sums


def _run_chunks(hidden, targets, chunk, chunk_tokens):
    """No gradient wanted: the chunks' totals, per-term sums and per-token values."""
    total, values, tokens = hidden.new_zeros(()), None, []
    for start in range(0, hidden.shape[0], chunk_tokens):
        t, v, tok = chunk(hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens], start)
        total, values = total + t, v if values is None else values + v
        tokens.append(tok)
    if values is None:  # no tokens at all
        t, values, tok = chunk(hidden[:0], targets[:0], 0)
        tokens.append(tok)
    return total, values, torch.cat(tokens)


class _GradientInForward(torch.autograd.Function):
    """Forward: every chunk's loss and its gradients (w.r.t. the hidden rows and the head tensors).
    Backward: those gradients times the incoming gradient of 'total'."""

    @staticmethod
    def forward(ctx, hidden, targets, chunk, chunk_tokens, n_params, *params):
        grad_hidden = torch.zeros_like(hidden)
        grad_params = [torch.zeros_like(p) for p in params]
        total, values, tokens = hidden.new_zeros(()), None, []
        n = hidden.shape[0]
        for start in range(0, max(n, 1), chunk_tokens):
            with torch.enable_grad():
                h = hidden[start : start + chunk_tokens].detach().requires_grad_(True)
                t, v, tok = chunk(h, targets[start : start + chunk_tokens], start)
                if h.shape[0]:
                    grads = torch.autograd.grad(t, [h, *params], allow_unused=True)
                    grad_hidden[start : start + h.shape[0]] = grads[0]
                    for acc, g in zip(grad_params, grads[1:]):
                        if g is not None:
                            acc += g
            total, values = total + t.detach(), v if values is None else values + v
            tokens.append(tok)
        ctx.save_for_backward(grad_hidden, *grad_params)
        tokens = torch.cat(tokens)
        ctx.mark_non_differentiable(values, tokens)
        return total, values, tokens

    @staticmethod
    def backward(ctx, grad_total, grad_values, grad_tokens):
        grad_hidden, *grad_params = ctx.saved_tensors
        return (grad_hidden * grad_total, None, None, None, None, *(g * grad_total for g in grad_params))
