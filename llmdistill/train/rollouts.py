"""On-policy samples from vLLM (train.on_policy.rollouts: vllm): the student writes its own completions in a
vLLM engine that holds its current weights, and trains on them with the usual loss terms.

    engine      `teachers.vllm.start_engine` on the student (a worker process under the vllm venv, or this
                process where vllm imports), started when training starts, with the weights training starts
                from (fresh or a resumed checkpoint's)
    refresh     every `refresh_every` optimizer steps the student's weights are written (safetensors, with an
                untied head and LoRA merged in) and reloaded into the engine in place; no restart
    batches     with probability lmbda (drawn per batch from the seed, the batch's rows and the weights'
                version, so a resumed run draws the same) a batch's teacher-written completions are
                replaced by the student's samples; the teacher (live, or served) then scores whatever the
                batch holds, so both kinds train through the same chunked losses

A batch is sampled when the trainer asks for it, i.e. from the weights of the step before (accelerate
reads one batch ahead): the samples are at most `refresh_every` steps old. Held-out batches (train.eval_every)
keep the teacher's completions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from llmdistill.config import TeacherConfig, VLLMOptions

log = logging.getLogger("llmdistill")

SEED_MASK = (1 << 63) - 1


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's weights as a plain (non-peft) checkpoint: LoRA layers give base + their delta, computed
    without touching the training weights."""
    try:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft absent: no LoRA either
        return dict(model.state_dict())
    if not isinstance(model, PeftModel):
        return dict(model.state_dict())
    base = model.get_base_model()
    state: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight.detach()
            for adapter in module.active_adapters:
                weight = weight + module.get_delta_weight(adapter).detach()
            state[f"{name}.weight"] = weight
    for key, value in base.state_dict().items():
        if "lora_" in key:
            continue
        state.setdefault(key.replace(".base_layer.", "."), value)
    return state


def write_weights(model, path: Path) -> None:
    """`model` (a causal LM, possibly peft-wrapped) as an HF checkpoint vLLM loads and reloads in place:
    config.json with an untied head and model.safetensors holding lm_head.weight of its own (vLLM's in-place
    reload does not follow a head tied to the embeddings)."""
    from safetensors.torch import save_file

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.to_dict()
    state = merged_state_dict(model)
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = base.get_output_embeddings().weight
    # every tensor its own contiguous fp32 copy: safetensors refuses shared storage
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in state.items()}
    config.update(tie_word_embeddings=False, torch_dtype="float32", dtype="float32")
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


