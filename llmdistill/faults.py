"""Fault injection for the kill-and-rerun tests: a process can be made to SIGKILL itself at a named point.

    LLMDISTILL_FAULT=STAGE:EVENT:N    kill this process the Nth time EVENT happens during STAGE
                                       (STAGE `*` matches any stage; N counts from 1, per process)
    LLMDISTILL_FAULT=SPEC,SPEC,...    several: the first one reached kills

Events (where `point` is called):
    file-tmp            store.atomic_write_bytes: the temporary file is written and fsynced, not yet renamed
    file                store.atomic_write_bytes: the file is in place (manifest, stats, _STARTED, _SUCCESS, ...)
    shard-tmp           store.ShardWriter: a shard's temporary file is written and fsynced, not yet renamed
    shard               store.ShardWriter: a shard is committed
    step                train: an optimizer step has finished
    checkpoint-partial  train: a checkpoint's weights and optimizer are saved, its trainer_state.json not yet
    checkpoint          train: a Trainer checkpoint is saved
    stage-end           pipeline: the stage's code returned, `_SUCCESS` not yet written
    swap                pipeline: a staged rerun is half swapped in (the old output moved aside, the new not in place)

Without the variable this module does nothing but one dictionary lookup per call. It exists so the
tests can kill a real `llmdistill run` at hundreds of exact, reproducible places (docs/robustness.md).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "LLMDISTILL_FAULT"
EVENTS = ("file-tmp", "file", "shard-tmp", "shard", "step", "checkpoint-partial", "checkpoint", "stage-end", "swap")

_stage: str | None = None
_counts: Counter = Counter()


def set_stage(stage: str | None) -> None:
    """Name the stage now running (the pipeline calls this before and after each stage)."""
    global _stage
    _stage = stage


def parse(text: str) -> list[tuple[str, str, int]]:
    """'generate:shard:3,train:step:1' -> [('generate', 'shard', 3), ('train', 'step', 1)]; ValueError if malformed."""
    out = []
    for spec in text.split(","):
        parts = spec.strip().split(":")
        count_ok = len(parts) == 3 and parts[2].isascii() and parts[2].isdigit() and int(parts[2]) >= 1
        if not count_ok or parts[1] not in EVENTS:
            raise ValueError(f"{ENV}: {spec!r} is not STAGE:EVENT:N (EVENT one of {', '.join(EVENTS)}, N >= 1)")
        out.append((parts[0], parts[1], int(parts[2])))
    return out


def point(event: str) -> None:
    """Count `event` in the current stage; SIGKILL this process if a configured spec says so."""
    text = os.environ.get(ENV)
    if not text:
        return
    for i, (stage, name, n) in enumerate(parse(text)):
        if name == event and stage in ("*", _stage):
            _counts[i] += 1
            if _counts[i] == n:
                os.kill(os.getpid(), signal.SIGKILL)
