"""Peak memory and time of the distillation loss: chunked + checkpointed (ours) vs full logits (baseline).

Claim checked: the train stage never holds an [N, V] logits tensor, so its peak memory stays flat as
the number of tokens grows, at a modest cost in time (the LM head is recomputed in the backward pass).

Each variant runs forward + backward in a fresh subprocess; peak memory is the growth of the process's
max RSS over the inputs already allocated. Reported as ratios to the baseline measured in the same run.

    .venv/bin/python benchmarks/loss_memory.py            # prints a table, writes benchmarks/results/loss_memory.json
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "loss_memory.json"
VOCAB, HIDDEN, K = 49152, 576, 20  # SmolLM2's shapes
TOKENS = (1024, 4096, 8192)


def child(variant: str, n: int) -> dict:
    import torch

    from llmdistill.config import LossTerm
    from llmdistill.train import losses
    from llmdistill.train.objective import chunked_loss
    from llmdistill.train.signals import SparseSignal

    torch.manual_seed(0)
    torch.set_num_threads(2)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    hidden = torch.randn(n, HIDDEN, requires_grad=True)
    targets = torch.randint(0, VOCAB, (n,))
    ids = torch.randint(0, VOCAB, (n, K))
    lps = torch.log_softmax(torch.randn(n, K), -1) - 0.1
    terms = [LossTerm(name="forward_kl", weight=0.9), LossTerm(name="ce", weight=0.1)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if variant == "chunked":
        loss = chunked_loss(hidden, head, targets, SparseSignal(ids, lps), terms, chunk_tokens=512)["total"]
    else:
        logits = head(hidden)  # [N, V] kept for the backward pass
        loss = 0.9 * losses.forward_kl_sparse(logits, ids, lps).sum() + 0.1 * losses.cross_entropy(logits, targets).sum()
    loss.backward()
    seconds = time.perf_counter() - started
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"variant": variant, "tokens": n, "peak_mb": round(peak_mb, 1), "seconds": round(seconds, 3),
            "loss": float(loss)}


def main() -> None:
    rows = []
    for n in TOKENS:
        for variant in ("full_logits", "chunked"):
            res = subprocess.run([sys.executable, __file__, "--child", variant, str(n)], capture_output=True,
                                 text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    table = []
    for n in TOKENS:
        base = next(r for r in rows if r["tokens"] == n and r["variant"] == "full_logits")
        ours = next(r for r in rows if r["tokens"] == n and r["variant"] == "chunked")
        assert abs(base["loss"] - ours["loss"]) <= 1e-3 * abs(base["loss"]), (base, ours)
        table.append({
            "tokens": n,
            "full_logits_peak_mb": base["peak_mb"],
            "chunked_peak_mb": ours["peak_mb"],
            "memory_ratio": round(ours["peak_mb"] / base["peak_mb"], 3),
            "full_logits_s": base["seconds"],
            "chunked_s": ours["seconds"],
            "time_ratio": round(ours["seconds"] / base["seconds"], 2),
        })
    print(f"loss forward+backward, V={VOCAB}, H={HIDDEN}, k={K}, chunk 512 tokens (ratios: chunked / full logits)")
    print("| tokens | full logits peak MB | chunked peak MB | memory ratio | full logits s | chunked s | time ratio |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in table:
        print(f"| {r['tokens']} | {r['full_logits_peak_mb']} | {r['chunked_peak_mb']} | {r['memory_ratio']} | "
              f"{r['full_logits_s']} | {r['chunked_s']} | {r['time_ratio']} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"vocab": VOCAB, "hidden": HIDDEN, "k": K, "chunk_tokens": 512, "rows": table},
                              indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]))))
    else:
        main()
