"""`llmdistill plan`'s estimate against the measured memory of real training steps on this CPU.

Claim checked (issue 15, item 3): for the demo config's student, the estimate of each component group and
of the peak is within 25 % of what a training step holds, at the demo's batch and at a longer sequence,
with and without gradient checkpointing.

Each variant runs in a fresh subprocess: the demo's student architecture (SmolLM2 pruned to 18 layers;
random weights, the same tensors as the pruned checkpoint), our DistillTrainer with the demo's
TrainingArguments (fused AdamW, fp32), synthetic rows of exactly max_seq_len tokens (one row a token
shorter, so batches carry a padding mask as real ones do) with a stored top-20 on every completion token.
Two optimizer steps; step 1 creates the AdamW states, step 2 is measured. Memory is the process's resident
set (/proc/self/statm) and its high-water mark (VmHWM), reset before each phase by writing 5 to
/proc/self/clear_refs; glibc runs with MALLOC_MMAP_THRESHOLD_=65536, so every tensor over 64 KiB is its own
mapping, given back when freed, and RSS follows the live tensors instead of malloc's caches. Groups:

    weights          RSS after the model is built - RSS before it
    AdamW states     RSS at step 2's start - RSS at step 1's start (gradients are None between steps)
    activations      RSS at the decoder's output (a forward hook) - RSS at step 2's start
    loss retained    RSS after compute_loss - RSS at the decoder's output (head + hidden gradients)
    loss chunk       VmHWM during compute_loss - RSS after it (one chunk's [chunk, V] tensors)
    gradients        RSS before optimizer.step - RSS at step 2's start
    step peak        VmHWM over step 2 - RSS at step 2's start   (estimate: the largest phase)
    total            VmHWM over step 2 - RSS before the model     (estimate: the peak)

    .venv/bin/python benchmarks/plan_memory.py [--config configs/demo.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "plan_memory.json"
VARIANTS = {  # name: (batch_size, max_seq_len, gradient checkpointing)
    "demo (8 x 128)": (8, 128, False),
    "demo + checkpointing": (8, 128, True),
    "8 x 256": (8, 256, False),
    "8 x 256 + checkpointing": (8, 256, True),
}
GOAL = 0.25
K = 20


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hwm() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def setup_for(cfg, batch: int, seq: int, ckpt: bool):
    from llmdistill.plan import Setup

    return replace(Setup.of(cfg), batch_size=batch, seq_len=seq, checkpointing=ckpt)


def child(config: str, batch: int, seq: int, ckpt: bool) -> dict:
    import datasets
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback, TrainingArguments

    from llmdistill import models, plan
    from llmdistill.config import TrainConfig, load_config
    from llmdistill.train.data import Collator
    from llmdistill.train.stage import trainer_arguments
    from llmdistill.train.trainer import DistillTrainer

    torch.set_num_threads(2)
    torch.manual_seed(0)
    config_knob = "gradient_checkpointing" in TrainConfig.model_fields  # else the model's own switch
    cfg = load_config(config, [f"train.gradient_checkpointing={str(ckpt).lower()}"] if config_knob else [])
    arch, _ = plan.student_arch(cfg)
    hf = plan._hf_config(cfg.teacher.model, cfg.teacher.revision)  # the teacher's, resized as prune.py does
    hf.num_hidden_layers, hf.intermediate_size = arch.layers, arch.intermediate
    hf.num_attention_heads, hf.hidden_size, hf.head_dim = arch.heads, arch.hidden, arch.head_dim
    rng = np.random.default_rng(0)
    rows = []
    for i in range(batch * 2):  # two steps of `batch` rows; the last row of each is one token short
        n = seq - (1 if i % batch == batch - 1 else 0)
        ids = rng.integers(3, arch.vocab, n).tolist()
        lps = np.sort(np.log(rng.dirichlet(np.ones(K + 1), n - 1)[:, :K]), -1)[:, ::-1]
        rows.append({"input_ids": ids, "prompt_len": 1, "row": i,
                     "topk_ids": rng.integers(0, arch.vocab, (n - 1, K)).tolist(), "topk_logprobs": lps.tolist()})
    examples = datasets.Dataset.from_list(rows)
    marks: dict[str, list] = {}

    def mark(name: str, value: int) -> None:
        marks.setdefault(name, []).append(value)

    before_model = rss()
    model = AutoModelForCausalLM.from_config(hf, dtype=torch.float32)
    after_model = rss()
    if ckpt and not config_knob:
        model.gradient_checkpointing_enable()

    class Probe(DistillTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            hook = model.get_decoder().register_forward_hook(lambda *a: mark("decoder_out", rss()))
            try:
                out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            finally:
                hook.remove()
            mark("loss_out", rss())
            mark("forward_peak", hwm())
            return out

    class Phases(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            mark("step_begin", rss())
            reset_hwm()

        def on_pre_optimizer_step(self, args, state, control, **kw):
            mark("pre_optimizer", rss())
            mark("until_optimizer_peak", hwm())

        def on_step_end(self, args, state, control, **kw):
            mark("step_end_peak", hwm())

    with tempfile.TemporaryDirectory() as tmp:
        args = {**trainer_arguments(cfg, tmp), "max_steps": 2, "save_steps": 1000, "logging_steps": 1000,
                "disable_tqdm": True, "train_sampling_strategy": "sequential"}
        trainer = Probe(model=model, args=TrainingArguments(**args), train_dataset=examples,
                        data_collator=Collator(0, with_teacher=True), loss_terms=cfg.train.loss, tail=cfg.train.tail,
                        capture_temperature=1.0, chunk_tokens=cfg.train.chunk_tokens)
        trainer.add_callback(Phases())
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    s = 1  # step 2
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    begin = marks["step_begin"][s]
    measured = {
        "weights": after_model - before_model,
        "AdamW states": marks["step_begin"][1] - marks["step_begin"][0],
        "activations": marks["decoder_out"][s] - begin,
        "loss retained": marks["loss_out"][s] - marks["decoder_out"][s],
        "loss chunk": marks["forward_peak"][s] - marks["loss_out"][s],
        "gradients": marks["pre_optimizer"][s] - begin,
        "step peak": max(marks["until_optimizer_peak"][s], marks["step_end_peak"][s]) - begin,
        "total": max(marks["until_optimizer_peak"][s], marks["step_end_peak"][s]) - before_model,
    }
    return {"measured": measured, "marks_mib": {k: [round(x / 2**20, 1) for x in v] for k, v in marks.items()},
            "parameters": models.count_parameters(model), "seconds": round(seconds, 1),
            "checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
            "optimizer": f"{type(opt).__name__} (fused {opt.defaults.get('fused')})"}


def estimated(cfg, batch: int, seq: int, ckpt: bool) -> dict:
    from llmdistill import plan

    arch, _ = plan.student_arch(cfg)
    e = plan.estimate(arch, setup_for(cfg, batch, seq, ckpt))
    c = e["components"]
    return {
        "weights": c["weights (fp32 master)"],
        "AdamW states": c["AdamW states (2 x fp32)"],
        "activations": c["activations (saved for backward)"],
        "loss retained": c["loss: head gradient + hidden gradient"],
        "loss chunk": c["loss: one chunk's logits"],
        "gradients": c["gradients"],
        "step peak": max(e["phases"].values()),
        "total": e["peak"],
        "_parameters": e["parameters"],
        "_peak_phase": e["peak_phase"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--child", nargs=4, metavar=("CONFIG", "BATCH", "SEQ", "CKPT"))
    args = parser.parse_args()
    if args.child:
        c, b, s, k = args.child
        print(json.dumps(child(c, int(b), int(s), k == "1")))
        return
    from llmdistill.config import load_config

    cfg = load_config(args.config, [])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    results = []
    for name, (batch, seq, ckpt) in VARIANTS.items():
        res = subprocess.run([sys.executable, __file__, "--child", args.config, str(batch), str(seq),
                              "1" if ckpt else "0"], capture_output=True, text=True, env=env, cwd=REPO)
        if res.returncode != 0:
            raise SystemExit(f"{name}: {(res.stderr.strip().splitlines() or ['exit ' + str(res.returncode)])[-1]}")
        got = json.loads(res.stdout.strip().splitlines()[-1])
        est = estimated(cfg, batch, seq, ckpt)
        groups = {g: {"estimate_mib": round(est[g] / 2**20, 1), "measured_mib": round(m / 2**20, 1),
                      "ratio": round(est[g] / m, 3) if m > 0 else None} for g, m in got["measured"].items()}
        results.append({"variant": name, "batch_size": batch, "max_seq_len": seq, "gradient_checkpointing": ckpt,
                        "parameters_measured": got["parameters"], "parameters_estimated": est["_parameters"],
                        "peak_phase": est["_peak_phase"], "seconds": got["seconds"], "optimizer": got["optimizer"],
                        "groups": groups})
    print("| variant | group | estimate MiB | measured MiB | estimate / measured |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in results:
        for g, v in r["groups"].items():
            flag = "" if v["ratio"] is None or abs(v["ratio"] - 1) <= GOAL else " (off by more than 25 %)"
            print(f"| {r['variant']} | {g} | {v['estimate_mib']:,} | {v['measured_mib']:,} | {v['ratio']}{flag} |")
    print("parameters: " + ", ".join(f"{r['variant']} {r['parameters_measured']:,} measured / "
                                     f"{r['parameters_estimated']:,} estimated" for r in results[:1]))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"config": os.path.relpath(args.config, REPO), "goal_relative": GOAL,
                               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "malloc_mmap_threshold": 65536, "results": results}, indent=2) + "\n")
    print(f"-> {OUT}")


if __name__ == "__main__":
    main()
