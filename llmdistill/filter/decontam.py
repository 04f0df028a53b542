"""Decontamination: drop samples that share a word n-gram (13 by default) with an evaluation item.

Eval sets come from local files (.jsonl: text from the configured fields; anything else: one item per
line) or Hugging Face datasets (`datasets.load_dataset`). Every item is cut into lower-cased word n-grams
hashed as in `minhash.shingle_hashes`; an item shorter than n words is one gram of its own length, so a
short answer matches only when it appears whole. `Decontaminator.report()` says which items were hit and
by which samples (written to filter/decontamination.json).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from llmdistill import config as C
from llmdistill import textfile
from llmdistill.errors import UserError, text_problem
from llmdistill.filter import minhash
from llmdistill.filter.filters import Verdict, text_key
from llmdistill.records import Sample


def item_text(obj, fields: list[str]) -> str:
    """The text of one eval item: the named fields, strings or lists of strings or chat messages, joined."""
    if isinstance(obj, str):
        return obj
    parts = []
    for f in fields:
        v = obj.get(f) if isinstance(obj, dict) else None
        if isinstance(v, str):
            parts.append(v)
        elif isinstance(v, list):
            parts.extend(x["content"] if isinstance(x, dict) and isinstance(x.get("content"), str) else str(x)
                         for x in v if isinstance(x, (str, dict)))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(str(v))
    return "\n".join(parts)


def load_eval_items(es: C.EvalSetConfig) -> list[str]:
    """The items of an eval set as texts (empty ones dropped). A bad file raises UserError naming it."""
    if es.path is not None:
        path = Path(es.path)
        items = []
        with textfile.open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                try:
                    line = textfile.check_utf8(line.rstrip("\r\n"))
                    if path.suffix == ".jsonl" and line.strip():
                        items.append(item_text(json.loads(line), es.fields))
                        if problem := text_problem(items[-1]):  # a "\ud800" escape
                            raise ValueError(problem)
                    elif path.suffix != ".jsonl":
                        items.append(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                except ValueError as e:
                    raise UserError(f"{path}:{lineno}: {e}") from None
    else:
        import datasets

        try:
            ds = datasets.load_dataset(es.hf, es.hf_config, split=es.split)
        except Exception as e:  # noqa: BLE001 -- any loader failure is the user's dataset name or network
            raise UserError(f"eval set {es.name}: cannot load {es.hf} ({type(e).__name__}: {e})") from None
        items = [item_text(row, es.fields) for row in ds]
    return [t for t in items if t.strip()]


class NgramIndex:
    """Word n-gram hashes of a set of texts, each mapped to the (set name, item index) pairs it came from."""

    def __init__(self, n: int):
        self.n = n
        self.grams: dict[int, list[tuple[str, int]]] = defaultdict(list)
        self.short_lengths: set[int] = set()

    def add(self, name: str, items: list[str]) -> None:
        for i, text in enumerate(items):
            wh, _ = minhash.word_hashes([text])
            m = min(self.n, len(wh))
            if m == 0:
                continue
            if m < self.n:
                self.short_lengths.add(m)
            sh, _ = minhash.shingle_hashes([text], m)
            for h in set(sh.tolist()):
                self.grams[h].append((name, i))

    def hits(self, text: str) -> set[tuple[str, int]]:
        """Every (set, item) that shares a gram with `text`."""
        found: set[tuple[str, int]] = set()
        for m in (self.n, *sorted(self.short_lengths)):
            sh, _ = minhash.shingle_hashes([text], m)
            for h in np.unique(sh).tolist():
                for ref in self.grams.get(h, ()):
                    found.add(ref)
        return found


class Decontaminator:
    """A row step: `contamination:<set>` for a sample that hits an item of that set (the first set configured
    wins when several are hit); `report()` lists the hit items per set."""

    def __init__(self, step: C.DecontaminateStep):
        self.step = step
        self.index = NgramIndex(step.ngram)
        self.items: dict[str, list[str]] = {}
        for es in step.evals:
            items = load_eval_items(es)
            self.items[es.name] = items
            self.index.add(es.name, items)
        self.order = [es.name for es in step.evals]
        self.hit_by: dict[tuple[str, int], list[str]] = defaultdict(list)

    def __call__(self, s: Sample) -> Verdict:
        hits = self.index.hits(text_key(s, self.step.scope))
        if not hits:
            return None
        for ref in sorted(hits):
            self.hit_by[ref].append(s.id)
        first = min(hits, key=lambda r: self.order.index(r[0]))[0]
        return f"contamination:{first}"

    def report(self) -> dict:
        out = {}
        for name in self.order:
            hit = sorted(i for (n, i) in self.hit_by if n == name)
            out[name] = {
                "items": len(self.items[name]),
                "items_hit": len(hit),
                "hits": [{"item": i, "text": self.items[name][i][:200], "samples": self.hit_by[(name, i)]}
                         for i in hit],
            }
        return {"ngram": self.step.ngram, "scope": self.step.scope, "eval_sets": out}
