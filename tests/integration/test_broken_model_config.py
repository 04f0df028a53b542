"""A model directory whose config.json is semantically broken (0 heads, a string hidden size, a list, -3
layers, ...) is one line naming the file and the field, exit 2, in `run` and in `plan` (issue 28, item 12):
every loader and `plan` read it through `architecture.read_config`."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from conftest import make_tiny_config

BREAKAGES = {
    "num_attention_heads": lambda c: {**c, "num_attention_heads": 0},
    "hidden_size": lambda c: {**c, "hidden_size": "sixty-four"},
    "num_hidden_layers": lambda c: {**c, "num_hidden_layers": -3},
    "num_key_value_heads": lambda c: {**c, "num_key_value_heads": True},
    "not an object": lambda c: [c],
    "not valid JSON": None,
}


def broken_teacher(tmp_path, tiny, field):
    teacher = shutil.copytree(tiny["teacher"], tmp_path / "teacher")
    path = teacher / "config.json"
    if BREAKAGES[field] is None:
        path.write_text(path.read_text()[:-20])
    else:
        path.write_text(json.dumps(BREAKAGES[field](json.loads(path.read_text()))))
    return teacher


@pytest.mark.parametrize("field", list(BREAKAGES))
@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_broken_config_json_is_one_line_naming_the_file_and_field(tmp_path, tiny, field, command):
    from llmdistill import cli

    teacher = broken_teacher(tmp_path, tiny, field)
    config, _ = make_tiny_config(tmp_path, {"teacher": teacher})
    res = CliRunner().invoke(cli.app, [command, str(config)])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("llmdistill: error:")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    assert f"{teacher / 'config.json'}: " in errors[0] and field in errors[0], errors[0]
    assert not (tmp_path / "runs" / "tiny" / "generate" / "_SUCCESS").exists()


def test_a_broken_student_config_json_in_plan(tmp_path, tiny):
    from llmdistill import cli

    student = broken_teacher(tmp_path, tiny, "num_hidden_layers")
    config, _ = make_tiny_config(tmp_path, tiny)
    res = CliRunner().invoke(cli.app, ["plan", str(config), f"train.student={{model: {student}}}"])
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        f"llmdistill: error: {student / 'config.json'}: num_hidden_layers is -3: a positive integer expected"]
