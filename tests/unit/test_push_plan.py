"""`llmdistill push` before any network: what is selected from a student directory (the card, weights, config and
tokenizer files, nothing else), the dry run, and every refusal that comes before anything is written or sent
(one line, the run directory unchanged). The upload itself, against a local server standing in for the Hub, is
tests/integration/test_push.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from llmdistill import push, store
from llmdistill.cli import app
from llmdistill.errors import UserError

SENT = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors"]
NOT_SENT = ["pytorch_model.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "_SUCCESS",
            ".llmdistill.json", "pruning.json", "checkpoint-2/model.safetensors", "checkpoint-2/optimizer.pt",
            ".cache/x.lock", "model.safetensors.lock", ".model.safetensors.abc.tmp", "trainer_state.json"]


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def run(tmp_path) -> Path:
    """A run directory whose train stage completed, with a student directory holding the files a training run
    leaves there and some it must never send; a filter stage that did not complete."""
    from safetensors.numpy import save_file

    run = tmp_path / "runs" / "small"
    student = run / "train" / "student"
    for rel in SENT + NOT_SENT:
        (student / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".safetensors"):
            save_file({"w": np.ones((2, 2), np.float32)}, str(student / rel))
        else:
            (student / rel).write_text("{}")
    (run / "config.resolved.yaml").write_text(yaml.safe_dump({"name": "small", "teacher": {"model": "gemma-3-270m"},
                                                              "_provenance": {"fingerprints": {}}}))
    store.atomic_write_json(run / "train" / "metrics.json", {"student": {"steps": 2, "mode": "offline"}})
    store.mark_success(run / "train", {"fingerprint": "f", "output": "o"})
    (run / "filter").mkdir()
    (run / "filter" / "part-00000.parquet").write_bytes(b"not finished")
    return run


def test_the_plan_is_the_weights_config_and_tokenizer_files_only(run):
    plan = push.plan(run)
    assert plan.kind == "model" and plan.repo_type == "model" and plan.directory == run / "train" / "student"
    assert sorted(rel for rel, _ in plan.files) == sorted(SENT)


def test_dry_run_lists_the_card_and_files_and_writes_nothing(run, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)  # a dry run needs no token
    before = files(run)
    res = CliRunner().invoke(app, ["push", str(run), "--to", "me/small-student", "--dry-run"])
    assert res.exit_code == 0, res.output
    listed = [line.split()[0] for line in res.stdout.splitlines()[1:]]
    assert sorted(listed) == sorted(["README.md", *SENT])
    assert res.stdout.splitlines()[0] == "would send to me/small-student (model, private if created):"
    assert files(run) == before


def refused(run, args: list[str], message: str, monkeypatch, tmp_path) -> None:
    """The CLI refuses with one line holding `message`, exit 2, and the run directory is unchanged."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    before = files(run)
    res = CliRunner().invoke(app, ["push", str(run), *args])
    errors = [line for line in res.stderr.splitlines() if line.startswith("llmdistill: error:")]
    assert res.exit_code == 2 and len(errors) == 1 and message in errors[0], res.output
    assert "Traceback" not in res.output and files(run) == before


@pytest.mark.parametrize("args, message", [
    (["--to", "me/a--b"], "--to: Cannot have -- or .. in repo_id"),
    (["--to", "datasets/me/x"], "--to: Repo id must be in the form"),
    (["--to", "me/x", "--student", "teacher"], "has no trained student 'teacher' (it has: student)"),
    (["--to", "me/x", "--student", "student", "--dataset", "filter"], "push takes --student or --dataset, not both"),
    (["--to", "me/x", "--dataset", "filter"], "the filter stage of"),
    (["--to", "me/x", "--dataset", "train"], "--dataset takes a stage with a dataset (generate, annotate, filter)"),
    (["--to", "me/x"], "no Hugging Face token: set HF_TOKEN"),
])
def test_refusals_before_anything_is_written_or_sent(run, args, message, monkeypatch, tmp_path):
    refused(run, args, message, monkeypatch, tmp_path)


def test_an_incomplete_train_stage_and_a_missing_run_are_refused(run, monkeypatch, tmp_path):
    (run / "train" / store.SUCCESS).unlink()
    refused(run, ["--to", "me/x"], "the train stage of", monkeypatch, tmp_path)
    with pytest.raises(UserError, match="not a run directory"):
        push.plan(tmp_path / "nowhere")
