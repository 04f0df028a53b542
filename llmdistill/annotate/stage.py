"""The annotate stage: a local teacher re-scores finished text and fills the teacher-signal columns.

Each generated completion is fed to the `annotate.teacher` after its prompt (teacher forcing: one forward
pass with the hf backend, prompt log-probs with vllm), and the row gets that teacher's top-k log-probs at
every completion token. This gives logits for text an API teacher, a person or an older run wrote, and
lets a run swap teachers without regenerating. Log-probs are raw (the model's own distribution).

Tokens: when the text came with token ids from a teacher with the same tokenizer (the upstream manifest's
tokenizer hash), those ids are scored as they are (never re-tokenised); otherwise the text is tokenised
with the annotating teacher's tokenizer, plus its EOS when the text ended on its own (finish_reason stop).

Rows without text (failed upstream) pass through untouched. A row too long for the teacher's context is
kept with `error` set (the `failed` filter removes it) and counted. Shards are committed in input order,
so a killed run resumes after the last committed shard.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter

import numpy as np
from tqdm.auto import tqdm

from llmdistill import __version__, models, records, store
from llmdistill.config import Config, TeacherConfig
from llmdistill.runner import StageContext
from llmdistill.teachers import LocalTeacher, Sampling, build_teacher

log = logging.getLogger("llmdistill")

METHOD = {"hf": "teacher forcing (one forward pass)", "vllm": "teacher forcing (vLLM prompt_logprobs)"}


def run(cfg: Config, ctx: StageContext) -> None:
    a = cfg.annotate
    src = ctx.upstream_dir
    store.require_complete(src)
    upstream = store.read_manifest(src)
    store.clean_temporaries(ctx.out_dir)
    done = set(store.read_ids(ctx.out_dir))
    if done:
        log.info("annotate: resuming, %d rows already committed", len(done))
    sampling = Sampling.scoring(a.topk)
    tcfg = annotating_teacher(cfg)
    writer = store.ShardWriter(ctx.out_dir)
    teacher: LocalTeacher | None = None
    same_tokenizer = False
    counts: Counter = Counter()
    pending: list[records.Sample] = []
    batch: list[records.Sample] = []
    started = time.monotonic()
    shard_rows = cfg.generate.shard_rows

    def flush_batch() -> None:
        nonlocal teacher, same_tokenizer
        if teacher is None:  # loaded lazily: a rerun with nothing left to do never loads the model
            teacher = build_teacher(tcfg, sampling)
            same_tokenizer = (models.tokenizer_info(teacher.tokenizer)["tokenizer_hash"]
                              == upstream["provenance"].get("tokenizer_hash"))
        pending.extend(annotate_batch(teacher, batch, same_tokenizer, counts))
        batch.clear()

    for sample in tqdm(store.iter_samples(src), total=upstream["counts"]["rows"], desc="annotate", unit="sample"):
        if sample.id in done:
            continue
        batch.append(sample)
        if len(batch) >= a.batch_size:
            flush_batch()
        if len(pending) >= shard_rows:
            writer.write(pending)
            pending = []
    if batch:
        flush_batch()
    if pending:
        writer.write(pending)

    if teacher is None and (ctx.out_dir / store.MANIFEST).exists():
        provenance = store.read_manifest(ctx.out_dir)["provenance"]
    else:
        teacher = teacher or build_teacher(tcfg, sampling)
        provenance = teacher.provenance() | {
            "annotated_by": a.teacher.model,
            "annotate_method": METHOD[a.teacher.backend],
            "text_from": upstream["provenance"].get("teacher"),
        }
    if teacher is not None:
        teacher.close()
    table = store.read_table(ctx.out_dir, ["error", "usage"])
    errors = table.column("error").to_pylist()
    row_counts = {
        "rows": table.num_rows,
        "failed": int(sum(e is not None for e in errors)),
        "completion_tokens": int(sum(u["completion_tokens"] for u in table.column("usage").to_pylist())),
        "levels": upstream["counts"].get("levels", {}),
    }
    if row_counts["rows"] != upstream["counts"]["rows"]:
        raise store.StoreError(f"{ctx.out_dir}: {row_counts['rows']} rows annotated, "
                               f"{upstream['counts']['rows']} in {src}")
    store.write_manifest(ctx.out_dir, {
        **upstream,
        "stage": "annotate",
        "fingerprint": ctx.fingerprint,
        "llmdistill_version": __version__,
        "provenance": provenance,
        "upstream": {upstream["stage"]: upstream["fingerprint"]},
        "counts": {**upstream["counts"], **row_counts},
    })
    elapsed = time.monotonic() - started
    stats = {**row_counts, "this_attempt": dict(counts), "seconds_this_attempt": round(elapsed, 1)}
    store.atomic_write_json(ctx.out_dir / store.STATS, stats)
    log.info("annotate: %d rows (%s) scored by %s -> %s", row_counts["rows"], dict(counts), a.teacher.model,
             ctx.out_dir)


def annotating_teacher(cfg: Config) -> TeacherConfig:
    """annotate.teacher, trusting its code when it is the run's teacher and that one's code is trusted
    (`teacher.trust_remote_code`): the same model runs the same code."""
    a, t = cfg.annotate.teacher, cfg.teacher
    if t.trust_remote_code and not a.trust_remote_code and (a.model, a.revision) == (t.model, t.revision):
        return a.model_copy(update={"trust_remote_code": True})
    return a


def completion_tokens(sample: records.Sample, tokenizer, same_tokenizer: bool) -> list[int]:
    """The tokens to score: the writer's own ids when the tokenizers match, else the text re-tokenised
    (plus EOS when it ended on its own, so the student still learns to stop)."""
    if same_tokenizer and sample.completion_token_ids is not None:
        return list(sample.completion_token_ids)
    ids = tokenizer.encode(sample.completion, add_special_tokens=False)
    if sample.finish_reason == "stop" and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def annotate_batch(teacher: LocalTeacher, samples: list[records.Sample], same_tokenizer: bool,
                   counts: Counter) -> list[records.Sample]:
    """The samples with the teacher's top-k filled in (same order); `counts` gets one reason per row."""
    out: list[records.Sample | None] = [None] * len(samples)
    todo: list[tuple[int, list[int]]] = []
    limit = teacher.max_length()
    for i, s in enumerate(samples):
        if s.completion is None:
            counts["failed_upstream"] += 1
            out[i] = s
            continue
        tokens = completion_tokens(s, teacher.tokenizer, same_tokenizer)
        total = len(models.encode_prompt(teacher.tokenizer, s.messages)) + len(tokens)
        if total > limit:
            counts["too_long"] += 1
            out[i] = dataclasses.replace(s, completion_token_ids=None, topk_ids=None, topk_logprobs=None,
                                         error=f"annotate: {total} tokens exceed the teacher's context of {limit}")
            continue
        counts["annotated" if same_tokenizer and s.completion_token_ids is not None else "retokenized"] += 1
        todo.append((i, tokens))
    if todo:
        scored = teacher.score([samples[i].messages for i, _ in todo], [t for _, t in todo])
        for (i, tokens), sc in zip(todo, scored):
            s = samples[i]
            nll = float(-np.mean(sc.token_logprobs)) if tokens else None
            out[i] = dataclasses.replace(
                s,
                completion_token_ids=tokens,
                topk_ids=sc.topk_ids,
                topk_logprobs=sc.topk_logprobs,
                usage={"prompt_tokens": sc.prompt_tokens, "completion_tokens": len(tokens)},
                difficulty=s.difficulty if s.difficulty is not None else nll,
            )
    return out
