"""Bounds checked where the input enters (issue 28, items 15-17 and 19): numbers that look like digits but
are not ASCII, sizes no model can use, seeds and levels that do not fit what they are stored in, lone
surrogates and byte-order marks in user files. Each is one line naming the field or file:line, before any
work is done."""

from __future__ import annotations

import json
import os
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


# ------------------------------------------------------- 19: a byte-order mark is read as the text it marks
BOM = b"\xef\xbb\xbf"  # what Windows Notepad writes first in a UTF-8 file


def test_bom_before_a_prompt_file_is_not_part_of_line_1(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_bytes(BOM + b'{"prompt": "caf\xc3\xa9?", "level": 2}\n{"prompt": "two"}\n')
    text = tmp_path / "p.txt"
    text.write_bytes(BOM + b"first line\nsecond\n")
    assert [(p.messages[0]["content"], p.level) for p in prompts.read_prompt_file(jsonl)] == [("caf\u00e9?", 2),
                                                                                             ("two", 1)]
    assert [p.messages[0]["content"] for p in prompts.read_prompt_file(text)] == ["first line", "second"]


def _config_with_bom(tmp_path):
    held = tmp_path / "held.jsonl"
    held.write_bytes(BOM + json.dumps({"prompt": "held out"}).encode() + b"\n")
    config = tmp_path / "c.yaml"
    config.write_bytes(BOM + f"seed: 3\ngenerate: {{prompts: {held}}}\neval: {{prompts: {held}}}\n"
                             "train: {student: {teacher_layers: [0]}}\n".encode())
    return load_config(config).seed == 3


def _template_with_bom(tmp_path):
    from llmdistill.config import TemplateSource

    template = tmp_path / "t.j2"
    template.write_bytes(BOM + b"What is {{ x }}?\n")
    src = TemplateSource(kind="template", template=template, rows=[{"x": "a river"}])
    return prompts.template_prompts(src, None)[0].messages == [{"role": "user", "content": "What is a river?"}]


def _bert_rows_with_bom(tmp_path):
    from llmdistill.bert import data as bdata

    rows = tmp_path / "train.jsonl"
    rows.write_bytes(BOM + b'{"text": "good", "label": 1}\n')
    return bdata.read_rows(rows, "text", "label", 2).texts == ["good"]


def _eval_set_with_bom(tmp_path):
    from llmdistill import config as C
    from llmdistill.filter import decontam

    items = tmp_path / "e.txt"
    items.write_bytes(BOM + b"line one\n")
    return decontam.load_eval_items(C.EvalSetConfig(name="e", path=items)) == ["line one"]


def _judge_rubric_with_bom(tmp_path):
    from llmdistill.filter.scorers import render_rubric

    rubric = tmp_path / "rubric.j2"
    rubric.write_bytes(BOM + b"Rate {{ answer }}.")
    return render_rubric(rubric, answer="this") == "Rate this."


@pytest.mark.parametrize("reader", [_config_with_bom, _template_with_bom, _bert_rows_with_bom, _eval_set_with_bom,
                                    _judge_rubric_with_bom])
def test_bom_before_every_other_user_file(tmp_path, reader):
    assert reader(tmp_path)


def test_a_bom_later_in_a_file_is_still_named(tmp_path):
    """Only the mark at the very start is an encoding mark; one inside (two files pasted together) is a
    character of that line, which JSON refuses, by file:line."""
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "one"}\n' + BOM + b'{"prompt": "two"}\n')
    with pytest.raises(ValueError, match=rf"^{path}:2: not valid JSON"):
        prompts.read_prompt_file(path)


def test_read_text_names_the_line_of_a_byte_that_is_not_utf8(tmp_path):
    from llmdistill.textfile import NotUTF8, read_text

    path = tmp_path / "x.yaml"
    path.write_bytes(BOM + b"a: 1\nb: caf\xe9\n")
    with pytest.raises(NotUTF8) as e:
        read_text(path)
    assert e.value.line == 2 and str(e.value) == "not UTF-8 text (byte 0xe9: invalid continuation byte)"


# ------------------------------------------------------------- 19: a BERT training set of one class
def test_only_class_finds_a_training_set_of_one_class():
    from llmdistill.bert import data as bdata

    assert bdata.only_class(bdata.Rows(["a", "b"], [1, 1])) == 1
    assert bdata.only_class(bdata.Rows(["a", "b", "c"], [1, bdata.UNLABELLED, 1])) == 1
    assert bdata.only_class(bdata.Rows(["a", "b"], [0, 1])) is None
    assert bdata.only_class(bdata.Rows(["a"], [bdata.UNLABELLED])) is None


# ------------------------------------------- 18: library logging goes through ours, shown with -v only
ROUTED = """
import logging, sys, warnings
from llmdistill import cli
cli._setup_logging(sys.argv[1] == "-v")
import transformers.utils.logging as hf  # imported after the set-up, as the commands import it
hf.get_logger("transformers.modeling_utils").warning("There were missing keys in the checkpoint: ['lm_head.weight']")
logging.getLogger("accelerate.utils").warning("an accelerate note")
warnings.warn("a torch-style UserWarning")
logging.getLogger("datasets").error("a library error")
logging.getLogger("llmdistill").info("our own line")
logging.getLogger("llmdistill").debug("our debug line")
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_library_logging_goes_through_ours_and_shows_with_v(verbose):
    res = subprocess.run([PYTHON, "-c", ROUTED, "-v" if verbose else "-"], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [line.split(" ", 1)[1] for line in res.stderr.splitlines()]  # without the time stamp
    if not verbose:
        assert lines == ["ERROR [datasets] a library error", "INFO our own line"]
    else:
        assert lines[0] == "WARNING [transformers] There were missing keys in the checkpoint: ['lm_head.weight']"
        assert lines[1] == "WARNING [accelerate] an accelerate note"
        assert lines[2].startswith("WARNING [warnings] <string>:") and "UserWarning: a torch-style UserWarning" \
            in lines[2]
        assert lines[-3:] == ["ERROR [datasets] a library error", "INFO our own line", "DEBUG our debug line"]
