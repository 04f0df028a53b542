"""Student-vs-teacher token metrics on teacher-written text, as pure functions over logits.

For N completion tokens with teacher logits T [N, V], student logits S [N, V] and the teacher's own
tokens y [N]:
    kl        sum_tokens KL(softmax(T) || softmax(S))            (dense, exact)
    agree     sum_tokens [argmax S == argmax T]                  (top-1 agreement)
    nll       sum_tokens -log softmax(S)[y]                      (student perplexity = exp(nll / N))
All are sums so batches can be accumulated; `finish` turns them into means. When the two logit widths
differ (a vocabulary padded with unused rows) both are compared on the shared width, renormalised.
"""

from __future__ import annotations

import math
import re

import torch


def token_sums(teacher_logits: torch.Tensor, student_logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    width = min(teacher_logits.shape[-1], student_logits.shape[-1])
    teacher_logits, student_logits = teacher_logits[..., :width], student_logits[..., :width]
    t = torch.log_softmax(teacher_logits.float(), -1)
    s = torch.log_softmax(student_logits.float(), -1)
    p = t.exp()
    kl = torch.where(p > 0, p * (t - s), torch.zeros_like(p)).sum(-1)
    return {
        "kl": float(kl.sum()),
        "agree": float((s.argmax(-1) == t.argmax(-1)).sum()),
        "nll": float(-s.gather(-1, targets.long().unsqueeze(-1)).sum()),
        "tokens": int(targets.shape[0]),
    }


def finish(sums: dict[str, float]) -> dict[str, float]:
    n = max(sums.get("tokens", 0), 1)
    return {
        "kl_to_teacher": sums["kl"] / n,
        "top1_agreement": sums["agree"] / n,
        "perplexity": math.exp(sums["nll"] / n),
        "tokens": sums["tokens"],
    }


# ---------------------------------------------------------------------------------------- task graders
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")
_PUNCT = re.compile(r"[^\w\s-]")


def _normal(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def _number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def grade(grader: str, output: str, answer: str) -> bool:
    """Is `output` right? contains: the answer's words appear, in order, as whole words of the output;
    number: the last number in the output equals the answer; exact: equal after normalisation."""
    if grader == "number":
        got, want = _number(output), _number(answer)
        return got is not None and want is not None and got == want
    out, ans = _normal(output), _normal(answer)
    if grader == "exact":
        return out == ans
    if grader == "contains":
        return bool(ans) and f" {ans} " in f" {out} "
    raise ValueError(f"unknown grader {grader!r}")
