"""A secret in the environment never reaches a run directory or a log.

Keys are planted in the environment variables a user would keep them in; the config mentions them
only by reference (`${OPENAI_API_KEY}`, which llmdistill never expands: the resolved config keeps the
literal text). After a full `llmdistill run -v`, every byte of every file under the run directory and
the model cache, and the captured stdout/stderr, are searched for the keys.
"""

from __future__ import annotations

import os
import subprocess

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
