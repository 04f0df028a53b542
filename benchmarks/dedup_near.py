"""Near-duplicate dedup: our MinHash stage (numpy shingle hashing + rensa R-MinHash + 16-band LSH + exact
Jaccard check + greedy choice of the kept rows) against datasketch MinHashLSH (128 permutations, threshold
0.8), on the same corpus, in the same run. A pair is reported by ours when it passed the exact check, by
datasketch when LSH returned it.

Corpus: N ~200-word documents drawn from a 30,000-word Zipf-like vocabulary; 10 % of them are planted
near-duplicates of other documents, with word-level edits (substitute / insert / delete) at 1, 3, 5 and
10 % of the words. Ground truth is the exact Jaccard of word 3-gram sets, computed with Python sets
(independently of either method's hashing).

Goals (issue 4): at least 4x datasketch's end-to-end throughput; recall >= 0.95 of planted pairs with
true Jaccard >= 0.8; no reported pair with true Jaccard < 0.7.

Each method runs in a forked child; its peak memory is the growth of the child's peak RSS (VmHWM)
over its RSS at the start (the corpus is already in memory for both).

    .venv/bin/python benchmarks/dedup_near.py [--docs 100000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results" / "dedup_near.json"
EDIT_RATES = (0.01, 0.03, 0.05, 0.10)
BINS = ((0.9, 1.01), (0.8, 0.9), (0.7, 0.8), (0.5, 0.7), (0.0, 0.5))


def edit_words(doc: list, rate: float, rng, pool) -> list:
    """A copy of `doc` with round(rate * len) word edits (replace, insert or delete, drawn from `rng`)."""
    doc = list(doc)
    for _ in range(max(1, round(rate * len(doc)))):
        op, pos = rng.integers(3), int(rng.integers(len(doc)))
        if op == 0:
            doc[pos] = next(pool)
        elif op == 1:
            doc.insert(pos, next(pool))
        elif len(doc) > 10:
            del doc[pos]
    return doc


def make_corpus(n_docs: int, dup_fraction: float = 0.10, words: int = 200, seed: int = 0):
    """(texts, planted): planted is a list of (original index, duplicate index, edit rate)."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i:x}{'abcdefghij'[i % 10]}" for i in range(30_000)])
    p = 1.0 / (np.arange(len(vocab)) + 20.0)
    p /= p.sum()
    n_dup = int(n_docs * dup_fraction)
    n_orig = n_docs - n_dup
    lengths = rng.integers(int(words * 0.8), int(words * 1.2), size=n_orig)
    flat = rng.choice(len(vocab), size=int(lengths.sum()), p=p)
    docs = np.split(flat, np.cumsum(lengths)[:-1])
    planted = []
    all_docs = [list(d) for d in docs]
    sources = rng.choice(n_orig, size=n_dup, replace=False)
    pool = iter(rng.choice(len(vocab), size=n_dup * 40, p=p).tolist())  # replacement / inserted words
    for k, src in enumerate(sources):
        rate = EDIT_RATES[k % len(EDIT_RATES)]
        doc = edit_words(all_docs[src], rate, rng, pool)
        planted.append((int(src), len(all_docs), rate))
        all_docs.append(doc)
    # shuffle so duplicates are spread through the corpus
    perm = rng.permutation(len(all_docs))
    where = np.empty_like(perm)
    where[perm] = np.arange(len(perm))
    texts = [" ".join(vocab[all_docs[i]]) for i in perm]
    planted = [(int(min(where[a], where[b])), int(max(where[a], where[b])), r) for a, b, r in planted]
    return texts, planted


def true_jaccard(a: str, b: str, n: int = 3) -> float:
    wa, wb = a.lower().split(), b.lower().split()
    sa = {tuple(wa[i: i + n]) for i in range(len(wa) - n + 1)}
    sb = {tuple(wb[i: i + n]) for i in range(len(wb) - n + 1)}
    return len(sa & sb) / len(sa | sb)


def _rss_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def run_ours(texts: list[str], chunk: int = 4096) -> tuple[set[tuple[int, int]], dict[int, int]]:
    """(verified pairs, {removed row: kept row}): the filter stage's near_dedup with keep: first."""
    from llmdistill.filter import minhash

    finder = minhash.NearDuplicateFinder(threshold=0.8, num_perm=128, ngram=3)
    for i in range(0, len(texts), chunk):
        finder.add(texts[i: i + chunk])
    removed, pairs, _ = finder.removals(minhash.reader(texts))
    return {tuple(p) for p in pairs.tolist()}, removed


