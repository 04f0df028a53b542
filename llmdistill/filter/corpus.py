"""The corpus steps of the filter stage: near and semantic dedup decide on the whole corpus at once, history
dedup checks an index that outlives the run (filter/steps.py names them; filter/stage.py runs them).

`rows` is the stage's per-row state (`stage.Rows`): the alive rows' samples, their levels, ids and scores.
Near and semantic dedup visit the rows in `keep` order; one is removed only when a verified pair joins it
to a row already kept (`minhash.greedy_removals`), and the kept row is named in its metadata.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from llmdistill import config as C
from llmdistill import records
from llmdistill.filter import filters, minhash


def _text_chunks(rows, scope: str, chunk: int, only: np.ndarray | None = None):
    """(row indices, texts) chunks of the alive rows (or of `only`)."""
    idx, texts = [], []
    for i, s in rows.samples(only=only):
        idx.append(i)
        texts.append(filters.text_key(s, scope))
        if len(idx) >= chunk:
            yield np.array(idx), texts
            idx, texts = [], []
    if idx:
        yield np.array(idx), texts


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


def run_near_dedup(rows, step: C.NearDedupStep, stats: dict) -> None:
    finder = minhash.NearDuplicateFinder(step.threshold, step.num_perm, step.bands, step.ngram, step.seed)
    members: list[np.ndarray] = []
    for idx, texts in _text_chunks(rows, step.scope, step.chunk_rows):
        finder.add(texts)
        members.append(idx)
    members_arr = np.concatenate(members) if members else np.zeros(0, np.int64)

    def read(local: np.ndarray):
        for idx, texts in _text_chunks(rows, step.scope, step.chunk_rows, only=members_arr[local]):
            yield np.searchsorted(members_arr, idx), texts

    order = keep_order(members_arr, rows, step.keep, step.score)
    removed, pairs, n_candidates = finder.removals(read, order)
    stats.setdefault("near_dedup", {}).update({"bands": finder.bands, "candidate_pairs": n_candidates,
                                               "verified_pairs": len(pairs)})
    _apply_removals(rows, members_arr, removed, "near_duplicate", stats, "near_duplicate_of")


def run_semantic_dedup(rows, step: C.SemanticDedupStep, stats: dict) -> None:
    from llmdistill.filter import semantic

    embedder = semantic.embedder(step)
    members, embs = [], []
    for idx, texts in _text_chunks(rows, step.scope, 4096):
        members.append(idx)
        embs.append(embedder.embed(texts).astype(np.float16))  # half the memory; cosines are checked in fp32
    members_arr = np.concatenate(members) if members else np.zeros(0, np.int64)
    emb = np.concatenate(embs) if embs else np.zeros((0, embedder.dim), np.float16)
    pairs, _ = semantic.duplicate_pairs(emb, step)
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

