"""What the runner and the stages share, below the stages: the stage table (`TABLE`, one row per stage),
each stage's `StageContext`, the run directory's lock (`RunLock`) and this process's place in a
multi-process launch (`Ranks`).

The runner (pipeline.py) imports the stages; the stages import this module, never pipeline.py.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmdistill import store
from llmdistill.errors import LockedError

STARTED = "_STARTED"  # in a stage directory: the attempt under way (its fingerprint, and upstream token)


@dataclass(frozen=True)
class Stage:
    """One row of the stage table."""

    name: str  # its command and directory, `<run>/<name>/`
    package: str  # llmdistill.<package>.stage has `run(cfg, ctx)`
    sections: tuple[str, ...]  # the config sections it reads; anything else can change without rerunning it
    upstream: str | None  # the stage whose output it reads
    optional: bool = False  # runs only when its section says `enabled: true`; stands in for its upstream
    # for the stages after it that read the same upstream (annotate: filter reads it instead of generate)
    templates: str | None = None  # "module:function(cfg)": files the config names only indirectly, by content


TABLE = (
    Stage("generate", "generate", ("seed", "teacher", "teachers", "generate"), None,
          templates="llmdistill.generate.evolve:template_hashes"),
    Stage("annotate", "annotate", ("annotate",), "generate", optional=True),
    Stage("filter", "filter", ("filter",), "generate"),
    Stage("train", "train", ("seed", "teacher", "train"), "filter"),
    Stage("eval", "evaluate", ("teacher", "eval"), "train"),
)
STAGES = tuple(s.name for s in TABLE)
BY_NAME = {s.name: s for s in TABLE}


@dataclass
class StageContext:
    """What a stage gets besides the config: where to write, and where its input is."""

    stage: str
    run_dir: Path
    out_dir: Path
    fingerprint: str
    upstream_dir: Path | None
    main_process: bool = True  # False on the other ranks of a multi-process train: they write no files
    shard: tuple[int, int] | None = None  # generate --shard i/n: this process's part of the work
    merge_only: bool = False  # generate: check that the shards are complete and finish, generate nothing
    # set by the stage: work a plain rerun would still do (generate: failed samples worth requesting again),
    # and whether this attempt changed the output at all (a retry that failed the same way did not)
    pending: int | None = None  # None: the stage did not count
    changed: bool = True

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage


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
    """An exclusive, non-blocking lock on `run_dir/.lock` (released by the OS if the process dies).

    `shared`: several holders at once (the shards of one generate), none beside an exclusive holder.
    `wait`: block until the lock is free instead of failing. `name`: another lock file in `run_dir`.
    In a run directory this process may not write (a read-only mount, another user's files) an existing
    lock file is opened read-only: it locks all the same, and the holder's pid is not written
    (`read_only` is then True). A run with nothing to do writes nothing else either; one that has work
    fails at its first write, naming the file and the errno (`[EROFS] Read-only file system`).
    """

    def __init__(self, run_dir: Path, name: str = ".lock", shared: bool = False, wait: bool = False):
        self.path = Path(run_dir) / name
        self.shared, self.wait = shared, wait
        self.read_only = False
        self._fh = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fh = open(self.path, "a+")
        except OSError as e:
            if not (store.refused_as_read_only(e) and self.path.is_file()):
                raise
            fh = open(self.path)  # flock needs no write access
            self.read_only = True
        try:
            fcntl.flock(fh, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | (0 if self.wait else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise LockedError(f"run directory {self.path.parent} is in use by another llmdistill process "
                              f"(pid {holder}); wait for it to finish") from None
        if not self.shared and not self.read_only:
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
