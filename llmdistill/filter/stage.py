"""The filter stage: run the configured steps and scorers over the generated samples, in order.

Kept rows go to `filter/` in their original (curriculum) order; removed rows go to `filter/removed/`
with the reason code of the first step that rejected them. Rows are never rebuilt: the final pass
filters the generate shards' Arrow batches and replaces only the `scores` and `metadata` columns, so
every kept row's `completion_token_ids` and `topk_*` columns are the generate stage's, byte for byte.

Steps run one after the other over the rows still alive, reading light columns (text, level, no top-k)
`filter.read_rows` at a time. The input is cut into parts (parts.py); the row and corpus passes are a map per
part (`row_map`, `corpus.near_map`, `corpus.semantic_map`), run by the executor (`filter.executor`: local, in this
process, or ray: Ray tasks, ray_executor.py), and one decide here on the gathered results, the same for both:
- row steps (failed, empty, length, repetition, refusal, structured, charset, exact_dedup, decontaminate):
  consecutive ones share one pass (`row_map` runs the checks, `row_decide` does exact dedup and the report);
- scorers (judge, reward_model, perplexity, confidence): batched; each batch's scores are committed to
  `filter/scores/<i>-<name>/` as they come, so a killed stage resumes without scoring a row twice;
- corpus steps (near_dedup, semantic_dedup; corpus.py): one pass to hash or embed, a decision on the whole
  corpus (rows visited in `keep` order; one is removed only when a verified pair joins it to a row already
  kept, `minhash.greedy_removals`), and for near_dedup a pass over the candidates only;
- history_dedup (corpus.py): checks against the persistent index and adds the kept rows to it at the end.
Which step is of which kind, and what implements it, is the filter table's (steps.py).
What stays in memory per row: its reason, level, id and scores (a few dozen bytes), plus per corpus
step 8 bytes per LSH band (near) or the embedding (semantic).
stats.json holds counts per reason and per level, score histograms and cluster sizes; decontamination
steps also write decontamination.json (which eval items were hit, by which samples).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmdistill import __version__, records, store
from llmdistill import config as C
from llmdistill.config import Config
from llmdistill.filter import filters, parts, scorers, steps
from llmdistill.runner import StageContext

log = logging.getLogger("llmdistill")

REMOVED = "removed"
SCORES = "scores"
DECONTAMINATION = "decontamination.json"
LIGHT_COLUMNS = parts.LIGHT_COLUMNS


class Rows:
    """Per-row state of a stage run: who is still alive, why the others left, what they scored."""

    def __init__(self, src: Path, read_rows: int):
        self.src, self.read_rows = src, read_rows
        table = store.read_table(src, ["id", "level"])
        self.ids: list[str] = table.column("id").to_pylist()
        self.levels = np.asarray(table.column("level").to_numpy(zero_copy_only=False), dtype=np.int64)
        self.n = len(self.ids)
        self.reasons: list[str | None] = [None] * self.n
        self.scores: dict[str, np.ndarray] = {}
        self.metadata: dict[int, dict] = {}

    def alive(self, i: int) -> bool:
        return self.reasons[i] is None

    def alive_indices(self) -> np.ndarray:
        return np.array([i for i, r in enumerate(self.reasons) if r is None], dtype=np.int64)

    def remove(self, i: int, reason: str, **meta) -> None:
        self.reasons[i] = reason
        if meta:
            self.metadata.setdefault(i, {}).update(meta)

    def set_score(self, i: int, key: str, value: float) -> None:
        if key not in self.scores:
            self.scores[key] = np.full(self.n, np.nan)
        self.scores[key][i] = value

    def samples(self, full: bool = False, only: np.ndarray | None = None) -> Iterator[tuple[int, records.Sample]]:
        """(row index, sample) of the alive rows (or of the rows in sorted `only`), in order; `full` adds the
        teacher-signal columns."""
        columns = None if full else LIGHT_COLUMNS
        wanted = None if only is None else set(only.tolist())
        i = 0
        for batch in store.iter_batches(self.src, self.read_rows, columns):
            rows = range(i, i + batch.num_rows)
            i += batch.num_rows
            keep = [j for j in rows if (j in wanted if wanted is not None else self.alive(j))]
            if not keep:
                continue
            table = pa.Table.from_batches([batch]).take([j - rows.start for j in keep])
            yield from zip(keep, records.table_to_samples(table))


# ------------------------------------------------------------------------------------------- row steps
DUPLICATE = "duplicate"  # exact_dedup's reason (filters.exact_dedup)


def _checks(row_steps: list) -> list:
    """The row checks of `row_steps` (None for exact_dedup: `row_decide` does it), built once per process."""
    return parts.built("rows:" + "\n".join(s.model_dump_json() for s in row_steps), lambda: [
        None if isinstance(s, C.ExactDedupStep) else steps.implementation(s)(s) for s in row_steps])


def row_map(part: parts.Part, alive: np.ndarray, read_rows: int, row_steps: list) -> dict[str, np.ndarray]:
    """The per-part half of a row pass: for each alive row, the first check that removes it (`first`; none:
    len(checks)) and its reason (`code`, an index into `reasons`), and the hashes of the exact_dedup steps before
    that check. Checks are pure functions of the row, except exact_dedup (the rows seen before) and the
    decontamination report: those are the decide's (`row_decide`)."""
    checks = _checks(row_steps)
    exact = {p: k for k, p in enumerate(p for p, c in enumerate(checks) if c is None)}
    n = len(alive)
    idx, first, code = np.empty(n, np.int64), np.full(n, len(checks), np.int16), np.zeros(n, np.int32)
    reasons: dict[str, int] = {}
    hashes = np.zeros((len(exact), n, 16), np.uint8)
    for r, (i, sample) in enumerate(parts.samples(part, alive, read_rows)):
        idx[r] = i
        for p, check in enumerate(checks):
            if check is None:
                hashes[exact[p], r] = np.frombuffer(filters.exact_hash(sample, row_steps[p].scope), np.uint8)
                continue
            reason = check(sample)
            if reason is not None:
                first[r], code[r] = p, reasons.setdefault(reason, len(reasons))
                break
    return {"idx": idx, "first": first, "code": code, "reasons": np.array(list(reasons), dtype=str),
            "hashes": hashes}


