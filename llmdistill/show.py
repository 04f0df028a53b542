"""`llmdistill inspect`: what a run did, and what its datasets hold (with removal reasons)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from llmdistill import records, store
from llmdistill.errors import UserError
from llmdistill.runner import STAGES


def inspect_path(path: Path, n: int = 3, removed: bool = False, sample_id: str | None = None,
                 reason: str | None = None) -> None:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    console = Console()
    if any((path / s).is_dir() for s in STAGES) and not store.list_shards(path):
        show_run(console, path)
        dataset = path / "filter" if (path / "filter").is_dir() else path / "generate"
        if not dataset.is_dir():
            return
    else:
        dataset = path
    if removed or reason:
        dataset = dataset / "removed" if (dataset / "removed").is_dir() else dataset
        shards = store.list_shards(dataset)
        if not shards or "reason" not in store.read_shard(shards[0]).schema.names:
            raise UserError(f"{dataset} holds no removed rows (give a run directory or its filter/ directory)")
        show_reasons(console, dataset)
    show_samples(console, dataset, n, sample_id, reason)


def show_reasons(console: Console, dataset: Path) -> None:
    """Counts of removed rows per reason (reason prefixes such as contamination:* match with --reason)."""
    from collections import Counter

    counts = Counter(r for p in store.list_shards(dataset) for r in store.read_shard(p, ["reason"]).column(
        "reason").to_pylist())
    table = Table(title=f"removed rows in {dataset}")
    table.add_column("reason")
    table.add_column("rows", justify="right")
    for r, c in counts.most_common():
        table.add_row(r, str(c))
    console.print(table)


def show_run(console: Console, run_dir: Path) -> None:
    table = Table(title=f"run {run_dir}")
    for col in ("stage", "status", "seconds", "summary"):
        table.add_column(col)
    for stage in STAGES:
        d = run_dir / stage
        if stage == "annotate" and not d.is_dir():
            continue  # an optional stage this run does not use
        info = store.read_success(d)
        status = "done" if info else ("started" if (d / "_STARTED").exists() else "-")
        summary = ""
        if (d / store.STATS).exists():
            stats = store.read_json(d / store.STATS)
            if stage == "annotate":
                summary = f"{stats['rows']} rows, {stats['failed']} failed, this attempt {stats['this_attempt']}"
            elif stage == "generate":
                summary = f"{stats['rows']} samples, finish {stats['finish_reasons']}, levels {stats['levels']}"
            elif stage == "filter":
                summary = f"kept {stats['kept']} of {stats['input_rows']}; removed {stats['removed_by_reason']}"
        elif stage == "train" and (d / "metrics.json").exists():
            m = store.read_json(d / "metrics.json")
            summary = "; ".join(f"{k}: {v['steps']} steps, loss {v['train_loss']}" for k, v in m.items())
        elif stage == "eval" and (d / "metrics.json").exists():
            m = store.read_json(d / "metrics.json")["models"]
            summary = "; ".join(f"{k}: KL {v['kl_to_teacher']:.3f}, agree {v['top1_agreement']:.3f}"
                                for k, v in m.items() if k != "teacher")
        table.add_row(stage, status, str(info["seconds"]) if info else "", summary)
    console.print(table)


def show_samples(console: Console, dataset: Path, n: int, sample_id: str | None, reason: str | None = None) -> None:
    shown = 0
    for path in store.list_shards(dataset):
        table = store.read_shard(path)
        rows = table.to_pylist()
        for row in rows:
            if sample_id and not row["id"].startswith(sample_id):
                continue
            if reason and not (row.get("reason") == reason or (row.get("reason") or "").startswith(reason + ":")):
                continue
            _print_row(console, row)
            shown += 1
            if shown >= n:
                return
    if shown == 0:
        what = " ".join(x for x in (sample_id and f"id {sample_id}", reason and f"reason {reason}") if x)
        console.print(f"no samples{' matching ' + what if what else ''} in {dataset}")


def _print_row(console: Console, row: dict) -> None:
    head = f"[bold]{row['id'][:16]}[/bold]  level {row['level']}  source {row['source']}  finish {row['finish_reason']}"
    if row.get("reason"):
        head += f"  [red]removed: {row['reason']}[/red]"
    if row.get("difficulty") is not None:
        head += f"  difficulty {row['difficulty']:.2f}"
    console.print(head)
    for m in row["messages"]:
        console.print(f"  [cyan]{m['role']}[/cyan]: {_clip(m['content'])}", markup=True, highlight=False)
    console.print(f"  [green]completion[/green]: {_clip(row['completion'] or '<none: ' + str(row['error']) + '>')}",
                  highlight=False)
    ids = row["completion_token_ids"] or []
    topk = row["topk_ids"] or []
    lps = row["topk_logprobs"] or []
    if topk:
        first = ", ".join(f"{i}:{lp:.2f}" for i, lp in zip(topk[0][:5], lps[0][:5]))
        console.print(f"  tokens {len(ids)}, top-{len(topk[0])} log-probs per token; step 0 top-5 {first}",
                      highlight=False)
    scores = records.decode_json_column(row["scores"])
    if scores:
        console.print(f"  scores {scores}", highlight=False)
    meta = {k: v for k, v in records.decode_json_column(row["metadata"]).items() if k.endswith("_of")}
    if meta:
        console.print(f"  {', '.join(f'{k} {v[:16]}' for k, v in meta.items())}", highlight=False)
    console.print()


def _clip(text: str, width: int = 300) -> str:
    text = text.replace("\n", " ⏎ ")
    return text if len(text) <= width else text[: width - 1] + "…"
