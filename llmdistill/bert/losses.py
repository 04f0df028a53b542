"""BERT-style distillation losses as small pure functions on tensors. Each returns a scalar (mean).

Shapes: B batch, T tokens, H / Ht / Hs hidden widths, A heads, C classes. `mask` is the [B, T] attention
mask (1 = real token); padded positions never contribute. Inputs are used as given (fp32 in training).

    logit_kd             alpha T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) CE(s, y)   Hinton et al. 2015
    hidden_mse/cosine    MSE or 1 - cos between (projected) student and teacher states       FitNets, TinyBERT
    attention_mse        MSE between attention probabilities                                 TinyBERT
    pkd                  MSE between L2-normalised [CLS] states                               BERT-PKD
    distilbert_triple    w_mlm MLM + w_kd KD + w_cos (1 - cos) of hidden states                DistilBERT
    attention_kl         KL between attention distributions, per head and query              MiniLM v1
    relation_kl          KL between softmax(X X^T / sqrt(d)) relations of split heads         MiniLM v1 value / v2
    rkd_distance/angle   Huber losses on normalised pairwise distances / triplet angles      RKD (Park et al. 2019)

The soft KD part reuses the LLM trainer's divergence (llmdistill.losses.forward_kl on log-probs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llmdistill.losses import forward_kl, tempered_logprobs


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` [B, T, ...] over positions where mask [B, T] is 1 (0 when nothing is unmasked)."""
    m = mask.to(values.dtype)
    while m.dim() < values.dim():
        m = m.unsqueeze(-1)
    m = m.expand_as(values)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def soft_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * mean KL(softmax(teacher/T) || softmax(student/T)) over the rows: [N, C], [N, C] -> scalar."""
    t = tempered_logprobs(teacher_logits, temperature)
    s = tempered_logprobs(student_logits, temperature)
    return forward_kl(t, s).mean() * temperature**2


def logit_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
             temperature: float = 1.0, alpha: float = 1.0) -> torch.Tensor:
    """alpha * soft_kd + (1 - alpha) * CE on the rows that have a label (label -100 = none).

    [B, C], [B, C], [B] -> scalar. With no labelled row the CE part is 0."""
    loss = alpha * soft_kd(student_logits, teacher_logits, temperature)
    if alpha < 1 and labels is not None:
        loss = loss + (1 - alpha) * cross_entropy(student_logits, labels)
    return loss


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE over the labelled rows (label -100 = none); 0 when there is none. [N, C], [N] -> scalar."""
    keep = labels != -100
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], labels[keep])


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per element over unmasked tokens: [B, T, H], [B, T, H], [B, T] -> scalar.
    Project the student first when widths differ (FitNets regressor, TinyBERT W_h)."""
    return _masked_mean((student - teacher).pow(2), mask)


def hidden_cosine(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(student_t, teacher_t) over unmasked tokens: [B, T, H] x 2, [B, T] -> scalar."""
    return _masked_mean(1 - F.cosine_similarity(student, teacher, dim=-1, eps=1e-8), mask)


