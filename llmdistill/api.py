"""The public Python API: what the `llmdistill` command does, as functions for notebooks and orchestration code.
Every name here is exported from the package (`llmdistill.run`, `llmdistill.load_dataset`, ...; the list is
`llmdistill.__all__`); docs/python-api.md has the guide and a tested example. The CLI (cli.py) is a thin layer
over these functions: it turns their exceptions into its one-line messages and exit codes.

A `config` argument is a YAML path, a `Config` already loaded, or None for the embedded demo
(configs/demo.yaml); `overrides` are `key.sub=value` strings, as on the command line.

Errors are raised, never printed (the classes are exported too):

    ConfigError     the config or an override is wrong; `.errors` holds one line per problem
    LockedError     another llmdistill process holds the run directory
    BudgetExceeded  a spending limit was reached (teacher.api.budget_usd); the finished work is kept
    StorageError    the file system refused a read or a write (disk full, read-only, permission denied)
    UserError       the base class of all four, and any other bad input: a file, a model, a dataset
    OSError         the run directory itself cannot be created or written

Logging: progress goes to the `llmdistill` logger (INFO); this module adds no handler and changes no level.

The stage functions are `run_generate`, `run_filter`, ... (and `run_retrain`) rather than `generate`, `filter`,
...: the stages are subpackages of the same names (`llmdistill.filter`), and importing one (which running it
does) would replace a package attribute of that name with the subpackage.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmdistill.config import BertDistillConfig, Config, override_config
from llmdistill.config import load_bert_config as _load_bert_config
from llmdistill.config import load_config as _load_config
from llmdistill.errors import StorageError, UserError
from llmdistill.runner import STAGES, Ranks

if TYPE_CHECKING:
    import datasets

log = logging.getLogger("llmdistill")

ConfigSource = str | os.PathLike | Config | None
DATASET_STAGES = ("generate", "annotate", "filter")  # the stages whose output is a dataset of sample rows


@dataclass(frozen=True)
class RunResult:
    """What `run` (or a stage function) did.

    run_dir: the run directory, `output_dir/name`.
    stages: stage name -> 'ran', 'skipped' (done already with this config) or 'kept' (its failed samples could
        not be requested again now; its completed output was kept), in the order they ran; a sharded generate
        says 'ran shard i/n'. A stage the config disables is absent.
    report: the HTML report written after eval (report/index.html), or None when eval was not asked for.
    """

    run_dir: Path
    stages: dict[str, str]
    report: Path | None = None


@dataclass(frozen=True)
class BertResult:
    """What `distill_bert` did: the run directory and its metrics (metrics.json: per phase, and test accuracy
    and macro-F1 of the teacher, the student and its ONNX exports)."""

    run_dir: Path
    metrics: dict[str, Any]


def _items(value: str | Iterable[str] | None) -> list[str]:
    """A list of strings from None, one string, or an iterable of strings."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def load_config(path: ConfigSource = None, overrides: str | Sequence[str] | None = None) -> Config:
    """Read a YAML config (None: the embedded demo, configs/demo.yaml), apply `key.sub=value` overrides and
    validate it; no model is loaded. Relative paths in the file resolve against its directory, relative paths
    in overrides against the current directory. `path` may also be a Config already loaded: the overrides then
    make a new one (the given one is left as it is). Raises ConfigError listing every problem at once."""
    if isinstance(path, BertDistillConfig):
        raise TypeError("a BERT distillation config runs with llmdistill.distill_bert, not with the LLM pipeline")
    if isinstance(path, Config):
        return override_config(path, _items(overrides)) if overrides else path
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"config must be a path, a Config or None (the demo), got {type(path).__name__}")
    return _load_config(path, _items(overrides))


def _stages(cfg: Config, stages: Sequence[str], force: Iterable[str] = (), standalone: bool = False,
            **kwargs: Any) -> RunResult:
    """Run `stages` through the pipeline (`run_stages`), then write the report if eval was among them."""
    from llmdistill.pipeline import run_stages

    outcome = run_stages(cfg, stages, set(force), standalone=standalone, **kwargs)
    log.info("run %s: %s", cfg.run_dir, ", ".join(f"{k} {v}" for k, v in outcome.items()))
    report = None
    nothing_ran = all(v == "skipped" for v in outcome.values())
    if "eval" in stages:
        report = _report(cfg.run_dir, nothing_ran=nothing_ran)
    if kwargs.get("shard") is None:  # a shard process writes its part of generate only
        _cards(cfg.run_dir, nothing_ran=nothing_ran)
    return RunResult(cfg.run_dir, outcome, report)


