"""Offline on-policy distillation (train.on_policy.rollouts: offline) on the tiny models: rounds of the student's
samples scored once by the teacher and stored, a kill mid-round resumed to the same rows and weights, teacher
consistency checked from the manifests, and the repetition cut."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from conftest import PYTHON, build_llama, build_tokenizer, make_tiny_config
from llmdistill import store
from llmdistill.config import load_config
from llmdistill.pipeline import run_stages
from llmdistill.train.opd import ROLLOUT_COLUMN
from llmdistill.train.repetition import cut_repetition, repetitive_suffix

OPD = ["train.mode=on_policy", "train.sft_baseline=false", "train.max_steps=4", "train.save_steps=1",
       "train.on_policy={rollouts: offline, rounds: 2, max_new_tokens: 8, generator: hf, prompts_per_round: 6, "
       "loss: [{name: reverse_kl, weight: 1.0}, {name: sampled_reverse_kl, weight: 0.5}]}",
       "eval.latency_prompts=1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny):
    path, _ = make_tiny_config(tmp_path_factory.mktemp("opd"), tiny)
    run_stages(load_config(path, OPD), ("generate", "filter"))
    return path


def weights(path):
    return load_file(str(path / "model.safetensors"))


def rollout_rows(cfg, r):
    return store.read_table(cfg.run_dir / "train" / "opd" / "student" / f"round-{r}" / "rollouts").to_pylist()


def test_rounds_store_scored_samples_and_train_on_them(base):
    cfg = load_config(base, OPD)
    out = run_stages(cfg)
    assert out["train"] == "ran"
    m = store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]
    assert m["steps"] == 4 and [p["phase"] for p in m["phases"]] == ["round-1", "round-2"]
    assert [r["rows"] for r in m["rollouts"]["rounds"]] == [6, 6]
    logged = m["last_logged"]
    assert logged["loss_reverse_kl"] >= 0 and "loss_sampled_reverse_kl" in logged and logged["loss_ce"] > 0
    for r in (1, 2):
        d = cfg.run_dir / "train" / "opd" / "student" / f"round-{r}" / "rollouts"
        assert store.read_success(d) is not None
        manifest = store.read_manifest(d)
        assert manifest["provenance"]["generator"] == "hf" and manifest["round"] == r
        for row in rollout_rows(cfg, r):
            # the teacher's top-k and its exact log-prob for every token the student sampled
            assert len(row["topk_ids"]) == len(row["completion_token_ids"]) == len(row[ROLLOUT_COLUMN]) > 0
            assert all(lp <= 1e-4 for lp in row[ROLLOUT_COLUMN])
    # round 2 samples from round 1's student: other samples than round 1's
    assert [r["completion_token_ids"] for r in rollout_rows(cfg, 1)] != \
        [r["completion_token_ids"] for r in rollout_rows(cfg, 2)]
    assert store.read_success(cfg.run_dir / "train" / "student") is not None
    history = store.read_json(cfg.run_dir / "train" / "log_history.student.json")
    assert max(h["step"] for h in history if "loss" in h) == 4  # the phases end to end
    from llmdistill.report import write_report

    page = write_report(cfg.run_dir).read_text()  # the report shows each round (it raised KeyError before)
    assert "offline on-policy round 2" in page and "samples of the student (hf)" in page


def test_a_kill_mid_round_resumes_to_the_same_rows_and_weights(base):
    clean = load_config(base, [*OPD, "name=clean"])
    run_stages(clean, ("generate", "filter", "train"))
    killed = load_config(base, [*OPD, "name=killed"])
    run_stages(killed, ("generate", "filter"))
    args = [PYTHON, "-m", "llmdistill.cli", "train", str(base), "name=killed", *OPD]
    # killed in round 2's rollouts (the train stage's third shard: round 1's two, then round 2's first), then in
    # round 2's training after its second step (before that step's checkpoint; its first one is saved)
    for fault in ("train:shard:3", "train:step:2"):
        res = subprocess.run(args, env={**os.environ, "LLMDISTILL_FAULT": fault}, capture_output=True, timeout=900)
        assert res.returncode != 0, res.stderr.decode()[-2000:]
    res = subprocess.run(args, capture_output=True, timeout=900)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    for r in (1, 2):
        assert rollout_rows(killed, r) == rollout_rows(clean, r)
    a, b = weights(clean.run_dir / "train" / "student"), weights(killed.run_dir / "train" / "student")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_another_teacher_is_refused_unless_allowed(base, tmp_path):
    """The data's manifest names the teacher that wrote it; a run that would score the student's samples with
    another one stops with one line (and goes on when the user says so)."""
    from llmdistill.errors import UserError
    from llmdistill.train.opd import check_teacher_consistency

    data = load_config(base, OPD)
    teachers = {"default": store.read_manifest(data.run_dir / "filter")["provenance"]}
    check_teacher_consistency(data, teachers)  # the teacher that wrote the data: fine
    other = build_llama(tmp_path / "other-teacher", build_tokenizer(tmp_path / "tok"), layers=2, seed=7)
    with pytest.raises(UserError, match="teacher consistency") as e:
        check_teacher_consistency(load_config(base, [*OPD, f"teacher.model={other}"]), teachers)
    assert "allow_other_teacher" in str(e.value) and "\n" not in str(e.value)
    allowed = OPD[:-2] + [OPD[-2].replace("rollouts: offline", "rollouts: offline, allow_other_teacher: true"),
                          OPD[-1]]
    check_teacher_consistency(load_config(base, [*allowed, f"teacher.model={other}"]), teachers)


def test_repetitive_suffixes_are_cut_after_their_first_copy():
    loop = [5, 6, 7, 8]
    assert cut_repetition([1, 2, 3] + loop * 4 + [5, 6], {0}) == ([1, 2, 3, 5, 6, 7, 8], True)
    assert repetitive_suffix([9] * 10) == (0, 1)
    assert cut_repetition([4, 9, 9, 9, 9, 9, 9, 9, 9, 9, 0], {0}) == ([4, 9], True)  # a final EOS looked past
    assert cut_repetition([1, 2, 1, 2, 3], {0}) == ([1, 2, 1, 2, 3], False)  # two copies are not a loop
    assert cut_repetition([1, 2, 3, 4, 0], {0}) == ([1, 2, 3, 4, 0], False)
    assert cut_repetition([7] * 7, set()) == ([7] * 7, False)  # fewer than MIN_RUN


def test_a_student_that_ends_its_turn_otherwise_is_refused(tmp_path):
    from llmdistill.errors import UserError
    from llmdistill.train.preflight import check_turn_end, turn_end

    teacher = build_tokenizer(tmp_path / "tok")  # ChatML: a turn ends with <|im_end|>, its EOS
    assert turn_end(teacher) == "<|im_end|>"
    end = teacher.convert_tokens_to_ids("<|im_end|>")
    check_turn_end(teacher, [end], teacher, [end])  # the same tokenizer: fine
    with pytest.raises(UserError, match="ramble|past the end") as e:
        check_turn_end(teacher, [end], teacher, [teacher.convert_tokens_to_ids("<pad>")])
    assert "\n" not in str(e.value)
