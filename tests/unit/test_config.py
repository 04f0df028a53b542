import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import PYTHON, REPO
from llmdistill.config import Config, ConfigError, load_config, parse_override

ACCELERATE = REPO / "configs" / "accelerate"  # launcher configs (accelerate launch --config_file), not ours
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if ACCELERATE not in p.parents)


def test_the_accelerate_configs_are_what_accelerate_reads():
    from accelerate.commands.config.config_args import ClusterConfig

    kinds = {p.stem: ClusterConfig.from_yaml_file(p).distributed_type for p in ACCELERATE.glob("*.yaml")}
    assert {k: v.value for k, v in kinds.items()} == {"ddp": "MULTI_GPU", "fsdp2": "FSDP", "zero3": "DEEPSPEED"}
    assert ClusterConfig.from_yaml_file(ACCELERATE / "fsdp2.yaml").fsdp_config["fsdp_version"] == 2
    assert ClusterConfig.from_yaml_file(ACCELERATE / "zero3.yaml").deepspeed_config["zero_stage"] == 3


def test_every_shipped_config_validates():
    assert CONFIGS, "no configs found"
    from llmdistill.config import BertDistillConfig, load_bert_config

    for path in CONFIGS:  # rglob: nested directories count too
        if path.name.startswith("bert-"):  # BERT distillation configs have their own top level
            assert isinstance(load_bert_config(path), BertDistillConfig), path
        else:
            assert isinstance(load_config(path), Config), path


def test_embedded_default_is_the_demo():
    cfg = load_config(None)
    assert cfg.name == "demo"
    assert cfg.teacher.model == "smollm2-135m-instruct"
    assert cfg.train.sft_baseline is True


def minimal(tmp_path) -> dict:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi", "level": 1}\n')
    return {
        "generate": {"prompts": "p.jsonl"},
        "train": {"student": {"teacher_layers": [0, 1]}},
        "eval": {"prompts": "p.jsonl"},
    }


def write(tmp_path, data) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    path = write(tmp_path, minimal(tmp_path))
    monkeypatch.chdir("/")
    cfg = load_config(path)
    assert cfg.generate.prompts == [tmp_path / "p.jsonl"]


def test_override_paths_resolve_against_the_cwd(tmp_path, monkeypatch):
    other = tmp_path / "sub"
    other.mkdir()
    (other / "q.jsonl").write_text('{"prompt": "x"}\n')
    path = write(tmp_path, minimal(tmp_path))
    monkeypatch.chdir(other)
    cfg = load_config(path, ["generate.prompts=q.jsonl"])
    assert cfg.generate.prompts == [other / "q.jsonl"]


def test_three_kinds_of_error_reported_together(tmp_path):
    data = minimal(tmp_path)
    data["train"]["batch_sise"] = 8  # misspelled key
    data["train"]["max_steps"] = "many"  # wrong type
    data["eval"]["prompts"] = "missing.jsonl"  # missing file
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    errors = info.value.errors
    assert len(errors) == 3, errors
    text = "\n".join(errors)
    assert "train.batch_sise: unknown key (did you mean 'batch_size'?)" in text
    assert "train.max_steps:" in text and "'many'" in text
    assert "eval.prompts.0: file not found:" in text and "missing.jsonl" in text


def test_did_you_mean_inside_a_filter_step(tmp_path):
    data = minimal(tmp_path)
    data["filter"] = {"steps": [{"name": "length", "min_wrds": 3}, {"name": "nonsense"}]}
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    text = "\n".join(info.value.errors)
    assert "filter.steps.0.min_wrds: unknown key (did you mean 'min_words'?)" in text
    assert "filter.steps.1" in text and "nonsense" in text


def test_a_key_spelled_like_a_union_tag_stays_in_the_error(tmp_path):
    """Only the tag pydantic inserts after a union member's index is dropped from the location, not a key
    that happens to be spelled like a step name or source kind (e.g. `length` inside a length step)."""
    data = minimal(tmp_path)
    data["filter"] = {"steps": [{"name": "length", "length": 3}]}
    data["train"]["loss"] = [{"name": "ce", "weight": 1.0, "file": 1}]
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    assert info.value.errors == [
        "filter.steps.0.length: unknown key (known keys: name, min_words, max_words)",
        "train.loss.0.file: unknown key (known keys: name, weight, temperature, beta, alpha)"]


