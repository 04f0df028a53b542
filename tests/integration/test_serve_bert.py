"""`llmdistill serve-bert` as a client meets it: a real server process on 127.0.0.1 serving a distilled tiny
student, spoken to over raw sockets with malformed requests (bad Content-Length, a body that never comes,
invalid UTF-8, 10,000-deep JSON, ...), 64 clients at once, and start-up errors that must be one line."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tiny_bert
import yaml

from conftest import PYTHON

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 2  # the server's --timeout here: how long a request's headers, then its body, may take
TEXTS = [json.loads(line)["text"] for line in (tiny_bert.SENTIMENT / "test.jsonl").read_text().splitlines()[:96]]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    return tiny_bert.distill(tiny_bert.build_teacher(root / "fx"), root / "runs")


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "llmdistill.cli", "serve-bert", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _port(proc: subprocess.Popen) -> int:
    line = proc.stdout.readline()  # "serving RUN on http://127.0.0.1:PORT/predict (...)"
    assert "serving" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    return int(line.split("http://127.0.0.1:")[1].split("/")[0])


def _get(port: int, path: str, timeout: float = 30) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), json.loads(r.read())
    finally:
        conn.close()


def _predict(port: int, texts: list[str]) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/predict", json.dumps({"texts": texts}), {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def _wait_ready(port: int, proc: subprocess.Popen | None = None, limit_s: float = 120) -> list[int]:
    """Poll /health until 200; the statuses seen on the way."""
    seen, end = [], time.monotonic() + limit_s
    while time.monotonic() < end:
        assert proc is None or proc.poll() is None, proc.stderr.read()
        status, _, _ = _get(port, "/health")
        seen.append(status)
        if status == 200:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"not ready after {limit_s} s: {seen[-5:]}")


@pytest.fixture(scope="module")
def server(run_dir):
    """The fp32 student (batched and unbatched rows agree to float precision), micro-batching on."""
    proc = _start([str(run_dir), "--model", "fp32", "--port", "0", "--timeout", str(TIMEOUT_S)])
    try:
        port = _port(proc)
        _wait_ready(port, proc)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err  # SIGTERM: a graceful stop
    assert "Traceback" not in err, err


def exchange(port: int, payload: bytes, wait: float = 30) -> tuple[int | None, dict, bytes, float]:
    """Send raw bytes, read until the server closes: (status, headers, body, seconds); status None if the
    server closed without a reply."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):  # it answered (413) and closed before reading it all
            pass
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    took = time.monotonic() - start
    if not data:
        return None, {}, b"", took
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body, took


def post(body: bytes, headers: str = "") -> bytes:
    return (f"POST /predict HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
            .encode() + body)


