"""Where a batch's teacher signal comes from: one source object per trained variant, chosen once by `build`.

    none             every loss term is CE: no teacher tensors, no signal
    stored           the dataset's top-k (ids + log-probs, re-tempered from the temperature they were captured at)
    cross_tokenizer  the stored top-k aligned to the student's tokens by bytes (the preflight's outcome when the
                     student's tokenizer differs; cross_tokenizer.py)
    served           each training sequence's top-k from a vLLM server (prompt_logprobs; served.py), asked by the
                     collator, in a DataLoader worker that fetches the next batch while this step trains
    live             a teacher loaded here (one per routed teacher): its full distribution from a forward pass

A source has two halves. The collate half, `collate(batch, rows, spans, row_teachers)`, fills a batch's teacher
tensors from the rows and where each sits in the batch; the collator calls it (in a DataLoader worker for the
served source), so a source pickles: a live source leaves its models behind. The signal half,
`signal(inputs, mask, model)`, turns the batch into what the loss compares the student with (a `signals`
object: `take` + `divergence`); the trainer calls it and never knows which source it has. `examples` builds the
training examples the way the source needs them (cross-tokenizer rows are aligned to the teacher's tokens), and
`metrics` is what the training metrics record about the source.

Adding a source: a class here (the two halves, and `build`), its name in config's `TeacherSignal` Literal, its
row in `SOURCES`, and its row in the contract test (tests/unit/test_sources.py).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from llmdistill import models
from llmdistill.config import literal_values, needs_teacher
from llmdistill.config.train import TeacherSignal
from llmdistill.errors import UserError
from llmdistill.train.signals import LiveSignal, RoutedSignal, SparseSignal

log = logging.getLogger("llmdistill")


class Source:
    """No teacher: every term is CE (the base class; the collate half adds nothing, the signal is None)."""

    name: str | None = None  # the train.teacher_signal this source serves (None: no teacher)
    group_rows = False  # packing: a packed row must hold the samples of one teacher (`data.pack`'s groups)
    fetches = False  # the collate half asks a server: worth a DataLoader worker that fetches ahead

    def examples(self, dataset, tokenizer, max_seq_len: int, check):
        """The training examples (`data.build_examples`) as the preflight `check` says: re-tokenised for a
        student on another tokenizer (text-only training), samples with ids the student lacks skipped."""
        from llmdistill.train.data import build_examples

        return build_examples(dataset, tokenizer, max_seq_len, retokenize=check.outcome == "retokenize",
                              vocab_limit=check.student_vocab if check.outcome == "truncate" else None)

    def collate(self, batch: dict, rows: list[dict], spans: list[tuple[int, int, int, int]],
                row_teachers: list[str]) -> None:
        """Add the teacher tensors to `batch`. spans: per row (batch row, offset, prompt length, tokens kept);
        row_teachers: the teacher of each batch row (packed rows hold one teacher's samples when `group_rows`)."""

    def signal(self, inputs: dict, mask: torch.Tensor, model):
        """The teacher signal for the tokens selected by `mask` [B, L-1] (the positions that predict a label)."""
        return None

    def to(self, device) -> None:
        """Move what the signal half computes with (a live teacher) onto the training device."""

    def describe(self) -> str:
        return f", {self.name} teacher signal" if self.name else ""

    def metrics(self, history: list[dict] | None = None) -> dict:
        """What the training metrics say about the teacher signal (`history`: the trainer's log history)."""
        return {"teacher_signal": self.name, "cross_tokenizer": None, "served": None,
                "served_signal_checked_tokens": None}


class StoredTopK(Source):
    """The dataset's top-k rows: `teacher_ids` / `teacher_logprobs` [B, L, k], row i the distribution of token
    i + 1, like the shifted labels; `teacher_kind` [B, L] when the rows were aligned across tokenizers;
    `teacher_token_logprobs` [B, L] (the teacher's log-prob of token i + 1 itself) when the rows store it (the
    student's samples scored by the teacher: offline on-policy rounds, opd.py)."""

    name = "stored"

    def __init__(self, capture_temperature: float = 1.0, tail: str = "bucket", uld_weight: float = 1.0):
        self.capture_temperature, self.tail, self.uld_weight = capture_temperature, tail, uld_weight

    @classmethod
    def build(cls, cfg, prov: dict, teachers: dict, tokenizer, on_policy: bool, vocab: int) -> StoredTopK:
        return cls(float(prov["capture_temperature"]), cfg.train.tail, cfg.train.uld_weight)

    def _arrays(self, rows: list[dict], spans) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per row its [m, k] ids and log-probs for the m completion tokens kept."""
        return [(np.asarray(r["topk_ids"][: n - p], dtype=np.int64), np.asarray(r["topk_logprobs"][: n - p],
                                                                                  dtype=np.float32))
                for r, (_, _, p, n) in zip(rows, spans)]

    def collate(self, batch, rows, spans, row_teachers) -> None:
        arrays = self._arrays(rows, spans)
        B, L = batch["input_ids"].shape
        k = next((ids.shape[1] for ids, _ in arrays if ids.ndim == 2), None) or len(rows[0]["topk_ids"][0])
        t_ids = batch["teacher_ids"] = torch.zeros((B, L, k), dtype=torch.long)
        t_lps = batch["teacher_logprobs"] = torch.zeros((B, L, k), dtype=torch.float32)
        kinds = token = None
        if "xt_kind" in rows[0]:  # cross-tokenizer rows: which loss each position gets (cross_tokenizer.py)
            kinds = batch["teacher_kind"] = torch.zeros((B, L), dtype=torch.int8)
        if rows[0].get("token_logprobs") is not None:
            token = batch["teacher_token_logprobs"] = torch.zeros((B, L), dtype=torch.float32)
        for r, (b, o, p, n), (ids, lps) in zip(rows, spans, arrays):
            if n == p:  # no completion token kept: nothing to fill
                continue
            t_ids[b, o + p - 1 : o + n - 1] = torch.as_tensor(ids)
            t_lps[b, o + p - 1 : o + n - 1] = torch.as_tensor(lps)
            if kinds is not None:
                kinds[b, o + p - 1 : o + n - 1] = torch.as_tensor(np.asarray(r["xt_kind"][: n - p], dtype=np.int8))
            if token is not None:
                token[b, o + p - 1 : o + n - 1] = torch.as_tensor(np.asarray(r["token_logprobs"][: n - p],
                                                                             dtype=np.float32))

    def signal(self, inputs, mask, model):
        ids, lps = inputs["teacher_ids"][:, :-1][mask], inputs["teacher_logprobs"][:, :-1][mask]
        if "teacher_kind" in inputs:
            from llmdistill.train.cross_tokenizer import CrossTokenizerSignal

            return CrossTokenizerSignal(ids, lps, inputs["teacher_kind"][:, :-1][mask], self.capture_temperature,
                                        self.tail, self.uld_weight)
        token = inputs.get("teacher_token_logprobs")
        return SparseSignal(ids, lps, self.capture_temperature, self.tail,
                            None if token is None else token[:, :-1][mask])


class CrossTokenizer(StoredTopK):
    """The stored top-k of teachers on another tokenizer, each row aligned to the student's tokens by bytes (exact
    spans: the divergence on the mapped top-k; same-start tokens: ULD; the rest CE only). A teacher on the
    student's tokenizer keeps its ids (every token exact)."""

    def __init__(self, capture_temperature: float, tail: str, uld_weight: float, aligner: dict):
        super().__init__(capture_temperature, tail, uld_weight)
        self.aligner = aligner  # {teacher name: Aligner, or None for a teacher on the student's tokenizer}
        self.shares: dict | None = None

    @classmethod
    def build(cls, cfg, prov, teachers, tokenizer, on_policy, vocab) -> CrossTokenizer:
        from llmdistill.train.cross_tokenizer import Aligner

        t = cfg.train
        if not t.stored_signal or on_policy:
            raise UserError(f"train: the teacher's tokenizer differs from the student's; cross-tokenizer distillation "
                            f"works from the stored top-k (teacher_signal: stored, mode: offline), not "
                            f"{'on-policy' if on_policy else 'teacher_signal: ' + t.teacher_signal}; "
                            f"or train.mode: seq_kd (the teacher's text re-tokenised)")
        own = models.tokenizer_info(tokenizer)["tokenizer_hash"]
        aligner = {name: None if tp["tokenizer_hash"] == own else Aligner(models.load_tokenizer(
            tp["teacher"]["source"], tp["teacher"]["revision"], cfg.teacher.trust_remote_code), tokenizer)
            for name, tp in (teachers or {"default": prov}).items()}
        return cls(float(prov["capture_temperature"]), t.tail, t.uld_weight, aligner)

    def examples(self, dataset, tokenizer, max_seq_len, check):
        from llmdistill.train.cross_tokenizer import shares
        from llmdistill.train.data import build_examples

        examples = build_examples(dataset, tokenizer, max_seq_len, aligner=self.aligner)
        shared = {name: a.shared for name, a in self.aligner.items() if a is not None}
        self.shares = {**shares(examples["xt_kind"]), "shared_vocabulary": shared}
        s = self.shares
        log.info("train: cross-tokenizer: %.1f %% of the %d completion tokens match a teacher token exactly "
                 "(divergence), %.1f %% share its start only (ULD), %.1f %% have no teacher row (CE only); teacher "
                 "ids with a student id of the same bytes: %s", 100 * s["exact"], s["tokens"], 100 * s["uld"],
                 100 * s["none"], shared)
        return examples

    def __getstate__(self) -> dict:
        return {**self.__dict__, "aligner": None}  # the collate half reads the aligned rows, not the tokenizers

    def metrics(self, history: list[dict] | None = None) -> dict:
        return {**super().metrics(history), "cross_tokenizer": self.shares}


