"""Reading a config: YAML (a key written twice is an error), `key.sub=value` overrides, validation, and
error lines with a did-you-mean.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from llmdistill import credentials
from llmdistill.config.base import ConfigError, discriminator, file_problem, union_members, unwrap
from llmdistill.config.bert import BertDistillConfig
from llmdistill.config.root import Config
from llmdistill.errors import describe_os_error, text_problem
from llmdistill.textfile import NotUTF8, read_text


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.loss.0.weight=0.5` -> (["train", "loss", "0", "weight"], 0.5). The value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError([f"override {text!r} is not of the form key.sub=value"], "overrides")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError([f"override {text!r} has an empty key part"], "overrides")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        problem = yaml_problem(e, column_offset=len(key) + 1)
        raise ConfigError([f"override {text!r}: value is not valid YAML ({problem})"], "overrides") from None
    except ConfigError as e:  # a duplicate key inside the value, e.g. `a={x: 1, x: 2}`
        raise ConfigError([f"override {text!r}: {line}" for line in e.errors], "overrides") from None
    return parts, value


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load`, except that a key written twice in one mapping is an error (PyYAML keeps the last).

    Raises yaml.YAMLError for bad YAML and ConfigError listing every duplicate key with both lines."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicates = _duplicate_keys(node, [], set())
        if duplicates:
            raise ConfigError([message for _, message in sorted(duplicates)])
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _duplicate_keys(node: yaml.Node, path: list[str], seen: set[int]) -> list[tuple[int, str]]:
    """(position, `a.b: duplicate key (lines 3 and 9)`) for every scalar key repeated in a mapping under `node`.

    Merge keys (`<<: *base`) are not duplicates: the keys written beside them override the merged ones."""
    if id(node) in seen:  # an alias of a node already checked
        return []
    seen.add(id(node))
    out = []
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], yaml.Mark] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else None
            if name is not None and key.tag != "tag:yaml.org,2002:merge":
                mark = key.start_mark
                if (key.tag, name) in first:
                    before = first[key.tag, name]
                    where = ".".join([*path, _printable(name)])
                    lines = (f"lines {before.line + 1} and {mark.line + 1}" if before.line != mark.line else
                             f"line {mark.line + 1}, columns {before.column + 1} and {mark.column + 1}")
                    out.append((mark.index, f"{where}: duplicate key ({lines})"))
                else:
                    first[key.tag, name] = mark
            out += _duplicate_keys(value, [*path, _printable(name if name is not None else "?")], seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _duplicate_keys(item, [*path, str(i)], seen)
    return out


def _printable(key: str) -> str:
    return key if key.isprintable() else repr(key)


def yaml_problem(e: yaml.YAMLError, column_offset: int = 0) -> str:
    """PyYAML's several-line message as one line: the problem and where (`line L, column C` of the text)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).strip().splitlines()[-1]
    if mark is None:
        return problem
    if column_offset:  # an override: one line, the column counted from the start of `key=value`
        return f"{problem} at column {mark.column + 1 + column_offset}"
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def _set_path(data: dict, parts: list[str], value: Any, text: str) -> None:
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not (part.isascii() and part.isdigit()) or int(part) >= len(node):
                raise ConfigError([f"override {text!r}: {'.'.join(parts[:i]) or 'config'} has no item {part}"])
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if not isinstance(node.get(part), (dict, list)):
                    # an override into a section the file leaves out starts from that section's default
                    node[part] = _default_at(parts[: i + 1])
                node = node[part]
        else:
            raise ConfigError([f"override {text!r}: {'.'.join(parts[:i])} is not a section"])