MALFORMED = {
    "content-length-abc": (b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n{}", 400),
    "content-length-negative": (b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n{}", 400),
    "content-length-twice": (b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\n{}",
                             400),
    "request-line": (b"GARBAGE\r\n\r\n", 400),
    "headers-too-long": (b"GET /health HTTP/1.1\r\nHost: t\r\nX-Long: " + b"a" * 40_000, 400),
    "invalid-utf8": (post(b'{"texts": ["caf\xe9 \xff\xfe"]}'), 400),
    "lone-surrogate": (post(b'{"texts": ["\\ud800"]}'), 400),
    "nested-10000": (post(b'{"texts": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"), 400),
    "not-json": (post(b"texts=hello"), 400),
    "empty-body": (post(b""), 400),
    "not-an-object": (post(b'["a"]'), 400),
    "texts-not-a-list": (post(b'{"texts": "a"}'), 400),
    "texts-not-strings": (post(b'{"texts": ["a", 1, null]}'), 400),
    "texts-empty": (post(b'{"texts": []}'), 400),
    "too-many-texts": (post(json.dumps({"texts": ["a"] * 257}).encode()), 400),
    "text-too-long": (post(json.dumps({"texts": ["a" * 20_001]}).encode()), 400),
    "unknown-key": (post(b'{"texts": ["a"], "text": "b"}'), 400),
    "body-declared-too-large": (b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999\r\n\r\n{", 413),
    "body-chunked-too-large": (b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                               + b"100000\r\n" + b"a" * 0x100000 + b"\r\n" + b"10\r\n" + b"b" * 16 + b"\r\n0\r\n\r\n",
                               413),
    "unknown-route": (b"POST /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", 404),
    "wrong-method": (b"GET /predict HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 405),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_malformed_request_gets_a_json_4xx_in_one_line(server, case):
    payload, expected = MALFORMED[case]
    status, headers, body, _ = exchange(server, payload)
    assert status == expected, (status, body[:300])
    assert headers["content-type"].startswith("application/json")
    reply = json.loads(body)
    assert set(reply) == {"error"} and reply["error"] and "\n" not in reply["error"], reply
    assert "Traceback" not in reply["error"]


def test_the_reasons_name_the_problem(server):
    def reason(payload: bytes) -> str:
        return json.loads(exchange(server, payload)[2])["error"]

    assert "Content-Length" in reason(MALFORMED["content-length-abc"][0])
    assert "not valid JSON" in reason(MALFORMED["invalid-utf8"][0])
    assert "recursion" in reason(MALFORMED["nested-10000"][0])
    assert "texts.1" in reason(MALFORMED["texts-not-strings"][0])
    assert "256" in reason(MALFORMED["too-many-texts"][0])
    assert "20000" in reason(MALFORMED["text-too-long"][0])
    assert "'text'" in reason(MALFORMED["unknown-key"][0])
    assert "a" * 100 not in reason(MALFORMED["text-too-long"][0])  # texts are never echoed back


def test_pipelined_requests_on_one_connection_are_answered_in_order(server):
    body = json.dumps({"texts": TEXTS[:2]}).encode()
    first = f"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    status, _, rest, _ = exchange(server, first + post(body) + b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 200 and rest.count(b"HTTP/1.1 200 OK") == 1  # the second reply closes the connection
    assert rest.count(b'"labels"') == 2


def test_a_body_that_never_comes_gets_408_within_the_timeout_and_others_are_served_meanwhile(server):
    slow = [b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b'{"texts": ["',  # lies
            b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Le"]  # headers cut short
    with ThreadPoolExecutor(len(slow) + 1) as pool:
        waiting = [pool.submit(exchange, server, payload) for payload in slow]
        idle = pool.submit(exchange, server, b"")  # connects and says nothing
        time.sleep(0.2)
        assert _predict(server, TEXTS[:2])[0] == 200  # a slow client holds neither the model nor the server
        replies = [w.result() for w in waiting]
        silent = idle.result()
    for status, headers, body, took in replies:
        assert status == 408 and headers["connection"] == "close", body
        assert "did not arrive within" in json.loads(body)["error"]
        assert took < TIMEOUT_S + 10, took  # closed near the deadline, not whenever the client pleases
    assert silent[0] is None and silent[3] < TIMEOUT_S + 10  # an idle connection is closed without a reply


def test_64_concurrent_clients_are_all_answered_with_their_own_rows(server):
    """Micro-batching is on: the replies of 64 simultaneous requests (1-3 texts each, distinct) equal the
    replies to the same requests sent one by one, so every request got its own rows back."""
    requests = [TEXTS[i % 90:i % 90 + 1 + i % 3] for i in range(64)]
    alone = [_predict(server, texts) for texts in requests]
    barrier = threading.Barrier(64)

    def together(texts):
        barrier.wait()
        return _predict(server, texts)

    with ThreadPoolExecutor(64) as pool:
        concurrent = list(pool.map(together, requests))
    for texts, (s1, a), (s2, b) in zip(requests, alone, concurrent):
        assert s1 == s2 == 200
        assert len(b["ids"]) == len(texts) and a["labels"] == b["labels"]
        assert all(abs(x - y) < 1e-4 for pa, pb in zip(a["probs"], b["probs"]) for x, y in zip(pa, pb))


def test_health_and_predict_answer_503_while_the_model_loads(run_dir):
    """In-process: the port answers at once; until the load finishes /health and /predict say 503 (JSON, with
    Retry-After), then the same server serves."""
    from llmdistill.bert.serve import ServeSettings, check_run, serving

    release = threading.Event()
    run = check_run(run_dir, "int8")

    def load():
        release.wait(60)
        return run.load()

    with serving(load, ServeSettings(port=0), wait=False) as srv:
        status, headers, body = _get(srv.port, "/health")
        assert (status, body) == (503, {"status": "loading"}) and headers["retry-after"] == "1"
        status, reply = _predict(srv.port, ["a"])
        assert status == 503 and "loading" in reply["error"]
        release.set()
        assert srv.ready.wait(60) and srv.error is None
        assert _get(srv.port, "/health")[0] == 200
        status, reply = _predict(srv.port, TEXTS[:3])
        assert status == 200 and len(reply["labels"]) == 3


def _copy(run_dir: Path, dst: Path) -> Path:
    shutil.copytree(run_dir, dst)
    return dst


def test_start_up_errors_are_one_line_and_exit_2(run_dir, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    garbage = _copy(run_dir, tmp_path / "garbage")
    (garbage / "onnx" / "model.int8.onnx").write_bytes(os.urandom(4096))
    bad_yaml = _copy(run_dir, tmp_path / "bad-yaml")
    (bad_yaml / "config.resolved.yaml").write_text("config: {data: [unclosed\n")
    bad_labels = _copy(run_dir, tmp_path / "bad-labels")
    resolved = yaml.safe_load((bad_labels / "config.resolved.yaml").read_text())
    resolved["config"]["data"]["labels"] = 3
    (bad_labels / "config.resolved.yaml").write_text(yaml.safe_dump(resolved))
    no_config = _copy(run_dir, tmp_path / "no-config")
    (no_config / "config.resolved.yaml").unlink()
    no_model = _copy(run_dir, tmp_path / "no-model")
    (no_model / "onnx" / "model.onnx").unlink()
    unfinished = _copy(run_dir, tmp_path / "unfinished")
    (unfinished / "_SUCCESS").unlink()
    cases = {  # args -> what the one line says
        (str(run_dir), "--port", str(busy)): f"cannot listen on 127.0.0.1:{busy}: [EADDRINUSE]",
        (str(run_dir), "--port", "99999"): "--port: Input should be less than or equal to 65535",
        (str(run_dir), "--host", "no-such-host.invalid", "--port", "0"): "unknown host",
        (str(run_dir), "--model", "int4"): "--model: Input should be 'int8', 'fp32' or 'torch'",
        (str(run_dir), "--timeout", "0"): "--timeout: Input should be greater than 0",
        (str(garbage), "--port", "0"): "cannot load the model",
        (str(bad_yaml), "--port", "0"): "config.resolved.yaml: cannot be read",
        (str(bad_labels), "--port", "0"): "config.data.labels: Input should be a valid list",
        (str(no_config), "--port", "0"): "config.resolved.yaml: missing",
        (str(no_model), "--model", "fp32", "--port", "0"): "model.onnx not found",
        (str(unfinished), "--port", "0"): "not a finished distill-bert run",
        (str(tmp_path / "nowhere"), "--port", "0"): "no such run directory",
    }
    try:
        procs = {args: _start(list(args)) for args in cases}  # all at once: each pays its imports in parallel
        results = {args: p.communicate(timeout=120) for args, p in procs.items()}
    finally:
        taken.close()
    for args, expected in cases.items():
        _, err = results[args]
        assert procs[args].returncode == 2, (args, err)
        assert err.count("\n") == 1 and err.startswith("llmdistill: error: ") and expected in err, (args, err)
