"""Quality scorers: each writes `scores[key]` for a batch of samples; the stage applies `min`/`max`.

    judge         an LLM judge through any teacher backend (`build_teacher`), rubric in prompts/
    reward_model  an AutoModelForSequenceClassification's logit for prompt + completion
    perplexity    exp(mean NLL) of the completion given the prompt under a reference causal LM
    confidence    the teacher's own confidence from the stored top-k (no model)

`score(samples)` returns one dict per sample (`{}` when the sample cannot be scored, e.g. a judge reply
without a valid score). Models load on the first batch, so a fully resumed step loads nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from pathlib import Path

import numpy as np

from llmdistill import config as C
from llmdistill.errors import UserError
from llmdistill.records import Sample
from llmdistill.textfile import NotUTF8, read_text

log = logging.getLogger("llmdistill")

DEFAULT_RUBRIC = Path(__file__).resolve().parent.parent.parent / "prompts" / "judge_quality.jinja"


class Scorer:
    needs_topk = False

    def __init__(self, step):
        self.step = step
        self.key = step.key or step.name
        self.unparsed = 0

    def score(self, samples: list[Sample]) -> list[dict[str, float]]:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------ judge
_SCORE = re.compile(r"score\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_judgement(text: str, lo: int, hi: int) -> float | None:
    """The last `Score: N` in a judge's reply, if it lies in [lo, hi]; None otherwise."""
    found = _SCORE.findall(text or "")
    if not found:
        return None
    value = float(found[-1])
    return value if lo <= value <= hi else None


def render_rubric(template_path: Path, **variables) -> str:
    """The judge prompt from a sandboxed Jinja template."""
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(keep_trailing_newline=True, autoescape=False)
    try:
        text = read_text(template_path)
    except NotUTF8 as e:
        raise UserError(f"{template_path}:{e.line}: {e}") from None
    return env.from_string(text).render(**variables)


class JudgeScorer(Scorer):
    def __init__(self, step: C.JudgeStep, teacher=None):
        super().__init__(step)
        self._teacher = teacher

    @property
    def teacher(self):
        if self._teacher is None:
            from llmdistill.teachers import Sampling, build_teacher

            sampling = Sampling(max_new_tokens=self.step.max_new_tokens, temperature=0.0, top_p=1.0, topk=1,
                                logprob_mode="raw", too_long="skip")  # greedy; a prompt too long is left unscored
            self._teacher = build_teacher(self.step.teacher, sampling)
        return self._teacher

    def prompt(self, s: Sample) -> list[dict]:
        question = "\n".join(m["content"] for m in s.messages if m["role"] != "system")
        text = render_rubric(self.step.prompt or DEFAULT_RUBRIC, prompt=question, completion=s.completion or "",
                             scale_min=self.step.scale_min, scale_max=self.step.scale_max)
        return [{"role": "user", "content": text}]

    def score(self, samples):
        outs = self.teacher.generate([self.prompt(s) for s in samples], seed=0)
        res = []
        for s, g in zip(samples, outs):
            value = parse_judgement(g.text, self.step.scale_min, self.step.scale_max)
            if value is None:
                self.unparsed += 1
                log.debug("judge: no valid score for %s in %r", s.id, (g.text or g.error or "")[:200])
                res.append({})
            else:
                res.append({self.key: value})
        return res


# ------------------------------------------------------------------------------------- model scorers
def _conversation(s: Sample) -> list[dict]:
    return [*s.messages, {"role": "assistant", "content": s.completion or ""}]


@contextlib.contextmanager
def _loading(step):
    """Load a step's model; transformers' refusal to run a repository's code becomes one line naming the step
    and the fix."""
    try:
        yield
    except ValueError as e:
        if "trust_remote_code" in str(e) and not step.trust_remote_code:
            raise UserError(f"filter {step.name}: {step.model} ships its own model code; set trust_remote_code: "
                            "true in this step if you trust it") from None
        raise


