"""A run directory this process may not write (issue 11, item 16): the lock is taken read-only, a write that
would change nothing succeeds, and removing a file that is not there is not an error. The real read-only
mount is in tests/integration/test_bad_input.py."""

import builtins
import errno
import os

import pytest

from llmdistill import runner, store
from llmdistill.errors import LockedError, StorageError


def erofs(path):
    return OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))


def test_lock_in_a_read_only_directory_still_excludes_and_writes_no_pid(tmp_path, monkeypatch):
    lock = tmp_path / ".lock"
    lock.write_text("4242")
    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kwargs):
        if str(file) == str(lock) and mode != "r":
            raise erofs(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only_open)
    with runner.RunLock(tmp_path) as held:
        assert held.read_only
        monkeypatch.setattr(builtins, "open", real_open)
        with pytest.raises(LockedError, match=r"in use by another llmdistill process \(pid 4242\)"):
            with runner.RunLock(tmp_path):
                pass
    assert lock.read_text() == "4242"
    with runner.RunLock(tmp_path) as held:  # writable again: the pid is written as before
        assert not held.read_only and lock.read_text() == str(os.getpid())


def test_read_only_lock_needs_the_lock_file(tmp_path, monkeypatch):
    def refused(file, *args, **kwargs):
        raise erofs(file)

    monkeypatch.setattr(builtins, "open", refused)
    with pytest.raises(OSError, match="Read-only file system"):  # the CLI prints it as one line, exit 2
        with runner.RunLock(tmp_path):
            pass


def test_unchanged_write_succeeds_on_read_only_storage_a_changed_one_says_read_only(tmp_path, monkeypatch):
    path = tmp_path / "stats.json"
    store.atomic_write_json(path, {"rows": 3})
    real_mkstemp = store.tempfile.mkstemp

    def refused(*args, **kwargs):
        raise erofs(kwargs.get("dir"))

    monkeypatch.setattr(store.tempfile, "mkstemp", refused)
    store.atomic_write_json(path, {"rows": 3})  # already says this: nothing to write
    with pytest.raises(StorageError, match=r"cannot write .*stats\.json: \[EROFS\] Read-only file system"):
        store.atomic_write_json(path, {"rows": 4})
    monkeypatch.setattr(store.tempfile, "mkstemp", real_mkstemp)
    assert store.read_json(path) == {"rows": 3}


def test_removing_a_missing_file_on_read_only_storage_is_nothing(tmp_path, monkeypatch):
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):  # what Linux does on a read-only mount, file or no file
        raise erofs(path)

    monkeypatch.setattr(os, "unlink", unlink)
    store.remove_path(tmp_path / "_STARTED")
    (tmp_path / "there").write_text("x")
    with pytest.raises(OSError, match="Read-only"):
        store.remove_path(tmp_path / "there")
    monkeypatch.setattr(os, "unlink", real_unlink)
