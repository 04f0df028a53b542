"""Sharded Parquet datasets on disk.

A dataset directory looks like this:

    part-00000.parquet  part-00001.parquet  ...   sample shards (records.arrow_schema)
    manifest.json                                 provenance (teacher, tokenizer, k, logprob mode, counts)
    stats.json                                    what the stage did
    _SUCCESS                                      written last: its existence means the work completed

Every file is written to a temporary name in the same directory, flushed to disk and renamed, so a
reader (or a killed writer's rerun) never sees half a file. A shard that is nevertheless damaged
(copied badly, disk trouble) is reported by file name.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llmdistill import faults, records
from llmdistill.errors import StorageError, UserError, describe_os_error, os_error_reason

SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"
STATS = "stats.json"
SHARD_RE = re.compile(r"^part-(\d{5,})\.parquet$")


class StoreError(UserError):
    """A dataset directory is missing, incomplete or damaged. The message names the file."""


_umask_lock = threading.Lock()
_umask: int | None = None


def process_umask() -> int:
    """The process's umask, read once. Linux shows it in /proc/self/status; elsewhere it can only be read
    by setting it (os.umask), which is done once, under a lock, at the first write."""
    global _umask
    with _umask_lock:
        if _umask is None:
            _umask = _read_umask()
        return _umask


def _read_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o077)  # a file another thread creates in this instant is private, never too open
    os.umask(current)
    return current


def file_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file (0644 under umask 022, 0640 under 027).

    Temporary files from mkstemp are 0600 whatever the umask; files committed from them get this mode, so
    a run directory is as readable as any other file its user writes."""
    return 0o666 & ~process_umask()


def _chmod_quietly(fd: int) -> None:
    """Give a new temporary file the umask's mode (a file system that cannot chmod keeps 0600)."""
    try:
        os.fchmod(fd, file_mode())
    except OSError:
        pass


def apply_file_mode(directory: Path) -> None:
    """Give every file under `directory` the umask's mode (`file_mode`), for writers that make 0600 files
    whatever the umask: safetensors' `save_file`, and so `save_pretrained`, write model weights that way."""
    mode = file_mode()
    for p in Path(directory).rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, mode)


def _temporary_affixes(path: Path) -> tuple[str, str]:
    """(prefix, suffix) of the temporary file `_commit` writes beside `path`: `temporaries_of` finds it by them."""
    return f".{path.name}.", ".tmp"


def _commit(path: Path, fill: Callable[[int, str], None], fault: str, what: str = "",
            unchanged: Callable[[], bool] | None = None) -> None:
    """The one write protocol of the store: `fill(fd, tmp)` writes a temporary file beside `path` (mode
    `file_mode`), which is fsynced, renamed over `path` and its directory fsynced, so that `path` is either
    the old file or the whole new one. The fault points `<fault>-tmp` (written, not renamed) and `<fault>`
    (in place) come on the way. An OSError becomes a StorageError "cannot write <what><path>: <reason>",
    unless the directory refuses the temporary file as read-only and `unchanged()` says `path` already holds
    what was to be written: then nothing is written."""
    tmp = None
    try:
        prefix, suffix = _temporary_affixes(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
        try:
            _chmod_quietly(fd)
            fill(fd, tmp)
            os.fsync(fd)
        finally:
            os.close(fd)
        faults.point(f"{fault}-tmp")
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            _unlink_quietly(tmp)
        if isinstance(e, OSError):
            if tmp is None and unchanged is not None and refused_as_read_only(e) and unchanged():
                return
            raise StorageError(f"cannot write {what}{path}: {os_error_reason(e)}") from e
        raise
    _fsync_dir(path.parent)
    faults.point(fault)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either the old file or the whole new one (mode: `file_mode`)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot write {path}: {os_error_reason(e)}") from e

    def fill(fd: int, tmp: str) -> None:
        with open(fd, "wb", closefd=False) as f:
            f.write(data)

    # a read-only run directory that already says this: nothing to write
    _commit(path, fill, "file", unchanged=lambda: _holds(path, data))


READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def refused_as_read_only(e: BaseException) -> bool:
    """Whether `e` (or the OSError behind a StorageError) is the file system refusing a write: a read-only
    mount, or a directory this user may not write."""
    e = e if isinstance(e, OSError) else e.__cause__
    return isinstance(e, OSError) and e.errno in READ_ONLY_ERRNOS


def _holds(path: Path, data: bytes) -> bool:
    """Whether the file at `path` already holds exactly `data` (size first: no read for a changed file)."""
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8"))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"missing file {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"corrupt JSON file {path}: {e}") from None


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a power cut after it cannot bring the old entry back)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path) -> None:
    """Remove a file; nothing if it is not there (a read-only mount refuses even that: EROFS, not ENOENT)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != errno.EROFS or os.path.lexists(path):
            raise


def list_shards(directory: Path) -> list[Path]:
    """Committed shards of a dataset directory, in order (temporary files are never listed)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if SHARD_RE.match(p.name)),
                  key=lambda p: int(SHARD_RE.match(p.name).group(1)))


