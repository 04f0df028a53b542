"""The filter stage: run the configured steps over the generated samples, in order.

Kept rows go to `filter/` in their original (curriculum) order with their top-k columns untouched;
removed rows go to `filter/removed/` with the reason code of the first step that rejected them.
Nothing disappears without a count: stats.json holds counts per reason and per level.
"""

from __future__ import annotations

import logging
from collections import Counter

from tqdm.auto import tqdm

from llmdistill import __version__, records, store
from llmdistill.config import Config
from llmdistill.filter.filters import build_steps
from llmdistill.pipeline import StageContext

log = logging.getLogger("llmdistill")

REMOVED = "removed"


def run(cfg: Config, ctx: StageContext) -> None:
    src = ctx.upstream_dir
    store.require_complete(src)
    manifest = store.read_manifest(src)
    # filtering is cheap: an interrupted attempt is redone from scratch rather than resumed
    for path in store.list_shards(ctx.out_dir) + store.list_shards(ctx.out_dir / REMOVED):
        path.unlink()
    steps = build_steps(cfg.filter.steps)
    kept_writer = store.ShardWriter(ctx.out_dir)
    removed_writer = store.ShardWriter(ctx.out_dir / REMOVED, records.removed_schema())
    shard_rows = cfg.generate.shard_rows
    kept: list[records.Sample] = []
    removed: list[records.Sample] = []
    reasons: list[str] = []
    counts: Counter = Counter()
    levels_in, levels_kept = Counter(), Counter()
    total = manifest["counts"]["rows"]
    for sample in tqdm(store.iter_samples(src), total=total, desc="filter", unit="sample"):
        levels_in[sample.level] += 1
        reason = next((r for r in (check(sample) for _, check in steps) if r is not None), None)
        if reason is None:
            kept.append(sample)
            levels_kept[sample.level] += 1
            if len(kept) >= shard_rows:
                kept_writer.write(kept)
                kept = []
        else:
            counts[reason] += 1
            removed.append(sample)
            reasons.append(reason)
            if len(removed) >= shard_rows:
                removed_writer.write(removed, reasons)
                removed, reasons = [], []
    if kept:
        kept_writer.write(kept)
    if removed:
        removed_writer.write(removed, reasons)
    n_in = sum(levels_in.values())
    n_kept = kept_writer.rows_written
    stats = {
        "input_rows": n_in,
        "kept": n_kept,
        "removed": n_in - n_kept,
        "removed_by_reason": dict(counts.most_common()),
        "levels_in": {str(k): v for k, v in sorted(levels_in.items())},
        "levels_kept": {str(k): v for k, v in sorted(levels_kept.items())},
        "steps": [name for name, _ in steps],
    }
    if n_kept == 0:
        log.warning("filter: every sample was removed (%s)", stats["removed_by_reason"])
    store.atomic_write_json(ctx.out_dir / store.STATS, stats)
    store.write_manifest(
        ctx.out_dir,
        {**manifest, "stage": "filter", "fingerprint": ctx.fingerprint, "llmdistill_version": __version__,
         "upstream": {manifest["stage"]: manifest["fingerprint"]},
         "counts": {"rows": n_kept, "removed": n_in - n_kept, "levels": stats["levels_kept"]}},
    )
    summary = ", ".join(f"{k} {v}" for k, v in counts.most_common()) or "none"
    log.info("filter: kept %d of %d (removed: %s) -> %s", n_kept, n_in, summary, ctx.out_dir)