def row_decide(rows: Rows, row_steps: list, results: list[dict], out_dir: Path, stats: dict) -> None:
    """The global half of a row pass, as one process would take it in row order: a row goes at its first failing
    check, unless an exact_dedup step before that check has seen its text in an earlier row that reached the step
    (and was not removed at an earlier exact_dedup); then the reports (decontamination.json), from the rows each
    check took."""
    if not results:
        results = [row_map(parts.Part(0, (), 0, 0), np.zeros(0, np.int64), 1, row_steps)]
    idx = np.concatenate([r["idx"] for r in results])
    first = np.concatenate([r["first"] for r in results]).astype(np.int64)
    exact = [p for p, s in enumerate(row_steps) if isinstance(s, C.ExactDedupStep)]
    duplicate = np.zeros(len(idx), bool)
    for k, p in enumerate(exact):
        reached = np.flatnonzero((first > p) & ~duplicate)
        h = np.concatenate([r["hashes"][k] for r in results])[reached].view(np.uint64).reshape(-1, 2)
        _, kept = np.unique(h, axis=0, return_index=True)  # each text's first row (in row order) stays
        later = np.ones(len(reached), bool)
        later[kept] = False
        duplicate[reached[later]] = True
    reason = np.concatenate([r["reasons"][r["code"]] if len(r["reasons"]) else np.full(len(r["idx"]), "")
                             for r in results])
    taken = ~duplicate & (first < len(row_steps))
    for i in idx[duplicate].tolist():
        rows.remove(i, DUPLICATE)
    for i, text in zip(idx[taken].tolist(), reason[taken].tolist()):
        rows.remove(i, text)
    for p, step in enumerate(row_steps):
        if not isinstance(step, C.DecontaminateStep):
            continue
        check = steps.implementation(step)(step)  # replayed on the rows it took, in order: the report they made
        took = np.sort(idx[taken & (first == p)])
        if len(took):
            for _, sample in rows.samples(only=took):
                check(sample)
        report = check.report()
        path = out_dir / DECONTAMINATION
        if path.exists():  # several decontaminate steps: one report with every eval set
            report["eval_sets"] = {**store.read_json(path)["eval_sets"], **report["eval_sets"]}
        store.atomic_write_json(path, report)
        stats["decontamination"] = {k: {"items": v["items"], "items_hit": v["items_hit"]}
                                    for k, v in report["eval_sets"].items()}


