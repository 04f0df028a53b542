"""A persistent index of what earlier runs kept, so an incremental run drops what the student has seen.

On disk, a directory:

    index.json          parameters (num_perm, bands, ngram, seed, scope) and one entry per segment
    seg-<owner>.npz     one segment per run that added rows: `exact` [n] uint64 (first 8 bytes of the
                        normalised-text blake2b, as exact_dedup), `signatures` [n, num_perm] uint32
                        (R-MinHash of the word-shingle set, as near_dedup), `ids` [n] record ids

API (used by the filter stage's `history_dedup` step and by incremental retraining):

    index = HistoryIndex.open(path, num_perm=128, ngram=3, seed=1, scope="prompt_completion")
    index.contains_exact(hashes)                  -> bool [n]   rows whose exact hash was kept before
    index.near_candidates(signatures)             -> list of arrays of history rows sharing an LSH band
    index.near_matches(signatures, threshold=0.8) -> bool [n]   estimated Jaccard >= threshold with a row
    index.add(owner, hashes, signatures, ids)     -> writes (or replaces) the segment of `owner`
    index.exclude(owner)                          -> an index without that owner's rows (a rerun of the
                                                     same run must not find its own rows)
    len(index)

`owner` names the run that kept the rows (the filter stage uses "<run dir>@<fingerprint>"): adding again
under the same owner replaces its segment, so a rerun never double-counts. Every file is written
atomically; parameters are fixed when the index is created and checked when it is opened (a mismatch is
a UserError naming the field). Near matches use the signature agreement (an estimate of Jaccard), since
the texts of earlier runs are not kept.

Each segment records the `textnorm.VERSION` its hashes were made with. A segment from an older version
still works (its ASCII rows hash as before) but rows with typographic quotes, dashes, Unicode spaces or
'_' may not match: opening such an index logs a warning naming it, until those runs are rerun (their
segments replaced) or the index is rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from pathlib import Path

import numpy as np

from llmdistill import store, textnorm
from llmdistill.errors import UserError
from llmdistill.filter import minhash

INDEX = "index.json"
log = logging.getLogger("llmdistill")


def exact_u64(digests: list[bytes]) -> np.ndarray:
    """uint64 keys from exact-dedup digests (their first 8 bytes)."""
    return np.frombuffer(b"".join(d[:8] for d in digests), dtype="<u8").copy() if digests else np.zeros(0, np.uint64)


def _segment_name(owner: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", owner)[-60:]
    return f"seg-{slug}-{hashlib.blake2b(owner.encode(), digest_size=6).hexdigest()}.npz"


class HistoryIndex:
    def __init__(self, path: Path, params: dict, segments: list[dict], excluded: frozenset = frozenset()):
        self.path, self.params, self.segments, self.excluded = Path(path), params, segments, excluded
        self.bands = params["bands"]
        exact, sigs, ids, stale = [], [], [], 0
        for seg in segments:
            if seg["owner"] in excluded:
                continue
            stale += seg["rows"] if seg.get("text", 1) != textnorm.VERSION else 0
            with np.load(self.path / seg["file"]) as z:
                exact.append(z["exact"])
                sigs.append(z["signatures"])
                ids.extend(z["ids"].tolist())
        self.exact = np.sort(np.concatenate(exact)) if exact else np.zeros(0, np.uint64)
        self.signatures = np.concatenate(sigs) if sigs else np.zeros((0, params["num_perm"]), np.uint32)
        self.ids = ids
        if stale and not excluded:
            log.warning("history index %s: %d rows were hashed with an older text normalisation (before "
                        "textnorm v%d); those with non-ASCII quotes, dashes or spaces may not match until "
                        "their runs are rerun or the index is rebuilt", self.path, stale, textnorm.VERSION)
        keys = minhash.band_keys(self.signatures, self.bands)
        self._order = np.argsort(keys, axis=0, kind="stable")
        self._sorted_keys = np.take_along_axis(keys, self._order, axis=0)

    @classmethod
    def open(cls, path, num_perm: int = 128, bands: int | None = None, ngram: int = 3, seed: int = 1,
             scope: str = "prompt_completion", threshold: float = 0.8) -> HistoryIndex:
        """Open the index at `path`, creating it (with these parameters) when it does not exist."""
        path = Path(path)
        params = {"num_perm": num_perm, "bands": bands or minhash.optimal_bands(threshold, num_perm)[0],
                  "ngram": ngram, "seed": seed, "scope": scope}
        meta_path = path / INDEX
        if meta_path.exists():
            meta = store.read_json(meta_path)
            for k in ("num_perm", "ngram", "seed", "scope"):
                if meta["params"][k] != params[k]:
                    raise UserError(f"history index {path} was built with {k}={meta['params'][k]!r}, "
                                    f"not {params[k]!r}: use another path or the same setting")
            params["bands"] = meta["params"]["bands"]
            return cls(path, params, meta["segments"])
        path.mkdir(parents=True, exist_ok=True)
        store.atomic_write_json(meta_path, {"params": params, "segments": []})
        return cls(path, params, [])

    def exclude(self, owner: str) -> HistoryIndex:
        return HistoryIndex(self.path, self.params, self.segments, self.excluded | {owner})

    def __len__(self) -> int:
        return len(self.exact)

    def contains_exact(self, hashes: np.ndarray) -> np.ndarray:
        hashes = np.asarray(hashes, dtype=np.uint64)
        if len(self.exact) == 0:
            return np.zeros(len(hashes), bool)
        pos = np.clip(np.searchsorted(self.exact, hashes), 0, len(self.exact) - 1)
        return self.exact[pos] == hashes

    def near_candidates(self, signatures: np.ndarray) -> list[np.ndarray]:
        keys = minhash.band_keys(np.asarray(signatures, np.uint32), self.bands)
        out = []
        for q in keys:
            found = []
            for b in range(self.bands):
                lo = np.searchsorted(self._sorted_keys[:, b], q[b], side="left")
                hi = np.searchsorted(self._sorted_keys[:, b], q[b], side="right")
                if hi > lo:
                    found.append(self._order[lo:hi, b])
            out.append(np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64))
        return out

    def near_matches(self, signatures: np.ndarray, threshold: float = 0.8) -> np.ndarray:
        signatures = np.asarray(signatures, np.uint32)
        out = np.zeros(len(signatures), bool)
        if len(self.signatures) == 0:
            return out
        for i, cand in enumerate(self.near_candidates(signatures)):
            if len(cand):
                est = (self.signatures[cand] == signatures[i]).mean(axis=1)
                out[i] = bool((est >= threshold).any())
        return out

    def add(self, owner: str, hashes: np.ndarray, signatures: np.ndarray, ids: list[str]) -> None:
        """Write the rows `owner` kept (replacing any earlier segment of the same owner)."""
        name = _segment_name(owner)
        buf = io.BytesIO()
        np.savez_compressed(buf, exact=np.asarray(hashes, np.uint64), signatures=np.asarray(signatures, np.uint32),
                            ids=np.asarray(ids, dtype=str))
        store.atomic_write_bytes(self.path / name, buf.getvalue())
        meta = store.read_json(self.path / INDEX)
        segments = [s for s in meta["segments"] if s["owner"] != owner]
        segments.append({"owner": owner, "file": name, "rows": len(hashes), "text": textnorm.VERSION})
        store.atomic_write_json(self.path / INDEX, {"params": meta["params"], "segments": segments})