def _report(run_dir: Path, nothing_ran: bool) -> Path:
    """Write the run's report. When nothing ran and the run directory is read-only, a report already there is
    kept as it is (a finished run on read-only storage reruns to a no-op) instead of failing."""
    from llmdistill import store
    from llmdistill.report import REPORT_DIR
    from llmdistill.report import write_report as write

    try:
        return write(run_dir)
    except StorageError as e:
        existing = run_dir / REPORT_DIR / "index.html"
        if not (nothing_ran and store.refused_as_read_only(e) and existing.is_file()):
            raise
        log.warning("report not rewritten (%s); nothing ran, so %s stands", e, existing)
        return existing


def _cards(run_dir: Path, nothing_ran: bool = False) -> None:
    """(Re)write the model and dataset cards of the run's completed outputs (llmdistill/cards). When nothing ran
    and the run directory is read-only, the cards already there stand."""
    from llmdistill import cards, store

    if not Ranks.from_environment().main:  # the other ranks of a multi-process train write no files
        return
    try:
        for path in cards.write_run_cards(run_dir):
            log.info("card: %s", path)
    except StorageError as e:
        if not (nothing_ran and store.refused_as_read_only(e)):
            raise
        log.warning("cards not rewritten (%s); nothing ran, so they stand", e)


def run(config: ConfigSource = None, overrides: str | Sequence[str] | None = None,
        stages: str | Sequence[str] | None = None, force: str | Iterable[str] = ()) -> RunResult:
    """Run the pipeline as `llmdistill run` does: every stage (or those in `stages`, in pipeline order),
    skipping each one already done with this config, then write the HTML report when eval is among them.

    force: stages to rerun even if done (each reruns the stages after it too), as `--force STAGE`.
    Raises UserError (a bad stage name, an upstream stage that is not done) and the errors in the module doc.
    """
    cfg = load_config(config, overrides)
    force = _items(force)
    bad = [s for s in force if s not in STAGES]
    if bad:
        raise UserError(f"--force takes a stage name ({', '.join(STAGES)}), got {', '.join(bad)}")
    wanted = STAGES if stages is None else _items(stages)
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise UserError(f"stages takes stage names ({', '.join(STAGES)}), got {', '.join(unknown)}")
    return _stages(cfg, tuple(s for s in STAGES if s in wanted), force)


def _one(stage: str, config: ConfigSource, overrides: str | Sequence[str] | None, force: bool,
         **kwargs: Any) -> RunResult:
    """One stage as its command runs it: its upstream must be done with this config already."""
    return _stages(load_config(config, overrides), (stage,), [stage] if force else [], standalone=True, **kwargs)


def run_generate(config: ConfigSource = None, overrides: str | Sequence[str] | None = None, *,
                 force: bool = False, shard: tuple[int, int] | None = None) -> RunResult:
    """The generate stage (`llmdistill generate`): teacher completions with top-k log-probs, in curriculum order.

    shard (i, n): generate only shard i (0-based) of n into the shared run directory (several processes or
    machines), then finish with `merge_shards`. A Ray cluster runs every shard when the config says
    `generate.executor: ray` (an override: `generate.executor=ray`)."""
    if shard is not None and not (isinstance(shard, tuple) and len(shard) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) for x in shard) and 0 <= shard[0] < shard[1]):
        raise UserError(f"shard takes (i, n) with 0 <= i < n, got {shard!r}")
    return _one("generate", config, overrides, force, shard=shard)


def merge_shards(config: ConfigSource = None, overrides: str | Sequence[str] | None = None) -> RunResult:
    """Finish a sharded generate (`llmdistill merge`): check that every planned sample is there exactly once and
    write the manifest; nothing is generated."""
    return _one("generate", config, overrides, False, merge_only=True)


