"""What the stages' Ray executors share (generate/ray_executor.py, filter/ray_executor.py): joining a cluster with
one-line errors, the check that a task sees the driver's run directory, each task's attempt file, fault injection
for tests and the outcome of a task as one line. Ray itself is imported only by the executors, when they run.

A task whose worker dies (SIGKILL, OOM, a lost node) is retried by Ray up to MAX_RETRIES times. Our own errors
(UserError) are returned by the task, not raised, so they are never retried and reach the user as one line.

    LLMDISTILL_RAY_FAULT=I=SPEC[;I=SPEC]   (tests) the first attempt of task I runs with LLMDISTILL_FAULT=SPEC
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import time
from pathlib import Path

from llmdistill import faults, store
from llmdistill.errors import BudgetExceeded, LockedError, StorageError, UserError, first_line

log = logging.getLogger("llmdistill")

MAX_RETRIES = 3  # Ray retries of a task whose worker died, or that raised a TRANSIENT error
TRANSIENT = (ConnectionError, TimeoutError)  # raised past a stage's own retries: worth another attempt
FAULT_ENV = "LLMDISTILL_RAY_FAULT"
POLL_S = 1.0  # how often a driver looks at the attempt files
RAISED = {c.__name__: c for c in (UserError, LockedError, StorageError, BudgetExceeded)}  # what a task returns


def import_ray(missing: str):
    try:
        import ray
    except ImportError:
        raise UserError(missing) from None
    return ray


def connect(ray, address: str | None, field: str) -> bool:
    """ray.init, with a dead address found in seconds (Ray itself waits for minutes) and its errors as one line
    naming the config `field` (e.g. generate.ray_address); False when this process is connected already."""
    if ray.is_initialized():
        return False
    target = cluster_address(address)
    if target is not None:
        host, _, port = target.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
        except (OSError, ValueError) as e:
            shown = target if target == address else f"{address or '(default)'} (found: {target})"
            raise UserError(f"{field} {shown}: no Ray cluster answers there "
                            f"({getattr(e, 'strerror', None) or e}); start one with `ray start --head` or check the "
                            "address") from None
    try:
        ray.init(address=address, log_to_driver=True)
    except Exception as e:  # noqa: BLE001 (ConnectionError, ValueError, RuntimeError: Ray's own, all one line here)
        hint = "" if os.environ.get("RAY_AUTH_MODE") else (
            " (a cluster with token authentication, Ray's default, takes a host:port address only with "
            "RAY_AUTH_MODE=token and its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise UserError(f"{field} {address or '(default)'}: cannot start or join a Ray cluster: "
                        f"{first_line(e)}{hint if 'Failed to connect' in str(e) else ''}") from None
    return True


def cluster_address(address: str | None) -> str | None:
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


def outcome(ray, ref) -> tuple[str | None, object]:
    """(None, what the task returned) or (error kind, one line): a UserError the task returned, a crash Ray gave
    up on. A task returns {"outcome": ...} or {"error": kind, "message": line} (`returned_error`)."""
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


def returned_error(e: UserError) -> dict:
    """What a task returns for one of our own errors (raising it would make Ray print a traceback and retry)."""
    return {"error": type(e).__name__ if type(e).__name__ in RAISED else "UserError", "message": str(e)}


def raise_failure(kind: str, text: str) -> None:
    """Raise a task's failure in the driver: our own error class when it was one, else RuntimeError."""
    if kind in RAISED:
        raise RAISED[kind](text)
    raise RuntimeError(text)


def wait_all(ray, refs: dict, prefix: str, describe, progress, finished) -> list[tuple[int, str, object]]:
    """Wait for every task of `refs` ({ref: index}): `progress()` after each wait (attempt files), `finished(index,
    result)` for each task that returned, each failure logged and kept as (index, kind, message); returns the
    failures, first index first. Ctrl-C cancels the tasks still pending."""
    failures = []
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            progress()
            for ref in ready:
                index = refs[ref]
                kind, result = outcome(ray, ref)
                if kind is None:
                    finished(index, result)
                else:
                    log.error("%s: %s failed: %s", prefix, describe(index), result)
                    failures.append((index, kind, result))
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return sorted(failures)


def raise_first(failures: list[tuple[int, str, object]], prefix: str, describe, unit: str, kept: str) -> None:
    """Raise the first of `failures` (from `wait_all`) as one line, counting the others."""
    if not failures:
        return
    index, kind, message = failures[0]
    more = f" (and {len(failures) - 1} more {unit}(s) failed)" if len(failures) > 1 else ""
    raise_failure(kind, f"{prefix}: {describe(index)}: {message}{more}; {kept} are kept: rerun to resume")


def parse_faults() -> dict[int, str]:
    """LLMDISTILL_RAY_FAULT: {task index: the LLMDISTILL_FAULT spec of its first attempt}."""
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


def worker_logging() -> None:
    """In a Ray worker, llmdistill's lines go to its stderr, which Ray sends to the driver's (prefixed with the
    task's name and pid)."""
    in_worker = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    if in_worker and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def write_marker(marker: Path) -> str:
    """The driver's marker (a fresh nonce) that every task must read back from the shared run directory."""
    nonce = secrets.token_hex(8)
    store.atomic_write_json(marker, {"nonce": nonce, "host": socket.gethostname(), "pid": os.getpid()})
    return nonce


def check_shared(marker: Path, nonce: str, run_dir: Path, executor: str) -> None:
    """One line when this node does not see the driver's marker: the run directory is not shared."""
    seen = store.read_json(marker).get("nonce") if marker.exists() else None
    if seen != nonce:
        raise UserError(f"{socket.gethostname()} does not see the run directory {run_dir} that the driver writes: "
                        f"with {executor} it must be on a file system every node mounts at the same path "
                        "(NFS, Lustre, GPFS, CephFS)")


def record_attempt(path: Path) -> int:
    """Append this attempt to the task's attempt file (attempts of one task never overlap); its number."""
    attempts = store.read_json(path)["attempts"] if path.exists() else []
    attempts.append({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
    store.atomic_write_json(path, {"attempts": attempts})
    return len(attempts)


def log_attempts(files: list[Path], names: list[str], seen: list[int], prefix: str, resume: str) -> None:
    """Log the attempts recorded since the last call: `prefix: NAME started on HOST (pid P)`, and each retry."""
    for i, (path, name) in enumerate(zip(files, names)):
        attempts = store.read_json(path)["attempts"] if path.exists() else []
        for number, a in enumerate(attempts[seen[i]:], start=seen[i] + 1):
            if number == 1:
                log.info("%s: %s started on %s (pid %d)", prefix, name, a["host"], a["pid"])
            else:
                log.warning("%s: %s retry: attempt %d of %d on %s (pid %d), %s", prefix, name, number,
                            MAX_RETRIES + 1, a["host"], a["pid"], resume)
        seen[i] = max(seen[i], len(attempts))
