"""Peak memory and time of the distillation losses, forward + backward, against naive full-vocabulary ones.

Claims checked (the train issue's goals): with batch x seq = 4,096 tokens,
- our chunked dense divergence (live teacher: both models' logits projected chunk by chunk) peaks at
  most 1/4 of a naive dense KL that materialises both [N, V] logits tensors;
- our chunked sparse top-k KL (k = 20) peaks at most 1/8 of it;
- values agree to 1e-5 relative: chunked dense KL with naive dense KL, chunked dense JSD with trl's
  `generalized_jsd_loss`, chunked sparse KL with an unchunked sparse KL.

Every variant starts from the same inputs (student and teacher final hidden states, LM heads, the
stored top-k) and runs in a fresh subprocess; peak memory is the growth of the process's max RSS over
those inputs. Ratios are taken against the naive dense KL of the same run.

    .venv/bin/python benchmarks/loss_memory.py [--tokens 4096] [--vocabs 49152,151936]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "loss_memory.json"
HIDDEN = {49152: 576, 151936: 896}  # SmolLM2-135M, Qwen2.5-0.5B
K, CHUNK = 20, None  # None: the trainer's default, auto_chunk_tokens(vocab)
VARIANTS = ("naive_dense_kl", "trl_jsd", "ours_dense_kl", "ours_dense_jsd", "naive_sparse_kl", "ours_sparse_kl")


def child(variant: str, n: int, vocab: int) -> dict:
    import torch

    from llmdistill import losses
    from llmdistill.config import LossTerm
    from llmdistill.train.objective import chunked_loss
    from llmdistill.train.signals import LiveSignal, SparseSignal

    torch.manual_seed(0)
    torch.set_num_threads(2)
    h = HIDDEN[vocab]
    student_head = torch.nn.Linear(h, vocab, bias=False)
    teacher_head = torch.nn.Linear(h, vocab, bias=False).requires_grad_(False)
    hidden = torch.randn(n, h, requires_grad=True)
    teacher_hidden = torch.randn(n, h)
    targets = torch.randint(0, vocab, (n,))
    with torch.no_grad():  # the stored top-k, as the generate stage would have written it (chunked, outside)
        ids, lps = [], []
        for i in range(0, n, 256):
            v, j = torch.log_softmax(teacher_head(teacher_hidden[i : i + 256]), -1).topk(K, -1)
            ids.append(j)
            lps.append(v.half())
        ids, lps = torch.cat(ids), torch.cat(lps)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if variant == "naive_dense_kl":
        s = student_head(hidden)
        with torch.no_grad():
            t = teacher_head(teacher_hidden)
        loss = losses.forward_kl_dense(s, t).sum()
    elif variant == "trl_jsd":
        import os

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd import GKDTrainer

        s = student_head(hidden)
        with torch.no_grad():
            t = teacher_head(teacher_hidden)
        loss = GKDTrainer.generalized_jsd_loss(s[None], t[None], beta=0.5)  # token sum / batch size 1
    elif variant in ("ours_dense_kl", "ours_dense_jsd"):
        name = "forward_kl" if variant == "ours_dense_kl" else "jsd"
        term = LossTerm(name=name, weight=1.0, **({"beta": 0.5} if name == "jsd" else {}))
        loss = chunked_loss(hidden, student_head, targets, LiveSignal(teacher_hidden, teacher_head, vocab), [term],
                            chunk_tokens=CHUNK)["total"]
    elif variant == "naive_sparse_kl":
        loss = losses.forward_kl_sparse(student_head(hidden), ids, lps).sum()
    elif variant == "ours_sparse_kl":
        loss = chunked_loss(hidden, student_head, targets, SparseSignal(ids, lps),
                            [LossTerm(name="forward_kl", weight=1.0)], chunk_tokens=CHUNK)["total"]
    else:
        raise ValueError(variant)
    loss.backward()
    seconds = time.perf_counter() - started
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"variant": variant, "vocab": vocab, "tokens": n, "peak_mb": round(peak_mb, 1),
            "seconds": round(seconds, 2), "value": float(loss)}


MEMORY_CAP = 20 * 2**30  # per variant: one that needs more fails with MemoryError instead of swapping the box


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_child(variant: str, n: int, vocab: int) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", variant, str(n), str(vocab)], capture_output=True,
                         text=True, preexec_fn=_cap_memory)
    if res.returncode != 0:  # e.g. killed for memory: reported, not hidden
        return {"variant": variant, "vocab": vocab, "tokens": n, "peak_mb": None, "seconds": None, "value": None,
                "error": (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1][:200]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocabs", default="49152,151936")
    args = parser.parse_args()
    rows = [run_child(v, args.tokens, int(vocab)) for vocab in args.vocabs.split(",") for v in VARIANTS]
    checks = []
    for vocab in {r["vocab"] for r in rows}:
        by = {r["variant"]: r for r in rows if r["vocab"] == vocab}
        base = by["naive_dense_kl"]["peak_mb"]
        for r in by.values():
            r["memory_ratio"] = round(r["peak_mb"] / base, 3) if r["peak_mb"] and base else None
            r["time_ratio"] = (round(r["seconds"] / by["naive_dense_kl"]["seconds"], 2)
                               if r["seconds"] and by["naive_dense_kl"]["seconds"] else None)
        for ours, ref in (("ours_dense_kl", "naive_dense_kl"), ("ours_dense_jsd", "trl_jsd"),
                          ("ours_sparse_kl", "naive_sparse_kl")):
            a, b = by[ours]["value"], by[ref]["value"]
            rel = abs(a - b) / abs(b) if a is not None and b is not None else None
            checks.append({"vocab": vocab, "ours": ours, "reference": ref,
                           "relative_difference": None if rel is None else float(f"{rel:.2e}")})
    from llmdistill.train.objective import auto_chunk_tokens

    chunks = ", ".join(f"{auto_chunk_tokens(int(v))} at V={v}" for v in args.vocabs.split(","))
    print(f"loss forward+backward, {args.tokens} tokens, k={K}, chunk {chunks}; ratios vs naive dense KL")
    print("| vocab | variant | peak MB | memory ratio | seconds | time ratio |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        peak = r["peak_mb"] if r["peak_mb"] is not None else f"failed: {r.get('error')}"
        print(f"| {r['vocab']} | {r['variant']} | {peak} | {r['memory_ratio']} | {r['seconds']} | {r['time_ratio']} |")
    print("\n| vocab | ours | reference | relative difference |\n| ---: | --- | --- | ---: |")
    for c in checks:
        print(f"| {c['vocab']} | {c['ours']} | {c['reference']} | {c['relative_difference']} |")
    # results of other (vocab, tokens) settings from earlier runs are kept beside these
    OUT.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(OUT.read_text()) if OUT.exists() else {}
    mine = {(r["vocab"], r["tokens"]) for r in rows}
    keep = [r for r in old.get("rows", []) if (r.get("vocab"), r.get("tokens")) not in mine]
    keep_checks = [c for c in old.get("value_checks", []) if (c.get("vocab"), c.get("tokens")) not in mine]
    for c in checks:
        c["tokens"] = args.tokens
    OUT.write_text(json.dumps({"k": K, "chunk_tokens": CHUNK, "rows": keep + rows,
                               "value_checks": keep_checks + checks}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        main()
