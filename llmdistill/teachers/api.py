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
requests; any reply resets the count) that could not connect, or were not accepted within
`connect_timeout_s` (api_pool.py). A prompt that cannot fit `max_context_tokens` is not sent
(generate.too_long).

The cost of every paid reply is counted from `teacher.api.price`, unusable ones included (api_cost.py). With
`teacher.api.budget_usd`, each request reserves its worst case (prompt tokens + max_new_tokens at the price)
before it waits for a slot, in the same step as the check that it fits beside what is spent (paid replies in
the cache) and reserved; the reply releases the reservation and counts its real cost, and a retry after a
billed but unusable reply takes the reservation again. So the money spent never passes the budget (when the
prompt count is an upper bound: see `_prompt_tokens`). The first request that does not fit stops the batch:
the stage exits with BudgetExceeded (exit code 4), everything finished before it committed.

The teacher holds an event loop, the pool's HTTP sessions, the request cache and maybe client processes
(api_workers.py); `close()` releases them, and a teacher dropped without it releases them when it is
collected or at exit, so no session is left open on any path.

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
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmdistill import credentials, models
from llmdistill.config import TeacherConfig
from llmdistill.errors import BudgetExceeded, UserError
from llmdistill.records import stable_hash
from llmdistill.teachers import api_client as ac
from llmdistill.teachers.api_cost import Meter, billed_tokens, budget_exceeded, cost_usd, prompt_token_bound, summary
from llmdistill.teachers.base import ContextCheck, Generation, Sampling, Teacher
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


class _Held:
    """What an OpenAITeacher holds open, apart from the teacher itself (so a finalizer can close it)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.pool = None  # api_pool.Pool, made on first use
        self.cache: ac.RequestCache | None = None
        self.workers = None  # api_workers.ClientProcesses (client_processes > 1), started on first use
        self.batch_client = None  # the synchronous client of mode: batch

    def close(self) -> None:
        """Everything, in order, each part once. Run from a thread of its own when this thread is running another
        event loop (the teacher collected there): a loop cannot be run inside another."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # the usual case: no loop running here
            self._close()
            return
        closer = threading.Thread(target=self._close, name="close-openai-teacher")
        closer.start()
        closer.join()

    def _close(self) -> None:
        workers, self.workers = self.workers, None
        if workers is not None:
            workers.close()
        loop = self.loop
        if not loop.is_closed():
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]  # a batch cut short (Ctrl-C)
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                pool, self.pool = self.pool, None
                if pool is not None:
                    loop.run_until_complete(pool.close())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
        client, self.batch_client = self.batch_client, None
        if client is not None:
            client.close()
        cache, self.cache = self.cache, None
        if cache is not None:
            cache.close()


