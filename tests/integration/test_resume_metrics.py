"""A train stage killed and resumed reports what an uninterrupted run reports: the same train/metrics.json
(timings aside) and the same log history, with checkpoints that fall between logging steps.

Every attempt is a real `llmdistill train` process (one thread each, so the arithmetic is the same in
every process); the kills are SIGKILLs at exact points (llmdistill/faults.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import yaml

from conftest import PYTHON, make_tiny_config
from llmdistill import store
from llmdistill.config import load_config
from llmdistill.pipeline import run_stages

KILLED = -9
TIMING = {"seconds_this_attempt", "train_runtime", "train_samples_per_second", "train_steps_per_second",
          "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


def train(config, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("LLMDISTILL_FAULT", None)
    if fault:
        env["LLMDISTILL_FAULT"] = fault
    return subprocess.run([PYTHON, "-m", "llmdistill.cli", "train", str(config)], capture_output=True, text=True,
                          env=env, timeout=600)


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def steps_logged(history: list[dict]) -> list[dict]:
    """The per-step entries (training and held-out), without Trainer's end-of-attempt summary."""
    return [h for h in history if "train_runtime" not in h]


def test_killed_and_resumed_train_reports_the_uninterrupted_metrics(tmp_path, tiny):
    path, data = make_tiny_config(tmp_path, tiny)
    # checkpoints at 2, 4, 6; losses logged every 3 steps: a checkpoint falls between logging steps
    data["train"].update(max_steps=6, save_steps=2, logging_steps=3, sft_baseline=False, eval_every=3,
                         eval_fraction=0.2)
    path.write_text(yaml.safe_dump(data))
    run_stages(load_config(path), ("generate", "filter"))
    ref = load_config(path).run_dir
    resumed_path = tmp_path / "resumed.yaml"
    resumed_path.write_text(yaml.safe_dump({**data, "name": "resumed"}))
    run = load_config(resumed_path).run_dir
    for stage in ("generate", "filter"):  # the same data for both runs
        shutil.copytree(ref / stage, run / stage)

    res = train(path)
    assert res.returncode == 0, res.stderr[-3000:]
    # killed after step 5 (resumes from checkpoint-4), then right after the final checkpoint (the rerun
    # takes the finished checkpoint's weights without training), then the rerun that completes
    for fault in ("train:step:5", "train:checkpoint:1"):
        res = train(resumed_path, fault)
        assert res.returncode == KILLED, (fault, res.returncode, res.stderr[-3000:])
    res = train(resumed_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "finished at" in res.stderr

    got, want = store.read_json(run / "train/metrics.json"), store.read_json(ref / "train/metrics.json")
    assert without_timing(got) == without_timing(want)
    assert got["student"]["steps"] == 6 and got["student"]["train_loss"] is not None
    history = store.read_json(ref / "train/log_history.student.json")
    assert without_timing(steps_logged(store.read_json(run / "train/log_history.student.json"))) == \
        without_timing(steps_logged(history))
    # every step is in the log: at the logging steps (3, 6) and at the checkpoints (2, 4, 6)
    assert [h["step"] for h in history if "loss" in h] == [2, 3, 4, 6]
    assert [h["step"] for h in history if "eval_loss" in h] == [3, 6]
