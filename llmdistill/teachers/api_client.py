"""The pieces of the openai backend that do not talk HTTP: retry waits, rate limits, the request cache and
reading replies (what is spent: api_cost.py). Small and pure where possible, so each is tested on its own.
"""

from __future__ import annotations

import math
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from llmdistill.records import stable_hash
from llmdistill.teachers.token_map import UNMAPPED_ID

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


def cache_key(endpoint: str, body: dict) -> str:
    """The request cache key: everything the server sees (path + body), nothing about where it runs.

    The base URL is left out on purpose: the same model behind another address or port gives a hit.
    """
    return stable_hash({"endpoint": endpoint, "body": body}, length=40)


class RequestCache:
    """Good replies by request content, in SQLite (one committed row per reply: a kill loses at most the
    requests in flight). Failed requests are not stored, so any rerun sends them again; a reply that was billed
    but unusable leaves a row in `unusable` (what it cost, and why), so the money spent is all here."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed row survives a killed process
        self.db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL, "
                        "prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL, created REAL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS unusable (key TEXT NOT NULL, reason TEXT, prompt_tokens INTEGER, "
                        "completion_tokens INTEGER, cost_usd REAL, created REAL)")

    def get(self, key: str) -> bytes | str | None:
        """The reply body stored for `key` as it came from the server (decode it with `decode_json`)."""
        row = self.db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, reply: bytes | str, prompt_tokens: int, completion_tokens: int, cost: float) -> None:
        """Store a reply body as it came (bytes or text; never re-serialised)."""
        self.db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?)",
                        (key, reply, prompt_tokens, completion_tokens, cost, time.time()))

    def put_unusable(self, key: str, reason: str, tokens: tuple[int, int] | None, cost: float) -> None:
        """Record a reply that was billed but cannot be used (`tokens`: its usage, None where unreadable)."""
        p, c = tokens if tokens is not None else (None, None)
        self.db.execute("INSERT INTO unusable VALUES (?, ?, ?, ?, ?, ?)", (key, reason[:300], p, c, cost, time.time()))

    def spent_usd(self) -> float:
        """Every paid reply's cost: the good ones and the unusable ones."""
        return float(self.db.execute("SELECT (SELECT COALESCE(SUM(cost_usd), 0) FROM replies) + "
                                     "(SELECT COALESCE(SUM(cost_usd), 0) FROM unusable)").fetchone()[0])

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        self.db.close()


# ----------------------------------------------------------------------------------------- replies
class MalformedReply(Exception):
    """A 200 reply that is not what the API promises (not JSON, no choices, no logprobs asked for)."""