def _default_at(parts: list[str]) -> Any:
    """The default of the config field at `parts` as plain data (e.g. the default loss list), or {}."""
    model: Any = Config
    for part in parts[:-1]:
        model = unwrap(_step(model, part))
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return {}
    field = model.model_fields.get(parts[-1]) if isinstance(model, type) and issubclass(model, BaseModel) else None
    if field is None or field.is_required():
        return {}
    value = field.get_default(call_default_factory=True)
    if isinstance(value, list):
        return [v.model_dump() if isinstance(v, BaseModel) else v for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)  # only what the override sets counts as set
    return {}


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the embedded demo when `path` is None), apply overrides, validate.

    Raises ConfigError listing every problem found.
    """
    path = Path(path) if path is not None else default_config_path()
    data, override_values = read_yaml(path, overrides)
    return validate_dict(data, base_dir=path.resolve().parent, source=str(path), override_values=override_values)


def read_yaml(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, set[str]]:
    """A config file as a mapping with the overrides applied, and the override values (for path resolution)."""
    source = str(path)
    problem = file_problem(path)
    if problem:
        raise ConfigError([f"config {problem}"], source)
    try:
        data = parse_yaml(read_text(path))
    except OSError as e:
        raise ConfigError([f"cannot read the config: {describe_os_error(e)}"], source) from None
    except NotUTF8 as e:
        raise ConfigError([f"line {e.line}: {e}"], source) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError([f"not valid YAML{where}: {getattr(e, 'problem', None) or yaml_problem(e)}"],
                          source) from None
    except ConfigError as e:  # duplicate keys
        raise ConfigError(e.errors, source) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"top level must be a mapping of sections, got {type(data).__name__}"], source)
    data.pop("_provenance", None)  # a run's config.resolved.yaml loads back: its record of versions is not config
    return data, _apply_overrides(data, overrides, source)


def _apply_overrides(data: dict, overrides: list[str] | tuple[str, ...], source: str) -> set[str]:
    """Apply `key.sub=value` overrides to `data` in place; returns the override values (for path resolution).
    Raises ConfigError listing every bad override and every string that is not text."""
    errors: list[str] = []
    override_values: set[str] = set()
    for text in overrides:
        try:
            parts, value = parse_override(text)
            _set_path(data, parts, value, text)
            override_values.update(str(v) for v in (value if isinstance(value, list) else [value]))
        except ConfigError as e:
            errors.extend(e.errors)
    errors += _not_text(data, [])
    if errors:
        raise ConfigError(errors, source)
    return override_values


def override_config(cfg: Config | BertDistillConfig, overrides: list[str] | tuple[str, ...]):
    """A loaded config with `key.sub=value` overrides applied, validated again (same type as `cfg`). The
    paths in `cfg` are absolute already; relative paths in the override values resolve against the current
    directory, as on the command line. Raises ConfigError listing every problem."""
    data = cfg.model_dump(mode="json")
    override_values = _apply_overrides(data, overrides, "overrides")
    return _validate(type(cfg), data, {"base_dir": str(Path.cwd()), "override_values": override_values},
                     "overrides")


def _not_text(node: Any, path: list[str]) -> list[str]:
    """`a.b: holds a lone surrogate ...` for every key or string value under `node` that is not text (a
    "\ud800" escape): it would fail only when the resolved config, a prompt or a shard is written."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = [*path, _printable(str(key))]
            problem = text_problem(key) if isinstance(key, str) else None
            out += [f"{'.'.join(where)}: key {problem}"] if problem else _not_text(value, where)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            out += _not_text(item, [*path, str(i)])
    elif isinstance(node, str) and (problem := text_problem(node)):
        out.append(f"{'.'.join(path) or 'config'}: {problem}")
    return out


def validate_dict(
    data: dict, base_dir: Path | str = ".", source: str = "config", override_values: set[str] = frozenset()
) -> Config:
    """Validate a config mapping; relative input paths resolve against `base_dir`."""
    return _validate(Config, data, {"base_dir": str(base_dir), "override_values": override_values}, source)


