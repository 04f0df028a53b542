"""The sample record: one row = one sample, the only thing stages hand to each other.

A row holds the prompt turns, the teacher's completion, its provenance and, in the SAME row, the
teacher signal: the teacher's own completion tokens and its top-k log-probabilities for every one of
them. Filters drop whole rows, so text and logits can never drift apart.

Teacher signal layout for a completion of T tokens and top-k width k:
    completion_token_ids  [T]      int32    the tokens the teacher emitted (never re-tokenised)
    topk_ids              [T][k]   int32    ids of the k most likely tokens at each step, best first
    topk_logprobs         [T][k]   float16  their log-probabilities (raw or processed: see the manifest)
Row t describes the distribution the teacher sampled token t from.

`scores` and `metadata` are stored as JSON text: Arrow maps do not round-trip through `datasets`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1

# Why a sample ended. A failed generation is kept with completion None and `error` set.
FINISH_REASONS = ("stop", "length", "error")


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of the canonical JSON of `obj` (sorted keys): equal content gives an equal hash."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=32).hexdigest()[:length]


def prompt_id(messages: list[dict], source: str) -> str:
    """Content hash of a prompt (its turns and where it came from)."""
    return stable_hash({"messages": messages, "source": source})


def record_id(messages: list[dict], source: str, template: str, teacher: str, gen: dict, sample_index: int) -> str:
    """The key of a sample for resume, caching and cross-run dedup.

    It covers everything that determines the sample: the source prompt, the template that rendered it,
    the teacher, the sampling parameters and which of the n samples per prompt this is.
    """
    return stable_hash(
        {
            "messages": messages,
            "source": source,
            "template": template,
            "teacher": teacher,
            "gen": gen,
            "sample_index": sample_index,
        },
        length=32,
    )


GEN_TYPE = pa.struct(
    [
        ("temperature", pa.float32()),
        ("top_p", pa.float32()),
        ("max_new_tokens", pa.int32()),
        ("seed", pa.int64()),
        ("sample_index", pa.int32()),
    ]
)
USAGE_TYPE = pa.struct([("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32())])
MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])


def arrow_schema() -> pa.Schema:
    """The Arrow schema of a sample shard. The one place the column layout is written down."""
    return pa.schema(
        [
            ("id", pa.string()),
            ("prompt_id", pa.string()),
            ("messages", pa.list_(MESSAGE_TYPE)),
            ("completion", pa.string()),
            ("source", pa.string()),
            ("teacher", pa.string()),
            ("gen", GEN_TYPE),
            ("usage", USAGE_TYPE),
            ("finish_reason", pa.string()),
            ("error", pa.string()),
            ("level", pa.int16()),
            ("difficulty", pa.float32()),
            ("scores", pa.string()),
            ("metadata", pa.string()),
            ("completion_token_ids", pa.list_(pa.int32())),
            ("topk_ids", pa.list_(pa.list_(pa.int32()))),
            ("topk_logprobs", pa.list_(pa.list_(pa.float16()))),
        ],
        metadata={"llmdistill.schema_version": str(SCHEMA_VERSION)},
    )


def removed_schema() -> pa.Schema:
    """Schema of removed rows: a sample plus the reason code that removed it."""
    return arrow_schema().append(pa.field("reason", pa.string()))


@dataclass
class Sample:
    """One sample. `topk_*` are numpy arrays of shape [T, k] (or None for a failed sample)."""

    id: str
    prompt_id: str
    messages: list[dict]
    completion: str | None
    source: str
    teacher: str
    gen: dict
    finish_reason: str
    level: int = 0
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    error: str | None = None
    difficulty: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    completion_token_ids: list[int] | None = None
    topk_ids: np.ndarray | None = None
    topk_logprobs: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}")
        if self.topk_ids is not None:
            ids, lps = np.asarray(self.topk_ids), np.asarray(self.topk_logprobs)
            if ids.ndim != 2 or ids.shape != lps.shape:
                raise ValueError(f"topk_ids {ids.shape} and topk_logprobs {lps.shape} must both be [T, k]")
            if self.completion_token_ids is None or len(self.completion_token_ids) != ids.shape[0]:
                raise ValueError("topk rows must match completion_token_ids one to one")

    @property
    def ok(self) -> bool:
        return self.completion is not None and self.error is None


# Fields stored as they are; scores/metadata go through JSON and the top-k matrices through offsets.
_PLAIN_FIELDS = ("id", "prompt_id", "messages", "completion", "source", "teacher", "gen", "usage",
                 "finish_reason", "error", "level", "difficulty", "completion_token_ids")
# The JSON text columns, and whether each escapes non-ASCII characters (scores do, metadata keeps them).
JSON_COLUMNS = {"scores": True, "metadata": False}
# The teacher's top-k matrices, stored as list<list<x>> through offsets, and their dtypes.
_TOPK_DTYPES = {"topk_ids": np.int32, "topk_logprobs": np.float16}


def encode_json_column(value: dict, column: str) -> str:
    """The stored text of a `scores` or `metadata` value (the one encoding of these columns: sorted keys)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=JSON_COLUMNS[column])


