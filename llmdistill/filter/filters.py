"""Filter steps: small predicates that return None (keep) or a reason code (remove).

Each step is built from its config section (`config.FilterStep`; the filter table, steps.py, names the
function) and sees samples one at a time, in order; stateful steps (dedup) remember what they have kept.
The stage owns counting and writing.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable

from llmdistill import config as C
from llmdistill import graders, textnorm
from llmdistill.records import Sample

Verdict = str | None  # None keeps the sample; a string is the reason it is removed
Step = Callable[[Sample], Verdict]

# scripts written without spaces between words (Han, kana, Thai, Lao, Myanmar, Khmer): each character counts
# as a word, so a Chinese answer is not one "word" per sentence (too short for `length`, blind to `repetition`)
_UNSPACED = ("\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
             "\uf900-\ufaff\U00020000-\U0003134f")
_WORD = re.compile(rf"[{_UNSPACED}]|[^\W{_UNSPACED}]+")


def words(text: str) -> list[str]:
    """Lower-cased words: runs of word characters, and single characters of unspaced scripts."""
    return _WORD.findall(text.lower())


def normalise(text: str) -> str:
    """Text for exact dedup (`textnorm.canonical`): NFKC, case-folded, typographic quotes and dashes as ASCII,
    invisible format characters dropped, whitespace and dash runs collapsed, trimmed."""
    return textnorm.canonical(text)


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


def duplicate_line_fraction(text: str) -> float:
    """Fraction of the non-empty lines that repeat an earlier line (whitespace-trimmed); 0 below 3 lines."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 3:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def repetition(step: C.RepetitionStep) -> Step:
    def check(s: Sample) -> Verdict:
        text = s.completion or ""
        if repeated_ngram_fraction(words(text), step.n) > step.max_fraction:
            return "repetition"
        if step.max_duplicate_lines is not None and duplicate_line_fraction(text) > step.max_duplicate_lines:
            return "duplicate_lines"
        return None

    return check


def refusal(step: C.RefusalStep) -> Step:
    phrases = [normalise(p) for p in step.phrases]

    def check(s: Sample) -> Verdict:
        head = normalise((s.completion or "")[: step.window])
        return "refusal" if any(p in head for p in phrases) else None

    return check


_FENCE = re.compile(r"```[\w+-]*[ \t]*\n(.*?)```", re.DOTALL)


def parses(text: str, fmt: str) -> bool:
    """Whether `text` (its first fenced code block, if any) parses as `fmt` (json, yaml or python)."""
    import ast
    import json

    import yaml

    m = _FENCE.search(text)
    body = m.group(1) if m else text.strip()
    try:
        if fmt == "json":
            json.loads(body)
        elif fmt == "yaml":
            yaml.safe_load(body)
        else:
            ast.parse(body)
    except (ValueError, SyntaxError, yaml.YAMLError):
        return False
    return True


def structured(step: C.StructuredStep) -> Step:
    def check(s: Sample) -> Verdict:
        if step.sources is not None and s.source not in step.sources:
            return None
        if step.tags is not None and not set(step.tags) & set(s.metadata.get("tags") or []):
            return None
        return None if parses(s.completion or "", step.format) else f"parse_error:{step.format}"

    return check


def script_of(ch: str) -> str:
    """The Unicode script of a letter, from its name's first word (LATIN, GREEK, CJK, ...)."""
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else "UNKNOWN"


def charset(step: C.CharsetStep) -> Step:
    allowed = {x.upper() for x in step.scripts}

    def check(s: Sample) -> Verdict:
        text = s.completion or ""
        if text.count("\ufffd") > step.max_replacement_chars:
            return "bad_encoding"
        letters = [ch for ch in text if ch.isalpha()]
        if not letters:
            return None
        foreign = sum(1 for ch in letters if not ch.isascii() and script_of(ch) not in allowed)
        if "LATIN" not in allowed:
            foreign += sum(1 for ch in letters if ch.isascii())
        return "charset" if foreign / len(letters) > step.max_foreign_fraction else None

    return check


def correct(step: C.CorrectStep) -> Step:
    """Rejection sampling on prompts with a gold answer (metadata.answer); rows without one, or outside the
    step's `sources` / `tags`, are kept. A gold answer the grader cannot use (a bad regex, a label outside
    `choices`, no number for numeric) is a UserError naming the row."""
    reason = f"incorrect:{step.grader}"

    def check(s: Sample) -> Verdict:
        answer = s.metadata.get("answer")
        if answer is None or (step.sources is not None and s.source not in step.sources):
            return None
        if step.tags is not None and not set(step.tags) & set(s.metadata.get("tags") or []):
            return None
        answer = str(answer)
        graders.check_answers(step.grader, [(f"row {s.id} (prompt {s.prompt_id}, source {s.source})", answer)],
                              step.choices, "filter step correct")
        return None if graders.grade(step.grader, s.completion or "", answer, step.choices) else reason

    return check


def exact_dedup(step: C.ExactDedupStep) -> Step:
    seen: set[bytes] = set()

    def check(s: Sample) -> Verdict:
        digest = exact_hash(s, step.scope)
        if digest in seen:
            return "duplicate"
        seen.add(digest)
        return None

    return check


def text_key(s: Sample, scope: str) -> str:
    """The text a dedup step compares: the completion, or the prompt turns and the completion."""
    if scope == "prompt_completion":
        return " ".join(m["content"] for m in s.messages) + "\n" + (s.completion or "")
    return s.completion or ""


def exact_hash(s: Sample, scope: str) -> bytes:
    """16-byte digest of the normalised text of `scope` (what exact_dedup and the history index compare)."""
    key = normalise(s.completion or "")
    if scope == "prompt_completion":
        key = normalise(" ".join(m["content"] for m in s.messages)) + "\x00" + key
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
