"""The openai teacher against endpoints that misbehave in ways that cost time or money: a listener that never
accepts a connection (as behind a firewall that drops SYNs), replies that are billed but unusable, and the
HTTP sessions of the client, closed on every path (success, a fatal error, client processes)."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import subprocess

import pytest
from test_teacher_api import api_config, cli_generate, error_line, rows

from conftest import PYTHON
from llmdistill import store
from llmdistill.config import load_config
from llmdistill.errors import BudgetExceeded, UserError
from llmdistill.pipeline import run_stages


@contextlib.contextmanager
def never_accepting():
    """A port on 127.0.0.1 whose listener never accepts: its backlog (0) is filled by a connection of our own,
    so the kernel drops every further SYN and a connect hangs until the client gives up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    held = []
    try:
        while len(held) < 16:
            probe = socket.socket()
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                probe.close()
                break
            held.append(probe)
        else:
            raise RuntimeError("the listen backlog did not fill")
        yield port
    finally:
        for s in held:
            s.close()
        listener.close()


class At:
    def __init__(self, port: int):
        self.base_url = f"http://127.0.0.1:{port}/v1"


# ------------------------------------------------------------------------------- connections that time out
def test_an_endpoint_that_never_accepts_is_down_after_max_connection_failures(tmp_path, tiny):
    with never_accepting() as port:
        # the connect timeout is its own: a 30 s read timeout does not make each attempt wait 30 s
        fast = api_config(tmp_path, tiny, At(port), n_prompts=8, name="fast", timeout_s=30.0, connect_timeout_s=0.3,
                          max_concurrency=2, max_connection_failures=6)
        res = cli_generate(fast)
        assert res.returncode == 2
        assert (f"teacher api http://127.0.0.1:{port}/v1 is down: 6 connection attempts in a row failed (last: "
                "connection error: no connection within 0.3 s") in error_line(res)
        assert "Unclosed" not in res.stderr
        # no connect_timeout_s: timeout_s caps it; the attempts that timed out count as connection failures
        capped = load_config(api_config(tmp_path, tiny, At(port), n_prompts=8, name="capped", timeout_s=0.5,
                                        max_connection_failures=10))
        with pytest.raises(UserError, match=r"is down: 10 connection attempts in a row failed \(last: connection "
                                            r"error: no connection within 0.5 s"):
            run_stages(capped, ["generate"])
    assert not (capped.run_dir / "generate" / "_SUCCESS").exists()


def test_a_slow_reply_is_not_cut_short_by_the_connect_timeout(tmp_path, tiny, server):
    srv = server(latency_s=0.6)  # each reply takes longer than the connect timeout, well within timeout_s
    cfg = load_config(api_config(tmp_path, tiny, srv, n_prompts=4, connect_timeout_s=0.2, timeout_s=10.0,
                                 max_retries=0))
    run_stages(cfg, ["generate"])
    assert all(r["error"] is None for r in rows(cfg)) and srv.stats()["requests"] == 4


# ---------------------------------------------------------------------------------------- closed sessions
def test_no_unclosed_session_is_reported_on_success_or_error_or_in_client_processes(tmp_path, tiny, server):
    srv = server()
    ok = cli_generate(api_config(tmp_path, tiny, srv, n_prompts=8, name="ok"))
    assert ok.returncode == 0 and "Unclosed" not in ok.stderr, ok.stderr[-3000:]

    # a fatal error in client processes: each worker closes its teacher as it exits, the parent its own
    # (an endpoint that is down, the other fatal path, is checked above)
    broke = cli_generate(api_config(tmp_path, tiny, srv, n_prompts=16, name="broke", client_processes=2,
                                    max_concurrency=4, budget_usd=0.02, price={"completion": 1000.0},
                                    generate={"batch_size": 4, "shard_rows": 4}))
    assert broke.returncode == 4 and "budget_usd" in error_line(broke), broke.stderr[-3000:]
    assert "Unclosed" not in broke.stderr, broke.stderr[-3000:]


def test_a_teacher_dropped_without_close_closes_its_sessions(tmp_path, tiny, server):
    """A caller that forgets close() (a scorer, evolve) still leaves nothing open: the teacher closes itself
    when it is collected (by reference counting, or by the collector inside a running event loop), and at exit."""
    srv = server()
    path = api_config(tmp_path, tiny, srv, n_prompts=2)
    code = (f"import asyncio, gc\nfrom llmdistill.config import load_config\n"
            f"from llmdistill.teachers import Sampling, build_teacher\n"
            f"cfg = load_config({str(path)!r})\n"
            "def ask():\n"
            "    t = build_teacher(cfg.teacher, Sampling.from_generate(cfg.generate))\n"
            "    assert t.generate([[{'role': 'user', 'content': 'hi'}]], seed=1)[0].error is None\n"
            "ask(); gc.collect()\n"
            "def cyclic():\n"  # in a reference cycle: collected by the collector, here inside a running loop
            "    t = build_teacher(cfg.teacher, Sampling.from_generate(cfg.generate))\n"
            "    t.generate([[{'role': 'user', 'content': 'hey'}]], seed=1); t.me = t\n"
            "gc.disable(); cyclic()\n"
            "async def inside():\n"
            "    gc.collect()\n"
            "asyncio.run(inside()); gc.enable()\n"
            "kept = build_teacher(cfg.teacher, Sampling.from_generate(cfg.generate))\n"
            "kept.generate([[{'role': 'user', 'content': 'hello'}]], seed=1)\n"  # alive until exit
            "print('done')\n")
    res = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "done", res.stderr[-3000:]
    for bad in ("Unclosed", "Traceback", "Exception ignored"):
        assert bad not in res.stderr, res.stderr[-3000:]


