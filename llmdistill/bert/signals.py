"""Teacher signals for BERT-style distillation: a live teacher, or its outputs stored once and reused.

Both give `outputs(batch, ids, mask, details, qkv, mlm) -> Outputs`, so the objective never knows which
one it has (the same split as llmdistill.train.signals for LLMs). The stored signal keeps, per row, the
teacher's class logits, pooled vector, every hidden state, every attention map and the queries/keys/values
of the layers the MiniLM losses read, in fp16, keyed by the row's token ids. It is written once under the
teacher's directory and shared by every run with the same teacher, rows and fields: on a CPU the teacher's
forward passes dominate a small student's training, so one pass over the data serves the whole table.
A stored signal cannot serve masked (MLM) inputs: those phases need the live teacher.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from llmdistill.bert import data as bdata
from llmdistill.bert.models import Outputs

log = logging.getLogger("llmdistill")


class LiveSignal:
    def __init__(self, teacher):
        self.teacher = teacher

    @torch.no_grad()
    def outputs(self, batch: dict, ids, mask, details: bool, qkv: bool, mlm: bool) -> Outputs:
        return self.teacher(ids, mask, details=True, qkv=qkv, mlm=mlm)  # pooled is read by RKD even without details


def _store_key(teacher_dir: Path, enc: bdata.Encoded, qkv_layers: list[int], details: bool = True) -> str:
    h = hashlib.sha256(str(Path(teacher_dir).resolve()).encode())
    if not details:
        h.update(b"logits-only")
    h.update(json.dumps(qkv_layers).encode())
    for ids in enc.ids:
        h.update(json.dumps(ids).encode())
    return h.hexdigest()[:16]


class StoredSignal:
    """Teacher outputs per row of one encoded row set (rows are found by their token ids)."""

    def __init__(self, rows: dict[tuple[int, ...], dict], qkv_layers: list[int], details: bool = True):
        self.rows = rows
        self.qkv_layers = qkv_layers
        self.details = details

    @classmethod
    def build(cls, teacher, teacher_dir: Path, enc: bdata.Encoded, qkv_layers: list[int],
              batch_size: int = 64, details: bool = True) -> StoredSignal:
        """Load the store for these rows and fields, or compute it with one teacher pass and save it.
        `details=False` keeps only the logits and pooled vectors (enough for KD and RKD; far smaller)."""
        path = Path(teacher_dir) / "signals" / f"{_store_key(teacher_dir, enc, qkv_layers, details)}.pt"
        if path.is_file():
            log.info("teacher signal: stored outputs %s", path)
            return cls(torch.load(path, weights_only=True), qkv_layers, details)
        log.info("teacher signal: one teacher pass over %d rows -> %s", len(enc.ids), path)
        rows: dict[tuple[int, ...], dict] = {}
        want = [layer - 1 for layer in qkv_layers]
        with torch.no_grad():
            for n, index in enumerate(bdata.batches(enc, batch_size, seed=0)):
                b = bdata.collate(enc, index)
                out = teacher(b["input_ids"], b["attention_mask"], details=True, qkv=bool(want))
                for r, i in enumerate(index):
                    t = len(enc.ids[i])
                    if not details:
                        rows[tuple(enc.ids[i])] = {"logits": out.logits[r].float().clone(),
                                                   "pooled": out.pooled[r].half().clone()}
                        continue
                    rows[tuple(enc.ids[i])] = {
                        "logits": out.logits[r].float().clone(),
                        "pooled": out.pooled[r].half().clone(),
                        "hidden": torch.stack([h[r, :t] for h in out.hidden_states]).half(),
                        "attn": torch.stack([a[r, :, :t, :t] for a in out.attentions]).half(),
                        "qkv": torch.stack([torch.stack([x[r, :t] for x in out.qkv[j]]) for j in want]).half()
                        if want else torch.zeros(0),
                    }
                if (n + 1) % 20 == 0:
                    log.info("teacher signal: %d/%d rows", len(rows), len(enc.ids))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two runs may build the same store at once
        torch.save(rows, tmp)
        tmp.rename(path)
        return cls(rows, qkv_layers, details)

    def outputs(self, batch: dict, ids, mask, details: bool, qkv: bool, mlm: bool) -> Outputs:
        if mlm:
            raise ValueError("a stored teacher signal cannot serve masked inputs")
        entries = [self.rows[tuple(row[: int(m.sum())].tolist())] for row, m in zip(ids, mask)]
        logits = torch.stack([e["logits"] for e in entries])
        pooled = torch.stack([e["pooled"] for e in entries]).float()
        if not details:
            return Outputs(logits, pooled)
        if not self.details:
            raise ValueError("this stored teacher signal holds logits only")
        b, width = ids.shape
        first = entries[0]
        n_hidden, hdim = first["hidden"].shape[0], first["hidden"].shape[-1]
        n_attn, heads = first["attn"].shape[0], first["attn"].shape[1]
        hidden = torch.zeros(n_hidden, b, width, hdim)
        attn = torch.zeros(n_attn, b, heads, width, width)
        qkv_t = torch.zeros(len(self.qkv_layers), 3, b, width, hdim)
        for r, e in enumerate(entries):
            t = e["hidden"].shape[1]
            hidden[:, r, :t] = e["hidden"].float()
            attn[:, r, :, :t, :t] = e["attn"].float()
            if self.qkv_layers:
                qkv_t[:, :, r, :t] = e["qkv"].float()
        triples = [None] * n_attn
        for j, layer in enumerate(self.qkv_layers):
            triples[layer - 1] = tuple(qkv_t[j])
        return Outputs(logits, pooled, tuple(hidden), tuple(attn), triples if self.qkv_layers else [])
