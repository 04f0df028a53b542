"""Run configuration: pydantic models (unknown keys are errors), YAML loading, `key.sub=value` overrides.

Defaults live here and only here: stage code reads `cfg.section.field`, never `dict.get(x, default)`.
Relative input paths written in a config file are resolved against that file's directory; relative
paths given as command-line overrides, and `output_dir`, against the current directory.

`load_config` collects every problem (unknown key with a did-you-mean, wrong type, missing file) and
raises one `ConfigError` that lists them all; it never loads a model. A key written twice in one YAML
mapping is an error naming both lines (PyYAML alone would keep the last).

One module per concern: base (Section, path types, ConfigError), load (YAML, overrides, error lines),
teacher, generate (and annotate), filter, train, evaluate (eval and retrain), root (Config), bert. Everything
is re-exported here: import from `llmdistill.config`. This package imports no stage (validate stays torch-free).
"""

from __future__ import annotations

from llmdistill.config.base import (
    KEY_PREFIXES,
    MODEL_ALIASES,
    NOT_HASHED,
    ConfigError,
    InputFile,
    InputFiles,
    ModelSource,
    OutputDir,
    Section,
    discriminator,
    file_problem,
    literal_values,
    union_members,
    union_tags,
    unwrap,
)
from llmdistill.config.bert import (
    BERT_INTERMEDIATE_LOSSES,
    BERT_LOSSES,
    BertDataConfig,
    BertDistillConfig,
    BertExportConfig,
    BertFinetuneConfig,
    BertLossConfig,
    BertMlmHeadConfig,
    BertPhaseConfig,
    BertStudentConfig,
    BertTeacherConfig,
    LayerMapConfig,
)
from llmdistill.config.evaluate import (
    GATE_METRICS,
    EvalConfig,
    GateConfig,
    RetrainConfig,
    TaskConfig,
)
from llmdistill.config.filter import (
    DEFAULT_REFUSALS,
    FILTER_STEP_NAMES,
    CharsetStep,
    ConfidenceStep,
    DecontaminateStep,
    EmptyStep,
    EvalSetConfig,
    ExactDedupStep,
    FailedStep,
    FilterConfig,
    FilterStep,
    HistoryDedupStep,
    JudgeStep,
    KeepRule,
    LengthStep,
    NearDedupStep,
    PerplexityStep,
    RefusalStep,
    RepetitionStep,
    RewardModelStep,
    SemanticDedupStep,
    StructuredStep,
    TruncatedStep,
)
from llmdistill.config.generate import (
    EVOLVE_OPERATORS,
    PROMPT_SOURCE_KINDS,
    AnnotateConfig,
    EvolveConfig,
    EvolveOperator,
    FileSource,
    GenerateConfig,
    HFDatasetSource,
    PromptSource,
    RouteRule,
    TemplateSource,
)
from llmdistill.config.load import (
    default_config_path,
    format_error,
    load_bert_config,
    load_config,
    parse_override,
    parse_yaml,
    read_yaml,
    validate_dict,
    yaml_problem,
)
from llmdistill.config.root import (
    Config,
)
from llmdistill.config.teacher import (
    LOCAL_BACKENDS,
    TEACHER_BACKENDS,
    APIOptions,
    APIPrice,
    LocalBackend,
    TeacherBackend,
    TeacherConfig,
    VLLMOptions,
)
from llmdistill.config.train import (
    DIVERGENCE_NAMES,
    DIVERGENCE_PARAMS,
    CurriculumConfig,
    Divergence,
    LoraConfig,
    LossTerm,
    OnPolicyConfig,
    StudentConfig,
    TrainConfig,
)

__all__ = [
    "MODEL_ALIASES", "ConfigError", "file_problem", "InputFile", "ModelSource", "InputFiles", "OutputDir", "Section",
    "unwrap", "literal_values", "discriminator", "union_members", "union_tags", "NOT_HASHED", "KEY_PREFIXES",
    "VLLMOptions", "APIPrice", "APIOptions", "LocalBackend", "TeacherBackend", "TEACHER_BACKENDS", "LOCAL_BACKENDS",
    "TeacherConfig",
    "FileSource", "HFDatasetSource", "TemplateSource", "PromptSource", "PROMPT_SOURCE_KINDS", "EvolveOperator",
    "EVOLVE_OPERATORS", "EvolveConfig", "RouteRule", "GenerateConfig", "AnnotateConfig",
    "FailedStep", "EmptyStep", "LengthStep", "RepetitionStep", "TruncatedStep", "ExactDedupStep", "DEFAULT_REFUSALS",
    "RefusalStep", "StructuredStep", "CharsetStep", "KeepRule", "NearDedupStep", "SemanticDedupStep",
    "HistoryDedupStep", "EvalSetConfig", "DecontaminateStep", "JudgeStep", "RewardModelStep", "PerplexityStep",
    "ConfidenceStep", "FilterStep", "FILTER_STEP_NAMES", "FilterConfig",
    "Divergence", "DIVERGENCE_NAMES", "DIVERGENCE_PARAMS", "LossTerm", "StudentConfig", "OnPolicyConfig",
    "CurriculumConfig", "LoraConfig", "TrainConfig",
    "TaskConfig", "EvalConfig", "GATE_METRICS", "GateConfig", "RetrainConfig",
    "Config",
    "BertDataConfig", "BertFinetuneConfig", "BertMlmHeadConfig", "BertTeacherConfig",
    "BertStudentConfig", "LayerMapConfig", "BertLossConfig", "BERT_LOSSES", "BERT_INTERMEDIATE_LOSSES",
    "BertPhaseConfig", "BertExportConfig", "BertDistillConfig",
    "parse_override", "parse_yaml", "yaml_problem", "load_config", "read_yaml", "validate_dict", "default_config_path",
    "format_error", "load_bert_config",
]
