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

import json
import logging
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

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
    """Callable: token sequences -> per sequence ([L, k] ids, [L, k] log-probs) from the server. The client
    is made on first use in the process that uses it (a DataLoader worker), never carried across a fork."""

    def __init__(self, tcfg: TeacherConfig, k: int, cache_dir: Path | None):
        self.tcfg, self.k, self.cache_dir = tcfg, k, cache_dir
        self._teacher = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_teacher": None}

    def __call__(self, sequences: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        if self._teacher is None:
            from llmdistill.teachers import Sampling
            from llmdistill.teachers.api import OpenAITeacher

            self._teacher = OpenAITeacher(self.tcfg, Sampling.scoring(self.k), self.cache_dir)
        return self._teacher.prompt_topk(sequences, self.k)


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


def _get(url: str, key: str | None, body: dict | None = None, timeout: float = 30.0) -> dict:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=timeout) as r:
        return json.loads(r.read())


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
            models = _get(url.rstrip("/") + "/models", key, timeout=o.timeout_s)
            ids = {m.get("id"): m for m in models.get("data", [])}
            if name not in ids:
                raise UserError(f"train.served: {where} serves {sorted(ids)}, not {name!r} (train.served.served_model)")
            context = ids[name].get("max_model_len")
            if context is not None and context < max_seq_len + 1:  # + the one token each request generates
                raise UserError(f"train.served: {where} serves {name!r} with a context of {context} tokens, shorter "
                                f"than train.max_seq_len {max_seq_len} + 1: start vLLM with --max-model-len >= "
                                f"{max_seq_len + 1}")
            root = url.rstrip("/").removesuffix("/v1")
            remote = _get(root + "/tokenize", key, {"model": name, "prompt": PROBE, "add_special_tokens": False},
                          timeout=o.timeout_s).get("tokens")
        except urllib.error.HTTPError as e:
            raise UserError(f"train.served: {where}: HTTP {e.code} while checking the teacher server ({e.reason}); "
                            "a vLLM OpenAI-compatible server is needed") from None
        except (urllib.error.URLError, OSError) as e:
            raise UserError(f"train.served: {where} cannot be reached ({getattr(e, 'reason', e)})") from None
        if remote != local:
            raise UserError(f"train.served: {where} tokenises a probe text differently from teacher.model "
                            f"{tcfg.model!r} ({len(remote or [])} vs {len(local)} tokens): the server runs another "
                            "tokenizer, so its log-probs would not line up with the training tokens")
    log.info("train: served teacher %r at %s checked (tokenizer agrees, context fits); top-%d prompt log-probs",
             name, ", ".join(safe_url(u) for u in o.urls()), k)
    return {"served_model": name, "base_url": [safe_url(u) for u in o.urls()], "topk": k,
            "logprobs_source": "served: vLLM prompt_logprobs"}
