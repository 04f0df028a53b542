"""Code shipped with a model runs only when the config says `trust_remote_code: true`."""

from __future__ import annotations

import json
import shutil

import pytest

from llmdistill import models
from llmdistill.config import TeacherConfig
from llmdistill.errors import UserError


def _model_with_custom_code(tiny, tmp_path):
    d = tmp_path / "custom-code-model"
    shutil.copytree(tiny["teacher"], d)
    marker = tmp_path / "code-ran"
    (d / "configuration_custom.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nfrom transformers import LlamaConfig\n\n\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom_llama'\n")
    (d / "modeling_custom.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_custom import CustomConfig\n\n\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "custom_llama"
    cfg["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig",
                       "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    return d, marker


def test_remote_code_is_refused_unless_the_config_allows_it(tiny, tmp_path):
    assert TeacherConfig.model_fields["trust_remote_code"].default is False
    model_dir, marker = _model_with_custom_code(tiny, tmp_path)
    with pytest.raises(UserError, match="contains custom code"):
        models.load_causal_lm(str(model_dir))  # the default: trust_remote_code off
    assert not marker.exists()  # and none of the model's code ran
    model = models.load_causal_lm(str(model_dir), trust_remote_code=True)  # the config turned it on
    assert type(model).__name__ == "CustomForCausalLM" and marker.exists()