# -------------------------------------------------------------------------------------- what is billed
def spent_in_cache(cfg) -> float:
    db = sqlite3.connect(cfg.run_dir / "cache" / "api.sqlite")
    try:
        tables = {t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return sum(db.execute(f"SELECT COALESCE(SUM(cost_usd), 0) FROM {t}").fetchone()[0] for t in tables)
    finally:
        db.close()


PRICE = {"prompt": 100.0, "completion": 1000.0}


def billed_usd(srv, price: dict) -> float:
    """What the server's replies would be billed at `price`: their usage, unusable replies included."""
    return sum(u["prompt_tokens"] * price.get("prompt", 0.0) + u["completion_tokens"] * price["completion"]
               for u in srv.billed if u is not None) / 1e6


def test_replies_billed_but_unusable_count_toward_spend(tmp_path, tiny, server):
    srv = server(fault_rate=0.4, faults=("unusable",), seed=7)
    cfg = load_config(api_config(tmp_path, tiny, srv, n_prompts=24, max_retries=2, price=PRICE,
                                 generate={"max_failed_fraction": 1.0}))
    run_stages(cfg, ["generate"])
    unusable = sum(1 for s in srv.stats()["contents"] if s["fault"] == "unusable")
    assert unusable > 5
    usage = store.read_json(cfg.run_dir / "generate" / "teachers" / "default.json")["api_usage"]
    assert usage["cost_usd"] == pytest.approx(billed_usd(srv, PRICE), rel=1e-6)  # what the provider bills, to the cent
    assert spent_in_cache(cfg) == pytest.approx(billed_usd(srv, PRICE), rel=1e-6)  # and what a rerun's budget counts
    assert usage["paid_unusable"] == unusable

    # a reply whose usage cannot be read (not JSON) is counted at its reserved worst case
    junk = server(fault_rate=0.4, faults=("garbage",), seed=7, stop_prob=0.0)
    both = load_config(api_config(tmp_path, tiny, junk, n_prompts=24, name="junk", max_retries=2,
                                  price={"completion": 1000.0}, generate={"max_failed_fraction": 1.0}))
    run_stages(both, ["generate"])
    garbage = sum(1 for s in junk.stats()["contents"] if s["fault"] == "garbage")
    answered = sum(u["completion_tokens"] for u in junk.billed if u is not None)
    assert garbage > 5 and spent_in_cache(both) == pytest.approx((answered + 8 * garbage) * 1000.0 / 1e6, rel=1e-6)


def test_the_budget_holds_with_unusable_replies(tmp_path, tiny, server):
    srv = server(fault_rate=0.5, faults=("unusable",), seed=2, stop_prob=0.0)
    price = {"completion": 1000.0}
    path = api_config(tmp_path, tiny, srv, n_prompts=32, budget_usd=0.05, price=price,
                      max_concurrency=4, generate={"batch_size": 8, "shard_rows": 8, "max_failed_fraction": 1.0})
    cfg = load_config(path)
    with pytest.raises(BudgetExceeded):
        run_stages(cfg, ["generate"])
    assert billed_usd(srv, price) <= 0.05 and spent_in_cache(cfg) == pytest.approx(billed_usd(srv, price), rel=1e-6)
    with pytest.raises(BudgetExceeded):  # a rerun starts from what was billed, unusable replies included
        run_stages(load_config(path), ["generate"])
    assert billed_usd(srv, price) <= 0.05


def test_batch_replies_billed_but_unusable_count_toward_spend(tmp_path, tiny, server):
    srv = server(batch_seconds=0.2, fault_rate=0.4, faults=("unusable",), seed=3)
    price = {"prompt": 100.0, "completion": 1000.0, "batch": 0.5}
    cfg = load_config(api_config(tmp_path, tiny, srv, n_prompts=24, mode="batch", batch_poll_s=0.05, price=price,
                                 generate={"max_failed_fraction": 1.0}))
    run_stages(cfg, ["generate"])
    unusable = sum(1 for s in srv.stats()["contents"] if s["fault"] == "unusable")
    assert unusable > 2 and sum(r["error"] is not None for r in rows(cfg)) == unusable
    assert spent_in_cache(cfg) == pytest.approx(billed_usd(srv, price) * 0.5, rel=1e-6)  # at batch prices
