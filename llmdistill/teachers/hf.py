"""The `hf` teacher backend: transformers `generate` on a local model, and teacher forcing (`score`)."""

from __future__ import annotations

import numpy as np

from llmdistill import models
from llmdistill.config import TeacherConfig
from llmdistill.errors import UserError
from llmdistill.teachers.base import (
    ContextCheck,
    Generation,
    LocalTeacher,
    Sampling,
    Scored,
    model_context,
    too_long,
)


class HFTeacher(LocalTeacher):
    """transformers `generate` with left padding and the chat template; top-k log-probs per step.

    raw mode: a logits processor placed before the sampling warpers keeps log_softmax(logits).topk(k) of
    every step as it goes (O(T * B * k) memory, no [T, B, V] tensor is kept).
    processed mode: the step scores after temperature and top-p (`output_scores`), log-softmaxed.
    """

    def __init__(self, tcfg: TeacherConfig, sampling: Sampling):
        import torch

        self.name = tcfg.model
        self.tcfg, self.sampling = tcfg, sampling
        self.device = models.pick_device(tcfg.device)
        self.tokenizer = models.load_tokenizer(tcfg.model, tcfg.revision, tcfg.trust_remote_code)
        self.tokenizer.padding_side = "left"
        self.model = models.load_causal_lm(tcfg.model, tcfg.dtype, self.device, tcfg.revision, tcfg.trust_remote_code)
        self.eos_ids = models.eos_token_ids(self.model, self.tokenizer)
        self.context = ContextCheck(self.tokenizer, model_context(self.model.config), sampling.max_new_tokens,
                                    sampling.too_long)
        self._torch = torch

    def provenance(self) -> dict:
        g = self.sampling
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

        g = self.sampling
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
        k = self.sampling.topk
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

    def close(self) -> None:
        """Nothing to release: the model goes with the object."""


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
