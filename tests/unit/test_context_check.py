"""teachers.ContextCheck: prompt tokens against the teacher's context, without tokenising what is far too long."""

from __future__ import annotations

import random

import pytest

from conftest import build_tokenizer
from llmdistill import models
from llmdistill.teachers import TOO_LONG, ContextCheck, PromptTooLong, is_transient


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def texts(n: int = 60):
    rng = random.Random(0)
    pieces = ["the", "sky", " ", "\u00a0", "\u2019", "déjà", "日本語", "🙂", "<|im_end|>", "\n", "x" * 40, "12345",
              "—"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 400))) for _ in range(n)]


def test_the_byte_bound_never_exceeds_the_real_count(tok):
    check = ContextCheck(tok, context=10**9, max_new_tokens=0, policy="skip")
    assert check._widest is not None  # byte-level BPE without a normaliser: the shortcut applies
    for text in texts():
        messages = [{"role": "user", "content": text}]
        rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        least = -(-len(rendered.encode()) // check._widest)
        assert least <= len(models.encode_prompt(tok, messages))


def test_decisions_match_the_exact_count(tok):
    for text in texts(30):
        messages = [{"role": "user", "content": text}]
        n = len(models.encode_prompt(tok, messages))
        for context in (n + 3, n + 2):  # room for max_new_tokens 3, or one token short
            out = ContextCheck(tok, context, 3, "skip").encode([messages])[0]
            assert out == models.encode_prompt(tok, messages) if context == n + 3 else out.startswith(TOO_LONG)


def test_a_huge_prompt_is_refused_without_tokenising_it(tok, monkeypatch):
    calls = []
    real = models.encode_prompt
    monkeypatch.setattr(models, "encode_prompt", lambda t, m: calls.append(1) or real(t, m))
    check = ContextCheck(tok, 512, 16, "skip")
    huge = [{"role": "user", "content": "why is the sky blue? " * 250_000}]
    small = [{"role": "user", "content": "why is the sky blue?"}]
    out = check.encode([small, huge, small])
    assert isinstance(out[0], list) and out[2] == out[0] and len(calls) == 2
    assert out[1].startswith(f"{TOO_LONG}: at least ") and "> the teacher's context of 512 tokens" in out[1]
    assert not is_transient(out[1])
    with pytest.raises(PromptTooLong) as e:
        ContextCheck(tok, 512, 16, "error").encode([small, huge])
    assert e.value.index == 1 and len(calls) == 3  # nothing is generated before the refusal


def test_a_normalising_tokenizer_is_always_counted_exactly(tok, tmp_path):
    from tokenizers import normalizers

    tok = build_tokenizer(tmp_path / "nfkc")
    tok.backend_tokenizer.normalizer = normalizers.NFKC()  # may shrink text: no byte bound
    check = ContextCheck(tok, 64, 4, "skip")
    assert check._widest is None
    long = [{"role": "user", "content": "Ａ" * 300}]  # full-width letters: 900 bytes, fewer tokens after NFKC
    assert check.encode([long])[0].startswith(f"{TOO_LONG}: ") and "at least" not in check.encode([long])[0]


def test_transient_failures():
    for error in ("connection error: [Errno 111] Connect call failed", "timeout: no reply within 60 s",
                  "HTTP 429: rate limit reached (gave up after 7 attempts)", "HTTP 503: overloaded",
                  "malformed reply: no choices"):
        assert is_transient(error)
    for error in (None, "HTTP 400: top_logprobs must be <= 20", "HTTP 422: bad", "prompt too long: 9 tokens",
                  "finish_reason 'content_filter'", "unmapped completion tokens: 1 of 3"):
        assert not is_transient(error)
