"""A small OpenAI-shaped HTTP server for tests and benchmarks (asyncio, standard library + `tokenizers`).

It answers `POST /v1/chat/completions` and `POST /v1/completions` like OpenAI or a vLLM server would,
with `logprobs` / `top_logprobs`, from a tiny deterministic "model" over a real byte-level BPE
tokenizer: every step draws k candidate token ids and their log-probs from a generator seeded by the
request content, and samples (or, at temperature 0, takes the best) of them. So replies are repeatable
and a client can check that the token ids it maps back from token strings are the ids the server used.

Faults for robustness tests, decided per (request content, how many times it was seen) from a seed, so
they do not depend on arrival order: `429` (with Retry-After), `500`, `timeout` (the reply never comes
until the client gives up), `garbage` (a 200 whose body is not JSON, or JSON without choices), and, only
when named in `faults`, `unusable` (a complete reply, usage included, whose logprobs are malformed: billed
but of no use). `srv.billed` lists the usage of every 200 reply (None where it has none). Plus an
added latency per reply and an optional share of top-logprob tokens that exist in no vocabulary.
`die_after=n`: after answering n requests the server goes away (closes its port and every connection, so
requests in flight see the connection drop and new ones are refused), as a crashed server would.
`stop_prob=0`: every reply is exactly max_tokens long (so its cost is known in advance).

    srv = FakeOpenAI(tokenizer_dir, latency_s=0.2, fault_rate=0.2).start()   # background thread
    srv.base_url ... srv.stop()
    python tests/fakeopenai.py --tokenizer DIR --port 0 --latency 0.2        # prints "PORT <n>"

`GET /stats` (or `srv.stats()`) returns how many requests each request-content key received, the
statuses sent and the largest number of requests in flight at once; `POST /reset` zeroes them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

FAULT_KINDS = ("429", "500", "timeout", "garbage")  # the default mix
OTHER_FAULTS = ("unusable",)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (what byte-level BPE vocabularies use)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]


class TinyModel:
    """Deterministic top-k distributions over a real tokenizer's vocabulary."""

    def __init__(self, tokenizer_dir: Path, stop_prob: float = 0.08):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
        added = self.tok.get_added_tokens_decoder()
        self.special = {i for i, t in added.items() if t.special}
        byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}
        vocab = self.tok.get_vocab()
        self.bytes_of: dict[int, bytes] = {}
        for token, i in vocab.items():
            if i in self.special:
                continue
            self.bytes_of[i] = bytes(byte_decoder[c] for c in token)
        self.candidates = sorted(self.bytes_of)
        self.stop_prob = stop_prob

    def prompt_tokens(self, body: dict) -> int:
        if "messages" in body:
            text = "".join(m.get("content") or "" for m in body["messages"])
            return len(self.tok.encode(text).ids) + 4 * len(body["messages"])
        prompt = body.get("prompt", "")
        return len(prompt) if isinstance(prompt, list) else len(self.tok.encode(prompt).ids)

    def complete(self, body: dict, k: int) -> tuple[list[int], list[list[tuple[int, float]]], list[float], str]:
        """(chosen ids, top-k (id, logprob) per step, chosen logprobs, finish reason)."""
        content = {x: body.get(x) for x in ("messages", "prompt", "seed", "model")}
        rng = random.Random(_key(content))
        temperature = body.get("temperature", 1.0)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        chosen, tops, chosen_lp = [], [], []
        finish = "length"
        for step in range(max_tokens):
            if step >= 2 and rng.random() < self.stop_prob:
                finish = "stop"
                break
            width = max(k, 1)
            ids = rng.sample(self.candidates, width)
            logits = sorted((rng.gauss(0, 2) for _ in range(width)), reverse=True)
            z = max(logits)
            norm = math.log(sum(math.exp(v - z) for v in logits)) + z
            # the k candidates carry 90 % of the mass, the rest of the vocabulary the other 10 %
            lps = [v - norm + math.log(0.9) for v in logits]
            if temperature and temperature > 0:
                pick = rng.choices(range(width), weights=[math.exp(v) for v in lps])[0]
            else:
                pick = 0
            chosen.append(ids[pick])
            chosen_lp.append(lps[pick])
            tops.append(list(zip(ids, lps))[:k])
        return chosen, tops, chosen_lp, finish


