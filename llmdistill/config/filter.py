"""The filter section: its steps (one class per step, the `FilterStep` union) and their order."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from llmdistill.config.base import (
    NOT_HASHED,
    RAY_ADDRESS_HELP,
    InputFile,
    ModelSource,
    NewTokens,
    OutputDir,
    Section,
    Seed,
    check_ray_address,
    literal_values,
    union_tags,
)
from llmdistill.config.evaluate import CHOICES_HELP, GRADER_HELP, GraderName, _Graded
from llmdistill.config.teacher import TeacherConfig


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


class CorrectStep(_Graded):
    """Rejection sampling: a row whose prompt has a gold `answer` (metadata.answer, from the prompt file) is
    removed when the teacher's completion fails `grader` (reason `incorrect:<grader>`); rows without an answer,
    or outside `sources` / `tags` when set, are kept. The graders are the eval tasks' (llmdistill/graders.py)."""

    name: Literal["correct"]
    grader: GraderName = Field("contains", description=GRADER_HELP)
    choices: list[str] | None = Field(None, description=CHOICES_HELP)
    sources: list[str] | None = Field(None, description="grade only rows from these sources (default: all)")
    tags: list[str] | None = Field(None, description="grade only rows whose metadata.tags has one of these "
                                   "(e.g. [math] for a numeric grader when other prompts have word answers)")


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
    seed: Seed = Field(1, description="MinHash seed")
    chunk_rows: int = Field(4096, ge=1, description="texts hashed at a time")

    @model_validator(mode="after")
    def _bands(self):
        if self.bands is not None and self.bands > self.num_perm:
            raise ValueError("bands cannot exceed num_perm")
        return self


SEMANTIC_STATIC = "minilm-static"  # the default embedding model's alias (llmdistill/filter/semantic.py builds it)
_LSH_FIELDS = ("bits", "tables", "seed")


class SemanticDedupStep(_Cluster):
    """Embedding near-duplicates (reason `semantic_duplicate`): normalised sentence embeddings (a model2vec
    static model, or a sentence-transformers encoder), each row's `neighbors` nearest rows from usearch (more
    when all of them are duplicates), every one checked by its exact cosine >= `threshold`; a row is removed
    only when its cosine with a kept row (in `keep` order) is >= `threshold`."""

    name: Literal["semantic_dedup"]
    model: ModelSource = Field(
        SEMANTIC_STATIC, description="minilm-static (a model2vec model distilled once from all-MiniLM-L6-v2 and "
        "cached), all-minilm-l6-v2 (the transformer, mean-pooled by sentence-transformers: slower, the accurate "
        "option), or any model2vec / sentence-transformers model: local directory or hub id")
    backend: Literal["auto", "model2vec", "sentence-transformers"] = Field(
        "auto", description="how to load `model`; auto: model2vec when its config.json says so")
    threshold: float = Field(0.86, gt=0.0, le=1.0, description="cosine similarity that makes a duplicate (0.86 "
                             "was chosen for minilm-static on labelled real-text pairs: docs/filtering.md)")
    neighbors: int = Field(16, ge=1, description="nearest rows asked per row first (rows whose every neighbour "
                           "is a duplicate are asked again with 4x as many)")
    max_neighbors: int = Field(4096, ge=1, description="the most neighbours one row is asked for")
    exact_below: int = Field(50_000, ge=0, description="corpora of at most this many rows are searched exactly "
                             "(all pairs by blocked matrix products; on one core no slower than the HNSW index up "
                             "to about 50,000 rows); larger ones through an HNSW index")
    batch_size: int = Field(64, ge=1, description="texts per encoder batch (the model2vec backend takes at least "
                            "4096)")
    max_length: int = Field(256, ge=8, description="tokens embedded per text")
    device: str = Field("cpu", description="cpu, cuda, cuda:1 ... (the sentence-transformers backend)")

    @model_validator(mode="before")
    @classmethod
    def _no_lsh(cls, data):
        old = [k for k in _LSH_FIELDS if isinstance(data, dict) and k in data]
        if old:
            raise ValueError(f"{', '.join(old)}: the random-hyperplane LSH they set is gone; semantic_dedup searches "
                             "with usearch now (see neighbors, exact_below)")
        return data

    @model_validator(mode="after")
    def _neighbours(self):
        if self.max_neighbors < self.neighbors:
            raise ValueError("max_neighbors cannot be below neighbors")
        wrong = {(SEMANTIC_STATIC, "sentence-transformers"): "it is a model2vec model",
                 ("all-minilm-l6-v2", "model2vec"): f"it is a transformer ({SEMANTIC_STATIC} is its model2vec "
                 "distillation)"}.get((self.model, self.backend))
        if wrong:
            raise ValueError(f"backend {self.backend} cannot load {self.model}: {wrong}")
        return self


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

    def written_keys(self) -> list[str]:
        """The scores[] keys this step writes."""
        return [self.key or self.name]


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
    max_new_tokens: NewTokens = Field(64)
    drop_unparsed: bool = Field(False)


