"""The stage runner: fingerprints, skip-if-done, resume, one lock per run directory.

Each stage's fingerprint hashes the config sections it reads (input files by content), the schema
version and its upstream stage's fingerprint. A stage is skipped when its `_SUCCESS` carries the
current fingerprint. A stage directory whose `_STARTED` fingerprint differs from the current one is
cleared before the stage runs; one with the same fingerprint is left for the stage to resume
(generate skips committed batches, train restarts from its last checkpoint).

Stage modules are imported only when they run, and never import each other.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import importlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmdistill import __version__, records, store
from llmdistill.config import Config
from llmdistill.errors import LockedError, UserError

log = logging.getLogger("llmdistill")

STAGES = ("generate", "annotate", "filter", "train", "eval")
# The config sections each stage reads; anything else can change without rerunning it.
SECTIONS = {
    "generate": ("seed", "teacher", "generate"),
    "annotate": ("annotate",),
    "filter": ("filter",),
    "train": ("seed", "teacher", "train"),
    "eval": ("teacher", "eval"),
}
UPSTREAM = {"generate": None, "annotate": "generate", "filter": "generate", "train": "filter", "eval": "train"}
OPTIONAL = ("annotate",)  # stages that run only when their section says `enabled: true`
STARTED = "_STARTED"


def active_stages(cfg: Config) -> tuple[str, ...]:
    """The stages this config runs, in order (an optional stage only when enabled)."""
    return tuple(s for s in STAGES if s not in OPTIONAL or getattr(cfg, s).enabled)


def upstream(cfg: Config, stage: str) -> str | None:
    """The stage whose output `stage` reads: the nearest active stage before it on its path."""
    up = UPSTREAM[stage]
    if stage == "filter" and "annotate" in active_stages(cfg):
        return "annotate"
    return up


@dataclass
class StageContext:
    """What a stage gets besides the config: where to write, and where its input is."""

    stage: str
    run_dir: Path
    out_dir: Path
    fingerprint: str
    upstream_dir: Path | None
    main_process: bool = True  # False on the other ranks of a multi-process train: they write no files

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage


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


def fingerprints(cfg: Config) -> dict[str, str]:
    dumped = cfg.model_dump()
    out: dict[str, str] = {}
    for stage in active_stages(cfg):
        up = upstream(cfg, stage)
        out[stage] = records.stable_hash(
            {
                "schema_version": records.SCHEMA_VERSION,
                "stage": stage,
                "sections": {s: _content(dumped[s]) for s in SECTIONS[stage]},
                "upstream": out[up] if up else None,
            }
        )
    return out


@dataclass
class Ranks:
    """This process's place in a multi-process launch (accelerate launch / torchrun set WORLD_SIZE)."""

    world: int = 1
    main: bool = True
    _state: Any = None

    @classmethod
    def from_environment(cls) -> Ranks:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch
        from accelerate import PartialState  # sets up the process group (gloo on CPU, nccl on GPUs)

        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(world=state.num_processes, main=state.is_main_process, _state=state)

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()


class RunLock:
    """An exclusive, non-blocking lock on `run_dir/.lock` (released by the OS if the process dies)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fh = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise LockedError(f"run directory {self.path.parent} is in use by another llmdistill process "
                              f"(pid {holder}); wait for it to finish") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def stage_status(cfg: Config, fps: dict[str, str] | None = None) -> dict[str, str]:
    """'done', 'stale' (finished with another config), 'partial' (started, not finished) or 'missing'."""
    fps = fps or fingerprints(cfg)
    out = {}
    for stage in active_stages(cfg):
        d = cfg.run_dir / stage
        success = store.read_success(d)
        if success is not None:
            out[stage] = "done" if success.get("fingerprint") == fps[stage] else "stale"
        else:
            out[stage] = "partial" if (d / STARTED).exists() else "missing"
    return out


def run_stages(cfg: Config, stages: list[str] | tuple[str, ...] = STAGES, force: set[str] | frozenset = frozenset(),
               standalone: bool = False) -> dict[str, str]:
    """Run `stages` in order; returns what happened to each ('skipped' or 'ran').

    `force`: stages to rerun even if done (and, through their new outputs, everything after them).
    `standalone`: a single stage command; its upstream must already be done with the current config.
    """
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
            write_resolved_config(cfg, run_dir)
        for stage in stages:
            up = upstream(cfg, stage)
            if up and (standalone or up not in stages):
                info = store.read_success(run_dir / up)
                if info is None or info.get("fingerprint") != fps[up]:
                    state = "missing" if info is None else "out of date with this config"
                    raise UserError(f"stage {stage} needs the {up} stage's output, which is {state}: "
                                    f"run `llmdistill run` (or `llmdistill {up}`) first")
            out_dir = run_dir / stage
            success = store.read_success(out_dir)
            ranks.barrier()  # every rank has decided before the main one changes anything
            if success and success.get("fingerprint") == fps[stage] and stage not in forced:
                log.info("stage %s: up to date (fingerprint %s), skipping", stage, fps[stage])
                outcome[stage] = "skipped"
                continue
            if ranks.main:
                _prepare(out_dir, fps[stage], fresh=stage in forced or success is not None)
            ranks.barrier()
            log.info("stage %s: running (fingerprint %s) -> %s", stage, fps[stage], out_dir)
            started = time.monotonic()
            module = importlib.import_module(f"llmdistill.{_PACKAGES[stage]}.stage")
            ctx = StageContext(stage, run_dir, out_dir, fps[stage], run_dir / up if up else None, ranks.main)
            module.run(cfg, ctx)
            seconds = round(time.monotonic() - started, 1)
            ranks.barrier()
            if ranks.main:
                store.mark_success(out_dir, {"stage": stage, "fingerprint": fps[stage], "seconds": seconds,
                                             "finished_at": _now(), "llmdistill_version": __version__,
                                             "processes": ranks.world})
                (out_dir / STARTED).unlink(missing_ok=True)
            log.info("stage %s: done in %.1f s", stage, seconds)
            outcome[stage] = "ran"
            # a rerun stage invalidates what was built from its old output
            for later in STAGES[STAGES.index(stage) + 1:]:
                forced.add(later)
    return outcome


_PACKAGES = {"generate": "generate", "annotate": "annotate", "filter": "filter", "train": "train", "eval": "evaluate"}


def _prepare(out_dir: Path, fingerprint: str, fresh: bool) -> None:
    """Clear a stage directory unless it holds an interrupted attempt at this very fingerprint."""
    started = out_dir / STARTED
    previous = started.read_text().strip() if started.exists() else None
    if out_dir.exists() and (fresh or previous != fingerprint):
        log.info("clearing %s (outputs of another configuration or a forced rerun)", out_dir)
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store.atomic_write_bytes(started, fingerprint.encode())


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
    """`config.resolved.yaml`: the validated config plus versions, git sha and stage fingerprints."""
    doc = cfg.model_dump(mode="json")
    doc["_provenance"] = {"versions": versions(), "git_sha": git_sha(), "written_at": _now(),
                          "fingerprints": fingerprints(cfg)}
    store.atomic_write_bytes(run_dir / "config.resolved.yaml",
                             yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode())
