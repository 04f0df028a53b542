"""llmdistill replaces or clears only what it wrote (issue 28, item 1): `models.save_dir`, the one routine that
swaps a model directory in (pruned, trained and converted students), and the runner's clearing of a stage
directory. Real directories on disk; every refusal is one UserError line and leaves every file as it was."""

from __future__ import annotations

import json

import pytest

from llmdistill import models, store
from llmdistill.errors import UserError


def fill(tmp):
    (tmp / "config.json").write_text("{}")
    (tmp / "pruning.json").write_text("{}")


def files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def user_dir(path):
    (path / "sub").mkdir(parents=True)
    (path / "a.txt").write_text("mine")
    (path / "sub" / "b.txt").write_text("mine too")
    return path


def refused(tmp_path, target, match, **kwargs):
    before = files(tmp_path)
    with pytest.raises(UserError, match=match) as info:
        models.save_dir(target, "the pruned student", fill, "pruned-student", ("pruning.json",), **kwargs)
    assert "\n" not in str(info.value) and files(tmp_path) == before


def test_a_directory_of_user_files_is_refused_unless_forced(tmp_path):
    mine = user_dir(tmp_path / "mine")
    refused(tmp_path, mine, "it is not empty and llmdistill did not write it")
    models.save_dir(mine, "the pruned student", fill, "pruned-student", force=True)
    assert sorted(p.name for p in mine.iterdir()) == [models.OWNER_FILE, "config.json", "pruning.json"]
    assert json.loads((mine / models.OWNER_FILE).read_text())["kind"] == "pruned-student"


def test_missing_empty_and_own_directories_are_replaced(tmp_path):
    for target in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        if target.name == "empty":
            target.mkdir()
        models.save_dir(target, "the pruned student", fill, "pruned-student")
        models.save_dir(target, "the pruned student", lambda tmp: (tmp / "again").write_text("x"), "pruned-student")
        assert sorted(p.name for p in target.iterdir()) == [models.OWNER_FILE, "again"]
    # written before the mark existed: recognised by the caller's record (pruning.json), when no _SUCCESS
    old = tmp_path / "old"
    old.mkdir()
    (old / "pruning.json").write_text("{}")
    models.save_dir(old, "the pruned student", fill, "pruned-student", ("pruning.json",))
    (old / models.OWNER_FILE).unlink()
    store.mark_success(old, {})  # a trained student of a pruned run carries pruning.json and _SUCCESS
    refused(tmp_path, old, "completed stage output", force=True)


def test_another_kind_of_output_is_not_replaced(tmp_path):
    trained = tmp_path / "student"
    models.save_dir(trained, "the trained student", fill, "trained-student")
    refused(tmp_path, trained, "it holds the trained student, not pruned-student")


def test_never_even_forced_a_file_a_link_a_completed_output_or_a_kept_path(tmp_path):
    (tmp_path / "file").write_text("x")
    refused(tmp_path, tmp_path / "file", "a file", force=True)
    mine = user_dir(tmp_path / "mine")
    (tmp_path / "link").symlink_to(mine)
    refused(tmp_path, tmp_path / "link", "a symbolic link", force=True)
    stage = tmp_path / "runs" / "x" / "train"
    (stage / "student").mkdir(parents=True)
    store.mark_success(stage, {})
    refused(tmp_path, stage / "student", f"it is inside {stage}, a completed stage output", force=True)
    refused(tmp_path, stage / "new", "completed stage output", force=True)
    refused(tmp_path, stage, "completed stage output", force=True)
    refused(tmp_path, tmp_path / "runs", f"it contains a completed stage output \\({stage}\\)", force=True)
    keep = {mine: "teacher.model", tmp_path / "runs" / "x": "the run directory"}
    refused(tmp_path, mine, "it is teacher.model", force=True, keep=keep)
    refused(tmp_path, tmp_path / "runs", "it contains the run directory", force=True, keep=keep)
    refused(tmp_path, tmp_path / "runs" / "x" / ".." / "..", "contains", force=True, keep=keep)


def test_a_leftover_temporary_directory_is_removed_only_if_ours(tmp_path):
    target = tmp_path / "student"
    mine = user_dir(tmp_path / f".{target.name}.tmp")
    refused(tmp_path, target, "refusing to remove .*did not write it")
    assert (mine / "a.txt").read_text() == "mine"
    # what a killed save leaves: the partial copy, marked before anything was written into it
    for p in (mine / "a.txt", mine / "sub" / "b.txt", mine / "sub"):
        p.rmdir() if p.is_dir() else p.unlink()
    store.atomic_write_json(mine / models.OWNER_FILE, {"kind": "pruned-student", "what": "the student"})
    (mine / "model.safetensors").write_bytes(b"half")
    models.save_dir(target, "the student", fill, "pruned-student")
    assert (target / "pruning.json").is_file() and not mine.exists()


def test_the_runner_clears_only_stage_directories_it_started(tmp_path, tiny):
    """A run directory chosen where someone keeps a folder named like a stage: refused, not cleared."""
    from conftest import make_tiny_config
    from llmdistill.config import load_config
    from llmdistill.pipeline import run_stages

    config, data = make_tiny_config(tmp_path, tiny)
    cfg = load_config(config)
    mine = user_dir(cfg.run_dir / "generate")
    (mine / ".draft.tmp").write_text("an editor's")  # named like a temporary, but not one llmdistill wrote
    before = files(mine)
    with pytest.raises(UserError, match=f"{mine} is not empty and llmdistill did not write it"):
        run_stages(cfg, ("generate",))
    assert files(mine) == before


def test_a_stage_directory_holding_only_the_temporary_of_its_start_mark_is_cleared(tmp_path, tiny):
    """A kill between writing _STARTED's temporary and its rename leaves only that file: the rerun goes on."""
    from conftest import make_tiny_config
    from llmdistill.config import load_config
    from llmdistill.pipeline import STARTED, run_stages

    config, _ = make_tiny_config(tmp_path, tiny)
    cfg = load_config(config)
    stage = cfg.run_dir / "generate"
    stage.mkdir(parents=True)
    (stage / f".{STARTED}.k1ll3d.tmp").write_text("half")
    run_stages(cfg, ("generate",))
    assert (stage / store.SUCCESS).exists() and not store.temporaries_of(stage / STARTED)
