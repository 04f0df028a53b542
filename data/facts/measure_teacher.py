"""Measure the teacher (SmolLM2-135M-Instruct) on the fact task: held-out split and a fixed sample of train.

Greedy decoding; the plain prompt as one user turn through the model's chat template
(`llmdistill.models.encode_prompt`); graded with `build_task.grade_contains`. One generation with
max_new_tokens=24 gives both figures: greedy decoding is token by token, so its first 16 new tokens are what
max_new_tokens=16 would give (a reply that ended before 16 tokens is the same in both).

    PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python data/facts/measure_teacher.py [--out FILE.jsonl]

Prints a markdown table per category and split; `--out` also writes every reply.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build_facts  # noqa: E402

MODEL = "smollm2-135m-instruct"
TRAIN_SAMPLE = 200
SAMPLE_SEED = 13
LENGTHS = (16, 24)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_sample(rows: list[dict]) -> list[dict]:
    """TRAIN_SAMPLE rows, the same number from each category, drawn with a fixed seed."""
    by_cat = defaultdict(list)
    for r in rows:
        by_cat[build_facts.category(r)].append(r)
    per = TRAIN_SAMPLE // len(by_cat)
    rng = random.Random(SAMPLE_SEED)
    return [r for cat in sorted(by_cat) for r in rng.sample(by_cat[cat], per)]


def generate(model, tok, prompts: list[str], batch: int) -> list[list[int]]:
    import torch

    from llmdistill import models

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for i in range(0, len(prompts), batch):
        ids = [models.encode_prompt(tok, [{"role": "user", "content": p}]) for p in prompts[i:i + batch]]
        width = max(map(len, ids))
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        with torch.no_grad():
            gen = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=max(LENGTHS), pad_token_id=pad)
        for row in gen[:, width:].tolist():
            if tok.eos_token_id in row:
                row = row[:row.index(tok.eos_token_id)]
            out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write every reply here (JSONL)")
    args = ap.parse_args()
    import torch

    from llmdistill import models

    torch.set_num_threads(args.threads)
    model, tok = models.load_causal_lm(MODEL), models.load_tokenizer(MODEL)
    splits = {"heldout": read(build_facts.HELDOUT), "train sample": train_sample(read(build_facts.TRAIN))}
    score = defaultdict(lambda: [0, 0, 0])  # (split, category) -> [correct@16, correct@24, n]
    replies = []
    t0 = time.time()
    for split, rows in splits.items():
        gens = generate(model, tok, [r["prompt"] for r in rows], args.batch)
        for r, ids in zip(rows, gens):
            texts = {n: tok.decode(ids[:n], skip_special_tokens=True) for n in LENGTHS}
            ok = {n: build_facts.grade_contains(texts[n], r["answer"]) for n in LENGTHS}
            for key in ((split, build_facts.category(r)), (split, "total")):
                score[key][0] += ok[16]
                score[key][1] += ok[24]
                score[key][2] += 1
            replies.append({"split": split, "category": build_facts.category(r), "prompt": r["prompt"],
                            "answer": r["answer"], "reply": texts[24], "ok16": ok[16], "ok24": ok[24]})
    print(f"generated {len(replies)} replies in {time.time() - t0:.0f} s\n")
    print("| split | category | n | max_new_tokens=16 | max_new_tokens=24 |")
    print("| --- | --- | --- | --- | --- |")
    for (split, cat), (c16, c24, n) in sorted(score.items(), key=lambda kv: (kv[0][0], kv[0][1] == "total",
                                                                              kv[0][1])):
        name = f"**{cat}**" if cat == "total" else cat
        print(f"| {split} | {name} | {n} | {c16}/{n} ({100 * c16 / n:.0f} %) | {c24}/{n} ({100 * c24 / n:.0f} %) |")
    if args.out:
        args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in replies))


if __name__ == "__main__":
    main()
