"""The train section: the loss terms, where the student starts, on-policy, curriculum and LoRA options."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmdistill.config.base import (
    HASHED_AS_DEFAULT,
    NOT_HASHED,
    InputFiles,
    ModelSource,
    NewTokens,
    ReportTo,
    Section,
    Seed,
    literal_values,
)
from llmdistill.config.teacher import APIOptions, VLLMOptions

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"]
DIVERGENCE_NAMES = literal_values(Divergence)
# the parameters (LossTerm fields) a divergence takes beyond the temperature, with their defaults; no other takes them
DIVERGENCE_PARAMS: dict[str, dict[str, float]] = {"jsd": {"beta": 0.5}, "skew_kl": {"alpha": 0.1},
                                                  "skew_reverse_kl": {"alpha": 0.1}}
_PARAM_NAMES = tuple(dict.fromkeys(p for params in DIVERGENCE_PARAMS.values() for p in params))
# where a divergence's teacher distribution comes from (train/sources.py has one class per name)
TeacherSignal = Literal["stored", "live", "served"]


class LossTerm(Section):
    """One term of the training loss: total = sum(weight * term). Weights are used as given.

    Divergences between teacher p and student q: forward_kl KL(p||q), reverse_kl KL(q||p),
    jsd beta KL(p||m) + (1-beta) KL(q||m) with m = beta p + (1-beta) q, skew_kl KL(p || alpha p + (1-alpha) q),
    skew_reverse_kl KL(q || alpha q + (1-alpha) p), tvd 1/2 sum |p - q|; ce is hard-label cross-entropy.
    """

    name: Literal[Divergence, "ce", "sampled_reverse_kl"] = Field(
        description="a divergence to the teacher's distribution, ce (cross-entropy on the sequence's tokens), or "
        "sampled_reverse_kl: on-policy only, the per-token estimate log q(x) - log p(x) of KL(student || teacher) "
        "at the tokens x the student sampled (its gradient: that difference times the gradient of log q(x))")
    weight: float = Field(ge=0.0, description="multiplies the term (divergences also by T^2); no renormalisation")
    temperature: float = Field(1.0, gt=0.0, description="divergences: softening temperature (term scaled by T^2)")
    beta: float | None = Field(None, gt=0.0, lt=1.0, description="jsd only: mixture weight of the teacher (0.5)")
    alpha: float | None = Field(None, ge=0.0, lt=1.0, description="skew_kl / skew_reverse_kl only: skew (0.1)")

    @model_validator(mode="after")
    def _params(self):
        if self.name == "sampled_reverse_kl" and self.temperature != 1.0:
            raise ValueError("sampled_reverse_kl is taken at temperature 1 (the distribution the student sampled from)")
        for param in _PARAM_NAMES:
            takers = [name for name, params in DIVERGENCE_PARAMS.items() if param in params]
            if getattr(self, param) is not None and self.name not in takers:
                raise ValueError(f"{param} applies to {' and '.join(takers)} only, not {self.name}")
        for param, default in DIVERGENCE_PARAMS.get(self.name, {}).items():
            if getattr(self, param) is None:
                setattr(self, param, default)
        return self

    @property
    def params(self) -> dict[str, float]:
        """Keyword arguments of the divergence function."""
        return {k: v for k in _PARAM_NAMES if (v := getattr(self, k)) is not None}

    @property
    def is_divergence(self) -> bool:
        """Whether the term compares the student with the teacher's distribution (every term but ce)."""
        return self.name != "ce"


def _check_terms(terms, where: str) -> None:
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: loss terms must be distinct, got {names}")
    if not any(t.weight > 0 for t in terms):
        raise ValueError(f"{where}: at least one loss term needs a positive weight")


def needs_teacher(terms) -> bool:
    """Whether a loss with these terms needs a teacher signal: the one predicate for it."""
    return any(t.is_divergence for t in terms)


