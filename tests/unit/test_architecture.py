"""architecture.py: a model's config.json checked before transformers reads it (issue 28, item 12), and the
pruning sizes plan and prune share (item 13)."""

from __future__ import annotations

import json

import pytest

from llmdistill import architecture
from llmdistill.errors import UserError

LLAMA = {"model_type": "llama", "vocab_size": 320, "hidden_size": 64, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "head_dim": None}


@pytest.mark.parametrize("config, problem", [
    ({**LLAMA, "num_attention_heads": 0}, "num_attention_heads is 0: a positive integer expected"),
    ({**LLAMA, "hidden_size": "64"}, "hidden_size is '64': a positive integer expected"),
    ({**LLAMA, "num_hidden_layers": -3}, "num_hidden_layers is -3"),
    ({**LLAMA, "intermediate_size": 128.0}, "intermediate_size is 128.0"),
    ({**LLAMA, "vocab_size": True}, "vocab_size is True"),
    ({**LLAMA, "num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    ({"model_type": "gemma3", "text_config": {**LLAMA, "head_dim": 0}}, "text_config.head_dim is 0"),
    ({"model_type": "gemma3", "text_config": "big"}, "text_config is 'big': an object expected"),
    ({**LLAMA, "model_type": 7}, "model_type is 7: a string expected"),
    ([LLAMA], "holds a JSON list, not an object"),
    ("llama", "holds a JSON str, not an object"),
])
def test_broken_configs_name_the_field(config, problem):
    assert problem in architecture.config_problem(config)


def test_real_configs_pass(tiny):
    from transformers import GPT2Config, Qwen3Config

    assert architecture.read_config(tiny["teacher"])["num_hidden_layers"] == 4
    assert architecture.config_problem(LLAMA) is None
    for config in (GPT2Config(n_inner=None), Qwen3Config(head_dim=128)):
        assert architecture.config_problem(json.loads(config.to_json_string())) is None


def test_read_config_names_the_file(tmp_path):
    assert architecture.read_config(tmp_path) is None  # no config.json: the loader says what it misses
    (tmp_path / "config.json").write_text('{"hidden_size": 64,')
    with pytest.raises(UserError, match=f"^{tmp_path / 'config.json'}: not valid JSON"):
        architecture.read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA, "num_hidden_layers": 0}))
    with pytest.raises(UserError, match=f"^{tmp_path / 'config.json'}: num_hidden_layers is 0"):
        architecture.read_config(tmp_path)


def test_prune_sizes():
    architecture.check_prune(LLAMA, layers=2, intermediate_size=64, attention_heads=2, hidden_size=32)
    for sizes, message in [({"layers": 5}, "has 4 layers, cannot keep 5"),
                           ({"attention_heads": 3}, "multiple of the teacher's 2 key/value heads"),
                           ({"hidden_size": 30, "attention_heads": 4}, "use 28 or 32")]:
        with pytest.raises(UserError, match=message):
            architecture.check_prune(LLAMA, **sizes)
    with pytest.raises(UserError, match="Llama-family .* the teacher is 'gpt2'"):
        architecture.check_prune({**LLAMA, "model_type": "gpt2"}, layers=2)