@dataclass
class Reply:
    """One reply, read and mapped to token ids in one pass (no object per log-prob)."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    tokens: list[str] | None = None  # the server's token strings; None when logprobs were not requested
    token_ids: list[int | None] | None = None  # each token's id, None where it did not map
    topk_ids: np.ndarray | None = None  # [T, k] int32, UNMAPPED_ID where an alternative did not map
    topk_logprobs: np.ndarray | None = None  # [T, k] float32, -inf in unused slots
    unmapped_alternatives: list[str] = field(default_factory=list)


def decode_json(data: bytes | str) -> dict:
    """A JSON object of any shape as a dict (a state file, a batch result line)."""
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError as e:
        raise MalformedReply(f"not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise MalformedReply("not a JSON object")
    return obj


# The replies' shapes, decoded by msgspec straight into these (fields not named here are skipped without
# building anything). A 32-token top-20 chat reply is about 65 kB, most of it the `bytes` list of every
# alternative, needed only for a token string holding U+FFFD (a piece of a UTF-8 character, whose string
# does not name its bytes): kept undecoded (msgspec.Raw, a view of the body) and decoded for those alone.
_NULL = msgspec.Raw(b"null")


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Alt(msgspec.Struct):
    token: str
    logprob: float | None
    bytes: msgspec.Raw = _NULL


class _Entry(msgspec.Struct):
    token: str
    bytes: msgspec.Raw = _NULL
    top_logprobs: list[_Alt] | None = None


class _ChatLogprobs(msgspec.Struct):
    content: list[_Entry] | None = None


class _Message(msgspec.Struct):
    content: str | None = None


class _ChatChoice(msgspec.Struct):
    message: _Message | None = None
    finish_reason: str | None = None
    logprobs: _ChatLogprobs | None = None


class _ChatReply(msgspec.Struct):
    choices: list[_ChatChoice]
    usage: _Usage | None = None


class _CompletionLogprobs(msgspec.Struct):
    tokens: list[str] | None = None
    token_logprobs: list[float | None] | None = None
    top_logprobs: list[dict[str, float | None] | None] | None = None


class _CompletionChoice(msgspec.Struct):
    text: str | None = None
    finish_reason: str | None = None
    logprobs: _CompletionLogprobs | None = None


class _CompletionReply(msgspec.Struct):
    choices: list[_CompletionChoice]
    usage: _Usage | None = None


class _PromptLogprob(msgspec.Struct):
    logprob: float | None


class _ScoredChoice(msgspec.Struct):
    prompt_logprobs: list[dict[str, _PromptLogprob] | None] | None = None


class _ScoredReply(msgspec.Struct):
    choices: list[_ScoredChoice]
    usage: _Usage | None = None


_DECODERS = {"chat": msgspec.json.Decoder(_ChatReply), "completions": msgspec.json.Decoder(_CompletionReply),
             "scored": msgspec.json.Decoder(_ScoredReply)}


def _decode(body: bytes | str, kind: str):
    try:
        return _DECODERS[kind].decode(body)
    except msgspec.ValidationError as e:
        raise MalformedReply(f"unexpected reply shape ({e})") from None
    except msgspec.DecodeError as e:
        raise MalformedReply(f"not JSON ({e})") from None


def _bytes_of(token: str, raw: msgspec.Raw) -> list[int] | None:
    """A token's `bytes` list where its string does not name them (it holds U+FFFD), else None."""
    return msgspec.json.decode(raw) if "\ufffd" in token else None


Lookup = Callable[[str, "list[int] | None"], "int | None"]


def read_reply(body: bytes | str, endpoint: str, k: int | None = None, lookup: Lookup | None = None,
               memo: dict | None = None) -> Reply:
    """Check and read one reply body of /chat/completions ("chat") or /completions; raise MalformedReply.

    With `k` (logprobs were requested) every token and its top-k alternatives are mapped to ids by
    `lookup(token, bytes)` (or found in `memo`), alternatives ordered by log-prob."""
    obj = _decode(body, endpoint)
    if not obj.choices:
        raise MalformedReply("no choices")
    choice = obj.choices[0]
    usage = obj.usage or _Usage()
    if endpoint == "chat":
        if choice.message is None:
            raise MalformedReply("choice without a message")
        text = choice.message.content or ""
    else:
        if choice.text is None:
            raise MalformedReply("choice without text")
        text = choice.text
    reply = Reply(text=text, finish_reason=choice.finish_reason, prompt_tokens=usage.prompt_tokens or 0,
                  completion_tokens=0)
    if k is not None:
        lp = choice.logprobs
        if lp is None:
            raise MalformedReply("logprobs were requested but the reply has none")
        entries = _chat_entries(lp) if endpoint == "chat" else _completion_entries(lp)
        _map_entries(reply, entries, k, lookup, memo)
    reply.completion_tokens = usage.completion_tokens or (len(reply.tokens) if reply.tokens else 0)
    return reply


def _chat_entries(lp: _ChatLogprobs):
    """Per position: (token, its bytes or None, alternatives' tokens, log-probs, bytes getter or None)."""
    return ((e.token, _bytes_of(e.token, e.bytes), [a.token for a in alts], [a.logprob for a in alts],
             lambda j, alts=alts: _bytes_of(alts[j].token, alts[j].bytes))
            for e in (lp.content or ()) for alts in (e.top_logprobs or (),))


