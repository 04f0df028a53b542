"""The fact task family in data/facts: the committed files are current, and train never asks a held-out fact."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "data" / "facts"


def _module():
    spec = importlib.util.spec_from_file_location("build_facts", FACTS / "build_facts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bf = _module()


def _read(name):
    return [json.loads(line) for line in (FACTS / name).read_text().splitlines() if line.strip()]


TRAIN, HELDOUT = _read("train.jsonl"), _read("heldout.jsonl")


def test_committed_files_are_current():
    done = subprocess.run([sys.executable, str(FACTS / "build_facts.py"), "--check"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_heldout_is_the_demo_task_file():
    assert (FACTS / "heldout.jsonl").read_bytes() == (ROOT / "data/demo/task_facts.jsonl").read_bytes()


def test_every_line_has_the_keys_and_an_answer():
    for row in TRAIN + HELDOUT:
        assert list(row) == ["prompt", "level", "source", "answer", "tags"]
        assert isinstance(row["answer"], str) and bf.norm(row["answer"]), row
        assert row["tags"][0] == "task"
    assert {bf.category(r) for r in TRAIN} == set(bf.TEMPLATES)
    assert 600 <= len(TRAIN) <= 1200


def test_answers_do_not_occur_in_their_prompts():
    for row in TRAIN + HELDOUT:
        assert not bf.grade_contains(row["prompt"], row["answer"]), row["prompt"]


def test_splits_share_no_normalised_prompt():
    held = {bf.norm(r["prompt"]) for r in HELDOUT}
    train = [bf.norm(r["prompt"]) for r in TRAIN]
    assert len(set(train)) == len(train)
    assert not held & set(train)


def test_splits_share_no_subject():
    """Read from the prompt text: a held-out country never appears in a train item of the same category
    (capitals items name no held-out capital city either); no word of a
    held-out opposite pair appears in a train opposite item, as its word or as its answer."""
    held_words = {bf.norm(w) for w in bf.HELDOUT_SUBJECTS["opposites"]}
    assert len(held_words) == 62
    held_cities = [bf.norm(a) for _, a in bf.bt.CAPITALS]
    for row in TRAIN:
        cat = bf.category(row)
        text = f" {bf.norm(row['prompt'])} {bf.norm(row['answer'])} "
        if cat == "opposites":
            assert not held_words & set(text.split()), row["prompt"]
            continue
        for subject in bf.HELDOUT_SUBJECTS[cat] + (tuple(held_cities) if cat == "capitals" else ()):
            assert f" {bf.norm(subject)} " not in text, (subject, row["prompt"])


def test_every_heldout_item_names_a_listed_subject():
    """The lists the split checks against cover the held-out file (a subject missing from them would
    not be kept out of train)."""
    for row in HELDOUT:
        subjects = bf.HELDOUT_SUBJECTS[bf.category(row)]
        assert any(bf.grade_contains(row["prompt"], s) for s in subjects), row["prompt"]


@pytest.mark.parametrize("bad", [
    {"prompt": "Which city is the capital of Japan, the country?", "answer": "Tokyo", "cat": "capitals"},
    {"prompt": "Which country has Tokyo as its capital?", "answer": "Asia", "cat": "capitals"},
    {"prompt": "What is the opposite of cold?", "answer": "hot", "cat": "opposites"},
    {"prompt": "What is the capital city of France?", "answer": "Paris", "cat": "capitals"},
    {"prompt": "What is the capital of Mexico City?", "answer": "Mexico City", "cat": "capitals"},
])
def test_build_refuses_a_leak(bad):
    row = {"prompt": bad["prompt"], "level": 1, "source": bf.SOURCE, "answer": bad["answer"],
           "tags": ["task", bad["cat"]]}
    bf.validate([], HELDOUT)
    with pytest.raises(SystemExit, match="validation failed"):
        bf.validate([row], HELDOUT)
