"""The filter table: every step of the `config.FilterStep` union, how the stage runs it and what implements it.

Kinds (filter/stage.py runs each kind its own way; consecutive row steps share one pass):
    row      `impl(step)` is a predicate `sample -> reason | None` (filters.py); one with a `report()` method
             (decontaminate) also writes decontamination.json
    scorer   `impl(step)` is a `scorers.Scorer`: batched scores, `min`/`max` thresholds, a resumable cache
    corpus   `impl(rows, step, stats, map_parts)` maps each part of the input (`map_parts`: the stage's executor,
             local or Ray), then decides on the whole corpus at once (corpus.py: near / semantic dedup)
    history  `impl(step, owner)` checks the persistent index, then adds the kept rows to it (corpus.py)

Implementations are named by import path and imported when a step runs, so a config without the heavy
steps (embeddings, model scorers) imports none of their code. Adding a row step: its config class in
config (and in the `FilterStep` union), its function in filters.py, one row here
(tests/unit/test_filter_table.py fails when the union and this table disagree).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from llmdistill import config as C

KINDS = ("row", "scorer", "corpus", "history")


@dataclass(frozen=True)
class Entry:
    kind: str  # one of KINDS
    impl: str  # "module:attribute"

    def load(self) -> Callable:
        module, _, attr = self.impl.partition(":")
        return getattr(importlib.import_module(module), attr)


_FILTERS, _SCORERS, _CORPUS = "llmdistill.filter.filters", "llmdistill.filter.scorers", "llmdistill.filter.corpus"

TABLE: dict[type, Entry] = {
    C.FailedStep: Entry("row", f"{_FILTERS}:failed"),
    C.EmptyStep: Entry("row", f"{_FILTERS}:empty"),
    C.TruncatedStep: Entry("row", f"{_FILTERS}:truncated"),
    C.LengthStep: Entry("row", f"{_FILTERS}:length"),
    C.RepetitionStep: Entry("row", f"{_FILTERS}:repetition"),
    C.ExactDedupStep: Entry("row", f"{_FILTERS}:exact_dedup"),
    C.RefusalStep: Entry("row", f"{_FILTERS}:refusal"),
    C.StructuredStep: Entry("row", f"{_FILTERS}:structured"),
    C.CharsetStep: Entry("row", f"{_FILTERS}:charset"),
    C.CorrectStep: Entry("row", f"{_FILTERS}:correct"),
    C.DecontaminateStep: Entry("row", "llmdistill.filter.decontam:Decontaminator"),
    C.NearDedupStep: Entry("corpus", f"{_CORPUS}:run_near_dedup"),
    C.SemanticDedupStep: Entry("corpus", f"{_CORPUS}:run_semantic_dedup"),
    C.HistoryDedupStep: Entry("history", f"{_CORPUS}:HistoryStep"),
    C.JudgeStep: Entry("scorer", f"{_SCORERS}:JudgeScorer"),
    C.RewardModelStep: Entry("scorer", f"{_SCORERS}:RewardScorer"),
    C.PerplexityStep: Entry("scorer", f"{_SCORERS}:PerplexityScorer"),
    C.ConfidenceStep: Entry("scorer", f"{_SCORERS}:ConfidenceScorer"),
}


def entry(step) -> Entry:
    """The table row of a configured step (a member of `config.FilterStep`)."""
    return TABLE[type(step)]


def kind(step) -> str:
    return entry(step).kind


def implementation(step) -> Callable:
    """What runs `step` (imported now): called as its kind says (see the module docstring)."""
    return entry(step).load()
