"""A damaged or replaced checkpoint on resume (issue 28, item 11): one line naming it and what to do, or a
resume from the intact checkpoint before it, never a traceback, and a pickle's payload never runs.

The checkpoints are real (a `llmdistill train` process SIGKILLed after step 5 of 6, saving every 2 steps),
then damaged as a disk or a hostile copy would: model.safetensors cut in half, optimizer.pt and
rng_state.pth replaced by pickles whose payload would create a marker file.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import subprocess

import pytest
import torch
import yaml

from conftest import PYTHON, make_tiny_config
from llmdistill import store
from llmdistill.config import load_config
from llmdistill.pipeline import run_stages
from llmdistill.train.checkpoints import damage

pytestmark = pytest.mark.slow


class Payload:
    """Unpickling this runs `touch MARKER`: what a hostile checkpoint file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def train(config, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LLMDISTILL_FAULT", None)
    if fault:
        env["LLMDISTILL_FAULT"] = fault
    return subprocess.run([PYTHON, "-m", "llmdistill.cli", "train", str(config)], capture_output=True, text=True,
                          env=env, timeout=600)


def cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_damaged_checkpoint_is_one_line_or_an_earlier_resume(tmp_path, tiny, caplog):
    path, data = make_tiny_config(tmp_path, tiny)
    data["train"].update(max_steps=6, save_steps=2, sft_baseline=False)
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    run_stages(cfg, ["generate", "filter"])
    assert train(path, "train:step:5").returncode == -9
    ckpts = cfg.run_dir / "train" / "checkpoints" / "student"
    two, four = ckpts / "checkpoint-2", ckpts / "checkpoint-4"
    assert damage(two) is None and damage(four) is None
    pristine = tmp_path / "pristine-2"
    shutil.copytree(two, pristine)
    marker = tmp_path / "PAYLOAD-RAN"

    # every kind of damage is found, by reading only: no payload runs
    for name, spoil, reason in (
        ("model.safetensors", cut_in_half, "model.safetensors: SafetensorError"),
        ("optimizer.pt", lambda p: p.write_bytes(pickle.dumps({"state": Payload(marker)})),
         "optimizer.pt: not a plain tensor file"),
        ("rng_state.pth", lambda p: torch.save({"python": Payload(marker)}, p), "rng_state.pth: not a plain tensor"),
        ("optimizer.pt", cut_in_half, "optimizer.pt: RuntimeError: PytorchStreamReader failed"),
        ("model.safetensors", lambda p: p.unlink(), "holds no model weights"),
    ):
        spoil(two / name)
        assert reason in (damage(two) or ""), (name, damage(two))
        shutil.copy2(pristine / name, two / name)
    assert damage(two) is None and not marker.exists()

    # both damaged: one line naming the newest and saying to delete them; nothing ran, nothing was saved
    cut_in_half(four / "model.safetensors")
    (two / "optimizer.pt").write_bytes(pickle.dumps({"state": Payload(marker)}))
    res = train(path)
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert len(errors) == 1 and f"the checkpoint {four} is damaged (model.safetensors: SafetensorError" in errors[0]
    assert f"no earlier checkpoint is intact: delete them (rm -r {four} {two})" in errors[0], errors
    assert not marker.exists() and four.is_dir() and two.is_dir()  # kept for the user to look at
    assert not (cfg.run_dir / "train" / "student").exists()

    # the earlier one intact again: a warning names the damaged one, set aside, and training resumes from step 2
    shutil.copy2(pristine / "optimizer.pt", two / "optimizer.pt")
    with caplog.at_level(logging.WARNING, logger="llmdistill"):
        run_stages(cfg, ["train"])
    assert f"the checkpoint {four} is damaged (model.safetensors: SafetensorError" in caplog.text
    assert f"resuming from the earlier checkpoint {two}" in caplog.text
    assert (ckpts / "damaged-checkpoint-4").is_dir() and not marker.exists()
    metrics = store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]
    assert metrics["steps"] == 6 and metrics["train_loss"] is not None
    assert damage(ckpts / "checkpoint-6") is None
