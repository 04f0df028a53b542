"""Bounds checked where the input enters (issue 28, items 15-17 and 19): numbers that look like digits but
are not ASCII, sizes no model can use, seeds and levels that do not fit what they are stored in, lone
surrogates and byte-order marks in user files. Each is one line naming the field or file:line, before any
work is done."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import typer

from conftest import PYTHON, REPO
from llmdistill import cli, prompts
from llmdistill.config import MAX_LEVEL, MAX_NEW_TOKENS, ConfigError, EvolveConfig, HFDatasetSource, load_config
from llmdistill.errors import UserError


# ------------------------------------------------------------------------------ 17: ASCII digits only
@pytest.mark.parametrize("shard", ["²/3", "1/³", "0/٣", "٣/4", "1/３"])
def test_shard_takes_ascii_digits_only(shard):
    with pytest.raises(typer.Exit) as e:
        cli._parse_shard(shard)
    assert e.value.exit_code == cli.EXIT_BAD_INPUT


def test_shard_with_superscript_is_one_line_on_the_command_line():
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "generate", "--shard", "²/3"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.splitlines() == ["llmdistill: error: --shard takes i/n with 0 <= i < n (e.g. 2/8), got '²/3'"]


@pytest.mark.parametrize("override", ["generate.sources.²=1", "train.loss.٠.weight=0.5"])
def test_override_list_index_takes_ascii_digits_only(override):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert len(e.value.errors) == 1 and "has no item" in e.value.errors[0]


def test_ray_address_port_takes_ascii_digits_only():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["generate.executor=ray", f"generate.ray_address={json.dumps('host:²')}"])
    assert e.value.errors == ["generate.ray_address: 'host:²' is not auto, local, host:port or ray://host:port"]


# ------------------------------------------------- 16: levels, seeds and lone surrogates, where they are read
def _lines(path, *objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")  # json escapes "\ud800"
    return path


@pytest.mark.parametrize("level", [10**30, 2**15, MAX_LEVEL + 1, -1])
def test_prompt_level_beyond_what_is_stored_names_file_and_line(tmp_path, level):
    path = _lines(tmp_path / "p.jsonl", {"prompt": "fine", "level": 1}, {"prompt": "huge", "level": level})
    with pytest.raises(ValueError, match=rf"^{path}:2: 'level' must be a non-negative integer up to {MAX_LEVEL}, "
                                         rf"got {level}$"):
        prompts.read_prompt_file(path)
    assert prompts.read_prompt_file(_lines(tmp_path / "ok.jsonl", {"prompt": "top", "level": MAX_LEVEL}))[0].level \
        == MAX_LEVEL


def test_max_level_and_evolution_fit_the_stored_column():
    """The level column is int16 and evolution adds one level per round on top of the highest level read."""
    import numpy as np
    import pyarrow as pa

    from llmdistill.records import arrow_schema

    most_rounds = next(m.le for m in EvolveConfig.model_fields["rounds"].metadata if hasattr(m, "le"))
    assert arrow_schema().field("level").type == pa.int16()
    assert MAX_LEVEL + most_rounds <= np.iinfo(np.int16).max


@pytest.mark.parametrize("line, field", [
    ({"prompt": "caf\ud800e"}, "'prompt' holds a lone surrogate \\ud800 at character 4"),
    ({"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "\udfff"}]},
     "'messages[1].content' holds a lone surrogate \\udfff at character 1"),
    ({"prompt": "ok", "answer": "4\udc00"}, "'answer' holds a lone surrogate \\udc00 at character 2"),
    ({"prompt": "ok", "source": "\ud83d"}, "'source' holds a lone surrogate \\ud83d at character 1"),
    ({"prompt": "ok", "tags": ["a", "b\ud800"]}, "'tags[1]' holds a lone surrogate \\ud800 at character 2"),
])
def test_lone_surrogate_in_a_prompt_names_file_line_and_field(tmp_path, line, field):
    path = _lines(tmp_path / "p.jsonl", line)
    with pytest.raises(ValueError) as e:
        prompts.read_prompt_file(path)
    assert str(e.value).startswith(f"{path}:1: {field} (an unpaired")
    bad: list[str] = []
    assert prompts.read_prompt_file(path, bad_lines=bad) == [] and len(bad) == 1  # on_bad_line: skip skips it


def test_a_surrogate_pair_is_text():
    line = '{"prompt": "smile \\ud83d\\ude00"}'  # how json.dumps writes an emoji outside the BMP: a pair of escapes
    got = prompts.prompt_from_dict(json.loads(line), Path("x"), None, None, None, ())
    assert got.messages[0]["content"] == "smile \U0001F600"


def test_dataset_level_beyond_what_is_stored_names_the_row(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"prompt": ["a", "b"], "level": [1, 40_000]}).save_to_disk(str(tmp_path / "d"))
    src = HFDatasetSource(kind="hf_dataset", path=str(tmp_path / "d"), level_column="level")
    with pytest.raises(UserError, match=r"d\[row 1\]: 'level' must be a non-negative integer up to"):
        prompts.dataset_prompts(src, None, None)


@pytest.mark.parametrize("override", ["seed=1180591620717411303424", "seed=-1", "seed=4294967296",
                                      "train.seed=4294967296",
                                      'filter.steps=[{name: near_dedup, seed: 1180591620717411303424}]'])
def test_seed_beyond_what_numpy_and_the_shard_take_is_a_config_error(override):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert len(e.value.errors) == 1 and "seed" in e.value.errors[0]
    assert load_config(None, ["seed=4294967295"]).seed == 2**32 - 1


@pytest.mark.parametrize("override", ["seed=1180591620717411303424", "seed=-1"])
def test_bert_seed_beyond_numpy_is_a_config_error(tmp_path, override):
    from llmdistill.config import load_bert_config

    with pytest.raises(ConfigError, match="seed"):
        load_bert_config(REPO / "configs" / "bert-kd.yaml", [override])


def test_lone_surrogate_in_the_config_names_the_key():
    with pytest.raises(ConfigError) as e:
        load_config(None, ['generate.system_prompt="be brief\\ud800"'])
    assert e.value.errors == ["generate.system_prompt: holds a lone surrogate \\ud800 at character 9 (an unpaired "
                              "\\ud800-\\udfff escape is not text)"]


def test_lone_surrogate_in_bert_rows_and_eval_sets_names_file_and_line(tmp_path):
    from llmdistill import config as C
    from llmdistill.bert import data as bdata
    from llmdistill.filter import decontam

    rows = _lines(tmp_path / "train.jsonl", {"text": "fine", "label": 0}, {"text": "x\ud800", "label": 1})
    with pytest.raises(UserError, match=r"train\.jsonl:2: 'text' holds a lone surrogate \\ud800 at character 2"):
        bdata.read_rows(rows, "text", "label", 2)
    items = _lines(tmp_path / "e.jsonl", {"question": "fine"}, {"question": "\udc80 x"})
    with pytest.raises(UserError, match=r"e\.jsonl:2: holds a lone surrogate \\udc80 at character 1"):
        decontam.load_eval_items(C.EvalSetConfig(name="e", path=items, fields=["question"]))


# ------------------------------------------------------------------- 15: lengths bounded in the config
@pytest.mark.parametrize("key", ["eval.max_new_tokens", "eval.latency_new_tokens", "generate.max_new_tokens",
                                 "generate.evolve.max_new_tokens", "train.on_policy.max_new_tokens"])
def test_new_tokens_beyond_any_reply_is_a_config_error(key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}=1000000000"])
    assert e.value.errors == [f"{key}: Input should be less than or equal to {MAX_NEW_TOKENS} (got 1000000000)"]


def test_task_new_tokens_beyond_any_reply_is_a_config_error(tmp_path):
    task = _lines(tmp_path / "t.jsonl", {"prompt": "2+2?", "answer": "4"})
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"eval.tasks=[{{name: t, prompts: {task}, max_new_tokens: 1000000000}}]"])
    assert e.value.errors == [f"eval.tasks.0.max_new_tokens: Input should be less than or equal to {MAX_NEW_TOKENS} "
                              "(got 1000000000)"]


def test_max_new_tokens_fits_the_stored_column():
    import pyarrow as pa

    from llmdistill.records import GEN_TYPE

    assert GEN_TYPE.field("max_new_tokens").type == pa.int32() and MAX_NEW_TOKENS < 2**31
