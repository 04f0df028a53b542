"""`Config`: a whole run, one field per section."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from llmdistill.config.base import OutputDir, Section, Seed
from llmdistill.config.evaluate import EvalConfig, RetrainConfig
from llmdistill.config.filter import FilterConfig
from llmdistill.config.generate import AnnotateConfig, GenerateConfig
from llmdistill.config.teacher import TeacherConfig
from llmdistill.config.train import TrainConfig


class Config(Section):
    """A whole run: generate -> (annotate) -> filter -> train -> eval, written under output_dir/name."""

    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="run name")
    output_dir: OutputDir = Field(Path("runs"), description="runs are written to output_dir/name")
    seed: Seed = Field(0, description="seeds sampling (per batch) and training (0 <= seed < 2**32, numpy's range, as "
                      "every seed field)")
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
        unknown = sorted(n for n in self.train.served_teachers if n not in self.teachers)
        if unknown:
            raise ValueError(f"train.served_teachers: unknown teacher {', '.join(unknown)} (named under `teachers`: "
                             f"{', '.join(self.teachers) or 'none'}; the default teacher's server is train.served)")
        return self

    def teacher_config(self, name: str) -> TeacherConfig:
        """The teacher called `name` (`default` is the `teacher` section)."""
        return self.teacher if name == "default" else self.teachers[name]

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name
