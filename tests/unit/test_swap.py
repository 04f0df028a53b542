"""`pipeline.recover`: every state a kill can leave a staged rerun in ends with one complete output."""

from __future__ import annotations

from llmdistill import store
from llmdistill.pipeline import recover


def _complete(path, fingerprint, content):
    path.mkdir(parents=True)
    (path / "data.txt").write_text(content)
    store.mark_success(path, {"fingerprint": fingerprint})


def _state(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_killed_between_the_two_renames_finishes_the_swap(tmp_path):
    out = tmp_path / "filter"
    _complete(tmp_path / "filter.prev", "old", "old")
    _complete(tmp_path / "filter.next", "new", "new")
    recover(out, "new")
    assert _state(tmp_path) == ["filter"] and (out / "data.txt").read_text() == "new"


def test_missing_output_without_a_complete_next_gets_the_previous_back(tmp_path):
    out = tmp_path / "filter"
    _complete(tmp_path / "filter.prev", "old", "old")
    (tmp_path / "filter.next").mkdir()  # an attempt that never finished
    recover(out, "new")
    assert (out / "data.txt").read_text() == "old"
    assert store.read_success(tmp_path / "filter.next") is None  # left for the stage to resume or clear


def test_complete_next_not_yet_swapped_is_swapped_in(tmp_path):
    out = tmp_path / "filter"
    _complete(out, "old", "old")
    _complete(tmp_path / "filter.next", "new", "new")
    recover(out, "new")
    assert _state(tmp_path) == ["filter"] and (out / "data.txt").read_text() == "new"


def test_complete_next_of_another_config_is_not_swapped_in(tmp_path):
    out = tmp_path / "filter"
    _complete(out, "current", "current")
    _complete(tmp_path / "filter.next", "abandoned", "abandoned")
    recover(out, "current")
    assert (out / "data.txt").read_text() == "current"


def test_leftover_previous_is_removed(tmp_path):
    out = tmp_path / "filter"
    _complete(out, "new", "new")
    _complete(tmp_path / "filter.prev", "old", "old")
    recover(out, "new")
    assert _state(tmp_path) == ["filter"]


def test_nothing_to_do(tmp_path):
    recover(tmp_path / "filter", "fp")
    assert _state(tmp_path) == []
