"""Which exceptions from a model save are failed writes (a one-line StorageError naming the path and the
errno), and which are not (they pass through untouched). The exceptions are the libraries' own, raised by
their real code paths where a Python-level write can be made to fail."""

import errno
import os
from types import SimpleNamespace

import pytest
import torch
from safetensors import SafetensorError

from conftest import FullDiskFile
from llmdistill import models
from llmdistill.errors import StorageError

ENOSPC = "[ENOSPC] No space left on device"



def torch_save_error() -> RuntimeError:
    with pytest.raises(RuntimeError) as info:
        torch.save({"w": torch.zeros(10_000)}, FullDiskFile(None, 1000))
    return info.value


def test_torch_save_on_a_full_disk(tmp_path):
    e = torch_save_error()  # torch's zip writer: "[enforce fail at inline_container.cc] . unexpected pos ..."
    assert models.write_failure(e, tmp_path) == ENOSPC


def test_torch_save_failure_without_an_errno_asks_the_file_system(tmp_path, monkeypatch):
    """A real disk: torch's C++ writer reports only its position check; the file system says why."""
    e = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    real = os.statvfs
    full = SimpleNamespace(f_flag=0, f_bavail=0, f_frsize=4096)
    monkeypatch.setattr(os, "statvfs", lambda p: full)
    assert models.write_failure(e, tmp_path / "checkpoints" / "student") == ENOSPC
    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_flag=os.ST_RDONLY, f_bavail=10**6,
                                                                  f_frsize=4096))
    assert models.write_failure(e, tmp_path) == "[EROFS] Read-only file system"
    monkeypatch.setattr(os, "statvfs", real)
    assert models.write_failure(e, tmp_path).startswith("write failed (")  # still a failed write, reason unknown


def test_safetensors_io_error():
    e = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert models.write_failure(e, "/x") == ENOSPC


def test_os_error_names_its_file():
    e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/train/student/config.json")
    assert models.write_failure(e, "/x") == f"{ENOSPC}: /runs/x/train/student/config.json"


@pytest.mark.parametrize("error", [
    RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x64 and 32x64)"),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory"),
    SafetensorError("Error while serializing: non contiguous tensor"),
    ValueError("unexpected pos 3"),
])
def test_other_errors_are_not_write_failures(tmp_path, error):
    assert models.write_failure(error, tmp_path) is None
    with pytest.raises(type(error)):
        with models.writing("the student", tmp_path):
            raise error


def test_writing_raises_one_storage_error_naming_the_path(tmp_path):
    with pytest.raises(StorageError) as info:
        with models.writing("a checkpoint under", tmp_path / "checkpoints"):
            torch.save({"w": torch.zeros(10_000)}, FullDiskFile(None, 100))
    assert str(info.value) == f"cannot write a checkpoint under {tmp_path / 'checkpoints'}: {ENOSPC}"
    assert "\n" not in str(info.value)


def test_save_dir_keeps_the_old_copy_and_removes_the_partial_one(tmp_path):
    target = tmp_path / "student"
    models.save_dir(target, "the student", lambda tmp: (tmp / "model.safetensors").write_bytes(b"the previous student"),
                    "student")

    def write(tmp):
        (tmp / "config.json").write_text("{}")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(StorageError, match=f"cannot write the student {target}: .ENOSPC"):
        models.save_dir(target, "the student", write, "student")
    assert (target / "model.safetensors").read_bytes() == b"the previous student"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]
    models.save_dir(target, "the student", lambda tmp: (tmp / "new").write_text("x"), "student")
    assert sorted(p.name for p in target.iterdir()) == [models.OWNER_FILE, "new"]
