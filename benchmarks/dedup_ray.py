"""Filtering on Ray: wall time and peak memory of the filter stage for N documents, local vs 1 and 2 Ray workers,
and whether the Ray runs' decisions equal the local run's.

The corpus is real text: documents of three tweets each (data/sentiment, all four files: 19k distinct tweets
nobody here wrote), drawn at random, plus 10 % near-duplicates (one word in 40 replaced by a word of other
tweets) and 1 % exact copies (upper-cased, doubled spaces). It is written as a generate stage's output
(Parquet shards of 4,096 rows, or --shard-rows). Each mode runs the filter stage in a fresh process (`--child`)
on its own run directory (the generate shards are hard links of one copy):

    local   filter.executor: local (everything in one process)
    ray-1   filter.executor: ray on a local cluster started with 1 CPU (one part task at a time)
    ray-2   the same with 2 CPUs (two part tasks at once)

Steps: length (min 3 words), refusal, exact_dedup, near_dedup (threshold 0.8, 128 permutations, 16 bands); with
--semantic, semantic_dedup alone (MiniLM embeddings: the map is nearly all the work, so it shows the scaling). The
driver's peak is its process's maximum RSS; a worker's is the largest maximum RSS any part task reported
(filter/.ray/usage.json). "equal" compares the kept and removed tables (every column: ids, reasons, metadata,
logits), the output shards and stats.json with the local run's.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/dedup_ray.py --docs 200000
    flock /tmp/cpu.lock .venv/bin/python benchmarks/dedup_ray.py --docs 1000 --shard-rows 250 --part-rows 250 --semantic
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "benchmarks" / "results" / "dedup_ray.json"
SHARD_ROWS = int(os.environ.get("DEDUP_RAY_SHARD_ROWS", 4096))  # the generate shards (--shard-rows sets it)
MODES = {"local": 0, "ray-1": 1, "ray-2": 2}
STEPS = [{"name": "length", "min_words": 3}, {"name": "refusal"}, {"name": "exact_dedup"},
         {"name": "near_dedup", "threshold": 0.8}]
SEMANTIC = [{"name": "semantic_dedup", "threshold": 0.95}]  # --semantic: the embedding map (MiniLM, all-minilm-l6-v2)


def tweets() -> list[str]:
    seen, out = set(), []
    for name in ("train", "val", "test", "unlabelled"):
        for line in (REPO / "data" / "sentiment" / f"{name}.jsonl").open(encoding="utf-8"):
            t = json.loads(line)["text"]
            if t not in seen:
                seen.add(t)
                out.append(t)
    return out


def documents(n: int, seed: int = 0) -> list[str]:
    """n documents: ~89 % three random tweets, 10 % near-duplicates of earlier ones, 1 % exact copies."""
    rng = np.random.default_rng(seed)
    tw = tweets()
    words = np.array(" ".join(tw).split())
    n_near, n_exact = n // 10, n // 100
    n_orig = n - n_near - n_exact
    picks = rng.integers(0, len(tw), size=(n_orig, 3))
    docs = [" ".join(tw[j] for j in row) for row in picks.tolist()]
    for src in rng.integers(0, n_orig, size=n_near).tolist():
        w = docs[src].split()
        at = rng.choice(len(w), size=max(1, len(w) // 40), replace=False)
        for i, r in zip(at.tolist(), rng.integers(0, len(words), size=len(at)).tolist()):
            w[i] = str(words[r])
        docs.append(" ".join(w))
    for src in rng.integers(0, n_orig, size=n_exact).tolist():
        docs.append("  ".join(docs[src].upper().split(" ")))
    order = rng.permutation(len(docs))
    return [docs[i] for i in order]


def config(work: Path, mode: str, part_rows: int):
    from llmdistill.config import load_config

    steps = json.loads((work / "steps.json").read_text())
    return load_config(None, [f"output_dir={work}", f"name={mode}", f"generate.shard_rows={SHARD_ROWS}",
                              f"filter.steps={json.dumps(steps)}", f"filter.part_rows={part_rows}",
                              f"filter.executor={'ray' if MODES[mode] else 'local'}"])


def build(work: Path, n: int, part_rows: int) -> None:
    """The generate output of every mode's run directory (one copy, hard-linked)."""
    from llmdistill import records, store
    from llmdistill.pipeline import fingerprints

    first = None
    for mode in MODES:
        cfg = config(work, mode, part_rows)
        out = cfg.run_dir / "generate"
        if first is None:
            w = store.ShardWriter(out)
            ids = np.array([1, 2], np.int32)
            topk, lps = np.array([[1], [2]], np.int32), np.array([[-0.1], [-0.2]], np.float16)
            docs = documents(n)
            for i in range(0, n, SHARD_ROWS):
                w.write([records.Sample(id=f"{j:08d}", prompt_id=f"p{j}", messages=[{"role": "user", "content": "q"}],
                                        completion=d, source="bench", teacher="t", gen={}, finish_reason="stop",
                                        level=1 + j % 3, completion_token_ids=ids, topk_ids=topk, topk_logprobs=lps)
                         for j, d in enumerate(docs[i: i + SHARD_ROWS], start=i)])
            first = out
        else:
            out.mkdir(parents=True)
            for p in store.list_shards(first):
                os.link(p, out / p.name)
        fp = fingerprints(cfg)["generate"]
        store.write_manifest(out, {"fingerprint": fp, "counts": {"rows": n}, "topk": 1})
        store.mark_success(out, {"stage": "generate", "fingerprint": fp, "seconds": 0.0})


