"""The training objective: weighted loss terms over completion tokens, computed chunk by chunk.

The student's logits for N tokens would be an [N, V] tensor (0.2 MB per token at V = 49k in fp32).
`chunked_loss` projects at most `chunk_tokens` hidden states through the LM head at a time. When a
gradient is needed it is computed right there, chunk by chunk, inside the forward pass (the approach of
Liger's fused linear cross-entropy): each chunk's logits live only while its loss and its gradients
with respect to the hidden states and the head's weights are taken. The backward pass then only scales
those stored gradients, so no [N, V] tensor exists in either pass and the head is never recomputed.

Within a chunk the student's log-softmax is computed once per distinct temperature and shared by every
term (CE uses the T = 1 one). The CE on the teacher's tokens is always measured, as a metric when it is
not a term (or has weight 0): the training log and the report compare students trained with different
objectives on that one quantity. It is read from the same chunk's logits, so it costs no extra pass (a
gather when a T = 1 term exists, one detached cross-entropy per chunk otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from llmdistill.config.train import auto_chunk_tokens


def chunked_loss(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    targets: torch.Tensor,
    signal,
    terms: Sequence,
    chunk_tokens: int | None = None,
    per_token: str | None = None,
    logit_post: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Sum over tokens of each term, unweighted, plus 'total' = sum(weight * scale * term), plus 'ce'
    (the cross-entropy on `targets`) when it is not a term: measured, never in 'total'.

    hidden: [N, H] student hidden states at the positions that predict `targets` [N].
    head: the LM head, a linear layer (weight [V, H], optional bias); gradients reach `hidden` and its
        trainable tensors (only 'total' carries them).
    logit_post: applied to the head's output inside the loss (e.g. final-logit soft-capping).
    signal: teacher signal for the same N tokens (see `signals`), or None when every term is CE.
    terms: `config.LossTerm`s; divergence terms are scaled by temperature ** 2.
    chunk_tokens: tokens per chunk; None picks `auto_chunk_tokens` of the vocabulary.
    per_token: also return this term's per-token values, detached, as 'per_token' [N] (closed-loop
        curriculum).
    """
    from llmdistill.losses import cross_entropy, tempered_logprobs

    if chunk_tokens is None:
        chunk_tokens = auto_chunk_tokens(head.weight.shape[0])
    measure_ce = not any(t.name == "ce" for t in terms)

    def loss_of(logits: torch.Tensor, tgt: torch.Tensor, start: int):
        """(weighted total, per-term sums, per-token values) of one chunk's raw head output."""
        if logit_post is not None:
            logits = logit_post(logits)
        part = None if signal is None else signal.take(slice(start, start + logits.shape[0]))
        logp: dict[float, torch.Tensor] = {}
        values, tokens = [], logits.new_zeros(0)
        total = logits.new_zeros(())
        for t in terms:
            temperature = 1.0 if t.name == "ce" else t.temperature
            if temperature not in logp:
                logp[temperature] = tempered_logprobs(logits, temperature)
            if t.name == "ce":
                per = -logp[1.0].gather(-1, tgt.long().unsqueeze(-1)).squeeze(-1)
            elif t.name == "sampled_reverse_kl":
                per = sampled_reverse_kl(logp[1.0].gather(-1, tgt.long().unsqueeze(-1)).squeeze(-1),
                                         part.target_logprobs(tgt))
            else:
                per = part.divergence(t.name, logp[temperature], temperature, **t.params)
            value = per.sum()
            values.append(value.detach())
            total = total + t.weight * temperature**2 * value  # ce and sampled_reverse_kl: T = 1
            if t.name == per_token:
                tokens = per.detach()
        if measure_ce:  # a metric only: from the logits already here, without a graph
            with torch.no_grad():
                if 1.0 in logp:
                    values.append(-logp[1.0].detach().gather(-1, tgt.long().unsqueeze(-1)).sum())
                else:
                    values.append(cross_entropy(logits.detach(), tgt).sum())
        return total, torch.stack(values), tokens

    weight, bias = head.weight, head.bias
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    if needs_grad:
        total, values, tokens = _GradientInForward.apply(hidden, weight, bias, targets, loss_of, chunk_tokens)
    else:
        total, values, tokens = _run_chunks(hidden, weight, bias, targets, loss_of, chunk_tokens)
    names = [t.name for t in terms] + (["ce"] if measure_ce else [])
    sums = {name: values[i] for i, name in enumerate(names)}
    sums["total"] = total
    if per_token is not None:
        sums["per_token"] = tokens
    return sums


