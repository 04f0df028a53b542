"""Repetitive suffixes in the student's own samples (on-policy rollouts).

A pruned or half-trained student under free generation often collapses into repeating its own last few tokens
until the length limit ("Paris Paris Paris ...", an apology loop): the failure ShortOPD names for structurally
pruned students. Training on those samples spends the budget on the loop. `cut_repetition` finds a suffix that
is periodic (the same span of `period` tokens over and over, the last copy possibly partial) and keeps its first
copy only, so the student learns from what it wrote before the loop, and the teacher's verdict on that.
"""

from __future__ import annotations

MAX_PERIOD = 32  # longest repeated span looked for, in tokens
MIN_COPIES = 3  # a span of two or more tokens repeated this many times in a row ends the sample
MIN_RUN = 8  # a single token repeated this many times in a row ends the sample


def repetitive_suffix(ids: list[int], max_period: int = MAX_PERIOD) -> tuple[int, int] | None:
    """(start, period) of the longest periodic suffix of `ids` that repeats enough (MIN_COPIES copies of a span
    of 2+ tokens, MIN_RUN of one token), or None. The suffix from `start` on equals ids[start:start + period]
    over and over (its last copy may be cut short)."""
    n = len(ids)
    best = None
    for period in range(1, min(max_period, n // 2) + 1):
        j = n - 1 - period
        while j >= 0 and ids[j] == ids[j + period]:
            j -= 1
        start = j + 1
        span = ids[start : start + period]
        if any(period % d == 0 and span == span[:d] * (period // d) for d in range(1, period)):
            continue  # a repeat of a shorter span: judged at that span's own period
        if n - start >= period * (MIN_RUN if period == 1 else MIN_COPIES) and (best is None or start < best[0]):
            best = (start, period)
    return best


def cut_repetition(ids: list[int], eos_ids: set[int] | frozenset = frozenset()) -> tuple[list[int], bool]:
    """`ids` with a repetitive suffix cut after its first copy, and whether it was cut. A final EOS (the loop
    ended on its own) is looked past, and dropped with the loop when it is cut."""
    body = ids[:-1] if ids and ids[-1] in eos_ids else ids
    found = repetitive_suffix(body)
    if found is None:
        return list(ids), False
    start, period = found
    return list(body[: start + period]), True
