"""The filter stage's input cut into parts, and the per-part ("map") work that both executors run.

A part is a run of whole input shards holding about `filter.part_rows` rows; its rows keep their global index
(their position in the input). The steps that decide on the whole corpus split into a map, run per part on the
rows still alive (row checks and exact hashes, MinHash band keys, embeddings), and a decide, run once in the
driver on the gathered results (stage.py, corpus.py). The parts depend on the input and the config only, never on
the executor, so a local run and a Ray run map the very same rows in the very same calls and take the same
decisions.

A part's results are committed to `filter/.work/<pass>-<step>/part-<i>.npz` with a key (the stage fingerprint,
the step, the part's shards and its alive rows): a rerun after a kill, or Ray's retry of a task whose worker
died, loads a finished part instead of redoing it. `.work` is removed when the stage finishes.
"""

from __future__ import annotations

import hashlib
import io
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from llmdistill import records, store

WORK = ".work"
LIGHT_COLUMNS = [c for c in records.arrow_schema().names
                 if c not in ("topk_ids", "topk_logprobs", "completion_token_ids")]


@dataclass(frozen=True)
class Part:
    """Input shards `files` (in order), whose rows have the global indices start .. start + rows - 1."""

    index: int
    files: tuple[str, ...]
    start: int
    rows: int


def split(src: Path, part_rows: int) -> list[Part]:
    """The input shards of `src` grouped, in order, into parts of at least `part_rows` rows (the last may be less)."""
    parts: list[Part] = []
    files: list[str] = []
    start = count = 0
    for path in store.list_shards(src):
        files.append(str(path))
        count += store.open_shard(path).metadata.num_rows
        if count >= part_rows:
            parts.append(Part(len(parts), tuple(files), start, count))
            start, files, count = start + count, [], 0
    if files:
        parts.append(Part(len(parts), tuple(files), start, count))
    return parts


def samples(part: Part, alive: np.ndarray, read_rows: int, full: bool = False) -> Iterator[tuple[int, records.Sample]]:
    """(global index, sample) of the rows `alive` (sorted global indices) of `part`, in order."""
    wanted = set(alive.tolist())
    columns = None if full else LIGHT_COLUMNS
    i = part.start
    for path in part.files:
        pf = store.open_shard(path)
        try:
            for batch in pf.iter_batches(batch_size=read_rows, columns=columns):
                rows = range(i, i + batch.num_rows)
                i += batch.num_rows
                keep = [j for j in rows if j in wanted]
                if keep:
                    table = pa.Table.from_batches([batch]).take([j - rows.start for j in keep])
                    yield from zip(keep, records.table_to_samples(table))
        except (pa.ArrowException, OSError) as e:
            raise store.StoreError(f"corrupt shard {path}: {e}") from None


_BUILT: dict[str, object] = {}  # what the maps of one stage run build once per process (checks, an embedder)


def built(key: str, build: Callable[[], object]) -> object:
    """`build()`, once per process and stage run for each `key` (a Ray worker maps many parts with one model)."""
    if key not in _BUILT:
        _BUILT[key] = build()
    return _BUILT[key]


def forget_built() -> None:
    """Drop what `built` holds (the stage calls it when it ends: a later run may configure the same step anew)."""
    _BUILT.clear()


@dataclass
class Job:
    """One part's map: `fn(part, alive, read_rows, *args) -> {name: array}`, committed to `path` under `key`."""

    name: str  # what the logs call it: "near_dedup part 3/8"
    fn: Callable[..., dict[str, np.ndarray]]  # a module-level function (Ray pickles it by reference)
    part: Part
    alive: np.ndarray
    read_rows: int
    args: tuple
    path: Path
    key: str
    extra: dict = field(default_factory=dict)


def job_key(fingerprint: str, what: object, part: Part, alive: np.ndarray) -> str:
    """What a part's committed result was computed from: a finished part is reused only when all of it is equal."""
    rows = hashlib.blake2b(np.asarray(alive, np.int64).tobytes(), digest_size=16).hexdigest()
    return records.stable_hash({"fingerprint": fingerprint, "what": what, "files": [Path(f).name for f in part.files],
                                "rows": part.rows, "alive": rows})


def done(job: Job) -> bool:
    if not job.path.exists():
        return False
    try:
        with np.load(job.path) as z:
            return str(z["__key__"]) == job.key
    except (OSError, ValueError, KeyError):  # a file from another version, damaged: redone
        return False


def run_job(job: Job) -> dict:
    """Run one part's map (unless its result is committed already); what it cost, for the logs and benchmarks."""
    if done(job):
        return {"resumed": True, "rows": int(len(job.alive))}
    started = time.monotonic()
    result = job.fn(job.part, job.alive, job.read_rows, *job.args)
    buffer = io.BytesIO()
    np.savez(buffer, __key__=np.array(job.key), **result)
    store.atomic_write_bytes(job.path, buffer.getvalue())
    return {"resumed": False, "rows": int(len(job.alive)), "seconds": round(time.monotonic() - started, 3),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def load(job: Job) -> dict[str, np.ndarray]:
    with np.load(job.path) as z:
        return {k: z[k] for k in z.files if k != "__key__"}


class LocalExecutor:
    """Runs the parts' maps one after the other in this process."""

    name = "local"

    def map(self, jobs: list[Job], label: str) -> list[dict]:
        return [run_job(job) for job in jobs]

    def close(self) -> None:
        pass