def sampled_reverse_kl(student_token_logp: torch.Tensor, teacher_token_logp: torch.Tensor) -> torch.Tensor:
    """The per-token estimate of KL(student || teacher) at tokens x the student sampled, [N] -> [N]: its value is
    d = log q(x) - log p(x) (the reverse KL's single-sample estimate), its gradient d * grad log q(x), the
    score-function gradient of the reverse KL with each token's own d as its (negated) advantage, as in
    on-policy distillation recipes that score the student's samples by the teacher's per-token log-probs."""
    d = (student_token_logp - teacher_token_logp.to(student_token_logp.dtype)).detach()
    return d + (student_token_logp - student_token_logp.detach()) * d


def _project(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.nn.functional.linear(h, weight, bias)


def _run_chunks(hidden, weight, bias, targets, loss_of, chunk_tokens):
    """No gradient wanted: the chunks' totals, per-term sums and per-token values."""
    total, values, tokens = hidden.new_zeros(()), None, []
    for start in range(0, max(hidden.shape[0], 1), chunk_tokens):
        h = hidden[start : start + chunk_tokens]
        t, v, tok = loss_of(_project(h, weight, bias), targets[start : start + chunk_tokens], start)
        total, values = total + t, v if values is None else values + v
        tokens.append(tok)
    return total, values, torch.cat(tokens)


class _GradientInForward(torch.autograd.Function):
    """Forward: every chunk's loss, and its gradient with respect to the chunk's logits, turned at once
    into gradients for the hidden rows (dlogits @ W) and accumulated in place into the head's weight
    and bias gradients (no [V, H] temporary per chunk). Backward: those gradients times the incoming
    gradient of 'total'."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, loss_of, chunk_tokens):
        want_h, want_w = hidden.requires_grad, weight.requires_grad
        want_b = bias is not None and bias.requires_grad
        grad_hidden = torch.zeros_like(hidden) if want_h else None
        grad_weight = torch.zeros_like(weight) if want_w else None
        grad_bias = torch.zeros_like(bias) if want_b else None
        total, values, tokens = hidden.new_zeros(()), None, []
        for start in range(0, max(hidden.shape[0], 1), chunk_tokens):
            h = hidden[start : start + chunk_tokens]
            logits = _project(h, weight, bias).detach().requires_grad_(True)
            with torch.enable_grad():
                t, v, tok = loss_of(logits, targets[start : start + chunk_tokens], start)
                (dlogits,) = torch.autograd.grad(t, [logits]) if h.shape[0] else (None,)
            if dlogits is not None:
                dlogits = dlogits.to(weight.dtype)
                if want_h:
                    grad_hidden[start : start + h.shape[0]] = dlogits @ weight
                if want_w:
                    grad_weight.addmm_(dlogits.t(), h)
                if want_b:
                    grad_bias += dlogits.sum(0)
            total, values = total + t.detach(), v if values is None else values + v
            tokens.append(tok)
        tokens = torch.cat(tokens)
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        ctx.mark_non_differentiable(values, tokens)
        return total, values, tokens

    @staticmethod
    def backward(ctx, grad_total, grad_values, grad_tokens):
        grad_hidden, grad_weight, grad_bias = (None if g is None else g * grad_total for g in ctx.grads)
        ctx.grads = None
        return grad_hidden, grad_weight, grad_bias, None, None, None
