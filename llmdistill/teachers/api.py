"""The `openai` teacher backend: any OpenAI-compatible endpoint through the async `openai` client.

One `generate` call sends its batch's requests concurrently (at most `max_concurrency` in flight,
under the requests/min and tokens/min buckets), retrying 429, 5xx, timeouts, connection errors and
malformed replies with exponential backoff and full jitter. Every good reply is committed to a SQLite
request cache (run_dir/cache/api.sqlite) before it is used, keyed by the request's content, so:

- a killed run, rerun, re-sends only the requests that had no stored reply (those in flight, and any
  of the unfinished batch that had failed);
- a plain rerun requests the samples that failed transiently again (the stage asks for exactly those,
  at their planned batch positions, so the requests are the same), and a rerun of a finished stage
  (`--force generate`, or a changed config) re-sends only the requests that failed; good replies come
  back from the cache for free.

A request that exhausts its retries, or that the server refuses (400, 422), becomes a failed sample
with its reason (the `error` column), never a crash. 401, 403 and 404 stop the run (no other request
can succeed), and so does an endpoint that is down: `max_connection_failures` attempts in a row (across
requests; any reply resets the count) that could not connect. A prompt that cannot fit
`max_context_tokens` is not sent (generate.too_long).

The cost of every paid reply is counted from `teacher.api.price`. With `teacher.api.budget_usd`, each
request reserves its worst case (prompt tokens + max_new_tokens at the price) before it waits for a
slot, in the same step as the check that it fits beside what is spent (paid replies in the cache) and
reserved; the reply releases the reservation and counts its real cost. So the money spent never passes
the budget (when the prompt count is an upper bound: see `_prompt_tokens`). The first request that does
not fit stops the batch: the stage exits with BudgetExceeded (exit code 4), everything finished before
it committed.

The API key is read from the environment variable NAMED by `teacher.api.api_key_env`; it is never
logged, stored or put into an error message (any echo of it is replaced by `[redacted]`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmdistill import credentials, models
from llmdistill.config import TeacherConfig
from llmdistill.errors import BudgetExceeded, UserError
from llmdistill.records import stable_hash
from llmdistill.teachers import api_client as ac
from llmdistill.teachers.base import ContextCheck, Generation, Sampling
from llmdistill.teachers.token_map import TokenMapper

log = logging.getLogger("llmdistill")

FINISH = {"stop": "stop", "eos": "stop", "end_turn": "stop", "stop_sequence": "stop", "length": "length",
          "max_tokens": "length"}


@dataclass
class _Outcome:
    reply: bytes | str | None = None  # the body as the server sent it (what the request cache stores)
    parsed: ac.Reply | None = None  # `reply` already read (a fresh reply; a cached one is read later)
    error: str | None = None
    skipped: bool = False  # not sent: the budget was reached


class OpenAITeacher:
    accepts_cache_dir = True

    def __init__(self, tcfg: TeacherConfig, sampling: Sampling, cache_dir: Path | None = None):
        self.tcfg, self.sampling, self.opts = tcfg, sampling, tcfg.api
        self.name = tcfg.model
        self.served_model = tcfg.request_model
        self.api_key = _read_key(self.opts.api_key_env)
        self.want_logprobs = self.opts.token_mapping != "none"
        self.tokenizer = None
        self.vocab_size = None
        self.context = None
        if self.want_logprobs or self.opts.endpoint == "completions" or self.opts.max_context_tokens is not None:
            self.tokenizer = models.load_tokenizer(tcfg.model, tcfg.revision, tcfg.trust_remote_code)
            self.vocab_size = _vocab_size(tcfg, self.tokenizer)
            self.context = ContextCheck(self.tokenizer, self.opts.max_context_tokens, sampling.max_new_tokens,
                                        sampling.too_long)
        self.mapper = TokenMapper(self.opts.token_mapping, self.tokenizer) if self.want_logprobs else None
        if self.mapper is not None:
            self.mapper.vocab_size = self.vocab_size
        self.cache = ac.RequestCache(Path(cache_dir) / "api.sqlite") if self.opts.cache and cache_dir else None
        self.spent_before = self.cache.spent_usd() if self.cache is not None else 0.0
        self.meter = ac.Meter()
        self.rpm = ac.TokenBucket(self.opts.requests_per_minute) if self.opts.requests_per_minute else None
        self.tpm = ac.TokenBucket(self.opts.tokens_per_minute) if self.opts.tokens_per_minute else None
        self.rng = random.Random(0)
        self._loop = asyncio.new_event_loop()
        self._pool: _Pool | None = None
        self._batches = None  # BatchRunner (mode: batch), made on first use
        self._workers: _ClientProcesses | None = None  # client_processes > 1, started on first use
        self._batch_errors: dict[str, str] = {}  # request key -> why the batch left it without a reply
        self._sem: asyncio.Semaphore | None = None
        self._reserved = 0.0  # worst-case dollars of the requests started and not finished
        self._budget_hit = False
        self._refused = 0  # connection attempts in a row that failed (any reply resets it)
        self._refused_limit = self.opts.connection_failure_limit()
        self._checked_ids = False
        for noisy in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):  # their debug logs echo request options
            logging.getLogger(noisy).setLevel(logging.WARNING)
        log.info("teacher: openai backend, model %r at %s (%s endpoint, logprobs %s)", self.served_model,
                 ", ".join(_safe_url(u) for u in self.opts.urls()), self.opts.endpoint, self.opts.token_mapping)

    # ------------------------------------------------------------------------------------ protocol
    def provenance(self) -> dict:
        g = self.sampling
        raw = g.logprob_mode == "raw"
        prov = {
            "teacher": {
                "name": self.name,
                "backend": "openai",
                "served_model": self.served_model,
                "base_url": [_safe_url(u) for u in self.opts.urls()] if len(self.opts.urls()) > 1
                else _safe_url(self.opts.base_url),
                "endpoint": self.opts.endpoint,
            },
            "logprobs_source": {"token_ids": "api: server token ids (return_tokens_as_token_ids)",
                                "tokenizer": "api: token strings mapped through the local tokenizer",
                                "none": "none: text only (add logits with annotate)"}[self.opts.token_mapping],
            "topk": g.topk if self.want_logprobs else None,
            # the server decides what its logprobs are (vLLM: --logprobs-mode); the config states it
            "logprob_mode": g.logprob_mode,
            "capture_temperature": 1.0 if raw else (g.temperature or 1.0),
            "capture_top_p": 1.0 if raw else g.top_p,
            "vocab_size": self.vocab_size,
            "api_usage": {**self._usage(), "spent_usd_in_run": round(self._spent(), 6)},
        }
        if self.tokenizer is not None:
            prov.update(models.tokenizer_info(self.tokenizer))
        if self.mapper is not None:
            prov["token_mapping"] = self.mapper.report() if self._workers is None else self._workers.mapping()
        log.info("teacher api: %s", _summary(prov["api_usage"], prov.get("token_mapping")))
        return prov

    def generate(self, prompts: list[list[dict]], seed: int, positions: list[int] | None = None) -> list[Generation]:
        prepared, jobs = self._jobs(prompts, seed, positions)
        if self.opts.mode == "batch":
            self._submit_batch(jobs)  # a no-op for what an earlier prefetch covered
        online = self.opts.mode == "online" and self.opts.client_processes > 1
        done = iter(self._processes().generate(jobs) if online else self.run_jobs(jobs))
        return [_failed(ids) if isinstance(ids, str) else next(done) for ids in prepared]

    def prefetch(self, work: list[tuple[list[list[dict]], int, list[int] | None]]) -> None:
        """mode: batch: answer every request of `work` ((prompts, seed, positions) per generate call to come)
        through the provider's batch API, one batch for all of them, before the first `generate`; the replies
        land in the request cache, where `generate` then finds them. Online mode: nothing to do."""
        if self.opts.mode != "batch":
            return
        self._submit_batch([job for prompts, seed, positions in work
                            for job in self._jobs(prompts, seed, positions)[1]])

    def _submit_batch(self, jobs: list[tuple[dict, int]]) -> None:
        """mode: batch: the `jobs` without a reply or a batch's reason for none go through the batch API."""
        if self.cache is None:
            raise UserError("teacher.api.mode: batch needs the request cache and a run directory")
        requests = {}
        for body, prompt_tokens in jobs:
            key = ac.cache_key(self.opts.endpoint, body)
            if key not in self._batch_errors:
                requests[key] = (body, prompt_tokens)
        if not requests:
            return
        if self._batches is None:
            import openai

            from llmdistill.teachers.api_batch import BatchRunner

            client = openai.OpenAI(base_url=self.opts.urls()[0], api_key=self.api_key or "none",
                                   max_retries=self.opts.max_retries, timeout=self.opts.timeout_s)
            self._batches = BatchRunner(client, self.cache.path.parent, self.cache, self.opts.endpoint,
                                        self.opts.price, self.meter, self.opts.batch_poll_s, self._read, self._spent,
                                        self.opts.budget_usd, _safe_url(self.opts.urls()[0]))
        self._batch_errors.update(self._batches.run(requests, self.sampling.max_new_tokens))

    def _processes(self) -> _ClientProcesses:
        if self._workers is None:
            cache_dir = self.cache.path.parent if self.cache is not None else None  # (an empty cache is falsy)
            self._workers = _ClientProcesses(self.tcfg, self.sampling, cache_dir, self.spent_before)
        return self._workers

    def run_jobs(self, jobs: list[tuple[dict, int]]) -> list[Generation]:
        """Send prepared requests and read their replies (what a client process does for its share)."""
        with _fewer_gc_passes():
            outcomes = self._loop.run_until_complete(self._batch(jobs))
        if self._budget_hit:
            raise self._budget_error()
        return [self._generation(o) for o in outcomes]

    def _budget_error(self) -> BudgetExceeded:
        return _budget_exceeded(self.opts.budget_usd, self._spent())

    def prompt_topk(self, sequences: list[list[int]], k: int, check=None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The teacher's top-k log-probs at every position of each token sequence, from a vLLM server's
        `prompt_logprobs` (/completions, the prompt as token ids, one token generated): per sequence
        ([L, k] ids, [L, k] log-probs), row i the distribution of token i given the tokens before it (row 0
        empty). Sent like any request (pool, retries, cache); a sequence that fails every attempt raises.
        check: (ids, log-probs) -> what makes them unusable, or None; such a reply is malformed (retried,
        never cached)."""
        jobs = [({"model": self.served_model, "prompt": list(map(int, seq)), "max_tokens": 1, "temperature": 0.0,
                  "prompt_logprobs": k}, len(seq)) for seq in sequences]

        with _fewer_gc_passes():
            outcomes = self._loop.run_until_complete(self._batch(jobs, read=lambda text: _Scored(text, k, check)))
        out = []
        for (_, n), o in zip(jobs, outcomes):
            if o.reply is None:
                raise UserError(f"served teacher {self._pool.names()}: scoring a sequence "
                                f"of {n} tokens failed: {o.error}")
            try:
                scored = o.parsed if o.parsed is not None else _Scored(o.reply, k, check)
                out.append(scored.arrays(k, n))
            except ac.MalformedReply as e:
                raise UserError(f"served teacher {self._pool.names()}: a reply for a sequence of {n} tokens is "
                                f"unusable: {e}") from None
        return out

    def _jobs(self, prompts: list[list[dict]], seed: int, positions: list[int] | None):
        """(per prompt: its ids / reason it cannot be sent / None, [(request body, prompt tokens)] of those sent)."""
        positions = list(range(len(prompts))) if positions is None else positions
        prepared = self._prepare(prompts)
        return prepared, [(self._body(m, _request_seed(seed, pos), ids), self._prompt_tokens(m, ids))
                          for m, pos, ids in zip(prompts, positions, prepared) if not isinstance(ids, str)]

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()
            self._workers = None
        if self._pool is not None:
            self._loop.run_until_complete(self._pool.close())
            self._pool = None
        if self.cache is not None:
            self.cache.close()

    # -------------------------------------------------------------------------------------- requests
    def _prepare(self, prompts: list[list[dict]]) -> list[list[int] | str | None]:
        """Per prompt: its token ids through the local chat template when anything needs them (the completions
        endpoint, the budget, the tokens/min limit, the context check), the reason it cannot fit the context, or
        None. Each prompt is tokenised once."""
        o = self.opts
        if self.context is None or not (o.endpoint == "completions" or self.tpm is not None
                                        or o.budget_usd is not None or o.max_context_tokens is not None):
            return [None] * len(prompts)
        return self.context.encode(prompts)

    def _prompt_tokens(self, messages: list[dict], ids: list[int] | None) -> int:
        """The prompt's tokens: counted by the local tokenizer when at hand, else its UTF-8 bytes plus 8 per turn,
        an upper bound for any tokenizer whose tokens are at least one byte (the budget needs an upper bound)."""
        if ids is not None:
            return len(ids)
        return sum(len(m["content"].encode("utf-8")) + 8 for m in messages) + 8

    def _body(self, messages: list[dict], seed: int, ids: list[int] | None = None) -> dict:
        g, o = self.sampling, self.opts
        body: dict = {"model": self.served_model, "temperature": g.temperature, "top_p": g.top_p, "n": 1,
                      "seed": seed}
        if o.endpoint == "chat":
            body["messages"] = messages
            body[o.max_tokens_field] = g.max_new_tokens
            if self.want_logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = g.topk
        else:
            # the exact prompt tokens training will see (same chat template, same tokenizer)
            body["prompt"] = ids if ids is not None else models.encode_prompt(self.tokenizer, messages)
            body["max_tokens"] = g.max_new_tokens
            if self.want_logprobs:
                body["logprobs"] = g.topk
        if o.token_mapping == "token_ids":
            body["return_tokens_as_token_ids"] = True
        body.update(o.extra_body)
        return body

    async def _batch(self, jobs: list[tuple[dict, int]], read=None) -> list[_Outcome]:
        if self._pool is None:
            self._pool = _Pool(self.opts, self.api_key)
            self._sem = asyncio.Semaphore(self.opts.max_concurrency)
        tasks = [asyncio.ensure_future(self._request(body, prompt_tokens, read)) for body, prompt_tokens in jobs]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _request(self, body: dict, prompt_tokens: int, read=None) -> _Outcome:
        o, g = self.opts, self.sampling
        key = ac.cache_key(o.endpoint, body)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.meter.cache_hits += 1
                return _Outcome(reply=hit)
        if o.mode == "batch" and read is None:  # no reply from the batch (prefetch ran it): never sent online
            return _Outcome(error=self._batch_errors.get(key, "timeout: no reply from the batch"))
        estimate = prompt_tokens + g.max_new_tokens  # what the tokens/min bucket takes (the reply refunds the rest)
        worst = ac.cost_usd(prompt_tokens, g.max_new_tokens, o.price)
        # check and reserve in one step, before any wait: no await in between, so no other request can pass the
        # check on money this one is about to spend (the reservation is held across retries, released at the end)
        if o.budget_usd is not None and (self._budget_hit or self._spent() + self._reserved + worst > o.budget_usd):
            self._budget_hit = True  # and no later request starts either: the batch stops here
            return _Outcome(skipped=True, error="budget reached")
        self.meter.requests += 1
        self._reserved += worst
        try:
            return await self._attempts(key, body, estimate, read)
        finally:
            self._reserved -= worst

    async def _attempts(self, key: str, body: dict, estimate: int, read=None) -> _Outcome:
        o = self.opts
        reason = "not sent"
        for attempt in range(o.max_retries + 1):
            retry_after = None
            async with self._sem:
                if self.rpm is not None:
                    await asyncio.sleep(self.rpm.reserve(1))
                if self.tpm is not None:
                    await asyncio.sleep(self.tpm.reserve(estimate))
                self.meter.attempts += 1
                endpoint = self._pool.pick()
                text, reason, retry_after = await self._send(endpoint, body)
            if text is not None:
                # the slot is free: the requests waiting for it go out before this reply is read (replies that
                # arrive together would otherwise hold every next request back until all of them are read)
                await asyncio.sleep(0)
                parsed, reason = self._parse(text, read)
                if parsed is not None:
                    self._account(key, text, parsed, estimate)
                    return _Outcome(reply=text, parsed=parsed)
            if retry_after is False:  # not retryable
                break
            if attempt < o.max_retries:
                self.meter.count(self.meter.retries, reason.split(":")[0])
                if reason.startswith("connection error") and self._pool.alive(besides=endpoint):
                    continue  # fail over at once: another server of the pool is up
                wait = ac.backoff_delay(attempt, o.backoff_base_s, o.backoff_max_s, self.rng, retry_after or None)
                log.debug("api: %s, retry %d in %.2f s", reason, attempt + 1, wait)
                await asyncio.sleep(wait)
        else:
            reason = f"{reason} (gave up after {o.max_retries + 1} attempts)"
        self.meter.count(self.meter.failed, reason.split(":")[0].split(" (")[0])
        log.warning("api: request failed: %s", reason)
        return _Outcome(error=reason)

    async def _send(self, endpoint: _Endpoint, body: dict) -> tuple[bytes | None, str, float | None | bool]:
        """(a 200 reply's body or None, reason, Retry-After seconds or None; False when a retry cannot help)."""
        import openai

        path = "/chat/completions" if "messages" in body else "/completions"
        endpoint.in_flight += 1
        try:
            # the body as bytes: decoded once by msgspec, never into the openai package's pydantic objects
            text = await endpoint.client.post(path, cast_to=bytes, body=body)
        except openai.APIConnectionError as e:  # APITimeoutError included
            if _timed_out(e):
                return None, f"timeout: no reply within {self.opts.timeout_s:g} s", None
            reason = self._redact(f"connection error: {_cause(e)}")
            self._pool.failed(endpoint, reason)
            self._refused += 1
            if self._refused >= self._refused_limit:
                raise UserError(
                    f"teacher api {self._pool.names()} is down: {self._refused} connection attempts in a "
                    f"row failed (last: {reason}); finished batches are committed, rerun when the server is back "
                    "(teacher.api.max_connection_failures)") from None
            return None, reason, None
        except openai.APIStatusError as e:
            self._refused = 0  # the server answered
            self._pool.answered(endpoint)
            status = e.status_code
            message = self._redact(_error_message(e))
            if status in ac.FATAL_STATUSES:
                raise UserError(f"teacher api {endpoint.name}: HTTP {status} "
                                f"{ac.FATAL_STATUSES[status]}: {message}"
                                + (f" (key from ${self.opts.api_key_env})" if status in (401, 403) else "")) from None
            if ac.is_retryable(status):
                return None, f"HTTP {status}: {message}", ac.parse_retry_after(e.response.headers)
            return None, f"HTTP {status}: {message}", False
        finally:
            endpoint.in_flight -= 1
        self._refused = 0
        self._pool.answered(endpoint)
        return text, "", None

    def _parse(self, text: bytes, read=None) -> tuple[ac.Reply | None, str]:
        """(the reply read, "") or (None, why it is malformed)."""
        try:
            parsed = (read or self._read)(text)
        except ac.MalformedReply as e:
            return None, f"malformed reply: {e}"
        if read is None and self.opts.token_mapping == "token_ids" and not self._checked_ids:
            self._check_token_ids(parsed)
        return parsed, ""

    def _read(self, body: bytes | str) -> ac.Reply:
        k = self.sampling.topk if self.want_logprobs else None
        return ac.read_reply(body, self.opts.endpoint, k, *((self.mapper.lookup, self.mapper.memo) if k else ()))

    def _check_token_ids(self, parsed: ac.Reply) -> None:
        """Fail fast when a server ignores return_tokens_as_token_ids (every token would be unmapped)."""
        if parsed.tokens:
            if not parsed.tokens[0].startswith("token_id:"):
                raise UserError(f"teacher api: the server ignored return_tokens_as_token_ids (first token "
                                f"{parsed.tokens[0]!r}); use teacher.api.token_mapping: tokenizer, or start "
                                "vLLM with --return-tokens-as-token-ids")
            self._checked_ids = True

    def _account(self, key: str, body: bytes, reply: ac.Reply, estimate: int) -> None:
        p, c = reply.prompt_tokens, reply.completion_tokens
        cost = ac.cost_usd(p, c, self.opts.price)
        self.meter.prompt_tokens += p
        self.meter.completion_tokens += c
        self.meter.cost_usd += cost
        if self.tpm is not None and (p or c):
            self.tpm.refund(estimate - (p + c))
        if self.cache is not None:
            self.cache.put(key, body, p, c, cost)

    def _usage(self) -> dict:
        """This process's requests, plus its client processes' when it has them."""
        return self.meter.as_dict() if self._workers is None else self._workers.usage(self.meter)

    def _spent(self) -> float:
        return self.spent_before + self._usage()["cost_usd"]

    def _redact(self, text: str) -> str:
        return credentials.redact(text.replace(self.api_key, credentials.REDACTED) if self.api_key else text)

    # ------------------------------------------------------------------------------------- mapping
    def _generation(self, outcome: _Outcome) -> Generation:
        if outcome.reply is None:
            return _failed(outcome.error or "no reply")
        reply = outcome.parsed or self._read(outcome.reply)
        finish = FINISH.get(reply.finish_reason or "")
        if finish is None:
            return _failed(f"finish_reason {reply.finish_reason!r}", reply.text, reply.prompt_tokens)
        if not self.want_logprobs:
            return Generation(text=reply.text, token_ids=None, topk_ids=None, topk_logprobs=None,
                              finish_reason=finish, prompt_tokens=reply.prompt_tokens)
        for s in reply.unmapped_alternatives:  # stored as UNMAPPED_ID: training moves their mass into the tail
            self.mapper.note_unmapped(s, "alternative")
        unmapped = [t for t, i in zip(reply.tokens, reply.token_ids) if i is None]
        for t in unmapped:
            self.mapper.note_unmapped(t, "completion")
        self.mapper.counts["tokens"] += len(reply.tokens)
        if unmapped:
            return _failed(f"unmapped completion tokens: {len(unmapped)} of {len(reply.tokens)} "
                           f"(e.g. {unmapped[0]!r}; check teacher.model is the served model's tokenizer)",
                           reply.text, reply.prompt_tokens)
        return Generation(text=reply.text, token_ids=reply.token_ids, topk_ids=reply.topk_ids,
                          topk_logprobs=reply.topk_logprobs.astype(np.float16), finish_reason=finish,
                          prompt_tokens=reply.prompt_tokens)


DOWN_AFTER = 2  # connection failures in a row that take a server out of the pool
DOWN_FOR_S = 10.0  # ... for this long, then it is tried again


class _Endpoint:
    """One base URL of the pool: its client, requests in flight, and whether it is down."""

    def __init__(self, url: str, client):
        self.name, self.client = _safe_url(url), client
        self.in_flight = 0
        self.failures = 0  # connection failures in a row
        self.down_until = 0.0


class _Pool:
    """The teacher's base URLs. Each request goes to the server with the fewest requests in flight among
    those up; a server whose connections fail DOWN_AFTER times in a row is left out for DOWN_FOR_S seconds,
    and the requests that failed on it are retried on the others at once (no reply was received, so nothing
    is paid twice). When every server is down, requests go to the one that has been down longest."""

    def __init__(self, opts, api_key: str | None):
        import ssl

        import openai

        try:
            import certifi

            tls = ssl.create_default_context(cafile=certifi.where())
        except ImportError:  # pragma: no cover - httpx brings certifi
            tls = ssl.create_default_context()
        # the openai client over its aiohttp transport (openai[aiohttp]): a quarter less CPU per request than
        # over httpx, whose connection pool is scanned in full for every request
        self.endpoints = [_Endpoint(url, openai.AsyncOpenAI(
            base_url=url, api_key=api_key or "none", max_retries=0, timeout=opts.timeout_s,
            http_client=openai.DefaultAioHttpClient(verify=tls, timeout=opts.timeout_s)))  # one TLS context
            for url in opts.urls()]
        self.clock = time.monotonic

    def names(self) -> str:
        return ", ".join(e.name for e in self.endpoints)

    def pick(self) -> _Endpoint:
        now = self.clock()
        up = [e for e in self.endpoints if e.down_until <= now]
        if not up:
            return min(self.endpoints, key=lambda e: e.down_until)
        return min(up, key=lambda e: e.in_flight)

    def alive(self, besides: _Endpoint) -> bool:
        now = self.clock()
        return any(e is not besides and e.down_until <= now for e in self.endpoints)

    def failed(self, e: _Endpoint, reason: str) -> None:
        e.failures += 1
        if e.failures >= DOWN_AFTER and len(self.endpoints) > 1:
            if e.down_until <= self.clock():
                log.warning("teacher api: %s is down (%s); its requests go to the other servers of the pool",
                            e.name, reason)
            e.down_until = self.clock() + DOWN_FOR_S

    def answered(self, e: _Endpoint) -> None:
        if e.failures >= DOWN_AFTER and len(self.endpoints) > 1:
            log.info("teacher api: %s answers again", e.name)
        e.failures, e.down_until = 0, 0.0

    async def close(self) -> None:
        for e in self.endpoints:
            await e.client.close()


class _Scored:
    """A prompt_logprobs reply, decoded and read into top-k arrays once (MalformedReply, before it is cached,
    when it cannot be, or when `check` finds them unusable); `arrays` checks the length that was sent."""

    def __init__(self, body: bytes | str, k: int, check=None):
        self.rows, self.prompt_tokens, self.completion_tokens = ac.read_scored(body)
        self._arrays = ac.read_prompt_logprobs(self.rows, k, len(self.rows))
        problem = check(*self._arrays) if check is not None else None
        if problem:
            raise ac.MalformedReply(problem)

    def arrays(self, k: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.rows) != length:
            raise ac.MalformedReply(f"prompt_logprobs for {len(self.rows)} tokens, {length} were sent")
        return self._arrays


class _ClientProcesses:
    """`client_processes` worker processes, each an OpenAITeacher sending its share of every batch with
    max_concurrency / N in flight (rate limits and the budget left split N ways, so together they stay within
    them). They share the request cache (SQLite in WAL mode takes their writes in turn). This process builds
    the request bodies; a worker sends them, reads the replies into Generations and returns those with its
    running totals (requests, retries, cost; token-mapping counts)."""

    def __init__(self, tcfg: TeacherConfig, sampling: Sampling, cache_dir: Path | None, spent_before: float):
        import concurrent.futures
        import multiprocessing

        o, n = tcfg.api, tcfg.api.client_processes
        share = {"client_processes": 1, "max_concurrency": max(1, o.max_concurrency // n),
                 "max_connection_failures": max(1, o.connection_failure_limit() // n)}
        for name in ("requests_per_minute", "tokens_per_minute"):
            if getattr(o, name) is not None:
                share[name] = getattr(o, name) / n
        if o.budget_usd is not None:
            share["budget_usd"] = spent_before + max(o.budget_usd - spent_before, 0.0) / n or 1e-9
        self.tcfg = tcfg.model_copy(update={"api": o.model_copy(update=share)})
        self.n, self.budget = n, o.budget_usd
        self.pool = concurrent.futures.ProcessPoolExecutor(
            n, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start,
            initargs=(self.tcfg, sampling, cache_dir))
        self.totals: dict[int, dict] = {}  # worker pid -> its latest running totals

    def generate(self, jobs: list[tuple[dict, int]]) -> list[Generation]:
        shares = [jobs[w::self.n] for w in range(self.n)]  # interleaved: slow and fast requests spread evenly
        futures = [self.pool.submit(_worker_run, share) for share in shares if share]
        results, error = [], None
        for f in futures:  # every worker's answer first (their replies are cached either way), then any error
            try:
                gens, pid, totals = f.result()
                self.totals[pid] = totals
                results.append(gens)
            except BaseException as e:  # noqa: BLE001 - re-raised below, after the others finished
                error = error or e
        if isinstance(error, BudgetExceeded):  # a worker's share is spent: said for the whole run
            raise _budget_exceeded(self.budget) from None
        if error is not None:
            raise error
        out: list[Generation | None] = [None] * len(jobs)
        for w, gens in enumerate(results):
            out[w::self.n] = gens
        return out

    def usage(self, own: ac.Meter) -> dict:
        total = own.as_dict()
        for t in self.totals.values():
            for key, value in t["usage"].items():
                if isinstance(value, dict):
                    merged = dict(total[key])
                    for reason, count in value.items():
                        merged[reason] = merged.get(reason, 0) + count
                    total[key] = dict(sorted(merged.items()))
                else:
                    total[key] = round(total[key] + value, 6) if isinstance(value, float) else total[key] + value
        return total

    def mapping(self) -> dict:
        reports = [t["mapping"] for t in self.totals.values() if t.get("mapping")]
        if not reports:
            return {}
        merged = dict(reports[0])
        for r in reports[1:]:
            for key, value in r.items():
                if isinstance(value, int) and key != "vocab_clashes":
                    merged[key] = merged.get(key, 0) + value
            merged["unmapped_examples"] = list(dict.fromkeys(merged["unmapped_examples"] + r["unmapped_examples"]))[:5]
        return merged

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


_WORKER: OpenAITeacher | None = None


def _worker_start(tcfg: TeacherConfig, sampling: Sampling, cache_dir: Path | None) -> None:
    global _WORKER
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parent = os.getppid()

    def orphaned() -> None:  # a killed parent (SIGKILL, OOM) leaves no worker behind
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=orphaned, daemon=True).start()
    _WORKER = OpenAITeacher(tcfg, sampling, cache_dir)


def _worker_run(jobs: list[tuple[dict, int]]) -> tuple[list[Generation], int, dict]:
    gens = _WORKER.run_jobs(jobs)
    mapping = _WORKER.mapper.report() if _WORKER.mapper is not None else None
    return gens, os.getpid(), {"usage": _WORKER.meter.as_dict(), "mapping": mapping}


@contextlib.contextmanager
def _fewer_gc_passes(gen0: int = 100_000):
    """Collect the youngest generation every `gen0` allocations instead of every 700 while a batch is in
    flight. Each reply is parsed into thousands of small objects (freed by reference counting, not by the
    collector), and with hundreds of replies alive at once the default threshold spent about 1.2 ms of CPU
    per request re-scanning them (benchmarks/api_concurrency.py: 4.3 -> 3.1 ms at 256 in flight).
    The previous thresholds come back after the batch."""
    old = gc.get_threshold()
    gc.set_threshold(max(gen0, old[0]), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def _budget_exceeded(budget_usd: float, spent: float | None = None) -> BudgetExceeded:
    spent_text = "" if spent is None else f" (${spent:.4f} spent in this run)"
    return BudgetExceeded(f"teacher.api.budget_usd ${budget_usd:g} reached{spent_text}: finished batches are "
                          "committed and every paid reply is in the request cache; raise the budget and rerun to "
                          "continue")


def _failed(reason: str, text: str | None = None, prompt_tokens: int = 0) -> Generation:
    return Generation(text=text, token_ids=None, topk_ids=None, topk_logprobs=None, finish_reason="error",
                      prompt_tokens=prompt_tokens, error=reason)


def _request_seed(batch_seed: int, index: int) -> int:
    """A per-request seed from the batch seed and the position: distinct samples of one prompt stay distinct."""
    return int(stable_hash([batch_seed, index], 8), 16) & 0x7FFFFFFF


def _read_key(env_name: str | None) -> str | None:
    if env_name is None:
        return None
    key = os.environ.get(env_name)
    if not key:
        raise UserError(f"teacher.api.api_key_env: the environment variable {env_name} is not set (export it, or "
                        "set teacher.api.api_key_env: null for a server that needs no key)")
    return key


def _safe_url(url: str) -> str:
    """The URL as logs and manifests show it (`credentials.safe_url`: no password, query or key)."""
    return credentials.safe_url(url)


def _chain(e: BaseException | None) -> list[BaseException]:
    """An exception and those under it (its cause, else its context), outermost first."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def _timed_out(e: BaseException) -> bool:
    """Whether an APIConnectionError is a timeout. The aiohttp transport reports every failed connection
    (refused, dropped mid-reply) as a connect *timeout*; the aiohttp or OS error underneath tells which."""
    import aiohttp
    import openai

    if not isinstance(e, openai.APITimeoutError):
        return False
    for x in _chain(e):
        if isinstance(x, (TimeoutError, asyncio.TimeoutError)):
            return True
        if isinstance(x, (OSError, aiohttp.ClientConnectionError)):
            return False
    return True


def _cause(e: BaseException) -> str:
    """What went wrong under the openai client's "Connection error." on one line: the innermost OS error
    (`[Errno 111] Connect call failed`, refused, reset, DNS ...) when there is one, else the transport's message."""
    chain = _chain(e)
    os_errors = [x for x in chain if isinstance(x, OSError) and str(x)]
    if os_errors:
        return " ".join(str(os_errors[-1]).split())[:300]
    named = [x for x in chain[1:] if str(x)] or chain
    return " ".join(f"{type(named[0]).__name__}: {named[0]}".split())[:300]


def _error_message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        msg = body.get("message") or (body.get("error") or {}).get("message") if isinstance(body.get("error"), dict) \
            else body.get("message")
        if msg:
            return str(msg)[:300]
    return str(getattr(e, "message", e))[:300]


def _vocab_size(tcfg: TeacherConfig, tokenizer) -> int:
    """The teacher's logit width from its config.json when it is at hand, else the tokenizer's size."""
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(models.resolve_source(tcfg.model), revision=tcfg.revision,
                                         trust_remote_code=tcfg.trust_remote_code)
        return max(int(cfg.vocab_size), len(tokenizer))
    except Exception:  # noqa: BLE001 - a tokenizer-only directory: its size is the best we know
        return len(tokenizer)


def _summary(usage: dict, mapping: dict | None) -> str:
    text = (f"{usage['requests']} requests sent ({usage['attempts']} attempts), {usage['cache_hits']} from the "
            f"cache, retries {usage['retries'] or 0}, failed {usage['failed'] or 0}, "
            f"{usage['prompt_tokens']}+{usage['completion_tokens']} tokens, ${usage['cost_usd']:.4f} "
            f"(${usage['spent_usd_in_run']:.4f} in this run)")
    if mapping:
        unmapped = {k: v for k, v in mapping.items() if k.startswith("unmapped_") and k != "unmapped_examples"}
        if unmapped:
            text += f"; tokens that did not map: {unmapped} e.g. {', '.join(mapping['unmapped_examples'])}"
    return text
