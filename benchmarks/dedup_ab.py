"""Before/after timing of near dedup: two checkouts of llmdistill, alternated in one session.

Each round runs, for the old tree and then the new one, a child process with that tree first on
PYTHONPATH which imports the tree's own `benchmarks/dedup_near.py` and times its `run_ours` (what the
dedup_near benchmark measures for ours, datasketch left out) on one corpus: `synthetic` is that
benchmark's corpus (ASCII), `tweets` the 19,000 real tweets of data/sentiment four times over, and
`tweets-edited` the tweets plus a typographically edited copy of each (no-break and thin spaces, curly
apostrophes, em dashes), twice over. CPU time (`time.process_time`, steady on a shared machine) and wall
time are the best of `--repeat` runs in the child; the table gives the mean over rounds and new / old.

    .venv/bin/python benchmarks/dedup_ab.py --old /work/main --new . [--corpus synthetic] [--docs 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, os, sys, time
tree, corpus, docs, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, os.path.join(tree, "benchmarks"))
import dedup_near
import llmdistill
assert os.path.realpath(llmdistill.__file__).startswith(os.path.realpath(tree)), llmdistill.__file__
if corpus == "synthetic":
    texts, _ = dedup_near.make_corpus(docs)
else:
    data = os.path.join(tree, "data", "sentiment")
    tw = [json.loads(line)["text"] for f in ("train", "unlabelled", "val", "test")
          for line in open(os.path.join(data, f + ".jsonl"), encoding="utf-8")]
    if corpus == "tweets":
        texts = tw * 4
    else:
        edits = ([t.replace(" ", "\u00a0") for t in tw[::4]] + [t.replace("'", "\u2019") for t in tw[1::4]]
                 + [t.replace(" ", "\u2009") for t in tw[2::4]] + [t.replace(" - ", " \u2014 ") for t in tw[3::4]])
        texts = (tw + edits) * 2
cpu, wall = [], []
for _ in range(repeat):
    c, w = time.process_time(), time.perf_counter()
    out = dedup_near.run_ours(texts)
    cpu.append(time.process_time() - c)
    wall.append(time.perf_counter() - w)
pairs = out[0] if isinstance(out, tuple) else out
print(json.dumps({"texts": len(texts), "cpu_s": min(cpu), "wall_s": min(wall), "pairs": len(pairs)}))
"""


def run_child(tree: Path, corpus: str, docs: int, repeat: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tree), corpus, str(docs), str(repeat)], env=env, cwd=tree,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{tree}: the timing child failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="the checkout before the change")
    ap.add_argument("--new", type=Path, required=True, help="the checkout after it")
    ap.add_argument("--corpus", choices=["synthetic", "tweets", "tweets-edited"], default="synthetic")
    ap.add_argument("--docs", type=int, default=100_000, help="synthetic corpus size")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2, help="runs per child (the best one counts)")
    args = ap.parse_args()
    res: dict[str, list[dict]] = {"old": [], "new": []}
    for r in range(args.rounds):
        for side in ("old", "new"):
            row = run_child(getattr(args, side).resolve(), args.corpus, args.docs, args.repeat)
            res[side].append(row)
            print(f"round {r + 1} {side}: {row['texts']} texts  cpu {row['cpu_s']:.2f} s  wall {row['wall_s']:.2f} s"
                  f"  pairs {row['pairs']}", flush=True)
    mean = {side: {k: sum(x[k] for x in rows) / len(rows) for k in ("cpu_s", "wall_s")} for side, rows in res.items()}
    print(f"\n{args.corpus}: mean cpu old {mean['old']['cpu_s']:.2f} s, new {mean['new']['cpu_s']:.2f} s "
          f"(new / old {mean['new']['cpu_s'] / mean['old']['cpu_s']:.3f}); wall old {mean['old']['wall_s']:.2f} s, "
          f"new {mean['new']['wall_s']:.2f} s ({mean['new']['wall_s'] / mean['old']['wall_s']:.3f}); pairs old "
          f"{res['old'][0]['pairs']}, new {res['new'][0]['pairs']}")


if __name__ == "__main__":
    main()
