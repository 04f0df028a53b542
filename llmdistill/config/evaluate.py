"""The eval section (held-out comparison, graded tasks) and the retrain section (promotion gates)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from llmdistill import graders
from llmdistill.config.base import InputFiles, ModelSource, NewTokens, OutputDir, Section, _real_dir

# The grader names, from the graders table (llmdistill/graders.py) and its aliases ("number" is "numeric").
GraderName = Literal[(*graders.GRADERS, *graders.ALIASES)]
GRADER_HELP = "; ".join([*(f"{name}: {' '.join(fn.__doc__.split())}" for name, fn in graders.GRADERS.items()),
                         *(f"{old}: {new}'s older name" for old, new in graders.ALIASES.items())]) + \
    " (texts compared after lower-casing, punctuation stripped)"
CHOICES_HELP = "the choice grader's closed label set, e.g. [positive, negative, neutral] (every gold answer is one)"


class _Graded(Section):
    """The checks of a section with `grader` and `choices` fields: the alias is stored as the grader's own name,
    and `choices` are given for the choice grader (and only for it)."""

    @field_validator("grader", check_fields=False)
    @classmethod
    def _canonical(cls, v: str) -> str:
        return graders.canonical(v)

    @model_validator(mode="after")
    def _choices(self):
        problem = graders.choices_problem(self.grader, self.choices)
        if problem:
            raise ValueError(problem)
        return self


class TaskConfig(_Graded):
    """A gradable task: prompts with gold answers, answered greedily by every model and graded."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="task name in the report")
    prompts: InputFiles = Field(description="JSONL prompts, each with an 'answer'")
    grader: GraderName = Field("contains", description=GRADER_HELP)
    choices: list[str] | None = Field(None, description=CHOICES_HELP)
    max_new_tokens: NewTokens = Field(32, description="length cap of a reply (checked against the teacher's context)")
    max_items: int | None = Field(None, gt=0, description="grade this many items, spread over the file")


class EvalConfig(Section):
    """Held-out comparison of the students with the teacher."""

    prompts: InputFiles = Field(description="held-out JSONL prompts (never used for training)")
    max_prompts: int | None = Field(None, gt=0, description="evaluate on this many, spread over the levels")
    max_new_tokens: NewTokens = Field(
        128, description="length of the teacher's reference completions (a prompt's tokens + this must fit the "
        "teacher's context: checked before anything is generated)")
    batch_size: int = Field(8, ge=1, description="prompts per teacher-reference and scoring batch")
    latency_prompts: int = Field(3, ge=1, description="prompts timed for per-token latency")
    latency_new_tokens: NewTokens = Field(32, description="tokens generated per timed prompt (greedy, batch 1)")
    tasks: list[TaskConfig] = Field(default_factory=list, description="gradable tasks (see `eval.tasks[]`)")
    topk: int = Field(10, ge=1, description="k of the top-k overlap between student and teacher next-token lists")
    ece_bins: int = Field(15, ge=1, description="equal-width confidence bins of the expected calibration error")
    compare_to: Annotated[ModelSource, AfterValidator(_real_dir)] | None = Field(
        None, description="a previously promoted student to score beside the new ones (retrain sets it); a "
        "symlink such as retrain-state/student is resolved, so the eval reruns when it moves")


GATE_METRICS = {  # metric -> True when higher is better
    "top1_agreement": True, "topk_overlap": True, "kl_to_teacher": False, "jsd_to_teacher": False,
    "perplexity": False, "ece": False,
}


class GateConfig(Section):
    """A promotion gate: the new student may be worse than the promoted one by at most `max_regression`."""

    metric: str = Field(description=f"{', '.join(GATE_METRICS)}, or task:<name> (accuracy on an eval.tasks entry)")
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
