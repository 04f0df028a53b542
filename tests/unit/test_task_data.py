"""The task families in data/facts (one-word facts) and data/plurals (a noun's plural): the committed files are
current, train never asks a held-out item, and the product's graders accept every gold answer."""

import hashlib
import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from llmdistill import graders
from llmdistill.config import load_config
from llmdistill.prompts import spread

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "data" / "facts"
PLURALS = ROOT / "data" / "plurals"


def _module(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bf = _module(FACTS / "build_facts.py")
bp = _module(PLURALS / "build_plurals.py")


def _read(name, where=FACTS):
    return [json.loads(line) for line in (where / name).read_text().splitlines() if line.strip()]


TRAIN, HELDOUT, LARGE = _read("train.jsonl"), _read("heldout.jsonl"), _read("heldout_large.jsonl")
P_TRAIN, P_HELDOUT = _read("train.jsonl", PLURALS), _read("heldout.jsonl", PLURALS)
# sha256 of the 224 train.jsonl lines configs/demo.yaml read (max_prompts: 224 spread over the file) when
# train.jsonl had 1,029 rows (before heldout_large.jsonl): the demo's prompts must not change.
DEMO_224_SHA256 = "c5418925f2d664c9629cdd8b04a2e9bca7fae786472ca6947f891947687789b1"


def test_committed_files_are_current():
    done = subprocess.run([sys.executable, str(FACTS / "build_facts.py"), "--check"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_heldout_is_the_demo_task_file():
    assert (FACTS / "heldout.jsonl").read_bytes() == (ROOT / "data/demo/task_facts.jsonl").read_bytes()


def test_heldout_large_holds_the_demo_items_unchanged():
    lines = set((FACTS / "heldout_large.jsonl").read_text().splitlines())
    demo = (FACTS / "heldout.jsonl").read_text().splitlines()
    assert len(demo) == 88 and set(demo) <= lines
    assert len(LARGE) >= 400 and len({r["prompt"] for r in LARGE}) == len(LARGE)


def test_demo_reads_the_same_224_train_prompts():
    """configs/demo.yaml takes max_prompts: 224 of train.jsonl, spread evenly (llmdistill.prompts.spread): the
    same lines, in the same order, as before subjects moved to heldout_large.jsonl."""
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    (source,) = [s for s in demo["generate"]["sources"] if s["path"].endswith("facts/train.jsonl")]
    assert source["max_prompts"] == 224 == bf.DEMO_MAX_PROMPTS
    lines = (FACTS / "train.jsonl").read_text().splitlines(keepends=True)
    picked = "".join(lines[i] for i in spread(len(lines), 224))
    assert hashlib.sha256(picked.encode()).hexdigest() == DEMO_224_SHA256


def test_every_line_has_the_keys_and_an_answer():
    for row in TRAIN + HELDOUT + LARGE:
        assert list(row) == ["prompt", "level", "source", "answer", "tags"]
        assert isinstance(row["answer"], str) and bf.norm(row["answer"]), row
        assert row["tags"][0] == "task"
    assert {bf.category(r) for r in TRAIN} == set(bf.TEMPLATES) == {bf.category(r) for r in LARGE}
    assert 600 <= len(TRAIN) <= 1200


def test_answers_do_not_occur_in_their_prompts():
    for row in TRAIN + HELDOUT + LARGE:
        assert not bf.grade_contains(row["prompt"], row["answer"]), row["prompt"]


def test_the_contains_grader_accepts_every_gold_answer():
    """The product's grader (configs grade this family with `contains`) takes each gold as right and the bare
    prompt as wrong."""
    for row in TRAIN + LARGE:
        assert graders.answer_problem("contains", row["answer"]) is None
        assert graders.contains(f"The answer is {row['answer']}.", row["answer"]), row
        assert not graders.contains(row["prompt"], row["answer"]), row["prompt"]


def test_splits_share_no_normalised_prompt():
    held = {bf.norm(r["prompt"]) for r in HELDOUT + LARGE}
    train = [bf.norm(r["prompt"]) for r in TRAIN]
    assert len(set(train)) == len(train)
    assert not held & set(train)


def _large_subject(row):
    """The subject a heldout_large item asks about, read from its prompt: the words after the template's
    fixed part ("What is the capital of X?" -> X)."""
    for template in bf.TEMPLATES[bf.category(row)]:
        head, tail = template.split("{s}")
        if row["prompt"].lower().startswith(head.lower()) and row["prompt"].endswith(tail):
            return row["prompt"][len(head):len(row["prompt"]) - len(tail)]
    return None


def test_splits_share_no_subject():
    """Read from the prompt text: a held-out country (of heldout.jsonl or heldout_large.jsonl) never appears in
    a train item of the same category (capitals items name no held-out capital city either); no word of a
    held-out opposite pair appears in a train opposite item, as its word or as its answer."""
    held_words = {bf.norm(w) for w in bf.HELDOUT_SUBJECTS["opposites"]}
    assert len(held_words) == 62
    held_cities = {bf.norm(a) for _, a in bf.bt.CAPITALS}
    large = {cat: set() for cat in bf.TEMPLATES}
    for row in LARGE:
        if row["source"] != bf.bt.SOURCE:  # the 88 are phrased freely; the added items by template
            subject = _large_subject(row)
            assert subject, row["prompt"]
            large[bf.category(row)].add(bf.norm(subject))
            if bf.category(row) == "capitals":
                held_cities.add(bf.norm(row["answer"]))
            if bf.category(row) == "opposites":
                held_words |= {bf.norm(subject), bf.norm(row["answer"])}
    assert len(held_words) == 62 + 2 * len(large["opposites"])
    for row in TRAIN:
        cat = bf.category(row)
        text = f" {bf.norm(row['prompt'])} {bf.norm(row['answer'])} "
        if cat == "opposites":
            assert not held_words & set(text.split()), row["prompt"]
            continue
        named = set(map(bf.norm, bf.HELDOUT_SUBJECTS[cat])) | large[cat]
        for subject in named | (held_cities if cat == "capitals" else set()):
            assert f" {subject} " not in text, (subject, row["prompt"])


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
    {"prompt": "Tell me the capital of Croatia.", "answer": "Zagreb", "cat": "capitals"},  # moved to large
    {"prompt": "Which capital city is Wellington the capital of?", "answer": "x", "cat": "capitals"},  # added
    {"prompt": "What is the opposite of unable?", "answer": "able", "cat": "opposites"},
])
def test_build_refuses_a_leak(bad):
    row = {"prompt": bad["prompt"], "level": 1, "source": bf.SOURCE, "answer": bad["answer"],
           "tags": ["task", bad["cat"]]}
    bf.validate([], HELDOUT)
    with pytest.raises(SystemExit, match="validation failed"):
        bf.validate([row], HELDOUT)


def test_build_refuses_a_demo_prompt_change():
    """Moving a subject whose train prompt the demo reads would change the demo's 224 prompts."""
    train = bf.build_train()
    swapped = train[1:] + train[:1]
    with pytest.raises(SystemExit, match="configs/demo.yaml reads"):
        bf.validate_large(swapped, HELDOUT, bf.build_heldout_large())


# ------------------------------------------------------------------------------------------------ plurals
def test_plurals_committed_files_are_current():
    done = subprocess.run([sys.executable, str(PLURALS / "build_plurals.py"), "--check"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_plurals_lines_counts_and_kinds():
    for row in P_TRAIN + P_HELDOUT:
        assert list(row) == ["prompt", "level", "source", "answer", "tags"]
        assert row["tags"][:2] == ["task", "plurals"] and row["tags"][2] in bp.KINDS
    assert len(P_TRAIN) >= 800 and len(P_HELDOUT) >= 400
    for part in (P_TRAIN, P_HELDOUT):  # every kind of plural is in both splits
        assert {r["tags"][2] for r in part} == set(bp.KINDS)


def _noun(row):
    return row["prompt"].rstrip("?").rsplit(" ", 1)[1]


def test_plurals_splits_share_no_noun():
    """No held-out noun, nor its plural, is a word of any train prompt or answer; no prompt repeats; a held-out
    noun is asked once, a train noun once under each template."""
    train_words = set()
    for row in P_TRAIN:
        train_words |= set(graders.normal(row["prompt"] + " " + row["answer"]).split())
    for row in P_HELDOUT:
        assert _noun(row) not in train_words and row["answer"] not in train_words, row["prompt"]
    prompts = [graders.normal(r["prompt"]) for r in P_TRAIN + P_HELDOUT]
    assert len(set(prompts)) == len(prompts)
    assert len({_noun(r) for r in P_HELDOUT}) == len(P_HELDOUT)
    assert set(Counter(_noun(r) for r in P_TRAIN).values()) == {len(bp.TEMPLATES)}


def test_plurals_gold_answers_grade_and_follow_the_noun_list():
    nouns = {r["noun"]: r for r in bp.read_nouns((PLURALS / "nouns.tsv").read_text())}
    for row in P_TRAIN + P_HELDOUT:
        entry = nouns[_noun(row)]
        assert row["answer"] == entry["plural"] and row["tags"][2] == entry["kind"]
        if entry["kind"] != "irregular":
            assert entry["plural"] == bp.regular_plural(entry["noun"])
        assert graders.answer_problem("contains", row["answer"]) is None
        assert graders.contains(f"The plural of {entry['noun']} is {row['answer']}.", row["answer"])
        assert not graders.contains(f"The plural of {entry['noun']} is {entry['noun']}.", row["answer"])
        assert not graders.contains(row["prompt"], row["answer"])


def test_plurals_build_refuses_a_leak():
    held_noun = _noun(P_HELDOUT[0])
    row = {"prompt": f"What is the plural of {held_noun}?", "level": 1, "source": bp.SOURCES["train"],
           "answer": P_HELDOUT[0]["answer"], "tags": ["task", "plurals", "s"]}
    nouns = bp.read_nouns((PLURALS / "nouns.tsv").read_text())
    with pytest.raises(SystemExit, match="occurs in a train prompt"):
        bp.validate(nouns, P_TRAIN + [row], P_HELDOUT)
    mouse = dict(row, prompt="What is the plural of mouse?", answer="mice")  # data/demo/seeds.jsonl asks it
    with pytest.raises(SystemExit, match="data/demo prompt asks"):
        bp.validate(nouns, P_TRAIN + [mouse], P_HELDOUT)


def test_plurals_config_grades_the_heldout_split():
    cfg = load_config(ROOT / "configs" / "plurals-task.yaml")
    (task,) = cfg.eval.tasks
    assert (task.name, task.grader) == ("plurals", "contains")
    assert [Path(p).resolve() for p in task.prompts] == [(PLURALS / "heldout.jsonl").resolve()]
