"""`llmdistill retrain` / `rollback` end to end on the tiny teacher: a growing prompt set, gates that pass
and fail, the promoted pointer, rollback, and the lock against overlapping schedules."""

import json
import subprocess

import pytest
import yaml

from conftest import PYTHON, make_tiny_config, write_prompts
from llmdistill import store
from llmdistill.config import load_config
from llmdistill.prompts import read_prompt_file
from llmdistill.retrain import state as S
from llmdistill.retrain.run import state_dir
from llmdistill.runner import RunLock


def cli(*args):
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", *map(str, args)], capture_output=True, text=True)
    return res


def retrain(config, *overrides):
    res = cli("retrain", config, *overrides)
    events = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]  # every line is JSON
    return res.returncode, events, res


def generated_prompt_ids(run_dir):
    return store.read_table(run_dir / "generate", ["prompt_id"]).column("prompt_id").to_pylist()


def grow(seeds, tmp_path, tag):
    extra = write_prompts(tmp_path / f"{tag}.jsonl", n_per_level=2, tag=tag)
    with open(seeds, "a", encoding="utf-8") as f:
        f.write(extra.read_text(encoding="utf-8"))


@pytest.fixture()
def retrain_config(tmp_path, tiny):
    path, data = make_tiny_config(tmp_path, tiny)
    data["train"]["sft_baseline"] = False
    # pure KL to the teacher: more training on more teacher data moves the student towards the teacher
    # (CE on a random teacher's sampled tokens would make it peakier than the teacher instead)
    data["train"]["loss"] = [{"name": "forward_kl", "weight": 1.0}]
    data["eval"]["latency_prompts"] = 1
    path.write_text(yaml.safe_dump(data))
    return path, data


def test_retrain_promotes_refuses_on_a_failing_gate_and_rolls_back(retrain_config, tmp_path):
    path, data = retrain_config
    seeds = tmp_path / "seeds.jsonl"
    sdir = state_dir(load_config(path))

    # run 1: no promoted student yet -> promoted
    code, events, res = retrain(path)
    assert code == 0, res.stdout + res.stderr[-3000:]
    stages = [(e["stage"], e["status"]) for e in events if e["event"] == "stage"]
    assert stages == [("generate", "ran"), ("filter", "ran"), ("train", "ran"), ("eval", "ran"),
                      ("gates", "passed"), ("promote", "promoted")]
    assert all(isinstance(e["seconds"], float) for e in events if e["event"] == "stage")
    result = events[-1]
    assert result["event"] == "result" and result["decision"] == "promoted" and result["exit_code"] == 0
    run1 = S.read_pointer(sdir)["current"]["run_dir"]
    first_ids = generated_prompt_ids(tmp_path / "runs" / "tiny" / run1.rsplit("/", 1)[-1])
    assert len(first_ids) == 12
    assert (sdir / S.STUDENT_LINK).resolve() == (tmp_path / "runs" / "tiny").resolve() / run1.rsplit("/", 1)[-1] \
        / "train" / "student"
    assert (store.read_json(sdir / S.POINTER)["current"]["previous"]) is None

    # nothing new -> exit 11, no run directory
    before = sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir())
    code, events, _ = retrain(path)
    assert code == 11 and events[-1]["decision"] == "nothing to do"
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == before

    # run 2: six more prompts and a gate no student can pass -> not promoted (exit 10), pointer kept
    grow(seeds, tmp_path, "second")
    code, events, res = retrain(path, "retrain.gates=[{metric: top1_agreement, max_regression: -1.0}]")
    assert code == 10, res.stdout + res.stderr[-3000:]
    run2 = tmp_path / "runs" / "tiny" / events[-1]["run_dir"].rsplit("/", 1)[-1]
    second_ids = generated_prompt_ids(run2)
    assert len(second_ids) == 6 and not set(second_ids) & set(first_ids)
    assert S.read_pointer(sdir)["current"]["run_dir"] == run1
    verdict = store.read_json(run2 / "retrain.json")
    assert verdict["decision"] == "not promoted" and not verdict["gates"][0]["passed"]
    assert verdict["warm_start_from"] == str(S.read_pointer(sdir)["current"]["student"])
    resolved = yaml.safe_load((run2 / "config.resolved.yaml").read_text())
    assert resolved["train"]["student"]["model"] == verdict["warm_start_from"]
    assert "promoted" in store.read_json(run2 / "eval" / "metrics.json")["models"]
    assert "history_dedup" in store.read_json(run2 / "filter" / "stats.json")["steps"]
    assert (run2 / "cache").resolve() == (sdir / "cache").resolve() and len(list((sdir / "cache").iterdir())) == 1
    page = (run2 / "report" / "index.html").read_text()
    assert 'id="table-gates"' in page and "not promoted" in page

    # run 3: six more; the warm-started student must not be worse in KL than the promoted one -> promoted
    grow(seeds, tmp_path, "third")
    code, events, res = retrain(path, "retrain.gates=[{metric: kl_to_teacher, max_regression: 0.0}]")
    assert code == 0, res.stdout + res.stderr[-3000:]
    run3 = tmp_path / "runs" / "tiny" / events[-1]["run_dir"].rsplit("/", 1)[-1]
    third_ids = generated_prompt_ids(run3)
    assert len(third_ids) == 6 and not set(third_ids) & (set(first_ids) | set(second_ids))  # never twice
    gate = store.read_json(run3 / "retrain.json")["gates"][0]
    assert gate["passed"] and gate["student"] <= gate["promoted"]
    pointer = S.read_pointer(sdir)
    assert pointer["current"]["run_dir"] == str(run3) and pointer["current"]["previous"] == run1
    card = (sdir / S.STUDENT_LINK / "README.md").read_text(encoding="utf-8")  # the promoted student's card
    assert "`llmdistill retrain` decision: **promoted** (every gate passed)" in card
    assert f"| kl_to_teacher | {gate['student']:.4f} | {gate['promoted']:.4f} | 0.0000 | pass |" in card
    seen = S.read_lines(sdir / S.SEEN)
    assert len(seen) == 24 and seen == set(first_ids) | set(second_ids) | set(third_ids)
    assert {p.id for p in read_prompt_file(seeds)} == seen

    # rollback restores run 1's student; the history keeps every promotion
    res = cli("rollback", path)
    assert res.returncode == 0, res.stderr
    pointer = S.read_pointer(sdir)
    assert pointer["current"]["run_dir"] == run1 and len(pointer["history"]) == 2
    assert [e["event"] for e in pointer["events"]] == ["promote", "promote", "rollback"]
    assert (sdir / S.STUDENT_LINK).resolve().parent.parent.name == run1.rsplit("/", 1)[-1]
    res = cli("rollback", path)
    assert res.returncode == 2 and "first promoted student" in res.stderr


