"""The stage runner: fingerprints, skip-if-done, resume, stage-and-swap reruns, one lock per run directory.

Each stage's fingerprint hashes the config sections it reads (input files by content), the schema
version and its upstream stage's fingerprint (fields marked NOT_HASHED in config are left out: they
decide how a stage runs, not what it writes).

A stage's output can also change under the same fingerprint (generate retrying its failed samples), so
every `_SUCCESS` carries a token of the output it completes (`output`, new whenever the output changed)
and the token of the upstream output it was built from (`upstream_output`). A stage is skipped when its
`_SUCCESS` carries the current fingerprint, was built from its upstream's current output, and has
nothing `pending` (failed samples that a rerun requests again). A `_SUCCESS` from before tokens (no
`upstream_output`) counts as built from an upstream that has no token either. Otherwise it runs:

- with `pending` work and nothing else changed: in place over its completed output, which stays complete
  throughout (generate replaces each shard file that holds retried rows in one rename); its new
  `_SUCCESS` keeps the old token when nothing changed, so what was built from it is not redone;
- in place, `<run>/<stage>/`, when that directory holds no completed output. A directory whose
  `_STARTED` holds the current fingerprint (and, when it names one, the upstream token it started from,
  the current one) is an interrupted attempt and is resumed (generate skips committed batches, train
  restarts from its last checkpoint); any other is cleared first.
- staged, in `<run>/<stage>.next/`, when `<stage>/` holds a completed output (a forced rerun, or a
  config change). Only once the new output is complete (`_SUCCESS` written) is it swapped in:
  `<stage>` -> `<stage>.prev`, `<stage>.next` -> `<stage>`, then `<stage>.prev` is removed. A rerun that
  fails or is killed leaves the previous output untouched; a kill mid-swap is repaired on the next start
  (`recover`). An interrupted staged attempt with the current fingerprint resumes in `<stage>.next`.

The stages are the rows of `TABLE` (runner.py). Their modules are imported only when they run, and never
import each other nor this module: what they share with the runner (`StageContext`, `RunLock`) lives in
runner.py.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib
import importlib.metadata
import logging
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from llmdistill import __version__, faults, records, store
from llmdistill.config import Config
from llmdistill.errors import StorageError, UserError, os_error_reason
from llmdistill.runner import BY_NAME, STAGES, STARTED, TABLE, Ranks, RunLock, StageContext

log = logging.getLogger("llmdistill")


NEXT, PREV = ".next", ".prev"  # suffixes of a staged rerun's directory and of the output it replaces


def active_stages(cfg: Config) -> tuple[str, ...]:
    """The stages this config runs, in order (an optional stage only when enabled)."""
    return tuple(s.name for s in TABLE if not s.optional or getattr(cfg, s.name).enabled)


def upstream(cfg: Config, stage: str) -> str | None:
    """The stage whose output `stage` reads: its table upstream, or an active optional stage between the two
    that reads that upstream itself (annotate, between generate and filter)."""
    up = BY_NAME[stage].upstream
    if up is None:
        return None
    active = active_stages(cfg)
    for row in TABLE[STAGES.index(up) + 1: STAGES.index(stage)]:
        if row.optional and row.upstream == up and row.name in active:
            up = row.name
    return up


def _templates(cfg: Config, stage: str) -> dict[str, str]:
    """The stage's `templates` function's answer: files it reads that the config names only indirectly."""
    where = BY_NAME[stage].templates
    if where is None:
        return {}
    module, function = where.split(":")
    return getattr(importlib.import_module(module), function)(cfg)


def _content(value: Any) -> Any:
    """Replace file paths by a hash of their content, so moving a checkout keeps fingerprints."""
    if isinstance(value, Path):
        if value.is_file():
            return {"file_sha256": hashlib.sha256(value.read_bytes()).hexdigest()}
        return str(value)
    if isinstance(value, dict):
        return {k: _content(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_content(v) for v in value]
    return value


def _not_hashed(value: Any) -> dict | None:
    """The `model_dump(exclude=...)` spec of every field marked `json_schema_extra={"fingerprint": False}` in
    `value` (a config model, or a dict or list of them): fields that decide how a stage runs, not what it writes."""
    if isinstance(value, BaseModel):
        out: dict = {}
        for name, field in type(value).model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            sub = True if extra.get("fingerprint") is False else _not_hashed(getattr(value, name))
            if sub:
                out[name] = sub
        return out or None
    if isinstance(value, dict):
        return {k: sub for k, v in value.items() if (sub := _not_hashed(v))} or None
    if isinstance(value, (list, tuple)):
        return {i: sub for i, v in enumerate(value) if (sub := _not_hashed(v))} or None
    return None


def _hashed_as_default(value: Any, dumped: Any) -> Any:
    """`dumped` (the dump of `value`) with every field marked `json_schema_extra={"fingerprint": "default"}` set to
    the field's default: hashed, so fingerprints made before it stopped deciding the output still hold."""
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        for name, field in type(value).model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            if name not in dumped:
                continue
            if extra.get("fingerprint") == "default":
                dumped[name] = field.get_default(call_default_factory=True)
            else:
                _hashed_as_default(getattr(value, name), dumped[name])
    elif isinstance(value, dict) and isinstance(dumped, dict):
        for k, v in value.items():
            if k in dumped:
                _hashed_as_default(v, dumped[k])
    elif isinstance(value, (list, tuple)) and isinstance(dumped, list):
        for v, d in zip(value, dumped):
            _hashed_as_default(v, d)
    return dumped