def group_heads(attn: torch.Tensor, heads: int) -> torch.Tensor:
    """Average groups of consecutive heads so [B, A, T, T] has `heads` heads (A a multiple of heads).
    Rows stay distributions, so this serves both the MSE and the KL of attention maps."""
    b, a, t, u = attn.shape
    if a == heads:
        return attn
    if a % heads:
        raise ValueError(f"cannot group {a} attention heads into {heads}")
    return attn.view(b, heads, a // heads, t, u).mean(2)


def attention_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """TinyBERT: MSE between attention probabilities [B, A, T, T] over real (query, key) pairs.
    The teacher's heads are averaged in groups when it has more than the student."""
    teacher = group_heads(teacher, student.shape[1])
    pair = (mask.unsqueeze(2) * mask.unsqueeze(1)).unsqueeze(1)  # [B, 1, T, T]
    return _masked_mean((student - teacher).pow(2).permute(0, 2, 3, 1), pair.squeeze(1))


def pkd(student_cls: list[torch.Tensor], teacher_cls: list[torch.Tensor]) -> torch.Tensor:
    """BERT-PKD patient loss: sum over mapped layers of mean_batch ||s/|s| - t/|t|||^2.
    Each item [B, H] (the student projected to the teacher's width when they differ)."""
    total = student_cls[0].new_zeros(())
    for s, t in zip(student_cls, teacher_cls):
        total = total + (F.normalize(s, dim=-1) - F.normalize(t, dim=-1)).pow(2).sum(-1).mean()
    return total


def distilbert_triple(mlm_loss: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor,
                      temperature: float = 2.0, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """DistilBERT (Sanh et al. 2019): w_mlm * L_mlm + w_kd * T^2 KL on the logits (rows = tokens or
    examples, [N, C]) + w_cos * (1 - cos) between last hidden states [B, T, H] on real tokens."""
    w_mlm, w_kd, w_cos = weights
    return (w_mlm * mlm_loss + w_kd * soft_kd(student_logits, teacher_logits, temperature)
            + w_cos * hidden_cosine(student_hidden, teacher_hidden, mask))


def _row_kl(p_logp: torch.Tensor, q_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim of [B, A, T, T] log-probs, averaged over heads and real queries."""
    kl = forward_kl(p_logp, q_logp)  # [B, A, T]
    return _masked_mean(kl.permute(0, 2, 1), mask)


def attention_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MiniLM v1: KL(teacher attention || student attention) per head and query, [B, A, T, T] probabilities."""
    teacher = group_heads(teacher, student.shape[1])
    tiny = torch.finfo(student.dtype).tiny
    return _row_kl(teacher.clamp(min=tiny).log(), student.clamp(min=tiny).log(), mask)


def relation_logprobs(x: torch.Tensor, heads: int, mask: torch.Tensor) -> torch.Tensor:
    """log softmax(X_h X_h^T / sqrt(d_h)) for X [B, T, H] split into `heads` heads of d_h = H / heads.
    Padded keys are excluded. -> [B, heads, T, T]."""
    b, t, h = x.shape
    if h % heads:
        raise ValueError(f"{heads} relation heads do not divide width {h}")
    d = h // heads
    xh = x.view(b, t, heads, d).transpose(1, 2)  # [B, heads, T, d]
    scores = xh @ xh.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, -1e4)
    return scores.log_softmax(-1)


def relation_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """MiniLM value relation (v1) and each of v2's Q-Q / K-K / V-V relations: KL(teacher || student) between
    the relation distributions of [B, T, Hs] and [B, T, Ht] split into the same number of heads."""
    return _row_kl(relation_logprobs(teacher, heads, mask), relation_logprobs(student, heads, mask), mask)


def minilmv2(student_qkv: tuple[torch.Tensor, ...], teacher_qkv: tuple[torch.Tensor, ...], mask: torch.Tensor,
             heads: int) -> torch.Tensor:
    """MiniLMv2: the sum of the Q-Q, K-K and V-V relation KLs (one student layer, one teacher layer)."""
    return sum(relation_kl(s, t, mask, heads) for s, t in zip(student_qkv, teacher_qkv))


def _pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    sq = x.pow(2).sum(-1)
    d2 = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * x @ x.t()).clamp(min=1e-12)
    d = d2.sqrt()
    return d * (1 - torch.eye(len(x), dtype=x.dtype, device=x.device))


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD-D: Huber(psi_s, psi_t) with psi the pairwise Euclidean distances of the batch [B, D], each divided
    by its mean over distinct pairs. Widths may differ (the loss compares relations, not vectors)."""
    with torch.no_grad():
        t = _pairwise_distances(teacher)
        t = t / t[t > 0].mean()
    s = _pairwise_distances(student)
    s = s / s[s > 0].mean()
    return F.smooth_l1_loss(s, t)


def _angles(x: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between (i - j) and (k - j) for every triplet: [B, D] -> [B, B, B] ([j, i, k])."""
    e = x.unsqueeze(0) - x.unsqueeze(1)  # e[j, i] = x_i - x_j
    e = F.normalize(e, p=2, dim=2)
    return torch.bmm(e, e.transpose(1, 2))


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD-A: Huber between the cosines of all triplet angles of the batch (student vs teacher), [B, D]."""
    with torch.no_grad():
        t = _angles(teacher)
    return F.smooth_l1_loss(_angles(student), t)
