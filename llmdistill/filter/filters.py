"""Filter steps: small predicates that return None (keep) or a reason code (remove).

Each step is built from its config section (`config.FilterStep`) and sees samples one at a time, in
order; stateful steps (dedup) remember what they have kept. The stage owns counting and writing.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable

from llmdistill import config as C
from llmdistill.records import Sample

Verdict = str | None  # None keeps the sample; a string is the reason it is removed
Step = Callable[[Sample], Verdict]

_WORD = re.compile(r"\w+", re.UNICODE)
_SPACE = re.compile(r"\s+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def normalise(text: str) -> str:
    """Text for exact dedup: Unicode NFKC, case-folded, whitespace collapsed, trimmed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def repeated_ngram_fraction(tokens: list[str], n: int) -> float:
    """Fraction of the word n-grams that repeat an n-gram seen earlier in the same text (0 = no repeats)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def failed(step: C.FailedStep) -> Step:
    return lambda s: "failed" if not s.ok else None


def empty(step: C.EmptyStep) -> Step:
    return lambda s: "empty" if not (s.completion or "").strip() else None


def truncated(step: C.TruncatedStep) -> Step:
    return lambda s: "truncated" if s.finish_reason == "length" else None


def length(step: C.LengthStep) -> Step:
    def check(s: Sample) -> Verdict:
        n = len(words(s.completion or ""))
        if n < step.min_words:
            return "too_short"
        if step.max_words is not None and n > step.max_words:
            return "too_long"
        return None

    return check


def repetition(step: C.RepetitionStep) -> Step:
    def check(s: Sample) -> Verdict:
        frac = repeated_ngram_fraction(words(s.completion or ""), step.n)
        return "repetition" if frac > step.max_fraction else None

    return check


def dedup_key(messages: list[dict], completion: str | None, scope: str = "prompt_completion") -> bytes:
    """The exact-dedup key: a digest of the normalised completion (and prompt, for scope prompt_completion)."""
    key = normalise(completion or "")
    if scope == "prompt_completion":
        key = normalise(" ".join(m["content"] for m in messages)) + "\x00" + key
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()


def exact_dedup(step: C.ExactDedupStep) -> Step:
    seen: set[bytes] = set()

    def check(s: Sample) -> Verdict:
        digest = dedup_key(s.messages, s.completion, step.scope)
        if digest in seen:
            return "duplicate"
        seen.add(digest)
        return None

    return check


def read_history(path) -> set[bytes]:
    """Keys (hex, one per line) of samples kept by earlier runs; a missing file is an empty history."""
    try:
        with open(path, encoding="ascii") as f:
            return {bytes.fromhex(line.strip()) for line in f if line.strip()}
    except FileNotFoundError:
        return set()


def history_dedup(step: C.HistoryDedupStep) -> Step:
    history = read_history(step.path)
    return lambda s: "history_duplicate" if dedup_key(s.messages, s.completion) in history else None


STEPS: dict[str, Callable] = {
    "failed": failed,
    "empty": empty,
    "truncated": truncated,
    "length": length,
    "repetition": repetition,
    "exact_dedup": exact_dedup,
    "history_dedup": history_dedup,
}


def build_steps(steps: list) -> list[tuple[str, Step]]:
    return [(s.name, STEPS[s.name](s)) for s in steps]
