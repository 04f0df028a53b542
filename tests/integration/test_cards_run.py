"""Cards of real runs: the session's tiny LLM run (conftest.tiny_run: the CLI wrote its cards after the run) and
a tiny distill-bert run through the CLI. Front matter parsed by huggingface_hub, the eval tables present, and the
load snippets executed as a user would run them."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import subprocess
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, ModelCard
from typer.testing import CliRunner

from conftest import PYTHON
from llmdistill import cards, store


def snippet(text: str) -> str:
    """The first Python code block of a card."""
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def run_snippet(code: str) -> str:
    """Execute a card's snippet in this process; returns what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<card snippet>", "exec"), {})
    return out.getvalue()


def test_the_run_writes_a_model_card_with_the_eval_tables(tiny_run):
    path = tiny_run / "train" / "student" / "README.md"
    card = ModelCard.load(path)
    assert card.data.base_model is None  # the tiny teacher is a local directory, not a Hub model
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"distillation", "llmdistill", "pruned"} <= set(card.data.tags)
    text = card.text
    assert "not measured yet" not in text.lower()
    metrics = store.read_json(tiny_run / "eval" / "metrics.json")["models"]
    kl = metrics["student"]["kl_to_teacher"]
    assert f"| **student (this model)** | {kl:.4f} |" in text  # the summary table, from eval/metrics.json
    sums = {n: m["tasks"]["sums"] for n, m in metrics.items()}
    row = next(line for line in text.splitlines() if line.startswith("| sums |"))
    assert f"{sums['student']['accuracy']:.3f} ({sums['student']['correct']} / 3)" in row
    assert f"{sums['sft_baseline']['accuracy']:.3f} ({sums['sft_baseline']['correct']} / 3)" in row  # beside it
    pruning = store.read_json(tiny_run / "train" / "student" / "pruning.json")
    assert f"| decoder layers | 4 | 2 | {', '.join(map(str, pruning['layers']))} |" in text
    assert "| loss | 0.9 x forward_kl + 0.1 x ce |" in text and "| optimizer steps | 4 |" in text
    baseline = ModelCard.load(tiny_run / "train" / "sft_baseline" / "README.md")
    assert "**sft_baseline (this model)**" in baseline.text and "| loss | 1.0 x ce |" in baseline.text


def test_the_model_cards_snippet_loads_the_student_and_generates(tiny_run):
    printed = run_snippet(snippet((tiny_run / "train" / "student" / "README.md").read_text(encoding="utf-8")))
    assert printed.endswith("\n")  # the decoded answer (any text: a tiny random model)


def test_dataset_cards_and_their_load_snippet(tiny_run, tmp_path):
    for stage in ("generate", "filter"):
        card = DatasetCard.load(tiny_run / stage / "README.md")
        assert card.data.configs[0]["data_files"][0]["path"] == "part-*.parquet"
        assert {"distillation", "llmdistill"} <= set(card.data.tags)
    text = (tiny_run / "filter" / "README.md").read_text(encoding="utf-8")
    stats = store.read_json(tiny_run / "filter" / "stats.json")
    assert f"{stats['input_rows']} rows in, {stats['kept']} kept" in text
    assert all(f"`{c}`" in text for c in ("completion_token_ids", "topk_ids", "topk_logprobs"))
    rows = store.read_manifest(tiny_run / "filter")["counts"]["rows"]
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}  # run as a user would: a new process
    res = subprocess.run([PYTHON, "-c", snippet(text)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == str(rows)


def test_a_rerun_skips_every_stage_and_leaves_the_cards_as_they_were(tiny_run, caplog):
    from llmdistill.cli import app

    written = {p: p.read_bytes() for p in tiny_run.rglob("README.md")}
    assert len(written) == 4  # generate, filter, student, sft_baseline
    with caplog.at_level(logging.INFO, logger="llmdistill"):
        res = CliRunner().invoke(app, ["run", str(tiny_run.parent.parent / "config.yaml")])
    assert res.exit_code == 0, res.output
    assert all(f"stage {s}: up to date" in caplog.text for s in ("generate", "filter", "train", "eval")), caplog.text
    assert "card: " in caplog.text  # the cards were written again, with what they said
    assert {p: p.read_bytes() for p in tiny_run.rglob("README.md")} == written


def test_a_card_for_the_hub_has_no_local_path(tiny_run):
    for kind, name in (("model", "student"), ("dataset", "filter")):
        _, text = cards.card_for(tiny_run, kind, name, repo_id="me/tiny")
        assert str(tiny_run.parent) not in text and "/tmp" not in text, kind


# ------------------------------------------------------------------------------------------------------ BERT
@pytest.fixture(scope="module")
def bert_run(tmp_path_factory) -> Path:
    """configs/bert-kd.yaml on the tiny BERT teacher (tests/tiny_bert.py), run by the CLI's distill-bert."""
    from tiny_bert import REPO, build_teacher

    from llmdistill.cli import app

    root = tmp_path_factory.mktemp("bert-card")
    fx = build_teacher(root)
    o = [f"data.{k}={fx[k]}" for k in ("train", "val", "test", "unlabelled")]
    o += [f"teacher.model={fx['teacher']}", "teacher.finetune.max_examples=32", "teacher.finetune.batch_size=16",
          "teacher.finetune.epochs=1", f"teacher.cache_dir={root / 'teachers'}", f"output_dir={root / 'runs'}",
          "threads=1", "student.hidden_size=32", "student.num_heads=2", "student.intermediate_size=64",
          "student.embedding_size=16", "export.latency_runs=1", "export.int8_options=[{mode: dynamic}]",
          "data.max_seq_len=32", "phases.0.max_steps=2", "phases.0.batch_size=16"]
    res = CliRunner().invoke(app, ["distill-bert", str(REPO / "configs" / "bert-kd.yaml"), *o])
    assert res.exit_code == 0, res.output
    return root / "runs" / "bert-kd"


def test_distill_bert_writes_the_students_card(bert_run):
    card = ModelCard.load(bert_run / "student" / "README.md")
    assert card.data.pipeline_tag == "text-classification" and card.data.library_name == "onnx"
    assert {"distillation", "llmdistill", "bert", "student-narrow", "kd"} <= set(card.data.tags)
    test = store.read_json(bert_run / "metrics.json")["test"]
    assert f"| student, ONNX int8 | {test['student_onnx_int8']['accuracy']:.4f} |" in card.text
    assert "onnx/model.int8.onnx" in card.text
    printed = run_snippet(snippet(card.text))  # onnxruntime on the int8 export, the student's tokenizer
    assert re.fullmatch(r"\['(negative|neutral|positive)'\]\n", printed), printed