def _completion_entries(lp: _CompletionLogprobs):
    tokens, values, tops = lp.tokens, lp.token_logprobs, lp.top_logprobs
    if tokens is None or values is None or len(tokens) != len(values):
        raise MalformedReply("logprobs.tokens / token_logprobs missing or of different lengths")
    tops = tops if tops is not None else [None] * len(tokens)
    if len(tops) != len(tokens):
        raise MalformedReply("logprobs.top_logprobs has a different length")
    return ((t, None, list(top or ()), list((top or {}).values()), None) for t, top in zip(tokens, tops))


def _map_entries(reply: Reply, entries, k: int, lookup: Lookup, memo: dict | None) -> None:
    """Fill `reply`'s token ids and [T, k] top-k arrays: on whole arrays in the common case (`_map_whole`),
    else row by row, with each alternative that needs it looked up on its own."""
    entries = list(entries)
    if not _map_whole(reply, entries, k, lookup, memo):
        _map_rows(reply, entries, k, lookup, memo)


def _map_rows(reply: Reply, entries: list, k: int, lookup: Lookup, memo: dict | None) -> None:
    """Row by row: alternatives sorted by log-prob and cut to k, a repeated one stored as UNMAPPED_ID."""
    tokens, ids, top_ids, top_lps, unmapped = [], [], [], [], []
    pad_ids, pad_lps = [UNMAPPED_ID] * k, [-math.inf] * k
    get = (memo or {}).get
    try:
        for token, raw, alt_tokens, alt_lps, alt_bytes in entries:
            if not isinstance(token, str):
                raise TypeError(f"token {token!r} is not a string")
            tokens.append(token)
            ids.append(lookup(token, raw))
            order = None  # where each alternative was in the reply, when it had to be sorted
            if alt_lps != sorted(alt_lps, reverse=True):
                order = sorted(range(len(alt_lps)), key=alt_lps.__getitem__, reverse=True)
                alt_tokens, alt_lps = [alt_tokens[j] for j in order], [alt_lps[j] for j in order]
            alt_tokens, alt_lps = alt_tokens[:k], alt_lps[:k]
            row = [get(t) for t in alt_tokens]
            if None in row or len(set(row)) < len(row):  # a miss, an unmapped or a repeated token: one by one
                row, seen = [], set()
                for j, t in enumerate(alt_tokens):
                    m = lookup(t, alt_bytes(j if order is None else order[j]) if alt_bytes else None)
                    if m is None or m in seen:
                        unmapped.append(t)
                        m = UNMAPPED_ID  # kept with its log-prob: training moves this mass into the tail
                    else:
                        seen.add(m)
                    row.append(m)
            n = len(row)
            top_ids.append(row + pad_ids[n:] if n < k else row)
            top_lps.append(alt_lps + pad_lps[n:] if n < k else alt_lps)
        lps = np.array(top_lps, dtype=np.float32).reshape(len(tokens), k)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise MalformedReply(f"bad logprobs entry ({type(e).__name__}: {e})") from None
    lps[~np.isfinite(lps)] = -np.inf  # a null or NaN log-prob: no mass
    reply.tokens, reply.token_ids, reply.unmapped_alternatives = tokens, ids, unmapped
    reply.topk_ids = np.array(top_ids, dtype=np.int32).reshape(len(tokens), k)
    reply.topk_logprobs = lps


