"""Measure the teacher (SmolLM2-135M-Instruct) on the plural task: the held-out split and a fixed train sample.

Greedy decoding; the plain prompt as one user turn through the model's chat template; graded with the
`contains` grader (llmdistill.graders), as configs/plurals-task.yaml grades it. One generation of the longest
length gives every shorter one: greedy decoding is token by token, so its first n new tokens are what
max_new_tokens=n would give.

    PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python data/plurals/measure_teacher.py [--backend vllm] [--out F]

`--backend hf` (default) is transformers `generate`, batched with left padding, as the eval stage runs it;
`--backend vllm` is the product's vllm teacher (llmdistill.teachers, temperature 0), 2-4x faster here.
Prints a markdown table per split and kind; `--out` also writes every reply.
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
MODEL = "smollm2-135m-instruct"
TRAIN_SAMPLE = 200
SAMPLE_SEED = 13
LENGTHS = (16, 24)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_sample(rows: list[dict], n: int = TRAIN_SAMPLE) -> list[dict]:
    """`n` train rows drawn with a fixed seed."""
    return random.Random(SAMPLE_SEED).sample(rows, n)


def generate_hf(prompts: list[str], batch: int, threads: int) -> list[list[int]]:
    """Greedy new-token ids per prompt (transformers, left padding), cut at the first EOS."""
    import torch

    from llmdistill import models

    torch.set_num_threads(threads)
    model, tok = models.load_causal_lm(MODEL), models.load_tokenizer(MODEL)
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
            out.append(row[:row.index(tok.eos_token_id)] if tok.eos_token_id in row else row)
    return out


def generate_vllm(prompts: list[str]) -> list[list[int]]:
    """Greedy new-token ids per prompt from the product's vllm teacher backend (temperature 0)."""
    from llmdistill.config import TeacherConfig
    from llmdistill.teachers import Sampling, build_teacher

    tcfg = TeacherConfig(model=MODEL, backend="vllm", dtype="float32",
                         vllm={"max_model_len": 512, "enforce_eager": True, "cpu_kvcache_gib": 2})
    sampling = Sampling(max_new_tokens=max(LENGTHS), temperature=0.0, top_p=1.0, topk=1, logprob_mode="raw",
                        too_long="error")
    teacher = build_teacher(tcfg, sampling)
    try:
        gens = teacher.generate([[{"role": "user", "content": p}] for p in prompts], seed=0)
    finally:
        close = getattr(teacher, "close", None)
        if close:
            close()
    return [g.token_ids or [] for g in gens]


def measure(splits: dict[str, list[dict]], backend: str, batch: int, threads: int, kind_of,
            out: Path | None) -> None:
    """Generate, grade at every length of LENGTHS, print the table, write the replies to `out`."""
    from llmdistill import graders, models

    tok = models.load_tokenizer(MODEL)
    prompts = [r["prompt"] for rows in splits.values() for r in rows]
    t0 = time.time()
    gens = generate_vllm(prompts) if backend == "vllm" else generate_hf(prompts, batch, threads)
    print(f"{backend}: {len(prompts)} replies in {time.time() - t0:.0f} s\n")
    score = defaultdict(lambda: [0] * (len(LENGTHS) + 1))  # (split, kind) -> [correct per length..., n]
    replies, it = [], iter(gens)
    for split, rows in splits.items():
        for r in rows:
            ids = next(it)
            texts = {n: tok.decode(ids[:n], skip_special_tokens=True) for n in LENGTHS}
            ok = {n: graders.contains(texts[n], r["answer"]) for n in LENGTHS}
            for key in ((split, kind_of(r)), (split, "total")):
                for j, n in enumerate(LENGTHS):
                    score[key][j] += ok[n]
                score[key][-1] += 1
            replies.append({"split": split, "kind": kind_of(r), "prompt": r["prompt"], "answer": r["answer"],
                            "reply": texts[max(LENGTHS)], **{f"ok{n}": ok[n] for n in LENGTHS}})
    print("| split | kind | n | " + " | ".join(f"max_new_tokens={n}" for n in LENGTHS) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in LENGTHS) + " |")
    for (split, k), counts in sorted(score.items(), key=lambda kv: (kv[0][0], kv[0][1] == "total", kv[0][1])):
        n = counts[-1]
        cells = " | ".join(f"{c}/{n} ({100 * c / n:.0f} %)" for c in counts[:-1])
        print(f"| {split} | {'**total**' if k == 'total' else k} | {n} | {cells} |")
    if out:
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in replies), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write every reply here (JSONL)")
    args = ap.parse_args()
    splits = {"heldout": read(HERE / "heldout.jsonl"), "train sample": train_sample(read(HERE / "train.jsonl"))}
    measure(splits, args.backend, args.batch, args.threads, lambda r: r["tags"][2], args.out)


if __name__ == "__main__":
    sys.exit(main())
