"""A full disk during a shard write: a clear one-line error (exit 2), no corrupt or partial shard, and a
rerun with space again finishes the job.

Two variants: a real, tiny tmpfs (needs root to mount; skipped otherwise), and ENOSPC injected into the
Parquet writer (runs anywhere, so CI without root still covers the path).
"""

from __future__ import annotations

import os
import re
import subprocess

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from conftest import PYTHON
from llmdistill import cli, store
from llmdistill.config import load_config


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
