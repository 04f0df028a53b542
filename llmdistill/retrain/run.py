"""`llmdistill retrain CONFIG`: one scheduled, incremental, gated retraining run.

1. Lock the state directory (a second schedule that overlaps gets exit code 3 and changes nothing).
2. New prompts: those of generate.prompts whose content hash was never handed to generation before
   (capped by generate.max_prompts, spread over the curriculum); recorded as seen before generation.
3. Run generate -> filter -> train -> eval in a new run directory <output_dir>/<name>/retrain-<UTC time>,
   with the filter also removing samples kept by earlier runs (history_dedup), the student warm-started
   from the promoted one, and the promoted one scored beside it (eval.compare_to).
4. The gates decide; promotion replaces the pointer atomically and keeps the history (see state.py).
5. One JSON line per stage on stdout; run_dir/retrain.json and the HTML report record the decision.
A run that fails is resumed (same directory, same prompts) by the next retrain.

Exit codes: 0 promoted, 10 not promoted (a gate failed), 11 nothing to do (no new prompts),
2 bad input, 3 locked by another retrain, 1 unexpected failure.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import sys
import time
from pathlib import Path

from llmdistill import cards, store
from llmdistill.config import Config, validate_dict
from llmdistill.errors import LockedError, UserError
from llmdistill.prompts import Prompt, curriculum_order, load_sources
from llmdistill.retrain import gates as G
from llmdistill.retrain import state as S

log = logging.getLogger("llmdistill")

EXIT_PROMOTED = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_LOCKED = 3
EXIT_NOT_PROMOTED = 10
EXIT_NOTHING_NEW = 11
SUMMARY_METRICS = ("top1_agreement", "topk_overlap", "kl_to_teacher", "jsd_to_teacher", "perplexity", "ece")


def state_dir(cfg: Config) -> Path:
    return Path(cfg.retrain.state_dir) if cfg.retrain.state_dir is not None else cfg.run_dir / "retrain-state"


_SINKS: list[list[dict]] = []  # event lists of the `captured_events` blocks now open


def emit(event: str, **fields) -> None:
    """One JSON object per line on stdout, for log collectors (inside `captured_events`: to its list instead)."""
    record = {"event": event, "time": S.now(), **fields}
    if not _SINKS:
        print(json.dumps(record, default=str), file=sys.stdout, flush=True)
    for sink in _SINKS:
        sink.append(record)


@contextlib.contextmanager
def captured_events():
    """The events `emit` would print, collected in a list instead (the Python API's `run_retrain`)."""
    events: list[dict] = []
    _SINKS.append(events)
    try:
        yield events
    finally:
        _SINKS.remove(events)


def new_prompts(cfg: Config, seen: set[str]) -> list[Prompt]:
    """The configured prompts never generated before, in curriculum order, capped by generate.max_prompts."""
    g = cfg.generate
    prompts = curriculum_order(load_sources(g).prompts, g.order)  # every source kind: files, datasets, templates
    return curriculum_order([p for p in prompts if p.id not in seen], g.order, g.max_prompts)


def write_prompts(path: Path, prompts: list[Prompt]) -> None:
    lines = [json.dumps({"messages": p.messages, "level": p.level, "source": p.source, "answer": p.answer,
                         "tags": p.tags}, ensure_ascii=False) for p in prompts]
    store.atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def run_config(cfg: Config, run_dir: Path, prompts_file: Path, promoted: Path | None, history: Path) -> Config:
    """The config of one retrain run: the user's, pointed at the new prompts, the promoted student and history."""
    data = cfg.model_dump(mode="json", exclude_unset=True)  # defaults stay defaults (some validators look)
    data["name"] = run_dir.name
    data["output_dir"] = str(run_dir.parent)
    data["generate"]["prompts"] = [str(prompts_file)]
    data["generate"]["sources"] = []  # the new prompts of every source are already in prompts_file
    data["generate"]["max_prompts"] = None
    if promoted is not None and cfg.retrain.warm_start:
        data["train"]["student"] = {"model": str(promoted), "teacher_layers": None, "prune": None}
    data["eval"]["compare_to"] = str(promoted) if promoted is not None else None
    steps = [step.model_dump(mode="json") for step in cfg.filter.steps]
    if not any(step["name"] == "history_dedup" for step in steps):
        steps.append({"name": "history_dedup", "path": str(history)})
    data.setdefault("filter", {})["steps"] = steps
    return validate_dict(data, base_dir=run_dir, source=f"retrain run {run_dir.name}")


def retrain(cfg: Config) -> int:
    """Run one retrain; returns the exit code (see the module docstring). Never raises."""
    from llmdistill.runner import RunLock

    sdir = state_dir(cfg)
    try:
        with RunLock(sdir):
            return _retrain_locked(cfg, sdir)
    except LockedError as e:
        emit("result", decision="failed", exit_code=EXIT_LOCKED, error=str(e))
        return EXIT_LOCKED
    except UserError as e:
        emit("result", decision="failed", exit_code=EXIT_BAD_INPUT, error=str(e))
        return EXIT_BAD_INPUT
    except Exception as e:  # a scheduler needs the exit code; the traceback goes to the log
        log.exception("retrain failed")
        emit("result", decision="failed", exit_code=EXIT_FAILED, error=f"{type(e).__name__}: {e}")
        return EXIT_FAILED


def _retrain_locked(cfg: Config, sdir: Path) -> int:
    from llmdistill.pipeline import active_stages, run_stages
    from llmdistill.report import write_report

    promoted = S.current_student(sdir)
    if promoted is not None and not promoted.is_dir():
        raise UserError(f"the promoted student {promoted} is missing; restore it or run `llmdistill rollback`")
    pending = store.read_json(sdir / S.PENDING) if (sdir / S.PENDING).exists() else None
    if pending is not None and Path(pending["run_dir"]).is_dir():
        run_dir = Path(pending["run_dir"])
        n_new = pending["new_prompts"]
        emit("resume", run_dir=str(run_dir), new_prompts=n_new)
    else:
        fresh = new_prompts(cfg, S.read_lines(sdir / S.SEEN))
        if len(fresh) < cfg.retrain.min_new_prompts:
            emit("result", decision="nothing to do", exit_code=EXIT_NOTHING_NEW, new_prompts=len(fresh),
                 reason=f"{len(fresh)} new prompts (retrain.min_new_prompts {cfg.retrain.min_new_prompts})")
            return EXIT_NOTHING_NEW
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        run_dir = cfg.run_dir / f"retrain-{stamp}"
        run_dir.mkdir(parents=True)
        # one cache for every retrain run: the teacher's eval references are computed once
        (sdir / "cache").mkdir(parents=True, exist_ok=True)
        (run_dir / "cache").symlink_to(sdir / "cache", target_is_directory=True)
        write_prompts(run_dir / "prompts.jsonl", fresh)
        n_new = len(fresh)
        # recorded before generation: a failed run is resumed from pending.json, never generated again
        store.atomic_write_json(sdir / S.PENDING, {"run_dir": str(run_dir), "new_prompts": n_new,
                                                   "started_at": S.now()})
        S.add_lines(sdir / S.SEEN, [p.id for p in fresh])
        emit("start", run_dir=str(run_dir), new_prompts=n_new, promoted=str(promoted) if promoted else None)
    rcfg = run_config(cfg, run_dir, run_dir / "prompts.jsonl", promoted, sdir / S.HISTORY)

    for stage in active_stages(rcfg):
        started = time.monotonic()
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout carries only our JSON lines (Trainer prints)
                status = run_stages(rcfg, (stage,))[stage]
        except BaseException as e:
            emit("stage", stage=stage, status="failed", seconds=round(time.monotonic() - started, 1),
                 error=f"{type(e).__name__}: {e}")
            raise
        emit("stage", stage=stage, status=status, seconds=round(time.monotonic() - started, 1))

    started = time.monotonic()
    models = store.read_json(run_dir / "eval" / "metrics.json")["models"]
    before = models.get("promoted") if promoted is not None else None
    verdicts = G.check(cfg.retrain.gates, models["student"], before)
    failed = [v for v in verdicts if not v["passed"]]
    emit("stage", stage="gates", status="passed" if not failed else "failed",
         seconds=round(time.monotonic() - started, 1), gates=verdicts)

    added = store.read_manifest(run_dir / "filter")["counts"]["rows"]  # the filter put them in the history index
    if failed:
        decision, code = "not promoted", EXIT_NOT_PROMOTED
        reason = "; ".join(f"{v['metric']}: {v['why']}" for v in failed)
    else:
        decision, code = "promoted", EXIT_PROMOTED
        reason = "every gate passed" if promoted is not None else "first promoted student"
        summary = {k: models["student"].get(k) for k in SUMMARY_METRICS}
        S.promote(sdir, run_dir, run_dir / "train" / "student", summary)
    emit("stage", stage="promote", status=decision, seconds=0.0, reason=reason)
    store.atomic_write_json(run_dir / "retrain.json", {
        "decision": decision, "reason": reason, "exit_code": code, "gates": verdicts, "new_prompts": n_new,
        "kept_added_to_history": added, "run_dir": str(run_dir), "state_dir": str(sdir),
        "promoted_before": str(promoted) if promoted else None,
        "warm_start_from": str(promoted) if promoted is not None and cfg.retrain.warm_start else None,
        "finished_at": S.now()})
    report = write_report(run_dir)
    cards.write_run_cards(run_dir)  # the promoted (or refused) student's card, with the gates
    (sdir / S.PENDING).unlink(missing_ok=True)
    emit("result", decision=decision, exit_code=code, reason=reason, run_dir=str(run_dir), report=str(report))
    return code


def rollback(cfg: Config) -> dict:
    """Restore the student promoted before the current one (under the state directory's lock)."""
    from llmdistill.runner import RunLock

    sdir = state_dir(cfg)
    with RunLock(sdir):
        return S.rollback(sdir)
