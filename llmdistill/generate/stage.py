"""The generate stage: prompts (curriculum order) -> teacher completions with top-k log-probs -> shards.

1. Prompts: every source (generate.prompts, generate.sources), bad lines skipped or fatal, optional
   evolution (harder variants, level + 1, cached in evolve.jsonl), then curriculum order;
   the final set is written to prompts.jsonl.
2. Plan: every (prompt, sample index) gets a record id and a teacher (generate.routing, first matching
   rule; `default` otherwise); within a level, prompts are grouped by teacher. The plan is cut into fixed
   batches in plan order; a batch holds one teacher's prompts only (a change of teacher starts a new one).
3. Generate: teacher by teacher (each loaded once, then released), batch by batch with a per-batch
   seed. A shard file holds consecutive batches of one teacher and is named after its first batch,
   `part-<batch>.parquet`, so the file order is the plan order whatever order the files were written in.
   A rerun after a kill skips every batch already committed, so the finished dataset has exactly one row
   per planned id, in curriculum order.
4. Scale-out: with `--shard i/n` a process generates only its batches (blocks of about `shard_rows`
   rows, dealt round-robin), records `shards/<i>-of-<n>.json` when done and writes no manifest. File
   names are batch numbers, so n processes never collide in one directory. A run without --shard (or
   `llmdistill merge`, which generates nothing) then checks that every planned id is there exactly once
   and writes the manifest.
"""

from __future__ import annotations

import fnmatch
import gc
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from llmdistill import __version__, records, store
from llmdistill.config import Config, RouteRule
from llmdistill.errors import UserError
from llmdistill.generate import curriculum, difficulty
from llmdistill.generate.teachers import build_teacher
from llmdistill.pipeline import RunLock, StageContext

log = logging.getLogger("llmdistill")

PROMPTS_FILE = "prompts.jsonl"
EVOLVE_CACHE = "evolve.jsonl"
TEACHERS_DIR = "teachers"  # provenance of every teacher, written when it is loaded
SHARDS_DIR = "shards"  # one done-marker per finished --shard i/n


@dataclass(frozen=True)
class Item:
    """One sample to produce."""

    prompt: records.Prompt
    sample_index: int
    id: str
    teacher: str


# ------------------------------------------------------------------------------------------------ prompts
def build_prompts(cfg: Config, out_dir: Path, may_ask: bool = True) -> tuple[list[records.Prompt], dict]:
    """The stage's prompt set in curriculum order, and what happened on the way (for the manifest).

    `max_prompts` thins the seed prompts; evolution then adds variants of those. `may_ask=False` (merge):
    evolution must already be complete in the cache."""
    g = cfg.generate
    loaded = curriculum.load_sources(g)
    for line in loaded.bad_lines:
        log.warning("generate: skipped bad prompt %s", line)
    seeds = records.curriculum_order(loaded.prompts, g.order, g.max_prompts)
    if not seeds:
        raise UserError("generate: the prompt sources gave no prompts")
    info: dict = {"seed_prompts": len(seeds), "bad_lines": len(loaded.bad_lines),
                  "bad_line_examples": loaded.bad_lines[:20],
                  "sources": dict(Counter(p.source for p in seeds))}
    prompts = seeds
    if g.evolve is not None:
        from llmdistill.generate import evolve

        ev = g.evolve
        gcfg = g.model_copy(update={"max_new_tokens": ev.max_new_tokens, "temperature": ev.temperature,
                                    "top_p": 1.0})

        def make_teacher():
            if not may_ask:
                raise UserError(f"merge: the evolution in {out_dir / EVOLVE_CACHE} is incomplete: no shard has "
                                "finished it; run the shards first")
            return build_teacher(cfg.teacher_config(ev.teacher), gcfg)

        # shards of one run share the evolved prompts: the first to get here asks, the others wait and read
        with RunLock(out_dir, name=".lock-evolve", wait=True):
            evolved, info["evolve"] = evolve.evolve(seeds, ev, cfg.seed, g.batch_size, out_dir / EVOLVE_CACHE,
                                                    make_teacher)
        prompts = records.curriculum_order(seeds + evolved, g.order)
    info["prompts"] = len(prompts)
    return prompts, info


