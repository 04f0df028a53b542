"""The filter stage's per-part maps and global decides (filter/parts.py, stage.row_map/row_decide): however the
input is cut into parts, the decisions are those of one loop that runs the row checks on each row in order
(written here from the definition: the first check that returns a reason removes the row, exact_dedup
remembering the texts of the rows that reached it). Real tweets with exact copies, rows for two exact_dedup
steps of different scope, short rows and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from llmdistill import config as C
from llmdistill import records, store
from llmdistill.filter import filters, parts, stage, steps
from tests.unit.test_dedup import SAME_TEXT, tweets


def sample(i: int, text: str, prompt: str) -> records.Sample:
    return records.Sample(id=f"{i:05d}", prompt_id=f"p{i}", messages=[{"role": "user", "content": prompt}],
                          completion=text, source="test", teacher="t", gen={}, finish_reason="stop", level=1 + i % 3,
                          completion_token_ids=np.array([1], np.int32), topk_ids=np.array([[1]], np.int32),
                          topk_logprobs=np.array([[-0.1]], np.float16))


def corpus() -> list[records.Sample]:
    rng = np.random.default_rng(0)
    tw = tweets(8)[:80]
    out = [sample(i, t, f"question {i % 7}") for i, t in enumerate(tw)]
    edits = list(SAME_TEXT.values())
    for k in range(40):  # copies: same prompt (a duplicate for both scopes) or another (for completion scope only)
        src = int(rng.integers(0, len(tw)))
        prompt = f"question {src % 7}" if k % 2 else "another question"
        out.append(sample(100 + k, edits[k % len(edits)](tw[src]), prompt))
    out += [sample(200, "ok", "q"), sample(201, "I'm sorry, but I can't help with that.", "q"),
            sample(202, "ok", "q"), sample(203, "I'm sorry, but I can't help with that.", "q")]
    return [out[i] for i in rng.permutation(len(out))]


def reference(samples: list[records.Sample], row_steps: list) -> list[str | None]:
    """The definition: each row in order through the checks; the first reason removes it."""
    checks = [steps.implementation(s)(s) for s in row_steps]
    out = []
    for s in samples:
        out.append(next((r for r in (c(s) for c in checks) if r is not None), None))
    return out


ROW_STEPS = [
    [C.LengthStep(name="length", min_words=3), C.RefusalStep(name="refusal"),
     C.ExactDedupStep(name="exact_dedup")],
    [C.ExactDedupStep(name="exact_dedup", scope="prompt_completion"), C.LengthStep(name="length", min_words=3),
     C.ExactDedupStep(name="exact_dedup", scope="completion"), C.RefusalStep(name="refusal")],
]


@pytest.mark.parametrize("part_rows", [1, 9, 1000])
@pytest.mark.parametrize("which", range(len(ROW_STEPS)))
def test_row_decisions_equal_one_loop_over_the_rows_for_any_parts(tmp_path, part_rows, which):
    samples = corpus()
    writer = store.ShardWriter(tmp_path / "generate")
    for i in range(0, len(samples), 5):
        writer.write(samples[i: i + 5])
    row_steps = ROW_STEPS[which]
    rows = stage.Rows(tmp_path / "generate", read_rows=3)
    cut = parts.split(tmp_path / "generate", part_rows)
    assert [p.start for p in cut] == sorted(p.start for p in cut) and sum(p.rows for p in cut) == len(samples)
    alive = rows.alive_indices()
    results = [stage.row_map(p, alive[(alive >= p.start) & (alive < p.start + p.rows)], 3, row_steps) for p in cut]
    stage.row_decide(rows, row_steps, results, tmp_path, {})
    expected = reference(samples, row_steps)
    assert rows.reasons == expected
    assert {"duplicate", "too_short", "refusal"} <= set(expected)
    dup = filters.exact_dedup(C.ExactDedupStep(name="exact_dedup"))
    dup(samples[0])
    assert dup(samples[0]) == stage.DUPLICATE  # the stage's reason is the step's


def test_a_committed_part_is_reused_only_for_the_same_rows(tmp_path):
    samples = corpus()[:12]
    store.ShardWriter(tmp_path / "generate").write(samples)
    part, = parts.split(tmp_path / "generate", 100)
    alive = np.arange(12)
    job = parts.Job("rows part 0/1", stage.row_map, part, alive, 5, (ROW_STEPS[0],), tmp_path / "w" / "p.npz",
                    parts.job_key("fp", ["rows"], part, alive))
    assert parts.run_job(job)["resumed"] is False and parts.run_job(job)["resumed"] is True
    fewer = parts.job_key("fp", ["rows"], part, alive[1:])
    assert fewer != job.key and not parts.done(parts.Job(**{**job.__dict__, "key": fewer}))
    assert parts.load(job)["idx"].tolist() == list(range(12))