def fingerprints(cfg: Config) -> dict[str, str]:
    dumped = _hashed_as_default(cfg, cfg.model_dump(exclude=_not_hashed(cfg)))
    out: dict[str, str] = {}
    for stage in active_stages(cfg):
        up = upstream(cfg, stage)
        parts = {
            "schema_version": records.SCHEMA_VERSION,
            "stage": stage,
            "sections": {s: _content(dumped[s]) for s in BY_NAME[stage].sections},
            "upstream": out[up] if up else None,
        }
        templates = _templates(cfg, stage)
        if templates:  # absent otherwise, so runs without evolution keep their fingerprints
            parts["templates"] = templates
        out[stage] = records.stable_hash(parts)
    return out


def stage_status(cfg: Config, fps: dict[str, str] | None = None) -> dict[str, str]:
    """'done', 'stale' (finished with another config), 'partial' (started, not finished) or 'missing'."""
    fps = fps or fingerprints(cfg)
    out = {}
    for stage in active_stages(cfg):
        d = cfg.run_dir / stage
        success = store.read_success(d)
        up = upstream(cfg, stage)
        if success is not None:
            if success.get("fingerprint") != fps[stage] or not built_from(success, up and store.read_success(
                    cfg.run_dir / up)):
                out[stage] = "stale"
            else:
                out[stage] = f"done, {success['pending']} to retry" if success.get("pending") else "done"
        else:
            out[stage] = "partial" if (d / STARTED).exists() or (_sibling(d, NEXT) / STARTED).exists() else "missing"
    return out