def run_annotate(config: ConfigSource = None, overrides: str | Sequence[str] | None = None, *,
                 force: bool = False) -> RunResult:
    """The annotate stage (`llmdistill annotate`, when `annotate.enabled`): a local teacher re-scores the
    generated text (top-k log-probs by teacher forcing)."""
    return _one("annotate", config, overrides, force)


def run_filter(config: ConfigSource = None, overrides: str | Sequence[str] | None = None, *,
               force: bool = False) -> RunResult:
    """The filter stage (`llmdistill filter`): dedup, heuristic filters, scorers and decontamination; removed
    rows keep their reason (`load_dataset(run_dir, "filter", removed=True)`)."""
    return _one("filter", config, overrides, force)


def run_train(config: ConfigSource = None, overrides: str | Sequence[str] | None = None, *,
              force: bool = False) -> RunResult:
    """The train stage (`llmdistill train`): the student (and the SFT-only baseline, if configured) on the
    filtered samples, written to `run_dir/train/student/`."""
    return _one("train", config, overrides, force)


def run_eval(config: ConfigSource = None, overrides: str | Sequence[str] | None = None, *,
             force: bool = False) -> RunResult:
    """The eval stage (`llmdistill eval`): the students against the teacher on held-out prompts and tasks;
    then the HTML report. The numbers: `load_metrics(run_dir)`."""
    return _one("eval", config, overrides, force)


def status(config: ConfigSource = None, overrides: str | Sequence[str] | None = None) -> dict[str, str]:
    """Each active stage's state for this config, as `llmdistill validate` shows it: 'done' (or 'done, N to
    retry'), 'stale' (finished with another config), 'partial' (started, not finished) or 'missing'."""
    from llmdistill.pipeline import stage_status

    return stage_status(load_config(config, overrides))


def plan_memory(config: ConfigSource = None, overrides: str | Sequence[str] | None = None, *,
                sharding: str = "none", processes: int = 1, device_memory: int | str | None = None) -> dict:
    """Per-device training memory estimated from the config alone, loading no weights (`llmdistill plan`).

    sharding: none, ddp, fsdp or zero3, over `processes` devices. device_memory: bytes, or a size such as
    "80GiB" or "40GB"; then `fits` says whether the peak fits, and `advice` what to change if not."""
    from llmdistill.plan import parse_size, plan

    cfg = load_config(config, overrides)
    memory = parse_size(device_memory) if isinstance(device_memory, str) else device_memory
    return plan(cfg, sharding, processes, memory)


def _completed(run_dir: str | os.PathLike, stage: str) -> Path:
    """`run_dir/stage`, which must hold the stage's completed output; a UserError says what is missing."""
    from llmdistill import store

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    out = run_dir / stage
    if not out.is_dir():
        raise UserError(f"{out} does not exist: the {stage} stage has not run in this run directory")
    if store.read_success(out) is None:
        raise UserError(f"{out} is not complete (no {store.SUCCESS}): the {stage} stage has not finished; run it "
                        "again to complete it")
    return out


def load_dataset(run_dir: str | os.PathLike, stage: str = "filter", *, removed: bool = False,
                 columns: Sequence[str] | None = None) -> datasets.Dataset:
    """The rows a completed stage kept, from its Parquet shards, as a `datasets.Dataset` (in memory).

    stage: generate, annotate or filter. removed: the rows the filter removed instead, each with its `reason`.
    columns: only these columns (the teacher signal, `topk_ids` and `topk_logprobs`, is the bulk of a row).
    Raises UserError for another stage, or one that is missing or not complete."""
    from llmdistill import store

    if stage not in DATASET_STAGES:
        what = f"the {stage} stage writes no dataset" if stage in STAGES else f"no stage is named {stage!r}"
        raise UserError(f"{what}: load_dataset reads {', '.join(DATASET_STAGES)}")
    if removed and stage != "filter":
        raise UserError(f"removed=True reads the rows the filter stage removed: give stage='filter', not {stage!r}")
    out = _completed(run_dir, stage)
    return store.load_dataset(out / "removed" if removed else out, list(columns) if columns is not None else None)


