"""Model and dataset cards (llmdistill/cards) from run records on disk, without any model: the tables that keep
names in step, the teacher's origin, and what a card says when a record is missing or out of date.
A card from a real run (and its executed snippets) is in tests/integration/test_cards_run.py."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.utils import validate_repo_id

from llmdistill import records, store
from llmdistill.cards import common as C
from llmdistill.cards import dataset, model_card, write_run_cards
from llmdistill.config import MODEL_ALIASES

REPO = Path(__file__).resolve().parents[2]


def test_every_model_alias_has_its_hub_origin():
    assert set(C.ALIAS_ORIGINS) == set(MODEL_ALIASES)
    for origin in C.ALIAS_ORIGINS.values():
        validate_repo_id(origin.hub_id)
        assert origin.hub_id.count("/") == 1 and origin.license and origin.how


def test_every_column_of_the_schema_is_explained():
    assert set(dataset.COLUMNS) == set(records.removed_schema().names)


def test_the_bert_architecture_file_is_the_one_the_bert_stage_writes():
    source = (REPO / "llmdistill" / "bert" / "models.py").read_text(encoding="utf-8")
    assert re.search(r'^CONFIG_FILE = "([^"]+)"', source, re.M).group(1) == C.BERT_SPEC


def test_teacher_origin_of_an_alias_a_local_directory_and_a_hub_id(tmp_path):
    alias = C.teacher_origin("smollm2-135m-instruct", hub=False)
    assert alias["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and alias["license"] == "apache-2.0"
    local = tmp_path / "my-teacher"
    local.mkdir()
    (local / "README.md").write_text("---\nlicense: mit\nbase_model: org/base\n---\n\n# a teacher\n")
    shown = C.teacher_origin(str(local), hub=False)
    assert shown["name"] == "my-teacher" and shown["license"] == "mit" and shown["base_model"] is None
    assert str(local) in shown["note"] and "org/base" in shown["note"]
    assert str(tmp_path) not in C.teacher_origin(str(local), hub=True)["note"]  # no local path on the Hub
    hub = C.teacher_origin("some-org/some-model", hub=True)
    assert hub["base_model"] == "some-org/some-model" and hub["license"] is None  # nothing cached, nothing fetched


def test_tables_escape_pipes_and_fold_newlines():
    text = C.table(["a", "b"], [["x | y", "one\ntwo"], [None, 0.5]])
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| x \\| y | one two |", "| None | 0.5 |"]
    assert C.num(None) == "-" and C.num(12) == "12" and C.num(0.12345) == "0.123" and C.num(True) == "True"


def _train_only_run(root: Path, eval_of: str | None = None) -> Path:
    """A run directory with a completed train stage (records and a small safetensors file), no filter manifest;
    with `eval_of`, an eval/_SUCCESS built from that train output token."""
    from safetensors.numpy import save_file

    run = root / "runs" / "small"
    student = run / "train" / "student"
    student.mkdir(parents=True)
    (run / "config.resolved.yaml").write_text(yaml.safe_dump({
        "name": "small", "seed": 0, "teacher": {"model": "smollm2-135m-instruct"},
        "train": {"mode": "offline", "student": {"teacher_layers": [0, 2]}, "batch_size": 4, "grad_accum": 2,
                  "lr": 1e-3, "lr_scheduler": "cosine", "warmup_steps": 1, "max_seq_len": 64, "epochs": 1.0,
                  "shuffle": True, "lora": None, "seed": None, "curriculum": {"pacing": "none"}},
        "generate": {"order": "curriculum"},
        "_provenance": {"fingerprints": {"train": "fp-train"}, "git_sha": None, "versions": {}}}))
    save_file({"w": np.zeros((4, 4), np.float32)}, str(student / "model.safetensors"))
    (student / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 4}')
    store.atomic_write_json(run / "train" / "metrics.json", {"student": {
        "mode": "offline", "teacher_signal": "stored", "steps": 3, "parameters": 16, "train_loss": 1.25,
        "loss_terms": [{"name": "forward_kl", "weight": 0.9, "temperature": 1.0},
                       {"name": "ce", "weight": 0.1, "temperature": 1.0}]}})
    store.mark_success(run / "train", {"fingerprint": "fp-train", "output": "tok-train", "llmdistill_version": "x"})
    if eval_of is not None:
        store.atomic_write_json(run / "eval" / "metrics.json", {"models": {"student": {"kl_to_teacher": 0.5}}})
        store.mark_success(run / "eval", {"fingerprint": "fp-eval", "output": "tok-eval", "upstream_output": eval_of})
    return run


def test_a_train_only_run_gets_a_card_that_says_what_is_not_measured(tmp_path):
    run = _train_only_run(tmp_path)
    assert write_run_cards(run) == [run / "train" / "student" / "README.md"]  # no dataset completed: no dataset card
    text = (run / "train" / "student" / "README.md").read_text(encoding="utf-8")
    card = ModelCard(text)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"distillation", "llmdistill"} <= set(card.data.tags)
    assert "Not measured yet: the eval stage has not run on this student (no eval/_SUCCESS)." in text
    assert "Latency: not measured yet" in text and "KL to teacher |" not in text
    assert "| loss | 0.9 x forward_kl + 0.1 x ce |" in text and "| optimizer steps | 3 |" in text
    assert "decoder layers [0, 2]" in text and "| batch size x gradient accumulation | 4 x 2 |" in text
    assert "Not recorded: the filter stage's manifest (filter/manifest.json) is missing." in text


def test_eval_of_an_earlier_student_is_not_shown_as_this_ones(tmp_path):
    text = model_card(_train_only_run(tmp_path, eval_of="an-older-train-output"))
    assert "Not measured yet: eval/metrics.json measured an earlier student" in text
    assert "(this model)" not in text
    assert "| **student (this model)** | 0.5000 |" in model_card(_train_only_run(tmp_path / "b", eval_of="tok-train"))


def test_settings_of_another_config_are_not_shown_as_the_recipe(tmp_path):
    run = _train_only_run(tmp_path)
    cfg = yaml.safe_load((run / "config.resolved.yaml").read_text())
    cfg["_provenance"]["fingerprints"]["train"] = "fp-of-a-later-config"  # rewritten by a run of another config
    (run / "config.resolved.yaml").write_text(yaml.safe_dump(cfg))
    text = model_card(run)
    assert "not shown: config.resolved.yaml was written for another configuration since" in text
    assert "batch size x gradient accumulation" not in text
    assert "| loss | 0.9 x forward_kl + 0.1 x ce |" in text  # train/metrics.json is the student's own record


@pytest.mark.parametrize("rows, bucket", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (10**7, "n>10M")])
def test_dataset_size_bucket(rows, bucket):
    assert dataset._size_category(rows) == bucket