def child(work: Path, mode: str, part_rows: int) -> None:
    """One filter stage run; prints its wall time and peak memory as JSON."""
    from llmdistill import store
    from llmdistill.pipeline import run_stages

    cfg = config(work, mode, part_rows)
    if MODES[mode]:
        import ray

        ray.init(num_cpus=MODES[mode], include_dashboard=False, log_to_driver=False)
    started = time.monotonic()
    run_stages(cfg, ("filter",), standalone=True, force={"filter"})
    wall = time.monotonic() - started
    out = cfg.run_dir / "filter"
    usage = store.read_json(out / ".ray" / "usage.json")["passes"] if MODES[mode] else []
    print(json.dumps({"wall_s": round(wall, 2), "driver_peak_mb": round(resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "worker_peak_mb": max((p["worker_max_rss_mb"] for p in usage),
                                                                          default=None),
        "passes": [{k: p[k] for k in ("pass", "parts", "seconds", "worker_max_rss_mb")} for p in usage]}))


def decisions(work: Path, mode: str, part_rows: int) -> dict:
    from llmdistill import store

    out = config(work, mode, part_rows).run_dir / "filter"
    return {"kept": store.read_table(out), "removed": store.read_table(out / "removed"),
            "shards": [p.name for p in store.list_shards(out) + store.list_shards(out / "removed")],
            "stats": store.read_json(out / "stats.json")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--part-rows", type=int, default=16384)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--shard-rows", type=int, default=SHARD_ROWS, help="rows per input shard (a part is whole shards)")
    ap.add_argument("--semantic", action="store_true", help="semantic dedup alone (MiniLM embeddings on every part)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.work, args.child, args.part_rows)
        return
    if args.shard_rows != SHARD_ROWS:  # this process and the children read it at import
        os.environ["DEDUP_RAY_SHARD_ROWS"] = str(args.shard_rows)
        raise SystemExit(subprocess.run([sys.executable, *sys.argv]).returncode)
    work = Path(tempfile.mkdtemp(prefix="dedup_ray_", dir="/tmp"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO)}
    steps = SEMANTIC if args.semantic else STEPS
    (work / "steps.json").write_text(json.dumps(steps))
    try:
        t = time.monotonic()
        build(work, args.docs, args.part_rows)
        print(f"corpus: {args.docs} documents written in {time.monotonic() - t:.0f} s", flush=True)
        rows = []
        for mode in args.modes.split(","):
            res = subprocess.run([sys.executable, __file__, "--child", mode, "--work", str(work), "--docs",
                                  str(args.docs), "--part-rows", str(args.part_rows)], env=env, capture_output=True,
                                 text=True)
            if res.returncode:
                raise SystemExit(f"{mode} failed:\n{res.stderr[-3000:]}")
            rows.append({"mode": mode, "workers": MODES[mode], **json.loads(res.stdout.strip().splitlines()[-1])})
            print(mode, rows[-1], flush=True)
        reference = decisions(work, "local", args.part_rows) if "local" in args.modes.split(",") else None
        for row in rows:
            d = decisions(work, row["mode"], args.part_rows)
            row["kept"], row["removed_by_reason"] = d["kept"].num_rows, d["stats"]["removed_by_reason"]
            if reference is not None:
                row["equal_to_local"] = (d["kept"].equals(reference["kept"])
                                         and d["removed"].equals(reference["removed"])
                                         and d["shards"] == reference["shards"] and d["stats"] == reference["stats"])
        load = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    n_parts = max((p["parts"] for r in rows for p in r["passes"]), default="?")
    print(f"\n{args.docs} documents, {n_parts} parts (whole shards of {SHARD_ROWS}, >= {args.part_rows} rows each); "
          f"steps: {', '.join(s['name'] for s in steps)}; load average {load[0]:.1f}")
    print(f"{'mode':<7} {'wall s':>7} {'docs/s':>7} {'driver peak MB':>15} {'worker peak MB':>15} {'kept':>8}  equal")
    for r in rows:
        print(f"{r['mode']:<7} {r['wall_s']:>7.1f} {args.docs / r['wall_s']:>7.0f} {r['driver_peak_mb']:>15.0f} "
              f"{r['worker_peak_mb'] or 0:>15.0f} {r['kept']:>8}  {r.get('equal_to_local', '-')}")
    out = OUT.with_name("dedup_ray_semantic.json") if args.semantic else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"docs": args.docs, "shard_rows": SHARD_ROWS, "part_rows": args.part_rows,
                               "parts": n_parts, "steps": steps,
                               "cpus": os.cpu_count(),
                               "load_average": load, "runs": rows}, indent=1) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
