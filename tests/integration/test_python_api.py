"""The Python API running real stages: docs/python-api.md's example (the demo config with the real
SmolLM2-135M-Instruct, shrunk by overrides) executed from the doc itself, and the stage functions on the tiny
offline teacher."""

import contextlib
import io
import re
from pathlib import Path

import pytest
import yaml

import llmdistill
from conftest import REPO
from llmdistill import store
from llmdistill.runner import RunLock

DOC = REPO / "docs" / "python-api.md"
EXAMPLE = "## Example: the demo from Python"


def example_blocks() -> list[str]:
    """The ```python blocks of the doc's example section, in order."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index(EXAMPLE):]
    following = re.search(r"^## ", section[len(EXAMPLE):], re.MULTILINE)
    if following:
        section = section[: len(EXAMPLE) + following.start()]
    return re.findall(r"^```python\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


def test_the_doc_has_its_example():
    blocks = example_blocks()
    assert len(blocks) == 3 and "llmdistill.run(overrides=SHRINK)" in blocks[0]


@pytest.mark.slow
def test_docs_example_runs(tmp_path, monkeypatch):
    """Every Python block of the example, in order, in one namespace, from an empty directory (the run goes to
    ./runs/demo-small there)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in example_blocks():
            exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 (the doc's own code)
    printed = out.getvalue()
    result = namespace["result"]
    assert result.run_dir == tmp_path / "runs" / "demo-small"
    assert result.stages == {"generate": "ran", "filter": "ran", "train": "ran", "eval": "ran"}
    assert result.report == result.run_dir / "report" / "index.html" and result.report.is_file()
    kept = namespace["kept"]
    assert 0 < len(kept) <= 7 and len(kept) == store.read_manifest(result.run_dir / "filter")["counts"]["rows"]
    models = namespace["metrics"]["models"]
    assert set(models) == {"teacher", "student"}
    assert all(m["tasks"]["facts"]["total"] == 4 for m in models.values())
    assert sorted(re.findall(r"^(\w+) +KL to teacher \d", printed, re.MULTILINE)) == ["student", "teacher"]
    assert llmdistill.status(namespace["cfg"]) == {s: "done" for s in ("generate", "filter", "train", "eval")}
    assert "{'filter': 'skipped'}" in printed
    assert "train.max_stepz: unknown key (did you mean 'max_steps'?)" in printed
    assert "tensor([" in printed.splitlines()[-1]  # the losses


@pytest.fixture()
def tiny_run(tiny_config):
    """The tiny config's path and its run directory, generate and filter done through the API."""
    path, _ = tiny_config
    result = llmdistill.run(path, stages=["filter", "generate"])  # run in pipeline order whatever the order given
    assert result.stages == {"generate": "ran", "filter": "ran"} and result.report is None
    return path, result.run_dir


def test_stages_run_and_their_datasets_load(tiny_run):
    path, run_dir = tiny_run
    generated = llmdistill.load_dataset(run_dir, "generate")
    assert len(generated) == 12 and generated["level"] == sorted(generated["level"])
    kept = llmdistill.load_dataset(run_dir)
    assert len(kept) == store.read_manifest(run_dir / "filter")["counts"]["rows"] > 0
    assert set(kept["id"]) <= set(generated["id"])
    row = kept[0]
    assert len(row["topk_ids"]) == len(row["completion_token_ids"]) and len(row["topk_ids"][0]) == 8
    assert llmdistill.status(path) == {"generate": "done", "filter": "done", "train": "missing", "eval": "missing"}
    assert llmdistill.run_filter(path).stages == {"filter": "skipped"}
    with pytest.raises(llmdistill.UserError, match="train stage writes no dataset"):
        llmdistill.load_dataset(run_dir, "train")
    with pytest.raises(llmdistill.UserError, match="eval does not exist: the eval stage has not run"):
        llmdistill.load_metrics(run_dir)


def test_a_loaded_config_with_overrides_reruns_only_what_changed(tiny_run):
    path, run_dir = tiny_run
    before = llmdistill.load_dataset(run_dir, "generate")["id"]
    cfg = llmdistill.load_config(path)
    result = llmdistill.run(cfg, ["filter.steps=[{name: failed}]"], stages=["generate", "filter"])
    assert result.stages == {"generate": "skipped", "filter": "ran"}
    assert len(llmdistill.load_dataset(run_dir)) == 12  # nothing failed, so nothing removed
    assert llmdistill.load_dataset(run_dir, "generate")["id"] == before
    assert llmdistill.run_generate(cfg, force=True).stages == {"generate": "ran"}


def test_errors_leave_the_finished_output_as_it_was(tiny_run, tmp_path):
    path, run_dir = tiny_run
    kept = llmdistill.load_dataset(run_dir)["id"]
    with RunLock(run_dir), pytest.raises(llmdistill.LockedError, match="in use by another llmdistill process"):
        llmdistill.run_filter(path, force=True)
    with pytest.raises(llmdistill.UserError, match="needs the train stage's output, which is missing"):
        llmdistill.run_eval(path)
    bad = tmp_path / "bad.yaml"
    data = yaml.safe_load(Path(path).read_text())
    data["filter"]["steps"] = [{"name": "length", "min_words": "many"}]
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(llmdistill.ConfigError) as e:
        llmdistill.run_filter(bad, force=True)
    assert e.value.errors == ["filter.steps.0.min_words: Input should be a valid integer, unable to parse string as "
                              "an integer (got 'many')"]
    assert llmdistill.load_dataset(run_dir)["id"] == kept
    assert llmdistill.status(path)["filter"] == "done"
