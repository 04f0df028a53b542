"""Rows, tokenisation and batches for BERT-style distillation.

Batches are cut from length-sorted chunks (padding stays small on short texts such as tweets) and
shuffled by a seeded generator, so a run's batch order is reproducible.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from llmdistill.errors import UserError, text_problem
from llmdistill.textfile import check_utf8, open_text

UNLABELLED = -100  # label of a row that has none


@dataclass
class Rows:
    texts: list[str]
    labels: list[int]  # UNLABELLED where absent


def read_rows(path: Path, text_field: str, label_field: str | None, num_labels: int,
              limit: int | None = None) -> Rows:
    """JSONL rows; `label_field=None` reads text only. Bad lines raise one UserError naming file and line."""
    texts, labels = [], []
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit is not None and len(texts) >= limit:
                break
            try:
                row = json.loads(check_utf8(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not JSON ({e.msg})") from None
            except ValueError as e:  # a byte that is not UTF-8
                raise UserError(f"{path}:{n}: {e}") from None
            text = row.get(text_field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise UserError(f"{path}:{n}: no string field {text_field!r}")
            if problem := text_problem(text):
                raise UserError(f"{path}:{n}: {text_field!r} {problem}")
            label = UNLABELLED
            if label_field is not None:
                label = row.get(label_field)
                if not isinstance(label, int) or not 0 <= label < num_labels:
                    raise UserError(f"{path}:{n}: {label_field!r} must be an integer in 0..{num_labels - 1}, "
                                    f"got {label!r}")
            texts.append(text)
            labels.append(label)
    if not texts:
        raise UserError(f"{path}: no rows")
    return Rows(texts, labels)


def only_class(rows: Rows) -> int | None:
    """The one class of every labelled row, when they all have the same one (else None)."""
    classes = set(rows.labels) - {UNLABELLED}
    return classes.pop() if len(classes) == 1 else None


def concat(a: Rows, b: Rows) -> Rows:
    return Rows(a.texts + b.texts, a.labels + b.labels)


@dataclass
class Encoded:
    ids: list[list[int]]
    labels: list[int]
    pad_id: int


def encode(rows: Rows, tokenizer, max_len: int) -> Encoded:
    ids = tokenizer(rows.texts, truncation=True, max_length=max_len)["input_ids"]
    return Encoded(ids, rows.labels, tokenizer.pad_token_id)


def collate(enc: Encoded, index: list[int]) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels for the rows in `index`."""
    width = max(len(enc.ids[i]) for i in index)
    ids = torch.full((len(index), width), enc.pad_id, dtype=torch.long)
    mask = torch.zeros((len(index), width), dtype=torch.long)
    for r, i in enumerate(index):
        ids[r, :len(enc.ids[i])] = torch.tensor(enc.ids[i])
        mask[r, :len(enc.ids[i])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([enc.labels[i] for i in index])}


def batches(enc: Encoded, batch_size: int, seed: int | None, chunk: int = 50) -> list[list[int]]:
    """Row indices per batch. With a seed: shuffle, sort each chunk of `chunk` batches by length, cut, shuffle
    the batches. Without: the rows in order (evaluation)."""
    n = len(enc.ids)
    if seed is None:
        return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    out = []
    span = batch_size * chunk
    for s in range(0, n, span):
        part = sorted(order[s:s + span], key=lambda i: len(enc.ids[i]))
        out += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(out)
    return out


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, special: torch.Tensor, mask_id: int,
                vocab_size: int, probability: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick `probability` of the real, non-special tokens; of those 80 % -> [MASK], 10 % -> a
    random token, 10 % kept. Returns (masked ids, MLM labels with -100 where not picked)."""
    candidates = (attention_mask.bool()) & ~special
    picked = (torch.rand(input_ids.shape, generator=generator) < probability) & candidates
    labels = torch.where(picked, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=generator)
    ids = input_ids.clone()
    ids[picked & (roll < 0.8)] = mask_id
    rand = picked & (roll >= 0.8) & (roll < 0.9)
    ids[rand] = torch.randint(vocab_size, input_ids.shape, generator=generator)[rand]
    return ids, labels
