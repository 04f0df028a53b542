"""The servers of the openai backend: a pool of base URLs, one attempt sent to one of them, and what its failure
means.

Each request goes to the server with the fewest requests in flight among those up; a server whose connections
fail DOWN_AFTER times in a row is left out for DOWN_FOR_S seconds, and the requests that failed on it are
retried on the others at once (no reply was received, so nothing is paid twice). When every server is down,
requests go to the one that has been down longest.

A connection failure is an attempt that reached no server: refused, reset before a reply, no route, or not
accepted within `connect_timeout_s` (a server behind a firewall that drops connections, or one whose listen
backlog is full). `max_connection_failures` of them in a row, across requests and servers, and the endpoint is
down: the stage stops with one line. Any reply (an HTTP error included) resets the count. A connection that was
made but gave no reply within `timeout_s` is a timeout, retried but not counted: the server may just be slow.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

from llmdistill.errors import UserError
from llmdistill.teachers import api_client as ac

log = logging.getLogger("llmdistill")

DOWN_AFTER = 2  # connection failures in a row that take a server out of the pool
DOWN_FOR_S = 10.0  # ... for this long, then it is tried again


class Endpoint:
    """One base URL of the pool: its client, requests in flight, and whether it is down."""

    def __init__(self, name: str, client):
        self.name, self.client = name, client
        self.in_flight = 0
        self.failures = 0  # connection failures in a row
        self.down_until = 0.0


class Pool:
    """The teacher's servers (`opts.urls()`, shown as `names`), each behind its own openai client."""

    def __init__(self, opts, api_key: str | None, names: list[str]):
        import openai

        self.opts = opts
        self.connect_timeout_s = opts.connect_timeout()
        timeout = openai.Timeout(opts.timeout_s, connect=self.connect_timeout_s)
        tls = _tls_context()
        # the openai client over its aiohttp transport (openai[aiohttp]): a quarter less CPU per request than
        # over httpx, whose connection pool is scanned in full for every request
        self.endpoints = [Endpoint(name, openai.AsyncOpenAI(
            base_url=url, api_key=api_key or "none", max_retries=0, timeout=timeout,
            http_client=openai.DefaultAioHttpClient(verify=tls, timeout=timeout)))  # one TLS context
            for url, name in zip(opts.urls(), names)]
        self.clock = time.monotonic
        self.refused = 0  # attempts in a row that reached no server (any reply resets it)
        self.refused_limit = opts.connection_failure_limit()

    def names(self) -> str:
        return ", ".join(e.name for e in self.endpoints)

    def pick(self) -> Endpoint:
        now = self.clock()
        up = [e for e in self.endpoints if e.down_until <= now]
        if not up:
            return min(self.endpoints, key=lambda e: e.down_until)
        return min(up, key=lambda e: e.in_flight)

    def alive(self, besides: Endpoint) -> bool:
        now = self.clock()
        return any(e is not besides and e.down_until <= now for e in self.endpoints)

    async def send(self, endpoint: Endpoint, body: dict, redact: Callable[[str], str]
                   ) -> tuple[bytes | None, str, float | None | bool]:
        """One attempt: (a 200 reply's body or None, why not, Retry-After seconds or None; False when a retry
        cannot help). Raises UserError for what no retry can fix: the endpoint is down, 401, 403, 404. `redact`
        removes the key from any text that may echo it (the pool keeps no reference to it, nor to the teacher)."""
        import openai

        path = "/chat/completions" if "messages" in body else "/completions"
        endpoint.in_flight += 1
        try:
            # the body as bytes: decoded once by msgspec, never into the openai package's pydantic objects
            text = await endpoint.client.post(path, cast_to=bytes, body=body)
        except openai.APIConnectionError as e:  # APITimeoutError included
            kind = _failure(e)
            if kind == "read":
                return None, f"timeout: no reply within {self.opts.timeout_s:g} s", None
            cause = f"no connection within {self.connect_timeout_s:g} s" if kind == "connect" else _cause(e)
            reason = redact(f"connection error: {cause}")
            self._failed(endpoint, reason)
            return None, reason, None
        except openai.APIStatusError as e:
            self._answered(endpoint)
            status = e.status_code
            message = redact(_error_message(e))
            if status in ac.FATAL_STATUSES:
                raise UserError(f"teacher api {endpoint.name}: HTTP {status} {ac.FATAL_STATUSES[status]}: {message}"
                                + (f" (key from ${self.opts.api_key_env})" if status in (401, 403) else "")) from None
            if ac.is_retryable(status):
                return None, f"HTTP {status}: {message}", ac.parse_retry_after(e.response.headers)
            return None, f"HTTP {status}: {message}", False
        finally:
            endpoint.in_flight -= 1
        self._answered(endpoint)
        return text, "", None

    def _failed(self, e: Endpoint, reason: str) -> None:
        """An attempt on `e` reached no server: take `e` out of the pool for a while; stop when it was the
        `refused_limit`-th in a row."""
        e.failures += 1
        if e.failures >= DOWN_AFTER and len(self.endpoints) > 1:
            if e.down_until <= self.clock():
                log.warning("teacher api: %s is down (%s); its requests go to the other servers of the pool",
                            e.name, reason)
            e.down_until = self.clock() + DOWN_FOR_S
        self.refused += 1
        if self.refused >= self.refused_limit:
            raise UserError(
                f"teacher api {self.names()} is down: {self.refused} connection attempts in a row failed (last: "
                f"{reason}); finished batches are committed, rerun when the server is back "
                "(teacher.api.max_connection_failures, teacher.api.connect_timeout_s)") from None

    def _answered(self, e: Endpoint) -> None:
        self.refused = 0
        if e.failures >= DOWN_AFTER and len(self.endpoints) > 1:
            log.info("teacher api: %s answers again", e.name)
        e.failures, e.down_until = 0, 0.0

    async def close(self) -> None:
        for e in self.endpoints:
            await e.client.close()


def _tls_context() -> ssl.SSLContext:
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:  # pragma: no cover - httpx brings certifi
        return ssl.create_default_context()


def _chain(e: BaseException | None) -> list[BaseException]:
    """An exception and those under it (its cause, else its context), outermost first."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def _failure(e: BaseException) -> str:
    """What a failed attempt (an openai APIConnectionError) was: "connect" (no connection within the connect
    timeout), "read" (connected, no reply within timeout_s) or "error" (refused, reset, DNS, ...). The aiohttp
    transport reports every failed connection as a connect *timeout*; the aiohttp or OS error underneath tells
    which it was."""
    import aiohttp
    import openai

    if not isinstance(e, openai.APITimeoutError):
        return "error"
    for x in _chain(e):
        if isinstance(x, aiohttp.ConnectionTimeoutError):  # the connect timeout (sock_connect, or connect)
            return "connect"
        if isinstance(x, (TimeoutError, asyncio.TimeoutError)):
            return "read"
        if isinstance(x, (OSError, aiohttp.ClientConnectionError)):
            return "error"
    return "read"


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
