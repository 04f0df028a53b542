"""Regenerate ``train.jsonl``, ``heldout.jsonl`` and ``heldout_large.jsonl``: the one-word fact task family
(capitals, languages, currencies, opposites) for task-focused distillation.

``heldout.jsonl`` is the 88 items of ``data/demo/task_facts.jsonl``, unchanged
(built by ``data/demo/build_task.py``; this script checks the two are
identical), so figures measured on the demo task stay comparable.
``heldout_large.jsonl`` is those 88 items plus 343 more (train subjects moved out
of train, and subjects train never had): 431 items, for benchmarks that need to
tell methods apart. ``train.jsonl`` asks the same kinds of question about other
subjects, each subject under several phrasings. The split is by SUBJECT: a
country whose capital (language, currency) a held-out file asks about never
occurs in a train item of that category, and no word of a held-out opposite
pair occurs in a train opposite item, in either direction. ``train.jsonl`` is
laid out so that configs/demo.yaml (``max_prompts: 224``) reads the same 224
prompts as before the move.

Only the Python standard library is needed::

    python3 data/facts/build_facts.py            # rewrite the three files
    python3 data/facts/build_facts.py --check    # exit 1 if any file is stale

The build fails if:

* a held-out subject occurs in a train item of its category (checked on the
  subject and on the prompt text),
* a held-out prompt occurs in train after normalisation,
* a train prompt repeats, or a gold answer is empty or occurs in its own prompt,
* a train prompt matches a ``data/demo/eval.jsonl`` prompt exactly after
  normalisation or is a near-duplicate of one (difflib ratio >= 0.8),
* ``heldout.jsonl`` would differ from ``data/demo/task_facts.jsonl``,
* ``heldout_large.jsonl`` lacks one of the 88, repeats a prompt, asks a fact
  ``data/demo`` asks, or has an item that names no listed subject or several,
* the 224 train prompts configs/demo.yaml reads would change.

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
HELDOUT_LARGE = HERE / "heldout_large.jsonl"
SHUFFLE_SEED = 20261201
LARGE_SHUFFLE_SEED = 20261206
NEAR_DUP = 0.8
SOURCE = "handwritten/facts_train"
LARGE_SOURCE = "handwritten/facts_heldout"
# configs/demo.yaml reads train.jsonl with `max_prompts: 224`, spread evenly over the file
# (llmdistill.prompts.spread); train.jsonl is laid out so that those are the same 224 prompts, in the same
# order, as before heldout_large.jsonl took subjects out of train.
DEMO_MAX_PROMPTS = 224
MIN_TRAIN, MIN_HELDOUT_LARGE = 600, 400


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

# ---------------------------------------------------------------------------------------------------------
# heldout_large.jsonl: the 88 demo items, plus (1) the train subjects moved out of train, plus (2) subjects
# that never were in train. Each new item is asked once, with its category's first template.
# ---------------------------------------------------------------------------------------------------------
# (1) Moved out of train: every train subject none of whose train prompts the demo's 224 (DEMO_MAX_PROMPTS,
# spread over the 1,029-row train file) picks, so the demo's prompts stay as they were; left in train: Italy's
# capital and the United Kingdom's currency, which data/demo/seeds.jsonl asks, and "give", a word of the
# opposites template "Give a word that means ...". `validate` checks these rules.
MOVED = {
    "capitals": ("Bosnia and Herzegovina", "Bulgaria", "Croatia", "Malta", "North Macedonia", "Slovakia",
                 "the United Kingdom", "the Democratic Republic of the Congo", "Algeria", "Morocco",
                 "Uzbekistan", "Madagascar", "Syria"),
    "languages": ("Bulgaria", "Croatia", "Romania", "Slovakia", "Ukraine", "Austria", "San Marino",
                  "the United States", "Venezuela", "Egypt", "Iraq", "Syria", "Algeria", "Morocco", "Nepal"),
    "currencies": ("Norway", "Moldova", "Serbia", "North Macedonia", "Liechtenstein", "Mexico", "Brazil",
                   "South Korea", "Malaysia", "Sri Lanka", "Bangladesh", "Iran", "Yemen", "Iraq", "Syria",
                   "Nigeria", "Ghana", "Ethiopia", "Zambia", "Malawi", "Cameroon", "Burkina Faso"),
    "opposites": ("long", "good", "begin", "laugh", "man", "brother", "husband", "son", "uncle", "yes",
                  "in", "on", "above", "front", "entrance", "plus", "war", "near", "beautiful", "polite", "safe",
                  "deep", "wide", "include", "interior", "possible", "legal", "attack", "victory", "profit",
                  "heaven", "hero", "guilty", "everything", "all", "most", "better", "lend", "teach",
                  "horizontal", "artificial", "private", "optimist", "obey", "like", "employed", "comfortable",
                  "dependent", "mature", "birth", "dawn", "employer", "predator", "cause", "input", "arrival",
                  "useful", "hopeful", "harmful", "together", "regular", "relevant", "responsible", "vowel",
                  "rural", "junior", "prefix", "synonym", "singular"),
}
# (2) Never in train. Countries: the UN member states of more than 1 million inhabitants (UN World Population
# Prospects 2022) that no other list names for the category, under the same exclusion rules as train; also
# left out: Georgia (read as the US state), Guinea (its name is inside three other countries' names),
# the Republic of the Congo (inside the DR Congo's), Djibouti and Guinea-Bissau (the capital is in the
# country's name),
# Turkmenistan's and Mongolia's capitals (Ashgabat/Ashkhabad, Ulaanbaatar/Ulan Bator), Kazakhstan's (Astana,
# Nur-Sultan 2019-2022), Burundi's (moved in 2019), Chad's, Togo's, Benin's and Eswatini's (apostrophe,
# diacritic, split). No new currencies: train's own are at 22 % for the teacher, those of the smaller
# countries left would be lower still.
NEW_CAPITALS = [
    ("New Zealand", "Wellington"), ("Jordan", "Amman"), ("Lebanon", "Beirut"), ("Qatar", "Doha"),
    ("the United Arab Emirates", "Abu Dhabi"), ("Kuwait", "Kuwait City"), ("Oman", "Muscat"),
    ("Bahrain", "Manama"), ("Cyprus", "Nicosia"), ("Armenia", "Yerevan"), ("Azerbaijan", "Baku"),
    ("Kyrgyzstan", "Bishkek"), ("Tajikistan", "Dushanbe"), ("Cambodia", "Phnom Penh"), ("Laos", "Vientiane"),
    ("Tunisia", "Tunis"), ("Libya", "Tripoli"), ("Senegal", "Dakar"), ("Zimbabwe", "Harare"),
    ("Rwanda", "Kigali"), ("Somalia", "Mogadishu"), ("Botswana", "Gaborone"), ("Namibia", "Windhoek"),
    ("Ecuador", "Quito"), ("Uruguay", "Montevideo"), ("Panama", "Panama City"),
    ("Guatemala", "Guatemala City"), ("Honduras", "Tegucigalpa"), ("Nicaragua", "Managua"),
    ("El Salvador", "San Salvador"), ("the Dominican Republic", "Santo Domingo"), ("Haiti", "Port-au-Prince"),
    ("Jamaica", "Kingston"), ("Trinidad and Tobago", "Port of Spain"), ("Papua New Guinea", "Port Moresby"),
    ("Sierra Leone", "Freetown"), ("Liberia", "Monrovia"), ("Gambia", "Banjul"), ("Mauritania", "Nouakchott"),
    ("Eritrea", "Asmara"), ("South Sudan", "Juba"), ("Gabon", "Libreville"),
    ("the Central African Republic", "Bangui"), ("Lesotho", "Maseru"), ("Mauritius", "Port Louis"),
    ("Timor-Leste", "Dili"), ("Equatorial Guinea", "Malabo"),
]
# Languages, by train's rule; also left out: Bolivia (many co-official languages), Paraguay (Guarani),
# Jamaica (Patois), Haiti (Haitian Creole), Somalia (Somali and Arabic co-official).
NEW_LANGUAGES = [
    ("Chile", "Spanish"), ("Cuba", "Spanish"), ("Ecuador", "Spanish"), ("Uruguay", "Spanish"),
    ("Guatemala", "Spanish"), ("Honduras", "Spanish"), ("Nicaragua", "Spanish"), ("El Salvador", "Spanish"),
    ("Costa Rica", "Spanish"), ("Panama", "Spanish"), ("the Dominican Republic", "Spanish"),
    ("New Zealand", "English"), ("Israel", "Hebrew"), ("Jordan", "Arabic"), ("Lebanon", "Arabic"),
    ("Libya", "Arabic"), ("Tunisia", "Arabic"), ("Kuwait", "Arabic"), ("Qatar", "Arabic"), ("Oman", "Arabic"),
    ("the United Arab Emirates", "Arabic"), ("Bahrain", "Arabic"), ("Mauritania", "Arabic"),
    ("Armenia", "Armenian"), ("Tajikistan", "Tajik"), ("Turkmenistan", "Turkmen"), ("Mongolia", "Mongolian"),
    ("Cambodia", "Khmer"),
]
# Opposites, by train's rule (one standard opposite, no word of any other pair), written before measuring.
NEW_OPPOSITES = [tuple(p.split()) for p in """able unable|aware unaware|clear unclear|fortunate unfortunate
    |friendly unfriendly|healthy unhealthy|important unimportant|likely unlikely|pleasant unpleasant
    |popular unpopular|usual unusual|willing unwilling|stable unstable|expected unexpected|limited unlimited
    |official unofficial|equal unequal|accurate inaccurate|complete incomplete|direct indirect
    |effective ineffective|efficient inefficient|formal informal|sane insane|sensitive insensitive
    |sufficient insufficient|valid invalid|capable incapable|convenient inconvenient|consistent inconsistent
    |perfect imperfect|practical impractical|probable improbable|proper improper|pure impure|moral immoral
    |mobile immobile|logical illogical|literate illiterate|legible illegible|rational irrational
    |reversible irreversible|loyal disloyal|obedient disobedient|organized disorganized
    |satisfied dissatisfied|meaningful meaningless|painful painless|powerful powerless|thoughtful thoughtless
    |fearful fearless|tasteful tasteless|approve disapprove|connect disconnect|attach detach|tie untie
    |pack unpack|load unload|wrap unwrap|fold unfold|dress undress|cover uncover|zip unzip|plug unplug|do undo
    |hire fire|marry divorce|mount dismount|assemble disassemble|qualify disqualify|maximize minimize
    |encourage discourage|inflate deflate|accelerate decelerate|nephew niece|prince princess|actor actress
    |grandfather grandmother|grandson granddaughter|boyfriend girlfriend|groom bride|bull cow|duke duchess
    |emperor empress|waiter waitress|monk nun|widower widow|god goddess|stepfather stepmother|he she
    |masculine feminine|many few|noon midnight|yesterday tomorrow|sun moon|winner loser|buyer seller
    |landlord tenant|leader follower|beginner expert|amateur professional|saint sinner|smile frown|sit stand
    |sleep wake|live die|raise lower|reward punish|strength weakness|poverty wealth|asset liability
    |credit debit|debtor creditor|supply demand|producer consumer|problem solution|theory practice
    |virtue vice|comedy tragedy|protagonist antagonist|absolute relative|abstract concrete
    |objective subjective|implicit explicit|literal figurative|qualitative quantitative|micro macro
    |previous next|dense sparse|addition subtraction|multiplication division|parallel perpendicular
    |acute obtuse|anode cathode|inflation deflation|upward downward|uphill downhill|upstream downstream
    |inward outward|incoming outgoing|inbound outbound|overestimate underestimate|overweight underweight
    |national international|original copy|truth lie|freezing boiling|mountain valley|giant dwarf""".split("|")]
NEW_SUBJECTS = {"capitals": NEW_CAPITALS, "languages": NEW_LANGUAGES, "currencies": [],
                "opposites": NEW_OPPOSITES}

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
    """(subject as written in the prompt, gold answer) per category, as train had them before MOVED left."""
    return {"capitals": CAPITALS, "languages": LANGUAGES, "currencies": CURRENCIES, "opposites": OPPOSITES}


def _row(category: str, template: str, subject: str, answer: str, source: str) -> dict:
    prompt = template.format(s=subject)
    return {"prompt": prompt[0].upper() + prompt[1:], "level": 1, "source": source, "answer": answer,
            "tags": ["task", category] + TAGS[category]}


def spread(n: int, k: int) -> list[int]:
    """`k` indices spread evenly over range(n): llmdistill.prompts.spread, which `max_prompts` uses."""
    return list(range(n)) if k >= n else [int(i * (n / k)) for i in range(k)]


def _train_before() -> list[tuple[str, str, dict]]:
    """(category, subject, row) of the 1,029-row train split as it was before heldout_large.jsonl, in order."""
    rows = [(cat, subject, _row(cat, t, subject, answer, SOURCE))
            for cat, items in subjects().items() for subject, answer in items for t in TEMPLATES[cat]]
    random.Random(SHUFFLE_SEED).shuffle(rows)
    return rows


def demo_rows() -> list[dict]:
    """The train rows configs/demo.yaml picked before (DEMO_MAX_PROMPTS spread over the old file), in order."""
    before = _train_before()
    return [before[i][2] for i in spread(len(before), DEMO_MAX_PROMPTS)]


def build_train() -> list[dict]:
    """The old train split less the MOVED subjects, laid out so that the DEMO_MAX_PROMPTS rows spread over it
    are `demo_rows()`, in their order; the other rows keep their old order in the slots between."""
    before = _train_before()
    picked = set(spread(len(before), DEMO_MAX_PROMPTS))
    kept = [(i in picked, row) for i, (cat, subject, row) in enumerate(before) if subject not in MOVED[cat]]
    demo = iter([row for is_demo, row in kept if is_demo])
    rest = iter([row for is_demo, row in kept if not is_demo])
    slots = set(spread(len(kept), DEMO_MAX_PROMPTS))
    return [next(demo) if i in slots else next(rest) for i in range(len(kept))]


def large_items() -> dict[str, list[tuple[str, str]]]:
    """(subject, answer) per category of the items heldout_large.jsonl adds to the demo's 88."""
    out = {}
    for cat, items in subjects().items():
        moved = [(s, a) for s, a in items if s in MOVED[cat]]
        out[cat] = moved + list(NEW_SUBJECTS[cat])
    return out


