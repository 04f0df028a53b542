"""Map the tokens an OpenAI-compatible server names in `logprobs` to ids of the teacher's tokenizer.

Two ways, picked by `teacher.api.token_mapping`:

- token_ids: vLLM started with `--return-tokens-as-token-ids` (or a request carrying
  `return_tokens_as_token_ids`) names every token `token_id:N`: N is the id, nothing is guessed.
- tokenizer: the token's UTF-8 bytes (the `bytes` field of chat logprobs, else the token string) are
  looked up in a table built once from the local tokenizer's vocabulary (byte-level BPE as in GPT-2,
  Llama 3, Qwen, SmolLM; SentencePiece with `▁` and `<0xNN>` byte fallback as in Llama 2, Mistral). A
  token missing from the table is tried as a raw vocabulary string (some servers send those).

A token that does not map is never guessed: `lookup` returns None, and the caller counts it (an
unmapped sampled token fails the sample; an unmapped alternative is stored as UNMAPPED_ID, which
training treats as outside the vocabulary, so its mass joins the tail).
"""

from __future__ import annotations

import json
import re
from collections import Counter

# An id no vocabulary has (int32 max): the train losses move ids >= the vocabulary size into the tail.
UNMAPPED_ID = 2**31 - 1

_TOKEN_ID = re.compile(r"^token_id:(\d+)$")
_BYTES_TOKEN = re.compile(r"^bytes:((?:\\x[0-9a-fA-F]{2})+)$")  # OpenAI's form for a partial UTF-8 token
_SP_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte -> printable character table (the alphabet of byte-level BPE vocabularies)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _decoder_kinds(tokenizer) -> set[str]:
    """The decoder types of a fast tokenizer ("ByteLevel", "Metaspace", "ByteFallback", ...)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return set()
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except Exception:  # noqa: BLE001 - a tokenizer without a serialisable backend: fall back to strings
        return set()
    kinds = set()
    stack = [decoder]
    while stack:
        d = stack.pop()
        if isinstance(d, dict):
            if "type" in d:
                kinds.add(d["type"])
            stack.extend(d.get("decoders") or [])
    return kinds


def vocab_bytes(tokenizer) -> tuple[dict[bytes, int], int]:
    """(UTF-8 bytes of each vocabulary entry -> id, number of entries whose bytes another id already had).

    On a clash the lowest id wins (clashes are rare: byte-level BPE entries are distinct byte strings).
    """
    table: dict[bytes, int] = {}
    clashes = 0
    for i, raw in enumerate(id_bytes(tokenizer)):
        if raw is None:
            continue
        if raw in table:
            clashes += 1
            continue
        table[raw] = i
    return table, clashes


def id_bytes(tokenizer) -> list[bytes | None]:
    """The bytes each id of the vocabulary stands for (an added token: its own string; None for an id the
    vocabulary does not name), decoded as the tokenizer's decoder does (byte-level or SentencePiece)."""
    byte_level = "ByteLevel" in _decoder_kinds(tokenizer)
    decoder = _byte_decoder()
    added = set(getattr(tokenizer, "added_tokens_encoder", {}))
    vocab = tokenizer.get_vocab()
    out: list[bytes | None] = [None] * (max(vocab.values(), default=-1) + 1)
    for token, i in vocab.items():
        out[i] = _entry_bytes(token, token in added, byte_level, decoder)
    return out


def _entry_bytes(token: str, is_added: bool, byte_level: bool, decoder: dict[str, int]) -> bytes | None:
    if is_added:
        return token.encode("utf-8")
    if byte_level:
        if all(c in decoder for c in token):
            return bytes(decoder[c] for c in token)
        return token.encode("utf-8")
    m = _SP_BYTE.match(token)
    if m:
        return bytes([int(m.group(1), 16)])
    return token.replace("\u2581", " ").encode("utf-8")


def token_bytes(token: str, raw: list[int] | None) -> bytes:
    """The bytes a reply names for a token: its `bytes` list if given, else its string (`bytes:\\xNN` form too)."""
    if raw:
        return bytes(raw)
    m = _BYTES_TOKEN.match(token)
    if m:
        return bytes(int(h, 16) for h in m.group(1).split("\\x")[1:])
    return token.encode("utf-8")


class TokenMapper:
    """token (string, optional bytes) -> id of the teacher tokenizer, or None; counts what did not map."""

    def __init__(self, mode: str, tokenizer=None):
        if mode not in ("token_ids", "tokenizer"):
            raise ValueError(f"token mapping mode must be token_ids or tokenizer, got {mode!r}")
        if mode == "tokenizer" and tokenizer is None:
            raise ValueError("token mapping by tokenizer needs a tokenizer")
        self.mode = mode
        self.vocab_size = len(tokenizer) if tokenizer is not None else None
        self.table: dict[bytes, int] = {}
        self.vocab: dict[str, int] = {}
        self.clashes = 0
        if mode == "tokenizer":
            self.table, self.clashes = vocab_bytes(tokenizer)
            self.vocab = tokenizer.get_vocab()
        self.memo: dict[str, int | None] = {}  # token string -> id (see lookup)
        self.counts: Counter = Counter()
        self.examples: list[str] = []

    def lookup(self, token: str, raw: list[int] | None = None) -> int | None:
        """The id of a reply's token. Memoised in `memo` by the token string when that string names its bytes
        (it holds no U+FFFD, the stand-in for a piece of a UTF-8 character, whose bytes only `raw` tells)."""
        if "\ufffd" in token:
            return self._lookup(token, raw)
        try:
            return self.memo[token]
        except KeyError:
            i = self.memo[token] = self._lookup(token, raw)
            return i

    def _lookup(self, token: str, raw: list[int] | None) -> int | None:
        if self.mode == "token_ids":
            m = _TOKEN_ID.match(token)
            i = int(m.group(1)) if m else None
            if i is not None and self.vocab_size is not None and i >= self.vocab_size:
                i = None
        else:
            i = self.table.get(token_bytes(token, raw))
            if i is None:
                i = self.vocab.get(token)
        return i

    def note_unmapped(self, token: str, where: str) -> None:
        self.counts[f"unmapped_{where}"] += 1
        if len(self.examples) < 5 and repr(token) not in self.examples:
            self.examples.append(repr(token))

    def report(self) -> dict:
        return {"mode": self.mode, **dict(sorted(self.counts.items())), "unmapped_examples": list(self.examples),
                "vocab_clashes": self.clashes}