class Rollouts:
    """The student's samples from a vLLM engine on its current weights (see the module docstring)."""

    def __init__(self, work_dir: Path, tokenizer, opts: VLLMOptions, max_seq_len: int, max_new_tokens: int,
                 temperature: float, seed: int, min_new_tokens: int | None = None, cut: bool = True):
        """min_new_tokens: the length budget grows from it to max_new_tokens as training progresses (`progress`,
        0 to 1, set by RefreshRollouts); cut: cut the samples' repetitive suffixes (repetition.py)."""
        self.dir, self.tokenizer, self.opts = Path(work_dir), tokenizer, opts
        self.max_seq_len, self.max_new_tokens, self.temperature, self.seed = (max_seq_len, max_new_tokens,
                                                                               temperature, seed)
        self.min_new_tokens, self.cut, self.progress = min_new_tokens, cut, 0.0
        self.engine = None
        self.version = 0  # weights written so far (0: not started)
        self.eos_ids: list[int] = []
        self._logged = (0, 0)  # (samples, sampled tokens) at the last training log entry (`log_values`)
        self.stats = {"batches_sampled": 0, "batches_teacher": 0, "samples": 0, "sampled_tokens": 0, "cut": 0,
                      "sample_seconds": 0.0, "refreshes": 0, "refresh_seconds": 0.0, "start_seconds": 0.0}

    def budget(self) -> int:
        """New tokens a sample may have now: min_new_tokens -> max_new_tokens over the training (short to long)."""
        if self.min_new_tokens is None:
            return self.max_new_tokens
        return round(self.min_new_tokens + (self.max_new_tokens - self.min_new_tokens) * self.progress)

    def _weights_dir(self, version: int) -> Path:
        return self.dir / f"weights-{version % 2}"  # two in turn: the engine never reads a half-written one

    def start(self, model, version: int) -> None:
        """Start the engine on `model`'s current weights, labelled `version` (the number of refreshes so far)."""
        from llmdistill.teachers.vllm import _eos_ids, start_engine

        started = time.monotonic()
        path = self._weights_dir(version)
        write_weights(model, path)
        self.tokenizer.save_pretrained(str(path))
        o = self.opts
        engine_args = {"dtype": "float32", **o.engine_args}
        context = getattr(model.config, "max_position_embeddings", None) or self.max_seq_len
        opts = o.model_copy(update={"engine_args": engine_args,
                                    "max_model_len": o.max_model_len or min(self.max_seq_len, context)})
        tcfg = TeacherConfig(model=str(path), backend="vllm", dtype=engine_args["dtype"], vllm=opts)
        log.info("train: on-policy rollouts from a vLLM engine on the student (refreshed from %s)", self.dir)
        self.engine = start_engine(tcfg, 0, "raw")
        self.max_len = min(self.max_seq_len, int(self.engine.info["max_model_len"]))
        self.eos_ids = _eos_ids(str(path), self.tokenizer)
        self.version = version
        self.stats["start_seconds"] += round(time.monotonic() - started, 2)

    def refresh(self, model) -> None:
        """Write the student's weights and reload them into the engine in place."""
        started = time.monotonic()
        path = self._weights_dir(self.version + 1)
        write_weights(model, path)
        self.engine.call({"op": "reload", "path": str(path)})
        self.version += 1
        self.stats["refreshes"] += 1
        self.stats["refresh_seconds"] += time.monotonic() - started

    def sample(self, prompts: list[list[int]], rows: list[int]) -> list[list[int]]:
        """One completion per prompt (token ids, EOS included when the student stopped), at most max_new_tokens
        and never past max_seq_len (nor the engine's context); each request seeded by (seed, row, weights'
        version)."""
        started = time.monotonic()
        params = []
        for prompt, row in zip(prompts, rows):
            room = min(self.budget(), self.max_len - len(prompt))
            params.append({"temperature": self.temperature, "top_p": 1.0, "top_k": 0, "max_tokens": max(room, 1),
                           "stop_token_ids": self.eos_ids, "skip_special_tokens": True,
                           "seed": _draw(self.seed, "sample", row, self.version) & SEED_MASK})
        outs = self.engine.call({"op": "generate", "prompts": prompts, "params": params, "k": 0})
        samples = [list(o["token_ids"]) for o in outs]
        if self.cut:
            from llmdistill.train.repetition import cut_repetition

            cut = [cut_repetition(s, set(self.eos_ids)) for s in samples]
            samples = [ids for ids, _ in cut]
            self.stats["cut"] += sum(was for _, was in cut)
        self.stats["samples"] += len(samples)
        self.stats["sampled_tokens"] += sum(len(s) for s in samples)
        self.stats["sample_seconds"] += time.monotonic() - started
        return samples

    def close(self) -> None:
        """Stop the engine and remove the weights written for it (the trainer's checkpoints hold them)."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def summary(self) -> dict:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in self.stats.items()}

    def log_values(self) -> dict:
        """For each training log entry (`DistillTrainer.extra_logs`): the counts so far as rollouts_<stat> (the
        timings stay in `summary`: the log history holds what a rerun repeats), and rollouts_mean_tokens, the mean
        length of the samples drawn since the last entry."""
        s = self.stats
        samples, tokens = s["samples"] - self._logged[0], s["sampled_tokens"] - self._logged[1]
        self._logged = (s["samples"], s["sampled_tokens"])
        out = {f"rollouts_{k}": v for k, v in s.items() if not k.endswith("_seconds")}
        if samples:
            out["rollouts_mean_tokens"] = round(tokens / samples, 2)
        return out


def _draw(seed: int, what: str, *keys: int) -> int:
    """A 64-bit number from the seed and keys (stable across processes and runs, unlike hash())."""
    text = ":".join(str(x) for x in (seed, what, *keys))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class OnPolicyCollator:
    """Wraps the training collator: with probability lmbda a batch's completions are the student's samples.
    Rows outside `train_rows` (the held-out ones) always keep the teacher's completions."""

    def __init__(self, collator, rollouts: Rollouts, lmbda: float, seed: int, train_rows: set[int]):
        self.collator, self.rollouts, self.lmbda, self.seed = collator, rollouts, lmbda, seed
        self.train_rows = train_rows

    def on_policy(self, rows: list[int]) -> bool:
        if self.lmbda >= 1.0:
            return True
        key = _draw(self.seed, "lmbda", self.rollouts.version, *rows)
        return (key >> 11) / float(1 << 53) < self.lmbda

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = [r["row"] for r in rows]
        if not all(i in self.train_rows for i in ids) or not self.on_policy(ids):
            if all(i in self.train_rows for i in ids):
                self.rollouts.stats["batches_teacher"] += 1
            return self.collator(rows)
        prompts = [list(r["input_ids"][: r["prompt_len"]]) for r in rows]
        samples = self.rollouts.sample(prompts, ids)
        self.rollouts.stats["batches_sampled"] += 1
        rows = [{**r, "input_ids": p + s, "n_completion": len(s)} for r, p, s in zip(rows, prompts, samples)]
        return self.collator(rows)


class RefreshRollouts(TrainerCallback):
    """Starts the engine when training starts (on the weights it starts from) and reloads the student's
    weights every `every` steps; stops the engine when training ends."""

    def __init__(self, rollouts: Rollouts, every: int):
        self.rollouts, self.every = rollouts, every

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.rollouts.progress = state.global_step / max(state.max_steps, 1)  # a resumed run's budget goes on
        if self.rollouts.engine is None:
            self.rollouts.start(model, state.global_step // self.every)
        elif self.rollouts.version != state.global_step // self.every:
            self.rollouts.refresh(model)
            self.rollouts.version = state.global_step // self.every

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.rollouts.progress = state.global_step / max(state.max_steps, 1)
        if state.global_step % self.every == 0:
            self.rollouts.refresh(model)

    def on_train_end(self, args, state, control, **kwargs):
        self.rollouts.close()