class Served(StoredTopK):
    """The top-k of a teacher behind a vLLM server (raw log-probs, so captured at T = 1) for every training sequence,
    asked by the collate half: `scorer` is a `served.RoutedScorer` (each row to the server of the teacher that
    wrote it). `checks`: what `served.check_server` checked of each server before step 1."""

    name = "served"
    fetches = True

    def __init__(self, scorer, tail: str = "bucket", checks: dict | None = None):
        super().__init__(1.0, tail)
        self.scorer, self.checks = scorer, checks

    @classmethod
    def build(cls, cfg, prov, teachers, tokenizer, on_policy, vocab) -> Served:
        scorer, checks = served_teachers(cfg, teachers, vocab)
        return cls(scorer, cfg.train.tail, checks)

    def _arrays(self, rows, spans):
        # row i of the served arrays is the distribution of token i: a completion's rows start at the prompt's end
        served = self.scorer([r["input_ids"] for r in rows], [r.get("teacher") or "default" for r in rows])
        return [(ids[p:n].astype(np.int64), lps[p:n]) for (ids, lps), (_, _, p, n) in zip(served, spans)]

    def collate(self, batch, rows, spans, row_teachers) -> None:
        super().collate(batch, rows, spans, row_teachers)
        # every served row passed the scorer's signal check (served.signal_problem): the trainer counts them
        batch["served_checked_tokens"] = torch.tensor(sum(len(r["input_ids"]) - r["prompt_len"] for r in rows))

    def metrics(self, history: list[dict] | None = None) -> dict:
        checked = sum(entry.get("served_signal_checked_tokens", 0) for entry in history or [])
        return {**super().metrics(history), "served": self.checks, "served_signal_checked_tokens": checked}


