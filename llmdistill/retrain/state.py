"""What `llmdistill retrain` remembers between runs, in its state directory.

    promoted.json     the pointer: the current promoted student, every promotion so far, and events
    student           a symlink to the current promoted student directory (for servers that load it)
    seen_prompts.txt  content hashes (prompt ids) of every prompt ever handed to generation
    history/          the filter's persistent HistoryIndex of every sample a retrain run kept
    pending.json      the retrain run in progress; a failed run is resumed by the next retrain
    .lock             the lock that keeps two schedules from running at once

Every file is replaced atomically (temporary file + os.replace), so a crash never leaves half a pointer.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from llmdistill import store
from llmdistill.errors import UserError

POINTER = "promoted.json"
STUDENT_LINK = "student"
SEEN = "seen_prompts.txt"
HISTORY = "history"
PENDING = "pending.json"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ line sets
def read_lines(path: Path) -> set[str]:
    try:
        return {line.strip() for line in Path(path).read_text(encoding="ascii").splitlines() if line.strip()}
    except FileNotFoundError:
        return set()


def add_lines(path: Path, new: list[str]) -> int:
    """Add `new` to the set stored at `path` (rewritten atomically, sorted); returns how many were new."""
    current = read_lines(path)
    added = set(new) - current
    if added:
        store.atomic_write_bytes(Path(path), "".join(f"{x}\n" for x in sorted(current | added)).encode("ascii"))
    return len(added)


# -------------------------------------------------------------------------------------------- pointer
def read_pointer(state_dir: Path) -> dict:
    """{"current": entry | None, "history": [entries in promotion order], "events": [...]}."""
    path = Path(state_dir) / POINTER
    if not path.exists():
        return {"current": None, "history": [], "events": []}
    return store.read_json(path)


def current_student(state_dir: Path) -> Path | None:
    current = read_pointer(state_dir)["current"]
    return Path(current["student"]) if current else None


def _write_pointer(state_dir: Path, pointer: dict) -> None:
    store.atomic_write_json(Path(state_dir) / POINTER, pointer)
    current = pointer["current"]
    link = Path(state_dir) / STUDENT_LINK
    if current is None:
        link.unlink(missing_ok=True)
        return
    tmp = link.with_name(f".{STUDENT_LINK}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(current["student"], tmp)
    os.replace(tmp, link)


def promote(state_dir: Path, run_dir: Path, student: Path, summary: dict) -> dict:
    """Make `student` the promoted one; the entry remembers which one it replaced (for rollback)."""
    pointer = read_pointer(state_dir)
    previous = pointer["current"]
    entry = {"run_dir": str(run_dir), "student": str(student), "promoted_at": now(), "metrics": summary,
             "previous": previous["run_dir"] if previous else None}
    pointer["current"] = entry
    pointer["history"].append(entry)
    pointer["events"].append({"event": "promote", "run_dir": str(run_dir), "at": entry["promoted_at"]})
    _write_pointer(state_dir, pointer)
    return entry


def rollback(state_dir: Path) -> dict:
    """Point back at the student promoted before the current one; returns the restored entry."""
    pointer = read_pointer(state_dir)
    current = pointer["current"]
    if current is None:
        raise UserError(f"rollback: nothing has been promoted in {state_dir}")
    if current["previous"] is None:
        raise UserError(f"rollback: {current['run_dir']} is the first promoted student; there is none before it")
    restored = next((e for e in reversed(pointer["history"]) if e["run_dir"] == current["previous"]), None)
    if restored is None:
        raise UserError(f"rollback: the previous student {current['previous']} is not in the promotion history")
    if not Path(restored["student"]).is_dir():
        raise UserError(f"rollback: the previous student's directory {restored['student']} is gone")
    pointer["current"] = restored
    pointer["events"].append({"event": "rollback", "from": current["run_dir"], "to": restored["run_dir"],
                              "at": now()})
    _write_pointer(state_dir, pointer)
    return restored
