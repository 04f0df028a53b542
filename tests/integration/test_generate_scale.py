"""Generation at scale on the tiny offline teachers: --shard i/n in parallel processes then merge,
several routed teachers, evolution, bad prompt lines, and the trainer's refusal to mix tokenizers."""

import json
import subprocess

import pytest
import yaml

from conftest import PYTHON, write_prompts
from llmdistill import store
from llmdistill.config import load_config
from llmdistill.errors import UserError
from llmdistill.pipeline import run_stages


def cli(*args):
    return subprocess.run([PYTHON, "-m", "llmdistill.cli", *map(str, args)], capture_output=True, text=True)


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_three_shards_in_parallel_then_merge_equal_an_unsharded_run(tiny_config, tmp_path):
    path, data = tiny_config
    data["generate"].update(n=2, batch_size=2, shard_rows=2)  # 24 samples, 12 batches, 4 per shard
    write(path, data)
    out = load_config(path).run_dir / "generate"

    early = cli("merge", path)  # nothing has run yet
    assert early.returncode == 2 and "no shard has run" in early.stderr

    procs = [subprocess.Popen([PYTHON, "-m", "llmdistill.cli", "generate", str(path), "--shard", f"{i}/3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 2)]
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    assert store.read_success(out) is None and not (out / store.MANIFEST).exists()
    partial = cli("merge", path)
    assert partial.returncode == 2
    assert "8 of 24 planned samples are missing" in partial.stderr and "shard 1/3" in partial.stderr

    assert cli("generate", path, "--shard", "1/3").returncode == 0
    assert cli("generate", path, "--shard", "1/3").returncode == 0  # a finished shard reruns as a no-op
    merged = cli("merge", path)
    assert merged.returncode == 0, merged.stderr
    assert store.read_success(out) is not None
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["000-of-003.json", "001-of-003.json",
                                                                  "002-of-003.json"]
    sharded = store.load_dataset(out)

    data["output_dir"] = str(tmp_path / "unsharded")
    clean_path = write(tmp_path / "clean.yaml", data)
    assert cli("generate", clean_path).returncode == 0
    clean = store.load_dataset(load_config(clean_path).run_dir / "generate")
    assert len(sharded) == len(set(sharded["id"])) == 24
    assert sharded["id"] == clean["id"]  # same ids, same curriculum order
    assert sharded["completion_token_ids"] == clean["completion_token_ids"]  # per-batch seeds: same content
    assert store.read_manifest(out)["counts"] == store.read_manifest(clean_path.parent / "unsharded" / "tiny" /
                                                                     "generate")["counts"]

    bad = cli("generate", path, "--shard", "3/3")
    assert bad.returncode == 2 and "--shard takes i/n" in bad.stderr


def test_routed_teachers_each_load_once_and_the_trainer_refuses_to_mix_tokenizers(tiny_config, tiny, monkeypatch):
    from llmdistill.generate import stage

    path, data = tiny_config
    data["teachers"] = {"other": {"model": str(tiny["other"])}}
    data["generate"]["routing"] = [{"teacher": "other", "levels": [2]}]
    data["generate"]["batch_size"] = 3  # level 1: default, level 2: other, level 3: default again
    data["generate"]["n"] = 2
    write(path, data)
    cfg = load_config(path)
    loaded = []
    real = stage.build_teacher
    monkeypatch.setattr(stage, "build_teacher", lambda tcfg, g, **kw: loaded.append(tcfg.model) or real(tcfg, g, **kw))
    run_stages(cfg, ["generate"])
    assert loaded == [str(tiny["teacher"]), str(tiny["other"])]  # one at a time, each once

    out = cfg.run_dir / "generate"
    ds = store.load_dataset(out)
    assert ds["level"] == sorted(ds["level"])  # still in curriculum order
    assert [(lv, t) for lv, t in zip(ds["level"], ds["teacher"])] == (
        [(1, "default")] * 8 + [(2, "other")] * 8 + [(3, "default")] * 8)
    manifest = store.read_manifest(out)
    assert manifest["counts"]["teachers"] == {"default": 16, "other": 8}
    assert set(manifest["teachers"]) == {"default", "other"}
    assert manifest["teachers"]["other"]["teacher"]["source"] == str(tiny["other"])
    assert manifest["provenance"] == manifest["teachers"]["default"]
    assert manifest["teachers"]["default"]["tokenizer_hash"] != manifest["teachers"]["other"]["tokenizer_hash"]
    # measured difficulty per sample and per level
    row = ds[0]
    scores = json.loads(row["scores"])
    assert scores["teacher_nll"] == pytest.approx(row["difficulty"], abs=1e-4) and scores["teacher_entropy"] > 0
    assert scores["completion_tokens"] == len(row["completion_token_ids"])
    assert set(manifest["difficulty"]) == {"1", "2", "3"} and manifest["difficulty"]["2"]["samples"] == 8

    live = load_config(path, ["train.teacher_signal=live"])
    with pytest.raises(UserError, match="mixes teachers with different tokenizers .*default .*other"):
        run_stages(live, ["filter", "train"])
    # the stored top-k of each teacher, each row aligned to its own teacher's tokens: the default teacher's
    # rows (the student's tokenizer) keep their ids, all exact; the other's are aligned by bytes
    stored = load_config(path, ["train.sft_baseline=false", "train.max_steps=2"])
    run_stages(stored, ["filter", "train"])
    m = store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]
    x = m["cross_tokenizer"]
    assert m["preflight"] == "cross_tokenizer" and set(x["shared_vocabulary"]) == {"other"}
    # every token of the default teacher's rows is exact, and some of the other's are not (a share of
    # tokens, not rows: it moves with the completions' lengths)
    own = sum(len(r["completion_token_ids"]) for r in store.load_dataset(cfg.run_dir / "filter")
              if r["teacher"] == "default")
    assert own <= round(x["exact"] * x["tokens"]) < x["tokens"] and m["last_logged"]["loss_forward_kl"] > 0
    # text-only training is allowed: every row is re-tokenised with the student's tokenizer
    text_only = load_config(path, ["train.mode=seq_kd", "train.loss=[{name: ce, weight: 1.0}]",
                                   "train.sft_baseline=false", "train.max_steps=2"])
    run_stages(text_only, ["filter", "train"])
    assert store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]["preflight"] == "retokenize"


def test_routed_teachers_on_one_tokenizer_each_score_their_own_samples_live(tiny_config, tiny, tmp_path):
    from transformers import AutoTokenizer

    from conftest import build_llama

    path, data = tiny_config
    second = build_llama(tmp_path / "second", AutoTokenizer.from_pretrained(tiny["teacher"]), layers=2, seed=3)
    data["teachers"] = {"second": {"model": str(second)}}
    data["generate"]["routing"] = [{"teacher": "second", "levels": [2]}]
    data["train"].update(teacher_signal="live", sft_baseline=False, max_steps=2)
    cfg = load_config(write(path, data))
    run_stages(cfg, ["generate", "filter", "train"])
    m = store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]
    assert m["teacher_signal"] == "live" and m["preflight"] == "exact" and m["steps"] == 2
    assert m["last_logged"]["loss_forward_kl"] > 0