def write_prompts(path: Path, prompts: list[records.Prompt]) -> None:
    lines = [json.dumps({"id": p.id, "messages": p.messages, "level": p.level, "source": p.source,
                         "answer": p.answer, "tags": p.tags}, ensure_ascii=False) for p in prompts]
    store.atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


# --------------------------------------------------------------------------------------------------- plan
def route(rules: list[RouteRule], prompt: records.Prompt) -> str:
    """The teacher of a prompt: the first rule whose every criterion matches, else `default`."""
    for r in rules:
        if r.sources is not None and not any(fnmatch.fnmatchcase(prompt.source, pat) for pat in r.sources):
            continue
        if r.levels is not None and prompt.level not in r.levels:
            continue
        if r.tags is not None and not set(r.tags) & set(prompt.tags):
            continue
        return r.teacher
    return "default"


def plan(cfg: Config, prompts: list[records.Prompt]) -> list[Item]:
    """Every sample the stage must produce, in order: n per prompt, each with its id and teacher.

    In curriculum order, the prompts of one level are grouped by teacher (in order of first appearance,
    stable), so batches, which never mix teachers, stay full while the level order is kept."""
    routed = [(p, route(cfg.generate.routing, p)) for p in prompts]
    if cfg.generate.order == "curriculum":
        rank = {name: i for i, name in enumerate(dict.fromkeys(name for _, name in routed))}
        routed.sort(key=lambda pn: (pn[0].level, rank[pn[1]]))
    out = []
    for p, name in routed:
        model = cfg.teacher_config(name).model
        for i in range(cfg.generate.n):
            out.append(Item(p, i, records.record_id(p.messages, p.source, "chat", model, gen_params(cfg, i), i), name))
    return out


def make_batches(items: list[Item], batch_size: int) -> list[list[Item]]:
    """Fixed batches in plan order, at most `batch_size` items each, never mixing teachers."""
    batches: list[list[Item]] = []
    for item in items:
        last = batches[-1] if batches else None
        if last is None or len(last) >= batch_size or last[0].teacher != item.teacher:
            batches.append([item])
        else:
            last.append(item)
    return batches


