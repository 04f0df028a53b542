"""Every reader of a user's text file names `file:line` for a byte that is not UTF-8 (issue 11, item 11):
prompt files (generate, eval and eval tasks through records; tests/unit/test_records_store.py and
test_prompt_sources.py), retrain's new prompts, and BERT data files."""

import json

import pytest
import yaml

from conftest import write_prompts
from llmdistill.config import load_config
from llmdistill.errors import UserError


def test_bert_rows_name_the_line_of_a_byte_that_is_not_utf8(tmp_path):
    from llmdistill.bert import data as bdata

    path = tmp_path / "train.jsonl"
    path.write_bytes(json.dumps({"text": "d\u00e9j\u00e0 vu\u00a0!", "label": 1}).encode() + b"\n"
                     + b'{"text": "na\xefve", "label": 0}\n')
    with pytest.raises(UserError, match=r"^.*train\.jsonl:2: not UTF-8 text \(byte 0xef at character 13\)$"):
        bdata.read_rows(path, "text", "label", 2)
    rows = bdata.read_rows(path, "text", "label", 2, limit=1)  # the first row is fine, and read as written
    assert rows.texts == ["d\u00e9j\u00e0 vu\u00a0!"] and rows.labels == [1]


def test_retrain_new_prompts_name_the_line(tmp_path):
    from llmdistill.retrain.run import new_prompts

    seeds = write_prompts(tmp_path / "seeds.jsonl")
    with open(seeds, "ab") as f:
        f.write(b'{"prompt": "\xff\xfe utf-16?", "level": 1}\n')
    held = write_prompts(tmp_path / "held.jsonl", n_per_level=1, tag="held")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "runs"), "generate": {"prompts": str(seeds)},
                                    "train": {"student": {"teacher_layers": [0]}}, "eval": {"prompts": str(held)}}))
    with pytest.raises(UserError, match=r"seeds\.jsonl:13: not UTF-8 text \(byte 0xff at character 13\)"):
        new_prompts(load_config(path), set())
    assert len(new_prompts(load_config(path, ["generate.on_bad_line=skip"]), set())) == 12
