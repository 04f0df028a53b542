"""Curriculum sampling: easy samples first, harder ones admitted as training progresses.

The training set arrives in curriculum order (level, then file order). A pacing function gives the
competence c(t) in (0, 1], the fraction of that ordered set a batch may be drawn from at training
progress t = step / total_steps (Platanios et al. 2019):

    linear   c(t) = min(1, c0 + (1 - c0) t / t_full)
    root     c(t) = min(1, sqrt(c0^2 + (1 - c0^2) t / t_full))     (admits hard samples sooner)
    step     whole levels at a time: level i of L is admitted at t = t_full (i - 1) / L

Batches are drawn at random (seeded per step) from the admitted pool. With the closed loop on, every
`every` steps the per-sample student-teacher divergence measured during training reweights the pool:
the samples the student already matches best (lowest divergence, `drop_fraction` of those measured)
are left out of the next draws, the worst (`repeat_fraction`) are drawn twice as often.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch


def competence(pacing: str, progress: float, start: float, full_at: float) -> float:
    """Fraction of the ordered data available at `progress` in [0, 1] (linear and root pacings)."""
    t = min(max(progress / full_at, 0.0), 1.0)
    if pacing == "linear":
        return min(1.0, start + (1.0 - start) * t)
    if pacing == "root":
        return min(1.0, math.sqrt(start**2 + (1.0 - start**2) * t))
    raise ValueError(f"unknown pacing {pacing!r}")


def pool_size(pacing: str, progress: float, levels: Sequence[int], start: float, full_at: float) -> int:
    """How many of the first samples (in curriculum order) may be drawn at `progress`; at least one."""
    n = len(levels)
    if pacing == "step":
        distinct = sorted(set(levels))
        t = min(max(progress / full_at, 0.0), 1.0)
        admitted = distinct[: min(len(distinct), 1 + int(t * len(distinct)))]
        return max(1, sum(1 for lv in levels if lv <= admitted[-1]))
    return max(1, math.ceil(competence(pacing, progress, start, full_at) * n))


class PacedSampler(torch.utils.data.Sampler):
    """Yields `total_steps * batch` indices: each batch drawn from the pool admitted at its step."""

    def __init__(self, levels: Sequence[int], pacing: str, start: float, full_at: float, total_steps: int,
                 batch: int, seed: int):
        self.levels = list(levels)
        self.pacing, self.start, self.full_at = pacing, start, full_at
        self.total_steps, self.batch, self.seed = total_steps, batch, seed
        self.weights = torch.ones(len(self.levels), dtype=torch.float64)  # the closed loop updates these
        self.pools: list[int] = []  # pool size per step, for inspection and tests

    def __len__(self) -> int:
        return self.total_steps * self.batch

    def __iter__(self) -> Iterator[int]:
        self.pools = []
        for step in range(self.total_steps):
            size = pool_size(self.pacing, step / max(self.total_steps, 1), self.levels, self.start, self.full_at)
            self.pools.append(size)
            weights = self.weights[:size]
            if float(weights.sum()) <= 0:
                weights = torch.ones(size, dtype=torch.float64)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            yield from torch.multinomial(weights, self.batch, replacement=True, generator=gen).tolist()


def closed_loop_weights(divergence: dict[int, float], n: int, drop_fraction: float,
                        repeat_fraction: float) -> torch.Tensor:
    """Sampling weights from per-sample divergences: unmeasured samples 1, the lowest `drop_fraction` of the
    measured 0, the highest `repeat_fraction` 2."""
    weights = torch.ones(n, dtype=torch.float64)
    measured = sorted(divergence, key=divergence.get)
    if not measured:
        return weights
    n_drop = int(len(measured) * drop_fraction)
    n_repeat = int(len(measured) * repeat_fraction)
    for i in measured[:n_drop]:
        weights[i] = 0.0
    for i in measured[len(measured) - n_repeat:]:
        weights[i] = 2.0
    return weights