def run_datasketch(texts: list[str]) -> set[tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    sigs = []
    for i, t in enumerate(texts):
        w = t.lower().split()
        m = MinHash(num_perm=128)
        m.update_batch([" ".join(w[j: j + 3]).encode() for j in range(len(w) - 2)])
        lsh.insert(i, m)
        sigs.append(m)
    out = set()
    for i, m in enumerate(sigs):
        for j in lsh.query(m):
            if j != i:
                out.add((min(i, j), max(i, j)))
    return out


def child(method: str, texts, conn) -> None:
    start_rss = _rss_kb("VmRSS")
    t0 = time.perf_counter()
    pairs, removed = run_ours(texts) if method == "ours" else (run_datasketch(texts), None)
    seconds = time.perf_counter() - t0
    conn.send({"pairs": sorted(pairs), "removed": removed, "seconds": seconds,
               "peak_mb": (_rss_kb("VmHWM") - start_rss) / 1024})
    conn.close()


def measure(method: str, texts) -> dict:
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child, args=(method, texts, send))
    proc.start()
    result = recv.recv()
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    texts, planted = make_corpus(args.docs)
    print(f"corpus: {len(texts)} docs, {len(planted)} planted near-duplicates ({time.perf_counter() - t0:.1f} s)")
    truth = {(a, b): true_jaccard(texts[a], texts[b]) for a, b, _ in planted}
    results = {m: measure(m, texts) for m in ("datasketch", "ours")}
    rows = []
    for method, res in results.items():
        found = {tuple(p) for p in res["pairs"]}
        recall = {}
        for lo, hi in BINS:
            pairs = [p for p, j in truth.items() if lo <= j < hi]
            recall[f"{lo:.1f}-{min(hi, 1.0):.1f}"] = {
                "pairs": len(pairs), "recall": round(sum(p in found for p in pairs) / len(pairs), 4) if pairs else None}
        extra = [p for p in found if p not in truth]
        extra_j = [true_jaccard(texts[a], texts[b]) for a, b in extra[:20000]]
        high = [p for p, j in truth.items() if j >= 0.8]
        if res["removed"] is not None:  # ours decides which rows go: each must have J >= 0.8 with a kept row
            removed = res["removed"]
            kept_partner_j = [true_jaccard(texts[r], texts[k]) for r, k in removed.items() if k not in removed]
            selection = {"rows_removed": len(removed),
                         "removed_without_a_kept_partner_at_0.8": len(removed) - sum(j >= 0.8 for j in kept_partner_j)}
        else:
            selection = {}
        rows.append({
            "method": method,
            "seconds": round(res["seconds"], 2),
            "docs_per_s": round(len(texts) / res["seconds"]),
            "peak_mb": round(res["peak_mb"], 1),
            "reported_pairs": len(found),
            "recall_j_ge_0.8": round(sum(p in found for p in high) / len(high), 4),
            "recall_by_true_jaccard": recall,
            "false_positives_j_lt_0.7": sum(j < 0.7 for j in extra_j)
            + sum(1 for p, j in truth.items() if p in found and j < 0.7),
            "unplanted_pairs_reported": len(extra),
            **selection,
        })
    base = rows[0]["seconds"]
    for r in rows:
        r["speedup_vs_datasketch"] = round(base / r["seconds"], 2)
    print(f"\n{'method':<11}{'docs/s':>9}{'speedup':>9}{'peak MB':>9}{'recall J>=0.8':>15}{'FP J<0.7':>10}")
    for r in rows:
        print(f"{r['method']:<11}{r['docs_per_s']:>9}{r['speedup_vs_datasketch']:>9}{r['peak_mb']:>9}"
              f"{r['recall_j_ge_0.8']:>15}{r['false_positives_j_lt_0.7']:>10}")
    ours = rows[-1]
    print(f"\nours removed {ours['rows_removed']} rows; without a kept partner at true J >= 0.8: "
          f"{ours['removed_without_a_kept_partner_at_0.8']}")
    print("\nrecall by true Jaccard of the planted pair:")
    for lo, hi in BINS:
        key = f"{lo:.1f}-{min(hi, 1.0):.1f}"
        print(f"  {key:<9} pairs {rows[0]['recall_by_true_jaccard'][key]['pairs']:>5}  " + "  ".join(
            f"{r['method']} {r['recall_by_true_jaccard'][key]['recall']}" for r in rows))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"docs": len(texts), "planted": len(planted), "edit_rates": EDIT_RATES,
                               "threshold": 0.8, "num_perm": 128, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