CE_ONLY = (LossTerm(name="ce", weight=1.0),)  # the SFT-only loss


def effective_loss(mode: str, terms) -> list[LossTerm]:
    """The terms a variant of train.mode `mode` trains with: seq_kd learns the teacher's text with cross-entropy
    alone (its divergence terms, if any, are not used); offline and on_policy use `terms`."""
    return list(CE_ONLY) if mode == "seq_kd" else list(terms)


class PruneConfig(Section):
    """Build the student by pruning the teacher (Llama family): depth by block influence, width by activation
    importance, both measured on calibration text; see docs/llm-students.md. Unset sizes stay whole."""

    layers: int | None = Field(None, ge=1, description="decoder layers kept")
    select: Literal["importance", "uniform"] = Field(
        "importance", description="importance: the layers with the largest block influence (1 - cos of a layer's "
        "input and output); uniform: spread evenly from the first to the last")
    intermediate_size: int | None = Field(None, ge=1, description="MLP channels kept in every layer")
    attention_heads: int | None = Field(
        None, ge=1, description="query heads kept in every layer (a multiple of the key/value heads)")
    hidden_size: int | None = Field(None, ge=1, description="hidden channels kept everywhere (embeddings, head too)")
    calibration: InputFiles | None = Field(
        None, description="prompt files (JSONL or text) to measure on; default: the training samples "
        "(prompt + teacher completion)")
    calibration_samples: int = Field(64, ge=1, description="sequences measured (spread over the data)")
    calibration_tokens: int = Field(256, ge=8, description="tokens per calibration sequence, at most")

    @model_validator(mode="after")
    def _something(self):
        if all(getattr(self, k) is None for k in ("layers", "intermediate_size", "attention_heads", "hidden_size")):
            raise ValueError("prune needs at least one of layers, intermediate_size, attention_heads, hidden_size")
        return self


