"""Measure the teacher (SmolLM2-135M-Instruct) on the fact task: heldout_large.jsonl (which holds the demo's 88
items of heldout.jsonl) and a fixed sample of train.

Greedy decoding; the plain prompt as one user turn through the model's chat template; graded with the
`contains` grader (llmdistill.graders). The generation and the table are data/plurals/measure_teacher.py's
(one generation of 24 new tokens gives the 16-token figures too).

    PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python data/facts/measure_teacher.py [--backend vllm] [--out FILE]

Prints a markdown table per category (the demo's 88 items and the added ones apart) and split; `--out` also
writes every reply.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build_facts  # noqa: E402

_spec = importlib.util.spec_from_file_location("measure_plurals", HERE.parent / "plurals" / "measure_teacher.py")
mp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mp)

TRAIN_SAMPLE = 200
SAMPLE_SEED = 13


def train_sample(rows: list[dict]) -> list[dict]:
    """TRAIN_SAMPLE rows, the same number from each category, drawn with a fixed seed."""
    by_cat = defaultdict(list)
    for r in rows:
        by_cat[build_facts.category(r)].append(r)
    per = TRAIN_SAMPLE // len(by_cat)
    rng = random.Random(SAMPLE_SEED)
    return [r for cat in sorted(by_cat) for r in rng.sample(by_cat[cat], per)]


def kind(row: dict) -> str:
    """The category, and whether the item is one of the demo's 88 (heldout.jsonl) or added."""
    cat = build_facts.category(row)
    if row["source"] == build_facts.SOURCE:
        return cat
    return f"{cat}, {'demo 88' if row['source'] == build_facts.bt.SOURCE else 'added'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write every reply here (JSONL)")
    args = ap.parse_args()
    splits = {"heldout_large": mp.read(build_facts.HELDOUT_LARGE),
              "train sample": train_sample(mp.read(build_facts.TRAIN))}
    mp.measure(splits, args.backend, args.batch, args.threads, kind, args.out)


if __name__ == "__main__":
    main()