def temporaries_of(path: Path) -> list[Path]:
    """The temporary files `_commit` left beside `path` when it was killed before the rename."""
    path = Path(path)
    prefix, suffix = _temporary_affixes(path)
    return sorted(path.parent.glob(f"{glob.escape(prefix)}*{suffix}"))


def clean_temporaries(directory: Path) -> int:
    """Remove the temporary files (and directories) a killed writer left anywhere under `directory`;
    returns how many were removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    stale = [p for p in directory.rglob(".*.tmp")]
    for p in sorted(stale, key=lambda p: len(p.parts), reverse=True):
        remove_path(p)
    return len(stale)


def remove_path(path: Path) -> None:
    """Remove a file or a directory tree; nothing if it is gone already."""
    if Path(path).is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        _unlink_quietly(path)


# Teacher-signal columns written byte-stream-split: the k-th bytes of all values side by side, then zstd.
# Token ids (< 2^16 for most vocabularies) and sorted fp16 log-probs share their high bytes, so this
# stores the same values in about 15 % fewer bytes than dictionary encoding (benchmarks/bytes_per_token.py).
SPLIT_COLUMNS = ("completion_token_ids", "topk_ids", "topk_logprobs")


def parquet_options(schema: pa.Schema) -> dict:
    """`pyarrow.parquet.write_table` options for a shard of `schema`: zstd everywhere, byte-stream split for
    the teacher-signal columns (lossless: the values read back are the values written)."""
    split = [p for f in schema if f.name in SPLIT_COLUMNS for p in _leaf_paths(f.name, f.type)]
    rest = [p for f in schema if f.name not in SPLIT_COLUMNS for p in _leaf_paths(f.name, f.type)]
    return {"compression": "zstd", "column_encoding": dict.fromkeys(split, "BYTE_STREAM_SPLIT"),
            "use_dictionary": rest}


def _leaf_paths(path: str, tp: pa.DataType) -> list[str]:
    """Parquet column paths of a field: `a.list.element` for lists, `a.b` for struct members."""
    if pa.types.is_list(tp):
        return _leaf_paths(path + ".list.element", tp.value_type)
    if pa.types.is_struct(tp):
        return [p for f in tp for p in _leaf_paths(f"{path}.{f.name}", f.type)]
    return [path]


class ShardWriter:
    """Appends shards `part-NNNNN.parquet` to a directory, one atomic file per `write` call.

    Numbering continues after the shards already there, so a resumed writer never overwrites. A caller
    that names shards itself passes `index` (generate: the plan position of the shard's first batch, so
    that file order is plan order and parallel writers never collide); an existing name is an error, unless
    `replace` (generate's retry of failed rows: the file is swapped for its new version in one rename).
    """

    def __init__(self, directory: Path, schema: pa.Schema | None = None):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create {self.directory}: {describe_os_error(e)}") from e
        self.schema = schema or records.arrow_schema()
        existing = list_shards(self.directory)
        self.next_index = int(SHARD_RE.match(existing[-1].name).group(1)) + 1 if existing else 0
        self.rows_written = 0

    def write_table(self, table: pa.Table, index: int | None = None, replace: bool = False) -> Path:
        if table.schema.remove_metadata() != self.schema.remove_metadata():
            raise StoreError(f"shard schema mismatch for {self.directory}:\n{table.schema}\n!=\n{self.schema}")
        path = self.directory / f"part-{self.next_index if index is None else index:05d}.parquet"
        if index is not None and path.exists() and not replace:
            raise StoreError(f"shard {path} already exists")

        def fill(fd: int, tmp: str) -> None:  # pyarrow rewrites the file in place: its mode and inode stay
            pq.write_table(table.replace_schema_metadata(self.schema.metadata), tmp, **parquet_options(self.schema))

        _commit(path, fill, "shard", what="shard ")  # disk full, read-only, ...: the shard is not committed
        if index is None:
            self.next_index += 1
        self.rows_written += table.num_rows
        return path

    def write(self, samples: list[records.Sample], reasons: list[str] | None = None, index: int | None = None) -> Path:
        return self.write_table(records.samples_to_table(samples, reasons), index)


def open_shard(path: Path) -> pq.ParquetFile:
    """A committed shard, its footer read; a damaged one is a StoreError naming the file."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise StoreError(f"corrupt or truncated shard {path}: {e}") from None


def read_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        return open_shard(path).read(columns=columns)
    except StoreError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise StoreError(f"corrupt shard {path}: {e}") from None


def read_table(directory: Path, columns: list[str] | None = None) -> pa.Table:
    """All shards of a dataset directory as one Arrow table (shards validated one by one)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise StoreError(f"dataset directory {directory} does not exist")
    shards = list_shards(directory)
    if not shards:
        schema = records.arrow_schema()
        if columns:
            schema = pa.schema([schema.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables([read_shard(p, columns) for p in shards])


def load_dataset(directory: Path, columns: list[str] | None = None):
    """The dataset as a `datasets.Dataset` (in memory, Arrow-backed)."""
    import datasets

    return datasets.Dataset(read_table(directory, columns))


def iter_batches(directory: Path, batch_rows: int = 256, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The rows of every committed shard, in order, as record batches of at most `batch_rows` rows (a batch
    never spans two shards), without loading the dataset. A damaged shard is a StoreError naming it."""
    for path in list_shards(directory):
        pf = open_shard(path)
        try:
            yield from pf.iter_batches(batch_size=batch_rows, columns=columns)
        except (pa.ArrowException, OSError) as e:
            raise StoreError(f"corrupt shard {path}: {e}") from None


def iter_samples(directory: Path, batch_rows: int = 256) -> Iterator[records.Sample]:
    """Stream samples shard by shard, `batch_rows` at a time, without loading the dataset."""
    for batch in iter_batches(directory, batch_rows):
        yield from records.table_to_samples(pa.Table.from_batches([batch]))


def read_ids(directory: Path) -> list[str]:
    """The `id` column of every committed shard, in order."""
    return [i for p in list_shards(directory) for i in read_shard(p, ["id"]).column("id").to_pylist()]


def write_manifest(directory: Path, manifest: dict) -> None:
    atomic_write_json(Path(directory) / MANIFEST, manifest)


def read_manifest(directory: Path) -> dict:
    return read_json(Path(directory) / MANIFEST)


def mark_success(directory: Path, info: dict) -> None:
    """Write `_SUCCESS` (call it last: its existence means everything else is in place)."""
    atomic_write_json(Path(directory) / SUCCESS, info)


def read_success(directory: Path) -> dict | None:
    """The content of `_SUCCESS`, or None if the stage has not completed."""
    path = Path(directory) / SUCCESS
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def require_complete(directory: Path) -> dict:
    """Fail with a clear message unless `directory` holds a completed dataset."""
    info = read_success(directory)
    if info is None:
        raise StoreError(f"{directory} is not a completed dataset (no {SUCCESS}); run the stage that writes it")
    return info
