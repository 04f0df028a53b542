"""Measured difficulty of a sample, from the teacher's stored top-k log-probs.

- mean NLL: the teacher's mean negative log-likelihood of its own tokens (how surprised it was by what it
  sampled). A token outside the stored top-k counts at the k-th log-prob, a lower bound on its NLL.
- mean entropy: the entropy of each step's distribution over the top-k plus one tail bucket holding the
  remaining mass, averaged over steps. Folding the tail into one class gives a lower bound on the true
  entropy; with k = vocabulary it is exact.
- length: completion tokens.

`difficulty` in a record is the mean NLL; all three are kept in `scores`.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


def mean_nll(token_ids: list[int], topk_ids: np.ndarray, topk_logprobs: np.ndarray) -> float | None:
    if not token_ids:
        return None
    hit = topk_ids == np.asarray(token_ids)[:, None]
    own = np.where(hit, topk_logprobs.astype(np.float64), 0.0).sum(1)
    lp = np.where(hit.any(1), own, topk_logprobs[:, -1].astype(np.float64))
    value = float(-lp.mean())
    return value if math.isfinite(value) else None


def mean_entropy(topk_logprobs: np.ndarray) -> float | None:
    """Mean over steps of H(top-k + tail bucket), in nats. `topk_logprobs` is [T, k]."""
    if topk_logprobs is None or len(topk_logprobs) == 0:
        return None
    lp = topk_logprobs.astype(np.float64)
    p = np.exp(lp)
    tail = np.clip(1.0 - p.sum(1), 0.0, 1.0)
    inside = -np.where(p > 0, p * lp, 0.0).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        outside = np.where(tail > 0, -tail * np.log(tail), 0.0)
    value = float((inside + outside).mean())
    return value if math.isfinite(value) else None


def measure(token_ids: list[int], topk_ids, topk_logprobs) -> dict[str, float]:
    """The difficulty scores of one completion (empty for a failed one)."""
    if topk_ids is None or not token_ids:
        return {}
    out = {"teacher_nll": mean_nll(token_ids, topk_ids, topk_logprobs),
           "teacher_entropy": mean_entropy(topk_logprobs),
           "completion_tokens": float(len(token_ids))}
    return {k: round(v, 5) for k, v in out.items() if v is not None}


def summary_by_level(levels: list[int], scores: list[dict]) -> dict[str, dict]:
    """{level: {samples, mean of each score}} for the manifest (failed samples count, without scores)."""
    groups: dict[int, list[dict]] = defaultdict(list)
    for level, s in zip(levels, scores):
        groups[level].append(s)
    out = {}
    for level in sorted(groups):
        rows = groups[level]
        entry: dict = {"samples": len(rows)}
        for key in ("teacher_nll", "teacher_entropy", "completion_tokens"):
            values = [r[key] for r in rows if key in r]
            if values:
                entry[f"mean_{key}"] = round(float(np.mean(values)), 4)
        out[str(level)] = entry
    return out
