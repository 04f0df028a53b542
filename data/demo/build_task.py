"""Regenerate ``task_facts.jsonl``: a held-out, automatically gradable
short-answer task for the demo teacher (SmolLM2-135M-Instruct).

Every item is a handwritten one-word factual question: capital cities,
official languages, currencies and word opposites. These are the categories in
which the 135M teacher answers clearly above chance. It does poorly on
arithmetic, animal sounds, baby-animal names, colours, irregular past tenses
and calendar order, so those were left out. See SOURCES.md.

Only the Python standard library is needed::

    python3 data/demo/build_task.py            # rewrite task_facts.jsonl
    python3 data/demo/build_task.py --check    # exit 1 if the file is stale

Grade with ``grade_contains`` below: after normalisation, the gold answer has to
appear as a whole word, or as a run of whole words, in the model's reply.

The build fails if:

* any prompt or gold answer is repeated,
* a gold answer appears in its own prompt (the model could copy it),
* a prompt matches a prompt in ``seeds.jsonl`` / ``eval.jsonl`` exactly after
  normalisation, or is a near-duplicate of one (difflib ratio >= 0.8), or
* the item asks about a fact that a seeds/eval prompt already asks
  (``SEED_FACTS_AVOIDED``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from difflib import SequenceMatcher
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "task_facts.jsonl"
SHUFFLE_SEED = 20240715
NEAR_DUP = 0.8
SOURCE = "handwritten/task_facts"

# Facts that seeds.jsonl / eval.jsonl already ask about, kept out of this file on
# purpose: (keyword, subject). A prompt that contains both is rejected.
SEED_FACTS_AVOIDED = (
    ("capital", "italy"),
    ("currency", "united kingdom"),
    ("language", "brazil"),
    ("language", "mexico"),
    ("opposite", "ancient"),
    ("opposite", "generous"),
)

# (prompt, gold answer). Within each category the items appear in the order they
# were written. None were dropped because the teacher got them wrong.
CAPITALS = [
    ("What is the capital city of France?", "Paris"),
    ("Which city is the capital of Japan?", "Tokyo"),
    ("Name the capital of Germany.", "Berlin"),
    ("Which city is the capital of Spain?", "Madrid"),
    ("What city is the capital of Russia?", "Moscow"),
    ("Egypt's capital city is which city?", "Cairo"),
    ("Which city serves as the capital of China?", "Beijing"),
    ("Which city is the capital of Greece?", "Athens"),
    ("Name the capital city of Portugal.", "Lisbon"),
    ("Which city is the capital of Ireland?", "Dublin"),
    ("Tell me the capital of Norway.", "Oslo"),
    ("Which city is the capital of Canada?", "Ottawa"),
    ("Name the capital of Australia.", "Canberra"),
    ("Kenya's capital is which city?", "Nairobi"),
    ("Which city is the capital of Sweden?", "Stockholm"),
    ("Name the capital city of Poland.", "Warsaw"),
    ("Austria has which city as its capital?", "Vienna"),
    ("What city is the capital of Thailand?", "Bangkok"),
    ("Which city is the capital of South Korea?", "Seoul"),
    ("Tell me the capital city of Turkey.", "Ankara"),
    ("Peru's capital is which city?", "Lima"),
    ("Which city is the capital of Cuba?", "Havana"),
    ("Name the capital of Finland.", "Helsinki"),
    ("Which city is the capital of the Netherlands?", "Amsterdam"),
    ("What city is the capital of Belgium?", "Brussels"),
    ("Denmark's capital is which city?", "Copenhagen"),
    ("Name the capital city of Hungary.", "Budapest"),
    ("Which city is the capital of the Czech Republic?", "Prague"),
    ("Tell me the capital of Chile.", "Santiago"),
    ("Which city is the capital of Vietnam?", "Hanoi"),
    ("Which city is the capital of Indonesia?", "Jakarta"),
    ("Name the capital of the Philippines.", "Manila"),
    ("Iran's capital is which city?", "Tehran"),
]

LANGUAGES = [
    ("Which language is mainly spoken in France?", "French"),
    ("What is the official language of Germany?", "German"),
    ("What language do people in Japan mostly speak?", "Japanese"),
    ("Which language do people in Italy mostly speak?", "Italian"),
    ("What is the official language of Russia?", "Russian"),
    ("Which language is the official language of China?", "Chinese"),
    ("In Portugal, what language do people speak?", "Portuguese"),
    ("What language is spoken in Greece?", "Greek"),
    ("Which language is the official language of Spain?", "Spanish"),
    ("In the Netherlands, what language do people speak?", "Dutch"),
    ("What is the official language of Poland?", "Polish"),
    ("In Sweden, what language do most people speak?", "Swedish"),
    ("What language is spoken in Turkey?", "Turkish"),
    ("In South Korea, what language do people speak?", "Korean"),
]

CURRENCIES = [
    ("Which currency is used in Japan?", "yen"),
    ("What currency does the United States use?", "dollar"),
    ("Which currency is used in India?", "rupee"),
    ("What currency is used in most countries of the European Union?", "euro"),
    ("Which currency is used in Switzerland?", "franc"),
    ("What currency does Turkey use?", "lira"),
    ("Which currency is used in South Africa?", "rand"),
    ("What currency does Thailand use?", "baht"),
    ("Which currency is used in Sweden?", "krona"),
    ("What currency does Israel use?", "shekel"),
]

OPPOSITES = [
    ("Which word is the opposite of hot?", "cold"),
    ("Which word is the opposite of up?", "down"),
    ("Which word is the opposite of day?", "night"),
    ("Which word is the opposite of fast?", "slow"),
    ("Which word is the opposite of wet?", "dry"),
    ("Which word is the opposite of happy?", "sad"),
    ("Which word is the opposite of full?", "empty"),
    ("Which word is the opposite of north?", "south"),
    ("Which word is the opposite of push?", "pull"),
    ("Which word is the opposite of early?", "late"),
    ("Which word is the opposite of left?", "right"),
    ("Which word is the opposite of win?", "lose"),
    ("Which word is the opposite of young?", "old"),
    ("Which word is the opposite of strong?", "weak"),
    ("Which word is the opposite of rich?", "poor"),
    ("Which word is the opposite of quiet?", "loud"),
    ("Which word is the opposite of inside?", "outside"),
    ("Which word is the opposite of always?", "never"),
    ("Which word is the opposite of thick?", "thin"),
    ("Which word is the opposite of cheap?", "expensive"),
    ("Which word is the opposite of top?", "bottom"),
    ("Which word is the opposite of true?", "false"),
    ("Which word is the opposite of first?", "last"),
    ("Which word is the opposite of high?", "low"),
    ("Which word is the opposite of friend?", "enemy"),
    ("Which word is the opposite of remember?", "forget"),
    ("Which word is the opposite of buy?", "sell"),
    ("Which word is the opposite of love?", "hate"),
    ("Which word is the opposite of asleep?", "awake"),
    ("Which word is the opposite of smooth?", "rough"),
    ("Which word is the opposite of maximum?", "minimum"),
]

CATEGORIES = [
    ("capitals", ["geography"], CAPITALS),
    ("languages", ["geography", "language"], LANGUAGES),
    ("currencies", ["geography"], CURRENCIES),
    ("opposites", ["language"], OPPOSITES),
]


def norm(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, squeeze spaces."""
    text = re.sub(r"[^a-z0-9\s]", " ", text.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def grade_contains(output: str, gold: str) -> bool:
    """Reference grader: the normalised gold appears as whole word(s) in the normalised output."""
    g = norm(gold)
    return bool(g) and re.search(r"(?:^| )" + re.escape(g) + r"(?:$| )", norm(output)) is not None


def build() -> list[dict]:
    rows = []
    for category, extra_tags, items in CATEGORIES:
        for prompt, answer in items:
            rows.append({"prompt": prompt, "level": 1, "source": SOURCE, "answer": answer,
                         "tags": ["task", category] + extra_tags})
    random.Random(SHUFFLE_SEED).shuffle(rows)
    return rows


def validate(rows: list[dict]) -> None:
    errors = []
    prompts = [r["prompt"] for r in rows]
    if len(set(map(norm, prompts))) != len(prompts):
        errors.append("duplicate prompt in task file")
    for r in rows:
        if grade_contains(r["prompt"], r["answer"]):
            errors.append(f"gold answer appears in its prompt: {r['prompt']!r}")
        low = r["prompt"].lower()
        if any(k in low and subj in low for k, subj in SEED_FACTS_AVOIDED):
            errors.append(f"asks a fact already in seeds/eval: {r['prompt']!r}")
    # Gold answers are unique within a category (a repeated answer would mean a repeated fact).
    for category, _, items in CATEGORIES:
        answers = [norm(a) for _, a in items]
        if len(set(answers)) != len(answers):
            errors.append(f"repeated gold answer in {category}")
    others = []
    for name in ("seeds.jsonl", "eval.jsonl"):
        path = HERE / name
        if not path.exists():
            errors.append(f"missing {name}: cannot check for overlap")
            continue
        others += [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
    other_norm = [norm(p) for p in others]
    other_set = set(other_norm)
    for p in prompts:
        n = norm(p)
        if n in other_set:
            errors.append(f"prompt also in seeds/eval: {p!r}")
            continue
        for o, on in zip(others, other_norm):
            if SequenceMatcher(None, n, on).ratio() >= NEAR_DUP:
                errors.append(f"near-duplicate of seeds/eval prompt: {p!r} ~ {o!r}")
    if errors:
        sys.exit("build_task.py: " + "\n  ".join(["validation failed:"] + errors))


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if task_facts.jsonl is stale")
    args = ap.parse_args()
    rows = build()
    validate(rows)
    text = render(rows)
    if args.check:
        current = OUT.read_text() if OUT.exists() else None
        if current != text:
            print(f"{OUT.name} is stale; rerun build_task.py", file=sys.stderr)
            sys.exit(1)
        print(f"{OUT.name} is up to date ({len(rows)} items)")
        return
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(rows)} items)")


if __name__ == "__main__":
    main()