class RewardModelStep(_Scorer):
    """A reward model (sequence-classification head) scores prompt + completion: the logit of `label`
    (a one-logit head's only output by default)."""

    name: Literal["reward_model"]
    model: ModelSource = Field(description="local directory or hub id of an AutoModelForSequenceClassification")
    label: int = Field(0, ge=0, description="which output logit is the reward")
    max_length: int = Field(1024, ge=8)
    device: str = Field("cpu")
    trust_remote_code: bool = Field(False, description="run the model repository's own code (only for a model "
                                    "you trust)")


class PerplexityStep(_Scorer):
    """Perplexity of the completion (given the prompt, through the chat template) under a reference causal LM."""

    name: Literal["perplexity"]
    model: ModelSource = Field(description="local directory, hub id, or smollm2-135m-instruct")
    max_length: int = Field(1024, ge=8)
    device: str = Field("cpu")
    trust_remote_code: bool = Field(False, description="run the model repository's own code (only for a model "
                                    "you trust)")


class ConfidenceStep(_Scorer):
    """Teacher confidence from the stored top-k, no model: scores[key] is the mean log-prob of the emitted
    tokens (a token outside the top-k counts the tail mass), scores[key + '_entropy'] the mean entropy of
    the top-k distribution plus a tail bucket. `min`/`max` apply to the log-prob; `max_entropy` to the
    entropy (reason `high_score:<key>_entropy`)."""

    name: Literal["confidence"]
    max_entropy: float | None = Field(None, ge=0.0)
    batch_size: int = Field(256, ge=1)

    def written_keys(self) -> list[str]:
        key = self.key or self.name
        return [key, key + "_entropy"]


FilterStep = Annotated[
    FailedStep | EmptyStep | LengthStep | RepetitionStep | TruncatedStep | ExactDedupStep | RefusalStep
    | StructuredStep | CharsetStep | CorrectStep | NearDedupStep | SemanticDedupStep | HistoryDedupStep
    | DecontaminateStep | JudgeStep | RewardModelStep | PerplexityStep | ConfidenceStep,
    Field(discriminator="name"),
]
FILTER_STEP_NAMES = union_tags(FilterStep)


def _default_filter_steps() -> list:
    return [step(name=literal_values(step, "name")[0])
            for step in (FailedStep, EmptyStep, TruncatedStep, LengthStep, RepetitionStep, ExactDedupStep)]


class FilterConfig(Section):
    """Filter steps and scorers, run in order; the first step that rejects a row names the reason."""

    steps: list[FilterStep] = Field(default_factory=_default_filter_steps)
    read_rows: int = Field(1024, ge=1, description="rows read at a time (memory stays bounded)")
    # where the stage runs, not what it writes: none of these is hashed (a Ray run resumes a local one and back)
    executor: Literal["local", "ray"] = Field(
        "local", json_schema_extra=NOT_HASHED, description="local: this process runs every step; ray: the per-part "
        "work of the row steps, near and semantic dedup (hashes, checks, signatures, embeddings) runs as tasks on a "
        "Ray cluster, the decisions are taken here, the same as local ones (the run directory must be on a file "
        "system every node shares; pip install 'llmdistill[ray]'; docs/filtering.md)")
    ray_address: str | None = Field(None, json_schema_extra=NOT_HASHED, description=RAY_ADDRESS_HELP)
    part_rows: int = Field(
        16384, ge=1, json_schema_extra=NOT_HASHED, description="input rows per part (whole input shards, so a part "
        "may hold more): the unit of per-part work (a Ray task) and of resume; memory per task grows with it")

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, v: str | None) -> str | None:
        return check_ray_address(v)

    @model_validator(mode="after")
    def _ray_options_need_ray(self):
        if self.ray_address is not None and self.executor != "ray":
            raise ValueError(f"ray_address set, but executor is {self.executor}: set executor: ray")
        return self

    @model_validator(mode="after")
    def _score_keys(self):
        written: set[str] = set()
        for i, step in enumerate(self.steps):
            if isinstance(step, _Cluster) and step.keep == "highest_score" and step.score not in written:
                raise ValueError(f"steps.{i} ({step.name}) keeps the highest score {step.score!r}, but no earlier "
                                 f"scorer step writes it (written so far: {sorted(written) or 'none'})")
            if isinstance(step, _Scorer):
                written.update(step.written_keys())
        return self