# --------------------------------------------------------------------------------------------- scorers
def _cache_dir(out_dir: Path, index: int, step) -> Path:
    return out_dir / SCORES / f"{index:02d}-{step.key or step.name}"


def load_score_cache(directory: Path) -> dict[str, dict]:
    """id -> scores dict of the batches already committed by an earlier attempt."""
    out = {}
    for path in store.list_shards(directory):
        t = store.read_shard(path)
        for rid, s in zip(t.column("id").to_pylist(), t.column("scores").to_pylist()):
            out[rid] = records.decode_json_column(s)
    return out


_CACHE_SCHEMA = pa.schema([("id", pa.string()), ("scores", pa.string())])


def run_scorer(rows: Rows, step, index: int, out_dir: Path, stats: dict, scorer=None) -> None:
    scorer = scorer or steps.implementation(step)(step)
    cache_dir = _cache_dir(out_dir, index, step)
    store.clean_temporaries(cache_dir)
    cached = load_score_cache(cache_dir)
    writer = store.ShardWriter(cache_dir, _CACHE_SCHEMA)
    done: dict[int, dict] = {}
    batch: list[tuple[int, records.Sample]] = []
    resumed = 0

    def flush() -> None:
        results = scorer.score([s for _, s in batch])
        writer.write_table(pa.table({"id": [s.id for _, s in batch],
                                     "scores": [records.encode_json_column(r, "scores") for r in results]},
                                    schema=_CACHE_SCHEMA))
        for (i, _), r in zip(batch, results):
            done[i] = r
        batch.clear()

    for i, sample in rows.samples(full=scorer.needs_topk):
        if sample.id in cached:
            done[i] = cached[sample.id]
            resumed += 1
            continue
        batch.append((i, sample))
        if len(batch) >= step.batch_size:
            flush()
    if batch:
        flush()
    unscored = 0
    for i, result in done.items():
        if not result:
            unscored += 1
            if getattr(step, "drop_unparsed", False):
                rows.remove(i, f"unparsed:{scorer.key}")
            continue
        for key, value in result.items():
            rows.set_score(i, key, value)
        for key, lo, hi in scorers.thresholds(step):
            v = result.get(key)
            if v is None:
                continue
            if lo is not None and v < lo:
                rows.remove(i, f"low_score:{key}")
                break
            if hi is not None and v > hi:
                rows.remove(i, f"high_score:{key}")
                break
    stats.setdefault("scorers", {})[scorer.key] = {"scored": len(done) - unscored, "unscored": unscored,
                                                  "resumed_from_cache": resumed}
    if resumed:
        log.info("filter: %s resumed %d scores from %s", scorer.key, resumed, cache_dir)


# ------------------------------------------------------------------------------------------- the stage
def plan_passes(configured: list) -> list[tuple[str, list[tuple[int, object]]]]:
    """Group the configured steps into passes of one kind (`steps.KINDS`): consecutive row steps share one;
    the others run alone."""
    passes: list[tuple[str, list]] = []
    for i, s in enumerate(configured):
        kind = steps.kind(s)
        if kind == "row" and passes and passes[-1][0] == "row":
            passes[-1][1].append((i, s))
        else:
            passes.append((kind, [(i, s)]))
    return passes


class _Run:
    """What the passes of one stage run share: the rows, the output directory, the stats being gathered, the
    history steps (they add the kept rows at the end), this run's name in the history index, and the parts of the
    input with the executor that runs their maps (`map`)."""

    def __init__(self, rows: Rows, out: Path, owner: str, fingerprint: str, parts_: list[parts.Part], executor):
        self.rows, self.out, self.owner, self.fingerprint = rows, out, owner, fingerprint
        self.parts, self.executor = parts_, executor
        self.stats: dict = {}
        self.history: list = []
        self.pass_index = 0

    def map(self, label: str, fn: Callable, args: tuple, what: object) -> list[dict[str, np.ndarray]]:
        """`fn(part, alive, read_rows, *args)` on the alive rows of every part (through the executor); the results
        in part order. `what` (the step's config) keys the committed results."""
        alive_all = self.rows.alive_indices()
        jobs = []
        for part in self.parts:
            lo, hi = np.searchsorted(alive_all, [part.start, part.start + part.rows])
            if hi > lo:
                alive = alive_all[lo:hi]
                jobs.append(parts.Job(
                    f"{label} part {part.index}/{len(self.parts)}", fn, part, alive, self.rows.read_rows, args,
                    self.out / parts.WORK / f"{self.pass_index:02d}-{label}" / f"part-{part.index:05d}.npz",
                    parts.job_key(self.fingerprint, [self.pass_index, label, what], part, alive)))
        self.executor.map(jobs, f"{self.pass_index:02d}-{label}")
        return [parts.load(job) for job in jobs]


