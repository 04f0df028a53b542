"""A model's architecture as its config.json gives it, read and checked without torch, and the students a run
may derive from it. The stages (loading, train/prune.py, train/student.py) and `llmdistill plan` call these
same functions, so `plan` refuses exactly what a run would, before any weights load.

- `read_config(directory)`: config.json as a dict; a file that is not a JSON object, or a size that is not a
  positive integer (0 heads, a string hidden size, -3 layers), is one line naming the file and the field.
- `check_teacher_layers(layers, n)`: a layer subset of an n-layer teacher (train.student.teacher_layers).
- `check_prune(teacher, ...)`: the sizes a pruned student may take (train.student.prune).
"""

from __future__ import annotations

import json
from pathlib import Path

from llmdistill.errors import UserError

CONFIG_FILE = "config.json"
# Sizes that must be positive integers wherever a config sets them (null: unset, the model's default); the
# GPT-2 names too. A nested text_config (multimodal models) is checked the same way.
SIZE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "intermediate_size", "head_dim", "max_position_embeddings", "n_embd", "n_layer", "n_head", "n_inner",
               "n_positions")
# the same module layout (q/k/v/o_proj, gate/up/down_proj, RMSNorm): what train/prune.py can slice
LLAMA_FAMILY = ("llama", "mistral", "qwen2")


def config_problem(config) -> str | None:
    """What is wrong with a parsed config.json (`num_attention_heads is 0: ...`), or None."""
    if not isinstance(config, dict):
        return f"holds a JSON {type(config).__name__}, not an object of settings"
    if "model_type" in config and not isinstance(config["model_type"], str):
        return f"model_type is {config['model_type']!r}: a string expected"
    parts = [("", config)]
    if config.get("text_config") is not None:
        if not isinstance(config["text_config"], dict):
            return f"text_config is {config['text_config']!r}: an object expected"
        parts.append(("text_config.", config["text_config"]))
    for prefix, part in parts:
        for name in SIZE_FIELDS:
            value = part.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                return f"{prefix}{name} is {value!r}: a positive integer expected"
        heads, kv = part.get("num_attention_heads"), part.get("num_key_value_heads")
        if heads and kv and heads % kv:
            return (f"{prefix}num_attention_heads {heads} is not a multiple of {prefix}num_key_value_heads {kv} "
                    "(each key/value head serves a whole group of query heads)")
    return None


def read_config(directory: str | Path) -> dict | None:
    """`directory`/config.json as a dict, checked (`config_problem`); None when the directory has none (the
    loader then says what it misses). A damaged file is a UserError naming it."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    problem = config_problem(config)
    if problem:
        raise UserError(f"{path}: {problem}")
    return config


def text_part(config: dict) -> dict:
    """The decoder's settings: a multimodal config's text_config, else the config itself."""
    return config.get("text_config") or config


def check_teacher_layers(layers: list[int], n: int) -> None:
    """train.student.teacher_layers must name layers the n-layer teacher has."""
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise UserError(f"train.student.teacher_layers: the teacher has layers 0..{n - 1}, got {bad}")


def check_prunable(model_type, what: str) -> None:
    """Pruning slices Llama-layout weights only; `what` names the model in the message."""
    if model_type not in LLAMA_FAMILY:
        raise UserError(f"train.student.prune: pruning supports Llama-family models ({', '.join(LLAMA_FAMILY)}); "
                        f"{what} is {model_type!r}. Use train.student.teacher_layers (a layer subset) "
                        "or train.student.model instead")


def check_prune(teacher: dict, layers: int | None = None, intermediate_size: int | None = None,
                attention_heads: int | None = None, hidden_size: int | None = None) -> None:
    """The pruned student's sizes against the teacher's config (a dict): each at most the teacher's, the query
    heads a multiple of the key/value heads, the hidden size a multiple of the query heads kept (transformers
    requires it, even with head_dim set). None keeps a dimension whole."""
    t = text_part(teacher)
    check_prunable(t.get("model_type", teacher.get("model_type")), "the teacher")
    n = t["num_hidden_layers"]
    if layers is not None and not 1 <= layers <= n:
        raise UserError(f"train.student.prune.layers: the teacher has {n} layers, cannot keep {layers}")
    heads = t["num_attention_heads"]
    sizes = (("intermediate_size", intermediate_size, t["intermediate_size"]),
             ("attention_heads", attention_heads, heads), ("hidden_size", hidden_size, t["hidden_size"]))
    for what, value, full in sizes:
        if value is not None and not 1 <= value <= full:
            raise UserError(f"train.student.prune.{what}: the teacher has {full}, cannot keep {value}")
    kept_heads, hidden = attention_heads or heads, hidden_size or t["hidden_size"]
    kv = t.get("num_key_value_heads") or heads
    if kept_heads % kv:
        raise UserError(f"train.student.prune.attention_heads: {kept_heads} is not a multiple of the teacher's "
                        f"{kv} key/value heads (grouped-query attention keeps whole groups' shares)")
    if hidden % kept_heads:
        below, above = hidden - hidden % kept_heads, hidden - hidden % kept_heads + kept_heads
        raise UserError(f"train.student.prune: a hidden size of {hidden} is not a multiple of the {kept_heads} query "
                        f"heads kept (transformers requires it); use {below} or {above}, or another head count")
