"""The teacher protocol, shared by every stage that asks a teacher (generate, annotate, the judge).

A teacher turns a batch of chat prompts into completions plus, for every completion token, the
teacher's top-k log-probabilities (`Generation`). Backends record what their log-probs mean in
`provenance()`, which goes into the dataset manifest. What a teacher reads besides its `TeacherConfig`
is a `Sampling`: the stage that asks builds one (generate from its section, annotate and the judge
from their own settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from llmdistill import models
from llmdistill.config import GenerateConfig, TeacherConfig
from llmdistill.errors import UserError


@dataclass(frozen=True)
class Sampling:
    """How a teacher samples and which log-probs it keeps: the generation settings every backend reads.

    `logprob_mode`: "raw" (log-softmax of the model's logits) or "processed" (after temperature/top-p);
    `too_long`: "skip" (a prompt that cannot fit the context becomes a failed sample) or "error"."""

    max_new_tokens: int
    temperature: float
    top_p: float
    topk: int
    logprob_mode: str
    too_long: str

    @classmethod
    def from_generate(cls, g: GenerateConfig) -> Sampling:
        """The settings of the `generate` section."""
        return cls(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p, topk=g.topk,
                   logprob_mode=g.logprob_mode, too_long=g.too_long)

    @classmethod
    def scoring(cls, topk: int) -> Sampling:
        """For a teacher that only re-scores finished text (`score`, annotate): raw log-probs, `topk` of them.
        It generates nothing, so the generation settings are placeholders (greedy, one token)."""
        return cls(max_new_tokens=1, temperature=0.0, top_p=1.0, topk=topk, logprob_mode="raw", too_long="skip")


@dataclass
class Generation:
    """One completion. `topk_ids`/`topk_logprobs` are [T, k], row t for `token_ids[t]`.

    A failed request has `error` set (finish_reason "error"); a text-only teacher leaves the token fields None.
    """

    text: str | None
    token_ids: list[int] | None
    topk_ids: np.ndarray | None
    topk_logprobs: np.ndarray | None
    finish_reason: str  # "stop", "length" or "error"
    prompt_tokens: int
    error: str | None = None


TOO_LONG = "prompt too long"
# Failures worth another request on a plain rerun: no usable reply came (connection, timeout, rate limit, server
# error, a malformed reply). A refusal (HTTP 400, 422), a prompt too long for the context, a finish reason the stage
# does not take or tokens that do not map would come out the same again, so they are not retried.
TRANSIENT = ("connection error", "timeout", "malformed reply", "HTTP 408", "HTTP 409", "HTTP 429", "HTTP 5")


def is_transient(error: str | None) -> bool:
    """Whether a failed sample's `error` is worth requesting again (see TRANSIENT)."""
    return error is not None and error.startswith(TRANSIENT)


class PromptTooLong(UserError):
    """A prompt that cannot fit the teacher's context, under `generate.too_long: error`. `index` is its position
    in the batch, so the stage can name the prompt's file and line."""

    def __init__(self, index: int, reason: str):
        self.index, self.reason = index, reason
        super().__init__(reason)


class ContextCheck:
    """Prompt token ids through the chat template, checked against the teacher's context before anything is
    generated: a prompt whose tokens + max_new_tokens exceed `context` becomes the reason it cannot be sent
    (generate.too_long: skip), or raises PromptTooLong (error).

    A prompt far too long is found without tokenising it (tokenising 5 MB takes seconds): when the tokenizer does
    not normalise text, every token covers at least one byte of the rendered prompt and at most as many as the
    longest vocabulary entry, so bytes / that length is a lower bound on its tokens. Otherwise the prompt is
    tokenised once, by `models.encode_prompt`, and the ids are what the backend sends."""

    def __init__(self, tokenizer, context: int | None, max_new_tokens: int, policy: str):
        self.tokenizer, self.context, self.max_new_tokens, self.policy = tokenizer, context, max_new_tokens, policy
        backend = getattr(tokenizer, "backend_tokenizer", None)
        added = getattr(tokenizer, "added_tokens_decoder", {}).values()
        # a token that swallows the whitespace beside it (lstrip/rstrip) can cover more bytes than it spells
        stripping = any(getattr(t, "lstrip", False) or getattr(t, "rstrip", False) for t in added)
        self._widest = None
        if context is not None and backend is not None and backend.normalizer is None and not stripping:
            self._widest = max((len(t.encode("utf-8")) for t in tokenizer.get_vocab()), default=1) or 1

    def encode(self, prompts: list[list[dict]]) -> list[list[int] | str]:
        """For each prompt its ids, or (skip) the reason it is too long; all checked before any is returned."""
        out: list[list[int] | str] = []
        for i, messages in enumerate(prompts):
            ids_or_reason = self._one(messages)
            if isinstance(ids_or_reason, str) and self.policy == "error":
                raise PromptTooLong(i, ids_or_reason)
            out.append(ids_or_reason)
        return out

    def _one(self, messages: list[dict]) -> list[int] | str:
        if self.context is None:
            return models.encode_prompt(self.tokenizer, messages)
        room = self.context - self.max_new_tokens
        # only a prompt whose text alone could hold that many bytes (4 per character at most) is worth rendering
        if self._widest is not None and 4 * sum(len(m["content"]) for m in messages) > self._widest * room:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            size = len(text.encode("utf-8"))
            least = -(-size // self._widest)
            if least > room:
                return (f"{TOO_LONG}: at least {least} tokens ({size} bytes) + max_new_tokens {self.max_new_tokens} "
                        f"> the teacher's context of {self.context} tokens")
        ids = models.encode_prompt(self.tokenizer, messages)
        if len(ids) > room:
            return (f"{TOO_LONG}: {len(ids)} tokens + max_new_tokens {self.max_new_tokens} > the teacher's context "
                    f"of {self.context} tokens")
        return ids


def too_long(reason: str) -> Generation:
    """The failed sample of a prompt that was not sent (it cannot fit the context)."""
    return Generation(text=None, token_ids=None, topk_ids=None, topk_logprobs=None, finish_reason="error",
                      prompt_tokens=0, error=reason)


def model_context(config) -> int | None:
    """Prompt + completion tokens a transformers model config takes (None when it does not say)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass
class Scored:
    """A finished text re-scored by teacher forcing (annotate): `topk_*` are [T, k], row t is the
    distribution that token t is drawn from; `token_logprobs` [T] is the log-prob of each actual token."""

    topk_ids: np.ndarray
    topk_logprobs: np.ndarray
    token_logprobs: np.ndarray
    prompt_tokens: int


class Teacher:
    """What generate, evolve and the judge call; every backend derives from it. Built by
    `build_teacher(TeacherConfig, Sampling)` and used as a context manager (`with build_teacher(...) as t:`), which
    closes it on every path.

    A backend implements `generate` and `provenance`, and `close` when it holds anything. The optional hooks
    below have defaults here, so a caller never asks whether a backend has them:
      accepts_cache_dir  True: built as `Class(tcfg, sampling, cache_dir=run_dir/cache)` (the openai backend's
                         request cache); False: `Class(tcfg, sampling)`
      prefetch(work)     every request the stage will make, before the first `generate` (a provider batch API)
      gpus(tcfg, ...)    GPUs one process running this teacher takes (the Ray executor reserves them per task)
    """

    name: str
    accepts_cache_dir: ClassVar[bool] = False

    def generate(self, prompts: list[list[dict]], seed: int, positions: list[int] | None = None) -> list[Generation]:
        """Complete each prompt (chat turns) once; `seed` makes the batch reproducible. `positions`: the prompts'
        places in the batch they were planned in (default 0, 1, ...), so a retry of part of a batch sends the very
        requests the whole batch would have. A prompt that cannot fit the context fails (Sampling.too_long)."""
        raise NotImplementedError

    def provenance(self) -> dict:
        """What the manifest must say about this teacher and its log-probs."""
        raise NotImplementedError

    def prefetch(self, work: list[tuple[list[list[dict]], int, list[int] | None]]) -> None:
        """Told up front every `generate` call to come ((prompts, seed, positions) each, in order), for a backend
        that gains from seeing them all at once. Default: nothing."""

    def close(self) -> None:
        """Release what the teacher holds (an engine process, HTTP sessions, a cache); a no-op where nothing is.
        Called once the stage is done with it, whether it finished or failed."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def gpus(cls, tcfg: TeacherConfig, gpus_available: bool) -> int:
        """GPUs a process running this teacher takes: one for a model on cuda (device auto: when there are
        GPUs), none on cpu."""
        return 0 if tcfg.device == "cpu" or (tcfg.device == "auto" and not gpus_available) else 1


class LocalTeacher(Teacher):
    """A teacher with its model at hand (backends hf and vllm): it also re-scores finished text (annotate)."""

    tokenizer: Any

    def score(self, prompts: list[list[dict]], completions: list[list[int]]) -> list[Scored]:
        """Teacher forcing: for every completion token, the distribution it is drawn from (raw log-probs)."""
        raise NotImplementedError

    def max_length(self) -> int:
        """Prompt + completion tokens `score` accepts."""
        raise NotImplementedError
