"""The pieces of the openai backend that do not talk HTTP: retry waits, rate limits, the request cache,
cost accounting and reading replies. Small and pure where possible, so each is tested on its own.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmdistill.records import stable_hash

# HTTP statuses worth another attempt (the set the openai client itself retries): request timeout,
# conflict, rate limit, server errors.
RETRY_STATUSES = frozenset({408, 409, 429})
# Statuses that no retry and no other request can fix: the whole run stops with a clear message.
FATAL_STATUSES = {401: "authentication failed", 403: "permission denied", 404: "not found (check base_url and "
                  "served_model)"}


def is_retryable(status: int) -> bool:
    return status in RETRY_STATUSES or status >= 500


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number `attempt` (0 = the first retry).

    Exponential backoff with full jitter: uniform(0, min(cap, base * 2^attempt)), so clients that failed
    together do not retry together. A server's Retry-After (seconds) is a floor, capped at `cap`.
    """
    delay = rng.uniform(0.0, min(cap, base * 2.0**attempt))
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, cap))
    return delay


def parse_retry_after(headers) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (a number; HTTP dates are ignored)."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return float(value) / scale
            except ValueError:
                continue
    return None


class TokenBucket:
    """A rate limit of `per_minute` units per minute, bursting up to one second's worth (at least 1 unit).

    `reserve(n)` takes n units now and returns how long the caller must wait before using them (the
    bucket may go into debt, so a request larger than the burst still goes through, just later). Callers
    that reserve in turn are served in that order at exactly the configured rate.
    """

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic):
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate, 1.0)
        self.tokens = self.capacity
        self.clock = clock
        self.last = clock()

    def reserve(self, amount: float) -> float:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= amount
        return max(0.0, -self.tokens / self.rate)

    def refund(self, amount: float) -> None:
        """Give back units reserved but not used (a negative amount takes more)."""
        self.tokens = min(self.capacity, self.tokens + amount)


def cost_usd(prompt_tokens: int, completion_tokens: int, price) -> float:
    """Dollars for one reply at `price` (USD per 1M prompt / completion tokens)."""
    return (prompt_tokens * price.prompt + completion_tokens * price.completion) / 1e6


def cache_key(endpoint: str, body: dict) -> str:
    """The request cache key: everything the server sees (path + body), nothing about where it runs.

    The base URL is left out on purpose: the same model behind another address or port gives a hit.
    """
    return stable_hash({"endpoint": endpoint, "body": body}, length=40)


class RequestCache:
    """Good replies by request content, in SQLite (one committed row per reply: a kill loses at most the
    requests in flight). Failed requests are not stored, so any rerun sends them again."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed row survives a killed process
        self.db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL, "
                        "prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL, created REAL)")

    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, reply: dict, prompt_tokens: int, completion_tokens: int, cost: float) -> None:
        self.db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?)",
                        (key, json.dumps(reply, separators=(",", ":")), prompt_tokens, completion_tokens, cost,
                         time.time()))

    def spent_usd(self) -> float:
        return float(self.db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM replies").fetchone()[0])

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        self.db.close()


@dataclass
class Meter:
    """What this process sent and spent (the manifest and the logs report it)."""

    requests: int = 0  # distinct requests that needed the network
    attempts: int = 0  # HTTP attempts, retries included
    cache_hits: int = 0
    retries: dict = field(default_factory=dict)  # reason -> count
    failed: dict = field(default_factory=dict)  # final reason -> count
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def count(self, table: dict, reason: str) -> None:
        table[reason] = table.get(reason, 0) + 1

    def as_dict(self) -> dict:
        return {"requests": self.requests, "attempts": self.attempts, "cache_hits": self.cache_hits,
                "retries": dict(sorted(self.retries.items())), "failed": dict(sorted(self.failed.items())),
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost_usd": round(self.cost_usd, 6)}


# ----------------------------------------------------------------------------------------- replies
class MalformedReply(Exception):
    """A 200 reply that is not what the API promises (not JSON, no choices, no logprobs asked for)."""


@dataclass
class TokenLogprobs:
    token: str
    raw: list[int] | None  # the `bytes` field, when the server sends it
    logprob: float
    top: list[tuple[str, list[int] | None, float]]


@dataclass
class Reply:
    text: str
    finish_reason: str | None
    tokens: list[TokenLogprobs] | None  # None when logprobs were not requested
    prompt_tokens: int
    completion_tokens: int


def decode_json(text: str) -> dict:
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MalformedReply(f"not JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(obj, dict):
        raise MalformedReply("not a JSON object")
    return obj


def read_reply(obj: dict, endpoint: str, want_logprobs: bool) -> Reply:
    """Check and read one reply of /chat/completions ("chat") or /completions; raise MalformedReply."""
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedReply("no choices")
    choice = choices[0]
    usage = obj.get("usage") or {}
    if endpoint == "chat":
        message = choice.get("message")
        if not isinstance(message, dict):
            raise MalformedReply("choice without a message")
        text = message.get("content") or ""
    else:
        text = choice.get("text")
        if not isinstance(text, str):
            raise MalformedReply("choice without text")
    tokens = None
    if want_logprobs:
        lp = choice.get("logprobs")
        if not isinstance(lp, dict):
            raise MalformedReply("logprobs were requested but the reply has none")
        tokens = _chat_logprobs(lp) if endpoint == "chat" else _completion_logprobs(lp)
    return Reply(text=text if isinstance(text, str) else str(text), finish_reason=choice.get("finish_reason"),
                 tokens=tokens, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                 completion_tokens=int(usage.get("completion_tokens") or (len(tokens) if tokens else 0)))


def _chat_logprobs(lp: dict) -> list[TokenLogprobs]:
    content = lp.get("content")
    if content is None:
        content = []
    if not isinstance(content, list):
        raise MalformedReply("logprobs.content is not a list")
    out = []
    try:
        for entry in content:
            top = [(t["token"], t.get("bytes"), float(t["logprob"])) for t in entry.get("top_logprobs") or []]
            out.append(TokenLogprobs(entry["token"], entry.get("bytes"), float(entry["logprob"]), top))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise MalformedReply(f"bad logprobs entry ({type(e).__name__}: {e})") from None
    return out


def _completion_logprobs(lp: dict) -> list[TokenLogprobs]:
    tokens, values, tops = lp.get("tokens"), lp.get("token_logprobs"), lp.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        raise MalformedReply("logprobs.tokens / token_logprobs missing or of different lengths")
    tops = tops if isinstance(tops, list) else [None] * len(tokens)
    if len(tops) != len(tokens):
        raise MalformedReply("logprobs.top_logprobs has a different length")
    try:
        return [TokenLogprobs(t, None, float(v), [(s, None, float(x)) for s, x in (top or {}).items()])
                for t, v, top in zip(tokens, values, tops)]
    except (TypeError, ValueError, AttributeError) as e:
        raise MalformedReply(f"bad logprobs entry ({type(e).__name__}: {e})") from None
