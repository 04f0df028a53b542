"""Every stage end to end on the tiny offline teacher, plus skip/rerun rules, locks and bad input."""

import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import PYTHON
from llmdistill import store
from llmdistill.config import load_config
from llmdistill.errors import UserError
from llmdistill.pipeline import STARTED, fingerprints, run_stages
from llmdistill.runner import RunLock


def cli(*args, cwd=None):
    return subprocess.run([PYTHON, "-m", "llmdistill.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture()
def finished_run(tiny_config):
    path, _ = tiny_config
    cfg = load_config(path)
    assert run_stages(cfg) == {s: "ran" for s in ("generate", "filter", "train", "eval")}
    return path, cfg


def test_every_stage_writes_its_outputs(finished_run):
    _, cfg = finished_run
    run = cfg.run_dir
    assert (run / "config.resolved.yaml").exists()
    for stage in ("generate", "filter", "train", "eval"):
        assert store.read_success(run / stage)["fingerprint"] == fingerprints(cfg)[stage]
        assert not (run / stage / STARTED).exists()
    manifest = store.read_manifest(run / "generate")
    prov = manifest["provenance"]
    for key in ("tokenizer_hash", "chat_template_hash", "vocab_size", "topk", "logprob_mode",
                "capture_temperature", "capture_top_p"):
        assert key in prov
    assert prov["topk"] == 8 and prov["logprob_mode"] == "raw"
    assert manifest["counts"]["rows"] == 12 and manifest["counts"]["levels"] == {"1": 4, "2": 4, "3": 4}
    gen = store.load_dataset(run / "generate")
    assert gen["level"] == sorted(gen["level"])  # curriculum order
    assert len(set(gen["id"])) == 12
    assert (run / "train" / "student" / "config.json").exists()
    assert (run / "train" / "sft_baseline" / "config.json").exists()
    metrics = store.read_json(run / "eval" / "metrics.json")
    for name in ("teacher", "student", "sft_baseline"):
        m = metrics["models"][name]
        assert m["tokens"] > 0 and m["parameters"] > 0 and m["latency_ms_per_token"] > 0
        assert 0.0 <= m["top1_agreement"] <= 1.0 and m["kl_to_teacher"] >= 0.0
    assert metrics["models"]["teacher"]["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)
    assert "ece" not in metrics["models"]["teacher"] and "ece" in metrics["models"]["student"]
    assert metrics["models"]["student"]["parameters"] < metrics["models"]["teacher"]["parameters"]
    assert (run / "eval" / "samples.jsonl").exists()


def test_rerun_is_a_noop_and_a_train_change_reruns_train_and_eval_only(finished_run):
    path, cfg = finished_run
    assert run_stages(cfg) == {s: "skipped" for s in ("generate", "filter", "train", "eval")}
    changed = load_config(path, ["train.max_steps=2"])
    assert run_stages(changed) == {"generate": "skipped", "filter": "skipped", "train": "ran", "eval": "ran"}
    assert store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]["steps"] == 2


def test_force_reruns_the_stage_and_everything_after_it(finished_run):
    _, cfg = finished_run
    assert run_stages(cfg, force={"filter"}) == {"generate": "skipped", "filter": "ran", "train": "ran", "eval": "ran"}


def test_a_forced_rerun_killed_downstream_redoes_the_downstream_next_time(finished_run):
    # the forced filter rerun completes (a new output token, whatever its rows); train is killed at its first
    # step. train's old output still carries the current fingerprint but was built from the old filter output:
    # it must not count as done
    path, cfg = finished_run
    env = {**os.environ, "LLMDISTILL_FAULT": "train:step:1"}
    killed = subprocess.run([PYTHON, "-m", "llmdistill.cli", "run", str(path), "--force", "filter"],
                            capture_output=True, text=True, env=env)
    assert killed.returncode != 0
    filter_token = store.read_success(cfg.run_dir / "filter")["output"]
    assert store.read_success(cfg.run_dir / "train")["upstream_output"] != filter_token  # the old train output
    assert run_stages(cfg) == {"generate": "skipped", "filter": "skipped", "train": "ran", "eval": "ran"}
    assert store.read_success(cfg.run_dir / "train")["upstream_output"] == filter_token


def test_kept_rows_keep_their_logits(finished_run):
    _, cfg = finished_run
    generated = {s["id"]: s for s in store.load_dataset(cfg.run_dir / "generate")}
    kept = store.load_dataset(cfg.run_dir / "filter")
    assert len(kept) > 0
    order = [i for i in generated if i in set(kept["id"])]
    assert kept["id"] == order  # filtering keeps the curriculum order
    for row in kept:
        src = generated[row["id"]]
        assert row["completion"] == src["completion"]
        assert row["completion_token_ids"] == src["completion_token_ids"]
        np.testing.assert_array_equal(np.array(row["topk_ids"]), np.array(src["topk_ids"]))
        np.testing.assert_array_equal(np.array(row["topk_logprobs"]), np.array(src["topk_logprobs"]))


def _as_if_killed_before_the_final_save(cfg):
    train_dir = cfg.run_dir / "train"
    (train_dir / "_SUCCESS").unlink()
    (train_dir / STARTED).write_text(fingerprints(cfg)["train"])
    (train_dir / "student" / "_SUCCESS").unlink()
    (train_dir / "metrics.json").unlink()
    return train_dir


def test_train_resumes_from_its_last_checkpoint(finished_run, caplog):
    _, cfg = finished_run
    train_dir = cfg.run_dir / "train"
    checkpoints = train_dir / "checkpoints" / "student"
    assert sorted(c.name for c in checkpoints.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    # killed after the last checkpoint: its weights become the final student, no extra step
    _as_if_killed_before_the_final_save(cfg)
    with caplog.at_level(logging.INFO, logger="llmdistill"):
        assert run_stages(cfg)["train"] == "ran"
    assert "student finished at" in caplog.text and "checkpoint-4" in caplog.text
    assert store.read_json(train_dir / "metrics.json")["student"]["steps"] == 4

    # killed mid-way: training continues from checkpoint-2 up to max_steps
    _as_if_killed_before_the_final_save(cfg)
    shutil.rmtree(checkpoints / "checkpoint-4")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="llmdistill"):
        assert run_stages(cfg)["train"] == "ran"
    assert "student resuming from" in caplog.text and "checkpoint-2" in caplog.text
    assert store.read_json(train_dir / "metrics.json")["student"]["steps"] == 4


def test_second_run_on_a_locked_run_dir_exits_with_a_clear_message(tiny_config):
    path, _ = tiny_config
    cfg = load_config(path)
    with RunLock(cfg.run_dir):
        res = cli("run", path)
    assert res.returncode == 3
    assert "is in use by another llmdistill process" in res.stderr and "Traceback" not in res.stderr


def test_stage_command_needs_its_upstream(tiny_config):
    path, _ = tiny_config
    res = cli("train", path)
    assert res.returncode == 2
    assert "needs the filter stage's output, which is missing" in res.stderr


def test_inspect_shows_removed_rows_with_reasons(tiny_config):
    path, data = tiny_config
    # the length step alone, so every row is removed by it whatever the sampled text (one can come out empty)
    data["filter"]["steps"] = [{"name": "length", "min_words": 1000}]
    path.write_text(yaml.safe_dump(data))
    assert cli("generate", path).returncode == 0
    assert cli("filter", path).returncode == 0
    run = load_config(path).run_dir
    assert store.read_json(run / "filter" / "stats.json")["removed_by_reason"] == {"too_short": 12}
    res = cli("inspect", run, "--removed", "-n", "2")
    assert res.returncode == 0
    assert res.stdout.count("removed: too_short") == 2
    res = cli("inspect", run)
    assert "kept 0 of 12" in res.stdout
    res = cli("train", path)  # nothing left to train on: a clear error
    assert res.returncode == 2 and "no samples left after filtering" in res.stderr


def test_student_with_another_tokenizer_and_a_live_teacher_is_refused(tiny_config, tiny):
    """Cross-tokenizer distillation works from the stored top-k (test_train_modes runs it); a live teacher
    on another tokenizer scores token ids the student does not have, so the run stops before step 1."""
    path, _ = tiny_config
    cfg = load_config(path, [f"train.student.model={tiny['other']}", "train.student.teacher_layers=null",
                             "train.teacher_signal=live"])
    with pytest.raises(UserError, match="cross-tokenizer distillation works from the stored top-k"):
        run_stages(cfg)


def test_bad_prompt_line_is_named(tiny_config):
    path, data = tiny_config
    seeds = load_config(path).generate.prompts[0]
    with open(seeds, "a") as f:
        f.write("{oops\n")
    res = cli("run", path)
    assert res.returncode == 2
    assert f"{seeds}:13: not valid JSON" in res.stderr and "Traceback" not in res.stderr


def test_every_file_of_a_run_follows_the_umask(tiny_config):
    """Under umask 027 every file a whole run writes (shards, manifests, checkpoints, the students' safetensors,
    metrics, the report) is readable by the group: none is left at mkstemp's or safetensors' 0600."""
    import stat

    path, data = tiny_config
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "run", str(path)], capture_output=True, text=True,
                         timeout=900, preexec_fn=lambda: os.umask(0o027))
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = Path(data["output_dir"]) / data["name"]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" and "checkpoint-" in str(p) for p in files)
    assert any(p.name == "model.safetensors" and p.parent.name == "student" for p in files)
    wrong = {str(p.relative_to(run_dir)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
             if stat.S_IMODE(p.stat().st_mode) != 0o640}
    assert not wrong, wrong
