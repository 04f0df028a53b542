"""BERT-style distillation (`llmdistill distill-bert CONFIG`): its own top-level model, BertDistillConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from llmdistill.config.base import InputFile, ModelSource, OutputDir, ReportTo, Section, Seed


class _LossWeight:
    """Marks a field of BertLossConfig as a loss term's weight; `layers`: the term compares intermediate layers."""

    def __init__(self, layers: bool = False):
        self.layers = layers


_Weight = Annotated[float, _LossWeight()]
_LayerWeight = Annotated[float, _LossWeight(layers=True)]


class BertDataConfig(Section):
    """Text classification data: JSON lines with a text field and (for labelled files) an integer label."""

    train: InputFile = Field(description="labelled training rows (JSONL)")
    val: InputFile | None = Field(None, description="labelled validation rows (JSONL): accuracy after each phase")
    test: InputFile = Field(description="labelled held-out rows (JSONL): the reported accuracy and macro-F1")
    unlabelled: InputFile | None = Field(None, description="text-only rows (JSONL) for distillation without labels")
    text_field: str = Field("text", description="JSON key of the text")
    label_field: str = Field("label", description="JSON key of the integer class id")
    labels: list[str] = Field(description="class names, in class-id order", min_length=2)
    max_seq_len: int = Field(64, ge=8, le=512, description="tokens per text (truncated)")
    max_train: int | None = Field(None, ge=1, description="use only the first N training rows")
    max_unlabelled: int | None = Field(None, ge=1, description="use only the first N unlabelled rows")
    train_rest_unlabelled: bool = Field(
        False, description="add the data.train rows after the first max_train to the unlabelled rows, their labels "
        "dropped (more transfer text from the same file; needs max_train)")

    @model_validator(mode="after")
    def _rest(self):
        if self.train_rest_unlabelled and self.max_train is None:
            raise ValueError("train_rest_unlabelled needs max_train (the rows after it are the rest)")
        return self


class BertFinetuneConfig(Section):
    """Fine-tuning of the teacher on the labelled training rows (cached: every config with the same teacher,
    data and settings reuses one fine-tuned teacher)."""

    epochs: float = Field(1.0, gt=0, description="passes over the training rows")
    lr: float = Field(5e-5, gt=0, description="peak learning rate (linear warm-up and decay)")
    batch_size: int = Field(32, ge=1, description="rows per step")
    max_examples: int | None = Field(None, ge=1, description="fine-tune on the first N training rows only")
    freeze_embeddings: bool = Field(False, description="keep the embedding layer fixed (faster on a CPU)")
    seed: Seed = Field(0, description="seeds the head initialisation and batch order (independent of the run's seed, "
                      "so student seeds share one teacher)")


class BertMlmHeadConfig(Section):
    """Fitting an MLM head on the frozen teacher, for a teacher that ships none (sentence-embedding encoders
    such as all-MiniLM-L6-v2): DistilBERT-style general distillation needs the teacher's MLM distributions."""

    epochs: float = Field(1.0, gt=0, description="passes over the text (data.unlabelled, then data.train)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate of the head (the encoder stays frozen)")
    batch_size: int = Field(32, ge=1, description="rows per step")
    max_examples: int | None = Field(None, ge=1, description="fit on the first N rows only")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="share of tokens masked (BERT's 80/10/10)")
    seed: Seed = Field(0, description="seeds the head initialisation, masking and batch order")


class BertTeacherConfig(Section):
    """The teacher: a saved llmdistill classifier, or an encoder (HF directory) that is fine-tuned first."""

    model: ModelSource = Field(description="directory: a saved llmdistill classifier or a BERT-family encoder")
    finetune: BertFinetuneConfig | None = Field(
        None, description="fine-tune the encoder on data.train first (required unless model is a saved classifier)")
    cache_dir: OutputDir = Field(Path("runs/_bert_teachers"), description="where fine-tuned teachers are cached")
    mlm_head: BertMlmHeadConfig | None = Field(
        None, description="fit an MLM head on the frozen teacher when it has none (cached beside the teacher); "
        "needed for task_agnostic phases with kd when the encoder ships no cls.predictions weights")
    signal: Literal["live", "stored"] = Field(
        "live", description="live: run the teacher every step; stored: one teacher pass over the rows, stored "
        "under the teacher's directory and shared by runs (not for phases that mask tokens)")