class RewardScorer(Scorer):
    def __init__(self, step: C.RewardModelStep):
        super().__init__(step)
        self._model = None

    def _load(self):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from llmdistill import models

        path = models.resolve_source(self.step.model)
        trust = self.step.trust_remote_code
        with _loading(self.step):
            self.tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
            self._model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32,
                                                                             trust_remote_code=trust)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        if getattr(self._model.config, "pad_token_id", None) is None:  # not every config has the field
            self._model.config.pad_token_id = self.tok.pad_token_id
        self._model.to(self.step.device).eval()
        if self.step.label >= self._model.config.num_labels:
            from llmdistill.errors import UserError

            raise UserError(f"reward model {self.step.model} has {self._model.config.num_labels} outputs; "
                            f"label {self.step.label} does not exist")

    def _texts(self, samples):
        if self.tok.chat_template:
            from llmdistill import models

            return [models.render_chat(self.tok, _conversation(s), add_generation_prompt=False) for s in samples]
        return ["\n".join(m["content"] for m in s.messages) + "\n" + (s.completion or "") for s in samples]

    def score(self, samples):
        import torch

        if self._model is None:
            self._load()
        batch = self.tok(self._texts(samples), padding=True, truncation=True, max_length=self.step.max_length,
                         return_tensors="pt").to(self.step.device)
        with torch.no_grad():
            logits = self._model(**batch).logits.float()
        return [{self.key: float(v)} for v in logits[:, self.step.label].tolist()]


class PerplexityScorer(Scorer):
    def __init__(self, step: C.PerplexityStep):
        super().__init__(step)
        self._model = None

    def score(self, samples):
        import torch

        from llmdistill import models

        if self._model is None:
            trust = self.step.trust_remote_code
            with _loading(self.step):
                self.tok = models.load_tokenizer(self.step.model, trust_remote_code=trust)
                self._model = models.load_causal_lm(self.step.model, "float32", self.step.device,
                                                    trust_remote_code=trust)
        seqs, starts = [], []
        for s in samples:
            prompt = models.encode_prompt(self.tok, s.messages)
            completion = self.tok(s.completion or "", add_special_tokens=False)["input_ids"]
            ids = (prompt + completion)[: self.step.max_length]
            seqs.append(ids)
            starts.append(min(len(prompt), len(ids)))
        width = max(len(x) for x in seqs)
        pad = self.tok.pad_token_id or 0
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in seqs])
        attn = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in seqs])
        with torch.no_grad():
            logits = self._model(input_ids=input_ids.to(self._model.device),
                                 attention_mask=attn.to(self._model.device)).logits.float().cpu()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None])[..., 0]
        out = []
        for i, (x, st) in enumerate(zip(seqs, starts)):
            tgt = lp[i, max(st - 1, 0): len(x) - 1]  # log p(token t | < t) for the completion tokens
            out.append({} if len(tgt) == 0 or st == 0 else {self.key: float(math.exp(-tgt.mean().item()))})
        return out


# ------------------------------------------------------------------------------------------ confidence
def teacher_confidence(token_ids: list[int], topk_ids: np.ndarray, topk_logprobs: np.ndarray) -> tuple[float, float]:
    """(mean log-prob of the emitted tokens, mean entropy) from the stored top-k.

    An emitted token outside the top-k is given the log of the tail mass (an upper bound of its log-prob).
    The entropy is that of the top-k distribution plus one tail bucket holding the rest (a lower bound of
    the full entropy).
    """
    lps = np.asarray(topk_logprobs, dtype=np.float64)
    ids = np.asarray(topk_ids)
    probs = np.exp(lps)
    tail = np.clip(1.0 - probs.sum(1), 1e-12, 1.0)
    hit = ids == np.asarray(token_ids)[:, None]
    chosen = np.where(hit.any(1), (lps * hit).sum(1), np.log(tail))
    ent = -(probs * lps).sum(1) - tail * np.log(tail)
    return float(chosen.mean()), float(ent.mean())


class ConfidenceScorer(Scorer):
    needs_topk = True

    def score(self, samples):
        out = []
        for s in samples:
            if s.topk_logprobs is None or len(s.completion_token_ids or []) == 0:
                out.append({})
                continue
            lp, ent = teacher_confidence(s.completion_token_ids, s.topk_ids, s.topk_logprobs)
            out.append({self.key: lp, self.key + "_entropy": ent})
        return out


def thresholds(step) -> list[tuple[str, float | None, float | None]]:
    """(score key, min, max) pairs a scorer step enforces."""
    key = step.key or step.name
    out = [(key, step.min, step.max)]
    if step.name == "confidence" and step.max_entropy is not None:
        out.append((key + "_entropy", None, step.max_entropy))
    return out
