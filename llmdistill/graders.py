"""Answer graders: is a model's reply to a prompt with a gold answer right? Shared by the eval stage (task
accuracy) and the filter step `correct` (rejection sampling of teacher completions).

Each grader is a small pure function `(output, answer, choices) -> bool`, named once in `GRADERS` (the config's
`grader` Literal is built from it, so a new grader is one function and one row). Normalisation (`normal`):
Unicode NFKC, case folding, format characters (zero-width spaces, soft hyphens) dropped, punctuation other than
"-" made a space, whitespace squeezed; for ASCII text that is lower-casing and stripping punctuation.

`answer_problem` says why a gold answer cannot be graded (a regex that does not compile, a label outside the
choices, an answer with no number); `check_answers` turns the first such answer into a UserError naming its
item, so a task file is checked when it is loaded. Importing this module imports no torch.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence

from llmdistill.errors import UserError

_PUNCT = re.compile(r"[^\w\s-]")
_ARTICLES = frozenset({"a", "an", "the"})
# A number: optional minus (not one joining two words or numbers, as in "3-4"), digits with optional thousands
# commas ("1,200"), an optional decimal part ("3.50"). Not preceded by a word character, "." or "," (so "2.5.1"
# is 2.5 and "1,2,3" is 1, 2, 3).
_NUMBER = re.compile(r"(?<![\w.,])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_MINUS = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-", "\ufe63": "-", "\uff0d": "-"})


def _fold(text: str) -> str:
    """NFKC, case-folded, format characters (category Cf) dropped."""
    if text.isascii():
        return text.lower()
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def normal(text: str) -> str:
    """Folded, punctuation other than "-" made a space, whitespace squeezed: "  Blue! " -> "blue"."""
    return " ".join(_PUNCT.sub(" ", _fold(text)).split())


def last_number(text: str) -> float | None:
    """The last number in `text` ("That makes 1,200 apples" -> 1200.0), or None."""
    found = _NUMBER.findall(unicodedata.normalize("NFKC", text).translate(_MINUS))
    return float(found[-1].replace(",", "")) if found else None


def _run(words: Sequence[str], joiner: str = " ") -> str:
    return joiner.join(re.escape(w) for w in words)


def exact(output: str, answer: str, choices: Sequence[str] = ()) -> bool:
    """the whole output equals the answer after normalisation"""
    ans = normal(answer)
    return bool(ans) and normal(output) == ans


def _contains_words(answer: str) -> list[str]:
    """The answer's words as `contains` matches them: articles dropped except as the last word ("the Hague" ->
    [hague], "vitamin a" -> [vitamin, a])."""
    words = normal(answer).split()
    return [w for i, w in enumerate(words) if w not in _ARTICLES or i == len(words) - 1]


def contains(output: str, answer: str, choices: Sequence[str] = ()) -> bool:
    """the answer's words appear, in order and next to each other, as whole words of the output (articles a, an,
    the are ignored on both sides, except as the answer's last word)"""
    words = _contains_words(answer)
    if not words:
        return False
    pattern = r"(?:^| )" + _run(words, r" (?:(?:a|an|the) )*") + r"(?:$| )"
    return re.search(pattern, normal(output)) is not None


def numeric(output: str, answer: str, choices: Sequence[str] = ()) -> bool:
    """the last number in the output equals the answer's number (1,200 = 1200, 3.50 = 3.5, -4)"""
    got, want = last_number(output), last_number(answer)
    return got is not None and want is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.IGNORECASE)


def regex(output: str, answer: str, choices: Sequence[str] = ()) -> bool:
    """the answer is a Python regular expression found in the output (re.search, case-insensitive)"""
    return _compiled(answer).search(output) is not None


def first_choice(output: str, choices: Sequence[str]) -> str | None:
    """The choice (normalised) whose whole words appear first in the output; at the same place the longer one
    ("very positive" over "positive"); None when none appears."""
    out = normal(output)
    best: tuple[int, int, str] | None = None
    for choice in choices:
        words = normal(choice).split()
        m = re.search(r"(?:^| )(" + _run(words) + r")(?= |$)", out) if words else None
        if m and (best is None or (m.start(1), -len(m.group(1))) < best[:2]):
            best = (m.start(1), -len(m.group(1)), normal(choice))
    return best[2] if best else None


def choice(output: str, answer: str, choices: Sequence[str] = ()) -> bool:
    """a closed label set (`choices`): the first of the choices to appear in the output is the answer"""
    return bool(choices) and first_choice(output, choices) == normal(answer)


Grader = Callable[[str, str, Sequence[str]], bool]

GRADERS: dict[str, Grader] = {
    "contains": contains,
    "exact": exact,
    "numeric": numeric,
    "regex": regex,
    "choice": choice,
}
ALIASES = {"number": "numeric"}  # older names, accepted with the same meaning
NEEDS_CHOICES = frozenset({"choice"})  # graders that take the task's `choices` (and the only ones that may)


def canonical(name: str) -> str:
    """The grader's name in `GRADERS` ("number" -> "numeric"); ValueError for an unknown name."""
    name = ALIASES.get(name, name)
    if name not in GRADERS:
        raise ValueError(f"unknown grader {name!r}; use one of {', '.join([*GRADERS, *ALIASES])}")
    return name


def grade(grader: str, output: str, answer: str, choices: Sequence[str] | None = None) -> bool:
    """Is `output` right, by `grader` (a name of `GRADERS` or an alias)?"""
    return GRADERS[canonical(grader)](output, answer, tuple(choices or ()))


def choices_problem(grader: str, choices: Sequence[str] | None) -> str | None:
    """Why `choices` do not fit `grader` (the config validators' message), or None."""
    grader = canonical(grader)
    if grader not in NEEDS_CHOICES:
        return f"`choices` applies to the {', '.join(sorted(NEEDS_CHOICES))} grader only" if choices else None
    if not choices or len(choices) < 2:
        return f"the {grader} grader needs `choices`: the closed label set, at least two labels"
    labels = [normal(c) for c in choices]
    if not all(labels):
        return f"choices {list(choices)}: a label is empty after normalisation"
    if len(set(labels)) != len(labels):
        return f"choices {list(choices)}: two labels are the same after normalisation (lower case, no punctuation)"
    return None


def answer_problem(grader: str, answer: str, choices: Sequence[str] | None = None) -> str | None:
    """Why `grader` cannot grade against the gold `answer` (no reply could be right), or None."""
    grader = canonical(grader)
    if grader == "regex":
        try:
            _compiled(answer)
        except re.error as err:
            return f"answer {answer!r} is not a valid regular expression ({err})"
        return None
    if grader == "numeric":
        return None if last_number(answer) is not None else f"answer {answer!r} has no number"
    if grader == "choice":
        labels = list(choices or ())
        in_set = normal(answer) in map(normal, labels)
        return None if in_set else f"answer {answer!r} is not one of the choices {labels}"
    return None if normal(answer) else f"answer {answer!r} is empty after normalisation"


def check_answers(grader: str, items: Iterable[tuple[str, str]], choices: Sequence[str] | None, where: str) -> None:
    """UserError "<where>: <item>: <problem>" for the first (item name, gold answer) `grader` cannot grade."""
    for item, answer in items:
        problem = answer_problem(grader, answer, choices)
        if problem:
            raise UserError(f"{where}: {item}: {problem} (grader {grader})")
