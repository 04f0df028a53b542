"""What a user sees (issue 28, items 15, 18 and 19), through the real CLI in its own process, with the
environment a user has (no TRANSFORMERS_VERBOSITY): a bad input is one `llmdistill: error:` line and nothing
from a library; a resumed training run and a refused custom-code model print no transformers notes; a length
eval cannot generate is refused before it generates; an empty eval.prompts file is named with its key; a
distill-bert data error comes before any model loads; a one-class BERT training set is one warning line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_bert import REPO, _overrides, tiny_bert  # noqa: F401 (a fixture)
from test_remote_code import make_custom

from conftest import PYTHON, build_tokenizer, make_tiny_config
from llmdistill import store
from llmdistill.config import load_config
from llmdistill.pipeline import run_stages

OUR_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) (?!\[)")  # ours: no [library] tag
LIBRARY_NOTES = ("[transformers]", "LOAD REPORT", "missing keys", "You are using a model of type", "Traceback")


def cli(*args, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "LLMDISTILL_FAULT")}
    return subprocess.run([PYTHON, "-m", "llmdistill.cli", *map(str, args)], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=timeout)


def only_ours(stderr: str) -> list[str]:
    """stderr's lines that are not llmdistill's own log lines nor a progress bar: what else reached the user."""
    return [line for line in stderr.splitlines()
            if line.strip() and not OUR_LOG_LINE.match(line) and not re.search(r"\d+/\d+ \[[\d:<?]+", line)]


def one_error(res: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed besides our own log lines (no library line, no traceback)."""
    assert res.returncode == 2, res.stderr[-3000:]
    rest = only_ours(res.stderr)
    assert len(rest) == 1 and rest[0].startswith("llmdistill: error: "), res.stderr[-3000:]
    return rest[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny):
    """A tiny run with generate, filter and train done (what eval and a train resume start from)."""
    root = tmp_path_factory.mktemp("trained")
    path, data = make_tiny_config(root, tiny)
    run_stages(load_config(path), ("generate", "filter", "train"))
    return root, data


@pytest.fixture()
def run_copy(trained, tmp_path):
    """(config path, config dict, run dir): a private copy of the trained run."""
    root, data = trained
    data = yaml.safe_load(yaml.safe_dump(data))
    data["output_dir"] = str(tmp_path / "runs")
    shutil.copytree(root / "runs", tmp_path / "runs")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data, tmp_path / "runs" / data["name"]


def test_a_resumed_train_prints_no_library_notes(run_copy):
    path, _, run_dir = run_copy
    for stage in ("train", "eval"):
        shutil.rmtree(run_dir / stage, ignore_errors=True)
    killed = cli("train", path, env={"LLMDISTILL_FAULT": "train:checkpoint:1"})
    assert killed.returncode == -9 and (run_dir / "train" / "checkpoints").is_dir(), killed.stderr[-3000:]
    resumed = cli("train", path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr  # it did resume (the tied lm_head is "missing" from the checkpoint)
    assert only_ours(resumed.stderr) == [], resumed.stderr[-3000:]
    assert not any(note in resumed.stderr for note in LIBRARY_NOTES)


@pytest.mark.parametrize("new_tokens, problem", [
    (600, "eval.max_new_tokens is 600, but the teacher's context holds 512 tokens, prompt and reply together: "
          "lower it"),
    (500, r"eval.max_new_tokens: \S+eval\.jsonl:\d+: prompt too long: \d+ tokens \+ max_new_tokens 500 > the "
          r"teacher's context of 512 tokens"),
])
def test_eval_refuses_a_length_the_teachers_context_cannot_hold(run_copy, new_tokens, problem):
    """The tiny teacher's context is 512 tokens; eval used to generate on regardless (1e9 ran for minutes)."""
    path, _, run_dir = run_copy
    before = store.read_success(run_dir / "train")
    line = one_error(cli("eval", path, f"eval.max_new_tokens={new_tokens}"))
    assert re.fullmatch(f"llmdistill: error: {problem}", line), line
    assert store.read_success(run_dir / "train") == before and store.read_success(run_dir / "eval") is None
    assert not list((run_dir / "cache").glob("eval-*"))  # nothing was generated


def test_an_empty_eval_prompts_file_is_named_with_its_key(run_copy):
    path, data, _ = run_copy
    empty = path.parent / "empty.jsonl"
    empty.write_bytes(b"")
    line = one_error(cli("eval", path, f"eval.prompts={empty}"))
    assert line == f"llmdistill: error: eval.prompts {empty}: no prompts in it (an empty file, or blank lines only)"


def test_a_custom_code_teacher_is_refused_without_transformers_notes(tmp_path):
    teacher = make_custom(tmp_path / "custom", build_tokenizer(tmp_path / "tok"), layers=2)
    path, _ = make_tiny_config(tmp_path, {"teacher": teacher})
    res = cli("generate", path, env={"HF_MODULES_CACHE": str(tmp_path / "hf-modules")})
    line = one_error(res)
    assert "contains custom code" in line
    assert not any(note in res.stderr for note in LIBRARY_NOTES), res.stderr[-3000:]


def test_distill_bert_reads_its_data_before_loading_the_teacher(tiny_bert, tmp_path):  # noqa: F811
    """A bad line in data.test used to come after the teacher's load report (and a fine-tuning run)."""
    bad = tmp_path / "test.jsonl"
    bad.write_text(Path(tiny_bert["test"]).read_text() + '{"text": "no label here"}\n')
    lines = len(bad.read_text().splitlines())
    res = cli("distill-bert", REPO / "configs" / "bert-kd.yaml", *_overrides("bert-kd.yaml", tiny_bert, tmp_path),
              f"data.test={bad}")
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"llmdistill: error: {bad}:{lines}: 'label' must be an integer in 0..2, "
                                       "got None"]
    assert not (Path(tiny_bert["root"]) / "teachers").exists() or not any(
        (Path(tiny_bert["root"]) / "teachers").glob("*/_SUCCESS"))  # no teacher was fine-tuned for it


def test_a_bert_training_set_of_one_class_is_one_warning_line(tiny_bert, tmp_path):  # noqa: F811
    rows = [json.loads(line) for line in Path(tiny_bert["train"]).read_text().splitlines()]
    one = tmp_path / "train.jsonl"
    one.write_text("".join(json.dumps({**r, "label": 2}) + "\n" for r in rows))
    res = cli("distill-bert", REPO / "configs" / "bert-hard-label.yaml",
              *_overrides("bert-hard-label.yaml", tiny_bert, tmp_path), f"data.train={one}",
              f"teacher.cache_dir={tmp_path / 'teachers'}")
    assert res.returncode == 0, res.stderr[-3000:]
    warnings = [line for line in res.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, res.stderr[-3000:]
    assert warnings[0].endswith(f"WARNING data.train {one}: all {len(rows)} labelled rows read are class 2 "
                                "('positive', of negative, neutral, positive): the hard labels teach one answer")