class StudentConfig(Section):
    """Where the student starts: an existing model, a layer subset of the teacher, or a pruned teacher."""

    model: ModelSource | None = Field(None, description="local HF directory or hub id")
    teacher_layers: list[int] | None = Field(
        None, description="build the student from the teacher's embeddings, these decoder layers and its head"
    )
    prune: PruneConfig | None = Field(None, description="prune the teacher by importance (see `train.student.prune`)")

    @field_validator("teacher_layers")
    @classmethod
    def _layers(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v:
                raise ValueError("teacher_layers must name at least one layer")
            if any(i < 0 for i in v) or len(set(v)) != len(v) or v != sorted(v):
                raise ValueError("teacher_layers must be distinct, non-negative and increasing")
        return v

    @model_validator(mode="after")
    def _exactly_one(self):
        if sum(x is not None for x in (self.model, self.teacher_layers, self.prune)) != 1:
            raise ValueError("set exactly one of student.model, student.teacher_layers and student.prune")
        return self


class OnPolicyConfig(Section):
    """On-policy distillation (train.mode: on_policy): the student writes completions for the prompts and the
    teacher scores them. rollouts: trl runs trl's trainers (the student samples with HF generate, the local
    teacher scores with the generalised JSD); rollouts: vllm samples from a vLLM engine holding the current
    student and trains with train.loss against train.teacher_signal (live or served); rollouts: offline runs
    `rounds` rounds of: the student samples completions for the prompts, the local teacher scores them once by
    teacher forcing (its top-k and the log-prob of every sampled token, stored as a dataset), the student trains
    on them (docs/training.md, offline on-policy distillation)."""

    rollouts: Literal["trl", "vllm", "offline"] = Field(
        "trl", description="trl: trl's trainers, HF generate; vllm: the student's samples come from a vLLM engine "
        "that reloads its weights every refresh_every steps, scored by the live or served teacher (train.loss); "
        "offline: rounds of stored student samples scored once by the local teacher (train.loss on them)")
    trainer: Literal["distillation", "gkd"] = Field(
        "distillation", description="rollouts trl: distillation = trl.DistillationTrainer (every batch "
        "on-policy); gkd = trl's GKDTrainer (lmbda mixes student-generated and teacher-written batches)")
    beta: float = Field(0.5, ge=0.0, le=1.0, description="rollouts trl: JSD interpolation, 0 forward KL, 1 reverse "
                        "KL (rollouts vllm and offline: the loss is train.loss, e.g. a jsd term with its beta)")
    lmbda: float = Field(0.5, ge=0.0, le=1.0, description="gkd and vllm: fraction of batches the student generates "
                         "(the rest train on the teacher-written completions)")
    seq_kd: bool = Field(False, description="gkd only: off-policy batches use fresh teacher generations")
    max_new_tokens: NewTokens = Field(64, description="length of the completions generated during training")
    min_new_tokens: NewTokens | None = Field(
        None, description="rollouts vllm and offline: a rollout budget that grows from this many new tokens "
        "to max_new_tokens (linearly over the steps, or the rounds), short to long as in ShortOPD; unset: "
        "max_new_tokens throughout")
    cut_repetition: bool = Field(
        True, description="rollouts vllm and offline: cut a sample's repetitive suffix (the same span of tokens "
        "three times or more in a row, or a single token eight times) after its first occurrence, so the student "
        "is not trained on its own degenerate loops")
    temperature: float = Field(1.0, gt=0.0, description="sampling temperature (rollouts trl: also the loss's)")
    refresh_every: int = Field(1, ge=1, description="rollouts vllm: steps between reloads of the student's weights "
                               "into the engine (samples come from weights at most this many steps old)")
    rounds: int = Field(1, ge=1, description="rollouts offline: rounds of sample -> score -> train; train.max_steps "
                        "(less offline_steps) is split evenly over them")
    offline_steps: int = Field(
        0, ge=0, description="rollouts offline: steps of train.loss on the teacher's data before the first round "
        "(distil or fine-tune first, then on-policy); their loss is train.loss, the rounds' on_policy.loss")
    loss: list[LossTerm] | None = Field(
        None, description="rollouts offline: the rounds' loss on the student's samples; unset: train.loss")
    prompts_per_round: int | None = Field(
        None, ge=1, description="rollouts offline: prompts sampled per round (drawn from the data's prompts, a "
        "seeded order per round); unset: one per training sample of the round (its steps x batch size)")
    generator: Literal["auto", "vllm", "hf"] = Field(
        "auto", description="rollouts offline: what samples the student: vllm (an engine, as on_policy.vllm), hf "
        "(transformers generate), auto: vllm where its venv or package is there, else hf")
    allow_other_teacher: bool = Field(
        False, description="rollouts offline: score with a teacher other than the one that wrote the training data "
        "(refused by default: with another teacher on-policy distillation converges to a biased point)")
    vllm: VLLMOptions = Field(default_factory=VLLMOptions, description="rollouts vllm (and offline with generator "
                              "vllm): the engine (as teacher.vllm; the model is the student, in float32 unless "
                              "engine_args say otherwise)")

    @model_validator(mode="after")
    def _per_rollouts(self):
        # a default value is accepted (a resolved config writes it out), any other value is refused
        defaults = type(self).model_fields
        changed = {k for k in ("trainer", "beta", "lmbda", "seq_kd", "refresh_every", "rounds", "offline_steps",
                               "loss", "prompts_per_round", "generator", "allow_other_teacher", "min_new_tokens")
                   if getattr(self, k) != defaults[k].default}
        if self.rollouts == "trl" and self.trainer == "distillation" and changed & {"seq_kd", "lmbda"}:
            raise ValueError("lmbda and seq_kd apply to on_policy.trainer: gkd only")
        offline_only = {"rounds", "offline_steps", "loss", "prompts_per_round", "generator", "allow_other_teacher"}
        if self.rollouts != "offline" and changed & offline_only:
            raise ValueError(f"on_policy.{', '.join(sorted(changed & offline_only))} apply to rollouts: offline")
        if self.rollouts != "vllm" and "refresh_every" in changed:
            raise ValueError("on_policy.refresh_every applies to rollouts: vllm")
        if self.rollouts != "trl" and changed & {"trainer", "beta", "seq_kd"}:
            raise ValueError(f"on_policy.{', '.join(sorted(changed & {'trainer', 'beta', 'seq_kd'}))} apply to "
                             f"rollouts: trl; with rollouts: {self.rollouts} the loss is train.loss (e.g. "
                             "{name: jsd, beta: 0.5})")
        if self.rollouts == "offline" and "lmbda" in changed:
            raise ValueError("on_policy.lmbda applies to rollouts trl (gkd) and vllm; offline rounds train on the "
                             "student's samples only (on_policy.offline_steps trains on the teacher's data first)")
        if self.rollouts == "trl" and "min_new_tokens" in changed:
            raise ValueError("on_policy.min_new_tokens applies to rollouts: vllm and offline")
        if self.min_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"on_policy.min_new_tokens ({self.min_new_tokens}) is above max_new_tokens "
                             f"({self.max_new_tokens})")
        if self.loss is not None:
            _check_terms(self.loss, "on_policy.loss")
        return self


