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
import secrets
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from llmdistill import faults, store
from llmdistill.config import Config, TeacherConfig
from llmdistill.errors import BudgetExceeded, LockedError, StorageError, UserError, first_line
from llmdistill.runner import RunLock
from llmdistill.teachers import teacher_class

log = logging.getLogger("llmdistill")

RAY_DIR = ".ray"  # in the run directory: the driver's marker and each shard's attempts
MAX_RETRIES = 3  # Ray retries of a task whose worker died, or that raised a TRANSIENT error
TRANSIENT = (ConnectionError, TimeoutError)  # raised past the stage's own retries: worth another attempt
FAULT_ENV = "LLMDISTILL_RAY_FAULT"
POLL_S = 1.0  # how often the driver looks at the attempt files
MISSING = "generate.executor: ray needs Ray: pip install 'llmdistill[ray]'"
_RAISED = {c.__name__: c for c in (UserError, LockedError, StorageError, BudgetExceeded)}  # what a task returns


def run(cfg: Config, fingerprint: str, run_shard: Callable[..., dict]) -> None:
    """Run every shard of the generate stage as a Ray task; return once all are done (the merge is the runner's).
    `run_shard(cfg, (i, n), force, fingerprint)` is what `--shard i/n` runs."""
    ray = _import_ray()
    teachers = [cfg.teacher, *cfg.teachers.values()]
    for t in teachers:
        if teacher_class(t.backend).gpus(t, gpus_available=True) and t.device not in ("auto", "cuda"):
            raise UserError(f"teacher.device {t.device}: on Ray a task's GPUs are Ray's to choose; set "
                            "teacher.device: cuda (or auto)")
    joined = _connect(ray, cfg.generate.ray_address)
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


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(MISSING) from None
    return ray


def _connect(ray, address: str | None) -> bool:
    """ray.init, with a dead address found in seconds (Ray itself waits for minutes) and its errors as one line;
    False when this process is connected already."""
    if ray.is_initialized():
        return False
    target = _cluster_address(address)
    if target is not None:
        host, _, port = target.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
        except (OSError, ValueError) as e:
            shown = target if target == address else f"{address or '(default)'} (found: {target})"
            raise UserError(f"generate.ray_address {shown}: no Ray cluster answers there "
                            f"({getattr(e, 'strerror', None) or e}); start one with `ray start --head` or check the "
                            "address") from None
    try:
        ray.init(address=address, log_to_driver=True)
    except Exception as e:  # noqa: BLE001 (ConnectionError, ValueError, RuntimeError: Ray's own, all one line here)
        hint = "" if os.environ.get("RAY_AUTH_MODE") else (
            " (a cluster with token authentication, Ray's default, takes a host:port address only with "
            "RAY_AUTH_MODE=token and its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise UserError(f"generate.ray_address {address or '(default)'}: cannot start or join a Ray cluster: "
                        f"{first_line(e)}{hint if 'Failed to connect' in str(e) else ''}") from None
    return True


def _cluster_address(address: str | None) -> str | None:
    """The host:port that ray.init joins for `address`: the address itself, or for auto and null the one Ray finds
    ($RAY_ADDRESS, the cluster `ray start` last started on this machine), so that a dead one is found in a second;
    None when Ray starts a cluster of its own, connects as a client (ray://) or finds none (it says so at once)."""
    if address in (None, "auto"):
        try:
            from ray._private.services import get_ray_address_from_environment  # what ray.init asks

            address = get_ray_address_from_environment(address, None)
        except Exception:  # noqa: BLE001 (none found; or another Ray: ray.init decides, as it would anyway)
            return None
    if address in (None, "auto", "local") or address.startswith("ray://"):
        return None
    return address


def _drive(ray, cfg: Config, fingerprint: str, run_shard, resources: dict, count: int) -> None:
    """Submit the n tasks, log their progress, wait for all of them, then raise the first failure (as one line)."""
    ray_dir = cfg.run_dir / RAY_DIR
    store.remove_path(ray_dir)  # attempts of an earlier driver (we hold .lock-ray)
    nonce = secrets.token_hex(8)
    store.atomic_write_json(ray_dir / "driver.json", {"nonce": nonce, "host": socket.gethostname(),
                                                      "pid": os.getpid()})
    injected = _faults()
    task = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=list(TRANSIENT), **resources)(_shard_task)
    doc = cfg.model_dump(mode="json")
    refs = {task.options(name=f"generate-shard-{i}-of-{count}").remote(
        doc, (i, count), fingerprint, nonce, run_shard, injected.get(i)): i for i in range(count)}
    log.info("generate on Ray: %d shards, %s CPU and %s GPU per task, up to %d attempts each -> %s", count,
             f"{resources['num_cpus']:g}", f"{resources['num_gpus']:g}", MAX_RETRIES + 1, cfg.run_dir / "generate")
    seen = [0] * count
    failures: list[tuple[int, str, str]] = []
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            _log_attempts(ray_dir, count, seen)
            for ref in ready:
                index = refs[ref]
                kind, message = _outcome(ray, ref)
                if kind is None:
                    log.info("generate on Ray: shard %d/%d finished (%s)", index, count, message)
                else:
                    log.error("generate on Ray: shard %d/%d failed: %s", index, count, message)
                    failures.append((index, kind, message))
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    if failures:
        index, kind, message = min(failures)
        more = f" (and {len(failures) - 1} more shard(s) failed)" if len(failures) > 1 else ""
        text = f"generate on Ray: shard {index}/{count}: {message}{more}; finished batches are kept: rerun to resume"
        if kind in _RAISED:
            raise _RAISED[kind](text)
        raise RuntimeError(text)


