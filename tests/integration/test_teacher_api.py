"""The openai teacher backend end to end against a real HTTP server on 127.0.0.1 (tests/fakeopenai.py):
token mapping, faults and retries, resume after SIGKILL, rerun of failures only, budget, secrets."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from fakeopenai import FakeOpenAI

from conftest import PYTHON, REPO
from llmdistill import store
from llmdistill.config import load_config
from llmdistill.pipeline import run_stages
from llmdistill.teachers.token_map import UNMAPPED_ID


def write_prompts(path: Path, n: int) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"question {i}: why is the sky blue", "level": 1 + i % 3,
                                "source": "api-test"}) + "\n")
    return path


def api_config(tmp_path: Path, tiny, srv: FakeOpenAI, n_prompts: int = 12, name: str = "api", generate=None,
               **api) -> Path:
    data = {
        "name": name,
        "output_dir": str(tmp_path / "runs"),
        "teacher": {"model": str(tiny["teacher"]), "backend": "openai",
                    "api": {"base_url": srv.base_url, "served_model": "tiny", "api_key_env": None,
                            "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 10.0, **api}},
        "generate": {"prompts": str(write_prompts(tmp_path / "prompts.jsonl", n_prompts)), "max_new_tokens": 8,
                     "topk": 5, "batch_size": 8, "shard_rows": 8, **(generate or {})},
        "filter": {"steps": [{"name": "failed"}, {"name": "empty"}]},
        "train": {"student": {"teacher_layers": [0, 3]}, "max_steps": 2, "batch_size": 4, "save_steps": 2,
                  "logging_steps": 1},
        "eval": {"prompts": str(tmp_path / "prompts.jsonl"), "max_new_tokens": 4},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def rows(cfg) -> list[dict]:
    table = store.read_table(cfg.run_dir / "generate")
    return table.to_pylist()


def test_api_data_maps_to_the_servers_token_ids_and_trains(tmp_path, tiny, server):
    srv = server()
    by_tokenizer = load_config(api_config(tmp_path, tiny, srv, name="tok", token_mapping="tokenizer"))
    by_ids = load_config(api_config(tmp_path, tiny, srv, name="ids", token_mapping="token_ids"))
    run_stages(by_tokenizer, ["generate", "filter", "train"])
    run_stages(by_ids, ["generate"])
    a, b = rows(by_tokenizer), rows(by_ids)
    assert [r["id"] for r in a] == [r["id"] for r in b] and all(r["error"] is None for r in a + b)
    for x, y in zip(a, b):  # the same tokens whether named by id or by text
        assert x["completion_token_ids"] == y["completion_token_ids"] and x["topk_ids"] == y["topk_ids"]
        assert len(x["topk_ids"]) == len(x["completion_token_ids"]) == x["usage"]["completion_tokens"]
    manifest = store.read_manifest(by_tokenizer.run_dir / "generate")
    prov = manifest["provenance"]
    assert prov["teacher"]["backend"] == "openai" and prov["teacher"]["served_model"] == "tiny"
    assert prov["logprobs_source"].startswith("api: token strings mapped")
    assert prov["token_mapping"]["tokens"] > 0 and "unmapped_completion" not in prov["token_mapping"]
    assert store.read_manifest(by_ids.run_dir / "generate")["provenance"]["logprobs_source"].startswith(
        "api: server token ids")
    assert (by_tokenizer.run_dir / "train" / "_SUCCESS").exists()  # the API data trains a student


def test_500_requests_with_20_percent_faults_then_rerun_resends_only_failures(tmp_path, tiny, server):
    srv = server(fault_rate=0.2, seed=3)
    cfg = load_config(api_config(tmp_path, tiny, srv, n_prompts=500, max_retries=1, max_concurrency=64,
                                 timeout_s=1.0, generate={"batch_size": 128, "shard_rows": 128}))
    run_stages(cfg, ["generate"])
    first = rows(cfg)
    assert len(first) == 500 and len({r["id"] for r in first}) == 500
    failed = [r for r in first if r["error"] is not None]
    for r in first:  # answered, or failed with its reason
        assert (r["error"] is None and r["completion"] is not None and r["topk_ids"]) or \
            (r["finish_reason"] == "error" and "gave up after 2 attempts" in r["error"])
    assert 5 < len(failed) < 80, len(failed)  # about 0.2^2 = 4 % of the requests fail twice
    stats = srv.stats()
    assert {"429", "500", "None"} <= set(stats["statuses"])  # the faults really happened
    manifest = store.read_manifest(cfg.run_dir / "generate")
    assert manifest["counts"]["failed"] == len(failed)
    assert sum(manifest["provenance"]["api_usage"]["retries"].values()) > 50

    assert store.read_success(cfg.run_dir / "generate")["pending"] == len(failed)  # all transient

    for rerun in ({}, {"force": {"generate"}}):  # a plain rerun, then --force: only the failed ones go out again
        srv.reset_counts()
        before = rows(cfg)
        failed = [r for r in before if r["error"] is not None]
        run_stages(cfg, ["generate"], **rerun)
        resent = [json.dumps(c["prompt"]) for c in srv.stats()["contents"]]
        assert set(resent) == {json.dumps(r["messages"]) for r in failed}
        after = rows(cfg)
        assert [r["id"] for r in after] == [r["id"] for r in first]  # same rows, same order
        assert sum(r["error"] is not None for r in after) < len(failed) or not failed  # none left: nothing sent
        ok_before = {r["id"]: r["completion_token_ids"] for r in before if r["error"] is None}
        assert all(ok_before[r["id"]] == r["completion_token_ids"] for r in after if r["id"] in ok_before)
        assert store.read_success(cfg.run_dir / "generate")["pending"] == sum(r["error"] is not None for r in after)


def test_sigkill_then_rerun_resends_only_what_was_in_flight(tmp_path, tiny, server):
    srv = server(latency_s=0.25)
    path = api_config(tmp_path, tiny, srv, n_prompts=64, max_concurrency=8, generate={"batch_size": 16,
                                                                                       "shard_rows": 16})
    cfg = load_config(path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([PYTHON, "-m", "llmdistill.cli", "generate", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while srv.stats()["requests"] < 28 and time.monotonic() < deadline:  # mid-batch, some shards committed
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # let the server finish the requests it was serving
    seen_before = set(srv.stats()["by_key"])
    db = sqlite3.connect(cfg.run_dir / "cache" / "api.sqlite")
    cached = {k for (k,) in db.execute("SELECT key FROM replies")}
    db.close()
    assert 0 < len(cached) < 64

    srv.reset_counts()
    run_stages(cfg, ["generate"])
    after = srv.stats()["by_key"]
    lost_in_flight = len(seen_before) - len(cached)  # sent before the kill, no reply stored
    resent = set(after) & seen_before
    assert len(resent) == lost_in_flight <= 8  # only the requests in flight at the kill went out again
    assert len(after) - len(resent) == 64 - len(seen_before)  # plus the ones never sent before
    assert all(n == 1 for n in after.values())
    ids = store.read_ids(cfg.run_dir / "generate")
    assert len(ids) == 64 and len(set(ids)) == 64  # no duplicates

    clean = load_config(api_config(tmp_path, tiny, srv, n_prompts=64, name="clean", max_concurrency=8,
                                   cache=False, generate={"batch_size": 16, "shard_rows": 16}))
    run_stages(clean, ["generate"])
    by_id = {r["id"]: r["completion_token_ids"] for r in rows(clean)}
    assert {r["id"]: r["completion_token_ids"] for r in rows(cfg)} == by_id  # the kill changed nothing


def test_budget_stops_cleanly_with_exit_code_4_then_continues(tmp_path, tiny, server):
    srv = server()
    # 1000 $ per 1M completion tokens: at most 8 tokens = 0.8 cent per request
    path = api_config(tmp_path, tiny, srv, n_prompts=40, budget_usd=0.1, price={"completion": 1000.0},
                      generate={"batch_size": 4, "shard_rows": 4})
    cfg = load_config(path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "generate", str(path)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 4, res.stderr[-2000:]
    assert "budget_usd $0.1 reached" in res.stderr and "Traceback" not in res.stderr
    db = sqlite3.connect(cfg.run_dir / "cache" / "api.sqlite")
    spent, paid, tokens = db.execute("SELECT SUM(cost_usd), COUNT(*), SUM(completion_tokens) FROM replies").fetchone()
    db.close()
    # money in whole units (1000 $ per 1M tokens = 1000 micro-dollars a token; the budget is 100000 of them): a
    # float sum of the per-reply costs can land a few 1e-17 above 0.1 when the spend is exactly the budget
    assert tokens * 1000 <= 100_000 and paid >= 10
    assert abs(spent - tokens / 1000) < 1e-9  # the stored costs are those tokens at the price
    committed = store.read_ids(cfg.run_dir / "generate")
    assert committed and len(committed) % 4 == 0 and len(committed) <= paid  # whole batches, all committed
    assert not (cfg.run_dir / "generate" / "_SUCCESS").exists()

    srv.reset_counts()
    more = load_config(path, ["teacher.api.budget_usd=10"])
    run_stages(more, ["generate"])
    assert srv.stats()["requests"] == 40 - paid  # paid replies came from the cache
    assert len(store.read_ids(more.run_dir / "generate")) == 40


def test_api_key_comes_from_the_environment_and_is_never_written(tmp_path, tiny, server):
    key = "sk-test-DO-NOT-LEAK-1234567890abcdef"
    srv = server(api_key=key, fault_rate=0.3, seed=1)
    path = api_config(tmp_path, tiny, srv, name="secret", api_key_env="LLMD_TEST_KEY", max_retries=1,
                      timeout_s=0.3, generate={"batch_size": 12, "max_failed_fraction": 0.5})
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLMD_TEST_KEY": key}
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "generate", str(path), "-v"], env=env,
                         capture_output=True, text=True, timeout=300)
    cfg = load_config(path)
    assert (cfg.run_dir / "generate" / "_SUCCESS").exists(), res.stderr[-3000:]
    assert srv.auth_headers[f"Bearer {key}"] > 0  # the key was sent
    assert key not in res.stdout + res.stderr
    for f in cfg.run_dir.rglob("*"):
        if f.is_file():
            assert key.encode() not in f.read_bytes(), f

    # a run with no cached replies (another name), so requests really go out with the wrong key
    from llmdistill.errors import UserError

    os.environ["LLMD_TEST_KEY"] = "sk-wrong-key-0000"
    try:
        with pytest.raises(UserError) as e:
            run_stages(load_config(path, ["name=secret2"]), ["generate"])
        assert "HTTP 401 authentication failed" in str(e.value) and "sk-wrong-key-0000" not in str(e.value)
        del os.environ["LLMD_TEST_KEY"]
        with pytest.raises(UserError, match="LLMD_TEST_KEY is not set"):
            run_stages(load_config(path, ["name=secret3"]), ["generate"])
    finally:
        os.environ.pop("LLMD_TEST_KEY", None)


SECRETS = [
    ("api_key_env", "sk-live-abc-123"),
    ("api_key_env", "sk_live_abc123"),  # letters, digits and _ only: a valid variable name, but a key
    ("api_key_env", "hf_AbCdEfGhIjKlMnOpQrStUv"),
    ("api_key_env", "Zq8x41LmPw0rT7yKd3Vb"),  # no known prefix: long and random
    ("base_url", "PassW0rd-9f3e"),  # http://user:PassW0rd-9f3e@host/v1
    ("base_url", "tok-77c1e0d9"),  # http://host/v1?api_key=tok-77c1e0d9
    ("extra_body", "sk-proj-4f1b9c0e7d2a8b3c"),  # {"metadata": {"key": ...}}
]


def _secret_value(srv: FakeOpenAI, where: str, secret: str):
    if where == "api_key_env":
        return secret
    if where == "extra_body":
        return {"metadata": {"key": secret}}
    if secret.startswith("PassW0rd"):
        return srv.base_url.replace("://", f"://llmd:{secret}@")
    return f"{srv.base_url}?api_key={secret}"


@pytest.mark.parametrize("where, secret", SECRETS)
def test_a_secret_in_the_config_is_refused_without_echo(tmp_path, tiny, server, where, secret):
    srv = server()
    from llmdistill.config import ConfigError

    for path, overrides in ((api_config(tmp_path, tiny, srv, **{where: _secret_value(srv, where, secret)}), []),
                            (api_config(tmp_path, tiny, srv, name="clean"),
                             [f"teacher.api.{where}={json.dumps(_secret_value(srv, where, secret))}"])):
        with pytest.raises(ConfigError) as e:
            load_config(path, overrides)
        assert f"teacher.api.{where}" in str(e.value) and secret not in str(e.value)
    assert load_config(api_config(tmp_path, tiny, srv, name="fine", api_key_env="OPENAI_API_KEY"))  # a real name


@pytest.mark.parametrize("where, secret", [SECRETS[1], SECRETS[4]])
def test_a_secret_in_the_config_is_never_printed_or_written(tmp_path, tiny, server, where, secret):
    srv = server()
    path = api_config(tmp_path, tiny, srv, **{where: _secret_value(srv, where, secret)})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for command in (["validate", str(path)], ["generate", str(path), "-v"]):
        res = subprocess.run([PYTHON, "-m", "llmdistill.cli", *command], env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 2 and f"teacher.api.{where}" in res.stderr, res.stderr[-2000:]
        assert secret not in res.stdout + res.stderr and "Traceback" not in res.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != path]
    assert not [p for p in written if secret.encode() in p.read_bytes()]  # nothing secret written anywhere
    assert srv.stats()["requests"] == 0


def test_unmappable_alternatives_are_counted_and_kept_out_of_the_vocabulary(tmp_path, tiny, server):
    srv = server(unmappable_rate=0.2)
    cfg = load_config(api_config(tmp_path, tiny, srv, token_mapping="tokenizer"))
    run_stages(cfg, ["generate"])
    data = rows(cfg)
    ids = np.concatenate([np.asarray(r["topk_ids"]).reshape(-1) for r in data])
    counted = store.read_manifest(cfg.run_dir / "generate")["provenance"]["token_mapping"]
    assert counted["unmapped_alternative"] == int((ids == UNMAPPED_ID).sum()) > 0
    assert "'☃nowhere'" in counted["unmapped_examples"]


def test_text_only_mode_and_completions_endpoint(tmp_path, tiny, server):
    srv = server()
    text = load_config(api_config(tmp_path, tiny, srv, name="text", token_mapping="none"))
    run_stages(text, ["generate"])
    assert all(r["completion"] is not None and r["topk_ids"] is None and r["error"] is None for r in rows(text))
    assert store.read_manifest(text.run_dir / "generate")["provenance"]["logprobs_source"].startswith("none")

    comp = load_config(api_config(tmp_path, tiny, srv, name="comp", endpoint="completions",
                                  token_mapping="token_ids"))
    run_stages(comp, ["generate"])
    data = rows(comp)
    assert all(r["error"] is None and len(r["topk_ids"]) == len(r["completion_token_ids"]) for r in data)
    prompts = [c["prompt"] for c in srv.stats()["contents"] if isinstance(c["prompt"], list)
               and isinstance(c["prompt"][0], int)]
    assert len(prompts) == len(data)  # the prompt went out as token ids of the local chat template


@pytest.mark.slow
def test_demo_prompts_through_the_api_example_config(tmp_path, server):
    """configs/openai-vllm.yaml on the demo prompts, the server answering over SmolLM2's tokenizer: the
    manifest names the API as the source of the logits and carries the same tokenizer hash as the hf
    teacher, so training accepts the data."""
    from llmdistill import models

    tok_dir = models.resolve_source("smollm2-135m-instruct")
    srv = FakeOpenAI(Path(tok_dir)).start()
    try:
        cfg = load_config(REPO / "configs" / "openai-vllm.yaml",
                          [f"output_dir={tmp_path}", f"teacher.api.base_url={srv.base_url}",
                           "generate.max_prompts=24", "generate.max_new_tokens=16"])
        run_stages(cfg, ["generate"])
    finally:
        srv.stop()
    manifest = store.read_manifest(cfg.run_dir / "generate")
    prov = manifest["provenance"]
    assert manifest["counts"]["rows"] == 24 and manifest["counts"]["failed"] == 0
    assert prov["logprobs_source"].startswith("api: server token ids") and prov["topk"] == 20
    hf_tokenizer = models.load_tokenizer("smollm2-135m-instruct")
    assert prov["tokenizer_hash"] == models.tokenizer_info(hf_tokenizer)["tokenizer_hash"]
    assert prov["vocab_size"] == 49152


def test_a_refused_request_fails_its_sample_at_once_and_is_not_retried(tmp_path, tiny, server):
    srv = server()  # refuses top_logprobs > 20 with HTTP 400, as OpenAI and vLLM do
    cfg = load_config(api_config(tmp_path, tiny, srv, n_prompts=6, generate={"topk": 21}))
    from llmdistill.errors import UserError

    for _ in range(2):  # all failed: the stage is not done; a rerun sends nothing (a refusal fails the same again)
        with pytest.raises(UserError, match=r"6 of 6 samples failed \(100%, more than generate.max_failed_fraction "
                                            r"0.1\): HTTP 400 x 6 .*none is transient"):
            run_stages(cfg, ["generate"])
        assert srv.stats()["requests"] == 6  # not retried, then not re-sent
    data = rows(cfg)
    assert all(r["finish_reason"] == "error" and r["error"].startswith("HTTP 400: top_logprobs must be <= 20")
               for r in data)
    assert not (cfg.run_dir / "generate" / "_SUCCESS").exists()
    usage = store.read_json(cfg.run_dir / "generate" / "teachers" / "default.json")["api_usage"]
    assert usage["failed"] == {"HTTP 400": 6} and usage["retries"] == {}
    accepted = load_config(api_config(tmp_path, tiny, srv, n_prompts=6, generate={"topk": 21,
                                                                                 "max_failed_fraction": 1.0}))
    assert run_stages(accepted, ["generate"]) == {"generate": "ran"}  # same fingerprint: the committed rows stay
    assert srv.stats()["requests"] == 6
    assert store.read_success(cfg.run_dir / "generate")["pending"] == 0


# ------------------------------------------------------------------ an endpoint that is down, failures, budget
def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gone:
    """The base_url of a server that is not there."""

    def __init__(self, port: int):
        self.base_url = f"http://127.0.0.1:{port}/v1"


def cli_generate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "llmdistill.cli", "generate", str(path)], env={**os.environ,
                          "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600)


def error_line(res: subprocess.CompletedProcess) -> str:
    lines = [line for line in res.stderr.splitlines() if line.startswith("llmdistill: error:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    return lines[0]


def test_nothing_listening_stops_early_then_a_rerun_finishes_the_job(tmp_path, tiny, server):
    port = closed_port()
    path = api_config(tmp_path, tiny, Gone(port), n_prompts=40)  # batches of 8, default retries and concurrency
    cfg = load_config(path)
    res = cli_generate(path)
    assert res.returncode == 2
    # 16 requests in flight x 7 attempts: the default max_connection_failures; batch 1 (56 attempts) is committed
    assert (f"teacher api http://127.0.0.1:{port}/v1 is down: 112 connection attempts in a row failed (last: "
            "connection error: [Errno 111] Connect call failed") in error_line(res)
    assert res.stderr.count("api: request failed") < 40  # not 40 requests x 7 attempts
    out = cfg.run_dir / "generate"
    assert not (out / "_SUCCESS").exists()
    assert [r["error"].startswith("connection error") for r in rows(cfg)] == [True] * 8

    srv = server(port=port)  # the server is back: a plain rerun requests every sample once, failed ones included
    run_stages(cfg, ["generate"])
    assert sorted(srv.stats()["by_key"].values()) == [1] * 40
    assert store.read_success(out)["pending"] == 0 and all(r["error"] is None for r in rows(cfg))


def test_a_server_that_dies_mid_run_stops_the_stage_then_a_rerun_resumes(tmp_path, tiny, server):
    srv = server(die_after=20)
    path = api_config(tmp_path, tiny, srv, n_prompts=48, max_concurrency=4, max_connection_failures=10)
    cfg = load_config(path)
    res = cli_generate(path)
    assert res.returncode == 2
    assert f"teacher api {srv.base_url} is down: 10 connection attempts in a row failed" in error_line(res)
    out = cfg.run_dir / "generate"
    assert not (out / "_SUCCESS").exists()
    db = sqlite3.connect(cfg.run_dir / "cache" / "api.sqlite")
    answered = db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
    db.close()
    assert 20 <= answered < 24 and len(store.read_ids(out)) == 16  # batch 3 was cut short: not committed

    back = server(port=srv.port)
    run_stages(cfg, ["generate"])
    assert sorted(back.stats()["by_key"].values()) == [1] * (48 - answered)  # answered ones from the cache
    clean = load_config(api_config(tmp_path, tiny, back, n_prompts=48, name="clean", max_concurrency=4, cache=False))
    run_stages(clean, ["generate"])
    assert rows(cfg) == rows(clean)  # the same dataset as a run the server never left


def test_a_pool_of_two_servers_loses_one_mid_run_and_every_prompt_is_answered_once(tmp_path, tiny, server):
    dying, healthy = server(die_after=12, latency_s=0.02), server(latency_s=0.02)
    path = api_config(tmp_path, tiny, dying, n_prompts=48, max_concurrency=8)
    data = yaml.safe_load(path.read_text())
    data["teacher"]["api"]["base_url"] = [dying.base_url, healthy.base_url]
    path.write_text(yaml.safe_dump(data))
    res = cli_generate(path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"teacher api: {dying.base_url} is down" in res.stderr  # said once, as a warning
    assert res.stderr.count(f"{dying.base_url} is down") == 1
    cfg = load_config(path)
    got = rows(cfg)
    assert len(got) == 48 and all(r["error"] is None for r in got)
    delivered = Counter(dying.stats()["delivered"]) + Counter(healthy.stats()["delivered"])
    assert sum(dying.stats()["delivered"].values()) >= 8 and sum(healthy.stats()["delivered"].values()) >= 24
    assert len(delivered) == 48 and set(delivered.values()) == {1}  # every prompt answered (and paid) once
    clean_srv = server()
    clean = load_config(api_config(tmp_path, tiny, clean_srv, n_prompts=48, name="clean", cache=False))
    run_stages(clean, ["generate"])
    assert got == rows(clean)  # the same dataset as one server that never failed


def test_too_many_failures_is_not_done_and_reruns_retry_exactly_the_failed_samples(tmp_path, tiny, server):
    srv = server(fault_rate=0.3, faults=("500",), seed=5)
    cfg = load_config(api_config(tmp_path, tiny, srv, n_prompts=40, max_retries=0))
    from llmdistill.errors import UserError

    out = cfg.run_dir / "generate"
    with pytest.raises(UserError, match=r"samples failed \(\d+%, more than generate.max_failed_fraction 0.1\): "
                                        r"HTTP 500 x \d+ .*rerun to request the \d+ transient ones again"):
        run_stages(cfg, ["generate"])
    assert not (out / "_SUCCESS").exists() and len(store.read_ids(out)) == 40
    assert store.read_json(out / "stats.json")["failure_reasons"]["HTTP 500"] > 4
    for _ in range(8):  # each plain rerun requests exactly the failed samples (faults are drawn per attempt)
        failed = {json.dumps(r["messages"]) for r in rows(cfg) if r["error"] is not None}
        if not failed:
            break
        srv.reset_counts()
        try:
            run_stages(cfg, ["generate"])
        except UserError as e:
            assert "samples failed" in str(e)
        assert [json.dumps(c["prompt"]) for c in srv.stats()["contents"]] and \
            sorted(json.dumps(c["prompt"]) for c in srv.stats()["contents"]) == sorted(failed)
    assert not failed and store.read_success(out)["pending"] == 0
    srv.reset_counts()
    assert run_stages(cfg, ["generate"]) == {"generate": "skipped"} and srv.stats()["requests"] == 0


def test_downstream_stages_rerun_when_a_retry_changed_generate(tmp_path, tiny, server):
    srv = server(fault_rate=0.3, faults=("500",), seed=2)
    path = api_config(tmp_path, tiny, srv, n_prompts=24, max_retries=0, generate={"max_failed_fraction": 0.6})
    cfg = load_config(path)
    assert run_stages(cfg, ["generate", "filter"]) == {"generate": "ran", "filter": "ran"}
    gen, filt = cfg.run_dir / "generate", cfg.run_dir / "filter"
    pending = store.read_success(gen)["pending"]
    assert pending > 0 and store.read_success(filt)["upstream_output"] == store.read_success(gen)["output"]
    kept = len(store.read_ids(filt))

    srv.fault_rate = 1.0  # the retry fails again, the same way: generate's output is unchanged, filter is kept
    token = store.read_success(gen)["output"]
    assert run_stages(cfg, ["generate", "filter"]) == {"generate": "ran", "filter": "skipped"}
    assert srv.stats()["requests"] >= pending and store.read_success(gen)["output"] == token

    srv.die_after = 0  # the endpoint is down at the next retry: the complete output is kept, the run goes on
    down = load_config(path, ["teacher.api.max_connection_failures=2"])  # not part of the fingerprint
    assert run_stages(down, ["generate", "filter"]) == {"generate": "kept", "filter": "skipped"}
    assert store.read_success(gen)["output"] == token and store.read_success(gen)["pending"] == pending

    srv = server(port=srv.port)  # back, answering: `llmdistill generate` alone, as if killed before filter reran
    assert run_stages(cfg, ["generate"], standalone=True) == {"generate": "ran"}
    assert store.read_success(gen)["pending"] == 0 and store.read_success(gen)["output"] != token
    assert run_stages(cfg, ["generate", "filter"]) == {"generate": "skipped", "filter": "ran"}
    assert len(store.read_ids(filt)) == 24 > kept  # the answered samples reached the filter
    assert run_stages(cfg, ["generate", "filter"]) == {"generate": "skipped", "filter": "skipped"}

    # an old run directory (no tokens in its _SUCCESS files) keeps its outputs
    for d in (gen, filt):
        info = store.read_success(d)
        store.mark_success(d, {k: v for k, v in info.items() if k not in ("output", "upstream_output", "pending")})
    assert run_stages(cfg, ["generate", "filter"]) == {"generate": "skipped", "filter": "skipped"}


def test_budget_reserves_each_requests_worst_case_before_it_is_sent(tmp_path, tiny, server):
    srv = server(stop_prob=0.0)  # every reply is max_new_tokens = 8 long: 0.8 cent at 1000 $ per 1M
    from llmdistill.errors import BudgetExceeded

    cfg = load_config(api_config(tmp_path, tiny, srv, n_prompts=32, budget_usd=0.045, price={"completion": 1000.0},
                                 max_concurrency=4, generate={"batch_size": 16, "shard_rows": 16}))
    with pytest.raises(BudgetExceeded, match=r"budget_usd \$0.045 reached \(\$0.0400 spent"):
        run_stages(cfg, ["generate"])
    assert srv.stats()["requests"] == 5  # 5 x 0.008 fit in 0.045, a 6th would not; all 16 went out before
    db = sqlite3.connect(cfg.run_dir / "cache" / "api.sqlite")
    spent, paid = db.execute("SELECT SUM(cost_usd), COUNT(*) FROM replies").fetchone()
    db.close()
    assert paid == 5 and spent == pytest.approx(0.04) and spent <= 0.045

    # with a prompt price as well: the worst case counts the prompt's tokens through the local chat template
    both = load_config(api_config(tmp_path, tiny, srv, n_prompts=32, name="both", budget_usd=0.05,
                                  price={"prompt": 100.0, "completion": 1000.0}, max_concurrency=8,
                                  generate={"batch_size": 32, "shard_rows": 32}))
    srv.reset_counts()
    with pytest.raises(BudgetExceeded):
        run_stages(both, ["generate"])
    db = sqlite3.connect(both.run_dir / "cache" / "api.sqlite")
    spent, paid = db.execute("SELECT SUM(cost_usd), COUNT(*) FROM replies").fetchone()
    db.close()
    assert 0 < paid == srv.stats()["requests"] < 32 and spent <= 0.05


@pytest.mark.parametrize("fault", ["generate:shard-tmp:1", "generate:shard:1", "generate:stage-end:1"])
def test_a_kill_during_a_retry_loses_no_good_row_and_the_next_run_finishes(tmp_path, tiny, server, fault):
    """SIGKILL while a retry replaces a shard file (before its rename, after it, before _SUCCESS): the dataset
    stays whole (every id, every answered row as it was), and the next run finishes the retry and the filter."""
    srv = server(fault_rate=0.4, faults=("500",), seed=4)
    path = api_config(tmp_path, tiny, srv, n_prompts=24, max_retries=0, generate={"max_failed_fraction": 0.8})
    cfg = load_config(path)
    run_stages(cfg, ["generate", "filter"])
    gen = cfg.run_dir / "generate"
    before = rows(cfg)
    assert store.read_success(gen)["pending"] > 0
    srv.fault_rate = 0.0
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLMDISTILL_FAULT": fault}
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "generate", str(path)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    during = rows(cfg)
    assert [r["id"] for r in during] == [r["id"] for r in before]
    answered = {r["id"]: r for r in before if r["error"] is None}
    assert all(r == answered[r["id"]] for r in during if r["id"] in answered)  # good rows untouched
    assert store.read_success(gen) is not None  # the completed output stayed complete throughout

    assert run_stages(cfg, ["generate", "filter"]) == {"generate": "ran", "filter": "ran"}
    assert all(r["error"] is None for r in rows(cfg)) and len(store.read_ids(cfg.run_dir / "filter")) == 24


# ------------------------------------------------------------------------------------------- batch API
def test_batch_mode_survives_sigkill_mid_batch_and_resumes_without_a_second_batch(tmp_path, tiny, server):
    srv = server(batch_seconds=4.0)  # 40 requests answered over 4 s
    path = api_config(tmp_path, tiny, srv, n_prompts=40, mode="batch", batch_poll_s=0.2,
                      price={"prompt": 1.0, "completion": 2.0, "batch": 0.5})
    cfg = load_config(path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([PYTHON, "-m", "llmdistill.cli", "generate", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = cfg.run_dir / "cache" / "api_batches.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (srv.batches and 5 <= sum(srv.stats()["delivered"].values()) < 30):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    recorded = json.loads(state.read_text())["batches"]
    assert [b["status"] for b in recorded] == ["created"] and recorded[0]["id"] == "batch_1"
    assert srv.batches["batch_1"]["status"] == "in_progress" and not (cfg.run_dir / "generate" / "_SUCCESS").exists()

    res = cli_generate(path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming batch batch_1" in res.stderr
    assert srv.batches_created == 1  # polled again, not paid again
    assert [b["status"] for b in json.loads(state.read_text())["batches"]] == ["collected (completed)"]
    got = rows(cfg)
    assert len(got) == 40 and all(r["error"] is None for r in got)
    assert sorted(srv.stats()["by_key"].values()) == [1] * 40  # every request answered once, by the batch
    usage = store.read_json(cfg.run_dir / "generate" / "teachers" / "default.json")["api_usage"]
    db = sqlite3.connect(cfg.run_dir / "cache" / "api.sqlite")
    p, c, cost = db.execute("SELECT SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd) FROM replies").fetchone()
    db.close()
    assert cost == pytest.approx((p * 1.0 + c * 2.0) / 1e6 * 0.5)  # batch prices
    assert usage["spent_usd_in_run"] == pytest.approx(cost, rel=1e-4)

    online = load_config(api_config(tmp_path, tiny, srv, n_prompts=40, name="online", cache=False))
    run_stages(online, ["generate"])
    assert got == rows(online)  # the very samples online mode writes


def test_batch_mode_errors_become_failed_samples_and_a_rerun_submits_only_those(tmp_path, tiny, server):
    srv = server(batch_seconds=0.2, fault_rate=0.25, faults=("500",))
    path = api_config(tmp_path, tiny, srv, n_prompts=24, mode="batch", batch_poll_s=0.05,
                      generate={"max_failed_fraction": 0.9})
    cfg = load_config(path)
    run_stages(cfg, ["generate"])
    failed = [r for r in rows(cfg) if r["error"] is not None]
    assert failed and all(r["error"].startswith("HTTP 500: internal error (batch batch_1)") for r in failed)
    run_stages(cfg, ["generate"])  # a plain rerun asks again for the transient failures, in a second batch
    assert srv.batches_created == 2
    assert srv.batches["batch_2"]["request_counts"]["total"] == len(failed)
    assert sum(r["error"] is not None for r in rows(cfg)) < len(failed)


def test_batch_mode_needs_the_cache(tmp_path, tiny, server):
    from llmdistill.config import ConfigError

    with pytest.raises(ConfigError, match="mode: batch keeps the batch's replies in the request cache"):
        load_config(api_config(tmp_path, tiny, server(), mode="batch", cache=False))


def test_two_client_processes_write_the_dataset_one_process_writes(tmp_path, tiny, server):
    srv = server(latency_s=0.02)
    two = load_config(api_config(tmp_path, tiny, srv, n_prompts=32, name="two", client_processes=2,
                                 max_concurrency=8))
    run_stages(two, ["generate"])
    assert sorted(srv.stats()["by_key"].values()) == [1] * 32  # each request sent once, by one of the two
    usage = store.read_json(two.run_dir / "generate" / "teachers" / "default.json")["api_usage"]
    assert usage["requests"] == 32 and usage["completion_tokens"] == sum(len(r["completion_token_ids"])
                                                                         for r in rows(two))
    one = load_config(api_config(tmp_path, tiny, srv, n_prompts=32, name="one", cache=False, max_concurrency=8))
    run_stages(one, ["generate"])
    assert rows(two) == rows(one)


def test_a_killed_run_leaves_no_client_process_behind(tmp_path, tiny, server):
    srv = server(latency_s=0.3)
    path = api_config(tmp_path, tiny, srv, n_prompts=200, client_processes=2, max_concurrency=8,
                      generate={"batch_size": 16})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([PYTHON, "-m", "llmdistill.cli", "generate", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while srv.stats()["requests"] < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) >= 2  # the two client processes (and multiprocessing's resource tracker)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def alive(pid: str) -> bool:
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while any(map(alive, children)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(alive, children))
    before = srv.stats()["requests"]
    time.sleep(1.0)
    assert srv.stats()["requests"] == before  # nothing is still sending


def test_two_client_processes_stay_within_the_budget_together(tmp_path, tiny, server):
    srv = server(latency_s=0.02)
    # at most 8 completion tokens at $1000 per 1M: 0.8 cent per request; each process gets half of $0.1
    path = api_config(tmp_path, tiny, srv, n_prompts=40, budget_usd=0.1, price={"completion": 1000.0},
                      client_processes=2, max_concurrency=4, generate={"batch_size": 8, "shard_rows": 8})
    cfg = load_config(path)
    res = cli_generate(path)
    assert res.returncode == 4, res.stderr[-2000:]
    assert "budget_usd $0.1 reached" in error_line(res), res.stderr[-3000:]
    db = sqlite3.connect(cfg.run_dir / "cache" / "api.sqlite")
    spent, paid = db.execute("SELECT SUM(cost_usd), COUNT(*) FROM replies").fetchone()
    db.close()
    # never past the budget; each process stops on its own half (its in-flight reservations included), so
    # together they may stop short of it
    assert spent <= 0.1 and paid >= 4
    assert not (cfg.run_dir / "generate" / "_SUCCESS").exists()
    srv.reset_counts()
    run_stages(load_config(path, ["teacher.api.budget_usd=10"]), ["generate"])
    assert srv.stats()["requests"] == 40 - paid  # the paid replies came from the shared cache
    assert len(store.read_ids(cfg.run_dir / "generate")) == 40
