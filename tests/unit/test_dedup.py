"""Near-duplicate machinery: hashing, MinHash signatures, LSH candidates, exact verification, clusters."""

import random

import numpy as np
import pytest

from llmdistill.filter import minhash

WORDS = [f"w{i}" for i in range(3000)]


def doc(rng, n=120):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def edit(rng, text, rate):
    w = text.split()
    for _ in range(max(1, round(rate * len(w)))):
        w[rng.randrange(len(w))] = rng.choice(WORDS)
    return " ".join(w)


def set_jaccard(a, b, n=3):
    wa, wb = a.lower().split(), b.lower().split()
    sa = {tuple(wa[i: i + n]) for i in range(len(wa) - n + 1)}
    sb = {tuple(wb[i: i + n]) for i in range(len(wb) - n + 1)}
    return len(sa & sb) / len(sa | sb)


def test_word_hashes_follow_words_case_and_punctuation():
    h, d = minhash.word_hashes(["Hello, World!", "hello world", "héllo  wörld"])
    assert d.tolist() == [0, 0, 1, 1, 2, 2]
    assert h[0] == h[2] and h[1] == h[3]  # case and punctuation do not matter
    assert len(set(h.tolist())) == 4  # accents make other words


def test_shingle_hashes_are_stable_and_per_document():
    sh, off = minhash.shingle_hashes(["a b c d", "x y", "a b c"], 3)
    assert off.tolist() == [0, 2, 2, 3]  # "x y" has no 3-word shingle
    assert sh[0] == sh[2]  # "a b c" in both documents
    again, _ = minhash.shingle_hashes(["a b c d"], 3)
    assert again.tolist() == sh[:2].tolist()


def test_exact_jaccard_matches_the_definition():
    rng = random.Random(0)
    a = doc(rng)
    for rate in (0.02, 0.1, 0.3):
        b = edit(rng, a, rate)
        sa, sb = minhash.shingle_sets([a, b])
        assert abs(minhash.jaccard(sa, sb) - set_jaccard(a, b)) < 1e-9


def test_signature_agreement_estimates_jaccard():
    rng = random.Random(1)
    a = doc(rng, 300)
    b = edit(rng, a, 0.05)
    sig, ok = minhash.signatures([a, b], num_perm=256)
    assert ok.all()
    assert abs((sig[0] == sig[1]).mean() - set_jaccard(a, b)) < 0.1


def test_band_choice_favours_recall_at_the_threshold():
    bands, rows = minhash.optimal_bands(0.8, 128)
    assert bands * rows <= 128
    assert minhash.collision_probability(0.85, bands, rows) > 0.97
    assert minhash.collision_probability(0.3, bands, rows) < 0.01


def test_candidate_pairs_bucket_members_once():
    keys = np.array([[1, 9], [1, 9], [2, 7], [1, 8], [3, 7]], dtype=np.uint64)
    pairs = minhash.candidate_pairs(keys)
    assert {tuple(p) for p in pairs.tolist()} == {(0, 1), (0, 3), (1, 3), (2, 4)}
    assert len(minhash.candidate_pairs(keys, valid=np.array([1, 1, 0, 1, 1], bool))) == 3


def test_finder_finds_planted_duplicates_and_nothing_else():
    rng = random.Random(2)
    texts = [doc(rng) for _ in range(300)]
    planted = {}
    for _ in range(30):
        src = rng.randrange(300)
        planted[(src, len(texts))] = None
        texts.append(edit(rng, texts[src], 0.02))
    finder = minhash.NearDuplicateFinder(threshold=0.8)
    for i in range(0, len(texts), 100):  # chunks
        finder.add(texts[i: i + 100])
    pairs, js = finder.verified_pairs(minhash.reader(texts, chunk=50))
    found = {tuple(p) for p in pairs.tolist()}
    assert set(planted) <= found
    for (a, b), j in zip(pairs.tolist(), js):
        assert j == pytest.approx(set_jaccard(texts[a], texts[b])) and j >= 0.8
    labels = minhash.components(len(texts), pairs)
    for a, b in planted:
        assert labels[a] == labels[b]


def test_components_join_chains():
    labels = minhash.components(5, np.array([[0, 1], [1, 3]]))
    assert labels[0] == labels[1] == labels[3] and len({labels[0], labels[2], labels[4]}) == 3