def _outcome(ray, ref) -> tuple[str | None, str]:
    """(None, what the shard did) or (error kind, one line): a UserError the task returned, a crash Ray gave up on."""
    try:
        result = ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # an unexpected exception in our code (or TRANSIENT, retries spent)
        cause = e.cause if isinstance(e.cause, BaseException) else e
        return "crash", f"{type(cause).__name__}: {first_line(cause)}"
    except ray.exceptions.RayError as e:  # the worker died every attempt, the node was lost, ...
        return "crash", f"{type(e).__name__} after {MAX_RETRIES + 1} attempts: {first_line(e)}"
    if "error" in result:
        return result["error"], result["message"]
    return None, result["outcome"]


def _attempts_file(run_dir: Path, shard: tuple[int, int]) -> Path:
    return run_dir / RAY_DIR / f"shard-{shard[0]:03d}-of-{shard[1]:03d}.json"


def _log_attempts(ray_dir: Path, count: int, seen: list[int]) -> None:
    for i in range(count):
        path = _attempts_file(ray_dir.parent, (i, count))
        attempts = store.read_json(path)["attempts"] if path.exists() else []
        for number, a in enumerate(attempts[seen[i]:], start=seen[i] + 1):
            if number == 1:
                log.info("generate on Ray: shard %d/%d started on %s (pid %d)", i, count, a["host"], a["pid"])
            else:
                log.warning("generate on Ray: shard %d/%d retry: attempt %d of %d on %s (pid %d), resuming from its "
                            "committed batches", i, count, number, MAX_RETRIES + 1, a["host"], a["pid"])
        seen[i] = max(seen[i], len(attempts))


def _faults() -> dict[int, str]:
    """LLMDISTILL_RAY_FAULT: {shard index: the LLMDISTILL_FAULT spec of its first attempt}."""
    out = {}
    for part in filter(None, os.environ.get(FAULT_ENV, "").split(";")):
        index, _, spec = part.partition("=")
        try:
            faults.parse(spec)
            if not index.isdigit():
                raise ValueError(f"{FAULT_ENV}: {part!r} is not SHARD=SPEC")
        except ValueError as e:
            raise UserError(str(e)) from None
        out[int(index)] = spec
    return out


def _shard_task(doc: dict, shard: tuple[int, int], fingerprint: str, nonce: str, run_shard, fault: str | None) -> dict:
    """One Ray task: what `llmdistill generate CONFIG --shard i/n` runs. Returns {"outcome"} or, for our own
    errors, {"error", "message"} (raising them would make Ray print a traceback and, for some, retry)."""
    from llmdistill.config import validate_dict

    in_worker = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    if in_worker and not log.handlers:  # the worker's stderr goes to the driver's, prefixed with the task's name
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    run_dir = Path(doc["output_dir"]) / doc["name"]
    try:
        _check_shared(run_dir, nonce)
        attempt = _record_attempt(run_dir, shard)
        if fault and attempt == 1:
            os.environ[faults.ENV] = fault
        cfg = validate_dict(doc, source=f"generate shard {shard[0]}/{shard[1]} on {socket.gethostname()}")
        return {"outcome": run_shard(cfg, shard, False, fingerprint)["generate"]}
    except UserError as e:
        return {"error": type(e).__name__ if type(e).__name__ in _RAISED else "UserError", "message": str(e)}
    finally:
        if fault:
            os.environ.pop(faults.ENV, None)


def _check_shared(run_dir: Path, nonce: str) -> None:
    marker = run_dir / RAY_DIR / "driver.json"
    seen = store.read_json(marker).get("nonce") if marker.exists() else None
    if seen != nonce:
        raise UserError(f"{socket.gethostname()} does not see the run directory {run_dir} that the driver writes: "
                        "with generate.executor: ray it must be on a file system every node mounts at the same path "
                        "(NFS, Lustre, GPFS, CephFS)")


def _record_attempt(run_dir: Path, shard: tuple[int, int]) -> int:
    """Append this attempt to the shard's attempt file (attempts of one task never overlap); its number."""
    path = _attempts_file(run_dir, shard)
    attempts = store.read_json(path)["attempts"] if path.exists() else []
    attempts.append({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
    store.atomic_write_json(path, {"attempts": attempts})
    return len(attempts)
