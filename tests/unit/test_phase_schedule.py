"""Offline on-policy rounds train in phases, one trainer each, on one learning-rate schedule: the variant's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.optimization import get_scheduler

from llmdistill.config import load_config
from llmdistill.train.opd import phases
from llmdistill.train.trainer import phase_schedule


def whole(kind, warmup, total):
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    return get_scheduler(kind, optimizer=probe, num_warmup_steps=warmup, num_training_steps=total).lr_lambdas[0]


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant_with_warmup"])
def test_each_phase_follows_the_whole_runs_schedule(kind):
    total, warmup = 60, 5
    run = whole(kind, warmup, total)
    first = phase_schedule(kind, warmup, total, 0)
    assert [first(s) for s in range(30)] == [run(s) for s in range(30)]  # the first phase: the run's own
    later = phase_schedule(kind, warmup, total, 30)
    # a later phase re-warms its fresh optimizer, then is the run's schedule from its first step on
    assert later(0) == pytest.approx(run(30) / (warmup + 1))
    assert [later(s) for s in range(warmup, 30)] == pytest.approx([run(30 + s) for s in range(warmup, 30)])
    if kind != "constant_with_warmup":  # decays to the end of the run, not of each phase
        assert later(29) < first(29) and later(29) == pytest.approx(run(59))


def test_phases_start_where_the_last_one_ended():
    demo = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    cfg = load_config(demo, ["train.mode=on_policy", "train.max_steps=61",
                             "train.on_policy={rollouts: offline, rounds: 3, offline_steps: 30}"])
    plan = phases(cfg)
    assert [(p.name, p.first_step, p.steps) for p in plan] == [
        ("offline", 0, 30), ("round-1", 30, 11), ("round-2", 41, 10), ("round-3", 51, 10)]
