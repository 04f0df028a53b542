"""The filter table (filter/steps.py) and the `FilterStep` union name the same steps, and every row resolves."""

import subprocess
import sys
import typing

from conftest import REPO
from llmdistill import config as C
from llmdistill.filter import scorers, stage, steps


def union_members() -> set[type]:
    union, *_ = typing.get_args(C.FilterStep)  # Annotated[A | B | ..., Field(discriminator="name")]
    return set(typing.get_args(union))


def test_every_step_of_the_union_is_in_the_table_and_nothing_else():
    members = union_members()
    assert len(members) > 10
    assert members - set(steps.TABLE) == set(), "in the FilterStep union, missing from filter/steps.py TABLE"
    assert set(steps.TABLE) - members == set(), "in filter/steps.py TABLE, missing from the FilterStep union"


def test_every_row_has_a_kind_the_stage_runs_and_an_implementation_that_imports():
    assert set(stage.PASSES) == set(steps.KINDS)
    for cls, entry in steps.TABLE.items():
        assert entry.kind in steps.KINDS, cls
        impl = entry.load()
        assert callable(impl), (cls, entry.impl)
        if entry.kind == "scorer":
            assert issubclass(impl, scorers.Scorer), cls


def test_the_steps_dispatch_by_their_config_class():
    configured = [C.FailedStep(name="failed"), C.EmptyStep(name="empty"), C.ConfidenceStep(name="confidence"),
                  C.LengthStep(name="length"), C.NearDedupStep(name="near_dedup"),
                  C.HistoryDedupStep(name="history_dedup", path="h"), C.ExactDedupStep(name="exact_dedup")]
    assert [(kind, [i for i, _ in group]) for kind, group in stage.plan_passes(configured)] == [
        ("row", [0, 1]), ("scorer", [2]), ("row", [3]), ("corpus", [4]), ("history", [5]), ("row", [6])]
    assert steps.implementation(configured[2]) is scorers.ConfidenceScorer


def test_importing_every_implementation_loads_no_torch():
    """Models load when a step runs: the stage and its table stay light (`llmdistill filter --help`)."""
    code = ("import sys\nfrom llmdistill.filter import stage, steps\n"
            "for cls, e in steps.TABLE.items():\n"
            "    e.load()\n"
            "heavy = [m for m in ('torch', 'transformers', 'datasets', 'sentence_transformers') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
