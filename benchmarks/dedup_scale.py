"""Scale: 1,000,000 ~200-word documents through exact + near dedup in one process, peak memory reported.

Documents are generated on the fly, chunk by chunk, from a seed per chunk (the corpus, ~1.4 GB of text,
is never held whole); the candidate check regenerates only the chunks it needs. Each chunk of 10,000
holds 8,900 originals, 1,000 near-duplicates of originals of the same chunk (word edits at 1, 3, 5,
10 %) and 100 exact copies (case and spacing changed, which normalisation undoes).

Pipeline, as the filter stage runs it: exact dedup (blake2b of `textnorm.canonical`, the NFKC/case-folded/
quote-and-dash-folded/space-collapsed text), then MinHash near dedup (numpy shingle hashing, rensa R-MinHash
128 permutations, 16 bands, exact-Jaccard check >= 0.8, greedy choice of the kept rows) over the rows exact
dedup kept.

    nice .venv/bin/python benchmarks/dedup_scale.py [--docs 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import time
from pathlib import Path

import numpy as np
from dedup_near import EDIT_RATES, edit_words  # benchmarks/ is on sys.path when run as a script

OUT = Path(__file__).resolve().parent / "results" / "dedup_scale.json"
CHUNK = 10_000
_VOCAB = np.array([f"w{i:x}{'abcdefghij'[i % 10]}" for i in range(30_000)])
_P = 1.0 / (np.arange(len(_VOCAB)) + 20.0)
_P /= _P.sum()


def chunk_texts(c: int) -> tuple[list[str], list[tuple[int, int, float]], list[tuple[int, int]]]:
    """(texts, near pairs (a, b, rate), exact pairs (a, b)) of chunk `c`, indices local to the chunk."""
    rng = np.random.default_rng(1000 + c)
    n_orig, n_near, n_exact = 8_900, 1_000, 100
    lengths = rng.integers(160, 240, size=n_orig)
    flat = rng.choice(len(_VOCAB), size=int(lengths.sum()), p=_P)
    docs = [list(d) for d in np.split(flat, np.cumsum(lengths)[:-1])]
    pool = iter(rng.choice(len(_VOCAB), size=n_near * 40, p=_P).tolist())
    near, exact = [], []
    for k, src in enumerate(rng.choice(n_orig, size=n_near, replace=False).tolist()):
        rate = EDIT_RATES[k % 4]
        doc = edit_words(docs[src], rate, rng, pool)
        near.append((src, len(docs), rate))
        docs.append(doc)
    texts = [" ".join(_VOCAB[d]) for d in docs]
    for src in rng.choice(n_orig, size=n_exact, replace=False).tolist():
        exact.append((src, len(texts)))
        texts.append("  ".join(texts[src].upper().split(" ")))
    return texts, near, exact


def exact_key(text: str) -> int:
    from llmdistill.filter.filters import normalise

    return int.from_bytes(hashlib.blake2b(normalise(text).encode(), digest_size=8).digest(), "little")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    from llmdistill.filter import minhash

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1_000_000)
    args = ap.parse_args()
    n_chunks = args.docs // CHUNK
    t0 = time.perf_counter()
    gen_seconds = 0.0
    # pass 1: exact keys and MinHash band keys, chunk by chunk
    finder = minhash.NearDuplicateFinder(threshold=0.8, num_perm=128, ngram=3)
    seen: set[int] = set()
    exact_removed = np.zeros(args.docs, bool)
    members: list[np.ndarray] = []
    planted_near, planted_exact = [], []
    for c in range(n_chunks):
        g = time.perf_counter()
        texts, near, exact = chunk_texts(c)
        gen_seconds += time.perf_counter() - g
        base = c * CHUNK
        planted_near += [(base + a, base + b, r) for a, b, r in near]
        planted_exact += [(base + a, base + b) for a, b in exact]
        keep = []
        for i, t in enumerate(texts):
            k = exact_key(t)
            if k in seen:
                exact_removed[base + i] = True
            else:
                seen.add(k)
                keep.append(i)
        finder.add([texts[i] for i in keep])
        members.append(base + np.array(keep))
        if c % 10 == 9:
            print(f"  pass 1: {base + CHUNK:>9} docs  {time.perf_counter() - t0:7.1f} s  peak RSS {rss_mb():7.0f} MB",
                  flush=True)
    members_arr = np.concatenate(members)

    def read(local: np.ndarray):
        nonlocal gen_seconds
        glob = members_arr[local]
        for c in np.unique(glob // CHUNK).tolist():
            sel = local[(glob // CHUNK) == c]
            g = time.perf_counter()
            texts, _, _ = chunk_texts(c)
            gen_seconds += time.perf_counter() - g
            yield sel, [texts[i] for i in (members_arr[sel] - c * CHUNK)]

    removed, pairs, n_candidates = finder.removals(read)
    total = time.perf_counter() - t0
    verified = {(int(a), int(b)) for a, b in members_arr[pairs].tolist()}
    found = {r: [0, 0] for r in EDIT_RATES}
    for a, b, r in planted_near:
        found[r][1] += 1
        found[r][0] += int((a, b) in verified)
    exact_caught = sum(exact_removed[b] for _, b in planted_exact)
    result = {
        "docs": args.docs,
        "seconds_total": round(total, 1),
        "seconds_generating_docs": round(gen_seconds, 1),
        "seconds_dedup": round(total - gen_seconds, 1),
        "docs_per_s_dedup": round(args.docs / (total - gen_seconds)),
        "peak_rss_mb": round(rss_mb()),
        "exact_duplicates_planted": len(planted_exact),
        "exact_duplicates_removed": int(exact_removed.sum()),
        "exact_planted_caught": int(exact_caught),
        "near_candidates": n_candidates,
        "near_verified_pairs": len(pairs),
        "near_removed": len(removed),
        "near_recall_by_edit_rate": {str(r): round(f / n, 4) for r, (f, n) in found.items()},
        "bands": finder.bands,
    }
    print(json.dumps(result, indent=2))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
