"""The generate and annotate sections: prompt sources, evolution, routing, sampling; re-scoring text."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from llmdistill.config.base import (
    MAX_NEW_TOKENS,
    NOT_HASHED,
    RAY_ADDRESS_HELP,
    InputFile,
    InputFiles,
    Level,
    NewTokens,
    Section,
    _resolve_path,
    check_ray_address,
    literal_values,
    union_tags,
)
from llmdistill.config.teacher import LOCAL_BACKENDS, TeacherConfig


def _dataset_source(value: str, info: ValidationInfo) -> str:
    """A local dataset directory becomes absolute (./x, ../x, /x, ~/x must exist); anything else is a hub id
    or a `datasets` builder name (json, parquet, csv ...)."""
    path = _resolve_path(value, info)
    if path.exists():
        return str(path)
    if value.startswith((".", "/", "~")):
        raise ValueError(f"dataset not found: {path}")
    return value


class _Source(Section):
    """What every prompt source takes besides its own fields."""

    max_prompts: int | None = Field(
        None, gt=0, description="use this many of the source's prompts, spread evenly over it (e.g. a share of "
        "general data beside a task's prompts)")


class FileSource(_Source):
    """Seed prompts from files: JSONL ({prompt | messages, level?, source?, answer?, tags?} per line) or plain
    text (one prompt per non-empty line)."""

    kind: Literal["file"]
    path: InputFiles = Field(description="one file or a list of files")
    format: Literal["auto", "jsonl", "text"] = Field("auto", description="auto: .txt is text, anything else JSONL")
    level: Level | None = Field(None, description="level of every prompt (JSONL lines without one get 1)")
    source: str | None = Field(None, description="source name of every prompt (default: the line's, or the file name)")
    tags: list[str] = Field(default_factory=list, description="tags added to every prompt")


class HFDatasetSource(_Source):
    """Prompts from a `datasets` dataset: a hub id, a builder name with data_files (json, parquet, csv), or a
    directory written by `Dataset.save_to_disk`."""

    kind: Literal["hf_dataset"]
    path: Annotated[str, AfterValidator(_dataset_source)] = Field(description="hub id, builder name or directory")
    name: str | None = Field(None, description="dataset configuration name")
    split: str = Field("train", description="split to read")
    data_files: InputFiles | None = Field(None, description="local files for a builder (path: json / parquet / csv)")
    prompt_column: str = Field("prompt", description="column holding the prompt text")
    level_column: str | None = Field(None, description="column holding the level (overrides `level`)")
    level: Level = Field(1, description="level of every prompt when there is no level column")
    answer_column: str | None = Field(None, description="column holding a gold answer, if any")
    source: str | None = Field(None, description="source name of every prompt (default: the dataset path)")
    tags: list[str] = Field(default_factory=list, description="tags added to every prompt")
    max_rows: int | None = Field(None, gt=0, description="read at most this many rows (the first ones)")


class TemplateSource(_Source):
    """Prompts rendered from a Jinja template (in a sandbox: no file access, no attribute escapes) once per
    combination of `grid` values and once per `rows` entry."""

    kind: Literal["template"]
    template: InputFile = Field(description="template file, e.g. prompts/explain.md.j2")
    grid: dict[str, list] = Field(default_factory=dict, description="variable -> values; every combination renders")
    rows: list[dict] = Field(default_factory=list, description="explicit variable sets, rendered one by one")
    level: Level = Field(1, description="level of every rendered prompt")
    source: str | None = Field(None, description="source name (default: the template file name)")
    tags: list[str] = Field(default_factory=list, description="tags added to every prompt")

    @model_validator(mode="after")
    def _some_variables(self):
        if not self.grid and not self.rows:
            raise ValueError("a template source needs `grid` or `rows` (the variables to render it with)")
        if any(not values for values in self.grid.values()):
            raise ValueError("every `grid` variable needs at least one value")
        return self


PromptSource = Annotated[FileSource | HFDatasetSource | TemplateSource, Field(discriminator="kind")]
PROMPT_SOURCE_KINDS = union_tags(PromptSource)
# each operator is a template prompts/evol_<operator>.md
EvolveOperator = Literal["add_constraints", "deepen", "concretise", "add_reasoning"]
EVOLVE_OPERATORS = literal_values(EvolveOperator)


class EvolveConfig(Section):
    """Evol-Instruct style evolution: the teacher rewrites prompts into harder variants (level + 1).

    Each operator is a template prompts/evol_<operator>.md (rendered in the sandbox with `prompt`).
    Evolved prompts are written to the run's generate/prompts.jsonl and reused on a rerun."""

    rounds: int = Field(1, ge=1, le=5, description="evolution rounds; round r evolves the prompts of round r-1")
    operators: list[EvolveOperator] = Field(
        default_factory=lambda: list(EVOLVE_OPERATORS), description="operators to draw from (seeded per prompt)")
    per_prompt: int = Field(1, ge=1, description="variants asked for per prompt and round (distinct operators)")
    max_new_tokens: int = Field(192, ge=8, le=MAX_NEW_TOKENS, description="length cap of an evolved prompt")
    temperature: float = Field(0.7, ge=0.0, description="sampling temperature of the rewriting teacher")
    min_chars: int = Field(12, ge=1, description="shorter rewrites are rejected (reason too_short)")
    max_chars: int = Field(2000, ge=1, description="longer rewrites are rejected (reason too_long)")
    teacher: str = Field("default", description="teacher that rewrites (a name from `teachers`, or default)")
    levels: list[int] | None = Field(None, description="evolve only prompts at these levels (default: all)")

    @field_validator("operators")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("operators must be a non-empty list of distinct names")
        return v

    @model_validator(mode="after")
    def _enough_operators(self):
        if self.per_prompt > len(self.operators):
            raise ValueError(f"per_prompt ({self.per_prompt}) exceeds the number of operators ({len(self.operators)})")
        return self


