"""Prompt sources, below the stages: seed files, `datasets` datasets and templates, each prompt with a level.

generate reads every configured source (`load_sources`), retrain the same to find new prompts, eval its
prompt files (`load_prompts`). Sources are read in config order into one list of `Prompt`;
`curriculum_order` then drops repeats and sorts easy to hard. Templates render in a sandboxed Jinja
environment: no loader (a template cannot include or read files), attributes starting with `_` are off
limits (no `''.__class__.__mro__` escapes), the sandbox's immutable variant forbids mutating values, and an
undefined variable is an error instead of an empty string.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from llmdistill import records, textfile
from llmdistill.config import MAX_LEVEL, FileSource, GenerateConfig, HFDatasetSource, TemplateSource
from llmdistill.errors import UserError, describe_template_error, text_problem


@dataclass
class Prompt:
    """A prompt that seeds samples: chat turns, curriculum level, where it came from, optional gold answer."""

    messages: list[dict]
    level: int
    source: str
    answer: str | None = None
    tags: list[str] = field(default_factory=list)
    origin: str | None = field(default=None, compare=False)  # "file:line" for error messages; not part of the id

    @property
    def id(self) -> str:
        return records.prompt_id(self.messages, self.source)


def read_prompt_file(path, system_prompt: str | None = None, *, format: str = "auto", level: int | None = None,
                     source: str | None = None, tags: list[str] | tuple = (),
                     bad_lines: list[str] | None = None) -> list[Prompt]:
    """Read a prompt file.

    JSONL (the default; `format="text"` or a .txt file reads one prompt per non-empty line instead): each line
    {"prompt": str | "messages": [...], "level": int, "source"?: str, "answer"?: str, "tags"?: [str]}.
    `level` / `source` given here override the lines'; `tags` are added to every prompt.
    A bad line raises ValueError "file:line: problem", or, when a `bad_lines` list is given, is appended to
    it and skipped."""
    path = Path(path)
    text_format = format == "text" or (format == "auto" and path.suffix == ".txt")
    out = []
    with textfile.open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                textfile.check_utf8(line)
                obj = {"prompt": line.strip()} if text_format else _json_line(line)
                out.append(prompt_from_dict(obj, path, system_prompt, level, source, tags, f"{path}:{lineno}"))
            except ValueError as e:
                message = f"{path}:{lineno}: {e}"
                if bad_lines is None:
                    raise ValueError(message) from None
                bad_lines.append(message)
    return out


def _json_line(line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    return obj


def prompt_from_dict(obj: dict, path, system_prompt, level, source, tags, origin: str | None = None) -> Prompt:
    """One prompt from a parsed line; ValueError (without the location) if the line is not a prompt."""
    for name, value in _strings(obj):
        problem = text_problem(value)
        if problem:
            raise ValueError(f"{name!r} {problem}")
    messages = obj.get("messages")
    if messages is None:
        text = obj.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("needs a non-empty 'prompt' string or a 'messages' list")
        messages = [{"role": "user", "content": text}]
    elif not (isinstance(messages, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ) and messages):
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    if level is None:
        level = obj.get("level", 1)
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= MAX_LEVEL:
            raise ValueError(f"'level' must be a non-negative integer up to {MAX_LEVEL}, got {level!r}")
    answer = obj.get("answer")
    line_tags = obj.get("tags") or []
    if not isinstance(line_tags, list):
        raise ValueError(f"'tags' must be a list, got {line_tags!r}")
    return Prompt(
        messages=messages,
        level=level,
        source=source or str(obj.get("source") or path.stem),
        answer=None if answer is None else str(answer),
        tags=[str(t) for t in line_tags] + [t for t in tags if t not in line_tags],
        origin=origin,
    )


def _strings(obj: dict):
    """(name, value) of every string of a prompt line that is kept (prompt, messages, source, answer, tags)."""
    messages = obj.get("messages") if isinstance(obj.get("messages"), list) else []
    tags = obj.get("tags") if isinstance(obj.get("tags"), list) else []
    found = [("prompt", obj.get("prompt")), ("source", obj.get("source")), ("answer", obj.get("answer"))]
    found += [(f"messages[{i}].{key}", m.get(key)) for i, m in enumerate(messages) if isinstance(m, dict)
              for key in ("role", "content")]
    found += [(f"tags[{i}]", t) for i, t in enumerate(tags)]
    return [(name, value) for name, value in found if isinstance(value, str)]


def spread(n: int, k: int | None) -> list[int]:
    """`k` indices spread evenly over range(n), increasing (all of them when k is None or >= n)."""
    if k is None or k >= n:
        return list(range(n))
    step = n / k
    return [int(i * step) for i in range(k)]


def curriculum_order(prompts: list[Prompt], order: str = "curriculum", max_prompts: int | None = None) -> list[Prompt]:
    """Drop repeated prompts (same id), sort easy to hard (stable, by level) unless `order == "file"`, and keep
    `max_prompts` spread evenly over the ordered list, so a shrunken run still covers every level."""
    seen, out = set(), []
    for p in prompts:
        if p.id not in seen:
            seen.add(p.id)
            out.append(p)
    if order == "curriculum":
        out.sort(key=lambda p: p.level)
    return [out[i] for i in spread(len(out), max_prompts)]


def load_prompts(paths, system_prompt: str | None = None, order: str = "curriculum",
                 max_prompts: int | None = None) -> list[Prompt]:
    """Prompts from several JSONL files, without repeats, in curriculum order (see `curriculum_order`)."""
    prompts = [p for path in paths for p in read_prompt_file(path, system_prompt)]
    return curriculum_order(prompts, order, max_prompts)


# ---------------------------------------------------------------------------------------------- sources
@dataclass
class Loaded:
    """What the sources gave: the prompts (source order) and every bad line or row that was skipped."""

    prompts: list[Prompt] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)


def load_sources(g: GenerateConfig) -> Loaded:
    """Read every configured source (`generate.prompts` first, as a `file` source, then `generate.sources`).

    A bad line or row raises UserError "file:line: problem" when `g.on_bad_line` is fatal; with skip it is
    recorded in `Loaded.bad_lines` and left out."""
    out = Loaded()
    bad = out.bad_lines if g.on_bad_line == "skip" else None
    for path in g.prompts or []:
        out.prompts += _read_file(path, g.system_prompt, bad)
    for src in g.sources:
        got: list[Prompt] = []
        if isinstance(src, FileSource):
            for path in src.path:
                got += _read_file(path, g.system_prompt, bad, format=src.format, level=src.level,
                                  source=src.source, tags=src.tags)
        elif isinstance(src, HFDatasetSource):
            got = dataset_prompts(src, g.system_prompt, bad)
        elif isinstance(src, TemplateSource):
            got = template_prompts(src, g.system_prompt)
        out.prompts += curriculum_order(got, "file", src.max_prompts) if src.max_prompts is not None else got
    return out


def _read_file(path, system_prompt, bad, **kwargs) -> list[Prompt]:
    try:
        return read_prompt_file(path, system_prompt, bad_lines=bad, **kwargs)
    except ValueError as e:  # "file:line: problem" (a byte that is not UTF-8 included)
        raise UserError(str(e)) from None


# -------------------------------------------------------------------------------------------- templates
def sandbox():
    """The Jinja environment every llmdistill template renders in (see the module docstring)."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


