"""Semantic dedup on one core: embedding and end-to-end records/s for each embedding option, usearch's
neighbour search against exact all pairs, and precision/recall on the hand-labelled real-text pairs.

1. quality: data/paraphrase/labelled.jsonl (pairs of real tweets / BBC leads labelled duplicate or not by
   hand, SOURCES.md) embedded with each option; precision, recall and F1 of "cosine >= t" against the labels
   for t in 0.70..0.98; and the step's search against exact all pairs on the whole paraphrase corpus.
2. speed on real text: the paraphrase corpus plus data/sentiment's tweets (about 25k short texts): records/s
   of embedding with each option (the encoder on a `--encoder-records` sample), and of the default step end to
   end (load, embed, search, keep decisions) with minilm-static.
3. search: `--vectors` synthetic unit vectors (dimension 256, minilm-static's: random mixtures of two real
   embeddings of the texts of 2., so they have real text embeddings' shape, with planted copies at cosines
   0.75-1.0 and clusters of 40, larger than `neighbors`) searched by the step (usearch HNSW) and by exact
   all pairs: seconds and recall of all-pairs duplicates at the default threshold. Above `--sample-above`
   vectors all pairs is measured on a random sample of query rows (each against every row), its time scaled to
   all rows, recall over the sampled rows' pairs.

Everything runs on one core (affinity pinned to one CPU, one thread in torch, tokenizers, BLAS and usearch):
records/s is per core.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/dedup_semantic.py [--vectors 50000 1000000] [--only quality]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results" / "dedup_semantic.json"
MODELS = ("minilm-static", "all-minilm-l6-v2")
THRESHOLDS = sorted({round(t, 2) for t in np.arange(0.70, 0.985, 0.02)} | {0.95})


def step(**kw):
    from llmdistill.config.filter import SemanticDedupStep

    return SemanticDedupStep(name="semantic_dedup", **kw)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def quality() -> dict:
    from llmdistill.filter import semantic

    labelled = jsonl(ROOT / "data" / "paraphrase" / "labelled.jsonl")
    y = np.array([p["label"] for p in labelled], bool)
    out = {"pairs": len(labelled), "duplicates": int(y.sum()), "models": {}}
    for model in MODELS:
        emb = semantic.embedder(step(model=model))
        a, b = emb.embed([p["text_a"] for p in labelled]), emb.embed([p["text_b"] for p in labelled])
        cos = np.einsum("ij,ij->i", a, b)
        rows = []
        for t in THRESHOLDS:
            pred = cos >= t
            tp = int((pred & y).sum())
            p = tp / max(1, int(pred.sum()))
            r = tp / max(1, int(y.sum()))
            rows.append({"threshold": t, "precision": round(p, 3), "recall": round(r, 3),
                         "f1": round(2 * p * r / max(p + r, 1e-9), 3), "flagged": int(pred.sum())})
        out["models"][model] = rows
        order = np.argsort(cos)
        show = [int(i) for i in order if y[i]][:3] + [int(i) for i in order[::-1] if not y[i]][:3]
        out.setdefault("errors", {})[model] = [
            {"label": int(y[i]), "cosine": round(float(cos[i]), 3), "a": labelled[i]["text_a"][:80],
             "b": labelled[i]["text_b"][:80]} for i in show]
    corpus = [r["text"] for r in jsonl(ROOT / "data" / "paraphrase" / "corpus.jsonl")]
    s = step()
    emb = semantic.embedder(s).embed(corpus)
    exact = {tuple(p) for p in semantic.exact_similar_pairs(emb, s.threshold).tolist()}
    found = {tuple(p) for p in semantic.duplicate_pairs(emb, s)[0].tolist()}
    hnsw = {tuple(p) for p in semantic.duplicate_pairs(emb, step(exact_below=0))[0].tolist()}
    out["corpus_search"] = {"rows": len(corpus), "threshold": s.threshold, "all_pairs": len(exact),
                            "step_recall": round(len(found & exact) / max(1, len(exact)), 4),
                            "hnsw_recall": round(len(hnsw & exact) / max(1, len(exact)), 4)}
    return out


def real_texts() -> list[str]:
    texts = [r["text"] for r in jsonl(ROOT / "data" / "paraphrase" / "corpus.jsonl")]
    for name in ("train", "val", "test", "unlabelled"):
        texts += [r["text"] for r in jsonl(ROOT / "data" / "sentiment" / f"{name}.jsonl")]
    return texts


def speed(encoder_records: int) -> dict:
    from llmdistill.filter import minhash, semantic

    texts = real_texts()
    out = {"records": len(texts), "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 1),
           "embedding": {}}
    for model in MODELS:
        sample = texts if model == "minilm-static" else texts[:: max(1, len(texts) // encoder_records)]
        t0 = time.perf_counter()
        emb = semantic.embedder(step(model=model))
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        emb.embed(sample)
        dt = time.perf_counter() - t0
        out["embedding"][model] = {"records": len(sample), "load_s": round(load, 2), "embed_s": round(dt, 2),
                                   "records_per_s": round(len(sample) / dt, 1)}
    s = step()
    t0 = time.perf_counter()
    emb = semantic.embedder(s)
    e = emb.embed(texts).astype(np.float16)  # as the stage holds them
    t1 = time.perf_counter()
    pairs, _ = semantic.duplicate_pairs(e, s)
    t2 = time.perf_counter()
    removed = minhash.greedy_removals(np.arange(len(texts)), pairs)
    t3 = time.perf_counter()
    out["end_to_end_static"] = {"records": len(texts), "threshold": s.threshold, "pairs": len(pairs),
                                "removed": len(removed), "load_embed_s": round(t1 - t0, 2),
                                "search_s": round(t2 - t1, 2), "decide_s": round(t3 - t2, 3),
                                "records_per_s": round(len(texts) / (t3 - t0), 1),
                                "search": "exact" if len(texts) <= s.exact_below else "hnsw"}
    return out


def synthetic(n: int, base: np.ndarray, seed: int = 0) -> np.ndarray:
    """n unit vectors shaped like real text embeddings: each a random mixture of two rows of `base` (real
    minilm-static embeddings) plus a little noise; then a fifth of them overwritten by copies of other rows at
    cosines 0.75-1.0 (a tenth of the copies in clusters of 40 around one source)."""
    g = np.random.default_rng(seed)
    dim = base.shape[1]
    vec = np.empty((n, dim), np.float32)
    for i in range(0, n, 65536):
        m = min(65536, n - i)
        w = g.uniform(0.2, 0.8, (m, 1)).astype(np.float32)
        v = w * base[g.integers(0, len(base), m)] + (1 - w) * base[g.integers(0, len(base), m)]
        v += g.standard_normal((m, dim)).astype(np.float32) * 0.02
        vec[i: i + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    copies = n // 5
    src = g.integers(0, n - copies, copies)
    src[: copies // 10] = np.repeat(g.integers(0, n - copies, copies // 400 + 1), 40)[: copies // 10]  # clusters
    target = g.uniform(0.75, 1.0, copies).astype(np.float32)  # the cosine each copy gets with its source
    for i in range(0, copies, 65536):
        s = src[i: i + 65536]
        noise = g.standard_normal((len(s), dim)).astype(np.float32)
        noise -= (noise * vec[s]).sum(1, keepdims=True) * vec[s]
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        t = target[i: i + 65536, None]
        vec[n - copies + i: n - copies + i + len(s)] = t * vec[s] + np.sqrt(1 - t ** 2) * noise
    return vec


def search(n: int, sample_above: int, sample_rows: int) -> dict:
    from llmdistill.filter import semantic

    s = step()
    vec = synthetic(n, semantic.embedder(s).embed(real_texts()))
    t0 = time.perf_counter()
    pairs, _, info = semantic.similar_pairs(vec, s.threshold, s.neighbors, s.max_neighbors, exact_below=0,
                                            threads=1)
    ann_s = time.perf_counter() - t0
    if n <= sample_above:
        t0 = time.perf_counter()
        exact = semantic.exact_similar_pairs(vec, s.threshold)
        all_s = time.perf_counter() - t0
        ex, found = {tuple(p) for p in exact.tolist()}, {tuple(p) for p in pairs.tolist()}
        recall, n_exact, sampled = len(ex & found) / max(1, len(ex)), len(ex), n
    else:  # all pairs of a sample of rows against every row
        rows = np.sort(np.random.default_rng(1).choice(n, sample_rows, replace=False))
        t0 = time.perf_counter()
        hits = []
        for i in range(0, len(rows), 1024):
            sims = vec[rows[i: i + 1024]] @ vec.T
            a, b = np.nonzero(sims >= s.threshold)
            a = rows[i: i + 1024][a]
            keep = a != b
            hits.append(np.stack([np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])], 1))
        all_s = (time.perf_counter() - t0) * n / len(rows) / 2  # each pair once over all rows: half the products
        ex = {tuple(p) for p in np.concatenate(hits).tolist()}
        found = {tuple(p) for p in pairs.tolist()}
        recall, n_exact, sampled = len(ex & found) / max(1, len(ex)), len(ex), len(rows)
    return {"vectors": n, "dim": vec.shape[1], "threshold": s.threshold, "ann_s": round(ann_s, 2),
            "ann_vectors_per_s": round(n / ann_s, 1), "all_pairs_s": round(all_s, 2),
            "all_pairs_estimated": n > sample_above, "rows_checked": sampled, "all_pairs_duplicates": n_exact,
            "recall": round(recall, 4), "speedup": round(all_s / ann_s, 1), **info}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, nargs="*", default=[50_000, 1_000_000])
    ap.add_argument("--encoder-records", type=int, default=1000)
    ap.add_argument("--sample-above", type=int, default=100_000)
    ap.add_argument("--sample-rows", type=int, default=4096)
    ap.add_argument("--only", choices=["quality", "speed", "search"])
    args = ap.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import torch

    torch.set_num_threads(1)
    result = json.loads(OUT.read_text()) if OUT.exists() and args.only else {}
    result = {k: v for k, v in result.items() if k in ("quality", "speed", "search")}  # the other sections' results
    result.update({"cpu": platform.processor() or platform.machine(), "cores": 1})
    if args.only in (None, "quality"):
        q = result["quality"] = quality()
        for model, rows in q["models"].items():
            print(f"\n{model}: labelled pairs {q['pairs']} ({q['duplicates']} duplicates)")
            print("threshold  precision  recall  f1   flagged")
            for r in rows:
                print(f"{r['threshold']:9.2f}  {r['precision']:9.3f}  {r['recall']:6.3f}  {r['f1']:.3f}  "
                      f"{r['flagged']}")
        print(f"corpus search: {q['corpus_search']}")
    if args.only in (None, "speed"):
        sp = result["speed"] = speed(args.encoder_records)
        for model, r in sp["embedding"].items():
            print(f"embed {model}: {r['records_per_s']} records/s ({r['records']} records, load {r['load_s']} s)")
        print(f"end to end (minilm-static): {sp['end_to_end_static']}")
    if args.only in (None, "search"):
        runs = [search(n, args.sample_above, args.sample_rows) for n in args.vectors]
        kept = {r["vectors"]: r for r in result.get("search", [])} | {r["vectors"]: r for r in runs}
        result["search"] = [kept[n] for n in sorted(kept)]
        for r in runs:
            print(f"search {r['vectors']} vectors: usearch {r['ann_s']} s vs all pairs {r['all_pairs_s']} s "
                  f"({r['speedup']}x{', estimated' if r['all_pairs_estimated'] else ''}), recall {r['recall']} of "
                  f"{r['all_pairs_duplicates']} pairs")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
