"""Promotion gates and the promoted pointer (pure functions and files, no models)."""

import pytest

from llmdistill.config import GateConfig
from llmdistill.errors import UserError
from llmdistill.retrain import gates as G
from llmdistill.retrain import state as S


def gate(metric, margin):
    return GateConfig(metric=metric, max_regression=margin)


def test_gate_directions_and_margins():
    promoted = {"top1_agreement": 0.50, "kl_to_teacher": 1.00, "tasks": {"facts": {"accuracy": 0.40}}}
    new = {"top1_agreement": 0.48, "kl_to_teacher": 1.02, "tasks": {"facts": {"accuracy": 0.45}}}
    v = G.check([gate("top1_agreement", 0.01), gate("top1_agreement", 0.03), gate("kl_to_teacher", 0.05),
                 gate("kl_to_teacher", 0.0), gate("task:facts", 0.0), gate("task:facts", -0.10)], new, promoted)
    assert [x["passed"] for x in v] == [False, True, True, False, True, False]
    assert v[0]["regression"] == pytest.approx(0.02)  # higher is better: promoted - new
    assert v[2]["regression"] == pytest.approx(0.02)  # lower is better: new - promoted
    assert v[4]["regression"] == pytest.approx(-0.05)  # an improvement is a negative regression


def test_gates_without_a_promoted_student_or_a_value():
    assert all(x["passed"] for x in G.check([gate("kl_to_teacher", 0.0)], {"kl_to_teacher": 9.0}, None))
    missing = G.check([gate("ece", 0.0)], {"kl_to_teacher": 1.0}, {"ece": 0.1})
    assert not missing[0]["passed"] and "no value" in missing[0]["why"]
    assert G.check([gate("perplexity", 0.0)], {"perplexity": float("nan")}, None)[0]["passed"] is False


def test_unknown_gate_metric_is_rejected():
    with pytest.raises(ValueError, match="unknown gate metric"):
        GateConfig(metric="accuracy")


def test_promote_and_rollback_keep_the_history(tmp_path):
    students = {}
    for name in ("a", "b", "c"):
        students[name] = tmp_path / name / "train" / "student"
        students[name].mkdir(parents=True)
    state = tmp_path / "state"
    state.mkdir()
    with pytest.raises(UserError, match="nothing has been promoted"):
        S.rollback(state)
    for name in ("a", "b", "c"):
        S.promote(state, tmp_path / name, students[name], {"kl_to_teacher": 1.0})
        assert S.current_student(state) == students[name]
        assert (state / S.STUDENT_LINK).resolve() == students[name].resolve()
    assert S.rollback(state)["run_dir"] == str(tmp_path / "b")
    assert S.rollback(state)["run_dir"] == str(tmp_path / "a")
    with pytest.raises(UserError, match="first promoted student"):
        S.rollback(state)
    pointer = S.read_pointer(state)
    assert [e["run_dir"] for e in pointer["history"]] == [str(tmp_path / n) for n in "abc"]
    assert [e["event"] for e in pointer["events"]] == ["promote"] * 3 + ["rollback"] * 2
    assert not list(state.glob("*.tmp")) and not list(state.glob(".*.tmp"))


def test_line_sets(tmp_path):
    path = tmp_path / "seen.txt"
    assert S.read_lines(path) == set()
    assert S.add_lines(path, ["b", "a"]) == 2 and S.add_lines(path, ["a", "c"]) == 1
    assert S.read_lines(path) == {"a", "b", "c"}


def test_compare_to_resolves_the_promoted_symlink(tmp_path):
    """The eval fingerprint sees the real directory, so moving the pointer reruns the eval."""
    from llmdistill.config import load_config
    from llmdistill.pipeline import fingerprints

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    link = tmp_path / "student"
    link.symlink_to(tmp_path / "a")
    first = load_config(None, [f"eval.compare_to={link}"])
    assert first.eval.compare_to == str((tmp_path / "a").resolve())
    link.unlink()
    link.symlink_to(tmp_path / "b")
    second = load_config(None, [f"eval.compare_to={link}"])
    assert fingerprints(first)["eval"] != fingerprints(second)["eval"]
    assert fingerprints(first)["train"] == fingerprints(second)["train"]
