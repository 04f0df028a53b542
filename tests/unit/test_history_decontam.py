"""The history index API and the decontamination index, directly."""

import json
import random

import numpy as np
import pytest

from llmdistill import config as C
from llmdistill.errors import UserError
from llmdistill.filter import decontam, minhash
from llmdistill.filter.history import HistoryIndex, exact_u64

WORDS = [f"v{i}" for i in range(1000)]


def texts(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(50)) for _ in range(n)]


def test_history_index_round_trip_and_owners(tmp_path):
    docs = texts(10)
    sigs, _ = minhash.signatures(docs)
    hashes = exact_u64([bytes([i]) * 16 for i in range(10)])
    index = HistoryIndex.open(tmp_path / "h")
    assert len(index) == 0 and not index.contains_exact(hashes).any()
    index.add("run-a", hashes[:6], sigs[:6], [f"a{i}" for i in range(6)])
    index = HistoryIndex.open(tmp_path / "h")
    assert index.contains_exact(hashes).tolist() == [True] * 6 + [False] * 4
    edited = docs[7].split()
    edited[3] = "zzz"
    probe, _ = minhash.signatures([docs[2], " ".join(edited), texts(1, seed=9)[0]])
    assert [len(c) > 0 for c in index.near_candidates(probe)] == [True, False, False]
    assert index.near_matches(probe, 0.8).tolist() == [True, False, False]
    # the same owner replaces its segment; another owner adds one; exclude() hides an owner
    index.add("run-a", hashes[:2], sigs[:2], ["a0", "a1"])
    index.add("run-b", hashes[6:], sigs[6:], [f"b{i}" for i in range(4)])
    index = HistoryIndex.open(tmp_path / "h")
    assert len(index) == 6 and index.contains_exact(hashes).tolist() == [True] * 2 + [False] * 4 + [True] * 4
    assert len(index.exclude("run-b")) == 2
    with pytest.raises(UserError, match="num_perm=128, not 64"):
        HistoryIndex.open(tmp_path / "h", num_perm=64)


def test_history_segments_record_the_text_normalisation(tmp_path, caplog):
    """A segment remembers the textnorm version its hashes were made with; an index holding rows hashed by
    an older version still opens, with a warning naming it (its non-ASCII rows may not match)."""
    from llmdistill import store, textnorm

    docs = texts(4)
    sigs, _ = minhash.signatures(docs)
    index = HistoryIndex.open(tmp_path / "h")
    index.add("run-a", exact_u64([bytes([i]) * 16 for i in range(4)]), sigs, [f"a{i}" for i in range(4)])
    meta = store.read_json(tmp_path / "h" / "index.json")
    assert meta["segments"][0]["text"] == textnorm.VERSION
    with caplog.at_level("WARNING", logger="llmdistill"):
        HistoryIndex.open(tmp_path / "h")
    assert not caplog.records
    del meta["segments"][0]["text"]  # as written before the version was recorded
    store.atomic_write_json(tmp_path / "h" / "index.json", meta)
    with caplog.at_level("WARNING", logger="llmdistill"):
        index = HistoryIndex.open(tmp_path / "h")
    assert len(index) == 4
    assert "4 rows were hashed with an older text normalisation" in caplog.text and str(tmp_path / "h") in caplog.text


def test_history_and_decontamination_see_typographic_copies_of_real_tweets(tmp_path):
    """The history index and the decontamination n-grams use the same normalisation as exact and near dedup:
    a tweet kept by an earlier run is found again from its no-break-space, curly-quote or fullwidth copy,
    and an eval item with typographic quotes and dashes is found in a sample written in plain ASCII."""
    from llmdistill.filter import filters
    from tests.unit.test_dedup import SAME_TEXT, SAME_WORDS, tweets
    from tests.unit.test_filters import sample

    originals = tweets()[:30]
    index = HistoryIndex.open(tmp_path / "h", scope="completion")
    sigs, _ = minhash.signatures(originals)
    index.add("run-a", exact_u64([filters.exact_hash(sample(t), "completion") for t in originals]), sigs,
              [f"a{i}" for i in range(len(originals))])
    index = HistoryIndex.open(tmp_path / "h", scope="completion")
    for name, edit in {**SAME_TEXT, **SAME_WORDS}.items():
        copies = [edit(t) for t in originals]
        probe, _ = minhash.signatures(copies)
        assert index.near_matches(probe, 0.8).all(), name
        if name in SAME_TEXT:
            assert index.contains_exact(exact_u64([filters.exact_hash(sample(c), "completion") for c in copies])).all()
    idx = decontam.NgramIndex(5)
    idx.add("eval", ["He said \u201cit\u2019s the end\u2014or not\u201d, then left"])
    assert idx.hits("we read: he said it's the end - or not, then left early") == {("eval", 0)}


def test_ngram_index_short_items_match_whole():
    idx = decontam.NgramIndex(5)
    idx.add("s", ["one two three four five six", "tiny item"])
    assert idx.hits("x One, two three four five y") == {("s", 0)}
    assert idx.hits("a tiny item here") == {("s", 1)}
    assert idx.hits("tiny and item") == set()


def test_eval_items_from_jsonl_text_and_a_local_hf_dataset(tmp_path):
    rows = [{"question": "What is two plus two?", "answer": 4, "id": 1},
            {"messages": [{"role": "user", "content": "Name a colour."}], "answer": "red"}]
    (tmp_path / "ds").mkdir()
    for path in (tmp_path / "e.jsonl", tmp_path / "ds" / "test.jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    es = C.EvalSetConfig(name="e", path=tmp_path / "e.jsonl")
    assert decontam.load_eval_items(es) == ["What is two plus two?\n4", "red\nName a colour."]
    (tmp_path / "t.txt").write_text("line one\n\nline two\n")
    assert decontam.load_eval_items(C.EvalSetConfig(name="t", path=tmp_path / "t.txt")) == ["line one", "line two"]
    hf = C.EvalSetConfig(name="h", hf=str(tmp_path / "ds"), fields=["question"])  # split test
    assert decontam.load_eval_items(hf) == ["What is two plus two?"]
    with pytest.raises(UserError, match="cannot load"):
        decontam.load_eval_items(C.EvalSetConfig(name="m", hf=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="exactly one of path and hf"):
        C.EvalSetConfig(name="x")
    assert np.all(exact_u64([b"\x01" * 16]) == np.array([0x0101010101010101], np.uint64))


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_eval_set_with_a_byte_that_is_not_utf8_names_file_and_line(tmp_path, suffix):
    from llmdistill.config import EvalSetConfig
    from llmdistill.errors import UserError

    path = tmp_path / f"eval{suffix}"
    good = b'{"prompt": "caf\xc3\xa9 au lait"}' if suffix == ".jsonl" else "café au lait".encode()
    path.write_bytes(good + b"\n" + good.replace(b"lait", b"l\xffit") + b"\n")
    with pytest.raises(UserError, match=rf"eval{suffix}:2: not UTF-8 text \(byte 0xff"):
        decontam.load_eval_items(EvalSetConfig(name="e", path=path))
    path.write_bytes(good + b"\n\n" + good + b"\n")
    assert decontam.load_eval_items(EvalSetConfig(name="e", path=path)) == ["café au lait"] * 2