class Live(Source):
    """A teacher model loaded here: {index: model}, one per routed teacher (each batch row's `teacher_index` picks
    the teacher that wrote its samples; `index` maps teacher names to those indices, None for one teacher)."""

    name = "live"

    def __init__(self, teachers: dict | None, index: dict[str, int] | None = None):
        self.teachers, self.index = teachers, index
        self.group_rows = index is not None

    @classmethod
    def build(cls, cfg, prov, teachers, tokenizer, on_policy, vocab) -> Live:
        names = sorted(teachers or {"default": prov})
        missing = [n for n in names if n != "default" and n not in cfg.teachers]
        if missing:
            raise UserError(f"train: the data holds samples of teacher(s) {', '.join(missing)}, which the config no "
                            "longer names under `teachers`; a live teacher per sample needs each of them")
        tcfgs = [cfg.teacher_config(n) for n in names]
        loaded = {i: models.load_causal_lm(c.model, c.dtype, "cpu", c.revision, c.trust_remote_code)
                  for i, c in enumerate(tcfgs)}
        index = {n: i for i, n in enumerate(names)} if len(loaded) > 1 else None
        if index:
            log.info("train: live teachers %s, each for the samples it wrote", ", ".join(names))
        return cls(loaded, index)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "teachers": None}  # the models stay in the training process

    def collate(self, batch, rows, spans, row_teachers) -> None:
        if self.index is not None:
            batch["teacher_index"] = torch.tensor([self.index[n] for n in row_teachers], dtype=torch.long)

    def to(self, device) -> None:
        for teacher in self.teachers.values():
            teacher.to(device).eval().requires_grad_(False)

    def signal(self, inputs, mask, model):
        vocab = _unwrap(model).config.vocab_size
        which = inputs.get("teacher_index")
        if which is None or len(self.teachers) == 1:
            return live_signal(next(iter(self.teachers.values())), inputs["input_ids"], attention(inputs), mask, vocab)
        token_teacher = which[mask.nonzero()[:, 0]]  # the teacher of each of the N tokens
        parts = []
        for index, teacher in self.teachers.items():
            rows = (which == index).nonzero()[:, 0]
            if rows.numel():
                parts.append(((token_teacher == index).nonzero()[:, 0],
                              live_signal(teacher, inputs["input_ids"][rows], attention(inputs, rows), mask[rows],
                                          vocab)))
        return RoutedSignal(parts)