def test_evolution_with_the_tiny_teacher_and_skipped_bad_lines(tiny_config, tmp_path):
    path, data = tiny_config
    seeds = write_prompts(tmp_path / "seeds.jsonl", n_per_level=2)
    with open(seeds, "a") as f:
        f.write("{broken\n")
    text = tmp_path / "extra.txt"
    text.write_text("why is the sky blue\n")
    data["generate"].update(prompts=str(seeds), on_bad_line="skip",
                            sources=[{"kind": "file", "path": str(text), "level": 1, "source": "plain"}],
                            evolve={"rounds": 1, "per_prompt": 2, "max_new_tokens": 24, "min_chars": 1,
                                    "operators": ["deepen", "add_reasoning"], "levels": [1, 2]})
    write(path, data)
    cfg = load_config(path)
    run_stages(cfg, ["generate"])
    out = cfg.run_dir / "generate"
    manifest = store.read_manifest(out)
    info = manifest["prompts"]
    assert info["bad_lines"] == 1 and info["bad_line_examples"][0].endswith("seeds.jsonl:7: not valid JSON "
                                                                          "(Expecting property name enclosed in "
                                                                          "double quotes)")
    assert info["seed_prompts"] == 7 and info["sources"] == {"test": 6, "plain": 1}
    ev = info["evolve"]
    assert ev["requested"] == 5 * 2  # levels 1 and 2 only: 4 seeded + 1 plain prompt, two operators each
    assert ev["accepted"] + sum(ev["rejected"].values()) == 10
    assert info["prompts"] == 7 + ev["accepted"] == manifest["counts"]["rows"]
    assert len((out / "evolve.jsonl").read_text().splitlines()) == 10
    prompts = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == info["prompts"] and [p["level"] for p in prompts] == sorted(p["level"] for p in prompts)
    ds = store.load_dataset(out)
    assert [p["id"] for p in prompts] == ds["prompt_id"]


class Crash(Exception):
    pass


def test_interrupted_multi_teacher_run_resumes_to_the_uninterrupted_result(tiny_config, tiny, tmp_path, monkeypatch):
    """Teachers run one after the other, so files are written out of plan order; a crash in the second
    teacher's turn, then a rerun, must still give the plan's ids in plan order with the same content."""
    from llmdistill.generate import stage

    path, data = tiny_config
    data["teachers"] = {"other": {"model": str(tiny["other"])}}
    data["generate"].update(routing=[{"teacher": "other", "levels": [2]}], n=2, batch_size=2, shard_rows=4)
    write(path, data)
    cfg = load_config(path)
    real = stage.build_teacher
    calls = {"n": 0}

    def crashing(tcfg, g, **kw):
        teacher = real(tcfg, g, **kw)
        if tcfg.model == str(tiny["other"]):
            generate = teacher.generate

            def generate_then_crash(prompts, seed):
                calls["n"] += 1
                if calls["n"] == 3:  # two batches of `other` done (one file), the third dies
                    raise Crash()
                return generate(prompts, seed)

            teacher.generate = generate_then_crash
        return teacher

    monkeypatch.setattr(stage, "build_teacher", crashing)
    with pytest.raises(Crash):
        run_stages(cfg, ["generate"])
    out = cfg.run_dir / "generate"
    committed = store.read_ids(out)
    assert len(committed) == 16 + 4  # levels 1 and 3 (default) and the first file of level 2
    monkeypatch.setattr(stage, "build_teacher", real)
    run_stages(cfg, ["generate"])
    resumed = store.load_dataset(out)

    data["output_dir"] = str(tmp_path / "clean")
    clean_cfg = load_config(write(tmp_path / "clean.yaml", data))
    run_stages(clean_cfg, ["generate"])
    clean = store.load_dataset(clean_cfg.run_dir / "generate")
    assert len(resumed) == len(set(resumed["id"])) == 24
    assert resumed["id"] == clean["id"] and resumed["level"] == sorted(resumed["level"])
    assert resumed["completion_token_ids"] == clean["completion_token_ids"]
    assert set(committed) <= set(resumed["id"])
