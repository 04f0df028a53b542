"""Student-vs-teacher token metrics on teacher-written text, as pure functions over logits.

For N completion tokens with teacher logits T [N, V], student logits S [N, V] and the reference tokens
y [N] (the teacher's own greedy tokens), with p = softmax(T), q = softmax(S), m = (p + q) / 2:
    kl        KL(p || q) = sum_v p log(p / q)                      (dense, exact, per token)
    jsd       (KL(p || m) + KL(q || m)) / 2, in nats, in [0, ln 2]
    agree     [argmax q == argmax p]                               (top-1 agreement)
    overlap   |topk(p) & topk(q)| / k                              (top-k overlap)
    nll       -log q[y]                                            (student perplexity = exp(mean nll))
    conf      max_v q, correct = [argmax q == y]                   (for the calibration error)
`token_stats` gives these per token; `token_sums` reduces them to sums (plus calibration bins) that add
up over batches; `finish` turns sums into means. Expected calibration error over B equal-width bins of
confidence: ECE = sum_b (n_b / N) |accuracy_b - confidence_b|. When the two logit widths differ (a
vocabulary padded with unused rows) both are compared on the shared width, renormalised.
The task graders (right or wrong answers) are in llmdistill/graders.py.
"""

from __future__ import annotations

import math

import torch

ECE_BINS = 15
_CHUNK_ELEMENTS = 2**24  # logits rows are processed in chunks of at most this many elements


def token_stats(teacher_logits: torch.Tensor, student_logits: torch.Tensor, targets: torch.Tensor,
                k: int = 10) -> dict[str, torch.Tensor]:
    """Per-token metrics, each a float tensor [N]: kl, jsd, agree, overlap, nll, conf, correct."""
    width = min(teacher_logits.shape[-1], student_logits.shape[-1])
    k = max(1, min(k, width))
    rows = max(1, _CHUNK_ELEMENTS // width)
    parts = []
    for start in range(0, teacher_logits.shape[0], rows):
        t = torch.log_softmax(teacher_logits[start : start + rows, :width].float(), -1)
        s = torch.log_softmax(student_logits[start : start + rows, :width].float(), -1)
        y = targets[start : start + rows].long()
        p, q = t.exp(), s.exp()
        log_m = torch.logaddexp(t, s) - math.log(2.0)
        kl = torch.where(p > 0, p * (t - s), torch.zeros_like(p)).sum(-1)
        kl_pm = torch.where(p > 0, p * (t - log_m), torch.zeros_like(p)).sum(-1)
        kl_qm = torch.where(q > 0, q * (s - log_m), torch.zeros_like(q)).sum(-1)
        t_top, s_top = t.topk(k, -1).indices, s.topk(k, -1).indices
        overlap = (t_top.unsqueeze(-1) == s_top.unsqueeze(-2)).any(-1).sum(-1).float() / k
        conf, pick = q.max(-1)
        parts.append({
            "kl": kl.clamp_min(0.0),
            "jsd": (0.5 * (kl_pm + kl_qm)).clamp_min(0.0),
            "agree": (pick == t.argmax(-1)).float(),
            "overlap": overlap,
            "nll": -s.gather(-1, y.unsqueeze(-1)).squeeze(-1),
            "conf": conf,
            "correct": (pick == y).float(),
        })
    if not parts:
        return {key: torch.zeros(0) for key in ("kl", "jsd", "agree", "overlap", "nll", "conf", "correct")}
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def token_sums(teacher_logits: torch.Tensor, student_logits: torch.Tensor, targets: torch.Tensor, k: int = 10,
               bins: int = ECE_BINS) -> dict:
    """Sums over tokens (add them with `add_sums`): kl, jsd, agree, overlap, nll, tokens, and per
    confidence bin the count, the summed confidence and the summed correctness."""
    return sums_of(token_stats(teacher_logits, student_logits, targets, k), bins)


def sums_of(stats: dict[str, torch.Tensor], bins: int = ECE_BINS) -> dict:
    conf = stats["conf"].double()
    index = (conf * bins).long().clamp(0, bins - 1)
    return {
        **{key: float(stats[key].double().sum()) for key in ("kl", "jsd", "agree", "overlap", "nll")},
        "tokens": int(conf.shape[0]),
        "bin_count": torch.bincount(index, minlength=bins).tolist(),
        "bin_conf": torch.bincount(index, weights=conf, minlength=bins).tolist(),
        "bin_correct": torch.bincount(index, weights=stats["correct"].double(), minlength=bins).tolist(),
    }


def add_sums(total: dict, part: dict) -> dict:
    """total += part, key by key (lists element-wise); returns total."""
    for key, value in part.items():
        if key not in total:
            total[key] = list(value) if isinstance(value, list) else value
        elif isinstance(value, list):
            total[key] = [a + b for a, b in zip(total[key], value)]
        else:
            total[key] += value
    return total


def expected_calibration_error(bin_count: list[float], bin_conf: list[float], bin_correct: list[float]) -> float:
    """sum_b (n_b / N) |acc_b - conf_b| = sum_b |correct_b - conf_b| / N (sums per bin)."""
    n = sum(bin_count)
    if n == 0:
        return float("nan")
    return sum(abs(c - f) for c, f in zip(bin_correct, bin_conf)) / n


def finish(sums: dict) -> dict[str, float]:
    n = max(sums.get("tokens", 0), 1)
    out = {
        "kl_to_teacher": sums["kl"] / n,
        "jsd_to_teacher": sums["jsd"] / n,
        "top1_agreement": sums["agree"] / n,
        "topk_overlap": sums["overlap"] / n,
        "perplexity": math.exp(sums["nll"] / n),
        "tokens": sums["tokens"],
    }
    if "bin_count" in sums:
        ece = expected_calibration_error(sums["bin_count"], sums["bin_conf"], sums["bin_correct"])
        out["ece"] = None if math.isnan(ece) else ece  # no tokens: no calibration (and valid JSON)
        out["calibration"] = [
            {"bin": i, "count": int(c), "confidence": f / c, "accuracy": a / c}
            for i, (c, f, a) in enumerate(zip(sums["bin_count"], sums["bin_conf"], sums["bin_correct"])) if c
        ]
    return out

