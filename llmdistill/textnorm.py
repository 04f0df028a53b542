"""Text normalisation for comparing texts: the one definition exact dedup, near dedup and decontamination share.

`fold(text)` is what every comparison starts from:
1. Unicode NFKC: compatibility forms become their plain letters (fullwidth "Ｐ" -> "P", "ﬁ" -> "fi",
   "²" -> "2"), and every Unicode space (no-break, thin, ideographic, ...) becomes U+0020;
2. case folding (`str.casefold`: "Straße" and "STRASSE" fold alike);
3. typographic quotes to ASCII (‘ ’ ‚ ‛ ‹ › ʼ -> ', “ ” „ ‟ « » -> ") and every dash (Unicode category Pd:
   hyphen, en and em dash, ...) and the minus sign to "-";
4. format characters (category Cf: soft hyphen, zero-width space and joiners, BOM, direction marks)
   are dropped, so an invisible character does not split or change a word.
ASCII text only changes case (steps 1, 3 and 4 cannot apply), and is folded without a per-character pass.

`canonical(text)` (exact dedup's key) is `fold` with runs of whitespace and runs of "-" collapsed to one
and the ends trimmed. `word_text(text)` (the shingler's input, `minhash.word_hashes`) is `fold` with every
non-ASCII character that is not a word character made a space (ASCII punctuation is left to the
shingler's byte table). Word characters are letters (L*), digits and other numbers (N*) and combining
marks (M*, so an accented or Indic word stays whole); spaces, punctuation (the underscore included:
`_emphasis_` is the word `emphasis`), symbols (emoji included) and controls separate words. Two texts
with the same `canonical` have the same words.

Non-ASCII characters are looked up in tables that fill lazily (one `unicodedata` call per distinct
code point ever seen), so `str.translate` does the per-character work in C.
"""

from __future__ import annotations

import re
import unicodedata

VERSION = 2  # bump when fold / word_text change: stored hashes (the history index) depend on them; 1 was
# NFKC + casefold for exact dedup and lower-cased bytes (every byte >= 0x80 a letter, '_' too) for words

_QUOTES = {
    **dict.fromkeys(map(ord, "\u2018\u2019\u201a\u201b\u2039\u203a\u02bc"), "'"),
    **dict.fromkeys(map(ord, "\u201c\u201d\u201e\u201f\u00ab\u00bb"), '"'),
}
_MINUS = 0x2212


class _FoldTable(dict):
    """code point -> its fold (quotes and dashes to ASCII, format characters dropped), filled on first use."""

    def __missing__(self, cp: int):
        cat = unicodedata.category(chr(cp))
        value = _QUOTES.get(cp) or ("-" if cat == "Pd" or cp == _MINUS else None if cat == "Cf" else cp)
        self[cp] = value
        return value


class _WordTable(dict):
    """code point -> its fold, made a space unless it is a word character (letter, number, mark); ASCII
    punctuation is left for the caller. Filled on first use."""

    def __missing__(self, cp: int):
        value = _FOLD[cp]
        if value == cp and cp >= 0x80 and unicodedata.category(chr(cp))[0] not in "LNM":
            value = " "
        self[cp] = value
        return value


_FOLD = _FoldTable()
_WORD = _WordTable()
_SPACES = re.compile(r"\s+")
_DASHES = re.compile(r"-{2,}")


def _fold(text: str, table: dict) -> str:
    if text.isascii():
        return text.lower()
    return unicodedata.normalize("NFKC", text).casefold().translate(table)


def fold(text: str) -> str:
    """NFKC, case-folded, typographic quotes and dashes as ASCII, format characters dropped."""
    return _fold(text, _FOLD)


def canonical(text: str) -> str:
    """Exact dedup's key: `fold`, whitespace runs and dash runs collapsed to one, trimmed."""
    return _DASHES.sub("-", _SPACES.sub(" ", fold(text))).strip()


def word_text(text: str) -> str:
    """`fold` with every non-ASCII character that is not a letter, number or mark made a space (one pass:
    the table is the fold table composed with that rule). ASCII punctuation is left for the caller (the
    shingler's byte table treats it as a separator)."""
    return _fold(text, _WORD)
