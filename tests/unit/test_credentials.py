"""The one detector of key-like strings (llmdistill/credentials.py): keys as issued are found wherever they are
written, and ordinary URLs, model names, hub ids, paths, hashes and real prompts pass untouched.

Keys here are made up (a seeded random body behind each issuer's prefix), never real ones."""

from __future__ import annotations

import base64
import glob
import json
import random
import string
from pathlib import Path

import pytest
import yaml

from llmdistill.config import Config, ConfigError, load_config
from llmdistill.credentials import find_keys, looks_like_key, redact, safe_url, secret_name, text_problem

REPO = Path(__file__).resolve().parents[2]
RNG = random.Random(28)
ALNUM = string.ascii_letters + string.digits


def rand(n: int, alphabet: str = ALNUM) -> str:
    return "".join(RNG.choice(alphabet) for _ in range(n))


KEYS = {
    "openai": "sk-" + rand(48),
    "openai project": "sk-proj-" + rand(120, ALNUM + "-_"),
    "anthropic": "sk-ant-api03-" + rand(93, ALNUM + "-_") + "AA",
    "hugging face": "hf_" + rand(34, string.ascii_letters),
    "github": "ghp_" + rand(36),
    "github oauth": "gho_" + rand(36),
    "github fine-grained": "github_pat_" + rand(22) + "_" + rand(59),
    "gitlab": "glpat-" + rand(20, ALNUM + "-_"),
    "slack": "xoxb-123456789012-1234567890123-" + rand(24),
    "aws": "AKIA" + rand(16, string.ascii_uppercase + "234567"),
    "google": "AIza" + rand(35, ALNUM + "-_"),
    "stripe": "sk_live_" + rand(24),
    "no prefix": rand(32),
    "jwt": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0." + rand(43, ALNUM + "-_"),
}
ORDINARY = [
    # model names and hub ids
    "meta-llama/Llama-3.1-8B-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
    "Qwen/Qwen2.5-Coder-32B-Instruct-GPTQ-Int4", "nvidia/Llama-3_3-Nemotron-Super-49B-v1_5", "gpt-4o-mini-2024-07-18",
    "claude-3-5-sonnet-20241022", "TinyLlama-1.1B-intermediate-step-1431k-3T", "Llama-3.2-1B-Instruct-Q4_K_M",
    "sentence-transformers/all-MiniLM-L6-v2", "DeepSeekR1DistillQwen7BInstruct", "smollm2-135m-instruct",
    "sk-learn-pipeline-models-v2",
    # URLs (a random-looking host stays a host)
    "http://127.0.0.1:8000/v1", "https://api.openai.com/v1", "https://my-resource.openai.azure.com/openai/deployments/gpt-4o/",
    "https://xyz-abc123.us-east-1.aws.endpoints.huggingface.cloud/v1", "http://localhost:8080/v1?api-version=2024-06-01",
    "https://a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6.lambda-url.us-east-1.on.aws/v1",
    "https://api-inference.huggingface.co/models/meta-llama/Llama-3.1-8B-Instruct/v1",
    # paths and hashes a user writes
    "/root/.cache/huggingface/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/"
    "12fd25f77366fa6b3b4b768ec3050bf629380bac",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "550e8400-e29b-41d4-a716-446655440000",
    "/tmp/pytest-of-root/pytest-12/test_planted_keys_appear_in_no_file0/runs", "~/runs/demo-2024-12-01T10-22-33",
    # prompts
    "You are a helpful assistant. Answer briefly \u201clike this\u201d \u2014 na\u00efve caf\u00e9, "
    "\u6771\u4eac\u306e\u5929\u6c17 \U0001f642",
    "Explain the Bearer token scheme in HTTP authentication.", "Basic arithmetic: what is 12 + 30?",
    "the bearer of bad news", "Write a function: sorted(xs, key=lambda x: x[1])", "${OPENAI_API_KEY} answer briefly",
]


@pytest.mark.parametrize("kind", KEYS)
def test_keys_as_issued_are_found_alone_in_text_in_a_url_and_after_bearer(kind):
    key = KEYS[kind]
    assert looks_like_key(key.split(".")[0]) and text_problem(key)
    assert text_problem(f"my key is {key}, keep it safe")  # inside a prompt-like text with spaces
    assert text_problem(f"Bearer {key}") and text_problem(f"Authorization: Bearer {key}")
    assert text_problem(f"http://10.0.0.5:8000/{key}/v1") == "looks like an API key in the URL path"
    assert text_problem(f"http://10.0.0.5:8000/v1?code={key}") == "looks like an API key in the URL query string"
    for text in (key, f"failed: Bearer {key} was refused", f"http://h/{key}/v1?x={key}"):
        assert key not in redact(text) and "[redacted]" in redact(text)
    assert safe_url(f"http://10.0.0.5:8000/{key}/v1?code={key}") == "http://10.0.0.5:8000/[redacted]/v1"


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_names_urls_paths_hashes_and_prompts_pass(text):
    assert text_problem(text) is None
    assert redact(text) == text