def _row_pass(run: _Run, group: list) -> None:
    row_steps = [s for _, s in group]
    results = run.map("rows", row_map, (row_steps,), [s.model_dump(mode="json") for s in row_steps])
    row_decide(run.rows, row_steps, results, run.out, run.stats)


def _scorer_pass(run: _Run, group: list) -> None:
    (index, step), = group
    run_scorer(run.rows, step, index, run.out, run.stats)


def _corpus_pass(run: _Run, group: list) -> None:
    (_, step), = group
    steps.implementation(step)(run.rows, step, run.stats, run.map)


def _history_pass(run: _Run, group: list) -> None:
    (_, step), = group
    h = steps.implementation(step)(step, run.owner)
    h.run(run.rows, run.stats)
    run.history.append(h)


PASSES: dict[str, Callable[[_Run, list], None]] = {
    "row": _row_pass, "scorer": _scorer_pass, "corpus": _corpus_pass, "history": _history_pass}


def _executor(cfg: Config, out: Path):
    if cfg.filter.executor == "ray":
        from llmdistill.filter.ray_executor import RayExecutor

        return RayExecutor(cfg, out)
    return parts.LocalExecutor()


def run(cfg: Config, ctx: StageContext) -> None:
    src = ctx.upstream_dir
    store.require_complete(src)
    manifest = store.read_manifest(src)
    out = ctx.out_dir
    # the kept/removed shards are redone from scratch; committed scores (filter/scores/) and parts' results
    # (filter/.work/) are reused
    for path in store.list_shards(out) + store.list_shards(out / REMOVED):
        path.unlink()
    (out / DECONTAMINATION).unlink(missing_ok=True)
    rows = Rows(src, cfg.filter.read_rows)
    executor = _executor(cfg, out)
    try:
        state = _Run(rows, out, f"{ctx.run_dir.resolve()}@{ctx.fingerprint}", ctx.fingerprint,
                     parts.split(src, cfg.filter.part_rows), executor)
        for index, (kind, group) in enumerate(plan_passes(cfg.filter.steps)):
            state.pass_index = index
            before = sum(r is None for r in rows.reasons)
            names = "+".join(s.name for _, s in group)
            PASSES[kind](state, group)
            after = sum(r is None for r in rows.reasons)
            log.info("filter: %s removed %d (%d left)", names, before - after, after)
    finally:
        executor.close()
        parts.forget_built()
    stats = state.stats
    n_kept = write_outputs(rows, src, out, cfg.generate.shard_rows)
    for h in state.history:
        if h.step.update:
            stats["history"]["added"] = h.add_kept(rows)
    stats = {**summarise(rows, cfg), **stats}
    if n_kept == 0:
        log.warning("filter: every sample was removed (%s)", stats["removed_by_reason"])
    store.atomic_write_json(out / store.STATS, stats)
    store.write_manifest(
        out,
        {**manifest, "stage": "filter", "fingerprint": ctx.fingerprint, "llmdistill_version": __version__,
         "upstream": {src.name: manifest["fingerprint"]},
         "counts": {"rows": n_kept, "removed": rows.n - n_kept, "levels": stats["levels_kept"]}},
    )
    store.remove_path(out / parts.WORK)  # the parts' results: the outputs hold what they decided
    for line in summary_lines(stats):
        log.info("filter: %s", line)
    log.info("filter: -> %s", out)


def write_outputs(rows: Rows, src: Path, out: Path, shard_rows: int) -> int:
    """Kept rows to `out`, removed rows (with `reason`) to `out/removed`, in input order. Only the `scores`
    and `metadata` columns of a row are rewritten (with what the steps added)."""
    kept_w = _Buffered(store.ShardWriter(out), shard_rows)
    removed_w = _Buffered(store.ShardWriter(out / REMOVED, records.removed_schema()), shard_rows)
    score_keys = list(rows.scores)
    i = 0
    for batch in store.iter_batches(src, rows.read_rows):
        table = pa.Table.from_batches([batch])
        span = range(i, i + table.num_rows)
        i += table.num_rows
        table = _update_json_columns(table, span, rows, score_keys)
        alive = pa.array([rows.reasons[j] is None for j in span])
        kept_w.add(table.filter(alive))
        gone = table.filter(pc.invert(alive))
        if gone.num_rows:
            reasons = [rows.reasons[j] for j in span if rows.reasons[j] is not None]
            removed_w.add(gone.append_column(pa.field("reason", pa.string()), pa.array(reasons, pa.string())))
    kept_w.close()
    removed_w.close()
    return kept_w.writer.rows_written