def _map_whole(reply: Reply, entries: list, k: int, lookup: Lookup, memo: dict | None) -> bool:
    """The common case on whole arrays: k alternatives at every position, already in log-prob order (servers
    send them so), none repeated in a row; ids from `memo` (token string -> id, valid for strings that name
    their bytes), the others looked up one by one. False (nothing filled) when any of that does not hold."""
    if not entries or any(len(e[3]) != k for e in entries):
        return False
    try:
        lps = np.array([e[3] for e in entries], dtype=np.float64)  # the order as the row path sees it
    except (TypeError, ValueError):  # a null log-prob: the row-by-row path names it
        return False
    if not (lps[:, :-1] >= lps[:, 1:]).all():
        return False
    lps = lps.astype(np.float32)
    flat = [t for e in entries for t in e[2]]
    row_ids = list(map((memo or {}).get, flat))
    unmapped = []
    if None in row_ids:  # not seen yet, a piece of a character, or unmapped
        for i, m in enumerate(row_ids):
            if m is None:
                alt_bytes = entries[i // k][4]
                m = lookup(flat[i], alt_bytes(i % k) if alt_bytes else None)
                if m is None:
                    unmapped.append(flat[i])
                    m = UNMAPPED_ID  # kept with its log-prob: training moves this mass into the tail
                row_ids[i] = m
    ids = np.array(row_ids, dtype=np.int32).reshape(len(entries), k)
    by_id = np.sort(ids, axis=1)
    if ((by_id[:, 1:] == by_id[:, :-1]) & (by_id[:, 1:] != UNMAPPED_ID)).any():  # a repeated alternative
        return False
    lps[~np.isfinite(lps)] = -np.inf
    reply.tokens = [e[0] for e in entries]
    reply.token_ids = [lookup(e[0], e[1]) for e in entries]
    reply.topk_ids, reply.topk_logprobs, reply.unmapped_alternatives = ids, lps, unmapped
    return True


def read_scored(body: bytes | str) -> tuple[list, int, int]:
    """A /completions reply with `prompt_logprobs`: (its rows, prompt tokens, completion tokens)."""
    obj = _decode(body, "scored")
    if not obj.choices or obj.choices[0].prompt_logprobs is None:
        raise MalformedReply("prompt_logprobs were requested but the reply has none (a vLLM server, "
                             "started with --max-logprobs >= the k asked for, is needed)")
    usage = obj.usage or _Usage()
    return obj.choices[0].prompt_logprobs, usage.prompt_tokens or 0, usage.completion_tokens or 0


def read_prompt_logprobs(rows: list, k: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """vLLM's `prompt_logprobs` (the rows `read_scored` returns) as [length, k] arrays: row i is the distribution
    that produced prompt token i (row 0, which nothing predicts, stays empty: UNMAPPED_ID / -inf), its k
    most likely token ids by log-prob. vLLM adds the prompt token itself when it is outside the top k
    (rank > k); that entry is dropped, so the rest of the mass is the tail, as in a stored top-k."""
    if len(rows) != length:
        raise MalformedReply(f"prompt_logprobs for {len(rows)} tokens, {length} were sent")
    ids = np.full((length, k), UNMAPPED_ID, dtype=np.int32)
    lps = np.full((length, k), -np.inf, dtype=np.float32)
    try:
        for i, row in enumerate(rows):
            if not row:
                continue
            best = sorted(((-math.inf if v.logprob is None else v.logprob, int(t)) for t, v in row.items()),
                          reverse=True)[:k]
            bad = next((t for _, t in best if not 0 <= t < UNMAPPED_ID), None)
            if bad is not None:  # would not fit the int32 id arrays (and no vocabulary is that large)
                raise MalformedReply(f"prompt_logprobs at position {i}: token id {bad} is not a valid id "
                                     f"(0 <= id < 2**31 - 1)")
            ids[i, : len(best)] = [t for _, t in best]
            lps[i, : len(best)] = [lp for lp, _ in best]
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise MalformedReply(f"bad prompt_logprobs entry ({type(e).__name__}: {e})") from None
    lps[np.isnan(lps)] = -np.inf  # no mass; +inf stays, for the served signal's check to refuse
    return ids, lps
