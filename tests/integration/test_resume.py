"""A generate killed with SIGKILL and rerun ends with exactly the samples of an uninterrupted run."""

import os
import signal
import subprocess
import time

import yaml

from conftest import PYTHON
from llmdistill import store
from llmdistill.config import load_config


def generate_cmd(path):
    return [PYTHON, "-m", "llmdistill.cli", "generate", str(path)]


def test_sigkill_mid_generate_then_rerun(tiny_config, tmp_path):
    path, data = tiny_config
    data["generate"].update(n=8, batch_size=2, shard_rows=2, max_new_tokens=48)  # 96 samples in 48 shards
    path.write_text(yaml.safe_dump(data))
    out_dir = load_config(path).run_dir / "generate"

    proc = subprocess.Popen(generate_cmd(path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(store.list_shards(out_dir)) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = store.read_ids(out_dir)
    assert 0 < len(committed) < 96, "the kill must land mid-way"
    assert store.read_success(out_dir) is None

    assert subprocess.run(generate_cmd(path), capture_output=True).returncode == 0
    resumed = store.load_dataset(out_dir)

    data["output_dir"] = str(tmp_path / "uninterrupted")
    clean_path = tmp_path / "clean.yaml"
    clean_path.write_text(yaml.safe_dump(data))
    assert subprocess.run(generate_cmd(clean_path), capture_output=True).returncode == 0
    clean = store.load_dataset(load_config(clean_path).run_dir / "generate")

    assert len(resumed) == len(set(resumed["id"])) == 96  # no duplicates, nothing missing
    assert resumed["id"] == clean["id"]  # same samples, same (curriculum) order
    assert set(committed) <= set(resumed["id"])  # nothing committed before the kill was redone or lost
    # per-batch seeds: the regenerated batches come out exactly as in the uninterrupted run
    assert resumed["completion_token_ids"] == clean["completion_token_ids"]