def run_stages(cfg: Config, stages: list[str] | tuple[str, ...] = STAGES, force: set[str] | frozenset = frozenset(),
               standalone: bool = False, shard: tuple[int, int] | None = None,
               merge_only: bool = False) -> dict[str, str]:
    """Run `stages` in order; returns what happened to each ('skipped' or 'ran').

    `force`: stages to rerun even if done (and, through their new outputs, everything after them).
    `standalone`: a single stage command; its upstream must already be done with the current config.
    `shard` (i, n): generate only, this process's part; n processes share the run directory and none
    writes `_SUCCESS`. `merge_only`: generate only, finish a sharded run without generating anything.
    """
    if shard is not None:
        return _run_shard(cfg, shard, force=bool(force))
    if cfg.generate.executor == "ray" and "generate" in stages and not merge_only and _generate_on_ray(cfg, force):
        outcome = run_stages(cfg, ("generate",), standalone=True, merge_only=True)  # what `llmdistill merge` runs
        later = [s for s in stages if s != "generate"]
        return outcome | (run_stages(cfg, later, force, standalone) if later else {})
    fps = fingerprints(cfg)
    run_dir = cfg.run_dir
    forced = set(force)
    for stage in force:
        forced.update(STAGES[STAGES.index(stage):])
    outcome = {}
    active = active_stages(cfg)
    for stage in stages:
        if stage not in active:
            if standalone:
                raise UserError(f"stage {stage} is disabled in this config: set {stage}.enabled: true")
            log.info("stage %s: disabled (%s.enabled: false)", stage, stage)
    stages = [s for s in stages if s in active]
    ranks = Ranks.from_environment()
    if ranks.world > 1 and tuple(stages) != ("train",):
        raise UserError("only the train stage runs in several processes: use `accelerate launch ... llmdistill "
                        "train CONFIG` (or torchrun), and run the other stages in one process")
    with RunLock(run_dir) if ranks.main else contextlib.nullcontext():
        if ranks.main:
            for stage in fps:
                recover(run_dir / stage, fps[stage])
            for tmp in run_dir.glob(".*.tmp"):  # a resolved config whose write was cut short (we hold the lock)
                store.remove_path(tmp)
            write_resolved_config(cfg, run_dir)
        ranks.barrier()
        for stage in stages:
            up = upstream(cfg, stage)
            up_info = store.read_success(run_dir / up) if up else None
            if up and (standalone or up not in stages):
                if up_info is None or up_info.get("fingerprint") != fps[up]:
                    state = "missing" if up_info is None else "out of date with this config"
                    raise UserError(f"stage {stage} needs the {up} stage's output, which is {state}: "
                                    f"run `llmdistill run` (or `llmdistill {up}`) first")
            up_token = (up_info or {}).get("output")
            out_dir = run_dir / stage
            success = store.read_success(out_dir)
            current = (success is not None and success.get("fingerprint") == fps[stage]
                       and built_from(success, up_info) and stage not in forced)
            pending = current and bool(success.get("pending")) and not merge_only
            # where this attempt writes: staged beside a completed output, in place over one with pending work
            # (it stays complete throughout), else in place (see the module doc)
            work_dir = out_dir if success is None or pending else _sibling(out_dir, NEXT)
            ranks.barrier()  # every rank has decided before the main one changes anything
            if current and not pending:
                log.info("stage %s: up to date (fingerprint %s), skipping", stage, fps[stage])
                if ranks.main:
                    store.remove_path(out_dir / STARTED)  # killed between _SUCCESS and this unlink
                    _remove(_sibling(out_dir, NEXT))  # an abandoned forced rerun
                outcome[stage] = "skipped"
                continue
            if success is not None and success.get("fingerprint") == fps[stage] and not current and \
                    stage not in forced:
                log.info("stage %s: its input changed (the %s output it was built from was replaced)", stage, up)
            faults.set_stage(stage)
            interrupted = pending and (out_dir / STARTED).exists()  # an earlier pass over it did not finish
            if ranks.main:
                if merge_only:
                    from llmdistill.generate import shards

                    shards.require_started(out_dir, fps[stage])
                if pending:
                    log.info("stage %s: done, with %d failed samples to request again", stage, success["pending"])
                    store.atomic_write_bytes(out_dir / STARTED, _attempt_key(fps[stage], up_token).encode())
                else:
                    _prepare(work_dir, fps[stage], fresh=stage in forced, upstream_output=up_token)
            ranks.barrier()
            log.info("stage %s: running (fingerprint %s) -> %s", stage, fps[stage], work_dir)
            started = time.monotonic()
            module = importlib.import_module(f"llmdistill.{BY_NAME[stage].package}.stage")
            ctx = StageContext(stage, run_dir, work_dir, fps[stage], run_dir / up if up else None, ranks.main,
                               merge_only=merge_only)
            try:
                module.run(cfg, ctx)
            except UserError as e:
                if not pending or isinstance(e, StorageError):
                    raise
                # the pending work could not be done now (the endpoint is down, the budget is spent): the
                # completed output is still complete, so keep it and go on; the next run tries again
                log.warning("stage %s: requesting its %d failed samples again did not finish (%s); its completed "
                            "output is kept and the run goes on", stage, success["pending"], e)
                ctx.pending = success["pending"] if ctx.pending is None else ctx.pending
                outcome[stage] = "kept"
            faults.point("stage-end")
            seconds = round(time.monotonic() - started, 1)
            kept = pending and not ctx.changed and not interrupted and success.get("output") is not None
            token = success["output"] if kept else secrets.token_hex(8)
            ranks.barrier()
            if ranks.main:
                store.mark_success(work_dir, {"stage": stage, "fingerprint": fps[stage], "seconds": seconds,
                                              "finished_at": _now(), "llmdistill_version": __version__,
                                              "processes": ranks.world, "output": token,
                                              "upstream_output": up_token, "pending": ctx.pending or 0})
                (work_dir / STARTED).unlink(missing_ok=True)
                if work_dir != out_dir:
                    _swap_in(work_dir, out_dir)
            faults.set_stage(None)
            log.info("stage %s: done in %.1f s", stage, seconds)
            outcome.setdefault(stage, "ran")
            if not kept:  # a changed output invalidates what was built from the old one
                for later in STAGES[STAGES.index(stage) + 1:]:
                    forced.add(later)
    return outcome


