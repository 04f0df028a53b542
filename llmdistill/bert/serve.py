"""A minimal prediction endpoint for a distilled classifier (stdlib http.server, JSON).

    POST /predict  {"texts": ["...", ...]}  ->  {"labels": [...], "ids": [...], "probs": [[...], ...]}
    GET  /health                             ->  {"status": "ok", "model": ..., "labels": [...]}

The model is an ONNX file (run with onnxruntime) or a saved llmdistill classifier directory (PyTorch);
the tokenizer is read from the run's student directory.
"""

from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from llmdistill.bert import data as bdata
from llmdistill.bert import export as bexport
from llmdistill.bert import models as bmodels
from llmdistill.errors import UserError

log = logging.getLogger("llmdistill")
MAX_TEXTS = 256


class Predictor:
    """texts -> (class ids, probabilities) with a fixed tokenizer and model."""

    def __init__(self, model_path: Path, tokenizer_dir: Path, labels: list[str], max_seq_len: int = 64):
        from llmdistill.bert.teacher import load_tokenizer

        self.labels, self.max_seq_len, self.name = labels, max_seq_len, str(model_path)
        self.tokenizer = load_tokenizer(tokenizer_dir)
        if Path(model_path).suffix == ".onnx":
            self.forward = bexport.onnx_forward(bexport.onnx_session(model_path))
        elif bmodels.is_saved_model(model_path):
            self.forward = bexport.torch_forward(bmodels.load_model(model_path))
        else:
            raise UserError(f"{model_path}: neither an .onnx file nor a saved llmdistill classifier")

    def __call__(self, texts: list[str]) -> tuple[list[int], np.ndarray]:
        enc = bdata.encode(bdata.Rows(texts, [bdata.UNLABELLED] * len(texts)), self.tokenizer, self.max_seq_len)
        logits = np.asarray(self.forward(bdata.collate(enc, list(range(len(texts))))), dtype=np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return probs.argmax(-1).tolist(), probs


def make_handler(predictor: Predictor):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict) -> None:
            raw = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                self._send(200, {"status": "ok", "model": predictor.name, "labels": predictor.labels})
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self):  # noqa: N802
            if self.path != "/predict":
                return self._send(404, {"error": f"no route {self.path}"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
            except json.JSONDecodeError as e:
                return self._send(400, {"error": f"body is not JSON: {e.msg}"})
            texts = body.get("texts") if isinstance(body, dict) else None
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                return self._send(400, {"error": "body must be {\"texts\": [non-empty list of strings]}"})
            if len(texts) > MAX_TEXTS:
                return self._send(400, {"error": f"at most {MAX_TEXTS} texts per request"})
            ids, probs = predictor(texts)
            self._send(200, {"labels": [predictor.labels[i] for i in ids], "ids": ids,
                             "probs": np.round(probs, 6).tolist()})

        def log_message(self, fmt, *args):
            log.debug("serve: " + fmt, *args)

    return Handler


def make_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A server bound to host:port (port 0 = any free port: read it from `server.server_address`)."""
    return ThreadingHTTPServer((host, port), make_handler(predictor))


def predictor_for_run(run_dir: Path, onnx: str = "int8") -> Predictor:
    """The predictor of a finished distill-bert run: its int8 ONNX, fp32 ONNX, or PyTorch student."""
    import yaml

    run_dir = Path(run_dir)
    if not (run_dir / "_SUCCESS").is_file():
        raise UserError(f"{run_dir}: not a finished distill-bert run (no _SUCCESS)")
    cfg = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())["config"]
    model = {"int8": run_dir / "onnx" / "model.int8.onnx", "fp32": run_dir / "onnx" / "model.onnx",
             "torch": run_dir / "student"}[onnx]
    if not model.exists():
        raise UserError(f"{model} not found (was export.onnx / export.int8 off?)")
    return Predictor(model, run_dir / "student", cfg["data"]["labels"], cfg["data"]["max_seq_len"])