def shard_of(batch_index: int, count: int, batch_size: int, shard_rows: int) -> int:
    """Which of `count` shards generates a batch: blocks of about shard_rows rows go round-robin, so every
    shard gets easy and hard prompts alike and its files stay about shard_rows long."""
    block = max(1, shard_rows // batch_size)
    return (batch_index // block) % count


def gen_params(cfg: Config, sample_index: int) -> dict:
    g = cfg.generate
    return {
        "temperature": g.temperature,
        "top_p": g.top_p,
        "max_new_tokens": g.max_new_tokens,
        "seed": cfg.seed,
        "sample_index": sample_index,
    }


# ---------------------------------------------------------------------------------------------------- run
def run(cfg: Config, ctx: StageContext) -> None:
    g = cfg.generate
    shard = ctx.shard
    prompts, prompt_info = build_prompts(cfg, ctx.out_dir, may_ask=not ctx.merge_only)
    items = plan(cfg, prompts)
    batches = make_batches(items, g.batch_size)
    mine = [j for j in range(len(batches))
            if shard is None or shard_of(j, shard[1], g.batch_size, g.shard_rows) == shard[0]]
    removed_tmp = 0 if shard else store.clean_temporaries(ctx.out_dir)  # a shard leaves the others' temporaries
    done = store.read_ids(ctx.out_dir)
    if len(done) != len(set(done)):
        raise UserError(f"{ctx.out_dir} holds duplicate ids: remove it and rerun (--force generate)")
    done_set = set(done)
    todo = [j for j in mine if not all(it.id in done_set for it in batches[j])]
    if done:
        log.info("generate: resuming, %d of %d samples already committed (%d stale temp files removed)",
                 len(done), len(items), removed_tmp)
    if ctx.merge_only and todo:
        raise UserError(_missing_message(ctx.out_dir, batches, todo, g.batch_size, g.shard_rows))
    started = time.monotonic()
    total = sum(len(batches[j]) for j in mine)
    new_tokens = generate_batches(cfg, ctx.out_dir, batches, todo, total)
    if shard is not None:
        store.atomic_write_json(ctx.out_dir / SHARDS_DIR / f"{shard[0]:03d}-of-{shard[1]:03d}.json",
                                {"shard": shard[0], "count": shard[1], "batches": len(mine),
                                 "samples": total, "fingerprint": ctx.fingerprint})
        log.info("generate: shard %d/%d done (%d batches); run `llmdistill merge` once every shard is done",
                 shard[0], shard[1], len(mine))
        return
    write_prompts(ctx.out_dir / PROMPTS_FILE, list({it.prompt.id: it.prompt for it in items}.values()))
    finish(cfg, ctx, items, prompt_info, new_tokens, time.monotonic() - started)


def generate_batches(cfg: Config, out_dir: Path, batches: list[list[Item]], todo: list[int], total: int) -> int:
    """Generate the `todo` batches teacher by teacher and commit them; returns the new completion tokens."""
    g = cfg.generate
    writer = store.ShardWriter(out_dir)
    teachers = list(dict.fromkeys(batches[j][0].teacher for j in todo))
    started, new_tokens = time.monotonic(), 0
    initial = total - sum(len(batches[j]) for j in todo)
    with tqdm(total=total, initial=initial, desc="generate", unit="sample") as bar:
        for name in teachers:
            teacher = build_teacher(cfg.teacher_config(name), g, cache_dir=cfg.run_dir / "cache")  # one at a time
            store.atomic_write_json(out_dir / TEACHERS_DIR / f"{name}.json", teacher.provenance())
            pending: list[records.Sample] = []
            first = last = -1
            for j in (j for j in todo if batches[j][0].teacher == name):
                if pending and (j != last + 1 or len(pending) >= g.shard_rows):
                    writer.write(pending, index=first)  # a file holds consecutive batches only
                    pending = []
                if not pending:
                    first = j
                batch = batches[j]
                seed = int(records.stable_hash([cfg.seed, batch[0].id], 15), 16)
                try:
                    results = teacher.generate([it.prompt.messages for it in batch], seed=seed)
                except (UserError, KeyboardInterrupt):
                    if pending:  # whole batches only: commit them, so a rerun resumes after them
                        writer.write(pending, index=first)
                    raise
                for it, res in zip(batch, results):
                    pending.append(_to_sample(cfg, it, res))
                    new_tokens += len(res.token_ids or ())
                last = j
                bar.update(len(batch))
                bar.set_postfix(tok_s=f"{new_tokens / max(time.monotonic() - started, 1e-9):.0f}")
            if pending:
                writer.write(pending, index=first)
            # again once done: some backends count what they saw (e.g. API tokens that did not map to ids)
            store.atomic_write_json(out_dir / TEACHERS_DIR / f"{name}.json", teacher.provenance())
            del teacher
            gc.collect()
    return new_tokens


def _missing_message(out_dir: Path, batches, todo: list[int], batch_size: int, shard_rows: int) -> str:
    missing = sum(len(batches[j]) for j in todo)
    total = sum(len(b) for b in batches)
    counts = sorted({json.loads(p.read_text())["count"] for p in (out_dir / SHARDS_DIR).glob("*.json")}) \
        if (out_dir / SHARDS_DIR).is_dir() else []
    where = ""
    for n in counts:
        owners = sorted({shard_of(j, n, batch_size, shard_rows) for j in todo})
        where += f"; with {n} shards they belong to shard{'s' if len(owners) > 1 else ''} " + \
            ", ".join(f"{i}/{n}" for i in owners)
    return (f"generate: {out_dir} is incomplete: {missing} of {total} planned samples are missing "
            f"(e.g. id {batches[todo[0]][0].id}){where or '; no shard has finished yet'}. Run the missing "
            f"shards (`llmdistill generate CONFIG --shard i/n`), or `llmdistill generate CONFIG` to generate "
            f"what is missing here")


def finish(cfg: Config, ctx: StageContext, items: list[Item], prompt_info: dict, new_tokens: int,
           elapsed: float) -> None:
    """Check the committed set against the plan and write manifest.json and stats.json."""
    g = cfg.generate
    ids = store.read_ids(ctx.out_dir)
    expected = [it.id for it in items]
    if len(ids) != len(set(ids)):
        raise UserError(f"{ctx.out_dir} holds duplicate ids: remove it and rerun (--force generate)")
    if ids != expected:
        missing = len(set(expected) - set(ids))
        extra = len(set(ids) - set(expected))
        raise UserError(f"{ctx.out_dir}: committed ids do not match the plan ({len(ids)} committed, {missing} "
                        f"missing, {extra} not planned{', out of order' if not missing and not extra else ''})")
    table = store.read_table(ctx.out_dir, ["finish_reason", "level", "usage", "error", "teacher", "scores"])
    finish_reasons = Counter(table.column("finish_reason").to_pylist())
    levels = table.column("level").to_pylist()
    teacher_rows = Counter(table.column("teacher").to_pylist())
    usage = table.column("usage").to_pylist()
    counts = {
        "rows": table.num_rows,
        "failed": int(sum(e is not None for e in table.column("error").to_pylist())),
        "finish_reasons": dict(finish_reasons),
        "levels": {str(k): v for k, v in sorted(Counter(levels).items())},
        "teachers": dict(teacher_rows),
        "prompt_tokens": int(sum(u["prompt_tokens"] for u in usage)),
        "completion_tokens": int(sum(u["completion_tokens"] for u in usage)),
    }
    teachers = {name: teacher_provenance(cfg, ctx.out_dir, name) for name in teacher_rows}
    main = "default" if "default" in teachers else next(iter(teachers))
    scores = [json.loads(s or "{}") for s in table.column("scores").to_pylist()]
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
            "provenance": teachers[main],  # the default teacher's (or the only one's); see `teachers`
            "teachers": teachers,
            "sampling": {k: v for k, v in gen_params(cfg, 0).items() if k != "sample_index"} | {"n": g.n},
            "counts": counts,
            "prompts": prompt_info,
            "difficulty": difficulty.summary_by_level(levels, scores),
        },
    )
    store.atomic_write_json(
        ctx.out_dir / store.STATS,
        {**counts, "seconds_this_attempt": round(elapsed, 1), "new_tokens_this_attempt": new_tokens,
         "tokens_per_second": round(new_tokens / elapsed, 1) if new_tokens else None},
    )
    log.info("generate: %d samples (%s) from %s in %d shards -> %s", counts["rows"], dict(finish_reasons),
             ", ".join(f"{k}: {v}" for k, v in teacher_rows.items()), len(store.list_shards(ctx.out_dir)),
             ctx.out_dir)