class BertStudentConfig(Section):
    """The student architecture and its initialisation."""

    kind: Literal["layer_subset", "narrow", "pretrained", "bilstm"] = Field(
        "narrow", description="layer_subset: teacher layers (DistilBERT init); narrow: a smaller BERT "
        "(MobileBERT-like, projections to the teacher); pretrained: an existing small encoder; bilstm: Tang et al.")
    teacher_layers: list[int] | None = Field(
        None, description="layer_subset: teacher layers to keep, 1-based (default: every other layer, DistilBERT)")
    model: ModelSource | None = Field(None, description="pretrained: the encoder directory")
    num_layers: int = Field(2, ge=1, description="narrow: transformer layers")
    hidden_size: int = Field(192, ge=8, description="narrow: hidden width")
    num_heads: int = Field(6, ge=1, description="narrow: attention heads (must divide hidden_size)")
    intermediate_size: int = Field(768, ge=8, description="narrow: feed-forward width")
    embedding_size: int | None = Field(
        96, ge=8, description="narrow/bilstm: word-embedding width (factorised V x E then E -> H); null = hidden")
    init_embeddings: Literal["teacher_pca", "random"] = Field(
        "teacher_pca", description="narrow/bilstm: word embeddings from the teacher's, projected on their top "
        "principal components, or random")
    lstm_hidden: int = Field(128, ge=8, description="bilstm: LSTM width per direction")
    mlm_head: bool = Field(False, description="give the student an MLM head (task-agnostic phases with mlm > 0)")

    @model_validator(mode="after")
    def _check(self):
        if self.kind == "pretrained" and self.model is None:
            raise ValueError("kind pretrained needs student.model")
        if self.kind == "narrow" and self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} does not divide hidden_size {self.hidden_size}")
        return self


class LayerMapConfig(Section):
    """Which teacher layer each student layer learns from (layers are 1-based; 0 is the embedding output)."""

    strategy: Literal["uniform", "skip", "last", "pairs"] = Field(
        "uniform", description="uniform: student i -> teacher i*Lt/Ls (TinyBERT); skip: every k-th layer below "
        "the top (BERT-PKD skip); last: the top Ls layers (PKD last); pairs: the list below")
    pairs: list[tuple[int, int]] | None = Field(None, description="pairs: [[student_layer, teacher_layer], ...]")

    @model_validator(mode="after")
    def _pairs(self):
        if (self.strategy == "pairs") != (self.pairs is not None):
            raise ValueError("give pairs exactly when strategy is pairs")
        return self


class BertLossConfig(Section):
    """Loss weights (0 = off) and their parameters. Each term is documented in llmdistill/bert/losses.py."""

    ce: _Weight = Field(0.0, ge=0, description="cross-entropy on the hard labels (task phases)")
    kd: _Weight = Field(0.0, ge=0, description="logit KD: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE")
    alpha: float = Field(1.0, ge=0, le=1, description="share of the soft (KL) part inside the kd term")
    temperature: float = Field(1.0, gt=0, description="KD temperature T")
    hidden: _LayerWeight = Field(0.0, ge=0, description="hidden states of mapped layers (FitNets/TinyBERT)")
    hidden_kind: Literal["mse", "cosine"] = Field("mse", description="hidden-state distance")
    attention: _LayerWeight = Field(0.0, ge=0, description="attention-map MSE of mapped layers (TinyBERT)")
    embedding: _LayerWeight = Field(0.0, ge=0, description="embedding-output MSE (TinyBERT)")
    pkd: _LayerWeight = Field(0.0, ge=0, description="BERT-PKD: MSE of L2-normalised [CLS] states of mapped layers")
    mlm: _Weight = Field(0.0, ge=0, description="student MLM loss (task-agnostic phases; DistilBERT)")
    minilm_attention: _LayerWeight = Field(0.0, ge=0, description="MiniLM v1: KL of last-layer attention distributions")
    minilm_value: _LayerWeight = Field(0.0, ge=0, description="MiniLM v1: KL of last-layer value relations")
    minilmv2: _LayerWeight = Field(0.0, ge=0, description="MiniLMv2: Q-Q, K-K, V-V self-attention relation KL")
    relation_heads: int | None = Field(None, ge=1, description="MiniLM relation heads (default: student heads)")
    minilm_teacher_layer: int | None = Field(None, ge=1, description="MiniLM(v2) teacher layer (default: last)")
    rkd_distance: _Weight = Field(0.0, ge=0, description="RKD distance loss on pooled representations")
    rkd_angle: _Weight = Field(0.0, ge=0, description="RKD angle loss on pooled representations")

    def active(self) -> dict[str, float]:
        """The terms with a weight > 0, in field order: name -> weight."""
        return {n: getattr(self, n) for n in BERT_LOSSES if getattr(self, n) > 0}


