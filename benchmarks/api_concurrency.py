"""API teacher concurrency: generation throughput against an OpenAI-shaped server with 200 ms latency.

Claim checked: with 64 requests in flight, the openai backend reaches at least 85 % of the ideal
throughput 64 / latency (the server adds `--latency` seconds to every reply, so a client that keeps c
requests in flight can at best finish c / latency requests per second). Concurrency 1 and 8 are
reported beside it. Every request carries logprobs with top-20 alternatives, mapped to ids through the
SmolLM2 tokenizer (the demo teacher's; a tiny tokenizer when that model is not cached), so the
measured time includes reading replies and mapping tokens, not only waiting.

The server (tests/fakeopenai.py) runs in its own process; the client is the real backend
(`OpenAITeacher.generate` on one batch of requests, request cache off so every request is sent).

    .venv/bin/python benchmarks/api_concurrency.py [--latency 0.2] [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
OUT = ROOT / "results" / "api_concurrency.json"


def tokenizer_dir() -> Path:
    from llmdistill import models

    smol = models.cache_dir() / "models" / "smollm2-135m-instruct"
    if (smol / "tokenizer.json").exists():
        return smol
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tokenizer

    path = Path(tempfile.mkdtemp()) / "tok"
    build_tokenizer(path)
    return path


def start_server(tok: Path, latency: float) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fakeopenai.py"), "--tokenizer", str(tok),
                             "--latency", str(latency)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"fake server did not start: {line!r}")
    return proc, int(line.split()[1])


def measure(tok: Path, port: int, concurrency: int, requests: int, max_new_tokens: int, topk: int) -> dict:
    from llmdistill.config import TeacherConfig
    from llmdistill.teachers import Sampling
    from llmdistill.teachers.api import OpenAITeacher

    tcfg = TeacherConfig(model=str(tok), backend="openai",
                         api={"base_url": f"http://127.0.0.1:{port}/v1", "served_model": "bench", "api_key_env": None,
                              "max_concurrency": concurrency, "cache": False, "token_mapping": "tokenizer"})
    sampling = Sampling(max_new_tokens=max_new_tokens, topk=topk, temperature=0.7, top_p=1.0, logprob_mode="raw",
                        too_long="skip")
    teacher = OpenAITeacher(tcfg, sampling)
    teacher.generate([[{"role": "user", "content": "warm up"}]], seed=0)  # client, connection, imports
    prompts = [[{"role": "user", "content": f"benchmark prompt {i}: tell me about rivers"}] for i in range(requests)]
    cpu0, started = time.process_time(), time.perf_counter()
    results = teacher.generate(prompts, seed=concurrency)
    seconds = time.perf_counter() - started
    cpu_ms = (time.process_time() - cpu0) * 1000 / requests
    usage = teacher.meter.as_dict()
    teacher.close()
    failed = sum(r.error is not None for r in results)
    tokens = sum(len(r.token_ids or ()) for r in results)
    return {"concurrency": concurrency, "requests": requests, "seconds": round(seconds, 3), "failed": failed,
            "completion_tokens": tokens, "requests_per_s": round(requests / seconds, 2),
            "client_cpu_ms_per_request": round(cpu_ms, 2),
            "attempts": usage["attempts"] - 1, "retries": usage["retries"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--rounds", type=int, default=6, help="requests per slot: c * rounds requests per setting")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--topk", type=int, default=20)
    args = ap.parse_args()
    tok = tokenizer_dir()
    proc, port = start_server(tok, args.latency)
    rows = []
    try:
        for c in (1, 8, 64):
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/reset", method="POST")).read()
            row = measure(tok, port, c, c * args.rounds, args.max_new_tokens, args.topk)
            stats = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats"))
            row["server_max_in_flight"] = stats["max_in_flight"]
            row["ideal_requests_per_s"] = round(c / args.latency, 2)
            row["fraction_of_ideal"] = round(row["requests_per_s"] / row["ideal_requests_per_s"], 3)
            rows.append(row)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"API concurrency: fake OpenAI server, {args.latency * 1000:.0f} ms latency, {args.max_new_tokens} new "
          f"tokens, top-{args.topk} logprobs, tokenizer {tok.name}, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print(f"{'concurrency':>11} {'requests':>8} {'seconds':>8} {'req/s':>8} {'ideal':>8} {'of ideal':>8} "
          f"{'in flight':>9} {'client CPU ms/req':>17} {'failed':>6}")
    for r in rows:
        print(f"{r['concurrency']:>11} {r['requests']:>8} {r['seconds']:>8.2f} {r['requests_per_s']:>8.1f} "
              f"{r['ideal_requests_per_s']:>8.1f} {r['fraction_of_ideal']:>8.1%} "
              f"{r['server_max_in_flight']:>9} {r['client_cpu_ms_per_request']:>17.2f} {r['failed']:>6}")
    ok = rows[-1]["fraction_of_ideal"] >= 0.85
    print(f"claim (64 in flight >= 85 % of ideal): {'met' if ok else 'NOT met'}")
    out = OUT if args.latency == 0.2 else OUT.with_name(f"api_concurrency_latency{args.latency:g}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"latency_s": args.latency, "load_average": round(os.getloadavg()[0], 1),
                               "cpu_count": os.cpu_count(), "max_new_tokens": args.max_new_tokens, "topk": args.topk,
                               "tokenizer": tok.name, "rows": rows, "claim_met": ok}, indent=2) + "\n")


if __name__ == "__main__":
    main()
