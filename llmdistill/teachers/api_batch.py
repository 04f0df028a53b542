"""Provider batch APIs for the openai backend (`teacher.api.mode: batch`): about half the price at OpenAI and
others, answered within a window (24 h) instead of at once.

The requests are the very bodies online mode would send, keyed the same way (the request cache key), so a
batch reply fills the request cache exactly as an online reply would, and the stage then reads every sample
from the cache. One `run` makes sure each request has a reply in the cache or a reason it has none:

1. batches recorded in `run_dir/cache/api_batches.json` and not yet collected (a run killed while a batch was
   in progress) are polled again and collected: a resumed run never pays for a second batch of the same
   requests;
2. the requests still without a reply, and not answered or refused by a batch collected in this run, are
   written to a JSONL file (one line per request, `custom_id` = its cache key), uploaded (`/v1/files`) and
   submitted as one batch (`/v1/batches`), then polled until it ends and collected.

The state file is rewritten (atomically) at every step, before the step that depends on it: `uploaded`
(the input file id) before the batch is created, `created` (the batch id) right after. A kill between the
two is resolved on resume by finding the batch whose input file is the recorded one, so that window cannot
create a second batch either. A request the batch did not answer (an error line, or a batch that expired or
was cancelled first) becomes a failed sample with its reason, requested again (in a new batch) on a rerun.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from llmdistill import store
from llmdistill.errors import BudgetExceeded, UserError
from llmdistill.teachers import api_client as ac
from llmdistill.teachers.api_cost import Meter, billed_tokens, cost_usd, worst_case_tokens

log = logging.getLogger("llmdistill")

STATE_FILE = "api_batches.json"
ENDED = ("completed", "failed", "expired", "cancelled")


class BatchRunner:
    """Submits, polls and collects provider batches for one teacher, recording each step in the run dir."""

    def __init__(self, client, cache_dir: Path, cache: ac.RequestCache, endpoint: str, price, meter: Meter,
                 poll_s: float, read: Callable[[bytes], ac.Reply], spent: Callable[[], float],
                 budget_usd: float | None, name: str, sleep: Callable[[float], None] = time.sleep):
        self.client, self.dir, self.cache = client, Path(cache_dir), cache
        self.path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
        self.price, self.meter, self.poll_s, self.read = price, meter, poll_s, read
        self.spent, self.budget_usd, self.name, self.sleep = spent, budget_usd, name, sleep
        self.state_path = self.dir / STATE_FILE
        self.tried: set[str] = set()  # requests a batch of this run answered or refused (not submitted again)
        self.errors: dict[str, str] = {}  # request key -> why the batch gave no reply

    # ------------------------------------------------------------------------------------------ state
    def _load(self) -> list[dict]:
        if not self.state_path.exists():
            return []
        try:
            return list(msgspec.json.decode(self.state_path.read_bytes())["batches"])
        except (msgspec.DecodeError, KeyError, TypeError) as e:
            raise UserError(f"{self.state_path}: unreadable batch record ({e}); it names the provider batches this "
                            "run paid for: look them up (`/v1/batches`) before removing it") from None

    def _save(self, batches: list[dict]) -> None:
        store.atomic_write_json(self.state_path, {"batches": batches})

    # ------------------------------------------------------------------------------------------- run
    def run(self, requests: dict[str, tuple[dict, int]], max_new_tokens: int) -> dict[str, str]:
        """Make sure every request (cache key -> (body, prompt tokens)) has a reply in the cache or a reason;
        returns the reasons (key -> error) of those without one."""
        batches = self._load()
        for b in batches:
            if b["status"] in ("uploaded", "created"):
                log.info("teacher api: resuming batch %s from the run directory (%d requests; no new batch)",
                         b.get("id") or b["input_file_id"], b["requests"])
                self._finish(b, batches)
        missing = [k for k in requests if k not in self.tried and self.cache.get(k) is None]
        if missing:
            self._submit({k: requests[k] for k in missing}, max_new_tokens, batches)
        return {k: self.errors.get(k, "timeout: the batch ended without answering this request")
                for k in requests if self.cache.get(k) is None}

    def _submit(self, requests: dict[str, tuple[dict, int]], max_new_tokens: int, batches: list[dict]) -> None:
        worst = sum(cost_usd(p, max_new_tokens, self.price) for _, p in requests.values()) * self.price.batch
        if self.budget_usd is not None and self.spent() + worst > self.budget_usd:
            raise BudgetExceeded(
                f"teacher.api.budget_usd ${self.budget_usd:g}: a batch of {len(requests)} requests may cost up to "
                f"${worst:.4f} at batch prices beside ${self.spent():.4f} spent; nothing was submitted (raise the "
                "budget, or lower the number of prompts)")
        n = len(batches) + 1
        local = self.dir / "batches" / f"{n:04d}.jsonl"
        lines = b"".join(msgspec.json.encode({"custom_id": k, "method": "POST", "url": self.path, "body": body}) + b"\n"
                         for k, (body, _) in requests.items())
        store.atomic_write_bytes(local, lines)
        uploaded = self._call("upload the batch input", lambda: self.client.files.create(
            file=(local.name, lines, "application/jsonl"), purpose="batch"))
        b = {"n": n, "input": str(local.relative_to(self.dir)), "input_file_id": uploaded.id, "id": None,
             "requests": len(requests), "status": "uploaded", "submitted": time.time()}
        batches.append(b)
        self._save(batches)  # before the batch exists: a kill from here on is resumed, not submitted again
        self._create(b, batches)
        self._wait_and_collect(b, batches)

    def _create(self, b: dict, batches: list[dict]) -> None:
        created = self._call("create the batch", lambda: self.client.batches.create(
            input_file_id=b["input_file_id"], endpoint=self.path, completion_window="24h",
            metadata={"llmdistill": self.name}))
        b["id"], b["status"] = created.id, "created"
        self._save(batches)
        log.info("teacher api: batch %s submitted (%d requests, batch prices); polling every %g s",
                 created.id, b["requests"], self.poll_s)

    def _finish(self, b: dict, batches: list[dict]) -> None:
        if b["status"] == "uploaded":  # killed around batches.create: did the provider get it?
            found = self._call("list batches", lambda: self.client.batches.list(limit=100))
            match = next((x for x in found.data if x.input_file_id == b["input_file_id"]), None)
            if match is None:
                self._create(b, batches)
            else:
                b["id"], b["status"] = match.id, "created"
                self._save(batches)
        self._wait_and_collect(b, batches)

    def _wait_and_collect(self, b: dict, batches: list[dict]) -> None:
        last = None
        while True:
            batch = self._call(f"poll batch {b['id']}", lambda: self.client.batches.retrieve(b["id"]))
            counts = batch.request_counts
            seen = (batch.status, counts.completed if counts else None)
            if seen != last:
                log.info("teacher api: batch %s %s (%s of %d answered)", b["id"], batch.status,
                         counts.completed if counts else "?", b["requests"])
                last = seen
            if batch.status in ENDED:
                break
            self.sleep(self.poll_s)
        if batch.status == "failed":
            errors = "; ".join(f"{e.code}: {e.message}" for e in (batch.errors.data if batch.errors else []) or [])
            b["status"] = "failed"
            self._save(batches)
            raise UserError(f"teacher api: batch {b['id']} failed ({errors or 'no reason given'}); nothing in it was "
                            "answered; a rerun submits a new batch")
        sent = (self.dir / b["input"]).read_bytes().splitlines()
        bodies = {x["custom_id"]: x["body"] for x in map(msgspec.json.decode, filter(bytes.strip, sent))}
        keys = list(bodies)
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = self._call("download the batch results", lambda f=file_id: self.client.files.content(f))
                self._collect(content.content, b["id"], bodies)
        for k in keys:
            if self.cache.get(k) is None and k not in self.errors:
                self.errors[k] = f"timeout: batch {b['id']} {batch.status} before answering this request"
        self.tried.update(keys)
        b["status"], b["ended"] = f"collected ({batch.status})", time.time()
        self._save(batches)

    def _collect(self, content: bytes, batch_id: str, bodies: dict[str, dict]) -> None:
        """Each result line into the request cache (a reply) or the errors (why not), at batch prices. A reply
        that is unusable is billed all the same: at its usage, else at the worst case of its request's body."""
        for line in content.splitlines():
            if not line.strip():
                continue
            try:
                row = msgspec.json.decode(line)
                key, response = row["custom_id"], row.get("response") or {}
            except (msgspec.DecodeError, KeyError, TypeError):
                log.warning("teacher api: batch %s: an unreadable result line skipped", batch_id)
                continue
            status, body = response.get("status_code"), response.get("body")
            if status == 200 and isinstance(body, dict):
                raw = msgspec.json.encode(body)
                self.meter.requests += 1
                try:
                    reply = self.read(raw)
                except ac.MalformedReply as e:
                    self.errors[key] = f"malformed reply: {e} (batch {batch_id})"
                    tokens = billed_tokens(raw)
                    worst = tokens or worst_case_tokens(bodies.get(key) or {})
                    cost = cost_usd(*worst, self.price) * self.price.batch
                    self.meter.bill(tokens, cost, usable=False)
                    self.cache.put_unusable(key, self.errors[key], tokens, cost)
                    continue
                cost = cost_usd(reply.prompt_tokens, reply.completion_tokens, self.price) * self.price.batch
                self.cache.put(key, raw, reply.prompt_tokens, reply.completion_tokens, cost)
                self.meter.bill((reply.prompt_tokens, reply.completion_tokens), cost)
            else:
                message = ((body or {}).get("error") or {}).get("message") if isinstance(body, dict) else None
                message = message or (row.get("error") or {}).get("message") or "no reply"
                self.errors[key] = f"HTTP {status or 500}: {message} (batch {batch_id})"
                self.meter.count(self.meter.failed, f"HTTP {status or 500}")

    def _call(self, what: str, fn):
        import openai

        try:
            return fn()
        except openai.APIConnectionError as e:
            raise UserError(f"teacher api {self.name}: could not {what} ({e}); the batch record in {self.state_path} "
                            "is kept: a rerun resumes from it without a new batch") from None
        except openai.APIStatusError as e:
            raise UserError(f"teacher api {self.name}: could not {what}: HTTP {e.status_code} "
                            f"{str(e.message)[:300]}") from None