def test_student_needs_exactly_one_source(tmp_path):
    data = minimal(tmp_path)
    data["train"]["student"] = {}
    with pytest.raises(ConfigError, match="exactly one of student.model, student.teacher_layers and student.prune"):
        load_config(write(tmp_path, data))
    data["train"]["student"] = {"teacher_layers": [0], "prune": {"layers": 2}}
    with pytest.raises(ConfigError, match="exactly one of student.model, student.teacher_layers and student.prune"):
        load_config(write(tmp_path, data))
    data["train"]["student"] = {"prune": {"select": "uniform"}}
    with pytest.raises(ConfigError, match="prune needs at least one of layers, intermediate_size"):
        load_config(write(tmp_path, data))


def test_missing_local_model_directory(tmp_path):
    data = minimal(tmp_path)
    data["teacher"] = {"model": "./no/such/model"}
    with pytest.raises(ConfigError, match="model directory not found"):
        load_config(write(tmp_path, data))
    data["teacher"] = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # a hub id is accepted as is
    assert load_config(write(tmp_path, data)).teacher.model == "HuggingFaceTB/SmolLM2-135M-Instruct"


MODEL_FIELDS = {  # every model field of a run config, and an override that sets it to X
    "teacher.model": "teacher.model=X",
    "teachers.big.model": "teachers={big: {model: X}}",
    "annotate.teacher.model": "annotate.teacher.model=X",
    "train.student.model": "train.student={model: X}",
    "eval.compare_to": "eval.compare_to=X",
    "filter.steps.0.model": "filter.steps=[{name: semantic_dedup, model: X}]",
    "filter.steps.1.model": "filter.steps=[{name: failed}, {name: perplexity, model: X}]",
}


@pytest.mark.parametrize("field", list(MODEL_FIELDS))
def test_every_model_field_is_a_directory_an_alias_or_spelled_as_a_hub_id(tmp_path, monkeypatch, field):
    """Issue 28, item 14: `a/b/c` (a path with two slashes) is not a hub id; one validator for every field."""
    monkeypatch.chdir(tmp_path)  # relative override values resolve against the working directory
    path = write(tmp_path, minimal(tmp_path))
    (tmp_path / "models").mkdir()
    bad = {"a/b/c": f"{field}: a/b/c is neither an existing directory nor a hub id (owner/name)",
           "a b": "a b is neither", "a//b": "a//b is neither", "-x": "-x is neither", "x/y.git": "x/y.git is neither",
           "models/missing": f"{field}: model directory not found: {tmp_path / 'models' / 'missing'}"}
    for value, message in bad.items():
        with pytest.raises(ConfigError) as info:
            load_config(path, [MODEL_FIELDS[field].replace("X", value)])
        assert message in info.value.errors[0] and len(info.value.errors) == 1, info.value.errors
    for value in ("Qwen/Qwen2.5-7B-Instruct", "gpt2", "smollm2-135m-instruct", "my_org/model.v2-1"):
        load_config(path, [MODEL_FIELDS[field].replace("X", value)])


def test_every_field_named_model_uses_the_one_model_source_validator():
    import typing

    from pydantic import BaseModel

    from llmdistill.config import BertDistillConfig

    def models_in(tp):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            yield tp
        for arg in typing.get_args(tp):
            yield from models_in(arg)

    seen, fields = set(), []
    todo = [Config, BertDistillConfig]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            todo += list(models_in(field.annotation))
            if name in ("model", "compare_to"):
                fields.append((model.__name__, name, "_model_source" in repr(field.annotation) + repr(field.metadata)))
    assert len(fields) >= 8 and all(uses for _, _, uses in fields), fields