class CurriculumConfig(Section):
    """How training walks through the curriculum (data arrives ordered easy -> hard by level)."""

    pacing: Literal["none", "linear", "root", "step"] = Field(
        "none", description="none: read the data in order (or shuffled, train.shuffle); linear/root: a growing "
        "easy-first pool by competence; step: whole levels admitted in turn")
    start: float = Field(0.2, gt=0.0, le=1.0, description="fraction of the data admitted at step 0")
    full_at: float = Field(0.8, gt=0.0, le=1.0, description="training progress at which all data is admitted")
    closed_loop_every: int | None = Field(
        None, ge=1, description="every N steps, reweight the pool by the per-sample divergence measured so far")
    drop_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="closed loop: best-matched share left out")
    repeat_fraction: float = Field(0.1, ge=0.0, le=1.0, description="closed loop: worst-matched share drawn twice")


class LoraConfig(Section):
    """Train low-rank adapters (peft) instead of every weight; the saved student has them merged in."""

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="scaling numerator (the update is scaled by alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt, or all-linear (every linear layer but the head)")


def auto_chunk_tokens(vocab: int) -> int:
    """train.chunk_tokens when unset: one chunk's fp32 logits take about 64 MB (2^24 values), within 16..1024."""
    return max(16, min(1024, 2**24 // max(vocab, 1)))


def _default_loss() -> list[LossTerm]:
    return [LossTerm(name="forward_kl", weight=0.9, temperature=1.0), LossTerm(name="ce", weight=0.1)]


class TrainConfig(Section):
    """Student fine-tuning on the filtered data with KL (to the stored teacher top-k) + CE losses."""

    student: StudentConfig
    mode: Literal["offline", "seq_kd", "on_policy"] = Field(
        "offline", description="offline: the loss terms on the generated samples; seq_kd: CE on the teacher's "
        "text (works across tokenizers); on_policy: the student's own samples, scored by the teacher (see "
        "train.on_policy)")
    teacher_signal: TeacherSignal = Field(
        "stored", description="offline mode (and on-policy rollouts: vllm, which needs live or served): the stored "
        "top-k log-probs; live: a teacher loaded here (its full "
        "distribution); served: the top-k of a teacher behind a vLLM server (prompt_logprobs of each training "
        "sequence, fetched while the previous step trains; see train.served)")
    served: APIOptions | None = Field(
        None, description="teacher_signal: served: the vLLM OpenAI-compatible server(s) of the teacher, as "
        "`teacher.api` (base_url or a pool, served_model, api_key_env, max_concurrency, retries; teacher.model names "
        "its local tokenizer); endpoint and token ids are implied")
    served_teachers: dict[str, APIOptions] = Field(
        default_factory=dict, description="teacher_signal: served, on data from several teachers (generate.routing): "
        "the server(s) of each named teacher (`teachers`), as train.served, so that each row is scored by the "
        "teacher that wrote it; train.served serves the default teacher's rows. Empty: train.served scores every row")
    served_topk: int = Field(20, ge=1, le=1000, description="teacher_signal: served: log-probs kept per position "
                             "(vLLM caps it at its --max-logprobs, 20 by default)")
    loss: list[LossTerm] = Field(default_factory=_default_loss)
    uld_weight: float = Field(
        1.0, ge=0.0, description="a teacher on another tokenizer (preflight cross_tokenizer): weight of the ULD "
        "distance at student tokens whose bytes no teacher token matches exactly (0: the divergence on matched "
        "tokens only)")
    tail: Literal["bucket", "renormalize"] = Field(
        "bucket",
        description="mass outside the teacher's top-k: bucket = one extra 'rest of vocabulary' class; "
        "renormalize = compare the two distributions restricted to the top-k ids",
    )
    sft_baseline: bool = Field(False, description="also train a CE-only student on the same data and steps")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (overrides epochs)")
    epochs: float = Field(1.0, gt=0, description="passes over the data when max_steps is not set")
    batch_size: int = Field(8, ge=1, description="samples per device per step")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    lr: float = Field(5e-5, gt=0, description="peak learning rate (AdamW)")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="learning-rate schedule after warm-up")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_seq_len: int = Field(1024, ge=8, description="prompt + completion tokens; longer completions are cut")
    shuffle: bool = Field(False, description="False keeps the curriculum order (easy to hard)")
    seed: Seed | None = Field(None, description="seeds training alone (data order, anything random in the "
                             "student); default: the top-level seed. Sweep it to repeat a run on the same data")
    chunk_tokens: int | None = Field(
        None, ge=1, description="loss chunk: at most this many tokens' logits exist at once (default: 2^24 / "
        "vocabulary, i.e. 64 MB of fp32 logits, within 16..1024)")
    freeze_embeddings: bool = Field(False, description="keep the input embeddings (and a head tied to them) fixed")
    bf16: bool = Field(False, description="bf16 mixed precision (GPUs)")
    gradient_checkpointing: bool = Field(
        False, description="recompute each decoder layer's activations in the backward pass instead of keeping them: "
        "activation memory falls to about one layer's, each step costs about one more forward pass")
    packing: bool = Field(
        False, description="lay each batch's samples out first-fit in rows of up to max_seq_len tokens instead of "
        "padding each to the longest: position ids restart per sample and attention stays within it, so every "
        "sample's loss is the unpacked one; a batch holds the same samples (batch_size), with less padding")
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps (a killed run resumes from the last)")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept")
    logging_steps: int = Field(10, ge=1, description="log loss terms every N steps")
    report_to: ReportTo = Field(
        default_factory=list, json_schema_extra=HASHED_AS_DEFAULT,
        description="experiment trackers (tensorboard, mlflow, trackio) that get one run per trained variant: every "
        "training log entry (the loss, each loss term, the held-out losses, curriculum level, rollout statistics) and "
        "the eval stage's metrics; see docs/training.md, Tracking experiments. Hashed at its default (changing it "
        "retrains nothing)")
    tracking_project: str = Field(
        "llmdistill", min_length=1, json_schema_extra=NOT_HASHED,
        description="report_to: the MLflow experiment and the Trackio project the runs go to")
    eval_every: int | None = Field(None, ge=1, description="evaluate the loss on held-out samples every N steps")
    eval_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="share of samples held out when eval_every is set")
    on_policy: OnPolicyConfig = Field(default_factory=OnPolicyConfig, description="see `train.on_policy`")
    lora: LoraConfig | None = Field(None, description="LoRA adapters instead of full fine-tuning (see `train.lora`)")
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig, description="see `train.curriculum`")

    @property
    def stored_signal(self) -> bool:
        """Whether the student trains on the stored top-k (offline mode, teacher_signal stored)."""
        return self.mode == "offline" and self.teacher_signal == "stored"

    @property
    def loads_live_teacher(self) -> bool:
        """Whether the student's variant loads a live teacher for its loss (plan counts its memory)."""
        return self.teacher_signal == "live" and needs_teacher(effective_loss(self.mode, self.loss))

    @model_validator(mode="after")
    def _loss_terms(self):
        _check_terms(self.loss, "train.loss")
        if self.teacher_signal == "served":
            if self.served is None:
                raise ValueError("teacher_signal: served needs train.served (the teacher server's base_url ...)")
            bad = [n for n, o in {"served": self.served, **self.served_teachers}.items() if o.mode != "online"]
            if bad:
                raise ValueError(f"train.{bad[0] if bad[0] == 'served' else 'served_teachers.' + bad[0]}.mode must "
                                 "be online (training waits for each batch's log-probs)")
        elif self.served_teachers:
            raise ValueError("train.served_teachers needs teacher_signal: served")
        if self.mode == "on_policy" and self.on_policy.rollouts == "vllm" and self.teacher_signal == "stored":
            raise ValueError("train.on_policy.rollouts: vllm scores the student's own samples, which no stored "
                             "log-probs cover: set train.teacher_signal: live or served")
        op = self.on_policy
        # sampled_reverse_kl needs every sequence it sees to be the student's own sample
        offline_rounds = self.mode == "on_policy" and op.rollouts == "offline"
        allowed = {"train.on_policy.loss": offline_rounds,
                   "train.loss": (offline_rounds and op.loss is None and op.offline_steps == 0) or (
                       self.mode == "on_policy" and op.rollouts == "vllm" and op.lmbda == 1.0
                       and self.teacher_signal == "live")}
        for where, terms in (("train.loss", self.loss), ("train.on_policy.loss", op.loss or [])):
            if any(t.name == "sampled_reverse_kl" for t in terms) and not allowed[where]:
                raise ValueError(f"{where}: sampled_reverse_kl is an estimate on the student's own samples: use it "
                                 "in the rounds' loss of rollouts offline (on_policy.loss, or train.loss without "
                                 "offline_steps), or with rollouts vllm, a live teacher and lmbda 1")
        if self.mode == "on_policy" and op.rollouts == "offline":
            if self.max_steps is None:
                raise ValueError("train.on_policy.rollouts: offline needs train.max_steps (split over the rounds)")
            if self.max_steps - op.offline_steps < op.rounds:
                raise ValueError(f"train.max_steps ({self.max_steps}) leaves fewer steps than rounds "
                                 f"({op.rounds}) after on_policy.offline_steps ({op.offline_steps})")
            if self.teacher_signal != "stored":
                raise ValueError("train.on_policy.rollouts: offline stores the teacher's scores with the samples: "
                                 "leave train.teacher_signal at stored")
        if self.packing and self.mode == "on_policy" and self.on_policy.rollouts == "trl":
            raise ValueError("train.packing applies to our trainer (mode offline or seq_kd, or on_policy with "
                             "rollouts: vllm); trl's on-policy trainers lay out their own batches")
        c = self.curriculum
        if c.pacing != "none" and self.max_steps is None:
            raise ValueError("curriculum pacing needs train.max_steps (the pace is set per step)")
        if c.closed_loop_every is not None:
            if c.pacing == "none":
                raise ValueError("curriculum.closed_loop_every needs a pacing (linear, root or step)")
            if self.mode != "offline" or not needs_teacher(self.loss):
                raise ValueError("curriculum.closed_loop_every needs train.mode offline with a divergence term")
        return self