def test_no_string_of_the_shipped_configs_data_and_docs_is_taken_for_a_key():
    """Input nobody here wrote: 38k tweets, BBC-style facts, the demo prompts, every config and doc."""
    def strings(x):
        if isinstance(x, dict):
            for k, v in x.items():
                yield str(k)
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)
        elif isinstance(x, str):
            yield x

    found, checked = [], 0
    for path in sorted(glob.glob(str(REPO / "data/**/*.jsonl"), recursive=True)):
        for line in open(path, encoding="utf-8"):
            for s in strings(json.loads(line)):
                checked += 1
                if text_problem(s):
                    found.append((path, s[:120]))
    for path in sorted(glob.glob(str(REPO / "configs/**/*.yaml"), recursive=True)):
        found += [(path, s) for s in strings(yaml.safe_load(Path(path).read_text())) if text_problem(s)]
    for path in sorted(glob.glob(str(REPO / "docs/*.md")) + glob.glob(str(REPO / "prompts/*"))):
        found += [(path, s[:120]) for s in Path(path).read_text(encoding="utf-8").splitlines() if text_problem(s)]
    assert checked > 20_000 and not found, found[:10]


def test_authorization_credentials_need_a_credential_after_the_scheme():
    assert text_problem("Basic " + base64.b64encode(b"llmd:hunter2").decode())
    assert text_problem("Bearer abc123def456") and text_problem("bearer Zq8x41LmPw")
    assert text_problem("Bearer bonds pay interest") is None and text_problem("Basic Concepts") is None


def test_url_credentials_and_secret_named_parameters():
    assert text_problem("http://llmd:PassW0rd@host/v1") == "holds credentials (user:password@host)"
    assert text_problem("http://host/v1?api_key=tok-77") == "holds a key in the URL query string (parameter 'api_key')"
    assert text_problem("http://host/v1#access_token=abc") == \
        "holds a key in the URL fragment (parameter 'access_token')"
    assert text_problem("http://host/v1?api_key=") is None  # nothing in it
    assert safe_url("https://llmd:PassW0rd@host:8443/v1?api_key=x") == "https://host:8443/v1"
    assert redact("GET http://llmd:PassW0rd@host/v1?api_key=tok-77&n=1") == \
        "GET http://[redacted]@host/v1?api_key=[redacted]&n=1"


@pytest.mark.parametrize("name", ["api_key", "X-Api-Key", "authorization", "hf_token", "password", "client_secret",
                                  "token", "AWS_SECRET_ACCESS_KEY"])
def test_secret_names(name):
    assert secret_name(name)


@pytest.mark.parametrize("name", ["max_tokens", "tokenizer", "token_mapping", "top_k", "api_key_env", "pad_token_id",
                                  "key", "keys", "monkey", "model", "served_model"])
def test_not_secret_names(name):
    assert not secret_name(name)


def test_no_config_field_is_named_like_a_secret():
    """The config walk takes any value under a secret's name for a key: no field of ours may be named so."""
    from pydantic import BaseModel

    from llmdistill.config import BertDistillConfig

    def names(model, seen):
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            yield name
            for tp in _types(field.annotation):
                if isinstance(tp, type) and issubclass(tp, BaseModel):
                    yield from names(tp, seen)

    bad = [n for root in (Config, BertDistillConfig) for n in names(root, set()) if secret_name(n)]
    assert not bad


def _types(tp):
    import typing

    yield tp
    for arg in typing.get_args(tp):
        yield from _types(arg)


def test_find_keys_names_the_path_and_never_the_value():
    key = KEYS["openai project"]
    data = {"teacher": {"api": {"extra_body": {"authorization": f"Bearer {key}", "top_k": 50,
                                               "headers": [{"x-api-key": "short"}]}}},
            "generate": {"system_prompt": f"use {KEYS['hugging face']}"}, "fine": ["a", 1, None]}
    found = list(find_keys(data))
    assert [w for w, _ in found] == ["teacher.api.extra_body.authorization",
                                     "teacher.api.extra_body.headers.0.x-api-key", "generate.system_prompt"]
    assert not any(key in problem for _, problem in found)


def test_every_string_of_the_config_is_checked(tiny_config):
    """Not a list of fields: a key anywhere (a system prompt, an eval task, a second teacher's extra_body, a
    path) is one line naming where it is, and the value is in no line."""
    path, data = tiny_config
    key = KEYS["anthropic"]
    cases = {
        "generate.system_prompt": ["generate.system_prompt=Answer with Bearer " + key],
        "teacher.api.base_url": ["teacher.backend=openai", f"teacher.api.base_url=http://127.0.0.1:9/{key}/v1"],
        "teacher.api.extra_body.authorization": ["teacher.backend=openai",
                                                 f"teacher.api.extra_body={{authorization: 'Bearer {key}'}}"],
        "name": [f"output_dir={path.parent}/runs-{KEYS['github']}"],
    }
    for where, overrides in cases.items():
        where = "output_dir" if where == "name" else where
        with pytest.raises(ConfigError) as e:
            load_config(path, overrides)
        lines = e.value.errors
        assert any(line.startswith(f"{where}: ") for line in lines), lines
        assert key not in str(e.value) and KEYS["github"] not in str(e.value)
        assert "put keys in the environment (api_key_env)" in str(e.value)


def test_a_key_is_reported_with_the_other_errors_and_not_echoed_by_them(tiny_config):
    path, _ = tiny_config
    key = KEYS["openai"]
    with pytest.raises(ConfigError) as e:
        load_config(path, ["train.batch_size=oops", f"generate.system_prompt=hi {key}", f"train.lr={key}"])
    text = str(e.value)
    assert "train.batch_size:" in text and "generate.system_prompt: looks like an API key" in text
    assert "train.lr:" in text and key not in text  # a key given where a number goes: the error redacts it