def build_heldout_large() -> list[dict]:
    """The demo's 88 items unchanged plus every `large_items()` item under its category's first template,
    shuffled together."""
    rows = bt.build() + [_row(cat, TEMPLATES[cat][0], s, a, LARGE_SOURCE)
                         for cat, items in large_items().items() for s, a in items]
    random.Random(LARGE_SHUFFLE_SEED).shuffle(rows)
    return rows


def large_subjects() -> dict[str, tuple[str, ...]]:
    """Every subject heldout_large.jsonl asks about, per category (opposites: both words of each pair); for
    capitals also every held-out capital city."""
    out = {}
    for cat, items in large_items().items():
        named = list(HELDOUT_SUBJECTS[cat]) + [s for s, _ in items]
        if cat == "opposites":
            named += [a for _, a in items]
        if cat == "capitals":
            named += [a for _, a in bt.CAPITALS] + [a for _, a in items]
        out[cat] = tuple(named)
    return out


def category(row: dict) -> str:
    return row["tags"][1]


def leaks(row: dict) -> list[str]:
    """Held-out subjects (of heldout_large.jsonl, which includes the 88) of the row's category, for capitals
    also the held-out capital cities, that a train row names in its prompt or answer; empty when none."""
    named = large_subjects().get(category(row), ())
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


