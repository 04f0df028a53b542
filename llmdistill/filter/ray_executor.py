"""filter.executor: ray: the filter stage's per-part work as tasks on a Ray cluster; the decisions stay here.

Every pass that maps (row checks and exact hashes, near dedup's band keys, semantic dedup's embeddings) submits
one Ray task per part of the input (parts.py) and waits for all of them; the driver then takes the pass's
decisions on the gathered results with the very code a local run uses (stage.row_decide, corpus.run_near_dedup,
corpus.run_semantic_dedup), so the kept rows, reasons, `*_duplicate_of` metadata, output shards and stats equal
a local run's. Scorers, history dedup and the output shards run in the driver.

A task writes its part's result to `filter/.work/` in the run directory (which must be on a file system every
node shares: a task that does not see the driver's marker there stops with one line) and returns only what it
cost. A task whose worker dies (SIGKILL, OOM, a lost node) is retried by Ray up to MAX_RETRIES times; a part
whose result was committed before the kill is not redone, by the retry nor by a rerun of the stage. Every
attempt appends itself to `filter/.ray/<pass>-part-<i>.json`, from which the driver logs each part's start and
retries; `filter/.ray/usage.json` records each pass's parts, time and the workers' peak memory.

    LLMDISTILL_RAY_FAULT=I=SPEC[;I=SPEC]   (tests) in every pass, the first attempt of part I runs with
                                           LLMDISTILL_FAULT=SPEC (stage `filter`; e.g. 0=filter:file-tmp:1)
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from llmdistill import faults, ray_utils, store
from llmdistill.config import Config
from llmdistill.errors import UserError
from llmdistill.filter import parts
from llmdistill.ray_utils import MAX_RETRIES, TRANSIENT

log = logging.getLogger("llmdistill")

RAY_DIR = ".ray"  # in the filter directory: the driver's marker, each part's attempts, usage.json
MISSING = "filter.executor: ray needs Ray: pip install 'llmdistill[ray]'"


class RayExecutor:
    """Runs the parts' maps of each pass as Ray tasks (one CPU each); `close()` leaves the cluster."""

    name = "ray"

    def __init__(self, cfg: Config, out: Path):
        self.ray = ray_utils.import_ray(MISSING)
        self.joined = ray_utils.connect(self.ray, cfg.filter.ray_address, "filter.ray_address")
        try:
            self.run_dir, self.ray_dir = cfg.run_dir, out / RAY_DIR
            store.remove_path(self.ray_dir)  # attempts of an earlier driver (the stage holds the run lock)
            self.marker = self.ray_dir / "driver.json"
            self.nonce = ray_utils.write_marker(self.marker)
            self.faults = ray_utils.parse_faults()
            self.task = self.ray.remote(max_retries=MAX_RETRIES, retry_exceptions=list(TRANSIENT),
                                        num_cpus=1)(_part_task)
            self.usage: list[dict] = []
        except BaseException:
            self.close()
            raise

    def map(self, jobs: list[parts.Job], label: str) -> list[dict]:
        """Run `jobs` (one per part), skipping the parts whose result is committed; raise the first failure."""
        ray = self.ray
        todo = [job for job in jobs if not parts.done(job)]
        attempts = [self.ray_dir / f"{label}-part-{job.part.index:05d}.json" for job in todo]
        log.info("filter on Ray: %s: %d parts (%d committed already), 1 CPU per task, up to %d attempts each",
                 label, len(jobs), len(jobs) - len(todo), MAX_RETRIES + 1)
        started = time.monotonic()
        refs = {self.task.options(name=f"filter-{label}-part-{job.part.index}").remote(
            job, self.nonce, str(self.marker), str(self.run_dir), str(path), self.faults.get(job.part.index)): k
            for k, (job, path) in enumerate(zip(todo, attempts))}
        seen = [0] * len(todo)
        names = [job.name for job in todo]
        infos: list[dict] = [{} for _ in todo]
        prefix = "filter on Ray"

        def progress() -> None:
            ray_utils.log_attempts(attempts, names, seen, prefix, "redoing the part")

        failures = ray_utils.wait_all(ray, refs, prefix, names.__getitem__, progress, infos.__setitem__)
        ray_utils.raise_first(failures, prefix, names.__getitem__, "part", "finished parts")
        retried = sum(max(0, n - 1) for n in seen)
        self.usage.append({"pass": label, "parts": len(jobs), "resumed": len(jobs) - len(todo), "retries": retried,
                           "seconds": round(time.monotonic() - started, 3),
                           "worker_max_rss_mb": max((i.get("max_rss_mb", 0) for i in infos), default=0),
                           "tasks": infos})
        log.info("filter on Ray: %s done in %.1f s (%d retried attempts)", label, time.monotonic() - started,
                 retried)
        return infos

    def close(self) -> None:
        if getattr(self, "usage", None) is not None:
            store.atomic_write_json(self.ray_dir / "usage.json", {"passes": self.usage})
        if self.joined:  # leaves the cluster (and stops the one it started); a caller's own connection stays
            self.ray.shutdown()
            self.joined = False


def _part_task(job: parts.Job, nonce: str, marker: str, run_dir: str, attempts: str, fault: str | None) -> dict:
    """One Ray task: one part's map. Returns {"outcome": what it cost} or, for our own errors, {"error", "message"}
    (raising them would make Ray print a traceback and, for some, retry)."""
    ray_utils.worker_logging()
    try:
        ray_utils.check_shared(Path(marker), nonce, Path(run_dir), "filter.executor: ray")
        attempt = ray_utils.record_attempt(Path(attempts))
        if fault and attempt == 1:
            os.environ[faults.ENV] = fault
        faults.set_stage("filter")
        return {"outcome": parts.run_job(job)}
    except UserError as e:
        return ray_utils.returned_error(e)
    finally:
        if fault:
            os.environ.pop(faults.ENV, None)