def _weights(layers_only: bool = False) -> tuple[str, ...]:
    return tuple(n for n, f in BertLossConfig.model_fields.items()
                 if any(isinstance(m, _LossWeight) and (m.layers or not layers_only) for m in f.metadata))


BERT_LOSSES = _weights()  # every loss term, in field order
BERT_INTERMEDIATE_LOSSES = _weights(layers_only=True)  # the terms that compare intermediate layers


class BertPhaseConfig(Section):
    """One training phase. TinyBERT's two-stage schedule is two phases (intermediate layers, then logits)."""

    name: str = Field("distil", description="phase name (logs, metrics)")
    mode: Literal["task_specific", "task_agnostic"] = Field(
        "task_specific", description="task_specific: labelled (+ unlabelled) rows, class logits; task_agnostic: "
        "text only with MLM masking (general distillation, DistilBERT/MiniLM)")
    data: Literal["labelled", "unlabelled", "both"] = Field(
        "labelled", description="which rows: labelled, unlabelled, or both (CE only on labelled ones)")
    losses: BertLossConfig = Field(default_factory=BertLossConfig, description="see `phases[].losses`")
    epochs: float = Field(1.0, gt=0, description="passes over this phase's rows")
    max_steps: int | None = Field(None, ge=1, description="stop after N steps (overrides epochs)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (linear warm-up and decay)")
    batch_size: int = Field(32, ge=1, description="rows per step")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="task_agnostic: share of tokens masked")

    @model_validator(mode="after")
    def _check(self):
        active = self.losses.active()
        if not active:
            raise ValueError("no loss has a weight > 0")
        if self.mode == "task_specific" and "mlm" in active:
            raise ValueError("mlm is a task_agnostic loss")
        if self.mode == "task_agnostic":
            if self.data == "labelled":
                pass  # the labelled rows' text serves as corpus
            if "ce" in active or "rkd_distance" in active or "rkd_angle" in active:
                raise ValueError("ce and rkd need a task (mode task_specific)")
            if "kd" in active and self.losses.alpha < 1:
                raise ValueError("task_agnostic kd is on MLM logits: alpha must be 1 (use mlm for the hard part)")
        if self.data == "unlabelled" and "ce" in active:
            raise ValueError("ce needs labelled rows (data labelled or both)")
        return self


class BertInt8Option(Section):
    """One way to quantise the ONNX student to int8 (onnxruntime; weights 7-bit, per output channel)."""

    mode: Literal["dynamic", "static", "weights"] = Field(
        "dynamic", description="dynamic: int8 weights, activations quantised at run time; static: activations too, "
        "with ranges calibrated on data.train rows; weights: int8 weights, fp32 compute (size only)")
    keep_fp32: list[Literal["embeddings", "head"]] = Field(
        default_factory=list, description="parts left in fp32: embeddings (token/position lookups and the "
        "factorised projection), head (the classifier)")

    @property
    def name(self) -> str:
        """`dynamic`, `static-fp32-embeddings+head`, ...: the option's file name and metrics key."""
        return self.mode + (f"-fp32-{'+'.join(self.keep_fp32)}" if self.keep_fp32 else "")