class RouteRule(Section):
    """Send matching prompts to a named teacher. A rule matches when every criterion it sets matches."""

    teacher: str = Field(description="a name from `teachers` (or default)")
    sources: list[str] | None = Field(None, description="source names; shell patterns allowed (math/*)")
    levels: list[int] | None = Field(None, description="curriculum levels")
    tags: list[str] | None = Field(None, description="any of these tags")

    @model_validator(mode="after")
    def _some_criterion(self):
        if self.sources is None and self.levels is None and self.tags is None:
            raise ValueError("a routing rule needs at least one of sources, levels, tags")
        return self


class GenerateConfig(Section):
    """Prompt sources and how the teacher samples completions and log-probs for them."""

    prompts: InputFiles | None = Field(
        None, description="JSONL seed files (shorthand for a `file` source): {prompt, level, source?, answer?, tags?}")
    sources: list[PromptSource] = Field(
        default_factory=list,
        description=f"prompt sources (see `generate.sources[]`): {', '.join(PROMPT_SOURCE_KINDS)}")
    on_bad_line: Literal["fatal", "skip"] = Field(
        "fatal", description="a bad prompt line: fatal stops with file:line; skip reports it and goes on")
    evolve: EvolveConfig | None = Field(None, description="harder variants by the teacher (see `generate.evolve`)")
    routing: list[RouteRule] = Field(
        default_factory=list, description="first matching rule picks the teacher; unmatched prompts go to `teacher`")
    system_prompt: str | None = Field(None, description="prepended as a system turn to every prompt")
    max_prompts: int | None = Field(None, gt=0, description="keep this many prompts, spread evenly over the curriculum")
    order: Literal["curriculum", "file"] = Field("curriculum", description="curriculum: easy to hard by level")
    n: int = Field(1, ge=1, description="samples per prompt")
    max_new_tokens: NewTokens = Field(256, description="completion length cap (finish_reason 'length' when hit)")
    temperature: float = Field(0.7, ge=0.0, description="0 means greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling; 1 disables it")
    topk: int = Field(20, ge=1, description="top-k log-probs stored for every completion token")
    logprob_mode: Literal["raw", "processed"] = Field(
        "raw", description="raw: log-softmax of the model's logits; processed: after temperature/top-p"
    )
    batch_size: int = Field(16, ge=1, description="prompts per generate call (also the unit of seeding)")
    shard_rows: int = Field(256, ge=1, description="rows per Parquet shard (a shard is the unit of resume)")
    max_failed_fraction: float = Field(
        0.1, ge=0.0, le=1.0, json_schema_extra=NOT_HASHED, description="the stage is not done (no _SUCCESS, exit code "
        "2 naming the main reasons) when more than this share of the samples failed; a plain rerun retries the "
        "failures worth retrying")
    too_long: Literal["skip", "error"] = Field(
        "skip", json_schema_extra=NOT_HASHED, description="a prompt whose tokens + max_new_tokens exceed the teacher's "
        "context: skip records a failed sample (never retried); error stops the stage naming the prompt's file:line")
    # where the stage runs, not what it writes: none of these is hashed (a Ray run resumes a local one and back)
    executor: Literal["local", "ray"] = Field(
        "local", json_schema_extra=NOT_HASHED, description="local: this process generates (or one shard, with "
        "--shard i/n); ray: the shards run as tasks on a Ray cluster, then the merge runs here (the run directory "
        "must be on a file system every node shares; pip install 'llmdistill[ray]'; docs/generation.md)")
    ray_address: str | None = Field(
        None, json_schema_extra=NOT_HASHED, description=RAY_ADDRESS_HELP)
    ray_shards: int | None = Field(
        None, gt=0, json_schema_extra=NOT_HASHED, description="executor ray: tasks the plan is cut into (shard i/n "
        "each; default: as many as the cluster runs at once, its GPUs / GPUs per task, or its CPUs for CPU tasks)")

    @model_validator(mode="after")
    def _some_prompts(self):
        if self.prompts is None and not self.sources:
            raise ValueError("set generate.prompts (seed files) or generate.sources")
        return self

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, v: str | None) -> str | None:
        return check_ray_address(v)

    @model_validator(mode="after")
    def _ray_options_need_ray(self):
        given = [name for name in ("ray_address", "ray_shards") if getattr(self, name) is not None]
        if given and self.executor != "ray":
            raise ValueError(f"{' and '.join(given)} set, but executor is {self.executor}: set executor: ray")
        return self


class AnnotateConfig(Section):
    """Re-score the generated text with a local teacher (teacher forcing) and store its top-k log-probs.

    This gives logits for text written by an API teacher, by people, or by an older run, and lets a run
    swap teachers without regenerating. When enabled, filter reads annotate's output instead of generate's.
    """

    enabled: bool = Field(False, description="run the annotate stage between generate and filter")
    teacher: TeacherConfig = Field(
        default_factory=TeacherConfig, description="the local teacher that scores the text (backend hf or vllm)")
    topk: int = Field(20, ge=1, description="top-k log-probs stored for every completion token")
    batch_size: int = Field(8, ge=1, description="samples scored per forward pass / engine call")

    @field_validator("teacher")
    @classmethod
    def _local(cls, v: TeacherConfig) -> TeacherConfig:
        if v.backend not in LOCAL_BACKENDS:
            raise ValueError(f"annotate scores text with a local model: backend {' or '.join(LOCAL_BACKENDS)}, "
                             f"not {v.backend}")
        return v
