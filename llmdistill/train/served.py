"""A served teacher for training (`train.teacher_signal: served`): the teacher stays behind a vLLM server and
never enters training memory.

Each training sequence (prompt + completion token ids, exactly what the student sees) is sent to the
server's /completions with `prompt_logprobs: k`; the reply's top-k per position becomes the batch's
`teacher_ids` / `teacher_logprobs`, the very tensors the stored path reads from the dataset, so the same
chunked losses, tail policies and checks apply. The collator asks, so with a DataLoader worker the next
batch's log-probs are fetched while the current step trains. Requests go through the openai backend
(a pool of servers, retries, the request cache: a resumed run does not ask again).

Data from several teachers (generate.routing): `RoutedScorer` sends each row to the server of the teacher
that wrote it (train.served_teachers; the default teacher's is train.served).

Before step 1, `check_server` makes sure the server serves the named model, with the teacher's tokenizer
(a probe text tokenised there and here must give the same ids) and a context long enough for the
training sequences.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from llmdistill import credentials
from llmdistill.config import APIOptions, TeacherConfig
from llmdistill.credentials import safe_url
from llmdistill.errors import UserError

log = logging.getLogger("llmdistill")

# tokenised on the server and here: byte-level merges, accents, CJK, an emoji, digits, a newline
PROBE = "Distillation: naïve café, 東京の天気, 🙂 12345 tokens\nend."


def served_teacher_config(model: str, revision: str | None, served: APIOptions) -> TeacherConfig:
    """The teacher config the scorer runs: the openai backend on /completions with token ids as ids."""
    return TeacherConfig(model=model, revision=revision, backend="openai",
                         api=served.model_copy(update={"endpoint": "completions", "token_mapping": "token_ids"}))


class ServedScorer:
    """Callable: token sequences -> per sequence ([L, k] ids, [L, k] log-probs) from the server, each checked
    (`signal_problem`: ids in [0, vocab), log-probs <= 0 that sum to at most 1) before it reaches a batch: a
    reply that fails is malformed (retried, never cached), and a sequence with no usable reply stops training
    with one line naming the server. The client is made on first use in the process that uses it (a
    DataLoader worker), never carried across a fork."""

    def __init__(self, tcfg: TeacherConfig, k: int, cache_dir: Path | None, vocab: int):
        self.tcfg, self.k, self.cache_dir, self.vocab = tcfg, k, cache_dir, vocab
        self._teacher = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_teacher": None}

    def __call__(self, sequences: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._teacher is None:
            from llmdistill.teachers import Sampling
            from llmdistill.teachers.api import OpenAITeacher

            self._teacher = OpenAITeacher(self.tcfg, Sampling.scoring(self.k), self.cache_dir)
        return self._teacher.prompt_topk(sequences, self.k, check=functools.partial(signal_problem,
                                                                                     vocab=self.vocab))


# How far a served log-prob may stray above 0, and the top-k's probabilities above 1, before the signal is
# impossible: vLLM's float32 log_softmax is off by about 1e-7; a wrong server by far more (+50, 20 x 1).
SIGNAL_TOLERANCE = 1e-3


def signal_problem(ids: np.ndarray, lps: np.ndarray, vocab: int) -> str | None:
    """What makes a served top-k ([L, k] ids, [L, k] log-probs; row 0 empty) impossible, or None: an id outside
    [0, vocab) (the KD term would mask it: with every id out, it sees only the tail), a log-prob above 0, a
    row whose probabilities sum to more than 1, or a row (past the first) with no log-prob at all."""
    problem = _signal_problem(ids, lps, vocab)
    return f"an impossible teacher signal: {problem}" if problem else None


def _signal_problem(ids: np.ndarray, lps: np.ndarray, vocab: int) -> str | None:
    present = lps > -np.inf  # NaN was read as -inf (no mass); +inf stays and is above 0
    if lps.shape[0] > 1:
        empty = np.flatnonzero(~present[1:].any(axis=1))
        if empty.size:
            return f"position {empty[0] + 1} has no log-probs ({empty.size} of {lps.shape[0] - 1} positions)"
    out = present & ((ids < 0) | (ids >= vocab))
    if out.any():
        i, j = np.argwhere(out)[0]
        return (f"token id {int(ids[i, j])} at position {i} is outside the vocabulary of {vocab} "
                f"({int(out.sum())} of {int(present.sum())} ids)")
    high = present & (lps > SIGNAL_TOLERANCE)
    if high.any():
        i, j = np.argwhere(high)[0]
        return f"log-prob {float(lps[i, j]):g} at position {i} is above 0 ({int(high.sum())} of them)"
    mass = np.where(present, np.exp(np.minimum(lps.astype(np.float64), 0.0)), 0.0).sum(axis=1)
    over = np.flatnonzero(mass > 1.0 + SIGNAL_TOLERANCE)
    if over.size:
        return (f"the top-{lps.shape[1]} probabilities at position {over[0]} sum to {mass[over[0]]:.4g} > 1 "
                f"({over.size} positions)")
    return None


class RoutedScorer:
    """Callable: (token sequences, the name of the teacher that wrote each) -> what `ServedScorer` returns, each
    sequence scored by its own teacher's server ({teacher name: ServedScorer}); a teacher without a server
    of its own is scored by the default teacher's. The sequences of one teacher go out together (one request
    per sequence, up to the pool's concurrency), one teacher after the other."""

    def __init__(self, scorers: dict[str, ServedScorer]):
        self.scorers = scorers

    def __call__(self, sequences: list[list[int]], teachers: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        out: list = [None] * len(sequences)
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(teachers):
            groups.setdefault(name if name in self.scorers else "default", []).append(i)
        for name, rows in groups.items():
            for i, scored in zip(rows, self.scorers[name]([sequences[i] for i in rows])):
                out[i] = scored
        return out


def _get(url: str, key: str | None, body: dict | None = None, timeout: float = 30.0) -> Any:
    """The JSON a server answers at `url`; _NotServed (naming the path) when it is not JSON."""
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=timeout) as r:
        raw = r.read()
    try:
        return json.loads(raw)
    except ValueError:
        raise _NotServed(f"/{url.rsplit('/', 1)[-1]} did not answer with JSON ({_excerpt(raw)})") from None


