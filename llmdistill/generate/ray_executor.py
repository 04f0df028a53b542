"""generate.executor: ray: the `llmdistill generate CONFIG --shard i/n` processes as tasks on a Ray cluster.

The driver cuts the plan into n shards (the same deterministic `shard_of` split as --shard), submits one Ray
task per shard and waits for all of them; the runner then finishes the stage with the very merge
`llmdistill merge` runs (pipeline.py). A task runs the runner's shard function, handed in as `run_shard` (a
stage does not import the runner; Ray pickles the function by reference), on the config it gets as a dict,
so a worker needs no file the config does not name. Everything goes through the run directory, which must be
on a file system every node shares: a task that does not see the driver's marker there stops with one line.

A task whose worker dies (SIGKILL, OOM, a lost node) is retried by Ray up to MAX_RETRIES times; the retry
resumes from the shard's committed batches (its locks are flocks, released by the kernel with the dead
process). Our own errors (UserError) are returned, not raised, so they are never retried and reach the user
as one line. Every attempt appends itself to `<run>/.ray/shard-<i>-of-<n>.json`, from which the driver logs
each shard's start, retries and end.

    LLMDISTILL_RAY_FAULT=I=SPEC[;I=SPEC]   (tests) the first attempt of shard I runs with LLMDISTILL_FAULT=SPEC
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from llmdistill import faults, ray_utils, store
from llmdistill.config import Config, TeacherConfig
from llmdistill.errors import UserError
from llmdistill.ray_utils import MAX_RETRIES, TRANSIENT
from llmdistill.runner import RunLock
from llmdistill.teachers import teacher_class

log = logging.getLogger("llmdistill")

RAY_DIR = ".ray"  # in the run directory: the driver's marker and each shard's attempts
MISSING = "generate.executor: ray needs Ray: pip install 'llmdistill[ray]'"


def run(cfg: Config, fingerprint: str, run_shard: Callable[..., dict]) -> None:
    """Run every shard of the generate stage as a Ray task; return once all are done (the merge is the runner's).
    `run_shard(cfg, (i, n), force, fingerprint)` is what `--shard i/n` runs."""
    ray = ray_utils.import_ray(MISSING)
    teachers = [cfg.teacher, *cfg.teachers.values()]
    for t in teachers:
        if teacher_class(t.backend).gpus(t, gpus_available=True) and t.device not in ("auto", "cuda"):
            raise UserError(f"teacher.device {t.device}: on Ray a task's GPUs are Ray's to choose; set "
                            "teacher.device: cuda (or auto)")
    joined = ray_utils.connect(ray, cfg.generate.ray_address, "generate.ray_address")
    try:
        cluster = ray.cluster_resources()
        resources = task_resources(teachers, cluster.get("GPU", 0))
        gpus = resources["num_gpus"]
        if gpus and cluster.get("GPU", 0) < gpus:
            raise UserError(f"generate on Ray: each task needs {gpus:g} GPU(s) (the teacher's device and parallel "
                            f"sizes), the cluster has {cluster.get('GPU', 0):g}: add GPU nodes (ray start --num-gpus) "
                            "or set teacher.device: cpu")
        count = cfg.generate.ray_shards or default_shards(resources, cluster)
        with RunLock(cfg.run_dir, shared=True), RunLock(cfg.run_dir, name=".lock-ray"):
            _drive(ray, cfg, fingerprint, run_shard, resources, count)
    finally:
        if joined:  # leaves the cluster (and stops the one it started); a caller's own connection stays
            ray.shutdown()


def task_resources(teachers: list[TeacherConfig], cluster_gpus: float) -> dict[str, float]:
    """What one task reserves: one CPU, and the GPUs of the hungriest teacher it may load (they load one at a
    time), as each teacher's backend says (`Teacher.gpus`: none for an API or device cpu, one model's worth on
    cuda, and device auto when the cluster has GPUs)."""
    return {"num_cpus": 1, "num_gpus": max(teacher_class(t.backend).gpus(t, bool(cluster_gpus)) for t in teachers)}


def default_shards(resources: dict[str, float], cluster: dict[str, float]) -> int:
    """As many shards as the cluster runs at once: its GPUs over a task's GPUs, else its CPUs over a task's."""
    kind, per_task = ("GPU", resources["num_gpus"]) if resources["num_gpus"] else ("CPU", resources["num_cpus"])
    return max(1, int(cluster.get(kind, 0) // per_task))


def _drive(ray, cfg: Config, fingerprint: str, run_shard, resources: dict, count: int) -> None:
    """Submit the n tasks, log their progress, wait for all of them, then raise the first failure (as one line)."""
    ray_dir = cfg.run_dir / RAY_DIR
    store.remove_path(ray_dir)  # attempts of an earlier driver (we hold .lock-ray)
    nonce = ray_utils.write_marker(ray_dir / "driver.json")
    injected = ray_utils.parse_faults()
    task = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=list(TRANSIENT), **resources)(_shard_task)
    doc = cfg.model_dump(mode="json")
    refs = {task.options(name=f"generate-shard-{i}-of-{count}").remote(
        doc, (i, count), fingerprint, nonce, run_shard, injected.get(i)): i for i in range(count)}
    log.info("generate on Ray: %d shards, %s CPU and %s GPU per task, up to %d attempts each -> %s", count,
             f"{resources['num_cpus']:g}", f"{resources['num_gpus']:g}", MAX_RETRIES + 1, cfg.run_dir / "generate")
    seen = [0] * count
    prefix = "generate on Ray"

    def shard(index: int) -> str:
        return f"shard {index}/{count}"

    def finished(index: int, message: str) -> None:
        log.info("%s: %s finished (%s)", prefix, shard(index), message)

    failures = ray_utils.wait_all(ray, refs, prefix, shard, lambda: _log_attempts(ray_dir, count, seen), finished)
    ray_utils.raise_first(failures, prefix, shard, "shard", "finished batches")


def _attempts_file(run_dir: Path, shard: tuple[int, int]) -> Path:
    return run_dir / RAY_DIR / f"shard-{shard[0]:03d}-of-{shard[1]:03d}.json"


def _log_attempts(ray_dir: Path, count: int, seen: list[int]) -> None:
    ray_utils.log_attempts([_attempts_file(ray_dir.parent, (i, count)) for i in range(count)],
                           [f"shard {i}/{count}" for i in range(count)], seen, "generate on Ray",
                           "resuming from its committed batches")


def _shard_task(doc: dict, shard: tuple[int, int], fingerprint: str, nonce: str, run_shard, fault: str | None) -> dict:
    """One Ray task: what `llmdistill generate CONFIG --shard i/n` runs. Returns {"outcome"} or, for our own
    errors, {"error", "message"} (raising them would make Ray print a traceback and, for some, retry)."""
    from llmdistill.config import validate_dict

    ray_utils.worker_logging()
    run_dir = Path(doc["output_dir"]) / doc["name"]
    try:
        _check_shared(run_dir, nonce)
        attempt = ray_utils.record_attempt(_attempts_file(run_dir, shard))
        if fault and attempt == 1:
            os.environ[faults.ENV] = fault
        cfg = validate_dict(doc, source=f"generate shard {shard[0]}/{shard[1]} on {socket.gethostname()}")
        return {"outcome": run_shard(cfg, shard, False, fingerprint)["generate"]}
    except UserError as e:
        return ray_utils.returned_error(e)
    finally:
        if fault:
            os.environ.pop(faults.ENV, None)


def _check_shared(run_dir: Path, nonce: str) -> None:
    ray_utils.check_shared(run_dir / RAY_DIR / "driver.json", nonce, run_dir, "generate.executor: ray")
