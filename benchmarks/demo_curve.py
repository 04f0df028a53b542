"""Held-out task score against training steps for a finished run: where the demo's curve goes.

Grades the pruned student before training (step 0, `train/pruned`) and every kept checkpoint of the KD
student and the SFT-only student (`train/checkpoints/<variant>/checkpoint-N`, `train.save_steps` apart) on
the run's first `eval.tasks` entry, the way eval does (greedy, the task's grader and length), and writes
`benchmarks/results/demo_curve.json`. The last checkpoint is the final student, which eval already graded:
the table shows both, so they can be compared.

    .venv/bin/python benchmarks/demo_curve.py runs/demo [--config configs/demo.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

OUT = Path(__file__).resolve().parent / "results" / "demo_curve.json"
VARIANTS = {"student": "KD", "sft_baseline": "SFT-only"}


def grade(cfg, path: str) -> dict:
    from llmdistill import graders, models
    from llmdistill.evaluate.stage import _replies, task_items

    task = cfg.eval.tasks[0]
    items = task_items(cfg, task)
    tok = models.load_tokenizer(cfg.teacher.model)
    model = models.load_causal_lm(path).eval()
    replies = _replies(model, tok, items, task.max_new_tokens, cfg.eval.batch_size, "cpu", f"grade {path}")
    correct = sum(graders.grade(task.grader, r, p.answer, task.choices) for r, p in zip(replies, items))
    return {"correct": correct, "total": len(items), "accuracy": correct / len(items)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--config", type=Path, default=Path(__file__).resolve().parent.parent / "configs" / "demo.yaml",
                        help="the config the run was made with (default: the demo's)")
    args = parser.parse_args()
    from llmdistill import store
    from llmdistill.config import load_config

    cfg = load_config(args.config)
    train = args.run_dir / "train"
    points = {"pruned": {"step": 0, **grade(cfg, str(train / "pruned"))}}
    for variant in VARIANTS:
        ckpts = sorted((train / "checkpoints" / variant).glob("checkpoint-*"),
                       key=lambda p: int(re.sub(r"\D", "", p.name)))
        for ckpt in ckpts:
            step = int(ckpt.name.split("-")[1])
            points[f"{variant}@{step}"] = {"variant": variant, "step": step, **grade(cfg, str(ckpt))}
    metrics = store.read_json(args.run_dir / "eval" / "metrics.json")["models"]
    task = cfg.eval.tasks[0].name
    result = {"run_dir": str(args.run_dir), "task": task, "teacher": metrics["teacher"]["tasks"][task],
              "eval_final": {v: metrics[v]["tasks"][task] for v in VARIANTS if v in metrics}, "points": points}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    steps = sorted({p["step"] for p in points.values()})
    print(f"held-out {task}: teacher {result['teacher']['correct']} / {result['teacher']['total']}\n")
    print("| step | " + " | ".join(VARIANTS.values()) + " |")
    print("| ---: | " + " | ".join("---:" for _ in VARIANTS) + " |")
    for step in steps:
        row = []
        for variant in VARIANTS:
            p = points["pruned"] if step == 0 else points.get(f"{variant}@{step}")
            row.append("-" if p is None else f"{p['correct']} / {p['total']}")
        print(f"| {step} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
