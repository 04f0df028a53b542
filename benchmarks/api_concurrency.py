"""API teacher concurrency: generation throughput against an OpenAI-shaped server with 200 ms latency.

Goals checked: with 64 requests in flight the openai backend reaches at least 85 % of the ideal
throughput 64 / latency, with 256 at least 70 %, and a reply of 32 tokens x top-20 costs the client at
most 1.5 ms of CPU (the server adds `--latency` seconds to every reply, so a client that keeps c
requests in flight can at best finish c / latency requests per second). Concurrency 1 and 8 are
reported beside them, and, as the baseline in the same run, the same requests at 64 in flight read
into the openai package's pydantic objects (`chat.completions.create`). Every request carries
logprobs with top-20 alternatives, mapped to ids through the SmolLM2 tokenizer (the demo teacher's;
a tiny tokenizer when that model is not cached), so the measured time includes reading replies and
mapping tokens, not only waiting.

The server (tests/fakeopenai.py) runs in its own process; the client is the real backend
(`OpenAITeacher.generate` on one batch of requests, request cache off so every request is sent), after a
first wave of as many requests as will be in flight (imports, client processes, every connection opened:
what a run pays once), so the measured window is the steady state. The server's CPU per request is
reported beside the client's (both share the machine's cores).

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
    # every reply exactly max_new_tokens long (--stop-prob 0), served from 64 prepared bodies (--canned): the
    # server spends next to no CPU, so on a small machine the client's cost is what is measured
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fakeopenai.py"), "--tokenizer", str(tok),
                             "--latency", str(latency), "--stop-prob", "0", "--canned", "64"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"fake server did not start: {line!r}")
    return proc, int(line.split()[1])


def _cpu_s(pids) -> float:
    """User + system CPU seconds of other processes so far (their /proc/<pid>/stat)."""
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(tok: Path, port: int, server_pid: int, concurrency: int, requests: int, max_new_tokens: int,
            topk: int, processes: int = 1) -> dict:
    from llmdistill.config import TeacherConfig
    from llmdistill.teachers import Sampling
    from llmdistill.teachers.api import OpenAITeacher

    tcfg = TeacherConfig(model=str(tok), backend="openai",
                         api={"base_url": f"http://127.0.0.1:{port}/v1", "served_model": "bench", "api_key_env": None,
                              "max_concurrency": concurrency, "cache": False, "token_mapping": "tokenizer",
                              "client_processes": processes})
    sampling = Sampling(max_new_tokens=max_new_tokens, topk=topk, temperature=0.7, top_p=1.0, logprob_mode="raw",
                        too_long="skip")
    teacher = OpenAITeacher(tcfg, sampling)
    # client, imports, the client processes and every connection: one full wave of `concurrency` requests first,
    # so the measured window is the steady state (opening hundreds of connections happens once per run)
    teacher.generate([[{"role": "user", "content": f"warm up {i}"}] for i in range(max(concurrency, processes))],
                     seed=0)
    held = teacher._held.workers  # the client processes, if any
    workers = list(held.pool._processes) if held is not None else []
    prompts = [[{"role": "user", "content": f"benchmark prompt {i}: tell me about rivers"}] for i in range(requests)]
    cpu0, started, wcpu0, scpu0 = time.process_time(), time.perf_counter(), _cpu_s(workers), _cpu_s([server_pid])
    results = teacher.generate(prompts, seed=concurrency)
    seconds = time.perf_counter() - started
    cpu_ms = (time.process_time() - cpu0 + _cpu_s(workers) - wcpu0) * 1000 / requests  # every client process
    server_ms = (_cpu_s([server_pid]) - scpu0) * 1000 / requests
    usage = teacher._usage()
    teacher.close()
    failed = sum(r.error is not None for r in results)
    tokens = sum(len(r.token_ids or ()) for r in results)
    return {"concurrency": concurrency, "client_processes": processes, "requests": requests,
            "seconds": round(seconds, 3), "failed": failed,
            "completion_tokens": tokens, "requests_per_s": round(requests / seconds, 2),
            "client_cpu_ms_per_request": round(cpu_ms, 2), "server_cpu_ms_per_request": round(server_ms, 2),
            "attempts": usage["attempts"] - max(concurrency, processes), "retries": usage["retries"]}


def measure_pydantic(port: int, concurrency: int, requests: int, max_new_tokens: int, topk: int) -> dict:
    """The same requests through `client.chat.completions.create` (one client, replies read into the
    openai package's pydantic objects, no token mapping): the path the backend used to take."""
    import asyncio

    import openai

    async def run() -> tuple[float, float]:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int):
            async with sem:
                messages = [{"role": "user", "content": f"benchmark prompt {i}: tell me about rivers"}]
                r = await client.chat.completions.create(
                    model="bench", messages=messages,
                    max_tokens=max_new_tokens, logprobs=True, top_logprobs=topk, temperature=0.7, seed=i)
                return len(r.choices[0].logprobs.content)

        await asyncio.gather(*[one(-1 - i) for i in range(concurrency)])  # a full wave first, as for the backend
        cpu0, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*[one(i) for i in range(requests)])
        out = time.perf_counter() - started, (time.process_time() - cpu0) * 1000 / requests
        await client.close()
        return out

    seconds, cpu_ms = asyncio.run(run())
    return {"concurrency": concurrency, "requests": requests, "seconds": round(seconds, 3),
            "requests_per_s": round(requests / seconds, 2), "client_cpu_ms_per_request": round(cpu_ms, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--rounds", type=int, default=6, help="requests per slot: c * rounds requests per setting")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--topk", type=int, default=20)
    ap.add_argument("--processes", type=lambda v: [int(x) for x in v.split(",") if x], default=[2],
                    help="client_processes settings also run at 64 and 256 in flight (comma-separated)")
    args = ap.parse_args()
    tok = tokenizer_dir()
    proc, port = start_server(tok, args.latency)
    rows = []
    try:
        for c, p in [(1, 1), (8, 1), (64, 1), (256, 1)] + [(c, p) for c in (64, 256) for p in args.processes]:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/reset", method="POST")).read()
            row = measure(tok, port, proc.pid, c, c * args.rounds, args.max_new_tokens, args.topk, p)
            stats = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats"))
            row["server_max_in_flight"] = stats["max_in_flight"]
            row["ideal_requests_per_s"] = round(c / args.latency, 2)
            row["fraction_of_ideal"] = round(row["requests_per_s"] / row["ideal_requests_per_s"], 3)
            rows.append(row)
        # the baseline in the same run: the openai package's own objects, 64 in flight
        base = measure_pydantic(port, 64, 64 * args.rounds, args.max_new_tokens, args.topk)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"API concurrency: fake OpenAI server, {args.latency * 1000:.0f} ms latency, {args.max_new_tokens} new "
          f"tokens, top-{args.topk} logprobs, tokenizer {tok.name}, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print(f"{'concurrency':>11} {'processes':>9} {'requests':>8} {'seconds':>8} {'req/s':>8} {'ideal':>8} "
          f"{'of ideal':>8} {'in flight':>9} {'client CPU ms/req':>17} {'server CPU ms/req':>17} {'failed':>6}")
    for r in rows:
        print(f"{r['concurrency']:>11} {r['client_processes']:>9} {r['requests']:>8} {r['seconds']:>8.2f} "
              f"{r['requests_per_s']:>8.1f} "
              f"{r['ideal_requests_per_s']:>8.1f} {r['fraction_of_ideal']:>8.1%} "
              f"{r['server_max_in_flight']:>9} {r['client_cpu_ms_per_request']:>17.2f} "
              f"{r['server_cpu_ms_per_request']:>17.2f} {r['failed']:>6}")
    print(f"baseline, openai package objects (chat.completions.create), 64 in flight: "
          f"{base['requests_per_s']:.1f} req/s, {base['client_cpu_ms_per_request']:.2f} client CPU ms/req")
    by_c = {}  # the best setting at each concurrency
    for r in rows:
        if r["concurrency"] not in by_c or r["fraction_of_ideal"] > by_c[r["concurrency"]]["fraction_of_ideal"]:
            by_c[r["concurrency"]] = r
    claimed = {"64 in flight >= 85 % of ideal": by_c[64]["fraction_of_ideal"] >= 0.85,
               "256 in flight >= 70 % of ideal": by_c[256]["fraction_of_ideal"] >= 0.70,
               "client CPU <= 1.5 ms per request (every row)":
                   all(r["client_cpu_ms_per_request"] <= 1.5 for r in rows)}
    # beside them, not counted in claim_met, where the client's CPU is what limits throughput: at 1 and 8 in
    # flight the process sleeps ~200 ms between replies and the same read costs several times more on a cold core
    goals = {**claimed, "client CPU <= 1.5 ms per request (64 and 256 in flight)":
             all(r["client_cpu_ms_per_request"] <= 1.5 for r in rows if r["concurrency"] >= 64)}
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'NOT met'}")
    one = next(r for r in rows if r["concurrency"] == 64 and r["client_processes"] == 1)
    cpu_ratio = round(one["client_cpu_ms_per_request"] / base["client_cpu_ms_per_request"], 3)
    print(f"client CPU per request at 64 in flight (one process) vs the baseline: {cpu_ratio:.2f}x")
    ok = all(claimed.values())
    out = OUT if args.latency == 0.2 else OUT.with_name(f"api_concurrency_latency{args.latency:g}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"latency_s": args.latency, "load_average": round(os.getloadavg()[0], 1),
                               "cpu_count": os.cpu_count(), "max_new_tokens": args.max_new_tokens, "topk": args.topk,
                               "tokenizer": tok.name, "rows": rows,
                               "baseline_openai_objects": base, "client_cpu_ratio_vs_baseline_at_64": cpu_ratio,
                               "goals": goals, "claim_met": ok}, indent=2) + "\n")


if __name__ == "__main__":
    main()
