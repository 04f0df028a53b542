"""Regenerate the plural task family: ``nouns.tsv`` from WordNet 3.0, then ``train.jsonl`` and ``heldout.jsonl``.

The task: "What is the plural of box?" -> "boxes" (or "What is the plural form of the word box?"). The answer is computed from the input by a rule the
model has to apply (add -s, -es after a sibilant, -y -> -ies after a consonant) or, for the few irregular
nouns, recalled (child -> children). The split is by NOUN: no held-out noun, nor its plural, occurs in a
train prompt or a train answer.

``nouns.tsv`` is the noun list, derived once from WordNet 3.0 (Debian package ``wordnet-base``); the two
JSONL files are built from it with the standard library only::

    apt-get install wordnet-base                                     # only to rebuild nouns.tsv
    python3 data/plurals/build_plurals.py --wordnet /usr/share/wordnet   # rewrite nouns.tsv, then both files
    python3 data/plurals/build_plurals.py                            # rewrite train.jsonl and heldout.jsonl
    python3 data/plurals/build_plurals.py --check                    # exit 1 if a file is stale
    python3 data/plurals/build_plurals.py --check --wordnet DIR      # nouns.tsv too

Selection rules (fixed before the teacher was measured on the final split; see SOURCES.md):

* a WordNet noun lemma of 3-12 letters, written in lower case in at least one of its synsets (so not
  "American"), tagged as a noun at least ``MIN_SEMCOR`` time(s) in
  SemCor (WordNet's ``cntlist.rev``): a word in real use, not a rare technical term; and tagged as a noun
  at least as often as a verb, adjective and adverb together ("give", "set", "second" are out);
* its plural: the one plural ``noun.exc`` lists for it (irregular and spelling exceptions), else the
  regular rule (``regular_plural``);
* the plural occurs at least ``MIN_GLOSS`` times as a word in WordNet's glosses (definitions and example
  sentences): a plural in common use. This drops mass nouns ("informations"), zero plurals ("sheeps") and
  rule forms that are wrong ("volcanos");
* left out: nouns with more than one plural in ``noun.exc``, nouns with a listed rival plural (``RIVALS``),
  nouns that share their plural with another noun (base, basis: bases), the words of the prompt templates,
  and nouns a ``data/demo`` prompt already asks the plural of.

The build fails if:

* a held-out noun or its plural occurs as a word in a train prompt or a train answer,
* a prompt repeats (after normalisation), a gold answer is empty or occurs in its own prompt,
* a prompt is a ``data/demo/seeds.jsonl`` or ``eval.jsonl`` prompt (after normalisation; a near-duplicate
  test is no use here: every prompt of the family is one of two templates),
* a noun a ``data/demo`` prompt asks the plural of is in either split,
* either split is smaller than its floor (``MIN_TRAIN``, ``MIN_HELDOUT``).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "demo"
NOUNS = HERE / "nouns.tsv"
TRAIN = HERE / "train.jsonl"
HELDOUT = HERE / "heldout.jsonl"
MIN_SEMCOR = 1
MIN_GLOSS = 10
HELDOUT_SHARE = 0.35  # of each kind's nouns
MIN_TRAIN, MIN_HELDOUT = 800, 400
SALT = "plurals-20261206"  # the split orders nouns by sha256(SALT + noun): no RNG state
SOURCES = {"train": "wordnet/plurals_train", "heldout": "wordnet/plurals_heldout"}
KINDS = ("s", "es", "ies", "irregular")
TEMPLATES = ("What is the plural of {n}?", "What is the plural form of the word {n}?")
# Words of the templates: never a subject (a held-out noun must not occur in any train prompt).
TEMPLATE_WORDS = frozenset(w for t in TEMPLATES for w in re.findall(r"[a-z]+", t.lower()))
# Nouns with a second plural in common use that noun.exc does not list; the gold would be one of two.
RIVALS = {"person": "people", "fish": "fish", "antenna": "antennas", "medium": "mediums", "hoof": "hoofs",
          "protozoan": "protozoans", "index": "indexes", "appendix": "appendixes", "cactus": "cactuses",
          "formula": "formulas", "die": "dice", "penny": "pence", "brother": "brethren", "cow": "kine"}
COLUMNS = ("noun", "plural", "kind", "semcor", "gloss")


# ----------------------------------------------------------------------------------------------- WordNet
def regular_plural(noun: str) -> str:
    """The regular English plural: -es after s, x, z, ch, sh; -ies for a consonant + y; else -s."""
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def kind(noun: str, plural: str) -> str:
    if plural != regular_plural(noun):
        return "irregular"
    if plural.endswith("ies") and not noun.endswith("ie"):
        return "ies"
    return "es" if noun.endswith(("s", "x", "z", "ch", "sh")) else "s"


def from_wordnet(wn: Path) -> list[dict]:
    """Every noun that passes the selection rules, with its plural, kind and the two counts, sorted."""
    exc = collections.defaultdict(list)  # singular -> its plurals in noun.exc
    for line in (wn / "noun.exc").read_text(encoding="latin-1").splitlines():
        plural, *singulars = line.split()
        for s in singulars:
            exc[s].append(plural)
    semcor = collections.Counter()  # lemma -> SemCor tag count over its noun senses
    other = collections.Counter()  # lemma -> SemCor tag count as a verb, adjective or adverb
    for line in (wn / "cntlist.rev").read_text(encoding="latin-1").splitlines():
        key, _, count = line.split()
        lemma, sense = key.split("%", 1)
        (semcor if sense.startswith("1:") else other)[lemma] += int(count)
    gloss = collections.Counter()  # word -> occurrences in every gloss
    common = set()  # nouns that some synset writes in lower case (not only "American", "Roman")
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (wn / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue
            gloss.update(re.findall(r"[a-z]+", line.split(" | ", 1)[1].lower()))
            if pos == "noun":  # offset lex_filenum ss_type w_cnt (hex) then w_cnt x (word lex_id)
                fields = line.split(" ")
                common.update(fields[4:4 + 2 * int(fields[3], 16):2])
    asked = demo_plural_nouns()
    out = []
    for line in (wn / "index.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue
        noun = line.split(" ", 1)[0]
        if not re.fullmatch(r"[a-z]{3,12}", noun) or noun not in common or semcor[noun] < MIN_SEMCOR:
            continue
        if semcor[noun] < other[noun]:  # mainly a verb or an adjective ("give", "second"): not a noun task
            continue
        if len(exc.get(noun, [])) > 1 or noun in RIVALS or noun in TEMPLATE_WORDS or noun in asked:
            continue
        plural = exc[noun][0] if noun in exc else regular_plural(noun)
        if plural == noun or gloss[plural] < MIN_GLOSS:
            continue
        out.append({"noun": noun, "plural": plural, "kind": kind(noun, plural), "semcor": semcor[noun],
                    "gloss": gloss[plural]})
    shared = collections.Counter(r["plural"] for r in out)  # "bases": base and basis; one answer, two nouns
    return sorted((r for r in out if shared[r["plural"]] == 1), key=lambda r: r["noun"])


def render_nouns(rows: list[dict]) -> str:
    return "\t".join(COLUMNS) + "\n" + "".join("\t".join(str(r[c]) for c in COLUMNS) + "\n" for r in rows)


def read_nouns(text: str) -> list[dict]:
    lines = text.splitlines()
    if not lines or tuple(lines[0].split("\t")) != COLUMNS:
        sys.exit(f"build_plurals.py: {NOUNS.name} must start with the header {' '.join(COLUMNS)}")
    rows = []
    for lineno, line in enumerate(lines[1:], 2):
        fields = line.split("\t")
        if len(fields) != len(COLUMNS) or not all(f.isdigit() for f in fields[3:]):
            sys.exit(f"build_plurals.py: {NOUNS.name}:{lineno}: want {len(COLUMNS)} tab-separated fields, the last "
                     f"two counts: {line!r}")
        noun, plural, k, semcor, gl = fields
        rows.append({"noun": noun, "plural": plural, "kind": k, "semcor": int(semcor), "gloss": int(gl)})
    return rows


# ------------------------------------------------------------------------------------------------ splits
def norm(text: str) -> str:
    """Lower-case, punctuation made a space, spaces squeezed (the graders' normalisation, ASCII text)."""
    return " ".join(re.sub(r"[^a-z0-9\s-]", " ", text.lower()).split())


def words(text: str) -> set[str]:
    return set(norm(text).replace("-", " ").split())


def grade_contains(output: str, gold: str) -> bool:
    """The gold's words occur, next to each other, as whole words of the output (after `norm`)."""
    g = norm(gold)
    return bool(g) and re.search(r"(?:^| )" + re.escape(g) + r"(?:$| )", norm(output)) is not None


def _order(noun: str) -> str:
    return hashlib.sha256((SALT + noun).encode()).hexdigest()


def split(nouns: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train, held-out) nouns: per kind, the first HELDOUT_SHARE of the nouns in hash order are held out."""
    train, held = [], []
    for k in KINDS:
        group = sorted((r for r in nouns if r["kind"] == k), key=lambda r: _order(r["noun"]))
        cut = round(len(group) * HELDOUT_SHARE)
        held += group[:cut]
        train += group[cut:]
    return train, held


def rows_for(nouns: list[dict], part: str) -> list[dict]:
    """Held-out: one prompt per noun, the templates taken in turn; train: every noun under every template.
    Rows in hash order (of the noun and the template)."""
    nouns = sorted(nouns, key=lambda r: _order(r["noun"]))
    pairs = ([(r, TEMPLATES[i % len(TEMPLATES)]) for i, r in enumerate(nouns)] if part == "heldout"
             else sorted(((r, t) for r in nouns for t in TEMPLATES), key=lambda rt: _order(rt[1] + rt[0]["noun"])))
    return [{"prompt": t.format(n=r["noun"]), "level": 1, "source": SOURCES[part], "answer": r["plural"],
             "tags": ["task", "plurals", r["kind"]]} for r, t in pairs]


def demo_prompts() -> list[str]:
    return [json.loads(line)["prompt"] for name in ("seeds.jsonl", "eval.jsonl")
            for line in (DEMO / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def demo_plural_nouns() -> set[str]:
    """Words of the data/demo prompts that ask about a plural or a singular ("What is the plural of "mouse"?"):
    kept out of both splits."""
    return {w for p in demo_prompts() if re.search(r"\b(plural|singular)", p.lower())
            for w in words(p)} - TEMPLATE_WORDS


def validate(nouns: list[dict], train: list[dict], heldout: list[dict]) -> None:
    errors = []
    for r in nouns:
        if r["kind"] != kind(r["noun"], r["plural"]):
            errors.append(f"{r['noun']}: kind {r['kind']!r} does not match its plural {r['plural']!r}")
    if len({r["noun"] for r in nouns}) != len(nouns):
        errors.append("a noun repeats in nouns.tsv")
    train_text = set()
    for r in train:
        train_text |= words(r["prompt"]) | words(r["answer"])
    held_subjects = set()
    for r in heldout:
        noun = r["prompt"].rstrip("?").rsplit(" ", 1)[1]
        held_subjects |= {noun, r["answer"]}
        for w in (noun, r["answer"]):
            if w in train_text:
                errors.append(f"held-out word {w!r} occurs in a train prompt or answer")
    seen = set()
    for r in train + heldout:
        n = norm(r["prompt"])
        if n in seen:
            errors.append(f"prompt repeats: {r['prompt']!r}")
        seen.add(n)
        if not norm(r["answer"]):
            errors.append(f"item without an answer: {r['prompt']!r}")
        elif grade_contains(r["prompt"], r["answer"]):
            errors.append(f"gold answer appears in its prompt: {r['prompt']!r}")
    asked = demo_plural_nouns()
    for r in train + heldout:
        clash = words(r["prompt"]) & asked - TEMPLATE_WORDS
        if clash:
            errors.append(f"a data/demo prompt asks about {sorted(clash)}: {r['prompt']!r}")
    others = {norm(p) for p in demo_prompts()}
    errors += [f"prompt is a data/demo prompt: {r['prompt']!r}" for r in train + heldout if norm(r["prompt"]) in others]
    if len(train) < MIN_TRAIN or len(heldout) < MIN_HELDOUT:
        errors.append(f"{len(train)} train / {len(heldout)} held-out items: need {MIN_TRAIN} / {MIN_HELDOUT}")
    if errors:
        sys.exit("build_plurals.py: " + "\n  ".join(["validation failed:"] + errors))


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def build(nouns_text: str) -> dict[Path, str]:
    nouns = read_nouns(nouns_text)
    train_nouns, held_nouns = split(nouns)
    train, heldout = rows_for(train_nouns, "train"), rows_for(held_nouns, "heldout")
    validate(nouns, train, heldout)
    return {TRAIN: render(train), HELDOUT: render(heldout)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    ap.add_argument("--wordnet", type=Path, help="WordNet 3.0 dict directory: rebuild nouns.tsv from it")
    args = ap.parse_args()
    texts = {}
    if args.wordnet:
        texts[NOUNS] = render_nouns(from_wordnet(args.wordnet))
    elif not NOUNS.exists():
        sys.exit(f"build_plurals.py: {NOUNS} is missing; rebuild it with --wordnet DIR")
    texts.update(build(texts.get(NOUNS) or NOUNS.read_text(encoding="utf-8")))
    counts = {p.name: t.count("\n") - (p == NOUNS) for p, t in texts.items()}
    if args.check:
        stale = [p.name for p, t in texts.items() if not p.exists() or p.read_text(encoding="utf-8") != t]
        if stale:
            print(f"{', '.join(stale)} stale; rerun build_plurals.py", file=sys.stderr)
            sys.exit(1)
        print("up to date: " + ", ".join(f"{n} ({c} rows)" for n, c in counts.items()))
        return
    for path, text in texts.items():
        path.write_text(text, encoding="utf-8")
    print("wrote " + ", ".join(f"{n} ({c} rows)" for n, c in counts.items()))


if __name__ == "__main__":
    main()
