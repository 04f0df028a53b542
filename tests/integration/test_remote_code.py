"""A teacher that ships its own modelling code (`teacher.trust_remote_code: true`) runs the whole pipeline:
its students are saved with that code, and every later load of a model derived from the teacher (the
student, the SFT baseline, a warm start, the promoted student, the annotating teacher, on-policy) trusts it.

The teacher is a real custom-code model: a directory with configuration_*.py / modeling_*.py and an
auto_map in config.json (a small subclass of Llama), which transformers refuses to load without
trust_remote_code. Every run is a real `llmdistill run` process, offline, with its own modules cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import yaml

from conftest import PYTHON, build_llama, build_tokenizer, make_tiny_config
from llmdistill import store

CONFIGURATION = '''from transformers import LlamaConfig


class TinyCustomConfig(LlamaConfig):
    model_type = "tiny_custom_llama"
'''
MODELING = '''from transformers import LlamaForCausalLM

from .configuration_tinycustom import TinyCustomConfig


class TinyCustomForCausalLM(LlamaForCausalLM):
    config_class = TinyCustomConfig
'''
CODE_FILES = ("configuration_tinycustom.py", "modeling_tinycustom.py")


def make_custom(path, tokenizer, layers: int):
    build_llama(path, tokenizer, layers=layers)
    (path / CODE_FILES[0]).write_text(CONFIGURATION)
    (path / CODE_FILES[1]).write_text(MODELING)
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="tiny_custom_llama", architectures=["TinyCustomForCausalLM"],
                  auto_map={"AutoConfig": "configuration_tinycustom.TinyCustomConfig",
                            "AutoModelForCausalLM": "modeling_tinycustom.TinyCustomForCausalLM"})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def has_custom_code(model_dir) -> bool:
    config = json.loads((model_dir / "config.json").read_text())
    return all((model_dir / f).exists() for f in CODE_FILES) and "auto_map" in config


def llmdistill(tmp_path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules")}
    return subprocess.run([PYTHON, "-m", "llmdistill.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=900)


def test_a_teacher_with_custom_code_finishes_a_run(tmp_path):
    tok = build_tokenizer(tmp_path / "tok")
    teacher = make_custom(tmp_path / "custom-teacher", tok, layers=4)
    # transformers itself refuses it without trust_remote_code: the model really has custom code
    refused = subprocess.run([PYTHON, "-c", "import sys, transformers; "
                              "transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])", str(teacher)],
                             capture_output=True, text=True, env={**os.environ, "HF_MODULES_CACHE": str(tmp_path)})
    assert refused.returncode != 0 and "trust_remote_code" in refused.stderr

    path, data = make_tiny_config(tmp_path, {"teacher": teacher})
    data["teacher"]["trust_remote_code"] = True
    data["generate"]["max_prompts"] = 6
    data["eval"]["max_prompts"] = 3
    data["train"].update(max_steps=2, save_steps=2)
    # the annotating teacher is the run's teacher: the same code, already trusted
    data["annotate"] = {"enabled": True, "teacher": {"model": str(teacher)}, "topk": 8}
    path.write_text(yaml.safe_dump(data))
    res = llmdistill(tmp_path, "run", path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    student = run / "train" / "student"
    assert has_custom_code(student) and has_custom_code(run / "train" / "sft_baseline")
    models = store.read_json(run / "eval" / "metrics.json")["models"]
    assert set(models) == {"teacher", "student", "sft_baseline"} and models["student"]["tokens"] > 0

    # what a retrain does next: warm-start from the promoted student and score it beside the new one;
    # and on-policy training, where the student generates and the teacher scores
    promoted = shutil.copytree(student, tmp_path / "promoted")
    data_b = {**data, "name": "next"}
    data_b["train"] = {**data["train"], "student": {"model": str(promoted)}, "sft_baseline": False,
                       "mode": "on_policy", "on_policy": {"max_new_tokens": 4}}
    data_b["eval"] = {**data["eval"], "compare_to": str(promoted)}
    path_b = tmp_path / "next.yaml"
    path_b.write_text(yaml.safe_dump(data_b))
    for part in ("generate", "annotate", "filter", "cache"):  # the same data and teacher references
        shutil.copytree(run / part, tmp_path / "runs" / "next" / part)
    res = llmdistill(tmp_path, "run", path_b)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "stage filter: up to date" in res.stderr and "teacher references from cache" in res.stderr
    models = store.read_json(tmp_path / "runs" / "next" / "eval" / "metrics.json")["models"]
    assert set(models) == {"teacher", "student", "promoted"} and models["promoted"]["tokens"] > 0
    assert has_custom_code(tmp_path / "runs" / "next" / "train" / "student")

