"""Prompt evolution in the Evol-Instruct spirit: the teacher rewrites a prompt into a harder variant.

Operators (add_constraints, deepen, concretise, add_reasoning) are templates prompts/evol_<name>.md,
rendered in the sandbox with the prompt to rewrite as `prompt`. Round r rewrites the prompts accepted in
round r-1 (round 1: the seed prompts); each prompt gets `per_prompt` distinct operators drawn with a seed
derived from the run seed and the prompt id. A variant is level + 1, keeps its parent's source and tags,
and adds the tags `evol:<operator>` and `parent:<parent prompt id>`.

A rewrite is rejected (and counted by reason) when it failed, was cut off, is empty, repeats its parent,
falls outside [min_chars, max_chars], or copies the operator's instructions ("rewritten prompt").

Every teacher answer is appended to a cache file as it arrives, so a killed run re-asks only what it had
not received; requests go out in fixed, seeded batches, so the answers are the same either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from llmdistill import records
from llmdistill.config import Config, EvolveConfig
from llmdistill.errors import UserError
from llmdistill.prompts import Prompt, render
from llmdistill.textfile import NotUTF8, read_text

log = logging.getLogger("llmdistill")

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"
REJECT_REASONS = ("failed", "truncated", "empty", "unchanged", "too_short", "too_long", "leaked_instructions")
# words of the operator templates that have no place in a rewrite (WizardLM's elimination rule 4)
_LEAKS = ("rewritten prompt", "given prompt", "rewrite the prompt", "#prompt#")
_LABEL = re.compile(r"^\s*#*\s*(?:the\s+)?(?:rewritten|new|harder|evolved)\s+prompt\s*#*\s*:?\s*", re.IGNORECASE)


def operator_template(name: str) -> str:
    path = PROMPTS_DIR / f"evol_{name}.md"
    if not path.is_file():
        raise UserError(f"evolution operator {name!r}: template {path} not found")
    try:
        return read_text(path)
    except NotUTF8 as e:
        raise UserError(f"{path}:{e.line}: {e}") from None


def template_hashes(cfg: Config) -> dict[str, str]:
    """The generate stage's files that the config names only indirectly, by content, for its fingerprint: the
    templates of the configured operators (so editing one reruns generation); none without evolution."""
    if cfg.generate.evolve is None:
        return {}
    return {op: hashlib.sha256(operator_template(op).encode()).hexdigest() for op in cfg.generate.evolve.operators}


def choose_operators(prompt: Prompt, ev: EvolveConfig, seed: int) -> list[str]:
    """`ev.per_prompt` distinct operators for this prompt, the same on every run with this seed."""
    rng = random.Random(int(records.stable_hash([seed, "evolve", prompt.id], 15), 16))
    return rng.sample(list(ev.operators), ev.per_prompt)


def last_user_text(prompt: Prompt) -> str:
    return next(m["content"] for m in reversed(prompt.messages) if m["role"] == "user")


def clean(text: str | None, finish_reason: str | None, parent_text: str, ev: EvolveConfig) -> tuple[str, str | None]:
    """(cleaned rewrite, reject reason or None)."""
    if text is None:
        return "", "failed"
    t = _LABEL.sub("", text.strip()).strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'":
        t = t[1:-1].strip()
    if finish_reason == "length":
        return t, "truncated"
    if not t:
        return t, "empty"
    if " ".join(t.lower().split()) == " ".join(parent_text.lower().split()):
        return t, "unchanged"
    if len(t) < ev.min_chars:
        return t, "too_short"
    if len(t) > ev.max_chars:
        return t, "too_long"
    if any(leak in t.lower() for leak in _LEAKS):
        return t, "leaked_instructions"
    return t, None


def variant(parent: Prompt, operator: str, text: str) -> Prompt:
    """The harder prompt: the parent's turns with the last user turn replaced, one level up."""
    messages = [dict(m) for m in parent.messages]
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last]["content"] = text
    tags = [t for t in parent.tags if not t.startswith(("evol:", "parent:"))]
    return Prompt(messages=messages, level=parent.level + 1, source=parent.source, answer=None,
                          tags=tags + [f"evol:{operator}", f"parent:{parent.id}"])


class Cache:
    """Teacher answers by request key, in a JSONL file appended to as they arrive (a torn last line is ignored)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        self._torn = False
        if self.path.exists():
            text = self.path.read_text(encoding="utf-8")
            self._torn = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a killed run
                self.entries[entry["key"]] = entry

    def add(self, entries: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            if self._torn:
                f.write("\n")  # end the torn line of a killed run
                self._torn = False
            for e in entries:
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
                self.entries[e["key"]] = e
            f.flush()


def evolve(seeds: list[Prompt], ev: EvolveConfig, seed: int, batch_size: int, cache_path: Path,
           make_teacher: Callable) -> tuple[list[Prompt], dict]:
    """Harder variants of `seeds` (not including them) and the counts {requested, accepted, rejected}.

    `make_teacher()` is called only if some answer is not in the cache."""
    templates = {op: operator_template(op) for op in ev.operators}
    cache = Cache(cache_path)
    teacher = None
    out: list[Prompt] = []
    requested, rejected = 0, Counter()
    current = [p for p in seeds if ev.levels is None or p.level in ev.levels]
    for round_index in range(ev.rounds):
        requests = [(p, op) for p in current for op in choose_operators(p, ev, seed)]
        keys = [records.stable_hash({"parent": p.id, "operator": op}) for p, op in requests]
        todo = [i for i, k in enumerate(keys) if k not in cache.entries]
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            if teacher is None:
                log.info("evolve: asking the teacher for %d rewrites (round %d of %d)", len(todo), round_index + 1,
                         ev.rounds)
                teacher = make_teacher()
            asks = [[{"role": "user", "content": render(templates[requests[i][1]],
                                                        {"prompt": last_user_text(requests[i][0])},
                                                        f"prompts/evol_{requests[i][1]}.md")}] for i in batch]
            batch_seed = int(records.stable_hash([seed, "evolve", keys[batch[0]]], 15), 16)
            results = teacher.generate(asks, seed=batch_seed)
            cache.add([{"key": keys[i], "text": None if getattr(r, "error", None) else r.text,
                        "finish_reason": r.finish_reason} for i, r in zip(batch, results)])
        accepted = []
        for (parent, op), key in zip(requests, keys):
            entry = cache.entries[key]
            text, reason = clean(entry["text"], entry["finish_reason"], last_user_text(parent), ev)
            if reason:
                rejected[reason] += 1
            else:
                accepted.append(variant(parent, op, text))
        requested += len(requests)
        out += accepted
        current = accepted
    stats = {"rounds": ev.rounds, "requested": requested, "accepted": len(out),
             "rejected": {r: rejected[r] for r in REJECT_REASONS if rejected[r]}}
    log.info("evolve: %d of %d rewrites accepted (rejected: %s)", len(out), requested, stats["rejected"] or "none")
    return out, stats
