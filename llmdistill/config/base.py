"""What every config section shares: the `Section` base (unknown keys are errors), path and model-source
types, `ConfigError` and the NOT_HASHED marker (keys are kept out of a config by `llmdistill.credentials`).
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo

from llmdistill.errors import UserError

# Model sources that are not a local directory or a hub id: names llmdistill knows how to materialise.
MODEL_ALIASES = ("smollm2-135m-instruct", "gemma-3-270m", "all-minilm-l6-v2", "minilm-static")


class ConfigError(UserError):
    """One or more problems with a config. `errors` holds one line per problem."""

    def __init__(self, errors: list[str], source: str = "config"):
        self.errors = errors
        self.source = source
        super().__init__(f"{source}: " + "; ".join(errors))


def _resolve_path(value: str | Path, info: ValidationInfo) -> Path:
    """Relative paths from the config file resolve against its directory; from overrides, against the cwd."""
    ctx = info.context or {}
    path = Path(os.path.expanduser(str(value)))
    if not path.is_absolute():
        base = Path.cwd() if str(value) in ctx.get("override_values", ()) else Path(ctx.get("base_dir", "."))
        path = (base / path).resolve()
    return path


def _cwd_path(value: str | Path) -> Path:
    return Path(os.path.expanduser(str(value))).resolve()


def _input_file(value: str | Path, info: ValidationInfo) -> Path:
    path = _resolve_path(value, info)
    problem = file_problem(path)
    if problem:
        raise ValueError(problem)
    return path


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a file ("file not found: P", "P is a directory, not a file", ...), or None."""
    if path.is_file():
        return None
    if path.is_dir():
        return f"{path} is a directory, not a file"
    if path.exists():
        return f"{path} is not a regular file"
    if path.is_symlink():
        return f"file not found: {path} (a symbolic link to the missing {os.readlink(path)})"
    return f"file not found: {path}"


# A hub id: `name` or `owner/name`, each part letters, digits, '_', '-', '.' (starting and ending with a letter,
# digit or '_'; no '--' or '..'; at most 96 characters), as the Hugging Face hub names repositories.
_HUB_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")


def is_hub_id(value: str) -> bool:
    """Whether `value` is spelled as a hub id (it cannot be looked up offline)."""
    parts = value.split("/")
    return len(parts) <= 2 and not value.endswith(".git") and all(
        _HUB_PART.fullmatch(p) and "--" not in p and ".." not in p for p in parts)


def _model_source(value: str, info: ValidationInfo) -> str:
    """The one check of every model field: an alias stays as is; an existing directory becomes absolute;
    ./x, ../x, /x or ~/x must exist; anything else must be spelled as a hub id (`name` or `owner/name`, whose
    `owner` is not a local directory: then it is a path that is missing). A hub id cannot be checked offline,
    and validate loads nothing."""
    if value in MODEL_ALIASES:
        return value
    path = _resolve_path(value, info)
    if path.is_dir():
        return str(path)
    if value.startswith((".", "/", "~")) or ("/" in value and path.parent.is_dir()):
        raise ValueError(f"model directory not found: {path}")
    if not is_hub_id(value):
        raise ValueError(f"{value} is neither an existing directory nor a hub id (owner/name)")
    return value


def _real_dir(value: str) -> str:
    """A local directory with its symlinks resolved (a hub id or alias is left as is)."""
    return str(Path(value).resolve()) if Path(value).is_dir() else value


# ---- numbers with a bound set by what uses them, checked when the config is read (not when a shard is written)
# A seed seeds numpy too (transformers' set_seed in training): 0 <= seed < 2**32.
Seed = Annotated[int, Field(ge=0, lt=2**32)]
# A curriculum level; stored as int16 (records.py), with room for the levels evolution adds (generate.evolve.rounds).
MAX_LEVEL = 10_000
Level = Annotated[int, Field(ge=0, le=MAX_LEVEL)]
# Tokens generated for one reply: more than any model answers in one reply, and within the int32 column of
# records.py. A local model's context is the tighter bound: the stage that knows it checks it before generating.
MAX_NEW_TOKENS = 1 << 20
NewTokens = Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS)]

