"""The openai backend's pure parts: backoff, rate limits, cost, cache keys, the request cache, reply
reading and token mapping."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmdistill.config import APIPrice
from llmdistill.teachers import api_client as ac
from llmdistill.teachers import api_cost
from llmdistill.teachers.token_map import UNMAPPED_ID, TokenMapper, _byte_decoder, _entry_bytes, token_bytes


# ------------------------------------------------------------------------------------------ backoff
def test_backoff_full_jitter_stays_under_the_exponential_ceiling():
    rng = random.Random(0)
    for attempt in range(8):
        ceiling = min(10.0, 0.5 * 2**attempt)
        waits = [ac.backoff_delay(attempt, 0.5, 10.0, rng) for _ in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert max(waits) > 0.8 * ceiling and min(waits) < 0.2 * ceiling  # spread over the whole range


def test_backoff_honours_retry_after_up_to_the_cap():
    rng = random.Random(1)
    assert all(ac.backoff_delay(0, 0.1, 30.0, rng, retry_after=2.0) >= 2.0 for _ in range(50))
    assert all(ac.backoff_delay(0, 0.1, 5.0, rng, retry_after=600.0) <= 5.0 for _ in range(50))


def test_parse_retry_after():
    assert ac.parse_retry_after({"retry-after": "3"}) == 3.0
    assert ac.parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert ac.parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert ac.parse_retry_after({}) is None


def test_retryable_statuses():
    assert all(ac.is_retryable(s) for s in (408, 409, 429, 500, 502, 503, 504))
    assert not any(ac.is_retryable(s) for s in (400, 401, 403, 404, 422))


# --------------------------------------------------------------------------------------- rate limit
class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_token_bucket_serves_callers_in_order_at_the_rate():
    clock = Clock()
    bucket = ac.TokenBucket(per_minute=120, clock=clock)  # 2 per second, burst 2
    waits = [bucket.reserve(1) for _ in range(6)]
    assert waits == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5, 2.0])
    clock.t = 10.0  # idle time refills only up to the burst
    assert [bucket.reserve(1) for _ in range(3)] == pytest.approx([0.0, 0.0, 0.5])


def test_token_bucket_lets_a_request_larger_than_the_burst_through_later():
    clock = Clock()
    bucket = ac.TokenBucket(per_minute=600, clock=clock)  # 10 tokens/s, burst 10
    assert bucket.reserve(40) == pytest.approx(3.0)  # 30 tokens of debt at 10/s
    bucket.refund(25)  # the reply used 15 tokens, not 40
    assert bucket.reserve(1) == pytest.approx(0.6)


# ---------------------------------------------------------------------------------------------- cost
def test_cost_from_the_price_table():
    price = APIPrice(prompt=0.15, completion=0.60)
    assert api_cost.cost_usd(1_000_000, 0, price) == pytest.approx(0.15)
    assert api_cost.cost_usd(2000, 500, price) == pytest.approx(2000 * 0.15e-6 + 500 * 0.60e-6)
    assert api_cost.cost_usd(123, 456, APIPrice()) == 0.0


# --------------------------------------------------------------------------------------------- cache
def test_cache_key_covers_the_request_content_only():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 1, "temperature": 0.7}
    reordered = dict(reversed(list(body.items())))
    assert ac.cache_key("chat", body) == ac.cache_key("chat", reordered)
    assert ac.cache_key("chat", body) != ac.cache_key("completions", body)
    for change in ({"seed": 2}, {"temperature": 0.0}, {"model": "n"},
                   {"messages": [{"role": "user", "content": "hi!"}]}):
        assert ac.cache_key("chat", {**body, **change}) != ac.cache_key("chat", body)


def test_request_cache_round_trip_and_spend(tmp_path):
    cache = ac.RequestCache(tmp_path / "c" / "api.sqlite")
    assert cache.get("k1") is None
    cache.put("k1", b'{"choices": [{"text": "x"}]}', 10, 5, 0.25)  # stored as the server sent it
    cache.put("k2", '{"choices": []}', 1, 1, 0.5)
    cache.close()
    again = ac.RequestCache(tmp_path / "c" / "api.sqlite")
    assert again.get("k1") == b'{"choices": [{"text": "x"}]}' and ac.decode_json(again.get("k1"))["choices"]
    assert ac.decode_json(again.get("k2")) == {"choices": []}
    assert len(again) == 2 and again.spent_usd() == pytest.approx(0.75)
    again.put_unusable("k3", "malformed reply: no choices", (7, 3), 0.125)  # billed, not usable: spent all the same
    again.put_unusable("k3", "malformed reply: not JSON", None, 0.0625)  # its retry, billed again
    assert again.get("k3") is None and len(again) == 2 and again.spent_usd() == pytest.approx(0.9375)


def test_billed_tokens_read_the_usage_of_any_reply_that_has_one():
    assert api_cost.billed_tokens(b'{"choices": "nonsense", "usage": {"prompt_tokens": 12, "completion_tokens": 7}}') \
        == (12, 7)
    assert api_cost.billed_tokens(b'{"usage": {"prompt_tokens": 12}}') == (12, 0)
    for unreadable in (b'{"choices": [', b'{"choices": []}', b'[1, 2]', b'{"usage": null}',
                       b'{"usage": {"prompt_tokens": "12"}}', b'{"usage": {"prompt_tokens": -1}}',
                       b'{"usage": {"prompt_tokens": true}}', "caf\u00e9"):
        assert api_cost.billed_tokens(unreadable) is None, unreadable


def test_worst_case_tokens_bound_what_a_request_can_be_billed():
    chat = {"messages": [{"role": "user", "content": "naïve café"}], "max_tokens": 16}
    assert api_cost.worst_case_tokens(chat) == (len("naïve café".encode()) + 8 + 8, 16)
    assert api_cost.worst_case_tokens({"prompt": [1, 2, 3], "max_completion_tokens": 4}) == (3, 4)


def test_meter_counts():
    m = api_cost.Meter()
    m.count(m.retries, "HTTP 429")
    m.count(m.retries, "HTTP 429")
    m.count(m.failed, "timeout")
    assert m.as_dict()["retries"] == {"HTTP 429": 2} and m.as_dict()["failed"] == {"timeout": 1}
    m.bill((10, 5), 0.5)
    m.bill(None, 0.25, usable=False)  # an unusable reply whose usage could not be read: its worst case
    assert (m.prompt_tokens, m.completion_tokens, m.cost_usd, m.paid_unusable) == (10, 5, 0.75, 1)


# ------------------------------------------------------------------------------------------- replies
CHAT = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop",
                 "logprobs": {"content": [
                     {"token": "H", "logprob": -0.1, "bytes": [72],
                      "top_logprobs": [{"token": "H", "logprob": -0.1, "bytes": [72]},
                                       {"token": "Y", "logprob": -2.5, "bytes": [89]}]},
                     {"token": "i", "logprob": -0.2, "bytes": [105], "top_logprobs": []}]}}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 2},
}


VOCAB = {"H": 1, "Y": 2, "i": 3, "a": 4, "b": 5, "c": 6}


def lookup(token, raw=None):
    return VOCAB.get(token)


def test_read_chat_reply_maps_tokens_and_alternatives():
    r = ac.read_reply(json.dumps(CHAT), "chat", 3, lookup)
    assert r.text == "Hi" and r.finish_reason == "stop" and r.prompt_tokens == 7 and r.completion_tokens == 2
    assert r.tokens == ["H", "i"] and r.token_ids == [1, 3]
    assert r.topk_ids.dtype == np.int32 and r.topk_ids.tolist() == [[1, 2, UNMAPPED_ID], [UNMAPPED_ID] * 3]
    assert r.topk_logprobs[0, :2].tolist() == pytest.approx([-0.1, -2.5]) and np.isneginf(r.topk_logprobs[1]).all()
    text_only = ac.read_reply(json.dumps(CHAT), "chat")
    assert text_only.tokens is None and text_only.text == "Hi"


def test_read_completions_reply_orders_alternatives_and_keeps_unmapped_mass():
    obj = {"choices": [{"text": "ab", "finish_reason": "length",
                        "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-0.5, -1.0],
                                     "top_logprobs": [{"c": -1.5, "a": -0.5, "zz": -3.0}, {"b": -1.0}]}}],
           "usage": {"prompt_tokens": 3}}
    r = ac.read_reply(json.dumps(obj), "completions", 2, lookup)
    assert r.text == "ab" and r.token_ids == [4, 5] and r.completion_tokens == 2  # no usage: counted
    assert r.topk_ids.tolist() == [[4, 6], [5, UNMAPPED_ID]]  # best two of three, by log-prob
    three = ac.read_reply(json.dumps(obj).encode(), "completions", 3, lookup)
    assert three.topk_ids[0].tolist() == [4, 6, UNMAPPED_ID] and three.unmapped_alternatives == ["zz"]
    assert three.topk_logprobs[0].tolist() == pytest.approx([-0.5, -1.5, -3.0])  # its mass stays (the tail)


def test_a_repeated_alternative_is_not_counted_twice():
    obj = {"choices": [{"message": {"content": "H"}, "finish_reason": "stop", "logprobs": {"content": [
        {"token": "H", "logprob": -0.1, "top_logprobs": [{"token": "H", "logprob": -0.1},
                                                         {"token": "H", "logprob": -0.2}]}]}}]}
    r = ac.read_reply(json.dumps(obj), "chat", 2, lookup)
    assert r.topk_ids.tolist() == [[1, UNMAPPED_ID]]


@pytest.mark.parametrize("obj, endpoint, want", [
    ({"object": "chat.completion"}, "chat", False),
    ({"choices": []}, "chat", False),
    ({"choices": [{"finish_reason": "stop"}]}, "chat", False),
    ({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]}, "chat", True),  # logprobs missing
    ({"choices": [{"message": {"content": "x"}, "logprobs": {"content": [{"logprob": -1}]}}]}, "chat", True),
    ({"choices": [{"text": "x", "logprobs": {"tokens": ["x"], "token_logprobs": []}}]}, "completions", True),
])
def test_malformed_replies_are_named(obj, endpoint, want):
    with pytest.raises(ac.MalformedReply):
        ac.read_reply(json.dumps(obj), endpoint, 2 if want else None, lookup)


def test_bytes_are_read_where_a_token_is_a_piece_of_a_character():
    """Two alternatives that are different halves of UTF-8 characters both show as U+FFFD: only their
    `bytes` tell them apart (a body without U+FFFD is read without the bytes lists)."""
    seen = []

    def by_bytes(token, raw=None):
        seen.append(raw)
        return {(0xE2,): 4, (0xE3,): 5}.get(tuple(raw or ()), VOCAB.get(token))

    obj = {"choices": [{"message": {"content": "H"}, "finish_reason": "stop", "logprobs": {"content": [
        {"token": "H", "logprob": -0.1, "bytes": [72], "top_logprobs": [
            {"token": "\ufffd", "logprob": -0.5, "bytes": [0xE2]},
            {"token": "\ufffd", "logprob": -0.7, "bytes": [0xE3]},
            {"token": "H", "logprob": -0.9, "bytes": [72]}]}]}}]}
    for body in (json.dumps(obj), json.dumps(obj, ensure_ascii=False).encode()):  # escaped and raw UTF-8
        r = ac.read_reply(body, "chat", 3, by_bytes)
        assert r.topk_ids.tolist() == [[4, 5, 1]]
    seen.clear()
    ac.read_reply(json.dumps(CHAT), "chat", 3, by_bytes)
    assert seen and all(raw is None for raw in seen)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_whole_array_mapping_equals_row_by_row(data):
    """The whole-reply path (every row k sorted alternatives) gives exactly what the row-by-row path gives,
    unmapped and U+FFFD alternatives included, and leaves the rest (unsorted, short, repeated) to it."""
    k = data.draw(st.integers(1, 4))
    pool = ["H", "Y", "i", "a", "b", "c", "zz", "\ufffd"]
    raw_of = {"\ufffd": [0xE2]}
    memo = dict(data.draw(st.dictionaries(st.sampled_from(pool[:7]), st.sampled_from([None, 1, 2, 3, 4, 5, 6]))))

    def look(token, raw=None):
        if token == "\ufffd":
            return 9 if raw == [0xE2] else None
        memo[token] = VOCAB.get(token) if memo.get(token) is None else memo[token]
        return memo[token]

    rows = data.draw(st.lists(st.tuples(st.sampled_from(pool[:6]), st.lists(st.tuples(
        st.sampled_from(pool), st.floats(-20, 0)), min_size=k - 1, max_size=k + 1)), min_size=1, max_size=5))
    sort = data.draw(st.booleans())
    entries = []
    for token, alts in rows:
        alts = sorted(alts, key=lambda a: -a[1]) if sort else alts
        entries.append((token, None, [a for a, _ in alts], [lp for _, lp in alts],
                        lambda j, alts=alts: raw_of.get(alts[j][0])))
    whole, rows_ = ac.Reply("", None, 0, 0), ac.Reply("", None, 0, 0)
    took = ac._map_whole(whole, entries, k, look, dict(memo))
    ac._map_rows(rows_, entries, k, look, dict(memo))
    if took:
        assert whole.tokens == rows_.tokens and whole.token_ids == rows_.token_ids
        assert whole.topk_ids.tolist() == rows_.topk_ids.tolist()
        assert np.array_equal(whole.topk_logprobs, rows_.topk_logprobs)
        assert whole.unmapped_alternatives == rows_.unmapped_alternatives


def test_the_common_reply_is_mapped_on_whole_arrays():
    """k distinct alternatives in log-prob order, a piece of a character and an unmapped token among them."""
    def look(token, raw=None):
        return 9 if token == "\ufffd" and raw == [0xE2] else VOCAB.get(token)

    reply = ac.Reply("", None, 0, 0)
    common = [("H", None, ["H", "\ufffd", "zz"], [-0.1, -1.0, -2.0], lambda j: [0xE2] if j == 1 else None)]
    assert ac._map_whole(reply, common, 3, look, {"H": 1})
    assert reply.topk_ids.tolist() == [[1, 9, UNMAPPED_ID]] and reply.unmapped_alternatives == ["zz"]


def test_a_reply_of_the_wrong_shape_names_the_field():
    obj = {"choices": [{"message": {"content": "x"}, "logprobs": {"content": [{"token": 5, "logprob": -1}]}}]}
    with pytest.raises(ac.MalformedReply, match=r"content\[0\]\.token"):
        ac.read_reply(json.dumps(obj), "chat", 2, lookup)
    with pytest.raises(ac.MalformedReply, match="not JSON"):
        ac.read_reply(b'{"choices": [', "chat")


def test_decode_json_rejects_garbage():
    with pytest.raises(ac.MalformedReply, match="not JSON"):
        ac.decode_json('{"choices": [')
    with pytest.raises(ac.MalformedReply, match="not JSON"):
        ac.decode_json(b"\xff\xfe<html>")
    with pytest.raises(ac.MalformedReply):
        ac.decode_json("[1, 2]")


# --------------------------------------------------------------------------------------- token map
def test_token_ids_mode_parses_and_never_guesses():
    m = TokenMapper("token_ids")
    m.vocab_size = 100
    assert m.lookup("token_id:42") == 42
    assert m.lookup("token_id:100") is None  # outside the vocabulary
    assert m.lookup(" Paris") is None and m.lookup("token_id:x") is None


def test_tokenizer_mode_maps_every_vocabulary_entry_back(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["teacher"])
    m = TokenMapper("tokenizer", tok)
    specials = set(tok.all_special_ids)
    decoder = _byte_decoder()
    for token, i in tok.get_vocab().items():
        if i in specials:
            continue
        raw = bytes(decoder[c] for c in token)
        assert m.lookup(raw.decode("utf-8", errors="replace"), list(raw)) == i  # by the bytes field
        if raw.decode("utf-8", errors="ignore").encode() == raw:  # whole UTF-8: the string alone maps too
            assert m.lookup(raw.decode("utf-8")) == i
    assert m.lookup("<|im_end|>") == tok.convert_tokens_to_ids("<|im_end|>")
    assert m.lookup("\u2603 not a token") is None
    m.note_unmapped("\u2603 not a token", "alternative")
    assert m.report()["unmapped_alternative"] == 1 and m.report()["unmapped_examples"]


def test_sentencepiece_entries_and_openai_bytes_form():
    decoder = _byte_decoder()
    assert _entry_bytes("<0x0A>", False, False, decoder) == b"\n"
    assert _entry_bytes("\u2581Paris", False, False, decoder) == b" Paris"
    assert _entry_bytes("\u0120Paris", False, True, decoder) == b" Paris"  # byte-level: Ġ is the space byte
    assert token_bytes("bytes:\\xe2\\x80", None) == b"\xe2\x80"
    assert token_bytes("ignored", [226, 130, 172]) == "€".encode()


def test_unmapped_id_is_outside_any_vocabulary():
    assert UNMAPPED_ID == 2**31 - 1


# ------------------------------------------------------------------------------------------- secrets
@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "HF_TOKEN", "ANTHROPIC_API_KEY", "AZURE_OPENAI_API_KEY_2024",
                                  "DEPLOY2_API_KEY", "MyCompanyOpenAIKey", "GROQ_API_KEY", "AWS_SECRET_ACCESS_KEY",
                                  "TOGETHER_API_KEY", "VLLM_KEY_PROD_EU_WEST_1", "key_for_server_number_12"])
def test_ordinary_variable_names_are_accepted_as_api_key_env(name):
    from llmdistill.config import APIOptions

    assert APIOptions(api_key_env=name).api_key_env == name


@pytest.mark.parametrize("key", ["sk_live_abc123", "sk-proj-Ab12", "hf_AbCdEfGhIjKlMnOpQrStUv", "AKIAIOSFODNN7EXAMPLE",
                                 "ghp_0123456789abcdefABCDEF0123456789abcd", "3f9a2c7d1e8b4a6f9c0d2e1f3a4b5c6d",
                                 "Zq8x41LmPw0rT7yKd3Vb"])
def test_keys_pasted_as_api_key_env_are_refused_without_echo(key):
    from pydantic import ValidationError

    from llmdistill.config import APIOptions

    with pytest.raises(ValidationError) as e:
        APIOptions(api_key_env=key)
    assert key not in str(e.value) and key not in repr(e.value.errors(include_input=False))