def _int8_options() -> list[BertInt8Option]:
    """Integer compute first (the speed-up), then weight-only int8 (the size, with fp32 compute)."""
    return [BertInt8Option(), BertInt8Option(mode="static"), BertInt8Option(keep_fp32=["embeddings", "head"]),
            BertInt8Option(mode="weights"), BertInt8Option(mode="weights", keep_fp32=["embeddings"])]


class BertExportConfig(Section):
    """Export of the trained student and what is re-measured after each step."""

    onnx: bool = Field(True, description="export to ONNX and re-measure accuracy and latency with onnxruntime")
    int8: bool = Field(True, description="int8 forms of the ONNX model (int8_options), each re-measured")
    int8_options: list[BertInt8Option] = Field(
        default_factory=_int8_options, min_length=1, description="int8 forms to build and measure, each {mode: "
        "dynamic|static|weights, keep_fp32: [embeddings, head]} (docs/bert.md); the first whose predictions agree "
        "with the PyTorch student on at least int8_min_agreement of data.val becomes model.int8.onnx (none does: "
        "the one that agrees most; no data.val: the first)")
    int8_min_agreement: float = Field(0.995, gt=0, le=1, description="share of data.val rows an int8 option must "
                                      "predict as the PyTorch student does to be chosen")
    int8_calibration_rows: int = Field(256, ge=1, description="data.train rows that calibrate static int8's "
                                       "activation ranges")
    torch_int8: bool = Field(False, description="also torch dynamic int8 quantisation of the Linear layers")
    opset: int = Field(17, ge=13, description="ONNX opset")
    latency_runs: int = Field(20, ge=1, description="timed forward passes per latency figure")

    @model_validator(mode="after")
    def _names(self):
        names = [o.name for o in self.int8_options]
        if len(set(names)) < len(names):
            raise ValueError(f"int8_options: each option once, got {names}")
        return self


class BertDistillConfig(Section):
    """A BERT-style distillation run: teacher (fine-tuned if needed) -> student phases -> eval -> export."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="run name")
    output_dir: OutputDir = Field(Path("runs"), description="the run is written to output_dir/name")
    seed: Seed = Field(0, description="seeds initialisation, masking and batch order")
    threads: int = Field(1, ge=1, description="torch CPU threads (1 on a shared CPU: more threads spin and slow down)")
    data: BertDataConfig = Field(description="see `data`")
    teacher: BertTeacherConfig = Field(description="see `teacher`")
    student: BertStudentConfig = Field(default_factory=BertStudentConfig, description="see `student`")
    layer_map: LayerMapConfig = Field(default_factory=LayerMapConfig, description="see `layer_map`")
    phases: list[BertPhaseConfig] = Field(min_length=1, description="training phases, in order")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="share of each phase's steps spent warming up")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    log_every: int = Field(20, ge=1, description="log the losses every N steps")
    report_to: ReportTo = Field(
        default_factory=list, description="experiment trackers (tensorboard, mlflow, trackio) that get the run: each "
        "loss term every log_every steps, each phase's validation metrics, the test metrics; see docs/bert.md. Not "
        "in the fingerprint (changing it retrains nothing)")
    tracking_project: str = Field("llmdistill", min_length=1,
                                  description="report_to: the MLflow experiment and the Trackio project")
    export: BertExportConfig = Field(default_factory=BertExportConfig, description="see `export`")

    @model_validator(mode="after")
    def _check(self):
        for i, phase in enumerate(self.phases):
            active = phase.losses.active()
            if self.student.kind == "bilstm":
                bad = [n for n in active if n in BERT_INTERMEDIATE_LOSSES or n == "mlm"]
                if bad:
                    raise ValueError(f"phases.{i}: a bilstm student has no layers for {', '.join(bad)}")
            if phase.data != "labelled" and self.data.unlabelled is None and not self.data.train_rest_unlabelled:
                raise ValueError(f"phases.{i}: data {phase.data} needs data.unlabelled or data.train_rest_unlabelled")
            if "mlm" in active and not self.student.mlm_head:
                raise ValueError(f"phases.{i}: mlm needs student.mlm_head: true")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name
