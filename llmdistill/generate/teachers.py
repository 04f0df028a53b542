"""Teacher backends: one protocol, picked by the short name in `teacher.backend`.

A teacher turns a batch of chat prompts into completions plus, for every completion token, the
teacher's top-k log-probabilities (`Generation`). Backends record what their log-probs mean in
`provenance()`, which goes into the dataset manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from llmdistill import models
from llmdistill.config import GenerateConfig, TeacherConfig
from llmdistill.errors import UserError

log = logging.getLogger("llmdistill")


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


class Teacher(Protocol):
    name: str

    def generate(self, prompts: list[list[dict]], seed: int, positions: list[int] | None = None) -> list[Generation]:
        """Complete each prompt (chat turns) once; `seed` makes the batch reproducible. `positions`: the prompts'
        places in the batch they were planned in (default 0, 1, ...), so a retry of part of a batch sends the very
        requests the whole batch would have. A prompt that cannot fit the context fails (generate.too_long)."""
        ...

    def provenance(self) -> dict:
        """What the manifest must say about this teacher and its log-probs."""
        ...


class HFTeacher:
    """transformers `generate` with left padding and the chat template; top-k log-probs per step.

    raw mode: a logits processor placed before the sampling warpers keeps log_softmax(logits).topk(k) of
    every step as it goes (O(T * B * k) memory, no [T, B, V] tensor is kept).
    processed mode: the step scores after temperature and top-p (`output_scores`), log-softmaxed.
    """

    def __init__(self, tcfg: TeacherConfig, gcfg: GenerateConfig):
        import torch

        self.name = tcfg.model
        self.tcfg, self.gcfg = tcfg, gcfg
        self.device = models.pick_device(tcfg.device)
        self.tokenizer = models.load_tokenizer(tcfg.model, tcfg.revision, tcfg.trust_remote_code)
        self.tokenizer.padding_side = "left"
        self.model = models.load_causal_lm(tcfg.model, tcfg.dtype, self.device, tcfg.revision, tcfg.trust_remote_code)
        self.eos_ids = models.eos_token_ids(self.model, self.tokenizer)
        self.context = ContextCheck(self.tokenizer, model_context(self.model.config), gcfg.max_new_tokens,
                                    gcfg.too_long)
        self._torch = torch

    def provenance(self) -> dict:
        g = self.gcfg
        raw = g.logprob_mode == "raw"
        return {
            "teacher": {
                "name": self.name,
                "backend": "hf",
                "source": models.resolve_source(self.name),
                "revision": self.tcfg.revision,
                "model_hash": models.model_hash(self.name),
                "dtype": self.tcfg.dtype,
            },
            "logprobs_source": "hf: the local model's logits (transformers generate)",
            **models.tokenizer_info(self.tokenizer),
            "vocab_size": int(self.model.config.vocab_size),
            "topk": g.topk,
            "logprob_mode": g.logprob_mode,
            # raw log-probs are the model's own distribution (T = 1, no truncation) whatever the sampler did
            "capture_temperature": 1.0 if raw else (g.temperature or 1.0),
            "capture_top_p": 1.0 if raw else g.top_p,
        }

    def generate(self, prompts: list[list[dict]], seed: int, positions: list[int] | None = None) -> list[Generation]:
        """`positions` (a retry of part of a batch) is accepted for the protocol; this backend seeds the batch as a
        whole, so a partial batch samples differently (its failures are never retried: only too-long prompts fail)."""
        checked = self.context.encode(prompts)
        fits = [i for i, c in enumerate(checked) if not isinstance(c, str)]
        done = self._generate([checked[i] for i in fits], seed) if fits else []
        out = [too_long(c) if isinstance(c, str) else None for c in checked]
        for i, res in zip(fits, done):
            out[i] = res
        return out

    def _generate(self, encoded: list[list[int]], seed: int) -> list[Generation]:
        torch = self._torch
        from transformers import LogitsProcessorList

        g = self.gcfg
        batch = self.tokenizer.pad({"input_ids": encoded}, padding=True, return_tensors="pt").to(self.device)
        capture = _TopKCapture(g.topk)
        sampling = g.temperature > 0
        kwargs = dict(
            max_new_tokens=g.max_new_tokens,
            do_sample=sampling,
            temperature=g.temperature if sampling else None,
            top_p=g.top_p if sampling else 1.0,
            top_k=0,  # no top-k truncation unless configured: the model's generation_config may set one
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.eos_ids,
            return_dict_in_generate=True,
        )
        if g.logprob_mode == "raw":
            kwargs["logits_processor"] = LogitsProcessorList([capture])
        else:
            kwargs["output_scores"] = True
        torch.manual_seed(seed)
        with torch.no_grad():
            try:
                out = self.model.generate(**batch, **kwargs)
            except RuntimeError as e:
                if "probability tensor contains" not in str(e):
                    raise
                raise self._garbage("its next-token probabilities contain NaN or inf") from None
        if g.logprob_mode == "processed":
            for step_scores in out.scores:
                capture(None, step_scores)
        ids = torch.stack(capture.ids, 1).numpy()  # [B, T, k]
        lps = torch.stack(capture.logprobs, 1).numpy()
        if np.isnan(lps).any():  # greedy decoding does not notice NaN logits (-inf is legitimate: top-p masking)
            raise self._garbage("its log-probs contain NaN")
        new_tokens = out.sequences[:, batch["input_ids"].shape[1]:].cpu().numpy()
        results = []
        for row, prompt_ids in enumerate(encoded):
            toks = new_tokens[row].tolist()
            end = next((i for i, t in enumerate(toks) if t in self.eos_ids), None)
            length = len(toks) if end is None else end + 1  # keep the EOS token: the student must learn to stop
            token_ids = toks[:length]
            results.append(
                Generation(
                    text=self.tokenizer.decode(token_ids, skip_special_tokens=True),
                    token_ids=token_ids,
                    topk_ids=ids[row, :length],
                    topk_logprobs=lps[row, :length],
                    finish_reason="length" if end is None else "stop",
                    prompt_tokens=len(prompt_ids),
                )
            )
        return results


    def _garbage(self, what: str) -> UserError:
        return UserError(f"teacher {self.name!r} returned garbage: {what} (broken weights, or a dtype that "
                         f"overflows: try teacher.dtype=float32); nothing was written for this batch")

    def score(self, prompts: list[list[dict]], completions: list[list[int]]) -> list[Scored]:
        """Teacher forcing: one forward pass over prompt + completion (right padding, so positions are
        unchanged) gives, at every completion token, the distribution it is drawn from. Raw log-probs,
        top-k best first; the head is applied only to the completion positions."""
        torch = self._torch
        encoded = [models.encode_prompt(self.tokenizer, m) for m in prompts]
        seqs = [p + c for p, c in zip(encoded, completions)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        head, cap = models.lm_head(self.model)
        k = self.gcfg.topk
        results = []
        with torch.no_grad():
            hidden = self.model.base_model(input_ids=ids.to(self.device),
                                           attention_mask=mask.to(self.device)).last_hidden_state
            for i, (p, c) in enumerate(zip(encoded, completions)):
                if not c:
                    results.append(Scored(np.zeros((0, k), np.int32), np.zeros((0, k), np.float16),
                                          np.zeros(0, np.float32), len(p)))
                    continue
                logits = head(hidden[i, len(p) - 1 : len(p) - 1 + len(c)])
                lp = torch.log_softmax((cap(logits) if cap else logits).float(), dim=-1)
                values, indices = lp.topk(min(k, lp.shape[-1]), dim=-1)
                own = lp.gather(1, torch.tensor(c, device=lp.device)[:, None])[:, 0]
                results.append(Scored(indices.to(torch.int32).cpu().numpy(), values.to(torch.float16).cpu().numpy(),
                                      own.cpu().numpy(), len(p)))
        return results

    def max_length(self) -> int:
        """Prompt + completion tokens the model takes."""
        return model_context(self.model.config) or 1 << 30


class _TopKCapture:
    """A logits processor that records log_softmax(scores).topk(k) at every step and changes nothing."""

    def __init__(self, k: int):
        self.k = k
        self.ids: list = []
        self.logprobs: list = []

    def __call__(self, input_ids, scores):
        import torch

        lp = torch.log_softmax(scores.float(), dim=-1)
        values, indices = lp.topk(min(self.k, lp.shape[-1]), dim=-1)
        self.ids.append(indices.to(torch.int32).cpu())
        self.logprobs.append(values.to(torch.float16).cpu())
        return scores


# backend name -> "module:class"; imported only when used, so optional backends cost nothing when absent
BACKENDS = {
    "hf": "llmdistill.generate.teachers:HFTeacher",
    "vllm": "llmdistill.generate.vllm_teacher:VLLMTeacher",
    "openai": "llmdistill.generate.api_teacher:OpenAITeacher",
}


def build_teacher(tcfg: TeacherConfig, gcfg: GenerateConfig, cache_dir=None) -> Teacher:
    """The backend named by `tcfg.backend`; `cache_dir` (run_dir/cache) goes to backends that keep a cache."""
    import importlib

    module, cls = BACKENDS[tcfg.backend].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("llmdistill"):
            raise UserError(f"teacher backend {tcfg.backend!r} is not available in this version") from None
        raise UserError(f"teacher backend {tcfg.backend!r} needs the package {e.name!r}: {e}") from None
    teacher_cls = getattr(mod, cls)
    if getattr(teacher_cls, "accepts_cache_dir", False):
        return teacher_cls(tcfg, gcfg, cache_dir=cache_dir)
    return teacher_cls(tcfg, gcfg)