# train.teacher_signal -> its source (the cross-tokenizer one is the stored signal's, chosen by the preflight)
SOURCES: dict[str, type[Source]] = {"stored": StoredTopK, "served": Served, "live": Live}
assert set(SOURCES) == set(literal_values(TeacherSignal)), "SOURCES and config's TeacherSignal disagree"


def build(cfg, terms, check, prov: dict, teachers: dict | None, tokenizer, on_policy: bool = False) -> Source:
    """The source of a variant trained with `terms` (its effective loss), once its preflight `check` is known.
    teachers: the provenance of each teacher whose rows the data holds, by name (generate.routing)."""
    if not needs_teacher(terms):
        return Source()
    if check.outcome == "cross_tokenizer":
        return CrossTokenizer.build(cfg, prov, teachers, tokenizer, on_policy, check.student_vocab)
    return SOURCES[cfg.train.teacher_signal].build(cfg, prov, teachers, tokenizer, on_policy, check.student_vocab)


def from_parts(with_teacher: bool = True, scorer=None, teacher_model=None, teacher_index: dict | None = None,
               capture_temperature: float = 1.0, tail: str = "bucket", uld_weight: float = 1.0) -> Source:
    """A source from its parts, for code that builds `data.Collator` or `DistillTrainer` directly (tests,
    benchmarks) instead of through `build`: a served `scorer`, a live `teacher_model` ({index: model} for routed
    teachers, with `teacher_index` names -> indices for the collate half), else the stored top-k, or no teacher."""
    if teacher_index is not None or (with_teacher and teacher_model is not None):
        teachers = teacher_model if isinstance(teacher_model, dict) or teacher_model is None else {0: teacher_model}
        return Live(teachers, teacher_index)
    if not with_teacher:
        return Source()
    if scorer is not None:
        return Served(scorer, tail)
    return StoredTopK(capture_temperature, tail, uld_weight)


