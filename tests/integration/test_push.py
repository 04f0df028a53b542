"""`llmdistill push` up to the upload, against a recording server on 127.0.0.1.

`RecordingHub` (stdlib http.server in a thread, started by each test) stands in for the Hugging Face Hub: it
implements just what huggingface_hub's `create_repo` and `create_commit` call (repo creation, the README
metadata check, preupload, the LFS batch API and its PUTs, the NDJSON commit) and records every request. The CLI
runs in a subprocess with HF_ENDPOINT pointed at it (huggingface_hub reads the endpoint when imported) and Xet
disabled (HF_HUB_DISABLE_XET=1: the legacy LFS protocol, which a stdlib server can speak). The run pushed is the
session's tiny run (conftest.tiny_run)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from huggingface_hub import DatasetCard, ModelCard

from conftest import PYTHON
from llmdistill import store

GOOD_TOKEN = "hf_good_write_token"
LFS_SUFFIXES = (".safetensors", ".parquet", ".onnx", ".bin")  # what the Hub's default .gitattributes puts in LFS


class RecordingHub:
    """A stand-in for the Hub on 127.0.0.1 that records requests and commits. `fail_commit`: "500" answers the
    commit with a server error, "drop" closes the connection without an answer (both after the LFS uploads)."""

    def __init__(self, fail_commit: str | None = None):
        self.requests: list[tuple[str, str]] = []
        self.created: list[dict] = []
        self.validated: list[str] = []
        self.lfs: dict[str, bytes] = {}
        self.commits: list[dict] = []
        self.fail_commit = fail_commit
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while (size := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return data
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                body = self._body()
                hub.requests.append((method, self.path))
                base = f"http://127.0.0.1:{hub.port}"
                parts = self.path.split("?")[0].strip("/").split("/")
                presigned = method == "PUT" and parts[0] == "lfs"  # like a storage URL: no token is sent there
                if not presigned and self.headers.get("Authorization") != f"Bearer {GOOD_TOKEN}":
                    return self._send(401, {"error": "Invalid credentials in Authorization header"})
                if method == "POST" and self.path == "/api/repos/create":
                    payload = json.loads(body)
                    hub.created.append(payload)
                    prefix = "datasets/" if payload.get("type") == "dataset" else ""
                    return self._send(200, {"url": f"{base}/{prefix}{payload['organization']}/{payload['name']}"})
                if method == "POST" and self.path == "/api/validate-yaml":
                    content = json.loads(body)["content"]
                    hub.validated.append(content)
                    yaml.safe_load(content.split("---")[1])  # the front matter must be YAML
                    return self._send(200, {"errors": [], "warnings": []})
                if method == "POST" and "preupload" in parts:
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [
                        {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                         "shouldIgnore": False, "oid": None} for f in files]})
                if method == "POST" and self.path.endswith(".git/info/lfs/objects/batch"):
                    objects = json.loads(body)["objects"]
                    return self._send(200, {"transfer": "basic", "objects": [
                        {"oid": o["oid"], "size": o["size"], "actions": {"upload": {"href": f"{base}/lfs/{o['oid']}"}}}
                        for o in objects]})
                if method == "PUT" and parts[0] == "lfs":
                    if hashlib.sha256(body).hexdigest() != parts[1]:
                        return self._send(400, {"error": "sha256 mismatch"})
                    hub.lfs[parts[1]] = body
                    return self._send(200, {})
                if method == "POST" and "commit" in parts:
                    if hub.fail_commit == "drop":
                        self.close_connection = True
                        return None
                    if hub.fail_commit == "500":
                        return self._send(500, {"error": "Internal Error"})
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    commit = {"path": self.path, "header": lines[0]["value"], "files": {}}
                    for line in lines[1:]:
                        v = line["value"]
                        if line["key"] == "file":
                            commit["files"][v["path"]] = base64.b64decode(v["content"])
                        elif line["key"] == "lfsFile":
                            if v["oid"] not in hub.lfs:
                                return self._send(400, {"error": f"LFS object {v['oid']} was never uploaded"})
                            commit["files"][v["path"]] = hub.lfs[v["oid"]]
                    hub.commits.append(commit)
                    repo = ("datasets/" if parts[1] == "datasets" else "") + "/".join(parts[2:-2])
                    return self._send(200, {"commitUrl": f"{base}/{repo}/commit/{'1' * 40}", "commitOid": "1" * 40,
                                            "pullRequestUrl": None})
                return self._send(404, {"error": f"not implemented here: {method} {self.path}"})

            def do_GET(self):  # noqa: N802 (http.server's name)
                self._handle("GET")

            def do_POST(self):  # noqa: N802
                self._handle("POST")

            def do_PUT(self):  # noqa: N802
                self._handle("PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def cli_push(hub: RecordingHub | None, tmp_path: Path, *args, token: str | None = GOOD_TOKEN):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env |= {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_ENDPOINT": f"http://127.0.0.1:{hub.port if hub else 9}"}
    if token is not None:
        env["HF_TOKEN"] = token
    return subprocess.run([PYTHON, "-m", "llmdistill.cli", "push", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def every_file(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def one_error_line(res) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    errors = [line for line in res.stderr.splitlines() if line.startswith("llmdistill: error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    return errors[0]


def test_push_sends_the_card_weights_and_config_and_nothing_else(tiny_run, tmp_path):
    student = tiny_run / "train" / "student"
    with RecordingHub() as hub:
        res = cli_push(hub, tmp_path, tiny_run, "--to", "me/tiny-student")
    assert res.returncode == 0, res.stderr[-3000:]
    assert hub.created == [{"name": "tiny-student", "organization": "me", "visibility": "private", "type": "model"}]
    assert len(hub.commits) == 1 and hub.commits[0]["path"] == "/api/models/me/tiny-student/commit/main"
    sent = hub.commits[0]["files"]
    expected = {"README.md", "model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "chat_template.jinja"}
    assert set(sent) == expected  # not pruning.json, _SUCCESS, .llmdistill.json, checkpoints
    for name in expected - {"README.md"}:
        assert sent[name] == (student / name).read_bytes(), name
    card = ModelCard(sent["README.md"].decode())
    assert card.data.library_name == "transformers" and "distillation" in card.data.tags
    assert hub.validated == [sent["README.md"].decode()]  # the Hub's metadata check saw the card first
    assert 'path = "me/tiny-student"' in card.text and str(tiny_run.parent) not in card.text  # no local path
    assert "| **student (this model)** |" in card.text
    local = (student / "README.md").read_text(encoding="utf-8")  # the local card: same records, local paths
    assert f'path = "{student.resolve()}"' in local and ModelCard(local).data.tags == card.data.tags
    assert f"pushed {len(expected)} files to http://127.0.0.1:{hub.port}/me/tiny-student" in res.stdout


def test_push_a_dataset_public(tiny_run, tmp_path):
    with RecordingHub() as hub:
        res = cli_push(hub, tmp_path, tiny_run, "--dataset", "filter", "--to", "me/tiny-data", "--public")
    assert res.returncode == 0, res.stderr[-3000:]
    assert hub.created == [{"name": "tiny-data", "organization": "me", "visibility": "public", "type": "dataset"}]
    sent = hub.commits[0]["files"]
    shards = {p.name for p in store.list_shards(tiny_run / "filter")}
    assert set(sent) == {"README.md", "manifest.json", "stats.json", *shards}  # not removed/, not the cache
    assert hub.commits[0]["path"] == "/api/datasets/me/tiny-data/commit/main"
    card = DatasetCard(sent["README.md"].decode())
    assert card.data.configs == [{"config_name": "default", "data_files": [{"split": "train",
                                                                             "path": "part-*.parquet"}]}]
    assert 'load_dataset("me/tiny-data", split="train")' in card.text


def test_a_refused_token_is_one_line_and_nothing_is_committed(tiny_run, tmp_path):
    before = every_file(tiny_run)
    with RecordingHub() as hub:
        line = one_error_line(cli_push(hub, tmp_path, tiny_run, "--to", "me/x", token="hf_revoked"))
    assert "the Hub refused the token for me/x (401)" in line, line
    assert ("POST", "/api/repos/create") in hub.requests and not hub.commits and not hub.lfs
    assert every_file(tiny_run) == before


@pytest.mark.parametrize("failure, says", [("500", "500 Internal Server Error"), ("drop", "disconnected")])
def test_a_server_that_fails_mid_upload_is_one_line_and_changes_nothing_here(tiny_run, tmp_path, failure, says):
    before = every_file(tiny_run)
    with RecordingHub(fail_commit=failure) as hub:
        line = one_error_line(cli_push(hub, tmp_path, tiny_run, "--to", "me/x"))
    assert line.startswith("llmdistill: error: push to me/x failed:") and says in line, line
    assert hub.lfs and not hub.commits  # the weights went up; the commit that would have published them failed
    assert every_file(tiny_run) == before
