"""From filtered samples to training batches.

A training example is the chat-encoded prompt followed by the teacher's own completion tokens (never
re-tokenised, except in sequence-level KD for a student with another tokenizer, where the teacher's
text is all that can be shared). Labels are -100 on the prompt and padding. The teacher's top-k row for completion token
j sits at the position that predicts it (prompt_len + j - 1), so `teacher_ids[:, i]` describes the
distribution of token i + 1, exactly like the shifted labels.
"""

from __future__ import annotations

import logging

import torch

from llmdistill import models

log = logging.getLogger("llmdistill")

IGNORE = -100
COLUMNS = ["id", "messages", "level", "completion", "finish_reason", "completion_token_ids", "topk_ids",
           "topk_logprobs", "teacher"]


def build_examples(dataset, tokenizer, max_seq_len: int, retokenize: bool = False, vocab_limit: int | None = None,
                   aligner=None):
    """Add `input_ids` and `prompt_len`; drop rows whose prompt leaves no room for a completion token.

    Completions longer than the room left are cut (their top-k rows with them). Row order is kept.
    retokenize: encode the completion text with `tokenizer` (+ EOS when the teacher stopped) instead of
        using the teacher's token ids (sequence-level KD across tokenizers; no top-k alignment exists).
    vocab_limit: skip samples whose completion uses a token id the student does not have.
    aligner: a `cross_tokenizer.Aligner`: re-tokenise the completion and align the teacher's top-k rows to the
        student's tokens by bytes (their ids mapped to the student's vocabulary; `xt_kind` per token); or
        {teacher name: Aligner, or None for a teacher on the student's tokenizer} for data from several
        teachers (each row is aligned to its own teacher's tokens; None rows keep their ids, all exact).
    """
    eos = tokenizer.eos_token_id

    per_teacher = isinstance(aligner, dict)

    def encode(row):
        prompt = models.encode_prompt(tokenizer, row["messages"])
        room = max_seq_len - len(prompt)
        row_aligner = aligner.get(row.get("teacher") or "default") if per_teacher else aligner
        if retokenize or row_aligner is not None:
            text = (row_aligner.teacher_text(row["completion_token_ids"] or []) if row_aligner
                    else row["completion"] or "")
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids = ids + ([eos] if row["finish_reason"] == "stop" and eos is not None else [])
        else:
            ids = list(row["completion_token_ids"] or [])
        unusable = vocab_limit is not None and any(i >= vocab_limit for i in ids)
        completion = ids[: max(room, 0)]
        out = {"input_ids": prompt + completion, "prompt_len": len(prompt),
               "n_completion": 0 if unusable else len(completion)}
        if per_teacher and row_aligner is None:  # this row's teacher shares the student's tokenizer
            m = len(completion)
            out.update(topk_ids=[list(x) for x in row["topk_ids"][:m]],
                       topk_logprobs=[list(x) for x in row["topk_logprobs"][:m]], xt_kind=[1] * m)
        elif row_aligner is not None:
            t_ids, t_lps, kinds = row_aligner.student_rows(row["completion_token_ids"] or [], ids, row["topk_ids"],
                                                       row["topk_logprobs"])
            m = len(completion)
            out.update(topk_ids=t_ids[:m].tolist(), topk_logprobs=t_lps[:m].tolist(), xt_kind=kinds[:m].tolist())
        return out

    out = dataset.map(encode, desc="tokenize prompts")
    kept = out.filter(lambda r: r["n_completion"] > 0)
    if len(kept) < len(out):
        log.warning("train: %d samples skipped (prompt longer than max_seq_len=%d, empty completion, or a "
                    "token the student does not have)", len(out) - len(kept), max_seq_len)
    return kept.add_column("row", list(range(len(kept))))  # for per-sample statistics (closed-loop curriculum)