def test_overlapping_retrain_gets_the_lock_error(retrain_config, tmp_path):
    path, _ = retrain_config
    sdir = state_dir(load_config(path))
    with RunLock(sdir):
        code, events, res = retrain(path)
    assert code == 3 and events[-1]["decision"] == "failed" and "in use" in events[-1]["error"]
    assert not any(p.name.startswith("retrain-") and p.name != "retrain-state"
                   for p in (tmp_path / "runs" / "tiny").iterdir())


def test_bad_gate_metric_is_a_config_error(retrain_config):
    path, _ = retrain_config
    res = cli("retrain", path, "retrain.gates=[{metric: accuracy}]")
    assert res.returncode == 2 and "unknown gate metric" in res.stderr
    res = cli("retrain", path, "retrain.gates=[{metric: 'task:facts'}]")
    assert res.returncode == 2 and "task:facts" in res.stderr


def test_a_failed_retrain_is_resumed_without_generating_again(retrain_config, tmp_path):
    path, _ = retrain_config
    sdir = state_dir(load_config(path))
    # a filter that keeps nothing: train refuses (bad input, exit 2) after generate has run
    code, events, res = retrain(path, "filter.steps=[{name: length, min_words: 1000}]")
    assert code == 2, res.stdout + res.stderr[-3000:]
    assert [e["stage"] for e in events if e["event"] == "stage"] == ["generate", "filter", "train"]
    assert events[-2]["status"] == "failed" and "no samples left" in events[-1]["error"]
    pending = store.read_json(sdir / S.PENDING)
    assert S.current_student(sdir) is None and len(S.read_lines(sdir / S.SEEN)) == 12

    code, events, res = retrain(path)  # fixed config: the same run directory is resumed
    assert code == 0, res.stdout + res.stderr[-3000:]
    assert events[0]["event"] == "resume" and events[0]["run_dir"] == pending["run_dir"]
    statuses = {e["stage"]: e["status"] for e in events if e["event"] == "stage"}
    assert statuses["generate"] == "skipped" and statuses["filter"] == "ran"
    assert S.read_pointer(sdir)["current"]["run_dir"] == pending["run_dir"]
    assert not (sdir / S.PENDING).exists()


def test_python_api_retrain_and_rollback(retrain_config, tmp_path, capsys):
    import llmdistill
    from llmdistill.errors import LockedError, UserError

    path, _ = retrain_config
    sdir = state_dir(load_config(path))
    with pytest.raises(UserError, match="nothing has been promoted"):
        llmdistill.rollback(path)
    with RunLock(sdir), pytest.raises(LockedError, match="in use"):
        llmdistill.run_retrain(path)

    first = llmdistill.run_retrain(path)
    assert isinstance(first, llmdistill.RetrainResult)
    assert (first.decision, first.exit_code) == ("promoted", 0) and first.report.is_file()
    assert str(first.run_dir) == S.read_pointer(sdir)["current"]["run_dir"]
    assert [e["event"] for e in first.events][0] == "start" and first.events[-1]["event"] == "result"
    assert capsys.readouterr().out == ""  # the events are returned, not printed

    again = llmdistill.run_retrain(path)
    assert (again.decision, again.exit_code, again.run_dir) == ("nothing to do", 11, None)
    with pytest.raises(UserError, match="first promoted student"):
        llmdistill.rollback(path)