def validate_large(train: list[dict], heldout: list[dict], large: list[dict]) -> None:
    """heldout_large.jsonl: a superset of the 88, no subject in train (`leaks`, checked in `validate`), and the
    demo's 224 train prompts unchanged."""
    errors = []
    for cat, moved in MOVED.items():
        listed = {s for s, _ in subjects()[cat]}
        errors += [f"MOVED {cat} subject {s!r} is not a train subject" for s in moved if s not in listed]
    demo = demo_rows()
    for r in demo:
        if any(norm(s) in norm(r["prompt"]).split() or f" {norm(s)} " in f" {norm(r['prompt'])} "
               for s in MOVED[category(r)]):
            errors.append(f"a MOVED subject is in the demo's train prompt {r['prompt']!r}")
    if [train[i] for i in spread(len(train), DEMO_MAX_PROMPTS)] != demo:
        errors.append(f"the {DEMO_MAX_PROMPTS} train prompts configs/demo.yaml reads are not the demo's")
    lines = set(bt.render(large).splitlines())
    errors += [f"held-out item missing from {HELDOUT_LARGE.name}: {r['prompt']!r}" for r in heldout
               if bt.render([r]).rstrip("\n") not in lines]
    if len(large) < MIN_HELDOUT_LARGE or len(train) < MIN_TRAIN:
        errors.append(f"{len(train)} train / {len(large)} held-out items: need {MIN_TRAIN} / {MIN_HELDOUT_LARGE}")
    items = large_items()
    asked = {cat: list(HELDOUT_SUBJECTS[cat]) + [s for s, _ in items[cat]] for cat in items}
    asked["opposites"] = [p.rsplit(" ", 1)[1].rstrip("?") for p, _ in bt.OPPOSITES] + [s for s, _ in
                                                                                      items["opposites"]]
    train_norm = {norm(r["prompt"]) for r in train}
    others = {norm(bt.json.loads(line)["prompt"]) for name in ("seeds.jsonl", "eval.jsonl")
              for line in (DEMO / name).read_text().splitlines() if line.strip()}
    asked_norm = {cat: [(s, f" {norm(s)} ") for s in subjects] for cat, subjects in asked.items()}
    seen = set()
    for r in large:
        cat, n = category(r), norm(r["prompt"])
        named = [s for s, ns in asked_norm[cat] if ns in f" {n} "]  # grade_contains, one norm per prompt
        if len(named) != 1:
            errors.append(f"held-out prompt should name one listed subject, names {named}: {r['prompt']!r}")
        if n in seen or n in train_norm or n in others:
            errors.append(f"held-out prompt repeats, or is in train or data/demo: {r['prompt']!r}")
        seen.add(n)
        if not norm(r["answer"]) or grade_contains(r["prompt"], r["answer"]):
            errors.append(f"held-out answer empty or in its prompt: {r['prompt']!r}")
        low = r["prompt"].lower()
        if any(k in low and subj in low for k, subj in bt.SEED_FACTS_AVOIDED):
            errors.append(f"asks a fact data/demo already asks: {r['prompt']!r}")
    words = [w for pairs in (OPPOSITES, NEW_OPPOSITES) for pair in pairs for w in pair]
    words += [w for p, a in bt.OPPOSITES for w in (p.rsplit(" ", 1)[1].rstrip("?"), a)]
    errors += [f"opposites word {w!r} is in two pairs" for w in sorted({w for w in words if words.count(w) > 1})]
    errors += [f"opposites use seeds word {w!r}" for w in SEED_WORDS_AVOIDED if w in words]
    if errors:
        sys.exit("build_facts.py: " + "\n  ".join(["validation failed:"] + errors))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = ap.parse_args()
    train, heldout, large = build_train(), bt.build(), build_heldout_large()
    validate(train, heldout)
    validate_large(train, heldout, large)
    texts = {TRAIN: bt.render(train), HELDOUT: bt.render(heldout), HELDOUT_LARGE: bt.render(large)}
    demo = DEMO / "task_facts.jsonl"
    if not demo.exists() or demo.read_text() != texts[HELDOUT]:
        sys.exit(f"build_facts.py: {demo} is stale or missing; rerun data/demo/build_task.py")
    counts = ", ".join(f"{p.name} ({t.count(chr(10))} items)" for p, t in texts.items())
    if args.check:
        stale = [p.name for p, t in texts.items() if not p.exists() or p.read_text() != t]
        if stale:
            print(f"{', '.join(stale)} stale; rerun build_facts.py", file=sys.stderr)
            sys.exit(1)
        print(f"up to date: {counts}")
        return
    for path, text in texts.items():
        path.write_text(text)
    print(f"wrote {counts}")


if __name__ == "__main__":
    main()
