"""Two processes under `accelerate launch` on the CPU (gloo), with the accelerate configs we ship (DDP and
FSDP2), follow the same loss curve as one process with the same global batch; so does one process with
sequence packing and gradient checkpointing."""

import subprocess

import pytest
import torch
import yaml

from conftest import PYTHON, REPO, make_tiny_config, write_prompts
from llmdistill import store
from llmdistill.config import load_config
from llmdistill.pipeline import run_stages

STEPS = ["train.max_steps=5", "train.logging_steps=1", "train.save_steps=10", "train.sft_baseline=false",
         "train.lr=0.001", "train.loss=[{name: forward_kl, weight: 0.7, temperature: 2.0}, {name: ce, weight: 0.3}]"]


def losses_of(run_dir):
    history = store.read_json(run_dir / "train" / "log_history.student.json")
    return [h["loss"] for h in history if "loss" in h]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny):
    """The reference: one process, batch 4, plain padded batches. 24 prompts, so that the 5 steps of 4 rows are
    whole batches of the first epoch however many completions the filter drops (a sampled completion can come
    out empty on one CPU and not on another; a short last batch is split differently over 2 processes)."""
    tmp = tmp_path_factory.mktemp("distributed")
    path, data = make_tiny_config(tmp, tiny)
    data["generate"]["prompts"] = str(write_prompts(tmp / "prompts24.jsonl", n_per_level=8))
    path.write_text(yaml.safe_dump(data))
    single = load_config(path, [*STEPS, "train.batch_size=4", "name=single"])
    run_stages(single, ("generate", "filter", "train"))
    return path, losses_of(single.run_dir), single


def weights(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "train" / "student" / "model.safetensors")


def launch(path, overrides, accelerate_config, env=None, ok=True):
    """`accelerate launch --config_file configs/accelerate/<name>.yaml` on 2 CPU processes, as the docs say.
    FSDP goes through tests/fsdp_on_cpu.py, which lifts accelerate's accelerators-only gate on FSDP."""
    run_stages(load_config(path, overrides), ("generate", "filter"))
    program = [str(REPO / "tests" / "fsdp_on_cpu.py")] if "fsdp" in accelerate_config else ["-m", "llmdistill.cli"]
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs" / "accelerate" /
           accelerate_config), "--num_processes", "2", "--mixed_precision", "no", *program, "train", str(path),
           *overrides]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    if not ok:
        assert res.returncode != 0
        return None
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = load_config(path, overrides)
    assert store.read_success(cfg.run_dir / "train")["processes"] == 2
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("accelerate_config", ["ddp.yaml", "fsdp2.yaml"])
def test_two_processes_match_one(one_process, accelerate_config):
    path, one, single = one_process
    cfg = launch(path, [*STEPS, "train.batch_size=2", f"name={accelerate_config[:-5]}"], accelerate_config)
    checkpoint = cfg.run_dir / "train" / "checkpoints" / "student" / "checkpoint-5"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() == ("fsdp" in accelerate_config)  # FSDP's sharded save
    both = losses_of(cfg.run_dir)
    assert len(one) == len(both) == 5
    assert both == pytest.approx(one, abs=1e-5)
    # the student is gathered into one ordinary HF model, the weights of the one-process run
    mine, theirs = weights(cfg.run_dir), weights(single.run_dir)
    assert mine.keys() == theirs.keys()
    for name in theirs:
        torch.testing.assert_close(mine[name], theirs[name], rtol=1e-4, atol=1e-5, msg=name)


def test_packing_and_checkpointing_follow_the_plain_run(one_process):
    path, one, _ = one_process
    cfg = load_config(path, [*STEPS, "train.batch_size=4", "name=packed", "train.packing=true",
                             "train.gradient_checkpointing=true"])
    run_stages(cfg, ("generate", "filter", "train"))
    assert losses_of(cfg.run_dir) == pytest.approx(one, abs=1e-5)


@pytest.mark.slow
def test_fsdp2_resumes_from_its_sharded_checkpoint_after_a_kill(one_process):
    import os

    path, one, _ = one_process
    overrides = [*STEPS, "train.batch_size=2", "name=fsdp-kill", "train.save_steps=2"]
    # both processes SIGKILL themselves after step 3: checkpoint-2 (sharded) is the last one saved
    launch(path, overrides, "fsdp2.yaml", env={**os.environ, "LLMDISTILL_FAULT": "train:step:3"}, ok=False)
    cfg = load_config(path, overrides)
    checkpoints = cfg.run_dir / "train" / "checkpoints" / "student"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2"]
    assert (checkpoints / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()
    launch(path, overrides, "fsdp2.yaml")
    assert losses_of(cfg.run_dir) == pytest.approx(one, abs=1e-5)
