"""The filter stage: run the configured steps and scorers over the generated samples, in order.

Kept rows go to `filter/` in their original (curriculum) order; removed rows go to `filter/removed/`
with the reason code of the first step that rejected them. Rows are never rebuilt: the final pass
filters the generate shards' Arrow batches and replaces only the `scores` and `metadata` columns, so
every kept row's `completion_token_ids` and `topk_*` columns are the generate stage's, byte for byte.

Steps run one after the other over the rows still alive, reading light columns (text, level, no top-k)
`filter.read_rows` at a time:
- row steps (failed, empty, length, repetition, refusal, structured, charset, exact_dedup, decontaminate):
  consecutive ones share one pass;
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
from llmdistill.config import Config
from llmdistill.filter import scorers, steps
from llmdistill.runner import StageContext

log = logging.getLogger("llmdistill")

REMOVED = "removed"
SCORES = "scores"
DECONTAMINATION = "decontamination.json"
LIGHT_COLUMNS = [c for c in records.arrow_schema().names
                 if c not in ("topk_ids", "topk_logprobs", "completion_token_ids")]


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
def run_row_steps(rows: Rows, row_steps: list, out_dir: Path, stats: dict) -> None:
    checks = [steps.implementation(s)(s) for s in row_steps]
    for i, sample in rows.samples():
        for check in checks:
            reason = check(sample)
            if reason is not None:
                rows.remove(i, reason)
                break
    for check in checks:
        if hasattr(check, "report"):
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
    history steps (they add the kept rows at the end) and this run's name in the history index."""

    def __init__(self, rows: Rows, out: Path, owner: str):
        self.rows, self.out, self.owner = rows, out, owner
        self.stats: dict = {}
        self.history: list = []


def _row_pass(run: _Run, group: list) -> None:
    run_row_steps(run.rows, [s for _, s in group], run.out, run.stats)


def _scorer_pass(run: _Run, group: list) -> None:
    (index, step), = group
    run_scorer(run.rows, step, index, run.out, run.stats)


def _corpus_pass(run: _Run, group: list) -> None:
    (_, step), = group
    steps.implementation(step)(run.rows, step, run.stats)


def _history_pass(run: _Run, group: list) -> None:
    (_, step), = group
    h = steps.implementation(step)(step, run.owner)
    h.run(run.rows, run.stats)
    run.history.append(h)


PASSES: dict[str, Callable[[_Run, list], None]] = {
    "row": _row_pass, "scorer": _scorer_pass, "corpus": _corpus_pass, "history": _history_pass}


def run(cfg: Config, ctx: StageContext) -> None:
    src = ctx.upstream_dir
    store.require_complete(src)
    manifest = store.read_manifest(src)
    out = ctx.out_dir
    # the kept/removed shards are redone from scratch; committed scores (filter/scores/) are reused
    for path in store.list_shards(out) + store.list_shards(out / REMOVED):
        path.unlink()
    (out / DECONTAMINATION).unlink(missing_ok=True)
    rows = Rows(src, cfg.filter.read_rows)
    state = _Run(rows, out, owner=f"{ctx.run_dir.resolve()}@{ctx.fingerprint}")
    for kind, group in plan_passes(cfg.filter.steps):
        before = sum(r is None for r in rows.reasons)
        names = "+".join(s.name for _, s in group)
        PASSES[kind](state, group)
        after = sum(r is None for r in rows.reasons)
        log.info("filter: %s removed %d (%d left)", names, before - after, after)
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