class OpenAITeacher(Teacher):
    accepts_cache_dir = True

    @classmethod
    def gpus(cls, tcfg: TeacherConfig, gpus_available: bool) -> int:
        """None: the model runs on the server."""
        return 0

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
        self._held = _Held()
        self._closer = weakref.finalize(self, self._held.close)  # close(), or collected, or at exit: once
        self.cache = ac.RequestCache(Path(cache_dir) / "api.sqlite") if self.opts.cache and cache_dir else None
        self._held.cache = self.cache
        self.spent_before = self.cache.spent_usd() if self.cache is not None else 0.0
        self.meter = Meter()
        self.rpm = ac.TokenBucket(self.opts.requests_per_minute) if self.opts.requests_per_minute else None
        self.tpm = ac.TokenBucket(self.opts.tokens_per_minute) if self.opts.tokens_per_minute else None
        self.rng = random.Random(0)
        self._loop = self._held.loop
        self._batches = None  # BatchRunner (mode: batch), made on first use
        self._batch_errors: dict[str, str] = {}  # request key -> why the batch left it without a reply
        self._sem: asyncio.Semaphore | None = None
        self._reserved = 0.0  # worst-case dollars of the requests started and not finished
        self._budget_hit = False
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
            prov["token_mapping"] = self.mapper.report() if self._held.workers is None else self._held.workers.mapping()
        log.info("teacher api: %s", summary(prov["api_usage"], prov.get("token_mapping")))
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

            o = self.opts
            self._held.batch_client = client = openai.OpenAI(
                base_url=o.urls()[0], api_key=self.api_key or "none", max_retries=o.max_retries,
                timeout=openai.Timeout(o.timeout_s, connect=o.connect_timeout()))
            self._batches = BatchRunner(client, self.cache.path.parent, self.cache, o.endpoint, o.price, self.meter,
                                        o.batch_poll_s, self._read, self._spent, o.budget_usd, _safe_url(o.urls()[0]))
        self._batch_errors.update(self._batches.run(requests, self.sampling.max_new_tokens))

    def _processes(self):
        if self._held.workers is None:
            from llmdistill.teachers.api_workers import ClientProcesses

            cache_dir = self.cache.path.parent if self.cache is not None else None  # (an empty cache is falsy)
            self._held.workers = ClientProcesses(self.tcfg, self.sampling, cache_dir, self.spent_before)
        return self._held.workers

    def run_jobs(self, jobs: list[tuple[dict, int]]) -> list[Generation]:
        """Send prepared requests and read their replies (what a client process does for its share)."""
        with _fewer_gc_passes():
            outcomes = self._loop.run_until_complete(self._batch(jobs))
        if self._budget_hit:
            raise self._budget_error()
        return [self._generation(o) for o in outcomes]

    def _budget_error(self) -> BudgetExceeded:
        return budget_exceeded(self.opts.budget_usd, self._spent())

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
                raise UserError(f"served teacher {self._held.pool.names()}: scoring a sequence "
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
        """Stop the client processes, close the HTTP sessions, the event loop and the request cache (once)."""
        self._closer()

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
        return prompt_token_bound(messages)

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
        if self._held.pool is None:
            from llmdistill.teachers.api_pool import Pool

            self._held.pool = Pool(self.opts, self.api_key, [_safe_url(u) for u in self.opts.urls()])
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
        worst = cost_usd(prompt_tokens, g.max_new_tokens, o.price)
        # check and reserve in one step, before any wait: no await in between, so no other request can pass the
        # check on money this one is about to spend (the reservation is held across retries, released at the end)
        if o.budget_usd is not None and (self._budget_hit or self._spent() + self._reserved + worst > o.budget_usd):
            self._budget_hit = True  # and no later request starts either: the batch stops here
            return _Outcome(skipped=True, error="budget reached")
        self.meter.requests += 1
        self._reserved += worst
        try:
            return await self._attempts(key, body, prompt_tokens, worst, read)
        finally:
            self._reserved -= worst

    async def _attempts(self, key: str, body: dict, prompt_tokens: int, worst: float, read=None) -> _Outcome:
        o = self.opts
        pool = self._held.pool
        estimate = prompt_tokens + self.sampling.max_new_tokens  # what the tokens/min bucket takes (refunded later)
        reason = "not sent"
        for attempt in range(o.max_retries + 1):
            retry_after = None
            async with self._sem:
                if self.rpm is not None:
                    await asyncio.sleep(self.rpm.reserve(1))
                if self.tpm is not None:
                    await asyncio.sleep(self.tpm.reserve(estimate))
                self.meter.attempts += 1
                endpoint = pool.pick()
                text, reason, retry_after = await pool.send(endpoint, body, self._redact)
            if text is not None:
                # the slot is free: the requests waiting for it go out before this reply is read (replies that
                # arrive together would otherwise hold every next request back until all of them are read)
                await asyncio.sleep(0)
                try:
                    parsed, reason = self._parse(text, read)
                except UserError:  # the server ignored what it was asked: billed all the same
                    self._bill_unusable(key, text, "token ids not returned", worst, estimate)
                    raise
                if parsed is not None:
                    self._account(key, text, parsed, estimate)
                    return _Outcome(reply=text, parsed=parsed)
                self._bill_unusable(key, text, reason, worst, estimate)
                # this attempt spent its reservation: the retry takes it again, or the budget is reached
                if o.budget_usd is not None and attempt < o.max_retries and \
                        self._spent() + self._reserved > o.budget_usd:
                    self._budget_hit = True
                    return _Outcome(skipped=True, error="budget reached")
            if retry_after is False:  # not retryable
                break
            if attempt < o.max_retries:
                self.meter.count(self.meter.retries, reason.split(":")[0])
                if reason.startswith("connection error") and pool.alive(besides=endpoint):
                    continue  # fail over at once: another server of the pool is up
                wait = ac.backoff_delay(attempt, o.backoff_base_s, o.backoff_max_s, self.rng, retry_after or None)
                log.debug("api: %s, retry %d in %.2f s", reason, attempt + 1, wait)
                await asyncio.sleep(wait)
        else:
            reason = f"{reason} (gave up after {o.max_retries + 1} attempts)"
        self.meter.count(self.meter.failed, reason.split(":")[0].split(" (")[0])
        log.warning("api: request failed: %s", reason)
        return _Outcome(error=reason)

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
        cost = cost_usd(p, c, self.opts.price)
        self.meter.bill((p, c), cost)
        if self.tpm is not None and (p or c):
            self.tpm.refund(estimate - (p + c))
        if self.cache is not None:
            self.cache.put(key, body, p, c, cost)

    def _bill_unusable(self, key: str, body: bytes, reason: str, worst: float, estimate: int) -> None:
        """A reply that came back but cannot be used is billed all the same: counted at its `usage` where that can
        be read, else at the request's worst case, and recorded in the cache (the budget of a rerun counts it)."""
        tokens = billed_tokens(body)
        cost = cost_usd(*tokens, self.opts.price) if tokens is not None else worst
        self.meter.bill(tokens, cost, usable=False)
        if self.tpm is not None and tokens is not None and any(tokens):
            self.tpm.refund(estimate - sum(tokens))
        if self.cache is not None:
            self.cache.put_unusable(key, reason, tokens, cost)

    def _usage(self) -> dict:
        """This process's requests, plus its client processes' when it has them."""
        workers = self._held.workers
        return self.meter.as_dict() if workers is None else workers.usage(self.meter)

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


def _vocab_size(tcfg: TeacherConfig, tokenizer) -> int:
    """The teacher's logit width from its config.json when it is at hand, else the tokenizer's size."""
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(models.resolve_source(tcfg.model), revision=tcfg.revision,
                                         trust_remote_code=tcfg.trust_remote_code)
        return max(int(cfg.vocab_size), len(tokenizer))
    except Exception:  # noqa: BLE001 - a tokenizer-only directory: its size is the best we know
        return len(tokenizer)
