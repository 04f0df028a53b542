"""The HTTP application (Starlette): routes, the request body's validation, and the model's one thread.

    POST /predict  {"texts": ["...", ...]}  ->  {"labels": [...], "ids": [...], "probs": [[...], ...]}
    GET  /health                             ->  {"status": "ok", "model": ..., "labels": [...], "batching": ...,
                                                  "requests": n, "model_calls": m}

Every reply is JSON; an error is `{"error": "<one line>"}` with a 4xx (503 while the model loads, 500 for a
bug). The body is read with a size limit and a deadline before anything is parsed, then parsed and
validated in one step by pydantic (its JSON parser refuses invalid UTF-8, lone surrogates and nesting
deeper than a few hundred levels). The model runs on one thread; with `batching`, requests that arrive
together share one model call (`Batcher`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import numpy as np
from pydantic import ConfigDict, Field, StringConstraints, ValidationError, create_model
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llmdistill.bert.serve.settings import ServeSettings

if TYPE_CHECKING:
    from llmdistill.bert.serve.predictor import Predictor

log = logging.getLogger("llmdistill")
Prediction = tuple[list[int], np.ndarray]


class Reject(Exception):
    """A request answered with `status` and a one-line `message` (the connection closes when `close`)."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


def error_reply(status: int, message: str, close: bool = False, headers: dict | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if close:
        headers["Connection"] = "close"
    return JSONResponse({"error": message}, status, headers)


def request_model(settings: ServeSettings):
    """The body of POST /predict, with this server's limits."""
    text = Annotated[str, StringConstraints(max_length=settings.max_text_chars)]
    return create_model("PredictRequest", __config__=ConfigDict(extra="forbid", strict=True),
                        texts=(list[text], Field(min_length=1, max_length=settings.max_texts)))


def describe(e: ValidationError) -> str:
    """One line for the first problem pydantic found in a body (the texts themselves are never echoed)."""
    errors = sorted(e.errors(include_url=False, include_input=False), key=lambda x: x["type"] != "extra_forbidden")
    err, more = errors[0], len(errors) - 1
    msg = err["msg"]
    if err["type"] == "json_invalid":
        line = "the body is not valid JSON: " + msg.removeprefix("Invalid JSON: ")
    elif not err["loc"]:
        line = 'the body must be a JSON object {"texts": [...]}: ' + msg[0].lower() + msg[1:]
    elif err["type"] == "extra_forbidden":
        line = f'unknown key {str(err["loc"][0])[:80]!r} (the body is {{"texts": [...]}})'
    else:
        line = ".".join(str(p) for p in err["loc"]) + ": " + msg[0].lower() + msg[1:]
    return line + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


async def read_body(request: Request, settings: ServeSettings) -> bytes:
    """The whole body, or Reject: 413 past max_body_bytes (declared or streamed), 408 when it does not arrive
    within timeout_s. (h11 has already refused a Content-Length that is not a decimal number.)"""
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > limit:
        raise Reject(413, f"the body is {int(declared):,} bytes; the limit is {limit:,}", close=True)

    async def collect() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Reject(413, f"the body is over the limit of {limit:,} bytes", close=True)
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(collect(), settings.timeout_s)
    except asyncio.TimeoutError:
        raise Reject(408, f"the body did not arrive within {settings.timeout_s:g} s", close=True) from None


@dataclass
class _Waiting:
    texts: list[str]
    future: asyncio.Future


class Batcher:
    """Micro-batching: requests queue; one task takes the first, everything already queued and whatever
    arrives within `wait_s`, up to `max_texts` texts, makes one model call and hands each request its rows."""

    def __init__(self, run: Callable[[list[str]], asyncio.Future], max_texts: int, wait_s: float):
        self.run, self.max_texts, self.wait_s = run, max_texts, wait_s
        self.queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def submit(self, texts: list[str]) -> Prediction:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._loop())
        waiting = _Waiting(texts, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(waiting)
        return await waiting.future

    async def _gather(self, first: _Waiting) -> tuple[list[_Waiting], _Waiting | None]:
        loop = asyncio.get_running_loop()
        batch, n, deadline = [first], len(first.texts), loop.time() + self.wait_s
        while n < self.max_texts:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if n + len(item.texts) > self.max_texts:
                return batch, item  # the next batch starts with it
            batch.append(item)
            n += len(item.texts)
        return batch, None

    async def _loop(self) -> None:
        carried = None
        while True:
            first = carried or await self.queue.get()
            batch, carried = await self._gather(first)
            batch = [w for w in batch if not w.future.done()]
            if not batch:
                continue
            try:
                ids, probs = await self.run([t for w in batch for t in w.texts])
            except Exception as e:  # every request of the call gets it (a 500); the loop goes on
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(e)
                continue
            start = 0
            for w in batch:
                end = start + len(w.texts)
                if not w.future.done():
                    w.future.set_result((ids[start:end], probs[start:end]))
                start = end


@dataclass
class Model:
    """The predictor once loaded (None while loading), and the one thread every model call runs on."""

    settings: ServeSettings
    predictor: Predictor | None = None
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmdistill-model"))
    batcher: Batcher | None = None
    requests: int = 0  # answered by the model
    calls: int = 0  # model calls (fewer than requests when batching gathered some)

    def _call(self, texts: list[str]) -> asyncio.Future:
        self.calls += 1
        return asyncio.get_running_loop().run_in_executor(self.executor, self.predictor, texts)

    async def predict(self, texts: list[str]) -> Prediction:
        self.requests += 1
        if not self.settings.batching:
            return await self._call(texts)
        if self.batcher is None:
            self.batcher = Batcher(self._call, self.settings.max_batch_texts, self.settings.batch_wait_ms / 1000)
        return await self.batcher.submit(texts)


def build_app(model: Model) -> Starlette:
    settings = model.settings
    body_model = request_model(settings)

    async def health(request: Request) -> JSONResponse:
        if model.predictor is None:
            return JSONResponse({"status": "loading"}, 503, {"Retry-After": "1"})
        return JSONResponse({"status": "ok", "model": model.predictor.name, "labels": model.predictor.labels,
                             "batching": settings.batching, "requests": model.requests, "model_calls": model.calls})

    async def predict(request: Request) -> JSONResponse:
        if model.predictor is None:
            return error_reply(503, "the model is loading; retry shortly", close=True, headers={"Retry-After": "1"})
        try:
            raw = await read_body(request, settings)
        except Reject as e:
            return error_reply(e.status, e.message, e.close)
        except ClientDisconnect:
            return error_reply(400, "the client went away before sending the body", close=True)
        try:
            texts = body_model.model_validate_json(raw.removeprefix(b"\xef\xbb\xbf")).texts
        except ValidationError as e:
            return error_reply(400, describe(e))
        start = time.perf_counter()
        ids, probs = await model.predict(texts)
        if not np.isfinite(probs).all():
            return error_reply(500, "the model returned non-finite logits")
        log.debug("predict: %d texts in %.1f ms", len(texts), 1000 * (time.perf_counter() - start))
        labels = model.predictor.labels
        return JSONResponse({"labels": [labels[i] for i in ids], "ids": ids, "probs": np.round(probs, 6).tolist()})

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        reason = {404: f"no route {request.url.path[:200]} (POST /predict, GET /health)",
                  405: f"{request.method} is not allowed on {request.url.path[:200]}"}.get(exc.status_code, exc.detail)
        return error_reply(exc.status_code, reason, headers=exc.headers)

    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("serve: %s %s failed", request.method, request.url.path, exc_info=exc)
        return error_reply(500, f"internal error: {type(exc).__name__} (logged by the server)", close=True)

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health, methods=["GET"])],
                     exception_handlers={HTTPException: http_error, Exception: bug})