def _validate(model: type[BaseModel], data: dict, context: dict, source: str):
    """`model` validated from `data`, with no key left in any string of it (`credentials.find_keys` on the
    validated config, or on `data` as written when it does not validate: every problem at once). Raises
    ConfigError; no line shows a key."""
    try:
        cfg = model.model_validate(data, context=context)
    except ValidationError as e:
        errors = [format_error(err, model) for err in e.errors()]
        located = [line.split(": ", 1)[0] for line in errors]
        errors += [line for line in key_errors(data) if not _covered(line.split(": ", 1)[0], located)]
        raise ConfigError(errors, source) from None
    errors = key_errors(cfg.model_dump())
    if errors:
        raise ConfigError(errors, source)
    return cfg


def key_errors(data: Any) -> list[str]:
    """One line per string of a config that holds a key: `teacher.api.base_url: looks like an API key in the URL
    path (value not shown); put keys in the environment (api_key_env): ...`."""
    return [f"{where}: {problem} (value not shown); {credentials.ADVICE}"
            for where, problem in credentials.find_keys(data)]


def _covered(where: str, located: list[str]) -> bool:
    """Whether an error line names `where` already, or a key above or below it (one problem, one line)."""
    return any(w == where or where.startswith(w + ".") or w.startswith(where + ".") for w in located)


def default_config_path() -> Path:
    """The embedded default: configs/demo.yaml of the source tree."""
    return Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def format_error(err: dict, root: Any = None) -> str:
    """One line per problem: keys with unprintable characters are shown quoted, newlines escaped, and any
    key-like part of a value it quotes redacted."""
    return credentials.redact(_format_error(err, root).replace("\r", "\\r").replace("\n", "\\n"))


def _format_error(err: dict, root: Any = None) -> str:
    root = root or Config
    loc = [str(p) if str(p).isprintable() else repr(str(p)) for p in _without_tags(root, err["loc"])]
    where = ".".join(loc) or "config"
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        options = _field_names_at(root, list(err["loc"][:-1]))
        close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
        if close:
            hint = f" (did you mean '{close[0]}'?)"
        else:
            hint = f" (known keys: {', '.join(options)})" if options else ""
        return f"{where}: unknown key{hint}"
    if kind == "missing":
        return f"{where}: required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return f"{where}: {msg}"


def _without_tags(root: Any, loc: tuple) -> list:
    """`loc` less the tags pydantic puts into the location of a discriminated union's member
    ("steps.0.length.min_words"), found by walking the models from `root` (a key spelled like a tag stays)."""
    out, tp = [], root
    for part in loc:
        if not (tp is not None and discriminator(tp) is not None and part in union_members(tp)):
            out.append(part)
        tp = _step(tp, part) if tp is not None else None
    return out


def _field_names_at(model: Any, loc: list) -> list[str]:
    """Names of the fields of the model found by walking `loc` from `model` (for did-you-mean)."""
    tp = model
    for part in loc:
        tp = _step(tp, part)
        if tp is None:
            return []
    tp = unwrap(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):  # an optional section: `EvolveConfig | None`
        models = [m for m in map(unwrap, typing.get_args(tp)) if isinstance(m, type) and issubclass(m, BaseModel)]
        tp = models[0] if len(models) == 1 else None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _step(tp: Any, part: Any) -> Any:
    """The type found at `part` inside `tp` (a field of a model, an item of a list, a member of a union)."""
    if discriminator(tp) is not None and part in (members := union_members(tp)):
        return members[part]
    tp = unwrap(tp)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        members = [unwrap(a) for a in typing.get_args(tp) if a is not type(None)]
        for m in members:
            nxt = _step(m, part)
            if nxt is not None:
                return nxt
        return None
    if origin is list:
        return typing.get_args(tp)[0] if isinstance(part, int) else None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(str(part))
        if field is not None and field.discriminator:  # pydantic moved the union's Annotated into the field
            return Annotated[field.annotation, field]
        return field.annotation if field else None
    return None


def load_bert_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> BertDistillConfig:
    """Read and validate a BERT distillation config; raises ConfigError listing every problem."""
    path = Path(path)
    data, override_values = read_yaml(path, overrides)
    return _validate(BertDistillConfig, data, {"base_dir": str(path.resolve().parent),
                                                "override_values": override_values}, str(path))