def test_overrides_typed_nested_and_indexed(tmp_path):
    path = write(tmp_path, minimal(tmp_path))
    cfg = load_config(path, ["train.max_steps=7", "train.loss.0.weight=0.5", "train.student.teacher_layers=[0, 2]",
                             "generate.temperature=0", "name=other"])
    assert cfg.train.max_steps == 7
    assert cfg.train.loss[0].weight == 0.5 and cfg.train.loss[1].weight == 0.1  # no renormalisation
    assert cfg.train.student.teacher_layers == [0, 2]
    assert cfg.generate.temperature == 0.0
    assert cfg.name == "other"
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


def test_bad_overrides(tmp_path):
    path = write(tmp_path, minimal(tmp_path))
    with pytest.raises(ConfigError, match="not of the form key.sub=value"):
        load_config(path, ["train.max_steps"])
    with pytest.raises(ConfigError, match="has no item 5"):
        load_config(path, ["train.loss.5.weight=1"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(path, ["train.max_stepz=3"])


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("generate:\n  prompts: [unclosed\ntrain: {}\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line \d+"):
        load_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_validate_cli_reports_all_errors_exit_2_no_traceback(tmp_path):
    data = minimal(tmp_path)
    data["train"]["batch_sise"] = 8
    data["train"]["max_steps"] = "many"
    data["eval"]["prompts"] = "missing.jsonl"
    path = write(tmp_path, data)
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "validate", str(path)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr + res.stdout
    assert "did you mean 'batch_size'" in res.stderr
    assert "train.max_steps" in res.stderr
    assert "file not found" in res.stderr
    assert "3 config error(s)" in res.stderr


def test_validate_cli_ok(tmp_path):
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "validate"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "config OK" in res.stdout and "generate" in res.stdout


def test_configuration_reference_is_current():
    res = subprocess.run([PYTHON, str(REPO / "scripts" / "config_reference.py"), "--check"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})  # this checkout
    assert res.returncode == 0, res.stderr


def test_loss_term_parameters(tmp_path):
    data = minimal(tmp_path)
    data["train"]["loss"] = [{"name": "jsd", "weight": 1.0}, {"name": "skew_kl", "weight": 0.5, "alpha": 0.2}]
    cfg = load_config(write(tmp_path, data))
    assert cfg.train.loss[0].params == {"beta": 0.5} and cfg.train.loss[1].params == {"alpha": 0.2}
    data["train"]["loss"] = [{"name": "forward_kl", "weight": 1.0, "beta": 0.3}]
    with pytest.raises(ConfigError, match="beta applies to jsd only"):
        load_config(write(tmp_path, data))
    data["train"]["loss"] = [{"name": "jsd", "weight": 1.0, "beta": 1.0}]
    with pytest.raises(ConfigError, match="train.loss.0.beta"):
        load_config(write(tmp_path, data))


def test_divergence_parameter_table():
    """DIVERGENCE_PARAMS names divergences of the Literal and LossTerm fields; each default is in the field's range."""
    from llmdistill.config import DIVERGENCE_NAMES, DIVERGENCE_PARAMS, LossTerm

    assert set(DIVERGENCE_PARAMS) <= set(DIVERGENCE_NAMES)
    for name, params in DIVERGENCE_PARAMS.items():
        assert set(params) <= set(LossTerm.model_fields) - {"name", "weight", "temperature"}
        assert LossTerm(name=name, weight=1.0).params == params


def test_evolution_templates_are_part_of_the_generate_fingerprint(tmp_path, monkeypatch):
    """Editing prompts/evol_<op>.md reruns generation; configs without evolution keep their fingerprints."""
    from llmdistill.generate import evolve
    from llmdistill.pipeline import fingerprints

    templates = tmp_path / "prompts"
    templates.mkdir()
    for op in ("add_constraints", "deepen", "concretise", "add_reasoning"):
        (templates / f"evol_{op}.md").write_text((evolve.PROMPTS_DIR / f"evol_{op}.md").read_text())
    monkeypatch.setattr(evolve, "PROMPTS_DIR", templates)
    path = write(tmp_path, minimal(tmp_path))
    plain = fingerprints(load_config(path))
    cfg = load_config(path, ["generate.evolve.operators=[deepen]"])
    before = fingerprints(cfg)
    (templates / "evol_add_reasoning.md").write_text("unused operator, changed\n")
    assert fingerprints(cfg) == before
    (templates / "evol_deepen.md").write_text("Make this harder: {{ prompt }}\n")
    after = fingerprints(cfg)
    assert after["generate"] != before["generate"] and after["train"] != before["train"]
    assert fingerprints(load_config(path)) == plain


def test_did_you_mean_inside_an_optional_section(tmp_path):
    path = write(tmp_path, minimal(tmp_path))
    with pytest.raises(ConfigError, match=r"generate\.evolve\.roundz: unknown key \(did you mean 'rounds'\?\)"):
        load_config(path, ["generate.evolve.roundz=2"])


# ---- duplicate keys, one-line YAML errors, paths that are not files (issue 11, items 12 and 16)
DUPLICATED = """\
generate:
  prompts: p.jsonl
train:
  student:
    teacher_layers: [0, 1]
  lr: 0.001
  loss:
    - {name: forward_kl, weight: 0.9, weight: 0.5}
  max_steps: 5
  lr: 0.1
eval:
  prompts: p.jsonl
"""


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    minimal(tmp_path)  # writes p.jsonl
    path = tmp_path / "dup.yaml"
    path.write_text(DUPLICATED)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.errors == ["train.loss.0.weight: duplicate key (line 8, columns 26 and 39)",
                              "train.lr: duplicate key (lines 6 and 10)"]
    path.write_text(DUPLICATED.replace("  lr: 0.1\n", "").replace(", weight: 0.5", "") + "train: {}\n")
    with pytest.raises(ConfigError, match=r"^.*dup\.yaml: train: duplicate key \(lines 3 and 12\)$"):
        load_config(path)


def test_yaml_merge_keys_and_aliases_are_not_duplicates(tmp_path):
    from llmdistill.config import parse_yaml

    text = "base: &b {x: 1, y: 2}\nsame: *b\nmerged:\n  <<: *b\n  x: 3\n"
    assert parse_yaml(text) == yaml.safe_load(text) == {
        "base": {"x": 1, "y": 2}, "same": {"x": 1, "y": 2}, "merged": {"x": 3, "y": 2}}


def test_duplicate_keys_in_a_bert_config(tmp_path):
    from llmdistill.config import load_bert_config

    path = tmp_path / "bert-dup.yaml"
    path.write_text((REPO / "configs" / "bert-kd.yaml").read_text() + "\nname: again\nname: twice\n")
    with pytest.raises(ConfigError, match=r"^.*bert-dup\.yaml: name: duplicate key \(lines \d+ and \d+\)"):
        load_bert_config(path)


def test_bad_yaml_override_value_is_one_line(tmp_path):
    path = write(tmp_path, minimal(tmp_path))
    with pytest.raises(ConfigError) as e:
        load_config(path, ["train.lr=[1,"])
    assert e.value.errors == ["override 'train.lr=[1,': value is not valid YAML "
                              "(expected the node content, but found '<stream end>' at column 13)"]
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "validate", str(path), "train.max_steps={a: 1"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "override 'train.max_steps={a: 1': value is not valid YAML (" in res.stderr


def test_config_path_that_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match=f"config {tmp_path} is a directory, not a file"):
        load_config(tmp_path)
    data = minimal(tmp_path)
    (tmp_path / "prompts.d").mkdir()
    data["eval"]["prompts"] = "prompts.d"
    with pytest.raises(ConfigError, match=r"eval\.prompts\.0: .*prompts\.d is a directory, not a file"):
        load_config(write(tmp_path, data))
    with pytest.raises(ConfigError, match="config file not found: "):
        load_config(tmp_path / "nope.yaml")


def test_config_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: demo\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml: line 2: not UTF-8 text \(byte 0xe9"):
        load_config(path)


def test_client_pacing_and_budget_do_not_change_the_fingerprint(tmp_path):
    """Raising max_concurrency or budget_usd on a stopped API run resumes it rather than starting over."""
    from llmdistill.pipeline import fingerprints

    data = minimal(tmp_path)
    data["teacher"] = {"backend": "openai", "api": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": None}}
    path = write(tmp_path, data)
    base = fingerprints(load_config(path))
    paced = load_config(path, ["teacher.api.max_concurrency=64", "teacher.api.budget_usd=5", "teacher.api.timeout_s=5",
                               "teacher.api.max_retries=1", "teacher.api.requests_per_minute=100",
                               "teacher.api.tokens_per_minute=1000", "teacher.api.backoff_base_s=1",
                               "teacher.api.backoff_max_s=2", "teacher.api.connect_timeout_s=2"])
    assert fingerprints(paced) == base
    assert fingerprints(load_config(path, ["teacher.api.served_model=other"]))["generate"] != base["generate"]


def test_a_runs_resolved_config_loads_back_with_the_same_fingerprints(tmp_path):
    """`llmdistill run runs/<name>/config.resolved.yaml` reruns what made the run (to a no-op): the file
    loads (its _provenance record and the written-out on_policy defaults are accepted)."""
    from llmdistill.pipeline import fingerprints, write_resolved_config

    cfg = load_config(write(tmp_path, minimal(tmp_path)))
    (tmp_path / "run").mkdir()
    write_resolved_config(cfg, tmp_path / "run")
    again = load_config(tmp_path / "run" / "config.resolved.yaml")
    assert fingerprints(again) == fingerprints(cfg)
    with pytest.raises(Exception, match="lmbda and seq_kd apply to on_policy.trainer: gkd only"):
        load_config(tmp_path / "run" / "config.resolved.yaml", ["train.on_policy.lmbda=0.3"])


def test_served_teachers_are_checked_against_the_named_teachers(tmp_path):
    data = minimal(tmp_path)
    server = {"base_url": "http://127.0.0.1:1/v1"}
    data["train"].update(teacher_signal="served", served=server, served_teachers={"big": server})
    with pytest.raises(ConfigError, match="train.served_teachers: unknown teacher big"):
        load_config(write(tmp_path, data))
    data["teachers"] = {"big": {}}  # the default teacher model under another name
    assert list(load_config(write(tmp_path, data)).train.served_teachers) == ["big"]
    data["train"]["teacher_signal"] = "stored"
    with pytest.raises(ConfigError, match="served_teachers needs teacher_signal: served"):
        load_config(write(tmp_path, data))


def test_served_teachers_without_a_server_or_under_one_name_stop_before_any_request(tmp_path):
    from llmdistill.errors import UserError
    from llmdistill.train.sources import served_teachers as _served_teachers

    data = minimal(tmp_path)
    data["teachers"] = {"big": {}, "small": {}}
    server = {"base_url": "http://127.0.0.1:1/v1", "served_model": "x"}  # nothing listens: no request is sent
    data["train"].update(teacher_signal="served", served=server,
                         served_teachers={"big": {**server, "served_model": "y"}})
    cfg = load_config(write(tmp_path, data))
    with pytest.raises(UserError, match="holds samples of teacher\\(s\\) small, which have no server"):
        _served_teachers(cfg, {"default": None, "big": None, "small": None}, 320)
    data["train"]["served_teachers"] = {"big": server}
    cfg = load_config(write(tmp_path, data))
    with pytest.raises(UserError, match="teachers default and big are both served as 'x'"):
        _served_teachers(cfg, {"default": None, "big": None}, 320)


def test_packing_is_for_our_trainer_not_trls(tmp_path):
    data = minimal(tmp_path)
    data["train"].update(packing=True, gradient_checkpointing=True)
    cfg = load_config(write(tmp_path, data))
    assert cfg.train.packing and cfg.train.gradient_checkpointing
    data["train"].update(mode="on_policy")  # rollouts: trl by default
    with pytest.raises(ConfigError, match="trl's on-policy trainers lay out their own batches"):
        load_config(write(tmp_path, data))
    data["train"]["on_policy"] = {"rollouts": "vllm"}
    data["train"]["teacher_signal"] = "live"
    assert load_config(write(tmp_path, data)).train.packing
