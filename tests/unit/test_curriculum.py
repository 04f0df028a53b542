import pytest
import torch

from llmdistill.train.curriculum import PacedSampler, closed_loop_weights, competence, pool_size


@pytest.mark.parametrize("pacing", ["linear", "root"])
def test_competence_starts_at_start_reaches_one_and_grows(pacing):
    values = [competence(pacing, t / 10, 0.2, 0.8) for t in range(11)]
    assert values[0] == pytest.approx(0.2)
    assert values[8] == pytest.approx(1.0) and values[10] == 1.0
    assert all(b >= a for a, b in zip(values, values[1:]))
    if pacing == "root":  # root admits data sooner than linear
        assert competence("root", 0.3, 0.2, 0.8) > competence("linear", 0.3, 0.2, 0.8)


def test_step_pacing_admits_whole_levels():
    levels = [1] * 4 + [2] * 4 + [3] * 4
    assert pool_size("step", 0.0, levels, 0.2, 0.9) == 4
    assert pool_size("step", 0.35, levels, 0.2, 0.9) == 8
    assert pool_size("step", 0.95, levels, 0.2, 0.9) == 12


def test_sampler_draws_each_step_from_the_admitted_pool_deterministically():
    levels = [1] * 10 + [2] * 10 + [3] * 10
    sampler = PacedSampler(levels, "linear", 0.2, 0.8, total_steps=10, batch=4, seed=0)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 40
    for step, size in enumerate(sampler.pools):
        assert all(i < size for i in drawn[step * 4 : step * 4 + 4])
    assert sampler.pools[0] == 6 and sampler.pools[-1] == 30
    assert drawn == list(PacedSampler(levels, "linear", 0.2, 0.8, 10, 4, 0))


def test_closed_loop_weights_drop_the_best_matched_and_repeat_the_worst():
    div = {0: 0.1, 1: 0.5, 2: 0.9, 3: 0.3, 4: 2.0}
    w = closed_loop_weights(div, n=7, drop_fraction=0.2, repeat_fraction=0.2)
    assert w.tolist() == [0.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0]  # 5, 6 unmeasured: weight 1


def test_weights_steer_the_draws():
    sampler = PacedSampler([1] * 6, "linear", 1.0, 1.0, total_steps=5, batch=8, seed=1)
    sampler.weights = torch.tensor([0, 0, 1, 1, 0, 0], dtype=torch.float64)
    assert set(sampler) <= {2, 3}
