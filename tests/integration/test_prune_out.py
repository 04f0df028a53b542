"""`llmdistill prune --out DIR` never deletes what llmdistill did not write (issue 28, item 1).

Through the real CLI in a subprocess, on a finished tiny run (generate, filter, train) and a private copy of
the tiny teacher: --out at a directory of user files, at the teacher, at the run's trained student and at `..`
(from a working directory that holds the run directory and the config) is one line and exit 2 with every
file as it was, --force or not; a new, an empty, an earlier pruned directory, and with --force a user's
directory, are written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, make_tiny_config
from llmdistill import store
from llmdistill.config import load_config
from llmdistill.pipeline import run_stages

FAST = ["train.max_steps=1", "train.save_steps=1", "train.sft_baseline=false"]


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny):
    """outer/: teacher/ (a private copy), work/ (config.yaml, prompts, runs/ with generate, filter, train done)."""
    outer = tmp_path_factory.mktemp("prune-out")
    teacher = Path(shutil.copytree(tiny["teacher"], outer / "teacher"))
    (outer / "work").mkdir()
    config, data = make_tiny_config(outer / "work", {"teacher": teacher})
    run_stages(load_config(config, FAST), ("generate", "filter", "train"))
    run_dir = Path(data["output_dir"]) / data["name"]
    assert store.read_success(run_dir / "train" / "student") is not None
    return outer, config, run_dir


def args(work_dir: Path, config: Path, out, *flags, layers: int = 2) -> list[str]:
    seeds = work_dir / "seeds.jsonl"
    spec = f"train.student={{prune: {{layers: {layers}, calibration_samples: 4, calibration: {seeds}}}}}"
    return ["prune", str(config), *FAST, spec, "--out", str(out), *flags]


def prune(work_dir: Path, config: Path, out, *flags):
    """The CLI in a subprocess run from `work_dir` (a refusal comes before torch is imported: fast)."""
    return subprocess.run([PYTHON, "-m", "llmdistill.cli", *args(work_dir, config, out, *flags)], capture_output=True,
                          text=True, cwd=work_dir, timeout=300)


def prune_here(work_dir: Path, config: Path, out, *flags, layers: int = 2):
    """The CLI in this process (the teacher loads once per process: the writing cases stay fast)."""
    from typer.testing import CliRunner

    from llmdistill import cli

    res = CliRunner().invoke(cli.app, args(work_dir, config, out, *flags, layers=layers))
    assert res.exit_code == 0, res.output
    return res


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (names relative to it), and every directory."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def refused(res, *words):
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmdistill: error: refusing to "), res.stderr
    assert "Traceback" not in res.stderr and all(w in lines[0] for w in words), lines[0]


def test_out_at_user_files_the_teacher_the_trained_student_or_an_ancestor_is_refused(work):
    outer, config, run_dir = work
    mine = outer / "work" / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / "a.txt").write_text("precious")
    (mine / "notes" / "b.md").write_text("also precious")
    before = tree(outer)

    refused(prune(outer / "work", config, mine), str(mine), "llmdistill did not write it", "--force")
    # even with --force: the teacher, a completed stage output, a directory holding the run and config
    refused(prune(outer / "work", config, outer / "teacher", "--force"), "teacher.model")
    refused(prune(outer / "work", config, run_dir / "train" / "student"), "completed stage output")
    refused(prune(outer / "work", config, run_dir / "train" / "student", "--force"), "completed stage output")
    refused(prune(outer / "work", config, run_dir / "train", "--force"), "completed stage output")
    refused(prune(outer / "work", config, "..", "--force"), str(outer))
    refused(prune(outer / "work", config, ".", "--force"), "contains")

    assert tree(outer) == before  # nothing deleted, and no work done (no importances measured and cached)
    assert (mine / "a.txt").read_text() == "precious"
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "validate", str(config), *FAST], capture_output=True,
                         text=True, cwd=outer / "work")
    assert "train     fingerprint" in res.stdout and "done" in res.stdout.split("train     fingerprint")[1], res.stdout


def test_new_empty_earlier_pruned_and_forced_user_directories_are_written(work, tmp_path):
    outer, config, _ = work
    empty = tmp_path / "empty"
    empty.mkdir()
    prune_here(outer / "work", config, empty)
    assert json.loads((empty / "pruning.json").read_text())["layers"] and (empty / "model.safetensors").is_file()

    # a rerun onto its own earlier output replaces it
    prune_here(outer / "work", config, empty, layers=3)
    assert json.loads((empty / "config.json").read_text())["num_hidden_layers"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no temporary copy left beside it

    # a new directory, and a directory of someone's files with --force
    prune_here(outer / "work", config, tmp_path / "new" / "student")
    assert (tmp_path / "new" / "student" / "pruning.json").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "old.txt").write_text("replace me")
    prune_here(outer / "work", config, mine, "--force")
    assert (mine / "pruning.json").is_file() and not (mine / "old.txt").exists()
