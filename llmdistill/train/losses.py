"""Distillation losses as pure functions.

Shapes: N tokens (already gathered from the batch, no padding), V vocabulary, k stored top-k width.
Every function returns per-token values of shape [N]; callers reduce (sum / number of tokens).

Forward KL, the distance the student minimises towards the teacher at temperature T:

    KL(p_T || q_T) = sum_v p_T(v) * (log p_T(v) - log q_T(v))

Dense: p_T = softmax(teacher_logits / T). Sparse (stored top-k), the mass outside the teacher's
top-k ids ("the tail") is handled by one of two documented policies:

- "bucket": the distributions get k + 1 classes, the k stored ids plus one "rest of the vocabulary"
  class. The teacher's tail mass is 1 - sum(top-k probs) (exact at the capture temperature); the
  student's is its probability outside those ids, computed exactly from its full logits. With k = V
  this equals the dense KL.
- "renormalize": both distributions are restricted to the k ids and renormalised there; the tail is
  ignored. Simpler, biased when the teacher's top-k mass is far from 1.

Re-tempering stored log-probs: raw log-probs are log_softmax(z), so log_softmax(z / T) =
log_softmax(logp / T). Log-probs captured at temperature Tc (processed mode, no top-p truncation)
equal log_softmax(z / Tc), so the student target at T is log_softmax(logp * Tc / T). In the bucket
policy at T != Tc the tail bucket is re-tempered as a single class: an approximation (its true inner
spread is unknown), exact at T = Tc. KL terms are multiplied by T^2 by the caller (Hinton et al.) so
their gradients keep the same scale across temperatures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TAIL_POLICIES = ("bucket", "renormalize")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and for very negative x (Maechler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def kl_from_logprobs(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """sum_v p(v) (log p(v) - log q(v)) over the last dim; classes with p = 0 contribute exactly 0."""
    p = p_logp.exp()
    return torch.where(p > 0, p * (p_logp - q_logp), torch.zeros_like(p)).sum(-1)


def teacher_sparse_logprobs(
    topk_logprobs: torch.Tensor, temperature: float = 1.0, tail: str = "bucket", capture_temperature: float = 1.0
) -> torch.Tensor:
    """Teacher target over the k stored ids (+ the tail class when tail == 'bucket').

    topk_logprobs: [N, k] log-probs as stored (any float dtype). Returns [N, k] or [N, k + 1], float32.
    """
    lp = topk_logprobs.float()
    if tail == "bucket":
        lse = torch.logsumexp(lp, -1, keepdim=True)
        # fp16 storage can make the top-k sum exceed 1 by rounding: then the tail is empty
        lp = lp - lse.clamp(min=0.0)
        tail_lp = log1mexp(torch.logsumexp(lp, -1).clamp(max=0.0))
        lp = torch.cat([lp, tail_lp.unsqueeze(-1)], -1)
    elif tail != "renormalize":
        raise ValueError(f"tail must be one of {TAIL_POLICIES}, got {tail!r}")
    scale = capture_temperature / temperature
    if scale != 1.0 or tail == "renormalize":
        lp = torch.log_softmax(lp * scale, -1)
    return lp


def student_sparse_logprobs(
    student_logits: torch.Tensor, topk_ids: torch.Tensor, temperature: float = 1.0, tail: str = "bucket"
) -> torch.Tensor:
    """Student log-probs at the teacher's ids (+ its exact tail mass for 'bucket').

    student_logits: [N, V]; topk_ids: [N, k] (int64). Returns [N, k] or [N, k + 1], float32.
    """
    ls = torch.log_softmax(student_logits.float() / temperature, -1)
    gathered = ls.gather(-1, topk_ids)
    if tail == "bucket":
        rest = ls.scatter(-1, topk_ids, float("-inf"))  # everything but the teacher's ids
        return torch.cat([gathered, torch.logsumexp(rest, -1, keepdim=True)], -1)
    if tail == "renormalize":
        return gathered - torch.logsumexp(gathered, -1, keepdim=True)
    raise ValueError(f"tail must be one of {TAIL_POLICIES}, got {tail!r}")


def forward_kl_sparse(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    temperature: float = 1.0,
    tail: str = "bucket",
    capture_temperature: float = 1.0,
) -> torch.Tensor:
    """KL(teacher_T || student_T) per token, [N], from the stored top-k (see the module doc).

    With k = V there is no tail: both policies then reduce to the dense KL (computed as 'renormalize',
    which avoids a tail class of zero mass on both sides).
    """
    if topk_ids.shape[-1] >= student_logits.shape[-1]:
        tail = "renormalize"
    p = teacher_sparse_logprobs(topk_logprobs, temperature, tail, capture_temperature)
    q = student_sparse_logprobs(student_logits, topk_ids.long(), temperature, tail)
    return kl_from_logprobs(p, q)


def forward_kl_dense(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher_T || student_T) per token, [N], from full logits [N, V] of both models."""
    p = torch.log_softmax(teacher_logits.float() / temperature, -1)
    q = torch.log_softmax(student_logits.float() / temperature, -1)
    return kl_from_logprobs(p, q)


def cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Hard-label CE per token, [N]: -log q(target)."""
    return F.cross_entropy(student_logits.float(), targets.long(), reduction="none")