def built_from(success: dict, up_info: dict | None) -> bool:
    """Whether a completed output was built from its upstream's current output (`up_info`: the upstream's
    `_SUCCESS`, None for a stage without one). One from before tokens (no `upstream_output`) counts as built
    from an upstream that has no token either, so old run directories keep their outputs."""
    if up_info is None:
        return True
    if "upstream_output" not in success:
        return up_info.get("output") is None
    return success["upstream_output"] == up_info.get("output")


def _attempt_key(fingerprint: str, upstream_output: str | None) -> str:
    """What `_STARTED` holds: the fingerprint, and on a second line the upstream token the attempt started from."""
    return fingerprint if upstream_output is None else f"{fingerprint}\n{upstream_output}"


def _generate_on_ray(cfg: Config, force: set[str] | frozenset) -> bool:
    """generate.executor: ray: every shard as a Ray task (generate/ray_executor.py), outside the run lock (the
    shards take it shared); False when generate is done already (skipped, or its failed samples requested
    again in place by this process: the plain path)."""
    if "generate" in force:
        raise UserError("--force generate cannot be combined with generate.executor: ray (the shards work in place, "
                        "not staged): remove the generate directory to regenerate, or use --executor local")
    if stage_status(cfg)["generate"].startswith("done"):
        return False
    from llmdistill.generate import ray_executor

    ray_executor.run(cfg, fingerprints(cfg)["generate"], _run_shard)
    return True


def _run_shard(cfg: Config, shard: tuple[int, int], force: bool, expect: str | None = None) -> dict[str, str]:
    """One shard of the generate stage (generate/shards.py), prepared as any stage that starts in place.
    `expect`: the fingerprint the Ray driver computed; a node whose input files differ must not clear its work."""
    from llmdistill.generate import shards

    fp = fingerprints(cfg)["generate"]
    if expect is not None and fp != expect:
        raise UserError(f"generate: on this node the config's input files differ from the driver's (fingerprint {fp}, "
                        f"not {expect}): every node must see the same prompt and template files")
    faults.set_stage("generate")

    def prepare(fresh: bool) -> None:
        write_resolved_config(cfg, cfg.run_dir)
        _prepare(cfg.run_dir / "generate", fp, fresh=fresh)

    return shards.run_shard(cfg, shard, force, fp, prepare)


