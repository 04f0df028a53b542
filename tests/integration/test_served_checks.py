"""A served teacher that answers nonsense is stopped with one line naming the server, never trained on
(issue 28, items 9 and 10).

The server is real: a standard-library HTTP server on 127.0.0.1 that speaks what llmdistill asks of vLLM
(GET /v1/models, POST /tokenize with the tiny teacher's own tokenizer, POST /v1/completions with
`prompt_logprobs`) and answers as the test says: a well-formed, normalised top-k, or one fault at a time.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import yaml

from conftest import PYTHON, make_tiny_config
from llmdistill import models, store
from llmdistill.config import APIOptions, load_config
from llmdistill.errors import UserError
from llmdistill.pipeline import run_stages
from llmdistill.train.served import ServedScorer, check_server, served_teacher_config, signal_problem

K = 4
BAD_MODELS = {  # what GET /v1/models answers
    "garbage": b"<html>502 Bad Gateway</html>",
    "a list": json.dumps([{"id": "tiny"}]).encode(),
    "a string context": json.dumps({"data": [{"id": "tiny", "max_model_len": "4096"}]}).encode(),
    "entries without ids": json.dumps({"data": ["tiny"]}).encode(),
}


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that hung up mid-reply (a training process stopped by the check): nothing to print


class TeacherServer:
    """`models`: None (a good list) or a BAD_MODELS key; `signal`: good, out_of_vocab, positive, int32,
    over_one (what each prompt_logprobs row holds)."""

    def __init__(self, tokenizer, vocab: int):
        self.tokenizer, self.vocab = tokenizer, vocab
        self.models: str | None = None
        self.signal = "good"
        self.completions = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, body: bytes, status: int = 200):
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/v1/models":
                    good = {"object": "list", "data": [{"id": "tiny", "object": "model", "max_model_len": 256}]}
                    self.reply(BAD_MODELS[owner.models] if owner.models else json.dumps(good).encode())
                else:
                    self.reply(b"{}", 404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if self.path == "/tokenize":
                    ids = owner.tokenizer(body["prompt"], add_special_tokens=False)["input_ids"]
                    self.reply(json.dumps({"tokens": ids, "count": len(ids)}).encode())
                elif self.path == "/v1/completions":
                    owner.completions += 1
                    rows = [None] + [owner.row(t) for t in body["prompt"][1:]]
                    self.reply(json.dumps({"choices": [{"text": "x", "finish_reason": "length",
                                                        "prompt_logprobs": rows}],
                                           "usage": {"prompt_tokens": len(rows), "completion_tokens": 1}}).encode())
                else:
                    self.reply(b"{}", 404)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def row(self, token: int) -> dict:
        """K alternatives: the token itself and its neighbours, probabilities 0.6, 0.2, 0.1, 0.05."""
        ids = [(token + j) % self.vocab for j in range(K)]
        lps = [math.log(p) for p in (0.6, 0.2, 0.1, 0.05)]
        if self.signal == "out_of_vocab":
            ids = [self.vocab + 1000 + j for j in range(K)]  # every id outside: the KD term would see only the tail
        elif self.signal == "int32":
            ids[0] = 2**40
        elif self.signal == "positive":
            lps[0] = 50.0
        elif self.signal == "over_one":
            lps = [math.log(0.9)] * K
        return {str(i): {"logprob": lp, "rank": r + 1, "decoded_token": "?"} for r, (i, lp) in enumerate(zip(ids, lps))}

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def teacher_server(tiny):
    tok = models.load_tokenizer(str(tiny["teacher"]))
    with TeacherServer(tok, len(tok)) as server:
        yield server


def served(tiny, server):
    return served_teacher_config(str(tiny["teacher"]), None, APIOptions(
        base_url=server.base_url, served_model="tiny", api_key_env=None, max_retries=0))


@pytest.mark.parametrize("reply", BAD_MODELS)
def test_a_malformed_model_list_is_one_line_naming_the_server(tiny, teacher_server, reply):
    tok = models.load_tokenizer(str(tiny["teacher"]))
    assert check_server(served(tiny, teacher_server), tok, 128, K)["served_model"] == "tiny"  # the good reply
    teacher_server.models = reply
    with pytest.raises(UserError) as e:
        check_server(served(tiny, teacher_server), tok, 128, K)
    line = str(e.value)
    assert line.startswith(f"train.served: {teacher_server.base_url}: /models ") and "\n" not in line
    assert "vLLM OpenAI-compatible server is needed" in line


@pytest.mark.parametrize("signal, problem", [
    ("out_of_vocab", r"token id \d+ at position 1 is outside the vocabulary of \d+"),
    ("positive", "log-prob 50 at position 1 is above 0"),
    ("over_one", r"the top-4 probabilities at position 1 sum to 3\.6 > 1"),
    ("int32", r"token id 1099511627776 is not a valid id"),
])
def test_an_impossible_served_signal_stops_with_one_line(tmp_path, tiny, teacher_server, signal, problem):
    tok = models.load_tokenizer(str(tiny["teacher"]))
    seqs = [tok("the teacher scores every token", add_special_tokens=False)["input_ids"]]
    good = ServedScorer(served(tiny, teacher_server), K, tmp_path / "good", len(tok))(seqs)
    assert good[0][0].shape == (len(seqs[0]), K) and signal_problem(*good[0], len(tok)) is None
    teacher_server.signal = signal
    with pytest.raises(UserError, match=problem) as e:
        ServedScorer(served(tiny, teacher_server), K, tmp_path / signal, len(tok))(seqs)
    assert str(e.value).startswith(f"served teacher {teacher_server.base_url}: ") and "\n" not in str(e.value)
    teacher_server.signal = "good"  # the bad reply was not cached: the same cache now gets the good one
    assert signal_problem(*ServedScorer(served(tiny, teacher_server), K, tmp_path / signal, len(tok))(seqs)[0],
                          len(tok)) is None


def test_signal_problem_on_arrays():
    ids = np.array([[2**31 - 1] * 2, [3, 4], [5, 6]], dtype=np.int32)
    lps = np.array([[-np.inf] * 2, [-0.1, -3.0], [-0.5, -1.5]], dtype=np.float32)
    assert signal_problem(ids, lps, 10) is None
    rounded = lps.copy()
    rounded[1] = [1e-6, -20.0]  # float32 rounding of a near-certain token: not a problem
    assert signal_problem(ids, rounded, 10) is None
    assert "outside the vocabulary of 6" in signal_problem(ids, lps, 6)
    empty = lps.copy()
    empty[2] = -np.inf
    assert signal_problem(ids, empty, 10) == \
        "an impossible teacher signal: position 2 has no log-probs (1 of 2 positions)"
    plus_inf = lps.copy()
    plus_inf[1, 0] = np.inf
    assert "log-prob inf at position 1 is above 0" in signal_problem(ids, plus_inf, 10)


@pytest.mark.slow
def test_a_train_run_checks_the_served_signal_and_counts_it(tmp_path, tiny, teacher_server):
    """The bad replies reach the trainer from its DataLoader worker and stop it with one line (`llmdistill
    train`: exit 2, no traceback, nothing saved); once the server is right, the same run trains (no bad reply
    was cached), and metrics.json counts the tokens whose served rows were checked."""
    path, data = make_tiny_config(tmp_path, tiny)
    data["train"].update(student={"teacher_layers": [0]}, sft_baseline=False, max_steps=2, save_steps=10,
                         max_seq_len=128, teacher_signal="served", served_topk=K,
                         served={"base_url": teacher_server.base_url, "served_model": "tiny", "api_key_env": None,
                                 "max_retries": 0})
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    run_stages(cfg, ["generate", "filter"])
    teacher_server.signal = "int32"
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "train", str(path)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    error = [line for line in res.stderr.splitlines() if "error:" in line]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert len(error) == 1 and "is not a valid id" in error[0] and teacher_server.base_url in error[0], error
    teacher_server.signal = "out_of_vocab"
    with pytest.raises(UserError, match=f"served teacher {teacher_server.base_url}: .* outside the vocabulary"):
        run_stages(cfg, ["train"])
    assert not (cfg.run_dir / "train" / "student").exists()
    teacher_server.signal = "good"
    run_stages(cfg, ["train"])
    metrics = store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]
    assert metrics["steps"] == 2 and metrics["served_signal_checked_tokens"] > 0
    history = store.read_json(cfg.run_dir / "train" / "log_history.student.json")
    assert metrics["served_signal_checked_tokens"] == sum(h.get("tokens", 0) for h in history)