class _NotServed(Exception):
    """A reply of the checked server that is not what a vLLM OpenAI-compatible server sends."""


def _excerpt(raw: bytes | object) -> str:
    """The start of a reply, for an error line (keys redacted, one line, at most 60 characters)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else json.dumps(raw, default=str)
    text = credentials.redact(" ".join(text.split()))
    return repr(text[:60] + ("..." if len(text) > 60 else ""))


def _model_list(reply: Any) -> dict[str, int | None]:
    """/models's reply as {model id: its context length or None}; _NotServed when it is not a model list."""
    entries = reply.get("data") if isinstance(reply, dict) else None
    if not isinstance(entries, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str)
                                                for m in entries):
        raise _NotServed(f"/models did not answer with a model list ({_excerpt(reply)})")
    out = {}
    for m in entries:
        context = m.get("max_model_len")
        if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context < 1):
            raise _NotServed(f"/models gives {m['id']!r} a context length of {_excerpt(context)}, not a positive "
                             "whole number of tokens")
        out[m["id"]] = context
    return out


def _token_ids(reply: Any) -> list[int]:
    tokens = reply.get("tokens") if isinstance(reply, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise _NotServed(f"/tokenize did not answer with token ids ({_excerpt(reply)})")
    return tokens


def check_server(tcfg: TeacherConfig, tokenizer, max_seq_len: int, k: int) -> dict:
    """One line and exit 2 unless every server of the pool serves `served_model` with this tokenizer and room
    for `max_seq_len` tokens. Returns what was checked (for the training manifest)."""
    import os

    o = tcfg.api
    name = tcfg.request_model
    key = os.environ.get(o.api_key_env) if o.api_key_env else None
    local = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    for url in o.urls():
        where = safe_url(url)
        try:
            served = _model_list(_get(url.rstrip("/") + "/models", key, timeout=o.timeout_s))
            if name not in served:
                raise UserError(f"train.served: {where} serves {sorted(served)}, not {name!r} "
                                "(train.served.served_model)")
            context = served[name]
            if context is not None and context < max_seq_len + 1:  # + the one token each request generates
                raise UserError(f"train.served: {where} serves {name!r} with a context of {context} tokens, shorter "
                                f"than train.max_seq_len {max_seq_len} + 1: start vLLM with --max-model-len >= "
                                f"{max_seq_len + 1}")
            root = url.rstrip("/").removesuffix("/v1")
            remote = _token_ids(_get(root + "/tokenize", key,
                                     {"model": name, "prompt": PROBE, "add_special_tokens": False},
                                     timeout=o.timeout_s))
        except urllib.error.HTTPError as e:
            raise UserError(f"train.served: {where}: HTTP {e.code} while checking the teacher server ({e.reason}); "
                            "a vLLM OpenAI-compatible server is needed") from None
        except _NotServed as e:
            raise UserError(f"train.served: {where}: {e}; a vLLM OpenAI-compatible server is needed") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
            raise UserError(f"train.served: {where} cannot be reached ({credentials.redact(str(reason))})") from None
        if remote != local:
            raise UserError(f"train.served: {where} tokenises a probe text differently from teacher.model "
                            f"{tcfg.model!r} ({len(remote or [])} vs {len(local)} tokens): the server runs another "
                            "tokenizer, so its log-probs would not line up with the training tokens")
    log.info("train: served teacher %r at %s checked (tokenizer agrees, context fits); top-%d prompt log-probs",
             name, ", ".join(safe_url(u) for u in o.urls()), k)
    return {"served_model": name, "base_url": [safe_url(u) for u in o.urls()], "topk": k,
            "logprobs_source": "served: vLLM prompt_logprobs"}
