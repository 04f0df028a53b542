"""A secret in the environment never reaches a run directory or a log.

Keys are planted in the environment variables a user would keep them in; the config mentions them
only by reference (`${OPENAI_API_KEY}`, which llmdistill never expands: the resolved config keeps the
literal text). After a full `llmdistill run -v`, every byte of every file under the run directory and
the model cache, and the captured stdout/stderr, are searched for the keys.
"""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from conftest import PYTHON
from llmdistill.config import load_config

PLANTED = {
    "OPENAI_API_KEY": "sk-test-PLANTED-0c9f3e1a7b5d4e2f8a6c",
    "HF_TOKEN": "hf_PLANTEDtokenZqWx91",
    "LLMDISTILL_TEST_SECRET": "PLANTED-secret-5f1e",
}


def test_planted_keys_appear_in_no_file_and_no_log(tiny_config, tmp_path):
    path, data = tiny_config
    data["generate"]["system_prompt"] = "${OPENAI_API_KEY} answer briefly"  # a reference, never expanded
    path.write_text(yaml.safe_dump(data))
    cache = tmp_path / "model-cache"
    env = {**os.environ, **PLANTED, "LLMDISTILL_CACHE": str(cache)}
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "run", str(path), "-v"], capture_output=True, env=env,
                         timeout=900)
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-3000:]

    run_dir = load_config(path).run_dir
    files = [p for root in (run_dir, cache) if root.exists() for p in root.rglob("*") if p.is_file()]
    assert len(files) > 20  # shards, manifests, checkpoints, models, metrics, caches
    for key in PLANTED.values():
        needle = key.encode()
        assert needle not in res.stdout and needle not in res.stderr
        leaked = [str(p) for p in files if needle in p.read_bytes()]
        assert not leaked, f"{key} found in {leaked}"
    resolved = (run_dir / "config.resolved.yaml").read_text()
    assert "${OPENAI_API_KEY} answer briefly" in resolved  # kept as written


# ---- a key written into the config itself is refused before anything is written (issue 28, items 2-4)
KEY = "sk-proj-" + "Qm7xT2vK9pL4wZ8rN3cF6hJ1sD5gB0yE"  # made up, shaped like an OpenAI project key
IN_CONFIG = {
    "teacher.api.base_url": {"base_url": f"http://127.0.0.1:9/{KEY}/v1"},  # a key as a path segment
    "teacher.api.extra_body.authorization": {"extra_body": {"authorization": f"Bearer {KEY}"}},
    "teacher.api.base_url ": {"base_url": f"http://127.0.0.1:9/v1?code={KEY}"},  # a key in the query string
}


@pytest.mark.parametrize("where", IN_CONFIG)
def test_a_key_in_the_config_is_refused_and_written_nowhere(tiny_config, tmp_path, where):
    path, data = tiny_config
    data["teacher"].update(backend="openai", api={"base_url": "http://127.0.0.1:9/v1", "api_key_env": None,
                                                  "max_retries": 0, "max_connection_failures": 1,
                                                  **IN_CONFIG[where]})
    path.write_text(yaml.safe_dump(data))
    for command in (["validate", str(path)], ["generate", str(path), "-v"]):
        res = subprocess.run([PYTHON, "-m", "llmdistill.cli", *command], capture_output=True, text=True, timeout=300)
        assert res.returncode == 2, (command, res.returncode, res.stderr[-2000:])
        assert f"{where.strip()}: " in res.stderr and "put keys in the environment (api_key_env)" in res.stderr
        assert "Traceback" not in res.stderr and KEY not in res.stdout + res.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != path]
    assert not [p for p in written if KEY.encode() in p.read_bytes()]
    assert not list(tmp_path.rglob("config.resolved.yaml"))  # refused before the run directory is made
