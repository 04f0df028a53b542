"""The on-policy mix of train.on_policy.rollouts: vllm, with a deterministic stand-in for the engine (the real
engine: tests/integration/test_rollouts_vllm.py): lmbda of the batches are the student's, drawn reproducibly
from the seed, the batch's rows and the weights' version; held-out rows keep the teacher's completions."""

from __future__ import annotations

from llmdistill.train.data import Collator
from llmdistill.train.rollouts import OnPolicyCollator


class Echo:
    """Samples [7] * 3 for every prompt; counts like Rollouts."""

    def __init__(self):
        self.version = 0
        self.stats = {"batches_sampled": 0, "batches_teacher": 0}
        self.asked = []

    def sample(self, prompts, rows):
        self.asked.append(rows)
        return [[7, 7, 7] for _ in prompts]


def rows(start, n=4):
    return [{"row": i, "input_ids": [1, 2, 3, 9, 9], "prompt_len": 3} for i in range(start, start + n)]


def test_lmbda_share_reproducible_and_held_out_rows_untouched():
    engine = Echo()
    collate = OnPolicyCollator(Collator(0, with_teacher=False), engine, 0.3, seed=5, train_rows=set(range(800)))
    batches = [rows(i) for i in range(0, 800, 4)]
    decisions = [collate.on_policy([r["row"] for r in b]) for b in batches]
    assert abs(sum(decisions) / len(decisions) - 0.3) < 0.08
    assert decisions == [collate.on_policy([r["row"] for r in b]) for b in batches]  # the same draws again
    engine.version = 1  # new weights: new draws
    assert decisions != [collate.on_policy([r["row"] for r in b]) for b in batches]
    engine.version = 0
    sampled = next(b for b, d in zip(batches, decisions) if d)
    batch = collate(sampled)
    assert batch["input_ids"][0].tolist() == [1, 2, 3, 7, 7, 7] and batch["labels"][0].tolist() == [-100] * 3 + [7] * 3
    kept = next(b for b, d in zip(batches, decisions) if not d)
    assert collate(kept)["input_ids"][0].tolist() == [1, 2, 3, 9, 9]
    held_out = rows(900)
    always = OnPolicyCollator(Collator(0, with_teacher=False), engine, 1.0, seed=5, train_rows=set(range(800)))
    assert always(held_out)["input_ids"][0].tolist() == [1, 2, 3, 9, 9]  # held-out: the teacher's text
    assert always(rows(0))["input_ids"][0].tolist() == [1, 2, 3, 7, 7, 7]
