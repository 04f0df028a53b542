"""The generate stage: prompts (curriculum order) -> teacher completions with top-k log-probs -> shards.

Work is cut into fixed batches of `generate.batch_size` samples in curriculum order, and shards are
committed only at batch boundaries. A rerun after a kill skips every batch whose ids are all in
committed shards and regenerates the rest with the same per-batch seed, so the finished dataset has
exactly one row per (prompt, sample index), in order, whatever happened in between.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter

import numpy as np
from tqdm.auto import tqdm

from llmdistill import __version__, records, store
from llmdistill.config import Config
from llmdistill.errors import UserError
from llmdistill.generate.teachers import build_teacher
from llmdistill.pipeline import StageContext

log = logging.getLogger("llmdistill")


def plan(cfg: Config) -> list[tuple[records.Prompt, int, str]]:
    """(prompt, sample index, record id) for every sample the stage must produce, in order."""
    g = cfg.generate
    try:
        prompts = records.load_prompts(g.prompts, g.system_prompt, g.order, g.max_prompts)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not prompts:
        raise UserError(f"no prompts found in {', '.join(str(p) for p in g.prompts)}")
    out = []
    for p in prompts:
        for i in range(g.n):
            rid = records.record_id(p.messages, p.source, "chat", cfg.teacher.model, gen_params(cfg, i), i)
            out.append((p, i, rid))
    return out


def gen_params(cfg: Config, sample_index: int) -> dict:
    g = cfg.generate
    return {
        "temperature": g.temperature,
        "top_p": g.top_p,
        "max_new_tokens": g.max_new_tokens,
        "seed": cfg.seed,
        "sample_index": sample_index,
    }


def run(cfg: Config, ctx: StageContext) -> None:
    g = cfg.generate
    work = plan(cfg)
    batches = [work[i : i + g.batch_size] for i in range(0, len(work), g.batch_size)]
    removed_tmp = store.clean_temporaries(ctx.out_dir)
    done = store.read_ids(ctx.out_dir)
    if len(done) != len(set(done)):
        raise UserError(f"{ctx.out_dir} holds duplicate ids: remove it and rerun (--force generate)")
    done_set = set(done)
    todo = [b for b in batches if not all(rid in done_set for _, _, rid in b)]
    if done:
        log.info("generate: resuming, %d of %d samples already committed (%d stale temp files removed)",
                 len(done), len(work), removed_tmp)
    writer = store.ShardWriter(ctx.out_dir)
    teacher = None
    pending: list[records.Sample] = []
    started = time.monotonic()
    new_tokens = 0
    with tqdm(total=len(work), initial=len(work) - sum(len(b) for b in todo), desc="generate", unit="sample") as bar:
        for batch in todo:
            if teacher is None:  # load lazily: a rerun with nothing left to do never loads the model
                teacher = build_teacher(cfg.teacher, g, cache_dir=ctx.run_dir / "cache")
            first_id = batch[0][2]
            seed = int(records.stable_hash([cfg.seed, first_id], 15), 16)
            try:
                results = teacher.generate([p.messages for p, _, _ in batch], seed=seed)
            except (UserError, KeyboardInterrupt):
                if pending:  # whole batches only: commit them, so a rerun resumes after them
                    writer.write(pending)
                raise
            for (prompt, idx, rid), res in zip(batch, results):
                pending.append(_to_sample(cfg, prompt, idx, rid, res))
                new_tokens += len(res.token_ids or ())
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{new_tokens / max(time.monotonic() - started, 1e-9):.0f}")
            if len(pending) >= g.shard_rows:
                writer.write(pending)
                pending = []
        if pending:
            writer.write(pending)

    ids = store.read_ids(ctx.out_dir)
    expected = [rid for _, _, rid in work]
    if sorted(ids) != sorted(expected):
        raise UserError(f"{ctx.out_dir}: committed ids do not match the plan ({len(ids)} vs {len(expected)})")

    if teacher is None and (ctx.out_dir / store.MANIFEST).exists():
        provenance = store.read_manifest(ctx.out_dir)["provenance"]
    else:
        provenance = (teacher or build_teacher(cfg.teacher, g, cache_dir=ctx.run_dir / "cache")).provenance()
    table = store.read_table(ctx.out_dir, ["finish_reason", "level", "usage", "error"])
    finish = Counter(table.column("finish_reason").to_pylist())
    levels = Counter(table.column("level").to_pylist())
    usage = table.column("usage").to_pylist()
    counts = {
        "rows": table.num_rows,
        "failed": int(sum(e is not None for e in table.column("error").to_pylist())),
        "finish_reasons": dict(finish),
        "levels": {str(k): v for k, v in sorted(levels.items())},
        "prompt_tokens": int(sum(u["prompt_tokens"] for u in usage)),
        "completion_tokens": int(sum(u["completion_tokens"] for u in usage)),
    }
    if counts["failed"]:
        log.warning("generate: %d of %d samples failed (reasons in the `error` column); `llmdistill generate "
                    "--force` retries only those when the teacher keeps a request cache", counts["failed"],
                    counts["rows"])
    store.write_manifest(
        ctx.out_dir,
        {
            "schema_version": records.SCHEMA_VERSION,
            "llmdistill_version": __version__,
            "stage": "generate",
            "fingerprint": ctx.fingerprint,
            "provenance": provenance,
            "sampling": {k: v for k, v in gen_params(cfg, 0).items() if k != "sample_index"} | {"n": g.n},
            "counts": counts,
        },
    )
    elapsed = time.monotonic() - started
    store.atomic_write_json(
        ctx.out_dir / store.STATS,
        {**counts, "seconds_this_attempt": round(elapsed, 1), "new_tokens_this_attempt": new_tokens,
         "tokens_per_second": round(new_tokens / elapsed, 1) if new_tokens else None},
    )
    log.info("generate: %d samples (%s) in %d shards -> %s", counts["rows"], dict(finish),
             len(store.list_shards(ctx.out_dir)), ctx.out_dir)


def _to_sample(cfg: Config, prompt: records.Prompt, idx: int, rid: str, res) -> records.Sample:
    nll = _mean_nll(res.token_ids, res.topk_ids, res.topk_logprobs) if res.topk_ids is not None else None
    return records.Sample(
        id=rid,
        prompt_id=prompt.id,
        messages=prompt.messages,
        completion=res.text,
        source=prompt.source,
        teacher=cfg.teacher.model,
        gen=gen_params(cfg, idx),
        usage={"prompt_tokens": res.prompt_tokens, "completion_tokens": len(res.token_ids or ())},
        finish_reason=res.finish_reason,
        error=res.error,
        level=prompt.level,
        difficulty=nll,
        metadata={"answer": prompt.answer, "tags": prompt.tags} if prompt.answer or prompt.tags else {},
        completion_token_ids=res.token_ids,
        topk_ids=res.topk_ids,
        topk_logprobs=res.topk_logprobs,
    )


def _mean_nll(token_ids: list[int], topk_ids: np.ndarray, topk_logprobs: np.ndarray) -> float | None:
    """The teacher's mean negative log-likelihood of its own tokens: a measured difficulty.

    A sampled token outside the stored top-k is counted at the k-th log-prob (a lower bound on its NLL).
    """
    if not token_ids:
        return None
    hit = topk_ids == np.asarray(token_ids)[:, None]
    own = np.where(hit, topk_logprobs.astype(np.float64), 0.0).sum(1)
    lp = np.where(hit.any(1), own, topk_logprobs[:, -1].astype(np.float64))
    value = float(-lp.mean())
    return value if math.isfinite(value) else None