class Collator:
    """Right-padded batches: input_ids, attention_mask, labels [B, L], plus what the teacher-signal source adds
    (`sources.Source.collate`: the stored or served teacher_ids/teacher_logprobs [B, L, k], ...).

    pack_to: sequence packing. The batch's samples are laid out first-fit in rows of at most this many tokens
    (a row holds samples of one teacher when the source needs it), with `position_ids` restarting at 0 for each
    sample and no `attention_mask`: transformers then masks attention block-diagonally (each sample sees only
    itself, the way its DataCollatorWithFlattening works), so every sample's logits, and so its loss, are what
    they are unpacked. A batch holds the same samples packed or not: only the padding goes. No label or teacher
    row crosses a boundary: a sample's first token is a prompt token, never a label. `rows` is then [B, L]
    (each position's sample, -1 on padding)."""

    def __init__(self, pad_token_id: int, with_teacher: bool = True, scorer=None, teacher_index=None,
                 pack_to: int | None = None, source=None):
        """source: where the teacher signal comes from (`sources.build`). Without one, it is made from the parts
        (`sources.from_parts`): a served `scorer` (`served.RoutedScorer`), `teacher_index` {teacher name: index}
        for routed live teachers, else the stored top-k rows (`with_teacher`), or none."""
        from llmdistill.train import sources

        self.pad = pad_token_id
        self.source = source if source is not None else sources.from_parts(with_teacher, scorer,
                                                                           teacher_index=teacher_index)
        self.pack_to = pack_to

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        teachers = [r.get("teacher") or "default" for r in rows]
        lengths = [len(r["input_ids"]) for r in rows]
        if self.pack_to is None:
            place, row_teacher = [(b, 0) for b in range(len(rows))], teachers
        else:
            place, row_teacher = pack(lengths, self.pack_to, teachers if self.source.group_rows else None)
        B = max(b for b, _ in place) + 1
        L = max(off + n for (_, off), n in zip(place, lengths))
        input_ids = torch.full((B, L), self.pad, dtype=torch.long)
        attention = torch.zeros((B, L), dtype=torch.long)
        labels = torch.full((B, L), IGNORE, dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        positions = None
        if self.pack_to is not None:
            # padding is one more sample of its own (positions from 0), which attends only to itself
            positions = batch["position_ids"] = torch.zeros((B, L), dtype=torch.long)
            ends = [0] * B
            for (b, off), n in zip(place, lengths):
                ends[b] = max(ends[b], off + n)
            for b, end in enumerate(ends):
                positions[b, end:] = torch.arange(L - end)
        if "row" in rows[0]:
            if self.pack_to is None:
                batch["rows"] = torch.tensor([r["row"] for r in rows], dtype=torch.long)
            else:
                batch["rows"] = torch.full((B, L), -1, dtype=torch.long)
        spans = []
        for r, (b, o), n in zip(rows, place, lengths):
            ids = torch.as_tensor(r["input_ids"], dtype=torch.long)
            p = r["prompt_len"]
            input_ids[b, o : o + n] = ids
            attention[b, o : o + n] = 1
            labels[b, o + p : o + n] = ids[p:]
            if positions is not None:
                positions[b, o : o + n] = torch.arange(n)
                if "rows" in batch:
                    batch["rows"][b, o : o + n] = r["row"]
            spans.append((b, o, p, n))
        self.source.collate(batch, rows, spans, row_teacher)
        return batch


def pack(lengths: list[int], capacity: int, groups: list[str] | None = None) -> tuple[list[tuple[int, int]], list]:
    """First-fit packing in batch order: ([(row, offset)] per sample, the group of each row). A sample goes
    into the first row with room (and, given `groups`, of its own group); rows never exceed `capacity`
    unless one sample alone does (it then gets a row to itself)."""
    used: list[int] = []
    row_group: list = []
    place = []
    for i, n in enumerate(lengths):
        g = groups[i] if groups is not None else None
        row = next((b for b, u in enumerate(used) if u + n <= capacity and row_group[b] == g), None)
        if row is None:
            used.append(0)
            row_group.append(g)
            row = len(used) - 1
        place.append((row, used[row]))
        used[row] += n
    if groups is None:
        row_group = ["default"] * len(used)
    return place, row_group