def load_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The eval stage's metrics (eval/metrics.json): `["models"][name]` for the teacher, the student and the
    SFT-only baseline, each with its KL and top-1 agreement to the teacher, size, latency and `tasks` scores.
    Raises UserError when eval has not completed."""
    from llmdistill import store

    return store.read_json(_completed(run_dir, "eval") / "metrics.json")


def write_report(run_dir: str | os.PathLike) -> Path:
    """(Re)write the run's HTML report, run_dir/report/index.html (and report/metrics.json); returns its path.
    `run` and `run_eval` write it already."""
    from llmdistill.report import write_report as write

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"not a run directory: {run_dir}")
    return write(run_dir)


@dataclass(frozen=True)
class RetrainResult:
    """What `run_retrain` did (the CLI prints the same events as JSON lines).

    decision: 'promoted', 'not promoted' (a gate failed) or 'nothing to do' (no new prompts).
    exit_code: the CLI's for that decision: 0, 10 or 11.
    reason: why, in words (the gate that failed, ...); run_dir and report: the retrain run's directory and
        HTML report (None when there was nothing to do).
    events: every event of the run, in order (start/resume, one per stage, gates, promote, result).
    """

    decision: str
    exit_code: int
    reason: str | None
    run_dir: Path | None
    report: Path | None
    events: list[dict]


def run_retrain(config: ConfigSource = None, overrides: str | Sequence[str] | None = None) -> RetrainResult:
    """One scheduled, gated retraining run, as `llmdistill retrain` runs it (docs/retrain.md): generate only the
    prompts never generated before, train from the promoted student, promote if the gates pass.

    Raises LockedError (another retrain holds the state directory), UserError (bad input), and RuntimeError
    for an unexpected failure (its traceback is logged; the next retrain resumes the same run)."""
    from llmdistill.errors import LockedError
    from llmdistill.retrain import run as R

    cfg = load_config(config, overrides)
    with R.captured_events() as events:
        code = R.retrain(cfg)
    result = next((e for e in reversed(events) if e["event"] == "result"), {})
    error = result.get("error") or "retrain failed"
    if code == R.EXIT_LOCKED:
        raise LockedError(error)
    if code == R.EXIT_BAD_INPUT:
        raise UserError(error)
    if code == R.EXIT_FAILED:
        raise RuntimeError(error)
    paths = {k: Path(result[k]) if result.get(k) else None for k in ("run_dir", "report")}
    return RetrainResult(result["decision"], code, result.get("reason"), paths["run_dir"], paths["report"], events)


def rollback(config: ConfigSource = None, overrides: str | Sequence[str] | None = None) -> dict[str, Any]:
    """Point the promoted student back at the one promoted before it, as `llmdistill rollback` does (the
    history is kept). Returns the restored entry (`student`, `promoted_at`, ...). Raises LockedError and
    UserError (nothing to roll back to)."""
    from llmdistill.retrain.run import rollback as _rollback

    return _rollback(load_config(config, overrides))


def load_bert_config(path: str | os.PathLike, overrides: str | Sequence[str] | None = None) -> BertDistillConfig:
    """Read and validate a BERT distillation config (configs/bert-*.yaml) with overrides; no model is loaded.
    Raises ConfigError listing every problem at once."""
    return _load_bert_config(path, _items(overrides))


def distill_bert(config: str | os.PathLike | BertDistillConfig, overrides: str | Sequence[str] | None = None, *,
                 force: bool = False) -> BertResult:
    """BERT-style distillation as `llmdistill distill-bert` runs it: fine-tune or load the teacher, distil the
    student, evaluate, export ONNX and int8. A run already done with this config returns its stored metrics
    (`force`: run it again)."""
    if isinstance(config, Config):
        raise TypeError("an LLM pipeline config runs with llmdistill.run, not with distill_bert")
    if isinstance(config, BertDistillConfig):
        cfg = override_config(config, _items(overrides)) if overrides else config
    else:
        cfg = load_bert_config(config, overrides)
    from llmdistill.bert.stage import run as run_bert

    result = BertResult(cfg.run_dir, run_bert(cfg, force=force))
    _cards(cfg.run_dir)
    return result