InputFile = Annotated[Path, AfterValidator(_input_file)]
ModelSource = Annotated[str, AfterValidator(_model_source)]
# one path or a list of paths
InputFiles = Annotated[list[InputFile], BeforeValidator(lambda v: [v] if isinstance(v, (str, Path)) else v)]
OutputDir = Annotated[Path, AfterValidator(_cwd_path)]


# ---- experiment trackers (train.report_to, report_to of a BERT run; llmdistill/tracking.py logs to them)
Tracker = Literal["tensorboard", "mlflow", "trackio"]
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "trackio": "trackio"}  # what each one imports


def _trackers(names: list[str]) -> list[str]:
    """Each tracker once, and installed here (found without importing it: validate stays fast)."""
    import importlib.util

    if len(set(names)) != len(names):
        raise ValueError(f"each tracker once, got {names}")
    missing = [n for n in names if importlib.util.find_spec(TRACKER_PACKAGES[n]) is None]
    if missing:
        raise ValueError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed here "
                         f"(pip install {' '.join(TRACKER_PACKAGES[n] for n in missing)}, or scripts/setup.sh, which "
                         "installs requirements.txt)")
    return names


ReportTo = Annotated[list[Tracker], AfterValidator(_trackers)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# ---- names: every union and Literal is the only list of its names; these read them back
def unwrap(tp: Any) -> Any:
    """`tp` without its `Annotated[...]` wrappers."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def literal_values(tp: Any, field: str | None = None) -> tuple:
    """The values of a Literal type, or of the Literal annotation of `tp`'s field `field` (`list[Literal]` too):
    `literal_values(TeacherConfig, "backend")` -> ("hf", "vllm", "openai")."""
    if field is not None:
        tp = tp.model_fields[field].annotation
    tp = unwrap(tp)
    if typing.get_origin(tp) is list:
        tp = unwrap(typing.get_args(tp)[0])
    if typing.get_origin(tp) is not Literal:
        raise TypeError(f"{tp!r} is not a Literal")
    return typing.get_args(tp)


def discriminator(tp: Any) -> str | None:
    """The field that picks the member of a discriminated union `Annotated[A | B, Field(discriminator=...)]`."""
    while typing.get_origin(tp) is Annotated:
        for meta in tp.__metadata__:
            if isinstance(getattr(meta, "discriminator", None), str):
                return meta.discriminator
        tp = typing.get_args(tp)[0]
    return None


def union_members(union: Any) -> dict[str, type[BaseModel]]:
    """Tag -> member model of a discriminated union, in the union's order (each member's discriminator Literal)."""
    key = discriminator(union)
    if key is None:
        raise TypeError(f"{union!r} is not a discriminated union")
    return {tag: m for m in typing.get_args(unwrap(union)) for tag in literal_values(m, key)}


def union_tags(union: Any) -> tuple[str, ...]:
    """The tags of a discriminated union, in its order: `union_tags(FilterStep)` -> ("failed", "empty", ...)."""
    return tuple(union_members(union))


# Fields marked NOT_HASHED decide how a stage runs (when it stops, how hard it retries), not what it writes: they
# are left out of the stage fingerprints, so changing one resumes the stage instead of redoing it (and adding one
# keeps the fingerprints of existing runs).
NOT_HASHED = {"fingerprint": False}
# Fields that were hashed before they stopped deciding what a stage writes (train.report_to): hashed at their
# default whatever the config says, so changing one retrains nothing and existing runs keep their fingerprints.
HASHED_AS_DEFAULT = {"fingerprint": "default"}

RAY_ADDRESS_HELP = ("executor ray: the cluster: auto (the one started on this machine, or $RAY_ADDRESS), host:port "
                    "(its GCS), ray://host:port (Ray Client, needs ray[client]), local (a new one in this process); "
                    "null: ray.init()'s choice (a cluster found as for auto, else a new local one)")


def check_ray_address(v: str | None) -> str | None:
    """A Ray cluster address (generate.ray_address, filter.ray_address): auto, local, host:port or ray://host:port."""
    if v is None or v in ("auto", "local"):
        return v
    host, _, port = v.removeprefix("ray://").rpartition(":")
    port_ok = port.isascii() and port.isdigit() and 0 < int(port) < 65536  # ASCII: "²".isdigit() is True
    if not (host and port_ok) or any(c.isspace() or c in "/@" for c in host):
        raise ValueError(f"{v!r} is not auto, local, host:port or ray://host:port")
    return v