def _prepare(work_dir: Path, fingerprint: str, fresh: bool, upstream_output: str | None = None) -> None:
    """Clear `work_dir` unless it holds an interrupted attempt at this very fingerprint, started from this very
    upstream output (an attempt that recorded none, from before tokens, is taken as it is), and `fresh` is off."""
    started = work_dir / STARTED
    previous = started.read_text().split() if started.exists() else []
    resumable = previous[:1] == [fingerprint] and (len(previous) == 1 or previous[1:] == [upstream_output])
    if work_dir.exists() and (fresh or not resumable):
        for tmp in store.temporaries_of(started):  # a kill between writing _STARTED's temporary and its rename
            store.remove_path(tmp)  # (only those: a directory llmdistill did not write keeps its own .tmp files)
        if not (started.exists() or (work_dir / store.SUCCESS).exists() or not any(work_dir.iterdir())):
            raise UserError(f"{work_dir} is not empty and llmdistill did not write it (no {STARTED} or "
                            f"{store.SUCCESS} in it): refusing to clear it; move it away or choose another "
                            "output_dir or name")
        log.info("clearing %s (outputs of another configuration or input, or a forced rerun)", work_dir)
        shutil.rmtree(work_dir)
    elif store.clean_temporaries(work_dir):
        log.info("removed the temporary files of an interrupted attempt in %s", work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    store.atomic_write_bytes(started, _attempt_key(fingerprint, upstream_output).encode())


def _sibling(out_dir: Path, suffix: str) -> Path:
    return out_dir.with_name(out_dir.name + suffix)


def _remove(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _swap_in(staged: Path, out_dir: Path) -> None:
    """Replace `out_dir` by the completed `staged` directory (two renames; `recover` repairs a kill between them)."""
    prev = _sibling(out_dir, PREV)
    _remove(prev)
    os.replace(out_dir, prev)
    faults.point("swap")
    os.replace(staged, out_dir)
    shutil.rmtree(prev)


def recover(out_dir: Path, fingerprint: str) -> None:
    """Finish (or undo) a swap that a kill interrupted, so `out_dir` always ends up holding a complete output.

    - `<stage>` missing: the kill came between the two renames; finish the swap if `<stage>.next` is
      complete, else put `<stage>.prev` back.
    - `<stage>.next` complete with the current fingerprint while `<stage>` is not (or was built from
      another upstream output): the kill came after the staged attempt finished, before its swap; swap
      it in now instead of redoing the work.
    - `<stage>.prev` beside a present `<stage>`: the kill came before its removal; remove it.
    """
    staged, prev = _sibling(out_dir, NEXT), _sibling(out_dir, PREV)
    staged_info = store.read_success(staged)
    if not out_dir.exists():
        if staged_info is not None:
            os.replace(staged, out_dir)
        elif prev.exists():
            os.replace(prev, out_dir)
    elif staged_info is not None and staged_info.get("fingerprint") == fingerprint:
        current = store.read_success(out_dir)
        if current is None or current.get("fingerprint") != fingerprint or (
                "upstream_output" in staged_info and current.get("upstream_output") != staged_info["upstream_output"]):
            log.info("finishing the interrupted swap of %s into %s", staged, out_dir)
            _swap_in(staged, out_dir)
    if prev.exists() and out_dir.exists():
        shutil.rmtree(prev)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    out = {"llmdistill": __version__}
    for pkg in ("torch", "transformers", "trl", "datasets", "accelerate", "peft", "pydantic", "pyarrow"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_sha() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def write_resolved_config(cfg: Config, run_dir: Path) -> None:
    """`config.resolved.yaml`: the validated config plus versions, git sha and stage fingerprints.

    In a read-only run directory whose file already records these stage fingerprints, nothing is written
    (a finished run on read-only storage, moved or copied there, can still be `run` to a no-op)."""
    doc = cfg.model_dump(mode="json")
    doc["_provenance"] = {"versions": versions(), "git_sha": git_sha(), "written_at": _now(),
                          "fingerprints": fingerprints(cfg)}
    path = run_dir / "config.resolved.yaml"
    try:
        store.atomic_write_bytes(path, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode())
    except UserError as e:
        if not (store.refused_as_read_only(e) and _records_config(path, doc)):
            raise
        log.info("%s cannot be written (%s); it already records these stage fingerprints", path,
                 os_error_reason(e.__cause__))


def _records_config(path: Path, doc: dict) -> bool:
    """Whether the resolved config at `path` has the stage fingerprints of `doc` (paths and output_dir may
    differ: fingerprints hash input files by content, and cover every section a stage reads)."""
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    provenance = old.get("_provenance") if isinstance(old, dict) else None
    return isinstance(provenance, dict) and provenance.get("fingerprints") == doc["_provenance"]["fingerprints"]
