"""A prompt longer than the teacher's context (a 5 MB line among ordinary ones): checked before anything is
generated, recorded as a failed sample that is never retried (generate.too_long: skip), or refused with the
prompt's file and line (error)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml
from fakeopenai import FakeOpenAI

from conftest import PYTHON, REPO
from llmdistill import models, store
from llmdistill.config import load_config
from llmdistill.pipeline import run_stages

HUGE = "why is the sky blue? " * 250_000  # 5.25 MB on one line


def add_long_prompts(path, medium_words: int = 600):
    """Insert a 5 MB prompt as line 6 and a prompt of about `medium_words` tokens as line 9."""
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.insert(5, json.dumps({"prompt": HUGE, "level": 2, "source": "test"}))
    lines.insert(8, json.dumps({"prompt": " ".join(["déjà vu"] * (medium_words // 2)), "level": 3, "source": "test"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture()
def long_config(tiny_config):
    path, data = tiny_config
    add_long_prompts(path.parent / "seeds.jsonl")
    data["generate"]["max_failed_fraction"] = 0.2
    path.write_text(yaml.safe_dump(data))
    return path


def test_too_long_prompts_are_failed_samples_that_a_rerun_does_not_retry(long_config):
    cfg = load_config(long_config)  # the tiny teacher: max_position_embeddings 512, max_new_tokens 12
    assert run_stages(cfg, ["generate"]) == {"generate": "ran"}
    data = store.read_table(cfg.run_dir / "generate", ["messages", "error", "completion"]).to_pylist()
    assert len(data) == 14
    errors = {r["messages"][-1]["content"][:7]: r["error"] for r in data if r["error"]}
    assert errors["why is "].startswith("prompt too long: at least ")  # found by its size, never tokenised
    assert errors["why is "].endswith("bytes) + max_new_tokens 12 > the teacher's context of 512 tokens")
    assert errors["déjà vu"].startswith("prompt too long: ") and "at least" not in errors["déjà vu"]
    assert sum(r["completion"] is not None for r in data) == 12  # every other prompt was answered
    success = store.read_success(cfg.run_dir / "generate")
    assert success["pending"] == 0  # a prompt too long fails the same way again: not retried
    assert store.read_manifest(cfg.run_dir / "generate")["counts"]["failure_reasons"] == {"prompt too long": 2}
    assert run_stages(cfg, ["generate"]) == {"generate": "skipped"}


def test_too_long_error_names_the_file_and_line(long_config):
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "generate", str(long_config), "generate.too_long=error"],
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    line = [x for x in res.stderr.splitlines() if x.startswith("llmdistill: error:")]
    assert len(line) == 1, res.stderr[-3000:]
    seeds = long_config.parent / "seeds.jsonl"
    assert f"generate: {seeds}:6: the prompt is too long for teacher 'default': prompt too long: at least" in line[0]
    cfg = load_config(long_config)
    assert not (cfg.run_dir / "generate" / "_SUCCESS").exists()
    assert run_stages(cfg, ["generate"]) == {"generate": "ran"}  # too_long: skip resumes the same attempt


def test_api_teacher_does_not_send_a_prompt_over_max_context_tokens(tmp_path, tiny):
    srv = FakeOpenAI(tiny["teacher"]).start()
    try:
        prompts = tmp_path / "prompts.jsonl"
        lines = [{"prompt": f"question {i}: why is the sky blue"} for i in range(9)]
        lines.insert(4, {"prompt": " ".join(["blue"] * 80)})  # ~90 tokens: over 64 - 8
        prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
        data = {"name": "api", "output_dir": str(tmp_path / "runs"),
                "teacher": {"model": str(tiny["teacher"]), "backend": "openai",
                            "api": {"base_url": srv.base_url, "served_model": "tiny", "api_key_env": None,
                                    "token_mapping": "none", "max_context_tokens": 64}},
                "generate": {"prompts": str(prompts), "max_new_tokens": 8, "batch_size": 4},
                "train": {"student": {"teacher_layers": [0]}}, "eval": {"prompts": str(prompts)}}
        path = tmp_path / "api.yaml"
        path.write_text(yaml.safe_dump(data))
        cfg = load_config(path)
        run_stages(cfg, ["generate"])
        sent = {json.dumps(c["prompt"]) for c in srv.stats()["contents"]}
    finally:
        srv.stop()
    rows = store.read_table(cfg.run_dir / "generate", ["messages", "error"]).to_pylist()
    failed = [r for r in rows if r["error"]]
    assert len(rows) == 10 and len(failed) == 1 and failed[0]["error"].startswith("prompt too long: ")
    assert json.dumps(failed[0]["messages"]) not in sent and len(sent) == 9


def test_each_prompt_is_tokenised_once(tmp_path, tiny, monkeypatch):
    """The API teacher on the completions endpoint with a budget, a tokens/min limit and a context check: every
    one of them needs the prompt's tokens, which are counted once."""
    from llmdistill.config import GenerateConfig, TeacherConfig
    from llmdistill.teachers import Sampling
    from llmdistill.teachers.api import OpenAITeacher

    srv = FakeOpenAI(tiny["teacher"]).start()
    calls = []
    real = models.encode_prompt
    monkeypatch.setattr(models, "encode_prompt", lambda tok, messages: calls.append(1) or real(tok, messages))
    try:
        tcfg = TeacherConfig(model=str(tiny["teacher"]), backend="openai", api={
            "base_url": srv.base_url, "served_model": "tiny", "api_key_env": None, "endpoint": "completions",
            "token_mapping": "token_ids", "budget_usd": 1.0, "tokens_per_minute": 1e9, "max_context_tokens": 512,
            "cache": False})
        teacher = OpenAITeacher(tcfg, Sampling.from_generate(GenerateConfig(
            prompts=None, sources=[{"kind": "template", "template": __file__, "rows": [{}]}], max_new_tokens=4)))
        prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]
        out = teacher.generate(prompts, seed=1)
        teacher.close()
    finally:
        srv.stop()
    assert [g.error for g in out] == [None] * 5 and len(calls) == 5
