"""serve-bert under load: requests/s and p50/p99 latency at 1, 8, 32 and 128 concurrent clients, with
micro-batching on and off (the baseline, in the same run), counting every failed or dropped request.

The server is the real `llmdistill serve-bert` process serving a distilled student: by default one built
here (the tests' tiny random BERT teacher, configs/bert-kd.yaml with the student shaped like the docs'
2 x 128 narrow student (4 heads, 512 MLP, 64-d embeddings), a few steps: its speed is the shape's, its
accuracy is irrelevant here), or `--run DIR` for any finished distill-bert run. The clients are asyncio
tasks in this process, each holding one keep-alive connection and sending one request after another, each
request one real tweet (`{"texts": [tweet]}`), for `--seconds` per setting after a warm-up of one request
per client. A request fails if the connection breaks, times out (30 s) or the status is not 200.

    .venv/bin/python benchmarks/serve_bert_load.py [--run DIR] [--model int8] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
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
OUT = ROOT / "results" / "serve_bert_load.json"
CLIENTS = (1, 8, 32, 128)
STUDENT_2X128 = ["student.num_layers=2", "student.hidden_size=128", "student.num_heads=4",
                 "student.intermediate_size=512", "student.embedding_size=64", "data.max_seq_len=64"]


def build_run(root: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    import tiny_bert

    return tiny_bert.distill(tiny_bert.build_teacher(root / "fx"), root / "runs", STUDENT_2X128)


def start(run: Path, model: str, batching: bool, wait_ms: float) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "llmdistill.cli", "serve-bert", str(run), "--model", model,
                             "--port", "0", "--batching" if batching else "--no-batching",
                             "--batch-wait-ms", str(wait_ms)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = int(proc.stdout.readline().split("http://127.0.0.1:")[1].split("/")[0])
    for _ in range(1200):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status == 200:
                return proc, port
        except OSError:  # 503 while loading
            time.sleep(0.05)
    raise RuntimeError("the server did not become ready")


def health(port: int) -> dict:
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30))


class Client:
    """One keep-alive connection, one request at a time (reconnects after a failure)."""

    def __init__(self, port: int):
        self.port, self.reader, self.writer = port, None, None

    async def request(self, body: bytes) -> bool:
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.writer.write(b"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                              b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 30)
            status = int(head.split(b" ", 2)[1])
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await asyncio.wait_for(self.reader.readexactly(length), 30)
            if b"connection: close" in head.lower():
                self.close()
            return status == 200
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, StopIteration):
            self.close()
            return False

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def load(port: int, clients: int, seconds: float, bodies: list[bytes]) -> dict:
    pool = [Client(port) for _ in range(clients)]
    await asyncio.gather(*(c.request(bodies[i % len(bodies)]) for i, c in enumerate(pool)))  # warm-up
    latencies, failed, end = [], 0, time.perf_counter() + seconds

    async def worker(i: int, client: Client) -> None:
        nonlocal failed
        n = i
        while time.perf_counter() < end:
            start = time.perf_counter()
            ok = await client.request(bodies[n % len(bodies)])
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                failed += 1
            n += clients

    start = time.perf_counter()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(pool)))
    took = time.perf_counter() - start
    for c in pool:
        c.close()
    latencies.sort()

    def pct(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else None

    return {"clients": clients, "requests": len(latencies) + failed, "failed": failed, "seconds": round(took, 2),
            "requests_per_s": round(len(latencies) / took, 1), "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a finished distill-bert run (default: build the tiny 2 x 128 one)")
    ap.add_argument("--model", default="int8", help="int8, fp32 or torch (serve-bert --model)")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per setting")
    ap.add_argument("--clients", type=lambda v: [int(x) for x in v.split(",")], default=list(CLIENTS))
    ap.add_argument("--batch-wait-ms", type=float, default=0.0, help="serve-bert --batch-wait-ms (batching on)")
    args = ap.parse_args()
    run = args.run or build_run(Path(tempfile.mkdtemp(prefix="serve-bert-load-")))
    texts = [json.loads(line)["text"] for line in (REPO / "data" / "sentiment" / "test.jsonl").open()][:512]
    bodies = [json.dumps({"texts": [t]}).encode() for t in texts]
    rows = []
    for batching in (False, True):
        proc, port = start(run, args.model, batching, args.batch_wait_ms)
        try:
            for clients in args.clients:
                before = health(port)
                row = asyncio.run(load(port, clients, args.seconds, bodies))
                after = health(port)
                calls = after["model_calls"] - before["model_calls"]
                row["texts_per_model_call"] = round((after["requests"] - before["requests"]) / max(calls, 1), 2)
                rows.append({"batching": batching, **row})
                print(rows[-1], flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    base = {r["clients"]: r for r in rows if not r["batching"]}
    for r in rows:
        r["throughput_vs_no_batching"] = round(r["requests_per_s"] / base[r["clients"]]["requests_per_s"], 2)
    conditions = {"date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(),
                  "load_average_at_end": round(os.getloadavg()[0], 1), "model": args.model, "run": str(run),
                  "student": "built here: 2 x 128 narrow, 64-d embeddings" if args.run is None else "given",
                  "seconds_per_setting": args.seconds, "texts_per_request": 1,
                  "batch_wait_ms": args.batch_wait_ms}
    print(f"serve-bert load: {args.model} model, 1 text per request, {args.seconds:g} s per setting, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (clients share the machine)")
    print(f"{'batching':>8} {'clients':>7} {'requests':>8} {'failed':>6} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'texts/call':>10} {'vs off':>6}")
    for r in rows:
        print(f"{'on' if r['batching'] else 'off':>8} {r['clients']:>7} {r['requests']:>8} {r['failed']:>6} "
              f"{r['requests_per_s']:>8.1f} {r['p50_ms']:>7} {r['p99_ms']:>7} {r['texts_per_model_call']:>10} "
              f"{r['throughput_vs_no_batching']:>5.2f}x")
    dropped_at_max = sum(r["failed"] for r in rows if r["clients"] == max(args.clients))
    print(f"failed or dropped at {max(args.clients)} clients: {dropped_at_max}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"conditions": conditions, "rows": rows,
                               "failed_at_max_clients": dropped_at_max}, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
