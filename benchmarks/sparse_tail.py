"""How close the stored top-k KL (tail: bucket) comes to the dense KL at temperature T, on real LLM logits.

The teacher is SmolLM2-135M-Instruct (vocabulary 49,152); the text is real (the demo's eval prompts and
held-out tweets from data/sentiment), run through the teacher's chat template. Students, all on the
teacher's tokenizer:

- `teacher`: the teacher itself (every sparse KL must be 0 at every T; the dense one is 0);
- `drop-2`: the teacher without its layers 20 and 25 (a close student);
- `subset-10`: the demo's initial student, 10 of the 30 layers (a far student);
- `noisy`: the teacher's logits plus Gaussian noise (sd 1) on every vocabulary entry (a student whose
  errors sit mostly in the tail, the worst case for any top-k signal).

For each, the mean per-token KL(teacher_T || student_T) from the teacher's top-k (k = 20, the demo's and
vLLM's default, and k = 100; stored as fp16, as the generate stage writes it) is divided by the dense KL
over the full vocabulary, at T = 1, 2, 4.
`before` is the tail treatment of llmdistill 0.1.0 (the teacher's tail re-tempered as one class while the
student's was its exact tempered mass), recomputed here for comparison.

    .venv/bin/python benchmarks/sparse_tail.py [--tokens 2048] [--k 20,100]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "sparse_tail.json"
TEMPERATURES = (1.0, 2.0, 4.0)


def texts(limit_tokens: int, tokenizer) -> list[list[int]]:
    rows = [json.loads(line)["prompt"] for line in (REPO / "data/demo/eval.jsonl").read_text().splitlines()]
    rows += [json.loads(line)["text"] for line in (REPO / "data/sentiment/test.jsonl").read_text().splitlines()[:300]]
    out, total = [], 0
    for text in rows:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                            add_generation_prompt=False, return_dict=False)
        out.append(list(ids))
        total += len(ids)
        if total >= limit_tokens:
            break
    return out


def logits_of(model, seqs) -> torch.Tensor:  # noqa: F821
    import torch

    with torch.no_grad():
        return torch.cat([model(torch.tensor([s]), use_cache=False).logits[0].double() for s in seqs])


def before_bucket_kl(student_logits, ids, lps, T):
    """llmdistill 0.1.0: the teacher's k + 1 classes re-tempered as a block, the student's tail exact."""
    import torch

    from llmdistill import losses

    lp = lps.double()
    tail = losses.log1mexp(torch.logsumexp(lp, -1).clamp(max=0.0)).clamp(min=math.log(losses.TAIL_FLOOR))
    p = torch.log_softmax(torch.log_softmax(torch.cat([lp, tail[:, None]], -1), -1) / T, -1)
    q = losses.student_sparse_logprobs(losses.tempered_logprobs(student_logits, T), ids)
    return losses.forward_kl(p, q)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--k", default="20,100", help="comma-separated top-k widths")
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmdistill import losses, models

    torch.manual_seed(0)
    torch.set_num_threads(2)
    src = models.resolve_source("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(src)
    teacher = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    seqs = texts(args.tokens, tok)
    t = logits_of(teacher, seqs)
    n_layers = len(teacher.model.layers)
    students = {"teacher": t.clone()}
    layers = teacher.model.layers
    for name, keep in (("drop-2", [i for i in range(n_layers) if i not in (20, 25)]),
                       ("subset-10", [0, 3, 6, 9, 12, 15, 18, 21, 24, 29])):
        teacher.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
        teacher.config.num_hidden_layers = len(keep)
        students[name] = logits_of(teacher, seqs)
    teacher.model.layers = layers
    students["noisy"] = t + torch.randn(t.shape, dtype=t.dtype, generator=torch.Generator().manual_seed(1))

    ks = [int(k) for k in args.k.split(",")]
    rows, masses = [], {}
    full = torch.log_softmax(t, -1)
    for k in ks:
        lps, ids = full.topk(k, -1)
        lps = lps.half()  # as stored
        masses[k] = float(lps.double().exp().sum(-1).mean())
        for name, s in students.items():
            for T in TEMPERATURES:
                dense = float(losses.forward_kl_dense(s, t, T).mean())
                sparse = float(losses.forward_kl_sparse(s, ids, lps, T).mean())
                before = float(before_bucket_kl(s, ids, lps, T).mean())
                rows.append({"k": k, "student": name, "T": T, "dense_kl": dense, "sparse_kl": sparse,
                             "before_kl": before, "ratio": sparse / dense if dense > 0 else None,
                             "before_ratio": before / dense if dense > 0 else None})
    result = {"teacher": "SmolLM2-135M-Instruct", "vocab": t.shape[-1], "tokens": t.shape[0],
              "teacher_topk_mass_mean": masses, "rows": rows}
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{t.shape[0]} tokens of real text; teacher top-k mass on average: "
          + ", ".join(f"{m:.3f} at k = {k}" for k, m in masses.items()))
    print("| k | student | T | dense KL | sparse bucket KL | ratio | before: sparse KL | before: ratio |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        before_ratio = "-" if r["before_ratio"] is None else f"{r['before_ratio']:.3f}"
        print(f"| {r['k']} | {r['student']} | {r['T']:g} | {r['dense_kl']:.4f} | {r['sparse_kl']:.4f} | {ratio} | "
              f"{r['before_kl']:.4f} | {before_ratio} |")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