def render(template_text: str, variables: dict, where: str) -> str:
    """Render a template in the sandbox; any failure (syntax, undefined variable, unsafe access, include)
    is a UserError naming `where`."""
    import jinja2

    try:
        return sandbox().from_string(template_text).render(**variables).strip()
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"{where}:{e.lineno}: template syntax error: {e.message}") from None
    except TypeError as e:  # include/import without a loader
        raise UserError(f"{where}: template cannot render: {e}") from None
    except Exception as e:  # the sandbox refused, undefined variable, too large a string, ... (errors.py)
        problem = describe_template_error(e)
        if problem is None:
            raise
        raise UserError(f"{where}: template {problem}") from None


def template_prompts(src: TemplateSource, system_prompt: str | None) -> list[Prompt]:
    """One prompt per `grid` combination (in the order written), then one per `rows` entry.

    A variable named `answer` becomes the prompt's gold answer."""
    path = Path(src.template)
    try:
        text = textfile.read_text(path)
    except textfile.NotUTF8 as e:
        raise UserError(f"{path}:{e.line}: {e}") from None
    keys = list(src.grid)
    sets = [dict(zip(keys, values)) for values in itertools.product(*src.grid.values())] if keys else []
    sets += src.rows
    name = src.source or path.name.split(".")[0]
    out = []
    for i, variables in enumerate(sets):
        content = render(text, variables, f"{path} (variables #{i}: {variables})")
        if not content:
            raise UserError(f"{path}: renders to an empty prompt with variables {variables}")
        messages = [{"role": "user", "content": content}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        answer = variables.get("answer")
        out.append(Prompt(messages=messages, level=src.level, source=name,
                                  answer=None if answer is None else str(answer), tags=list(src.tags)))
    return out


# ------------------------------------------------------------------------------------------ hf datasets
def open_dataset(src: HFDatasetSource):
    """The configured split as a `datasets.Dataset`: a save_to_disk directory, or `load_dataset`."""
    import datasets

    path = Path(src.path)
    try:
        if path.is_dir() and any((path / f).exists() for f in ("state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if src.split not in ds:
                    raise UserError(f"{path}: no split {src.split!r} (has {', '.join(ds)})")
                ds = ds[src.split]
            return ds
        files = [str(f) for f in src.data_files] if src.data_files else None
        return datasets.load_dataset(src.path, src.name, split=src.split, data_files=files)
    except UserError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, ValueError, its own) for bad input
        raise UserError(f"dataset {src.path!r} (split {src.split!r}) cannot be loaded: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def dataset_prompts(src: HFDatasetSource, system_prompt: str | None, bad: list[str] | None) -> list[Prompt]:
    ds = open_dataset(src)
    wanted = [c for c in (src.prompt_column, src.level_column, src.answer_column) if c]
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise UserError(f"dataset {src.path!r}: no column {', '.join(map(repr, missing))} "
                        f"(columns: {', '.join(ds.column_names)})")
    if src.max_rows is not None:
        ds = ds.select(range(min(src.max_rows, len(ds))))
    name = src.source or Path(src.path).name
    out = []
    for i, row in enumerate(ds.select_columns(wanted)):
        obj = {"prompt": row[src.prompt_column], "level": row[src.level_column] if src.level_column else src.level,
               "answer": row[src.answer_column] if src.answer_column else None}
        try:
            out.append(prompt_from_dict(obj, Path(name), system_prompt, None, name, src.tags))
        except ValueError as e:
            message = f"{src.path}[row {i}]: {e}"
            if bad is None:
                raise UserError(message) from None
            bad.append(message)
    return out
