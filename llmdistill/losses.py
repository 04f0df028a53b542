"""Distillation losses as pure functions.

Shapes: N tokens (already gathered from the batch, no padding), V vocabulary, k stored top-k width,
C classes (V for dense signals, k or k + 1 for sparse ones). Every function returns per-token values
of shape [N]; callers reduce (sum / number of tokens). Inputs in fp16/bf16 are computed in fp32;
fp64 stays fp64 (for gradcheck).

The divergences compare the teacher distribution p with the student distribution q, both given as
log-probabilities over the same C classes:

    forward_kl        KL(p || q)            = sum p (log p - log q)             mode-covering
    reverse_kl        KL(q || p)                                                  mode-seeking
    jsd (beta)        beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q   (GKD; 0 < beta < 1)
    skew_kl (alpha)   KL(p || alpha p + (1 - alpha) q)                          (DistiLLM)
    skew_reverse_kl   KL(q || alpha q + (1 - alpha) p)                          (DistiLLM)
    tvd               1/2 sum |p - q|
Classes with zero probability contribute exactly 0 to a KL sum.

Dense signal: p = softmax(teacher_logits / T), q = softmax(student_logits / T).

Sparse signal (stored top-k), the mass outside the teacher's top-k ids ("the tail") is handled by one
of two documented policies:

- "bucket": k + 1 classes, the k stored ids plus one "rest of the vocabulary" class. The teacher's tail
  mass is 1 - sum(top-k probs), floored at TAIL_FLOOR (fp16 storage can round the top-k sum to 1, and
  a zero-mass class would make reverse-direction divergences infinite); the student's is its exact
  probability outside those ids. With k = V there is no tail and this is the dense divergence.
- "renormalize": both distributions are restricted to the k ids and renormalised there; the tail is
  ignored. Simpler, biased when the teacher's top-k mass is far from 1.

Re-tempering stored log-probs: raw log-probs are log_softmax(z), so log_softmax(z / T) =
log_softmax(logp / T). Log-probs captured at temperature Tc (processed mode, no top-p truncation)
equal log_softmax(z / Tc), so the target at T is log_softmax(logp * Tc / T).

The bucket policy at T != Tc: tempering acts on every tail token separately (a tail of many small
probabilities grows much faster under T > 1 than one class of the same mass would), so both sides
bucket the *tempered* distributions. The student's tail is its exact tempered mass outside the ids.
The teacher's is unknown beyond its mass at Tc; it is taken to be spread over the tail the way the
student's is (teacher tail logits = student tail logits + a constant), which gives, with r = T / Tc,

    teacher tail at T (before normalising with the k tempered ids) = log p_tail / r + A - B / r
    A = log sum_{j in tail} q_T(j),   B = log sum_{j in tail} q_T(j)^r

(`tail_shift` = A - B / r, from the student's tempered log-probs, without gradient). So a student
equal to the teacher gets exactly 0 at every T and k, T = Tc is exact as before, and the bucket KL is
the dense KL minus only the teacher-vs-student difference *inside* the tail (chain rule), which the
stored top-k cannot see. Divergence terms are multiplied by T^2 by the caller (Hinton et al.) so their
gradients keep the same scale across temperatures.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TAIL_POLICIES = ("bucket", "renormalize")
TAIL_FLOOR = 1e-6
TAIL_EXACT = 1e-3  # student tails below this are summed exactly rather than taken as 1 - top-k mass
MASKED_LOGP = -1e4  # exp() underflows to exactly 0, but differences and mixtures stay finite


def _float(x: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs are computed in fp32; fp32/fp64 are kept."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and for very negative x (Maechler 2012).

    Each branch gets an input it is finite on (the "double where"): torch.where back-propagates zero
    times the unused branch's local gradient, and an infinite one there (x = 0) would make it NaN."""
    near = x > -0.6931471805599453
    x_near = torch.where(near, x, torch.full_like(x, -1.0))
    x_far = torch.where(near, torch.full_like(x, -1.0), x)
    return torch.where(near, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


# ------------------------------------------------------------------------------------------ divergences
def forward_kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim; classes with p = 0 contribute exactly 0."""
    p = p_logp.exp()
    return torch.where(p > 0, p * (p_logp - q_logp), torch.zeros_like(p)).sum(-1)


def reverse_kl(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(q || p)."""
    return forward_kl(q_logp, p_logp)


def _mixture(a_logp: torch.Tensor, b_logp: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(weight_a * a + (1 - weight_a) * b), computed in log space."""
    return torch.logaddexp(a_logp + math.log(weight_a), b_logp + math.log1p(-weight_a))


def jsd(p_logp: torch.Tensor, q_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence (GKD, Agarwal et al. 2024), 0 < beta < 1."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd needs 0 < beta < 1, got {beta}")
    m = _mixture(p_logp, q_logp, beta)
    return beta * forward_kl(p_logp, m) + (1.0 - beta) * forward_kl(q_logp, m)


def skew_kl(p_logp: torch.Tensor, q_logp: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """KL(p || alpha p + (1 - alpha) q) (DistiLLM, Ko et al. 2024), 0 <= alpha < 1."""
    return forward_kl(p_logp, _mixture(p_logp, q_logp, alpha) if alpha > 0 else q_logp)


def skew_reverse_kl(p_logp: torch.Tensor, q_logp: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """KL(q || alpha q + (1 - alpha) p) (DistiLLM), 0 <= alpha < 1."""
    return forward_kl(q_logp, _mixture(q_logp, p_logp, alpha) if alpha > 0 else p_logp)


def tvd(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """Total variation distance, 1/2 sum |p - q|."""
    return 0.5 * (p_logp.exp() - q_logp.exp()).abs().sum(-1)


DIVERGENCES = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "skew_kl": skew_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "tvd": tvd,
}


def divergence(name: str, p_logp: torch.Tensor, q_logp: torch.Tensor, **params) -> torch.Tensor:
    """The named divergence between teacher log-probs p and student log-probs q, per token [N]."""
    return DIVERGENCES[name](p_logp, q_logp, **params)


# ------------------------------------------------------------------------ distributions from the signal
def teacher_sparse_logprobs(
    topk_logprobs: torch.Tensor,
    temperature: float = 1.0,
    tail: str = "bucket",
    capture_temperature: float = 1.0,
    tail_shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Teacher target over the k stored ids (+ the tail class when tail == 'bucket').

    topk_logprobs: [N, k] log-probs as stored. Returns [N, k] or [N, k + 1].
    tail_shift: [N], needed for 'bucket' when temperature != capture_temperature: `student_tail_shift`
        of the student's tempered log-probs (the tail's inner spread, see the module docstring).
    """
    lp = _float(topk_logprobs).clamp(min=MASKED_LOGP)
    scale = capture_temperature / temperature
    if tail == "bucket":
        # rounding can push the stored top-k mass to (or past) 1: floor the tail
        tail_lp = log1mexp(torch.logsumexp(lp, -1).clamp(max=0.0)).clamp(min=math.log(TAIL_FLOOR))
        if scale != 1.0:
            if tail_shift is None:
                raise ValueError("the bucket tail at temperature != capture temperature needs tail_shift")
            lp, tail_lp = lp * scale, tail_lp * scale + tail_shift.to(lp.dtype)
        return torch.log_softmax(torch.cat([lp, tail_lp.unsqueeze(-1)], -1), -1)
    if tail != "renormalize":
        raise ValueError(f"tail must be one of {TAIL_POLICIES}, got {tail!r}")
    return torch.log_softmax(lp * scale, -1)


def student_tail_shift(student_logp: torch.Tensor, topk_ids: torch.Tensor, ratio: float) -> torch.Tensor:
    """A - B / ratio per token [N] (module docstring), without gradient: A = log of the student's tempered
    mass outside `topk_ids`, B = log of the sum of its ratio-th powers there. student_logp: [N, V] at the
    training temperature; ratio = T / Tc."""
    with torch.no_grad():
        rest = student_logp.scatter(-1, topk_ids, float("-inf"))  # the tail only
        return torch.logsumexp(rest, -1) - torch.logsumexp(rest * ratio, -1) / ratio


def tempered_logprobs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / T) over the vocabulary, in fp32 or better. [N, V] -> [N, V]."""
    z = _float(logits)
    return torch.log_softmax(z if temperature == 1.0 else z / temperature, -1)


def student_sparse_logprobs(
    student_logp: torch.Tensor,
    topk_ids: torch.Tensor,
    tail: str = "bucket",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Student log-probs at the teacher's ids (+ its tail mass for 'bucket').

    student_logp: [N, V] log-probs (see `tempered_logprobs`); topk_ids: [N, k] (int64, < V); valid: [N, k]
    bool, False entries get probability 0 (a large negative finite log-prob, so mixtures stay
    differentiable). Returns [N, k] or [N, k + 1].

    The tail is 1 - (the student's mass on the ids), from the k gathered values; where that mass is
    within TAIL_EXACT of 1 (a confident student) the subtraction loses precision, so those rows sum the
    rest of the vocabulary directly.
    """
    gathered = student_logp.gather(-1, topk_ids)
    if valid is not None:
        gathered = torch.where(valid, gathered, torch.full_like(gathered, MASKED_LOGP))
    if tail == "renormalize":
        return gathered - torch.logsumexp(gathered, -1, keepdim=True)
    if tail != "bucket":
        raise ValueError(f"tail must be one of {TAIL_POLICIES}, got {tail!r}")
    on_ids = torch.logsumexp(gathered, -1)
    tight_mask = on_ids > math.log1p(-TAIL_EXACT)
    # tight rows never reach log1mexp (their on-id mass can round to 1, where its gradient is infinite)
    rest = log1mexp(torch.where(tight_mask, torch.full_like(on_ids, -1.0), on_ids))
    tight = tight_mask.nonzero()[:, 0]
    if tight.numel():
        exact = torch.logsumexp(student_logp[tight].scatter(-1, topk_ids[tight], float("-inf")), -1)
        rest = rest.index_put((tight,), exact)
    return torch.cat([gathered, rest.unsqueeze(-1)], -1)


def sparse_divergence_logp(
    name: str,
    student_logp: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    temperature: float = 1.0,
    tail: str = "bucket",
    capture_temperature: float = 1.0,
    **params,
) -> torch.Tensor:
    """`sparse_divergence` from the student's log-probs at `temperature` (shared with other terms)."""
    V = student_logp.shape[-1]
    if topk_ids.shape[-1] >= V:
        tail = "renormalize"
    topk_ids = topk_ids.long()
    valid = topk_ids < V
    if not bool(valid.all()):
        # point invalid entries at a valid id of the same row (harmless duplicates), then mask them out
        first_valid = topk_ids.gather(-1, valid.to(torch.uint8).argmax(-1, keepdim=True)).clamp(max=V - 1)
        topk_ids = torch.where(valid, topk_ids, first_valid)
        topk_logprobs = torch.where(valid, _float(topk_logprobs), torch.full_like(_float(topk_logprobs), -math.inf))
    else:
        valid = None
    shift = None
    if tail == "bucket" and temperature != capture_temperature:
        shift = student_tail_shift(student_logp, topk_ids, temperature / capture_temperature)
    p = teacher_sparse_logprobs(topk_logprobs, temperature, tail, capture_temperature, shift)
    q = student_sparse_logprobs(student_logp, topk_ids, tail, valid)
    return divergence(name, p, q.to(p.dtype), **params)


def sparse_divergence(
    name: str,
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    temperature: float = 1.0,
    tail: str = "bucket",
    capture_temperature: float = 1.0,
    **params,
) -> torch.Tensor:
    """A divergence per token, [N], between the stored teacher top-k and the student's logits [N, V].

    With k = V there is no tail: both policies then reduce to the dense divergence (computed as
    'renormalize', which avoids a tail class of zero mass on both sides).

    Teacher ids the student does not have (>= its logit width V; the preflight allows this only for a
    vocabulary that differs by padding rows) get probability 0 on both sides, so their teacher mass
    falls into the tail bucket.
    """
    return sparse_divergence_logp(name, tempered_logprobs(student_logits, temperature), topk_ids, topk_logprobs,
                                  temperature, tail, capture_temperature, **params)


def uld_distance(
    student_logp: torch.Tensor,
    topk_logprobs: torch.Tensor,
    temperature: float = 1.0,
    capture_temperature: float = 1.0,
) -> torch.Tensor:
    """Universal Logit Distillation's tokenizer-free distance (Boizard et al. 2024), per token [N]: the L1
    distance between the teacher's and the student's probabilities sorted in decreasing order, which needs
    no correspondence between their vocabularies. With the teacher's stored top-k: its k largest
    probabilities and its tail mass against the student's k largest and the rest, at the term's temperature
    (the teacher's tail re-tempered as one class).

    student_logp: [N, V] at `temperature` (see `tempered_logprobs`); topk_logprobs: [N, k] as stored.
    """
    k = topk_logprobs.shape[-1]
    shift = torch.zeros(topk_logprobs.shape[0], dtype=torch.float32, device=topk_logprobs.device)
    p = teacher_sparse_logprobs(topk_logprobs, temperature, "bucket", capture_temperature,
                                shift if temperature != capture_temperature else None).exp()
    p_top = p[:, :k].sort(-1, descending=True).values
    q_top = student_logp.topk(min(k, student_logp.shape[-1]), -1).values.exp().to(p.dtype)
    if q_top.shape[-1] < k:
        q_top = F.pad(q_top, (0, k - q_top.shape[-1]))
    q_tail = (1.0 - q_top.sum(-1)).clamp(min=0.0)
    return (p_top - q_top).abs().sum(-1) + (p[:, k] - q_tail).abs()


def dense_divergence_logp(
    name: str, student_logp: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, **params
) -> torch.Tensor:
    """`dense_divergence` from the student's log-probs at `temperature`."""
    return divergence(name, tempered_logprobs(teacher_logits, temperature), student_logp, **params)


def dense_divergence(
    name: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, **params
) -> torch.Tensor:
    """A divergence per token, [N], between full teacher and student logits [N, V]."""
    return dense_divergence_logp(name, tempered_logprobs(student_logits, temperature), teacher_logits, temperature,
                                 **params)


def forward_kl_sparse(student_logits, topk_ids, topk_logprobs, temperature=1.0, tail="bucket",
                      capture_temperature=1.0) -> torch.Tensor:
    """KL(teacher_T || student_T) per token from the stored top-k (the default distillation term)."""
    return sparse_divergence("forward_kl", student_logits, topk_ids, topk_logprobs, temperature, tail,
                             capture_temperature)


def forward_kl_dense(student_logits, teacher_logits, temperature=1.0) -> torch.Tensor:
    """KL(teacher_T || student_T) per token from full logits."""
    return dense_divergence("forward_kl", student_logits, teacher_logits, temperature)


def cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Hard-label CE per token, [N]: -log q(target)."""
    return F.cross_entropy(_float(student_logits), targets.long(), reduction="none")
