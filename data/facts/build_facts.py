"""Regenerate ``train.jsonl`` and ``heldout.jsonl``: the one-word fact task family
(capitals, languages, currencies, opposites) for task-focused distillation.

``heldout.jsonl`` is the 88 items of ``data/demo/task_facts.jsonl``, unchanged
(built by ``data/demo/build_task.py``; this script checks the two are
identical), so figures measured on the demo task stay comparable.
``train.jsonl`` asks the same kinds of question about other subjects, each
subject under several phrasings. The split is by SUBJECT: a country whose
capital (language, currency) the held-out file asks about never occurs in a
train item of that category, and no word of a held-out opposite pair occurs in
a train opposite item, in either direction.

Only the Python standard library is needed::

    python3 data/facts/build_facts.py            # rewrite both files
    python3 data/facts/build_facts.py --check    # exit 1 if either file is stale

The build fails if:

* a held-out subject occurs in a train item of its category (checked on the
  subject and on the prompt text),
* a held-out prompt occurs in train after normalisation,
* a train prompt repeats, or a gold answer is empty or occurs in its own prompt,
* a train prompt matches a ``data/demo/eval.jsonl`` prompt exactly after
  normalisation or is a near-duplicate of one (difflib ratio >= 0.8),
* ``heldout.jsonl`` would differ from ``data/demo/task_facts.jsonl``.

Selection rules (stated before measuring the teacher; see SOURCES.md): no item
was kept or dropped because of the teacher's answers.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from difflib import SequenceMatcher
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "demo"
TRAIN = HERE / "train.jsonl"
HELDOUT = HERE / "heldout.jsonl"
SHUFFLE_SEED = 20261201
NEAR_DUP = 0.8
SOURCE = "handwritten/facts_train"


def _load_build_task():
    spec = importlib.util.spec_from_file_location("build_task", DEMO / "build_task.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bt = _load_build_task()
norm = bt.norm
grade_contains = bt.grade_contains

# The subjects the held-out file asks about, per category (what `validate` and the unit test keep out of
# train). `validate` checks that every held-out prompt names one of its category's subjects.
HELDOUT_SUBJECTS = {
    "capitals": ("France", "Japan", "Germany", "Spain", "Russia", "Egypt", "China", "Greece", "Portugal",
                 "Ireland", "Norway", "Canada", "Australia", "Kenya", "Sweden", "Poland", "Austria",
                 "Thailand", "South Korea", "Turkey", "Peru", "Cuba", "Finland", "Netherlands", "Belgium",
                 "Denmark", "Hungary", "Czech Republic", "Chile", "Vietnam", "Indonesia", "Philippines",
                 "Iran"),
    "languages": ("France", "Germany", "Japan", "Italy", "Russia", "China", "Portugal", "Greece", "Spain",
                  "Netherlands", "Poland", "Sweden", "Turkey", "South Korea"),
    "currencies": ("Japan", "United States", "India", "European Union", "Switzerland", "Turkey",
                   "South Africa", "Thailand", "Sweden", "Israel"),
    # Both words of every held-out pair (the prompt word and its gold answer).
    "opposites": tuple(w for p, a in bt.OPPOSITES for w in (p.rsplit(" ", 1)[1].rstrip("?"), a)),
}

# ---------------------------------------------------------------------------------------------------------
# Country list (rule, stated in advance): UN member states in Europe (UN geoscheme), plus UN member states
# elsewhere with more than 20 million inhabitants (UN World Population Prospects 2022, 2022 estimate).
# Per category, a country is then left out when the held-out file asks the same fact about it, or when the
# fact has no single short answer that the `contains` grader can match (rules per category below).
# ---------------------------------------------------------------------------------------------------------

# (country as written in a prompt, capital). Left out: held-out countries; disputed or split capitals
# (South Africa, Sri Lanka, Cote d'Ivoire); capitals usually written with a diacritic or with two common
# English spellings (Brazil: Brasilia, Colombia: Bogota, Cameroon: Yaounde, Iceland: Reykjavik, Moldova:
# Chisinau, Ukraine: Kyiv/Kiev, Myanmar: Naypyidaw, Yemen: Sana'a); city-states whose capital bears the
# country's name (Luxembourg, Monaco, San Marino).
CAPITALS = [
    # Europe
    ("Albania", "Tirana"), ("Andorra", "Andorra la Vella"), ("Belarus", "Minsk"),
    ("Bosnia and Herzegovina", "Sarajevo"), ("Bulgaria", "Sofia"), ("Croatia", "Zagreb"),
    ("Estonia", "Tallinn"), ("Italy", "Rome"), ("Latvia", "Riga"), ("Liechtenstein", "Vaduz"),
    ("Lithuania", "Vilnius"), ("Malta", "Valletta"), ("Montenegro", "Podgorica"),
    ("North Macedonia", "Skopje"), ("Romania", "Bucharest"), ("Serbia", "Belgrade"),
    ("Slovakia", "Bratislava"), ("Slovenia", "Ljubljana"), ("Switzerland", "Bern"),
    ("the United Kingdom", "London"),
    # elsewhere, more than 20 million inhabitants
    ("India", "New Delhi"), ("the United States", "Washington"), ("Pakistan", "Islamabad"),
    ("Nigeria", "Abuja"), ("Bangladesh", "Dhaka"), ("Mexico", "Mexico City"), ("Ethiopia", "Addis Ababa"),
    ("the Democratic Republic of the Congo", "Kinshasa"), ("Tanzania", "Dodoma"), ("Sudan", "Khartoum"),
    ("Uganda", "Kampala"), ("Algeria", "Algiers"), ("Iraq", "Baghdad"), ("Argentina", "Buenos Aires"),
    ("Afghanistan", "Kabul"), ("Morocco", "Rabat"), ("Angola", "Luanda"), ("Uzbekistan", "Tashkent"),
    ("Malaysia", "Kuala Lumpur"), ("Mozambique", "Maputo"), ("Ghana", "Accra"), ("Saudi Arabia", "Riyadh"),
    ("Madagascar", "Antananarivo"), ("Nepal", "Kathmandu"), ("Venezuela", "Caracas"), ("Niger", "Niamey"),
    ("North Korea", "Pyongyang"), ("Syria", "Damascus"), ("Mali", "Bamako"),
    ("Burkina Faso", "Ouagadougou"), ("Malawi", "Lilongwe"), ("Zambia", "Lusaka"),
]

# (country, language). Kept: the country's main spoken language, where it is also official and no other
# language is spoken by a comparable share. Left out: held-out countries; Brazil and Mexico (seeds.jsonl
# asks them); countries with two or more co-official languages in wide use (Belarus, Belgium, Bosnia,
# Canada, Finland, Ireland, Malta, Switzerland, Luxembourg, India, Pakistan, Philippines, Kenya, Tanzania,
# Uganda, Cameroon, Afghanistan, Madagascar, Sri Lanka, Iran's Persian/Farsi, Bangladesh's Bengali/Bangla,
# Montenegro, Moldova, Andorra, Ethiopia); countries whose official language is not what most people speak
# (Nigeria, Ghana, Zambia, Malawi, DR Congo, Cote d'Ivoire, Mozambique, Niger, Mali, Burkina Faso).
# The Czech Republic is left out because the answer "Czech" is in its name.
LANGUAGES = [
    ("Albania", "Albanian"), ("Bulgaria", "Bulgarian"), ("Croatia", "Croatian"), ("Denmark", "Danish"),
    ("Estonia", "Estonian"), ("Hungary", "Hungarian"), ("Iceland", "Icelandic"), ("Latvia", "Latvian"),
    ("Lithuania", "Lithuanian"), ("Norway", "Norwegian"), ("Romania", "Romanian"), ("Serbia", "Serbian"),
    ("Slovakia", "Slovak"), ("Ukraine", "Ukrainian"), ("Austria", "German"), ("Liechtenstein", "German"),
    ("North Macedonia", "Macedonian"), ("San Marino", "Italian"), ("Monaco", "French"),
    ("the United Kingdom", "English"), ("the United States", "English"), ("Australia", "English"),
    ("Argentina", "Spanish"), ("Colombia", "Spanish"), ("Peru", "Spanish"), ("Venezuela", "Spanish"),
    ("Egypt", "Arabic"), ("Saudi Arabia", "Arabic"), ("Iraq", "Arabic"), ("Syria", "Arabic"),
    ("Yemen", "Arabic"), ("Algeria", "Arabic"), ("Morocco", "Arabic"), ("Sudan", "Arabic"),
    ("Thailand", "Thai"), ("Vietnam", "Vietnamese"), ("Indonesia", "Indonesian"), ("Malaysia", "Malay"),
    ("Nepal", "Nepali"), ("North Korea", "Korean"), ("Uzbekistan", "Uzbek"), ("Angola", "Portuguese"),
    ("Myanmar", "Burmese"),
]

# (country, currency unit as one word). Left out: held-out countries; euro users (the held-out file asks
# which currency most EU countries use; Bulgaria uses the euro since 2026); currencies usually written with
# a diacritic or two common English spellings (Poland: zloty, Iceland: krona, Venezuela: bolivar, Russia and
# Belarus: ruble/rouble, Ukraine: hryvnia, Uzbekistan: som/sum); China (yuan/renminbi); Bosnia
# (convertible mark).
CURRENCIES = [
    ("the United Kingdom", "pound"), ("Norway", "krone"), ("Denmark", "krone"),
    ("the Czech Republic", "koruna"), ("Hungary", "forint"), ("Romania", "leu"), ("Moldova", "leu"),
    ("Serbia", "dinar"), ("North Macedonia", "denar"), ("Albania", "lek"), ("Liechtenstein", "franc"),
    ("Mexico", "peso"), ("Argentina", "peso"), ("Colombia", "peso"), ("the Philippines", "peso"),
    ("Brazil", "real"), ("Peru", "sol"), ("Canada", "dollar"), ("Australia", "dollar"),
    ("South Korea", "won"), ("North Korea", "won"), ("Vietnam", "dong"), ("Indonesia", "rupiah"),
    ("Malaysia", "ringgit"), ("Pakistan", "rupee"), ("Nepal", "rupee"), ("Sri Lanka", "rupee"),
    ("Bangladesh", "taka"), ("Saudi Arabia", "riyal"), ("Iran", "rial"), ("Yemen", "rial"),
    ("Iraq", "dinar"), ("Algeria", "dinar"), ("Egypt", "pound"), ("Sudan", "pound"), ("Syria", "pound"),
    ("Nigeria", "naira"), ("Ghana", "cedi"), ("Kenya", "shilling"), ("Tanzania", "shilling"),
    ("Uganda", "shilling"), ("Ethiopia", "birr"), ("Morocco", "dirham"), ("Angola", "kwanza"),
    ("Mozambique", "metical"), ("Zambia", "kwacha"), ("Malawi", "kwacha"), ("Madagascar", "ariary"),
    ("the Democratic Republic of the Congo", "franc"), ("Afghanistan", "afghani"), ("Myanmar", "kyat"),
    ("Cameroon", "franc"), ("Mali", "franc"), ("Niger", "franc"), ("Burkina Faso", "franc"),
]

# (word, opposite). Rule: everyday English words with one standard opposite, written by hand; a pair whose
# opposite has a common rival answer (small: big/large, easy: hard/difficult) is left out, every word occurs
# in one pair only, and no word of a held-out pair (or of seeds.jsonl's "ancient"/"generous") is used.
OPPOSITES = [
    ("big", "small"), ("long", "short"), ("heavy", "light"), ("hard", "soft"), ("open", "closed"),
    ("good", "bad"), ("clean", "dirty"), ("begin", "end"), ("come", "go"), ("give", "take"),
    ("laugh", "cry"), ("black", "white"), ("boy", "girl"), ("man", "woman"), ("king", "queen"),
    ("brother", "sister"), ("father", "mother"), ("husband", "wife"), ("son", "daughter"),
    ("uncle", "aunt"), ("male", "female"), ("yes", "no"), ("in", "out"), ("on", "off"),
    ("over", "under"), ("above", "below"), ("front", "back"), ("before", "after"), ("entrance", "exit"),
    ("add", "subtract"), ("multiply", "divide"), ("plus", "minus"), ("positive", "negative"),
    ("summer", "winter"), ("east", "west"), ("sunrise", "sunset"), ("alive", "dead"), ("war", "peace"),
    ("near", "far"), ("beautiful", "ugly"), ("polite", "rude"), ("safe", "dangerous"),
    ("tight", "loose"), ("deep", "shallow"), ("wide", "narrow"), ("increase", "decrease"),
    ("include", "exclude"), ("import", "export"), ("inhale", "exhale"), ("internal", "external"),
    ("interior", "exterior"), ("major", "minor"), ("majority", "minority"), ("visible", "invisible"),
    ("possible", "impossible"), ("legal", "illegal"), ("honest", "dishonest"), ("patient", "impatient"),
    ("known", "unknown"), ("teacher", "student"), ("parent", "child"), ("attack", "defend"),
    ("victory", "defeat"), ("profit", "loss"), ("success", "failure"), ("future", "past"),
    ("raw", "cooked"), ("floor", "ceiling"), ("heaven", "hell"), ("hero", "villain"),
    ("guilty", "innocent"), ("everything", "nothing"), ("everybody", "nobody"),
    ("everywhere", "nowhere"), ("all", "none"), ("more", "less"), ("most", "least"),
    ("better", "worse"), ("best", "worst"), ("lend", "borrow"), ("send", "receive"),
    ("teach", "learn"), ("lock", "unlock"), ("forward", "backward"), ("upstairs", "downstairs"),
    ("indoor", "outdoor"), ("horizontal", "vertical"), ("artificial", "natural"),
    ("temporary", "permanent"), ("private", "public"), ("odd", "even"), ("float", "sink"),
    ("rise", "fall"), ("pass", "fail"), ("wild", "tame"), ("optimist", "pessimist"),
    ("obey", "disobey"), ("agree", "disagree"), ("appear", "disappear"), ("like", "dislike"),
    ("employed", "unemployed"), ("fair", "unfair"), ("lucky", "unlucky"),
    ("comfortable", "uncomfortable"), ("necessary", "unnecessary"), ("finite", "infinite"),
    ("dependent", "independent"), ("mature", "immature"), ("birth", "death"), ("dawn", "dusk"),
    ("employer", "employee"), ("host", "guest"), ("predator", "prey"), ("cause", "effect"),
    ("input", "output"), ("arrival", "departure"), ("ascend", "descend"), ("spend", "save"),
    ("careful", "careless"), ("useful", "useless"), ("hopeful", "hopeless"), ("harmful", "harmless"),
    ("admit", "deny"), ("build", "destroy"), ("same", "different"), ("together", "apart"),
    ("present", "absent"), ("mortal", "immortal"), ("conscious", "unconscious"),
    ("regular", "irregular"), ("relevant", "irrelevant"), ("responsible", "irresponsible"),
    ("vowel", "consonant"), ("numerator", "denominator"), ("rural", "urban"), ("junior", "senior"),
    ("inferior", "superior"), ("prefix", "suffix"), ("question", "answer"), ("convex", "concave"),
    ("synonym", "antonym"), ("order", "chaos"), ("singular", "plural"), ("hello", "goodbye"),
]
SEED_WORDS_AVOIDED = ("ancient", "generous")

TEMPLATES = {
    "capitals": ("What is the capital of {s}?", "Which city is the capital of {s}?",
                 "Name the capital city of {s}.", "What city is the capital of {s}?",
                 "Tell me the capital of {s}."),
    "languages": ("Which language is mainly spoken in {s}?", "What language do most people in {s} speak?",
                  "In {s}, what language do people speak?", "What is the main language of {s}?"),
    "currencies": ("Which currency is used in {s}?", "What currency does {s} use?",
                   "What is the currency of {s}?"),
    "opposites": ("Which word is the opposite of {s}?", "What is the opposite of {s}?",
                  "Give a word that means the opposite of {s}."),
}
TAGS = {"capitals": ["geography"], "languages": ["geography", "language"], "currencies": ["geography"],
        "opposites": ["language"]}


def subjects() -> dict[str, list[tuple[str, str]]]:
    """(subject as written in the prompt, gold answer) per train category."""
    return {"capitals": CAPITALS, "languages": LANGUAGES, "currencies": CURRENCIES, "opposites": OPPOSITES}


def build_train() -> list[dict]:
    rows = []
    for category, items in subjects().items():
        for subject, answer in items:
            for template in TEMPLATES[category]:
                prompt = template.format(s=subject)
                prompt = prompt[0].upper() + prompt[1:]
                rows.append({"prompt": prompt, "level": 1, "source": SOURCE, "answer": answer,
                             "tags": ["task", category] + TAGS[category]})
    random.Random(SHUFFLE_SEED).shuffle(rows)
    return rows


def category(row: dict) -> str:
    return row["tags"][1]


def leaks(row: dict) -> list[str]:
    """Held-out subjects of the row's category (for capitals also the held-out capital cities) that a train
    row names in its prompt or answer; empty when it names none."""
    cat = category(row)
    named = list(HELDOUT_SUBJECTS.get(cat, ()))
    if cat == "capitals":
        named += [a for _, a in bt.CAPITALS]
    text = f" {norm(row['prompt'])} {norm(row['answer'] or '')} "
    return [s for s in named if f" {norm(s)} " in text]


def validate(train: list[dict], heldout: list[dict]) -> None:
    errors = []
    for r in heldout:
        cat = category(r)
        named = [s for s in HELDOUT_SUBJECTS[cat] if grade_contains(r["prompt"], s)]
        if cat != "opposites" and len(named) != 1:
            errors.append(f"held-out prompt should name one listed subject, names {named}: {r['prompt']!r}")
    if len(heldout) != sum(len(items) for _, _, items in bt.CATEGORIES):
        errors.append("held-out rows do not match build_task.py")
    held_norm = {norm(r["prompt"]) for r in heldout}
    seen = set()
    for r in train:
        n = norm(r["prompt"])
        if n in seen:
            errors.append(f"duplicate train prompt: {r['prompt']!r}")
        seen.add(n)
        if n in held_norm:
            errors.append(f"train prompt is a held-out prompt: {r['prompt']!r}")
        if not norm(r["answer"] or ""):
            errors.append(f"train item without an answer: {r['prompt']!r}")
        elif grade_contains(r["prompt"], r["answer"]):
            errors.append(f"gold answer appears in its prompt: {r['prompt']!r}")
        leaked = leaks(r)
        if leaked:
            errors.append(f"train item names held-out subject(s) {leaked}: {r['prompt']!r}")
    words = [w for pair in OPPOSITES for w in pair]
    if len(set(words)) != len(words):
        errors.append("a word occurs in two opposite pairs")
    errors += [f"opposites use seeds word {w!r}" for w in SEED_WORDS_AVOIDED if w in words]
    eval_prompts = [bt.json.loads(line)["prompt"] for line in (DEMO / "eval.jsonl").read_text().splitlines()
                    if line.strip()]
    eval_norm = [norm(p) for p in eval_prompts]
    for e, en in zip(eval_prompts, eval_norm):
        sm = SequenceMatcher(None, "", en)  # the second sequence is the one SequenceMatcher indexes
        for r in train:
            sm.set_seq1(norm(r["prompt"]))
            # real_quick_ratio and quick_ratio are upper bounds of ratio, and much cheaper.
            if sm.real_quick_ratio() >= NEAR_DUP and sm.quick_ratio() >= NEAR_DUP and sm.ratio() >= NEAR_DUP:
                errors.append(f"train prompt near eval.jsonl prompt: {r['prompt']!r} ~ {e!r}")
    if errors:
        sys.exit("build_facts.py: " + "\n  ".join(["validation failed:"] + errors))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if train.jsonl or heldout.jsonl is stale")
    args = ap.parse_args()
    train, heldout = build_train(), bt.build()
    validate(train, heldout)
    texts = {TRAIN: bt.render(train), HELDOUT: bt.render(heldout)}
    demo = DEMO / "task_facts.jsonl"
    if not demo.exists() or demo.read_text() != texts[HELDOUT]:
        sys.exit(f"build_facts.py: {demo} is stale or missing; rerun data/demo/build_task.py")
    if args.check:
        stale = [p.name for p, t in texts.items() if not p.exists() or p.read_text() != t]
        if stale:
            print(f"{', '.join(stale)} stale; rerun build_facts.py", file=sys.stderr)
            sys.exit(1)
        print(f"{TRAIN.name} ({len(train)} items) and {HELDOUT.name} ({len(heldout)} items) are up to date")
        return
    for path, text in texts.items():
        path.write_text(text)
    print(f"wrote {TRAIN} ({len(train)} items) and {HELDOUT} ({len(heldout)} items)")


if __name__ == "__main__":
    main()