def _update_json_columns(table: pa.Table, span: range, rows: Rows, score_keys: list[str]) -> pa.Table:
    touched = [j for j in span if j in rows.metadata or any(not np.isnan(rows.scores[k][j]) for k in score_keys)]
    if not touched:
        return table
    scores = table.column("scores").to_pylist()
    meta = table.column("metadata").to_pylist()
    for j in touched:
        r = j - span.start
        if any(not np.isnan(rows.scores[k][j]) for k in score_keys):
            d = records.decode_json_column(scores[r])
            d.update({k: float(rows.scores[k][j]) for k in score_keys if not np.isnan(rows.scores[k][j])})
            scores[r] = records.encode_json_column(d, "scores")
        if j in rows.metadata:
            d = records.decode_json_column(meta[r])
            d.update(rows.metadata[j])
            meta[r] = records.encode_json_column(d, "metadata")
    table = table.set_column(table.schema.get_field_index("scores"), "scores", pa.array(scores, pa.string()))
    return table.set_column(table.schema.get_field_index("metadata"), "metadata", pa.array(meta, pa.string()))


class _Buffered:
    """Collects tables and writes shards of `rows` rows."""

    def __init__(self, writer: store.ShardWriter, rows: int):
        self.writer, self.rows, self.parts, self.pending = writer, rows, [], 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.parts.append(table)
        self.pending += table.num_rows
        while self.pending >= self.rows:
            t = pa.concat_tables(self.parts)
            self.writer.write_table(t.slice(0, self.rows))
            rest = t.slice(self.rows)
            self.parts, self.pending = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        if self.pending:
            self.writer.write_table(pa.concat_tables(self.parts))
            self.parts, self.pending = [], 0


def histogram(values: np.ndarray, bins: int = 10) -> dict:
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}


def summarise(rows: Rows, cfg: Config) -> dict:
    counts = Counter(r for r in rows.reasons if r is not None)
    kept = np.array([r is None for r in rows.reasons], bool)
    levels_in = Counter(rows.levels.tolist())
    levels_kept = Counter(rows.levels[kept].tolist())
    score_stats = {}
    for key, vals in rows.scores.items():
        v = vals[~np.isnan(vals)]
        if len(v):
            score_stats[key] = {"count": int(len(v)), "mean": round(float(v.mean()), 4),
                                "min": round(float(v.min()), 4), "max": round(float(v.max()), 4),
                                "histogram": histogram(v)}
    return {
        "input_rows": rows.n,
        "kept": int(kept.sum()),
        "removed": int(rows.n - kept.sum()),
        "removed_by_reason": dict(counts.most_common()),
        "levels_in": {str(k): v for k, v in sorted(levels_in.items())},
        "levels_kept": {str(k): v for k, v in sorted(levels_kept.items())},
        "steps": [s.name for s in cfg.filter.steps],
        "scores": score_stats,
    }


def summary_lines(stats: dict) -> list[str]:
    """The printed summary: counts per reason, score histograms, cluster sizes."""
    lines = [f"kept {stats['kept']} of {stats['input_rows']} ({stats['removed']} removed)"]
    for reason, n in stats["removed_by_reason"].items():
        lines.append(f"  removed {n:>6}  {reason}")
    for key, s in stats.get("scores", {}).items():
        bars = " ".join(str(c) for c in s["histogram"]["counts"])
        lines.append(f"  score {key}: n {s['count']} mean {s['mean']} [{s['min']}, {s['max']}] histogram {bars}")
    for reason, c in stats.get("clusters", {}).items():
        lines.append(f"  {reason} clusters {c['clusters']}, largest {c['largest']}, sizes {c['size_histogram']}")
    for name, d in stats.get("decontamination", {}).items():
        lines.append(f"  eval set {name}: {d['items_hit']} of {d['items']} items hit")
    return lines
