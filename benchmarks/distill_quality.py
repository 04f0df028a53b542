"""What each distillation method buys, on the same data and the same number of steps.

The demo's setting (SmolLM2-135M-Instruct teacher, 10-layer student, 256 prompts, 60 steps at lr 1e-3,
batch 8), one student per method, all evaluated on the demo's held-out prompts and a gradable task:

    sft           CE on the teacher's sampled completions (T = 0.7): the demo's SFT-only student
    seq_kd        CE on the teacher's greedy completions (sequence-level KD, Kim & Rush 2016)
    forward_kl    0.9 KL(teacher || student) on the stored top-20 + 0.1 CE
    reverse_kl    0.9 KL(student || teacher) + 0.1 CE
    jsd           0.9 JSD(beta 0.5) + 0.1 CE
    skew_kl       0.9 skew KL(alpha 0.1) + 0.1 CE
    on_policy     trl GKD, lmbda 0.5 (half the batches student-generated), JSD beta 0.5

Reported: held-out KL to the teacher, top-1 agreement, and exact-match accuracy on the task (with the
teacher's own accuracy beside). Writes benchmarks/results/distill_quality.json.

    .venv/bin/python benchmarks/distill_quality.py [--steps 60] [--only forward_kl,sft]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent
GENERAL_DEMO = ROOT.parent / "configs" / "demo-general.yaml"  # the setting these figures were measured in
OUT = ROOT / "results" / "distill_quality.json"
TASK = ROOT.parent / "data" / "demo" / "task_facts.jsonl"


def div(name: str, **params) -> str:
    extra = "".join(f", {k}: {v}" for k, v in params.items())
    return f"train.loss=[{{name: {name}, weight: 0.9{extra}}}, {{name: ce, weight: 0.1}}]"


CE = "train.loss=[{name: ce, weight: 1.0}]"
VARIANTS = {
    "sft": ["train.mode=seq_kd", CE],
    "seq_kd": ["train.mode=seq_kd", CE, "generate.temperature=0"],
    "forward_kl": [div("forward_kl")],
    "reverse_kl": [div("reverse_kl")],
    "jsd": [div("jsd", beta=0.5)],
    "skew_kl": [div("skew_kl", alpha=0.1)],
    "on_policy": ["train.mode=on_policy", "train.on_policy.trainer=gkd", "train.on_policy.lmbda=0.5",
                  "train.on_policy.beta=0.5", "train.on_policy.max_new_tokens=48"],
}


def main() -> None:
    from llmdistill import store
    from llmdistill.config import load_config
    from llmdistill.pipeline import run_stages

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--only", default=",".join(VARIANTS))
    args = parser.parse_args()
    common = [f"output_dir={ROOT / '.work'}", f"train.max_steps={args.steps}", "train.sft_baseline=false",
              "train.save_steps=1000",
              f"eval.tasks=[{{name: facts, prompts: {TASK}, grader: contains, max_new_tokens: 24}}]"]
    results = json.loads(OUT.read_text())["variants"] if OUT.exists() else {}
    for name in args.only.split(","):
        overrides = [*common, *VARIANTS[name]]
        data = "greedy" if "generate.temperature=0" in overrides else "sampled"
        cfg = load_config(GENERAL_DEMO, [*overrides, f"name=quality-{data}"])
        started = time.monotonic()
        run_stages(cfg)
        metrics = store.read_json(cfg.run_dir / "eval" / "metrics.json")["models"]
        s, t = metrics["student"], metrics["teacher"]
        results[name] = {
            "data": data,
            "kl_to_teacher": round(s["kl_to_teacher"], 4),
            "top1_agreement": round(s["top1_agreement"], 4),
            "task_accuracy": round(s["tasks"]["facts"]["accuracy"], 4),
            "teacher_task_accuracy": round(t["tasks"]["facts"]["accuracy"], 4),
            "task_items": s["tasks"]["facts"]["total"],
            "train_seconds": store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]["seconds_this_attempt"],
            "wall_seconds": round(time.monotonic() - started, 1),
        }
        print(name, results[name], flush=True)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps({"steps": args.steps, "variants": results}, indent=2) + "\n")
    print(f"\nquality after {args.steps} steps (held-out: demo eval prompts; task: {TASK.name})")
    print("| method | data | KL to teacher | top-1 agreement | task accuracy | teacher's task accuracy |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['data']} | {r['kl_to_teacher']} | {r['top1_agreement']} | {r['task_accuracy']} | "
              f"{r['teacher_task_accuracy']} |")


if __name__ == "__main__":
    main()
