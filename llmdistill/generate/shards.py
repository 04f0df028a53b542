"""The runner's side of a sharded generate: `llmdistill generate --shard i/n` and `llmdistill merge`.

n processes share one run directory: each holds the run lock shared (so no unsharded run can start
beside them) and a lock of its own (so one shard never runs twice at once), and none writes `_SUCCESS`.
The first to start clears a stale directory (under a third lock, one shard at a time). `merge` then
runs the stage with `merge_only`, which generates nothing: it checks that every planned sample is there
exactly once and writes the manifest (generate/stage.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from llmdistill import store
from llmdistill.config import Config
from llmdistill.errors import UserError
from llmdistill.generate import stage
from llmdistill.runner import STARTED, RunLock, StageContext

log = logging.getLogger("llmdistill")


def run_shard(cfg: Config, shard: tuple[int, int], force: bool, fingerprint: str,
              prepare: Callable[[bool], None]) -> dict[str, str]:
    """One shard (i, n) of the generate stage, at the stage's `fingerprint`. `prepare(fresh)`: the runner's
    work before a stage starts in `<run>/generate` (the resolved config; the directory cleared when it holds
    another config's work or `fresh` is set, else kept to resume), called by one shard at a time."""
    index, count = shard
    if not 0 <= index < count:
        raise UserError(f"--shard {index}/{count}: the index must be in 0..{count - 1}")
    if force:
        raise UserError("--force cannot be combined with --shard (it would delete the other shards' work)")
    out_dir = cfg.run_dir / "generate"
    with RunLock(cfg.run_dir, shared=True), RunLock(cfg.run_dir, name=f".lock-shard-{index}-of-{count}"):
        success = store.read_success(out_dir)
        if success and success.get("fingerprint") == fingerprint:
            log.info("stage generate: up to date (fingerprint %s), skipping shard %d/%d", fingerprint, index, count)
            return {"generate": "skipped"}
        with RunLock(cfg.run_dir, name=".lock-prepare", wait=True):  # one shard clears a stale directory
            prepare(success is not None)
        log.info("stage generate: shard %d/%d (fingerprint %s) -> %s", index, count, fingerprint, out_dir)
        stage.run(cfg, StageContext("generate", cfg.run_dir, out_dir, fingerprint, None, shard=shard))
    return {"generate": f"ran shard {index}/{count}"}


def require_started(out_dir: Path, fingerprint: str) -> None:
    """merge: the shards must have run with this very config (merging never clears their work)."""
    started = out_dir / STARTED
    previous = started.read_text().strip() if started.exists() else None
    if previous != fingerprint:
        state = "no shard has run" if previous is None else f"the shards ran with another config ({previous})"
        raise UserError(f"merge: {out_dir}: {state}; run `llmdistill generate CONFIG --shard i/n` for every i "
                        "with this config first")
