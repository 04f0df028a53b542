"""The one detector of key-like strings: what a config may not hold, and what a log line must not show.

A config is written to the run directory (config.resolved.yaml, manifests) and parts of it to logs, so every
string in it is checked (`find_keys`, at the config boundary) and keys are refused, never echoed: they
belong in the environment (`teacher.api.api_key_env` names the variable). Logs show URLs through `safe_url`
and error texts through `redact`.

What counts as a key:
- a known issuer's prefix (`sk-`, `sk-proj-`, `sk-ant-`, `hf_`, `ghp_`, `glpat-`, `xoxb-`, `AKIA`, `AIza`, ...)
  followed by 16 or more characters that are not words (`sk-learn-pipeline-models` is not a key);
- the value of an HTTP `Bearer` or `Basic` credential (`Bearer abc123...`; `Basic` base64 of `user:password`);
- a run of 20 or more letters and digits drawn like a random token: letters and digits (or both cases)
  mixed, few dictionary-like stretches (`DeepSeekR1DistillQwen7BInstruct` is a name, not a key), high
  entropy. Hexadecimal runs are hashes a user writes (a git revision, a sha256), not keys;
- in a URL: a password (`user:password@host`), or a key in its path, query or fragment;
- any non-empty value under a name that says it is one (`api_key`, `token`, `authorization`, `password`,
  `secret`, `*_api_key`, `*_token`, ...) in a mapping or a URL's query string.
A value with no such shape and no such name cannot be told from ordinary text (a short password in a
prompt): the detector aims at keys as issued, and at ordinary URLs, model names, hub ids, paths, hashes
and prompts passing untouched.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# Prefixes of API keys and tokens as issued (OpenAI, Anthropic, Hugging Face, GitHub, GitLab, Slack, AWS,
# Google, Stripe, Groq, xAI, Perplexity, NVIDIA, Replicate, Together, Fireworks)
KEY_PREFIXES = ("sk-", "sk_", "hf_", "ghp_", "gho_", "ghs_", "ghu_", "ghr_", "github_pat_", "glpat-", "xoxb-",
                "xoxp-", "xoxa-", "xapp-", "AKIA", "ASIA", "AIza", "rk_", "pk_live_", "pk_test_", "gsk_", "xai-",
                "pplx-", "nvapi-", "r8_", "tgp_", "fw_")
# names that say their value is a secret, compared lower-case without `-` and `_` (`X-Api-Key` -> xapikey)
# (not a bare `key`: a filter scorer's `key` names a score; `?key=AIza...` is found by its shape)
SECRET_NAMES = frozenset({"token", "auth", "authorization", "password", "passwd", "pwd", "secret", "sig",
                          "signature", "credential", "credentials", "bearer", "cookie"})
SECRET_SUFFIXES = ("apikey", "accesskey", "secretkey", "privatekey", "secret", "password", "passwd",
                   "accesstoken", "authtoken", "apitoken", "idtoken", "refreshtoken", "sessiontoken", "hftoken",
                   "bearertoken", "signature", "credentials")
REDACTED = "[redacted]"
ADVICE = "put keys in the environment (api_key_env): the config is written to the run directory"

_TOKEN = re.compile(r"[A-Za-z0-9_-]+")  # what a key is made of; `/ . : ? & = + ~` and spaces end one
_RUN = re.compile(r"[A-Za-z0-9]+")
_WORD = re.compile(r"[A-Za-z0-9._~+-]+=*")  # what redaction replaces whole: a JWT's three parts, base64 with + and =
_WORDISH = re.compile(r"[A-Z]?[a-z]{3,}")  # "Instruct", "Deep", "Qwen": stretches of a word (with a vowel)
_HEX = re.compile(r"[0-9a-f]+|[0-9A-F]+")
_AUTH = re.compile(r"\b(Bearer|Basic)\s+([A-Za-z0-9._~+/=-]+)", re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_QUERY_VALUE = re.compile(r"([?&#;]([^=&#\s]+)=)([^&#\s]*)")
MIN_RANDOM = 20  # letters and digits in a row, before one counts as a random token


def secret_name(name: str) -> bool:
    """Whether a field or parameter name says its value is a secret (`api_key`, `X-Api-Key`, `hf_token`)."""
    n = name.lower().replace("-", "").replace("_", "")
    return n in SECRET_NAMES or n.endswith(SECRET_SUFFIXES)


def _entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _classes(s: str) -> int:
    """How many of digits, upper-case and lower-case letters `s` mixes."""
    return any(c.isdigit() for c in s) + any(c.isupper() for c in s) + any(c.islower() for c in s)


def _wordy(s: str) -> float:
    """The share of `s` in word-like stretches ("Distill", "Instruct": three or more lower-case letters with a
    vowel, after an optional capital). Names made of words score high; random tokens low (at 20 characters,
    2.5 % of random tokens reach 0.5; at 32, 1 %)."""
    return sum(len(m) for m in _WORDISH.findall(s) if re.search("[aeiouAEIOU]", m)) / len(s)


def _random_run(run: str, minimum: int) -> bool:
    """A run of letters and digits drawn like a random token: long enough, two character classes mixed, less
    than half of it word-like, high entropy (a random 20-character token has about 4.1 bits a character)."""
    if len(run) < minimum or _HEX.fullmatch(run) or _classes(run) < 2 or _wordy(run) >= 0.5:
        return False
    return _entropy(run) >= min(3.5, math.log2(len(run)) - 0.8)


def looks_like_key(token: str, strict: bool = False) -> bool:
    """Whether one token (no spaces, no URL punctuation) is a key: a known prefix followed by 16 or more
    characters holding a run of 12 letters and digits of two classes (`sk-learn-pipeline-models` is not a
    key), or a random-looking run of letters and digits anywhere.

    strict: where a NAME is expected (an environment variable's), any known prefix counts, and so does a
    random-looking part of 16 or more characters between underscores, hexadecimal too (a variable's name
    is never a hash)."""
    prefix = next((p for p in KEY_PREFIXES if token.startswith(p)), None)
    if prefix is not None:
        rest = token[len(prefix):]
        if strict or (len(rest) >= 16 and any(len(run) >= 12 and _classes(run) >= 2 for run in _RUN.findall(rest))):
            return True
    if strict:
        return any(len(part) >= 16 and any(c.isdigit() for c in part) and any(c.isalpha() for c in part)
                   and _entropy(part) >= 3.0 for part in token.split("_"))
    return any(_random_run(run, MIN_RANDOM) for run in _RUN.findall(token))


def _auth_value(scheme: str, value: str) -> bool:
    """An Authorization header's credential: `Basic` base64 of user:password, `Bearer` a token (not a word:
    "Bearer bonds" is English)."""
    if scheme.lower() == "basic":
        try:
            return ":" in base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
    return len(value) >= 8 and not re.fullmatch(r"[A-Za-z][a-z]*[.,;:!?]?", value)


def text_problem(text: str) -> str | None:
    """Why a string (a prompt, a path, a name, a URL) holds a key, or None. A string that is one URL is judged
    as a URL (`url_problem`: its host is never a key); any other text by its Authorization credentials and
    its tokens."""
    stripped = text.strip()
    if _URL.fullmatch(stripped):
        return url_problem(stripped)
    for m in _AUTH.finditer(text):
        if _auth_value(m.group(1), m.group(2)):
            return f"holds an Authorization credential ({m.group(1).capitalize()} ...)"
    if any(looks_like_key(t) for t in _TOKEN.findall(text)):
        return "looks like an API key"
    return None


def url_problem(url: str) -> str | None:
    """Why a URL holds a key (a password, a key in its path, query or fragment), or None. The URL's shape
    itself (scheme, host) is not judged here."""
    try:
        parts = urlsplit(url)
        userinfo = parts.username is not None or parts.password is not None
    except ValueError:
        return None
    if userinfo:
        return "holds credentials (user:password@host)"
    if any(looks_like_key(t) for t in _TOKEN.findall(parts.path)):
        return "looks like an API key in the URL path"
    for where, text in (("query string", parts.query), ("fragment", parts.fragment)):
        pairs = parse_qsl(text, keep_blank_values=True)
        if any(secret_name(name) and value for name, value in pairs):
            return f"holds a key in the URL {where} (parameter {next(n for n, v in pairs if secret_name(n) and v)!r})"
        if any(looks_like_key(t) for t in _TOKEN.findall(text)):
            return f"looks like an API key in the URL {where}"
    return None


def find_keys(value: Any, path: tuple = ()) -> Iterator[tuple[str, str]]:
    """(dotted path, problem) for every string in `value` (nested dicts, lists, strings, paths; a config as
    `model_dump()` gives it) that holds a key. A mapping's keys are checked as text too, and a non-empty value
    under a secret's name (`api_key`, `authorization`) is one whatever its shape. Values are never shown."""
    where = ".".join(map(str, path)) or "config"
    if isinstance(value, dict):
        for k, v in value.items():
            k = str(k)
            if text_problem(k):
                yield where, "holds an API key as the name of an entry"
            elif secret_name(k) and isinstance(v, str) and v.strip() and not _reference(v):
                yield ".".join(map(str, (*path, k))), f"is a credential ({k!r} holds a secret)"
            else:
                yield from find_keys(v, (*path, k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from find_keys(v, (*path, i))
    elif isinstance(value, str) or hasattr(value, "__fspath__"):
        problem = text_problem(str(value))
        if problem:
            yield where, problem


def _reference(value: str) -> bool:
    """`${NAME}`: a reference to an environment variable, which holds no secret itself."""
    return re.fullmatch(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", value.strip()) is not None


def redact(text: str) -> str:
    """`text` with every key-like part replaced by [redacted]: tokens, Authorization credentials, a URL's
    password and its secret-named query values (a URL's host stays readable). Ordinary text is returned
    unchanged."""
    text = _AUTH.sub(lambda m: f"{m.group(1)} {REDACTED}" if _auth_value(m.group(1), m.group(2)) else m.group(0),
                     text)
    out, last = [], 0
    for m in _URL.finditer(text):
        out += [_WORD.sub(_redact_word, text[last:m.start()]), _redact_url(m.group(0))]
        last = m.end()
    return "".join([*out, _WORD.sub(_redact_word, text[last:])])


def _redact_url(url: str) -> str:
    """A URL in a text with its password, secret-named parameters and key-like parts redacted; the host kept."""
    scheme, _, rest = url.partition("://")
    end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    host, tail = rest[:end], rest[end:]
    if "@" in host:
        host = f"{REDACTED}@{host.rsplit('@', 1)[1]}"
    tail = _QUERY_VALUE.sub(lambda m: m.group(1) + REDACTED if secret_name(m.group(2)) and m.group(3) else m.group(0),
                            tail)
    return f"{scheme}://{host}{_WORD.sub(_redact_word, tail)}"


def _redact_word(m: re.Match) -> str:
    return REDACTED if any(looks_like_key(t) for t in _TOKEN.findall(m.group(0))) else m.group(0)


def safe_url(url: str) -> str:
    """A URL as logs and manifests show it: scheme, host, port and path (key-like path parts redacted),
    without user:password, query or fragment. The host stays readable."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:
        return REDACTED
    path = _WORD.sub(_redact_word, parts.path)
    return f"{parts.scheme}://{host}{path}" if parts.scheme else f"{host}{path}"