def decode_json_column(text: str | None) -> dict:
    """A `scores` or `metadata` value from its stored text (null or empty: {})."""
    return json.loads(text or "{}")


def samples_to_table(samples: list[Sample], reasons: list[str] | None = None) -> pa.Table:
    """Build an Arrow table from samples (columnar, no per-float Python objects for the top-k)."""
    schema = removed_schema() if reasons is not None else arrow_schema()
    cols: dict[str, Any] = {}
    for name in _PLAIN_FIELDS:
        cols[name] = [getattr(s, name) for s in samples]
    for name in JSON_COLUMNS:
        cols[name] = [encode_json_column(getattr(s, name), name) for s in samples]
    for name, dtype in _TOPK_DTYPES.items():
        cols[name] = _nested(samples, name, dtype, pa.from_numpy_dtype(dtype))
    if reasons is not None:
        cols["reason"] = reasons
    arrays = []
    for f in schema:
        value = cols[f.name]
        arrays.append(value if isinstance(value, pa.Array) else pa.array(value, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _nested(samples: list[Sample], name: str, np_dtype, pa_type) -> pa.Array:
    """list<list<x>> from per-sample [T, k] arrays, via offsets (fast for long completions)."""
    mats = [getattr(s, name) for s in samples]
    valid = [m is not None for m in mats]
    mats_ok = [np.asarray(m, dtype=np_dtype) for m in mats if m is not None]
    k_rows = [m.shape[1] for m in mats_ok for _ in range(m.shape[0])]
    flat = np.concatenate([m.reshape(-1) for m in mats_ok]) if mats_ok else np.zeros(0, dtype=np_dtype)
    inner_offsets = np.concatenate([[0], np.cumsum(k_rows, dtype=np.int64)]).astype(np.int32)
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets), pa.array(flat, type=pa_type))
    outer_offsets, pos = [0], 0
    for m, ok in zip(mats, valid):
        pos += np.asarray(m).shape[0] if ok else 0
        outer_offsets.append(pos)
    mask = pa.array([not ok for ok in valid])
    return pa.ListArray.from_arrays(pa.array(outer_offsets, type=pa.int32()), inner, mask=mask)


def table_to_samples(table: pa.Table) -> list[Sample]:
    """Inverse of `samples_to_table` (the `reason` column, if any, is dropped). A table read without some
    columns (the filter stage reads no teacher signal for most steps) gives samples with those fields at
    their defaults."""
    present = set(table.column_names)
    plain = [name for name in _PLAIN_FIELDS if name in present]
    py = {name: table.column(name).to_pylist() for name in plain}
    json_cols = {name: [decode_json_column(t) for t in table.column(name).to_pylist()]
                 for name in JSON_COLUMNS if name in present}
    topk = {name: table.column(name) for name in _TOPK_DTYPES if name in present}
    return [
        Sample(
            **{name: py[name][i] for name in plain},
            **{name: values[i] for name, values in json_cols.items()},
            **{name: _matrix(col[i], _TOPK_DTYPES[name]) if col[i].is_valid else None for name, col in topk.items()},
        )
        for i in range(table.num_rows)
    ]



def _matrix(scalar: pa.ListScalar, dtype) -> np.ndarray:
    """A list<list<x>> scalar as a [T, k] array."""
    rows = scalar.values  # ListArray of T rows
    if len(rows) == 0:
        return np.zeros((0, 0), dtype=dtype)
    flat = rows.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return flat.reshape(len(rows), -1)


def sample_to_dict(sample: Sample) -> dict:
    """A JSON-friendly view of a sample (top-k matrices as lists)."""
    d = asdict(sample)
    for name in ("topk_ids", "topk_logprobs"):
        if d[name] is not None:
            d[name] = np.asarray(d[name]).tolist()
    return d