def teacher_provenance(cfg: Config, out_dir: Path, name: str) -> dict:
    """What the teacher wrote when it was loaded (by this process or a shard); loads it only if missing."""
    path = out_dir / TEACHERS_DIR / f"{name}.json"
    if path.exists():
        return store.read_json(path)
    prov = build_teacher(cfg.teacher_config(name), cfg.generate, cache_dir=cfg.run_dir / "cache").provenance()
    store.atomic_write_json(path, prov)
    return prov


def _to_sample(cfg: Config, item: Item, res) -> records.Sample:
    prompt = item.prompt
    scores = difficulty.measure(res.token_ids, res.topk_ids, res.topk_logprobs) if res.topk_ids is not None else {}
    metadata = {"answer": prompt.answer, "tags": prompt.tags} if prompt.answer or prompt.tags else {}
    return records.Sample(
        id=item.id,
        prompt_id=prompt.id,
        messages=prompt.messages,
        completion=res.text,
        source=prompt.source,
        teacher=item.teacher,
        gen=gen_params(cfg, item.sample_index),
        usage={"prompt_tokens": res.prompt_tokens, "completion_tokens": len(res.token_ids or ())},
        finish_reason=res.finish_reason,
        error=res.error,
        level=prompt.level,
        difficulty=scores.get("teacher_nll"),
        scores=scores,
        metadata=metadata,
        completion_token_ids=res.token_ids,
        topk_ids=res.topk_ids,
        topk_logprobs=res.topk_logprobs,
    )