class FakeOpenAI:
    def __init__(self, tokenizer_dir: Path, *, latency_s: float = 0.0, fault_rate: float = 0.0,
                 faults: tuple[str, ...] = FAULT_KINDS, seed: int = 0, api_key: str | None = None,
                 unmappable_rate: float = 0.0, retry_after_s: float = 0.05, host: str = "127.0.0.1",
                 port: int = 0, max_top_logprobs: int = 20, die_after: int | None = None, stop_prob: float = 0.08,
                 canned: int = 0, batch_seconds: float = 1.0):
        self.model = TinyModel(tokenizer_dir, stop_prob=stop_prob)
        self.die_after, self.dead = die_after, False
        self.canned, self._canned = canned, {}
        # the batch API (/v1/files, /v1/batches): a batch answers its requests over `batch_seconds`
        self.batch_seconds = batch_seconds
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batches_created = 0
        self._writers: set = set()
        self.latency_s, self.fault_rate, self.faults, self.seed = latency_s, fault_rate, tuple(faults), seed
        self.api_key, self.unmappable_rate, self.retry_after_s = api_key, unmappable_rate, retry_after_s
        self.host, self.port, self.max_top_logprobs = host, port, max_top_logprobs
        self.seen: Counter = Counter()  # request key -> times received (since the last reset_counts)
        self.attempts: Counter = Counter()  # the same, never reset: faults are drawn per (key, attempt)
        self.statuses: Counter = Counter()
        self.delivered: Counter = Counter()  # request key -> 200 replies written out in full (a dying server's
        # last replies may be counted in `statuses` and never reach the client)
        self.contents: list[dict] = []  # one entry per request: {key, prompt, status, fault}
        self.billed: list[dict | None] = []  # the usage of every 200 completion reply (never reset)
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth_headers: Counter = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        self._thread = threading.Thread(target=self._serve_forever, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def _serve_forever(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._open())
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _open(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop is None:
            return

        async def _close():
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(_close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def reset_counts(self) -> None:
        with self._lock:
            self.seen.clear()
            self.statuses.clear()
            self.delivered.clear()
            self.contents.clear()
            self.max_in_flight = 0

    def stats(self) -> dict:
        with self._lock:
            return {"requests": sum(self.seen.values()), "by_key": dict(self.seen), "statuses": dict(self.statuses),
                    "delivered": dict(self.delivered),
                    "max_in_flight": self.max_in_flight, "contents": list(self.contents)}

    # ------------------------------------------------------------------------------------------ HTTP
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.dead:
            writer.close()
            return
        self._writers.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                status, payload, extra = await self._route(method, path.split("?")[0], headers, body)
                if self.dead:  # gone mid-request: the connection drops without a reply
                    break
                if status is None:  # a "timeout" fault: hold the connection until the client gives up
                    await asyncio.sleep(3600)
                    break
                head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}",
                        "Content-Type: application/json", f"Content-Length: {len(payload)}", "Connection: keep-alive"]
                head += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
                await writer.drain()
                if status == 200 and "X-Request-Key" in extra:
                    with self._lock:
                        self.delivered[extra["X-Request-Key"]] += 1
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _die(self) -> None:
        """Go away like a crashed server: stop listening, drop every open connection."""
        self.dead = True
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()

    async def _route(self, method: str, path: str, headers: dict, raw: bytes):
        if method == "GET" and path == "/stats":
            return 200, json.dumps({k: v for k, v in self.stats().items() if k != "contents"}).encode(), {}
        if method == "POST" and path == "/reset":
            self.reset_counts()
            return 200, b"{}", {}
        if method == "GET" and path == "/v1/models":
            return 200, json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode(), {}
        if path.startswith(("/v1/files", "/v1/batches")):
            return self._batch_api(method, path, headers, raw)
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            return 404, _error("not found", "not_found"), {}
        auth = headers.get("authorization")
        with self._lock:
            self.auth_headers[auth] += 1
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            return 401, _error("invalid api key", "invalid_api_key"), {}
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            return 400, _error("body is not JSON", "invalid_request_error"), {}
        key = _key(body)
        if self.die_after is not None and sum(self.statuses.values()) >= self.die_after:
            if not self.dead:
                self._die()
            return 500, b"", {}
        with self._lock:
            self.seen[key] += 1
            self.attempts[key] += 1
            attempt = self.attempts[key]
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            status, payload, extra = self._reply(path, body, key, attempt)
        finally:
            with self._lock:
                self.in_flight -= 1
        with self._lock:
            self.statuses[str(status)] += 1
            prompt = body.get("messages", body.get("prompt"))
            self.contents.append({"key": key, "prompt": prompt, "status": status, "fault": self._fault(key, attempt)})
            if status == 200:
                self.billed.append(_usage_of(payload))
        return status, payload, extra

    # ------------------------------------------------------------------------------------ batch API
    def _batch_api(self, method: str, path: str, headers: dict, raw: bytes):
        parts = path.strip("/").split("/")  # v1, files|batches, [id], [content]
        if method == "POST" and parts == ["v1", "files"]:
            fields = _multipart(raw, headers.get("content-type", ""))
            if "file" not in fields:
                return 400, _error("no file in the upload", "invalid_request_error"), {}
            name, content = fields["file"]
            with self._lock:
                fid = f"file-{len(self.files) + 1}"
                self.files[fid] = content
            return 200, json.dumps({"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                                    "filename": name, "purpose": "batch", "status": "processed"}).encode(), {}
        if method == "GET" and len(parts) == 4 and parts[1] == "files" and parts[3] == "content":
            if parts[2] not in self.files:
                return 404, _error("no such file", "not_found"), {}
            return 200, self.files[parts[2]], {}
        if method == "POST" and parts == ["v1", "batches"]:
            req = json.loads(raw)
            if req.get("input_file_id") not in self.files:
                return 400, _error("input_file_id not found", "invalid_request_error"), {}
            with self._lock:
                self.batches_created += 1
                bid = f"batch_{self.batches_created}"
                batch = {"id": bid, "object": "batch", "endpoint": req["endpoint"], "errors": None,
                         "input_file_id": req["input_file_id"], "completion_window": req["completion_window"],
                         "status": "validating", "output_file_id": None, "error_file_id": None,
                         "created_at": int(time.time()), "request_counts": {"total": 0, "completed": 0, "failed": 0},
                         "metadata": req.get("metadata")}
                self.batches[bid] = batch
            asyncio.ensure_future(self._run_batch(batch))
            return 200, json.dumps(batch).encode(), {}
        if method == "GET" and parts == ["v1", "batches"]:
            data = sorted(self.batches.values(), key=lambda b: b["created_at"], reverse=True)
            return 200, json.dumps({"object": "list", "data": data, "has_more": False}).encode(), {}
        if method == "GET" and len(parts) == 3 and parts[1] == "batches":
            if parts[2] not in self.batches:
                return 404, _error("no such batch", "not_found"), {}
            return 200, json.dumps(self.batches[parts[2]]).encode(), {}
        return 404, _error("not found", "not_found"), {}

    async def _run_batch(self, batch: dict) -> None:
        lines = [json.loads(line) for line in self.files[batch["input_file_id"]].splitlines() if line.strip()]
        batch["request_counts"]["total"] = len(lines)
        await asyncio.sleep(0.05)
        batch["status"], batch["in_progress_at"] = "in_progress", int(time.time())
        out, errors = [], []
        for n, line in enumerate(lines):
            await asyncio.sleep(self.batch_seconds / max(len(lines), 1))
            body, path = line["body"], line["url"]
            key = _key(body)
            with self._lock:
                self.seen[key] += 1
                self.attempts[key] += 1
                attempt = self.attempts[key]
            status, payload, _ = self._reply(path, body, key, attempt)
            status = 500 if status is None else status
            try:
                parsed = json.loads(payload)
            except json.JSONDecodeError:
                parsed = payload.decode("latin-1")
            entry = {"id": f"batch_req_{n}", "custom_id": line["custom_id"],
                     "response": {"status_code": status, "request_id": f"req_{n}", "body": parsed}, "error": None}
            with self._lock:
                self.statuses[str(status)] += 1
                self.contents.append({"key": key, "prompt": body.get("messages", body.get("prompt")),
                                      "status": status, "fault": self._fault(key, attempt)})
                if status == 200:
                    self.delivered[key] += 1
                    self.billed.append(_usage_of(payload))
            (out if status == 200 else errors).append(entry)
            batch["request_counts"]["completed" if status == 200 else "failed"] += 1
        with self._lock:
            for kind, rows in (("output_file_id", out), ("error_file_id", errors)):
                if rows:
                    fid = f"file-{len(self.files) + 1}"
                    self.files[fid] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                    batch[kind] = fid
        batch["status"], batch["completed_at"] = "completed", int(time.time())

    def _fault(self, key: str, attempt: int) -> str | None:
        if not self.fault_rate:
            return None
        rng = random.Random(f"{self.seed}:{key}:{attempt}")
        if rng.random() >= self.fault_rate:
            return None
        return rng.choice(self.faults)

    def _reply(self, path: str, body: dict, key: str, attempt: int):
        fault = self._fault(key, attempt)
        if fault == "429":
            return 429, _error("rate limit reached", "rate_limit_exceeded"), {"Retry-After": str(self.retry_after_s)}
        if fault == "500":
            return 500, _error("internal error", "server_error"), {}
        if fault == "timeout":
            return None, b"", {}
        if fault == "garbage":
            return 200, (b'{"choices": [' if attempt % 2 else b'{"object": "chat.completion"}'), {}
        if fault == "unusable":  # the whole reply, usage and all, with a logprobs entry that is not one
            reply = json.loads(self._made(path, body, key, 1, True, False, path.endswith("chat/completions")))
            reply["choices"][0]["logprobs"] = {"content": [{"token": 5}], "tokens": 5}
            return 200, json.dumps(reply).encode(), {}
        chat = path.endswith("chat/completions")
        if chat:
            want = bool(body.get("logprobs"))
            k = int(body.get("top_logprobs") or 0) if want else 0
        else:
            want = body.get("logprobs") is not None
            k = int(body.get("logprobs") or 0)
        if k > self.max_top_logprobs:
            return 400, _error(f"top_logprobs must be <= {self.max_top_logprobs}", "invalid_request_error"), {}
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        if self.canned:  # one of `canned` replies made once per shape: the server costs next to no CPU
            slot = (path, int(key[:8], 16) % self.canned, k, as_ids, body.get("max_tokens"))
            if slot not in self._canned:
                self._canned[slot] = self._made(path, body, key, k, want, as_ids, chat)
            return 200, self._canned[slot], {"X-Request-Key": key}
        return 200, self._made(path, body, key, k, want, as_ids, chat), {"X-Request-Key": key}

    def _made(self, path: str, body: dict, key: str, k: int, want: bool, as_ids: bool, chat: bool) -> bytes:
        chosen, tops, chosen_lp, finish = self.model.complete(body, k)
        rng = random.Random(f"unmappable:{key}")
        text = self.model.tok.decode(chosen)

        def tok(i: int) -> str:
            if as_ids:
                return f"token_id:{i}"
            return self.model.bytes_of[i].decode("utf-8", errors="replace")

        def alt(i: int) -> tuple[str, list[int]]:
            if self.unmappable_rate and rng.random() < self.unmappable_rate:
                return ("\u2603nowhere", list("\u2603nowhere".encode())) if not as_ids else ("garbled", [])
            return tok(i), list(self.model.bytes_of[i])

        usage = {"prompt_tokens": self.model.prompt_tokens(body), "completion_tokens": len(chosen)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        created = int(time.time())
        if chat:
            logprobs = None
            if want:
                content = []
                for i, lp, top in zip(chosen, chosen_lp, tops):
                    alts = [alt(j) + (v,) for j, v in top]
                    content.append({"token": tok(i), "logprob": lp, "bytes": list(self.model.bytes_of[i]),
                                    "top_logprobs": [{"token": t, "logprob": v, "bytes": b} for t, b, v in alts]})
                logprobs = {"content": content}
            reply = {"id": f"chatcmpl-{key}", "object": "chat.completion", "created": created, "model": body["model"],
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                  "logprobs": logprobs, "finish_reason": finish}], "usage": usage}
        else:
            logprobs = None
            if want:
                logprobs = {"tokens": [tok(i) for i in chosen], "token_logprobs": chosen_lp,
                            "top_logprobs": [{alt(j)[0]: v for j, v in top} for top in tops],
                            "text_offset": list(range(len(chosen)))}
            reply = {"id": f"cmpl-{key}", "object": "text_completion", "created": created, "model": body["model"],
                     "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
                     "usage": usage}
        return json.dumps(reply).encode()


def _usage_of(payload: bytes) -> dict | None:
    try:
        usage = json.loads(payload).get("usage")
    except (json.JSONDecodeError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


def _multipart(raw: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename, content)."""
    boundary = content_type.partition("boundary=")[2].strip('"')
    fields = {}
    for part in raw.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.partition(b"\r\n\r\n")
        disposition = next((h for h in head.decode("latin-1").split("\r\n") if h.lower().startswith(
            "content-disposition")), "")
        attrs = dict(a.strip().split("=", 1) for a in disposition.split(";")[1:] if "=" in a)
        name = attrs.get("name", "").strip('"')
        fields[name] = (attrs.get("filename", "").strip('"') or None, content[:-2] if content.endswith(b"\r\n")
                        else content)
    return fields


def _error(message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": code, "code": code}}).encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="directory with a byte-level BPE tokenizer.json")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every reply")
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--faults", default=",".join(FAULT_KINDS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stop-prob", type=float, default=0.08, help="0: every reply is max_tokens long")
    ap.add_argument("--canned", type=int, default=0, help="serve N prepared replies (a server that costs no CPU)")
    args = ap.parse_args()
    srv = FakeOpenAI(Path(args.tokenizer), latency_s=args.latency, fault_rate=args.fault_rate,
                     faults=tuple(args.faults.split(",")), seed=args.seed, port=args.port, stop_prob=args.stop_prob,
                     canned=args.canned).start()
    print(f"PORT {srv.port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    srv.stop()


if __name__ == "__main__":
    main()
