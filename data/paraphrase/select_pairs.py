"""Choose the pairs of data/paraphrase/corpus.jsonl to label by hand: to_label.jsonl (no labels; labelled.jsonl
is the same pairs with the labels given by reading them, see SOURCES.md).

    LLMDISTILL_CACHE=... .venv/bin/python data/paraphrase/select_pairs.py

- EDITED edited copies with their originals (every 6th of them, in corpus order);
- natural neighbours: every original text's nearest other original under minilm-static and under a
  word TF-IDF (unigrams and bigrams, scikit-learn; lexical, independent of either embedding model), kept
  when either gives the pair a cosine >= 0.6, then PER_BIN of them from each cosine bin (the higher of the
  two cosines) 0.6-0.7, 0.7-0.8, 0.8-0.9, 0.9-1.0, every k-th in corpus order. The all-MiniLM-L6-v2
  encoder takes no part in choosing pairs (it is one of the options measured on them). These are natural
  near-duplicates (the same tweet at several accounts, the same headline with another link) and the hard
  negatives a threshold must reject (same topic, different content).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EDITED = 6
PER_BIN = 45
BINS = (0.6, 0.7, 0.8, 0.9, 1.01)


def embed_both(texts: list[str]) -> dict[str, np.ndarray]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from llmdistill.config.filter import SemanticDedupStep
    from llmdistill.filter import semantic

    tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(texts)  # rows have unit norm
    return {"minilm-static": semantic.embedder(SemanticDedupStep(name="semantic_dedup")).embed(texts),
            "tfidf": tfidf.tocsr()}


def nearest(emb: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each row of `ids`'s nearest other row among `ids` (exact)."""
    e = emb[ids]
    sims = e @ e.T
    sims = sims.toarray() if hasattr(sims, "toarray") else sims
    np.fill_diagonal(sims, -2)
    return ids[sims.argmax(1)]


def cosine(emb, a: int, b: int) -> float:
    v = emb[a] @ emb[b].T
    return float(v.toarray()[0, 0] if hasattr(v, "toarray") else v)


def main() -> None:
    rows = [json.loads(line) for line in (HERE / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = [r["text"] for r in rows]
    pos = {r["id"]: i for i, r in enumerate(rows)}
    emb = embed_both(texts)
    pairs: list[tuple[int, int, str]] = []
    edited = [(pos[r["of"]], i) for i, r in enumerate(rows) if r["of"]]
    pairs += [(a, b, "edited") for a, b in edited[::EDITED]]
    originals = np.array([i for i, r in enumerate(rows) if not r["of"]])
    cand = set()
    for e in emb.values():
        for a, b in zip(originals.tolist(), nearest(e, originals).tolist()):
            cand.add((min(a, b), max(a, b)))
    cand = sorted(cand)
    best = np.array([max(cosine(e, a, b) for e in emb.values()) for a, b in cand])
    for lo, hi in zip(BINS, BINS[1:]):
        inside = [p for p, c in zip(cand, best) if lo <= c < hi]
        step = max(1, len(inside) // PER_BIN)
        pairs += [(a, b, f"neighbour {lo:.1f}") for a, b in inside[::step][:PER_BIN]]
    with open(HERE / "to_label.jsonl", "w", encoding="utf-8") as f:
        for a, b, kind in pairs:
            f.write(json.dumps({"a": rows[a]["id"], "b": rows[b]["id"], "kind": kind, "text_a": texts[a],
                                "text_b": texts[b]}, ensure_ascii=False) + "\n")
    print(f"{len(pairs)} pairs to label ({len(edited[::EDITED])} edited, {len(pairs) - len(edited[::EDITED])} "
          "natural neighbours)")


if __name__ == "__main__":
    main()
