"""Write docs/configuration.md from the config models (the single source of defaults and descriptions).

    python scripts/config_reference.py          # rewrite the file
    python scripts/config_reference.py --check  # exit 1 if the file is out of date (the tests call this)
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from llmdistill import config as C

OUT = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

HEADER = """# Configuration reference

Generated from the `llmdistill/config/` package by `scripts/config_reference.py`; do not edit by hand.
Every key is checked: an unknown key is an error (with a did-you-mean), so is a wrong type or a
missing input file. `llmdistill validate CONFIG` reports all of them at once without loading a model.
Override any key on the command line with `key.sub=value` (YAML syntax for the value), e.g.
`train.loss.0.weight=0.5` or `train.student.teacher_layers=[0,5,10]`.

Relative input paths in a config file are relative to that file; relative paths typed as overrides,
and `output_dir`, are relative to the current directory.
"""


def type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return type_name(typing.get_args(tp)[0])
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = " \\| ".join(type_name(a) for a in args)
        return inner + (" \\| null" if len(args) < len(typing.get_args(tp)) else "")
    if origin is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    if origin is dict and isinstance(typing.get_args(tp)[1], type) and issubclass(typing.get_args(tp)[1], BaseModel):
        key, value = typing.get_args(tp)  # a config class by the path users import it from, not its module's
        return f"dict[{key.__name__}, llmdistill.config.{value.__name__}]"
    if isinstance(tp, type):
        return {"Path": "path", "str": "string", "int": "int", "float": "float", "bool": "bool"}.get(
            tp.__name__, tp.__name__)
    return str(tp)


def default_text(field) -> str:
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return "<br>".join(f"`{v.model_dump(exclude_defaults=False)}`" for v in value)
    if isinstance(value, BaseModel):
        return "(section defaults)"
    if value is PydanticUndefined:
        return ""
    return f"`{value}`"


def section(title: str, model: type[BaseModel], prefix: str) -> list[str]:
    lines = [f"## {title}", "", inspect.cleandoc(model.__doc__ or ""), "",
             "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        tp = field.annotation
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{prefix}{name}` | {type_name(tp)} | {default_text(field)} | {meaning} |")
    return lines + [""]


def render() -> str:
    parts = [HEADER]
    parts += section("Top level", C.Config, "")
    for name, model in (("teacher", C.TeacherConfig), ("teacher.vllm", C.VLLMOptions),
                        ("generate", C.GenerateConfig), ("annotate", C.AnnotateConfig), ("filter", C.FilterConfig),
                        ("train", C.TrainConfig), ("train.student", C.StudentConfig),
                        ("train.student.prune", C.PruneConfig), ("train.loss[]", C.LossTerm),
                        ("train.on_policy", C.OnPolicyConfig), ("train.curriculum", C.CurriculumConfig),
                        ("train.lora", C.LoraConfig), ("eval", C.EvalConfig), ("eval.tasks[]", C.TaskConfig),
                        ("retrain", C.RetrainConfig), ("retrain.gates[]", C.GateConfig)):
        parts += section(f"`{name}`", model, f"{name}.".replace("[].", "[i]."))
        if name == "teacher":  # the openai backend's options
            parts += section("`teacher.api`", C.APIOptions, "teacher.api.")
            parts += section("`teacher.api.price`", C.APIPrice, "teacher.api.price.")
    parts.append("## Filter steps (`filter.steps[]`, run in order; `name` picks the step)\n")
    for model in typing.get_args(typing.get_args(C.FilterStep)[0]):
        step = typing.get_args(model.model_fields["name"].annotation)[0]
        params = [f"`{n}` ({type_name(f.annotation)}, default {default_text(f)})"
                  for n, f in model.model_fields.items() if n != "name"]
        text = f"- **{step}**: {(model.__doc__ or '').strip()}"
        parts.append(text + (f" Parameters: {', '.join(params)}." if params else ""))
    parts += prompt_sources()
    parts += bert_sections()
    return "\n".join(parts).rstrip() + "\n"


def prompt_sources() -> list[str]:
    """Prompt sources (`generate.sources[]`, picked by `kind`), evolution and routing."""
    parts = [""]
    for model in typing.get_args(typing.get_args(C.PromptSource)[0]):
        kind = typing.get_args(model.model_fields["kind"].annotation)[0]
        parts += section(f"`generate.sources[]` with `kind: {kind}`", model, "")
    parts += section("`generate.evolve`", C.EvolveConfig, "generate.evolve.")
    parts += section("`generate.routing[]`", C.RouteRule, "")
    return parts


def bert_sections() -> list[str]:
    """The BERT distillation config (`llmdistill distill-bert CONFIG`, configs/bert-*.yaml): its own top level."""
    parts = ["", "# BERT-style distillation (`llmdistill distill-bert CONFIG`)", "",
             "A separate top-level config (configs/bert-*.yaml); see docs/bert.md.", ""]
    parts += section("Top level (BERT)", C.BertDistillConfig, "")
    for name, model in (("data", C.BertDataConfig), ("teacher", C.BertTeacherConfig),
                        ("teacher.finetune", C.BertFinetuneConfig), ("teacher.mlm_head", C.BertMlmHeadConfig),
                        ("student", C.BertStudentConfig),
                        ("layer_map", C.LayerMapConfig), ("phases[]", C.BertPhaseConfig),
                        ("phases[].losses", C.BertLossConfig), ("export", C.BertExportConfig)):
        parts += section(f"`{name}` (BERT)", model, f"{name}.".replace("[].", "[i]."))
    return parts


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/config_reference.py", file=sys.stderr)
            sys.exit(1)
    else:
        OUT.write_text(text)
        print(f"wrote {OUT}")
