"""generate.executor: ray on a real local Ray cluster (2 CPUs: 2 shard tasks at once) started by the driver,
`llmdistill generate CONFIG --executor ray --address local`, with the first attempt of shard 0 SIGKILLed by
itself after its third committed shard file: Ray retries the task, the retry resumes from the committed
batches, the merge finishes the stage, and the dataset equals a single-process run's row for row."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile

import pytest
import yaml

from conftest import PYTHON
from llmdistill import store
from llmdistill.config import load_config

pytestmark = pytest.mark.ray


@pytest.fixture()
def ray_env():
    """The environment of a driver whose Ray cluster lives in a temp dir of its own (a short path: Ray's unix
    sockets live under it) and stops with it; no usage stats, no token written to ~/.ray."""
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("LLMDISTILL_FAULT", None)
    yield env
    shutil.rmtree(tmp, ignore_errors=True)


def cli(*args, env=None, timeout=300):
    return subprocess.run([PYTHON, "-m", "llmdistill.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_a_killed_shard_task_is_retried_and_the_merged_dataset_equals_a_single_process_run(tiny_config, tmp_path,
                                                                                          ray_env):
    path, data = tiny_config
    data["generate"].update(n=2, batch_size=2, shard_rows=2)  # 24 samples, 12 batches: 6 files per shard
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    out = cfg.run_dir / "generate"

    env = {**ray_env, "LLMDISTILL_RAY_FAULT": "0=generate:shard:3"}  # shard 0's first attempt dies at its 3rd file
    res = cli("generate", path, "--executor", "ray", "--address", "local", "generate.ray_shards=2", env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    log = res.stderr
    assert "generate on Ray: 2 shards, 1 CPU and 0 GPU per task" in log
    assert "shard 0/2 retry: attempt 2 of 4" in log and "shard 1/2 retry" not in log
    assert "shard 0/2 finished (ran shard 0/2)" in log and "shard 1/2 finished (ran shard 1/2)" in log
    attempts = {i: store.read_json(cfg.run_dir / ".ray" / f"shard-00{i}-of-002.json")["attempts"] for i in (0, 1)}
    assert len(attempts[0]) == 2 and len(attempts[1]) == 1 and attempts[0][0]["pid"] != attempts[0][1]["pid"]
    # the retry (its worker's lines come prefixed with the task's name and pid) kept the first attempt's 3 files
    resumed = re.search(r"generate-shard-0-of-2 pid=(\d+)\)\S* \S+ INFO generate: resuming, (\d+) of 24", log)
    assert resumed and int(resumed[1]) == attempts[0][1]["pid"] and int(resumed[2]) >= 6, log[-4000:]

    success = store.read_success(out)  # the merge recorded success as `llmdistill merge` does
    assert success is not None and success["stage"] == "generate" and success["pending"] == 0
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["000-of-002.json", "001-of-002.json"]
    assert cli("validate", path).stdout.count("generate  fingerprint") == 1
    assert "done" in cli("validate", path).stdout.splitlines()[1]

    again = cli("generate", path, "--executor", "ray", "--address", "local", env=ray_env)
    assert again.returncode == 0 and "up to date" in again.stderr and "shards submitted" not in again.stderr

    data["output_dir"] = str(tmp_path / "single")
    single_path = tmp_path / "single.yaml"
    single_path.write_text(yaml.safe_dump(data))
    assert cli("generate", single_path).returncode == 0
    single_out = load_config(single_path).run_dir / "generate"
    assert store.read_success(single_out)["fingerprint"] == success["fingerprint"]
    on_ray, single = store.read_table(out), store.read_table(single_out)
    assert on_ray.num_rows == len(set(on_ray["id"].to_pylist())) == 24
    assert on_ray.to_pylist() == single.to_pylist()  # every column, row for row, in plan order
    assert store.read_manifest(out)["counts"] == store.read_manifest(single_out)["counts"]


def test_ray_errors_are_one_line(tiny_config, ray_env):
    path, _ = tiny_config
    bad = cli("generate", path, "--executor", "ray", "--address", "127.0.0.1:1", env=ray_env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith("llmdistill: error: generate.ray_address 127.0.0.1:1: no Ray cluster answers there")
    both = cli("generate", path, "--executor", "ray", "--shard", "0/2", env=ray_env)
    assert both.returncode == 2 and "give one of them" in both.stderr
    local = cli("generate", path, "generate.ray_shards=2", env=ray_env)
    assert local.returncode == 2 and "ray_shards set, but executor is local" in local.stderr
    # a UserError inside a task (a prompt the teacher's context cannot hold, too_long: error) is one line, exit 2
    cfg = load_config(path)
    long_prompt = cfg.generate.prompts[0].parent / "long.jsonl"
    long_prompt.write_text(json.dumps({"prompt": "why " * 600, "level": 1}) + "\n")
    failed = cli("generate", path, "--executor", "ray", "--address", "local", "generate.ray_shards=1",
                 f"generate.prompts={long_prompt}", "generate.too_long=error", env=ray_env)
    assert failed.returncode == 2, failed.stderr[-3000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("llmdistill: error: generate on Ray: shard 0/1: ") and "long.jsonl:1" in last, last
    assert "Traceback" not in failed.stderr and "retry" not in failed.stderr


@pytest.mark.ray
def test_a_dead_cluster_found_by_auto_is_one_line_at_once(tiny_config, ray_env):
    """--address auto joins what Ray finds ($RAY_ADDRESS, or the cluster `ray start` last started here): a dead
    one is one line, where Ray itself printed 20 warning lines over 21 s (minutes, where nothing answers)."""
    path, _ = tiny_config
    with socket.socket() as s:  # a local port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = cli("generate", path, "--executor", "ray", "--address", "auto", env={**ray_env,
                                                                              "RAY_ADDRESS": f"127.0.0.1:{port}"})
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"llmdistill: error: generate.ray_address auto (found: 127.0.0.1:{port}): no Ray cluster answers there "
        "(Connection refused); start one with `ray start --head` or check the address"]