def served_teachers(cfg, teachers: dict | None, vocab: int):
    """(a `RoutedScorer` over the teachers' servers, {teacher name: what check_server checked}): every server
    checked before step 1. The rows of a teacher without a server of its own (train.served_teachers) are
    scored by the default teacher's (train.served). vocab: the student's, the ids a served signal may hold."""
    from llmdistill.train.served import RoutedScorer, ServedScorer, check_server, served_teacher_config

    t = cfg.train
    names = sorted(teachers or {"default": None})
    if t.served_teachers:
        missing = [n for n in names if n != "default" and n not in t.served_teachers]
        if missing:
            raise UserError(f"train.served_teachers: the data holds samples of teacher(s) {', '.join(missing)}, which "
                            "have no server there (each row is scored by its own teacher's server)")
    elif len(names) > 1:  # generate.routing wrote the rows; one server pool scores them all
        log.warning("train: the data holds rows of teachers %s; the served teacher (%s) scores every row "
                    "(train.served_teachers gives each teacher a server of its own)", ", ".join(names),
                    cfg.teacher.model)
    tcfgs = {name: cfg.teacher_config(name) for name in ["default", *sorted(t.served_teachers)]}
    configs = {name: served_teacher_config(c.model, c.revision,
                                           t.served if name == "default" else t.served_teachers[name])
               for name, c in tcfgs.items()}
    by_name: dict[str, list[str]] = {}
    for name, served in configs.items():
        by_name.setdefault(served.request_model, []).append(name)
    shared = [(model, owners) for model, owners in by_name.items() if len(owners) > 1]
    if shared:  # the request cache knows a reply by what was sent, which names the model, not the address
        model, owners = shared[0]
        raise UserError(f"train.served_teachers: teachers {' and '.join(owners)} are both served as {model!r}; the "
                        "request cache tells teachers apart by that name: start each server with its own "
                        "--served-model-name and set served_model")
    scorers, checks = {}, {}
    for name, served in configs.items():
        tcfg = tcfgs[name]
        checks[name] = check_server(served, models.load_tokenizer(tcfg.model, tcfg.revision, tcfg.trust_remote_code),
                                    t.max_seq_len, t.served_topk)
        scorers[name] = ServedScorer(served, t.served_topk, cfg.run_dir / "cache", vocab)
    if len(scorers) > 1:
        log.info("train: served teachers %s, each scoring the rows it wrote", ", ".join(scorers))
    return RoutedScorer(scorers), checks


def attention(inputs, rows=None) -> tuple:
    """(attention_mask, position_ids) of a batch (of its `rows`): packed rows have position ids, no mask."""
    if "position_ids" in inputs:
        return None, inputs["position_ids"] if rows is None else inputs["position_ids"][rows]
    return inputs["attention_mask"] if rows is None else inputs["attention_mask"][rows], None


def live_signal(teacher, input_ids, attention_pair, mask, vocab: int) -> LiveSignal:
    """A live teacher's signal for the tokens of `mask` (the positions that predict a label); attention_pair:
    (attention_mask, position_ids) as `attention` gives them."""
    attention_mask, position_ids = attention_pair
    with torch.no_grad():
        # no cache: transformers reads packed rows from position_ids only when there is none
        hidden = teacher.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                       use_cache=False).last_hidden_state
    head, post = models.lm_head(_unwrap(teacher))
    return LiveSignal(hidden[:, :-1][mask], head, vocab, post)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model
