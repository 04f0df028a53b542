"""Two processes under `accelerate launch` on the CPU (gloo) follow the same loss curve as one process
with the same global batch."""

import subprocess

import pytest

from conftest import PYTHON, make_tiny_config
from llmdistill import store
from llmdistill.config import load_config
from llmdistill.pipeline import run_stages

STEPS = ["train.max_steps=4", "train.logging_steps=1", "train.save_steps=10", "train.sft_baseline=false",
         "train.lr=0.001", "train.loss=[{name: forward_kl, weight: 0.7, temperature: 2.0}, {name: ce, weight: 0.3}]"]


def losses_of(run_dir):
    history = store.read_json(run_dir / "train" / "log_history.student.json")
    return [h["loss"] for h in history if "loss" in h]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, tiny):
    path, _ = make_tiny_config(tmp_path, tiny)
    single = load_config(path, [*STEPS, "train.batch_size=4", "name=single"])
    run_stages(single, ("generate", "filter", "train"))

    two = [*STEPS, "train.batch_size=2", "name=ddp"]
    run_stages(load_config(path, two), ("generate", "filter"))
    # accelerate's multi-process launcher (torchrun underneath); without CUDA the processes use gloo
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "llmdistill.cli", "train", str(path), *two]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = load_config(path, two)
    assert store.read_success(ddp.run_dir / "train")["processes"] == 2
    assert (ddp.run_dir / "train" / "student" / "config.json").exists()
    one, both = losses_of(single.run_dir), losses_of(ddp.run_dir)
    assert len(one) == len(both) == 4
    assert both == pytest.approx(one, rel=1e-4)
