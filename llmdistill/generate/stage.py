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
5. Failures: a sample whose request failed is committed with its reason (`error`). A rerun requests the
   transient ones again (`teachers.is_transient`: connection, timeout, 429, 5xx, malformed reply), each with
   the seed and batch position it was planned with, so it is the very request that failed (answered ones
   come from the API's request cache); a shard file holding retried rows is replaced by its new version in
   one rename, its other rows untouched. The stage is not done (no `_SUCCESS`, exit code 2) while more than
   `generate.max_failed_fraction` of the samples failed; when done with failures below that, `_SUCCESS`
   counts the transient ones (`pending`), and the next plain rerun retries them in place.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import gc
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from llmdistill import __version__, records, store
from llmdistill.config import Config, RouteRule
from llmdistill.errors import UserError
from llmdistill.generate import difficulty
from llmdistill.prompts import Prompt, curriculum_order, load_sources
from llmdistill.runner import RunLock, StageContext
from llmdistill.teachers import PromptTooLong, Sampling, build_teacher, is_transient

log = logging.getLogger("llmdistill")

PROMPTS_FILE = "prompts.jsonl"
EVOLVE_CACHE = "evolve.jsonl"
TEACHERS_DIR = "teachers"  # provenance of every teacher, written when it is loaded
SHARDS_DIR = "shards"  # one done-marker per finished --shard i/n


@dataclass(frozen=True)
class Item:
    """One sample to produce."""

    prompt: Prompt
    sample_index: int
    id: str
    teacher: str


# ------------------------------------------------------------------------------------------------ prompts
def build_prompts(cfg: Config, out_dir: Path, may_ask: bool = True) -> tuple[list[Prompt], dict]:
    """The stage's prompt set in curriculum order, and what happened on the way (for the manifest).

    `max_prompts` thins the seed prompts; evolution then adds variants of those. `may_ask=False` (merge):
    evolution must already be complete in the cache."""
    g = cfg.generate
    loaded = load_sources(g)
    for line in loaded.bad_lines:
        log.warning("generate: skipped bad prompt %s", line)
    seeds = curriculum_order(loaded.prompts, g.order, g.max_prompts)
    if not seeds:
        raise UserError("generate: the prompt sources gave no prompts")
    info: dict = {"seed_prompts": len(seeds), "bad_lines": len(loaded.bad_lines),
                  "bad_line_examples": loaded.bad_lines[:20],
                  "sources": dict(Counter(p.source for p in seeds))}
    prompts = seeds
    if g.evolve is not None:
        from llmdistill.generate import evolve

        ev = g.evolve
        sampling = dataclasses.replace(Sampling.from_generate(g), max_new_tokens=ev.max_new_tokens,
                                       temperature=ev.temperature, top_p=1.0)

        def make_teacher():
            if not may_ask:
                raise UserError(f"merge: the evolution in {out_dir / EVOLVE_CACHE} is incomplete: no shard has "
                                "finished it; run the shards first")
            return build_teacher(cfg.teacher_config(ev.teacher), sampling)

        # shards of one run share the evolved prompts: the first to get here asks, the others wait and read
        with RunLock(out_dir, name=".lock-evolve", wait=True):
            evolved, info["evolve"] = evolve.evolve(seeds, ev, cfg.seed, g.batch_size, out_dir / EVOLVE_CACHE,
                                                    make_teacher)
        prompts = curriculum_order(seeds + evolved, g.order)
    info["prompts"] = len(prompts)
    return prompts, info


def write_prompts(path: Path, prompts: list[Prompt]) -> None:
    lines = [json.dumps({"id": p.id, "messages": p.messages, "level": p.level, "source": p.source,
                         "answer": p.answer, "tags": p.tags}, ensure_ascii=False) for p in prompts]
    store.atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


# --------------------------------------------------------------------------------------------------- plan
def route(rules: list[RouteRule], prompt: Prompt) -> str:
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


def plan(cfg: Config, prompts: list[Prompt]) -> list[Item]:
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
    retry = {} if ctx.merge_only else failed_to_retry(ctx.out_dir, batches, set(mine))
    if retry:
        log.info("generate: requesting %d failed samples again (transient failures) in %d shard files",
                 sum(len(v) for v in retry.values()), len(retry))
    started = time.monotonic()
    total = sum(len(batches[j]) for j in mine)
    try:
        new_tokens = generate_batches(cfg, ctx, batches, todo, total, retry)
    except UserError:
        if ctx.changed and shard is None and store.read_success(ctx.out_dir) is not None:
            # a retry over a completed output (which stays in use) replaced some files: count what is there now
            finish(cfg, ctx, items, prompt_info, 0, time.monotonic() - started)
        raise
    if shard is not None:
        store.atomic_write_json(ctx.out_dir / SHARDS_DIR / f"{shard[0]:03d}-of-{shard[1]:03d}.json",
                                {"shard": shard[0], "count": shard[1], "batches": len(mine),
                                 "samples": total, "fingerprint": ctx.fingerprint})
        log.info("generate: shard %d/%d done (%d batches); run `llmdistill merge` once every shard is done",
                 shard[0], shard[1], len(mine))
        return
    write_prompts(ctx.out_dir / PROMPTS_FILE, list({it.prompt.id: it.prompt for it in items}.values()))
    finish(cfg, ctx, items, prompt_info, new_tokens, time.monotonic() - started)


def failed_to_retry(out_dir: Path, batches: list[list[Item]], mine: set[int]) -> dict[Path, list[tuple[int, int]]]:
    """Committed samples whose failure is transient, by shard file: (batch, position in the batch) of each,
    for the shard files of `mine` batches (a --shard process retries its own files only)."""
    where = {it.id: (j, pos) for j, batch in enumerate(batches) for pos, it in enumerate(batch)}
    out: dict[Path, list[tuple[int, int]]] = {}
    for path in store.list_shards(out_dir):
        if int(store.SHARD_RE.match(path.name).group(1)) not in mine:
            continue
        table = store.read_shard(path, ["id", "error"])
        ids, errors = table.column("id").to_pylist(), table.column("error").to_pylist()
        failed = [where[i] for i, e in zip(ids, errors) if is_transient(e) and i in where]
        if failed:
            out[path] = failed
    return out


def batch_seed(cfg: Config, batch: list[Item]) -> int:
    return int(records.stable_hash([cfg.seed, batch[0].id], 15), 16)


def generate_batches(cfg: Config, ctx: StageContext, batches: list[list[Item]], todo: list[int], total: int,
                     retry: dict[Path, list[tuple[int, int]]] | None = None) -> int:
    """Generate the `todo` batches and the `retry` rows teacher by teacher and commit them; returns the new
    completion tokens. `ctx.changed` says, as soon as it is so, whether any shard file was written."""
    g = cfg.generate
    retry = retry or {}
    out_dir = ctx.out_dir
    ctx.changed = bool(todo)  # new batches get written; a retry sets it when it replaced a file
    writer = store.ShardWriter(out_dir)
    teachers = list(dict.fromkeys([batches[j][0].teacher for j in todo]
                                  + [batches[rows[0][0]][0].teacher for rows in retry.values()]))
    started, new_tokens = time.monotonic(), 0
    initial = total - sum(len(batches[j]) for j in todo)
    with tqdm(total=total, initial=initial, desc="generate", unit="sample") as bar:
        for name in teachers:
            with build_teacher(cfg.teacher_config(name), Sampling.from_generate(g),  # one at a time, closed on
                               cache_dir=cfg.run_dir / "cache") as teacher:  # every path
                store.atomic_write_json(out_dir / TEACHERS_DIR / f"{name}.json", teacher.provenance())
                # e.g. a provider batch API: all this teacher will be asked, at once (a no-op for most backends)
                teacher.prefetch(_work(cfg, batches, [j for j in todo if batches[j][0].teacher == name],
                                       {p: r for p, r in retry.items() if batches[r[0][0]][0].teacher == name}))
                for path, rows in retry.items():
                    if batches[rows[0][0]][0].teacher == name:
                        if retry_shard(cfg, teacher, writer, path, batches, rows):
                            ctx.changed = True
                pending: list[records.Sample] = []
                first = last = -1
                for j in (j for j in todo if batches[j][0].teacher == name):
                    if pending and (j != last + 1 or len(pending) >= g.shard_rows):
                        writer.write(pending, index=first)  # a file holds consecutive batches only
                        pending = []
                    if not pending:
                        first = j
                    batch = batches[j]
                    try:
                        results = _ask(teacher, name, batch, batch_seed(cfg, batch))
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


def _work(cfg: Config, batches: list[list[Item]], todo: list[int], retry: dict[Path, list[tuple[int, int]]]):
    """(prompts, seed, positions) of every teacher.generate call the loop below will make, in its order."""
    work = []
    for rows in retry.values():
        work += [([batches[j][p].prompt.messages for p in ps], batch_seed(cfg, batches[j]), ps)
                 for j, ps in _by_batch(rows).items()]
    return work + [([it.prompt.messages for it in batches[j]], batch_seed(cfg, batches[j]), None) for j in todo]


def _by_batch(rows: list[tuple[int, int]]) -> dict[int, list[int]]:
    """(batch, position) pairs as batch -> positions, in first-seen order (one teacher call per batch)."""
    out: dict[int, list[int]] = {}
    for j, pos in rows:
        out.setdefault(j, []).append(pos)
    return out


def _ask(teacher, name: str, items: list[Item], seed: int, positions: list[int] | None = None):
    """teacher.generate on `items`; a prompt too long for the teacher (generate.too_long: error) is named by
    its file and line."""
    extra = {} if positions is None else {"positions": positions}  # only a retry needs them
    try:
        return teacher.generate([it.prompt.messages for it in items], seed=seed, **extra)
    except PromptTooLong as e:
        prompt = items[e.index].prompt
        where = prompt.origin or f"prompt {prompt.id} (source {prompt.source!r})"
        raise UserError(f"generate: {where}: the prompt is too long for teacher {name!r}: {e.reason} "
                        "(generate.too_long: skip records it as a failed sample instead)") from None


def retry_shard(cfg: Config, teacher, writer: store.ShardWriter, path: Path, batches: list[list[Item]],
                rows: list[tuple[int, int]]) -> bool:
    """Request the failed `rows` (batch, position) of one committed shard file again, each with its batch's
    seed and its own position (the very request that failed), and replace the file by its new version in one
    rename (its other rows untouched). A row that fails transiently again is left as it was (nothing changed for
    what is built from it); one answered, or now failing for good (it will not be retried again), is replaced.
    Returns whether the file changed."""
    new: dict[str, records.Sample] = {}
    for j, positions in _by_batch(rows).items():
        items = [batches[j][pos] for pos in positions]
        results = _ask(teacher, items[0].teacher, items, batch_seed(cfg, batches[j]), positions)
        for it, res in zip(items, results):
            new[it.id] = _to_sample(cfg, it, res)
    old = store.read_shard(path).replace_schema_metadata(None)
    ids = old.column("id").to_pylist()
    swap = {i: s for i, s in new.items() if not is_transient(s.error)}
    if not swap:
        return False
    fresh = records.samples_to_table(list(swap.values())).replace_schema_metadata(None)
    slot = {sid: len(ids) + k for k, sid in enumerate(swap)}
    table = pa.concat_tables([old, fresh]).take([slot.get(i, n) for n, i in enumerate(ids)])
    writer.write_table(table, index=int(store.SHARD_RE.match(path.name).group(1)), replace=True)
    log.info("generate: %s: %d of %d retried samples answered", path.name,
             sum(s.error is None for s in swap.values()), len(new))
    return True


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
    errors = [e for e in table.column("error").to_pylist() if e is not None]
    reasons = Counter(failure_kind(e) for e in errors)
    counts["failure_reasons"] = dict(reasons.most_common())
    counts["retryable"] = ctx.pending = sum(map(is_transient, errors))
    if counts["failed"] > g.max_failed_fraction * counts["rows"]:
        store.atomic_write_json(ctx.out_dir / store.STATS, {**counts, "seconds_this_attempt": round(elapsed, 1)})
        raise UserError(_too_many_failed(ctx.out_dir, counts, g.max_failed_fraction, errors))
    teachers = {name: teacher_provenance(cfg, ctx.out_dir, name) for name in teacher_rows}
    main = "default" if "default" in teachers else next(iter(teachers))
    scores = [records.decode_json_column(s) for s in table.column("scores").to_pylist()]
    if counts["failed"]:
        log.warning("generate: %d of %d samples failed (%s; reasons in the `error` column); %s", counts["failed"],
                    counts["rows"], _top(reasons), f"a plain rerun requests the {ctx.pending} transient ones again"
                    if ctx.pending else "none is transient, so a rerun does not retry them")
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


def failure_kind(error: str) -> str:
    """A failure's reason without its details: "HTTP 500", "connection error", "prompt too long" ..."""
    return error.split(":")[0].split(" (")[0]


def _top(reasons: Counter, n: int = 3) -> str:
    return ", ".join(f"{kind} x {count}" for kind, count in reasons.most_common(n))


def _too_many_failed(out_dir: Path, counts: dict, limit: float, errors: list[str]) -> str:
    failed, rows, transient = counts["failed"], counts["rows"], counts["retryable"]
    example = next((e for e in errors if failure_kind(e) == next(iter(counts["failure_reasons"]))), errors[0])
    then = (f"rerun to request the {transient} transient ones again" if transient else
            "none is transient (a rerun would fail them the same way): fix their cause")
    return (f"generate: {failed} of {rows} samples failed ({failed / rows:.0%}, more than generate.max_failed_fraction "
            f"{limit:g}): {_top(Counter(counts['failure_reasons']))} (e.g. {example[:160]}); {out_dir} is kept but "
            f"not marked done: {then}, or raise generate.max_failed_fraction")


def teacher_provenance(cfg: Config, out_dir: Path, name: str) -> dict:
    """What the teacher wrote when it was loaded (by this process or a shard); loads it only if missing."""
    path = out_dir / TEACHERS_DIR / f"{name}.json"
    if path.exists():
        return store.read_json(path)
    prov = build_teacher(cfg.teacher_config(name), Sampling.from_generate(cfg.generate),
                         cache_dir=cfg.run_dir / "cache").provenance()
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
