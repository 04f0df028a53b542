"""Semantic dedup throughput on this CPU: all-MiniLM-L6-v2 embeddings, then the LSH search against a
blocked all-pairs search in the same run.

1. Embedding: `--records` texts (the demo seed prompts and eval prompts, each also in a lightly edited
   copy: case, punctuation, one word dropped) embedded with the shipped all-MiniLM-L6-v2, 1 thread,
   batch 64, max 256 tokens: records/s, and how many edited copies the stage's search finds at cosine 0.95.
2. Search: `--vectors` synthetic unit vectors of dimension 384 (1/4 of them perturbed copies of others)
   searched with random-hyperplane LSH (12 bits x 8 tables) and with blocked exact all pairs: seconds,
   and the LSH recall of the pairs all-pairs finds.

    nice .venv/bin/python benchmarks/dedup_semantic.py [--records 600] [--vectors 50000]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "dedup_semantic.json"


def edited(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) > 6:
        del words[rng.randrange(1, len(words) - 1)]
    out = " ".join(words)
    return out.lower().rstrip("?.!") + rng.choice(["", "?", " ?", "!"])


def main() -> None:
    import torch

    from llmdistill.filter import semantic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=600)
    ap.add_argument("--vectors", type=int, default=50_000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(0)
    base = []
    for name in ("seeds.jsonl", "eval.jsonl", "task_facts.jsonl"):
        for line in (ROOT / "data" / "demo" / name).read_text().splitlines():
            base.append(json.loads(line)["prompt"])
    base = base[: args.records // 2]
    texts = base + [edited(t, rng) for t in base]
    t0 = time.perf_counter()
    embedder = semantic.Embedder(batch_size=64, max_length=256)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = embedder.embed(texts)
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairs, _ = semantic.similar_pairs(emb, 0.95)
    search_small_s = time.perf_counter() - t0
    n = len(base)
    found = {tuple(p) for p in pairs.tolist()}
    planted_found = sum((i, i + n) in found for i in range(n))
    exact_small = {tuple(p) for p in semantic.exact_similar_pairs(emb, 0.95).tolist()}

    # search at scale on synthetic vectors
    g = np.random.default_rng(0)
    m = args.vectors
    vec = g.standard_normal((m, 384)).astype(np.float32)
    k = m // 4
    src = g.choice(m - k, size=k, replace=False)
    vec[m - k:] = vec[src] + g.standard_normal((k, 384)).astype(np.float32) * 0.12
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    t0 = time.perf_counter()
    lsh_pairs, _ = semantic.similar_pairs(vec, 0.95)
    lsh_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact_pairs = semantic.exact_similar_pairs(vec, 0.95)
    exact_s = time.perf_counter() - t0
    ex = {tuple(p) for p in exact_pairs.tolist()}
    lsh = {tuple(p) for p in lsh_pairs.tolist()}
    result = {
        "records": len(texts),
        "model_load_s": round(load_s, 2),
        "embed_s": round(embed_s, 2),
        "embed_records_per_s": round(len(texts) / embed_s, 1),
        "search_s_records": round(search_small_s, 3),
        "edited_copies": n,
        "edited_copies_found_at_0.95": planted_found,
        "lsh_recall_vs_all_pairs_records": round(len(found & exact_small) / max(1, len(exact_small)), 4),
        "vectors": m,
        "lsh_search_s": round(lsh_s, 2),
        "all_pairs_search_s": round(exact_s, 2),
        "all_pairs_found": len(ex),
        "lsh_recall_vs_all_pairs": round(len(lsh & ex) / max(1, len(ex)), 4),
        "lsh_speedup": round(exact_s / lsh_s, 1),
        "threads": 1,
    }
    print(f"embedding: {result['embed_records_per_s']} records/s ({len(texts)} records, 1 thread); edited copies "
          f"found at cosine 0.95: {planted_found} of {n}")
    print(f"search over {m} vectors: LSH {lsh_s:.2f} s vs all pairs {exact_s:.2f} s "
          f"({result['lsh_speedup']}x), LSH recall {result['lsh_recall_vs_all_pairs']} of {len(ex)} pairs")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
