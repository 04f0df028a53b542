"""The corpus steps of the filter stage: near and semantic dedup decide on the whole corpus at once, history
dedup checks an index that outlives the run (filter/steps.py names them; filter/stage.py runs them).

`rows` is the stage's per-row state (`stage.Rows`): the alive rows' samples, their levels, ids and scores.
Near and semantic dedup each come in two halves: a map run per part of the input (`near_map`: band keys;
`semantic_map`: embeddings), on this process or as Ray tasks (`map_parts`, parts.py), and one decision on the
gathered results in the driver. They visit the rows in `keep` order; one is removed only when a verified pair
joins it to a row already kept (`minhash.greedy_removals`), and the kept row is named in its metadata.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from llmdistill import config as C
from llmdistill import records
from llmdistill.filter import filters, minhash, parts
from llmdistill.filter.parts import Part


def _text_chunks(items, scope: str, chunk: int):
    """(row indices, texts) chunks of `items`, (row index, sample) pairs."""
    idx, texts = [], []
    for i, s in items:
        idx.append(i)
        texts.append(filters.text_key(s, scope))
        if len(idx) >= chunk:
            yield np.array(idx, np.int64), texts
            idx, texts = [], []
    if idx:
        yield np.array(idx, np.int64), texts


def keep_order(members: np.ndarray, rows, keep: str, score: str | None) -> np.ndarray:
    """The positions of `members` (row indices, ascending) best first for `keep`: first seen, lowest level,
    or highest score (rows without the score last); ties go to the row seen first."""
    if keep == "lowest_level":
        return np.argsort(rows.levels[members], kind="stable")
    if keep == "highest_score":
        vals = rows.scores.get(score, np.full(rows.n, np.nan))[members]
        return np.argsort(-np.where(np.isnan(vals), -np.inf, vals), kind="stable")
    return np.arange(len(members))


def _apply_removals(rows, members: np.ndarray, removed: dict[int, int], reason: str, stats: dict,
                    field: str) -> None:
    """Remove the rows of `removed` ({member position: kept member position}) with `reason`, naming the kept
    row in `metadata[field]`; a cluster in the stats is a kept row and the rows removed for it."""
    for j, rep in removed.items():
        rows.remove(int(members[j]), reason, **{field: rows.ids[members[rep]]})
    sizes = [n + 1 for n in Counter(removed.values()).values()]
    hist = Counter(sizes)
    stats.setdefault("clusters", {})[reason] = {
        "clusters": len(sizes), "rows_removed": len(removed), "largest": max(sizes, default=0),
        "size_histogram": {str(k): v for k, v in sorted(hist.items())}}


def near_map(part: Part, alive: np.ndarray, read_rows: int, step: C.NearDedupStep, bands: int) -> dict:
    """Near dedup's per-part half: the `bands` LSH band keys of each alive row's MinHash signature."""
    idx, keys, valid = [np.zeros(0, np.int64)], [np.zeros((0, bands), np.uint64)], [np.zeros(0, bool)]
    for i, texts in _text_chunks(parts.samples(part, alive, read_rows), step.scope, step.chunk_rows):
        sig, ok = minhash.signatures(texts, step.ngram, step.num_perm, step.seed)
        idx.append(i), keys.append(minhash.band_keys(sig, bands)), valid.append(ok)
    return {"idx": np.concatenate(idx), "keys": np.concatenate(keys), "valid": np.concatenate(valid)}


def run_near_dedup(rows, step: C.NearDedupStep, stats: dict, map_parts) -> None:
    """Band keys per part (`map_parts`, the stage's executor), then once for the corpus: candidates, the exact
    Jaccard check (reading the candidates' texts only) and the greedy choice."""
    finder = minhash.NearDuplicateFinder(step.threshold, step.num_perm, step.bands, step.ngram, step.seed)
    results = map_parts("near_dedup", near_map, (step, finder.bands), [step.model_dump(mode="json"), finder.bands])
    for res in results:
        finder.add_keys(res["keys"], res["valid"])
    members_arr = np.concatenate([r["idx"] for r in results]) if results else np.zeros(0, np.int64)

    def read(local: np.ndarray):
        for idx, texts in _text_chunks(rows.samples(only=members_arr[local]), step.scope, step.chunk_rows):
            yield np.searchsorted(members_arr, idx), texts

    order = keep_order(members_arr, rows, step.keep, step.score)
    removed, pairs, n_candidates = finder.removals(read, order)
    stats.setdefault("near_dedup", {}).update({"bands": finder.bands, "candidate_pairs": n_candidates,
                                               "verified_pairs": len(pairs)})
    _apply_removals(rows, members_arr, removed, "near_duplicate", stats, "near_duplicate_of")


def _embedder(step: C.SemanticDedupStep):
    from llmdistill.filter import semantic

    key = step.model_dump_json(include={"model", "backend", "device", "max_length", "batch_size"})
    return parts.built(f"embedder:{key}", lambda: semantic.embedder(step))


def semantic_map(part: Part, alive: np.ndarray, read_rows: int, step: C.SemanticDedupStep) -> dict:
    """Semantic dedup's per-part half: each alive row's embedding (fp16: half the memory; cosines are checked in
    fp32)."""
    embedder = _embedder(step)
    idx, embs = [np.zeros(0, np.int64)], [np.zeros((0, embedder.dim), np.float16)]
    for i, texts in _text_chunks(parts.samples(part, alive, read_rows), step.scope, 4096):
        idx.append(i)
        embs.append(embedder.embed(texts).astype(np.float16))
    return {"idx": np.concatenate(idx), "emb": np.concatenate(embs)}


def run_semantic_dedup(rows, step: C.SemanticDedupStep, stats: dict, map_parts) -> None:
    """Embeddings per part (`map_parts`), then once for the corpus: the pairs at cosine >= threshold and the
    greedy choice."""
    from llmdistill.filter import semantic

    results = map_parts("semantic_dedup", semantic_map, (step,), step.model_dump(mode="json"))
    if results:
        members_arr = np.concatenate([r["idx"] for r in results])
        emb = np.concatenate([r["emb"] for r in results])
        pairs, _ = semantic.duplicate_pairs(emb, step)
    else:
        members_arr, pairs = np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
    removed = minhash.greedy_removals(keep_order(members_arr, rows, step.keep, step.score), pairs)
    stats.setdefault("semantic_dedup", {}).update({"verified_pairs": len(pairs)})
    _apply_removals(rows, members_arr, removed, "semantic_duplicate", stats, "semantic_duplicate_of")


class HistoryStep:
    """history_dedup: drop rows an earlier run kept; remember this run's kept rows at the end."""

    def __init__(self, step: C.HistoryDedupStep, owner: str):
        from llmdistill.filter.history import HistoryIndex

        self.step, self.owner = step, owner
        self.index = HistoryIndex.open(step.path, scope=step.scope,
                                       threshold=step.near_threshold or 0.8).exclude(owner)

    def _hashes(self, samples: list[records.Sample]) -> tuple[np.ndarray, np.ndarray]:
        from llmdistill.filter.history import exact_u64

        p = self.index.params
        exact = exact_u64([filters.exact_hash(s, p["scope"]) for s in samples])
        sigs, _ = minhash.signatures([filters.text_key(s, p["scope"]) for s in samples], p["ngram"],
                                     p["num_perm"], p["seed"])
        return exact, sigs

    def run(self, rows, stats: dict) -> None:
        seen = Counter()
        batch: list[tuple[int, records.Sample]] = []

        def check() -> None:
            exact, sigs = self._hashes([s for _, s in batch])
            hit = self.index.contains_exact(exact)
            near = (self.index.near_matches(sigs, self.step.near_threshold) if self.step.near_threshold
                    else np.zeros(len(batch), bool))
            for (i, _), e, nm in zip(batch, hit, near):
                if e or nm:
                    reason = "seen_before" if e else "seen_before_near"
                    rows.remove(i, reason)
                    seen[reason] += 1
            batch.clear()

        for item in rows.samples():
            batch.append(item)
            if len(batch) >= 4096:
                check()
        if batch:
            check()
        stats["history"] = {"path": str(self.step.path), "index_rows": len(self.index), **seen}

    def add_kept(self, rows) -> int:
        exact, sigs, ids = [], [], []
        chunk: list[records.Sample] = []
        for _, s in rows.samples():
            chunk.append(s)
            if len(chunk) >= 4096:
                e, g = self._hashes(chunk)
                exact.append(e), sigs.append(g), ids.extend(x.id for x in chunk)
                chunk = []
        if chunk:
            e, g = self._hashes(chunk)
            exact.append(e), sigs.append(g), ids.extend(x.id for x in chunk)
        if not ids:
            return 0
        self.index.add(self.owner, np.concatenate(exact), np.concatenate(sigs), ids)
        return len(ids)

