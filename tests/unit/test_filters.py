"""Each filter step returns the reason code it documents, and keeps what it should keep."""

from collections import Counter

from llmdistill import config as C
from llmdistill.filter import filters, steps
from llmdistill.records import Sample


def sample(text, finish="stop", prompt="q", error=None):
    return Sample(id=text or "x", prompt_id="p", messages=[{"role": "user", "content": prompt}],
                  completion=None if error else text, source="s", teacher="t", gen={}, finish_reason=finish,
                  error=error)


def run(step_cfg, samples):
    check = steps.implementation(step_cfg)(step_cfg)
    return [check(s) for s in samples]


def test_failed():
    assert run(C.FailedStep(name="failed"), [sample("ok"), sample("", finish="error", error="timeout")]) == [
        None, "failed"]


def test_empty():
    assert run(C.EmptyStep(name="empty"), [sample("  \n "), sample("a")]) == ["empty", None]


def test_truncated():
    assert run(C.TruncatedStep(name="truncated"), [sample("a", "length"), sample("a", "stop")]) == ["truncated", None]


def test_length_bounds():
    step = C.LengthStep(name="length", min_words=2, max_words=4)
    assert run(step, [sample("one"), sample("one two"), sample("a b c d e")]) == ["too_short", None, "too_long"]


def test_repetition():
    looped = "the cat sat on the mat " * 6
    varied = "a quick brown fox jumps over the lazy dog near the river bank today"
    assert run(C.RepetitionStep(name="repetition", n=3, max_fraction=0.3), [sample(looped), sample(varied)]) == [
        "repetition", None]
    assert filters.repeated_ngram_fraction("a b a b a b".split(), 2) == 1 - 2 / 5


def test_unspaced_scripts_count_a_word_per_character():
    """Chinese, Japanese and Thai have no spaces between words: a sentence is not one word, so a looping
    answer is caught and a long one is not 'too short'."""
    chinese = "北京是中国的首都，也是一座历史悠久的城市。"
    assert len(filters.words(chinese)) == 19 and filters.words("Café naïve 123") == ["café", "naïve", "123"]
    assert filters.words("서울은 한국의 수도") == ["서울은", "한국의", "수도"]  # Korean is spaced
    looped = "我喜欢学习中文。" * 6
    rep = C.RepetitionStep(name="repetition", n=3, max_fraction=0.3)
    assert run(rep, [sample(looped), sample(chinese)]) == ["repetition", None]
    assert run(C.LengthStep(name="length", min_words=5), [sample("東京は日本の首都です"), sample("東京")]) == [
        None, "too_short"]


def test_exact_dedup_normalises_case_space_and_unicode():
    texts = ["Paris is the capital.", "paris  is the\tcapital.", "Ｐaris is the capital.", "Rome."]
    assert run(C.ExactDedupStep(name="exact_dedup", scope="completion"), [sample(t) for t in texts]) == [
        None, "duplicate", "duplicate", None]


def test_exact_dedup_catches_typographic_copies_of_real_tweets():
    """Real tweets (data/sentiment) and copies with no-break or thin spaces, curly quotes, en/em dashes,
    fullwidth letters, ligatures, soft hyphens and zero-width spaces: every copy is a `duplicate`."""
    from tests.unit.test_dedup import SAME_TEXT, tweets

    originals = tweets()[:150]
    edited = [(name, f(t)) for t in originals for name, f in SAME_TEXT.items() if f(t) != t]
    assert Counter(name for name, _ in edited).keys() == SAME_TEXT.keys()  # every kind of edit was made
    copies = [c for _, c in edited]
    verdicts = run(C.ExactDedupStep(name="exact_dedup", scope="completion"), [sample(t) for t in originals + copies])
    assert verdicts == [None] * len(originals) + ["duplicate"] * len(copies)


def test_exact_dedup_prompt_scope_keeps_same_answer_to_different_prompts():
    a, b = sample("Yes.", prompt="is it blue?"), sample("Yes.", prompt="is it red?")
    assert run(C.ExactDedupStep(name="exact_dedup"), [a, b, sample("yes.", prompt="is it blue?")]) == [
        None, None, "duplicate"]


def test_duplicate_lines():
    step = C.RepetitionStep(name="repetition", max_fraction=1.0, max_duplicate_lines=0.3)
    looped = "Step one.\nStep two.\nStep two.\nStep two.\nDone."
    assert filters.duplicate_line_fraction(looped) == 1 - 3 / 5
    assert run(step, [sample(looped), sample("a\nb\nc\nd"), sample("x\nx")]) == ["duplicate_lines", None, None]


def test_refusal_phrases_at_the_start_only():
    step = C.RefusalStep(name="refusal", window=60)
    texts = ["I’m sorry, but I can’t help with that.", "As an AI language model, I cannot browse.",
             "Paris is the capital of France.", "x " * 40 + "i'm unable to find more"]
    assert run(step, [sample(t) for t in texts]) == ["refusal", "refusal", None, None]


def test_structured_outputs_must_parse():
    step = C.StructuredStep(name="structured", format="json")
    good, fenced = '{"a": [1, 2]}', 'Here you go:\n```json\n{"a": 1}\n```\nDone.'
    bad, bad_fenced = '{"a": [1, 2}', '```json\n{"a": }\n```'
    assert run(step, [sample(good), sample(fenced), sample(bad), sample(bad_fenced)]) == [
        None, None, "parse_error:json", "parse_error:json"]
    py = C.StructuredStep(name="structured", format="python", sources=["code"])
    other = sample("def f(:")
    code = sample("def f(:")
    code.source = "code"
    assert run(py, [other, code, sample("```python\nx = 1\n```")]) == [None, "parse_error:python", None]


def test_charset_and_encoding_rules():
    step = C.CharsetStep(name="charset", scripts=["LATIN"], max_foreign_fraction=0.1)
    texts = ["Ça va très bien, merci.", "Это предложение на русском.",
             "Mostly English text with a single foreign word один inside it", "broken \ufffd text"]
    assert run(step, [sample(t) for t in texts]) == [None, "charset", None, "bad_encoding"]
    cyr = C.CharsetStep(name="charset", scripts=["CYRILLIC"], max_foreign_fraction=0.1)
    assert run(cyr, [sample(texts[1]), sample("plain english")]) == [None, "charset"]
