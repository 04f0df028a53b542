"""train.report_to end to end: a tiny real pipeline (2 training steps on the tiny Llama, a held-out evaluation
every step, then the eval stage) reports to TensorBoard, MLflow (a file store in tmp_path) and Trackio (a local
store in tmp_path) at once, and each tracker's own reader finds, in one run per variant, every loss term, the
held-out losses, the curriculum level and the eval stage's metrics, with the values train and eval wrote to their
files. The BERT path reports too; an MLflow tracking server started on 127.0.0.1 gets a run (slow)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import make_tiny_config
from llmdistill import store, tracking
from llmdistill.config import load_config
from llmdistill.pipeline import run_stages

TRACKED = ["train.max_steps=2", "train.save_steps=2", "train.sft_baseline=false", "train.logging_steps=1",
           "train.eval_every=1", "train.eval_fraction=0.2", "eval.latency_prompts=1",
           "train.report_to=[tensorboard, mlflow, trackio]", "train.tracking_project=tiny-tests"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """MLflow's and Trackio's stores in a temporary directory, for this module's tests: MLflow's a file store (a new
    SQLite one runs MLflow's migrations first, about 9 s here; the server test uses one), which MLflow 3.18 takes once
    MLFLOW_ALLOW_FILE_STORE says so."""
    root = tmp_path_factory.mktemp("tracker-stores")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", (root / "mlruns").as_uri())
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        mp.setenv("TRACKIO_DIR", str(root / "trackio"))
        yield root


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny, stores):
    path, _ = make_tiny_config(tmp_path_factory.mktemp("tracked"), tiny)
    cfg = load_config(path, TRACKED)
    run_stages(cfg)
    train, evaluated = cfg.run_dir / "train", cfg.run_dir / "eval"
    return {"cfg": cfg, "path": path, "record": store.read_json(train / tracking.RECORD),
            "history": store.read_json(train / "log_history.student.json"),
            "eval": store.read_json(evaluated / "metrics.json")["models"]}


def _logged(history: list[dict], key: str) -> list[tuple[int, float]]:
    return [(h["step"], h[key]) for h in history if key in h]


def test_one_run_per_variant_is_recorded(tracked):
    record = tracked["record"]
    assert list(record) == ["student"]
    run = record["student"]
    assert run["trackers"] == ["tensorboard", "mlflow", "trackio"] and run["name"].startswith("tiny/student-")
    assert run["tensorboard"]["dir"].startswith(str(tracked["cfg"].run_dir / "tensorboard" / "student-"))


def test_tensorboard_holds_each_loss_term_the_curriculum_and_the_eval_metrics(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tracked["record"]["student"]["tensorboard"]["dir"], size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {tag: [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars(tag)]
               for tag in acc.Tags()["scalars"]}
    history = tracked["history"]
    for key in ("loss", "loss_forward_kl", "loss_ce", "curriculum_level", "grad_norm", "learning_rate"):
        assert scalars[f"train/{key}"] == _logged(history, key), key
    for key in ("loss", "loss_forward_kl", "loss_ce"):  # the held-out batches, every step
        assert scalars[f"heldout/{key}"] == _logged(history, f"eval_{key}"), key
    student = tracked["eval"]["student"]
    for key in ("kl_to_teacher", "top1_agreement", "perplexity"):
        assert scalars[f"eval/{key}"] == [(2, pytest.approx(student[key], rel=1e-6))], key
    assert scalars["eval/teacher/parameters"] == [(2, tracked["eval"]["teacher"]["parameters"])]


def test_mlflow_holds_the_per_term_losses_and_the_eval_metrics_in_one_run(tracked):
    from mlflow.tracking import MlflowClient

    record = tracked["record"]["student"]["mlflow"]
    client = MlflowClient(tracking_uri=record["uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == tracked["record"]["student"]["name"]
    assert client.get_experiment(run.info.experiment_id).name == "tiny-tests"
    assert run.data.params["train.max_steps"] == "2" and run.data.params["variant.mode"] == "offline"
    history = tracked["history"]
    for key in ("loss_forward_kl", "loss_ce", "curriculum_level"):
        got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"train/{key}")]
        assert got == [(s, pytest.approx(v, rel=1e-6)) for s, v in _logged(history, key)], key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "heldout/loss_forward_kl")] == [1, 2]
    student = tracked["eval"]["student"]
    for key in ("kl_to_teacher", "jsd_to_teacher", "top1_agreement", "topk_overlap"):
        assert run.data.metrics[f"eval/{key}"] == pytest.approx(student[key], rel=1e-6), key
    assert run.data.metrics["eval/by_level/1/kl_to_teacher"] == pytest.approx(student["by_level"]["1"]["kl_to_teacher"],
                                                                             rel=1e-6)


def test_trackio_holds_the_logged_metrics(tracked):
    from trackio.sqlite_storage import SQLiteStorage

    run = tracked["record"]["student"]["trackio"]
    logs = SQLiteStorage.get_logs(project=run["project"], run=run["name"])
    by_step: dict[int, dict] = {}
    for entry in logs:
        by_step.setdefault(entry["step"], {}).update(entry)
    history = tracked["history"]
    for key in ("loss_forward_kl", "loss_ce", "curriculum_level"):
        assert [(s, by_step[s][f"train/{key}"]) for s, _ in _logged(history, key)] == [
            (s, pytest.approx(v, rel=1e-6)) for s, v in _logged(history, key)], key
    assert by_step[2]["eval/kl_to_teacher"] == pytest.approx(tracked["eval"]["student"]["kl_to_teacher"], rel=1e-6)


def test_bert_run_reports_its_loss_terms_and_test_metrics(tmp_path, stores):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tiny_bert import build_teacher, distill

    out = distill(build_teacher(tmp_path / "bert"), tmp_path / "runs",
                  ["report_to=[tensorboard, mlflow]", "log_every=1", "export.onnx=false"])
    record = store.read_json(out / tracking.RECORD)
    metrics = store.read_json(out / "metrics.json")
    acc = EventAccumulator(record["tensorboard"]["dir"], size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss_kd", "train/learning_rate", "test/student/accuracy", "test/teacher/accuracy"} <= tags
    assert [e.step for e in acc.Scalars("train/loss_kd")] == [1, 2, 3]
    assert acc.Scalars("test/student/accuracy")[0].value == pytest.approx(metrics["test"]["student"]["accuracy"])

    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=record["mlflow"]["uri"]).get_run(record["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["val/kd/accuracy"] == pytest.approx(metrics["phases"][0]["val"]["accuracy"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_an_mlflow_tracking_server_on_loopback_receives_the_run(tracked, tmp_path, monkeypatch):
    """A real `mlflow server` on 127.0.0.1 (SQLite behind it, artifacts in tmp_path), started and stopped here; the
    train stage is forced to run again against it (MLFLOW_TRACKING_URI) and eval adds its metrics."""
    from mlflow.tracking import MlflowClient

    port = _free_port()
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    server = subprocess.Popen(
        [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--default-artifact-root",
         str(tmp_path / "artifacts")],
        stdout=open(tmp_path / "server.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115 (closed with the process)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the mlflow server did not answer in 90 s"
            time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        cfg = load_config(tracked["path"], [*TRACKED[:-2], "train.report_to=[mlflow]"])
        run_stages(cfg, ("train", "eval"), force={"train"})
        record = store.read_json(cfg.run_dir / "train" / tracking.RECORD)["student"]["mlflow"]
        assert record["uri"] == url
        client = MlflowClient(tracking_uri=url)
        run = client.get_run(record["run_id"])
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_forward_kl")] == [1, 2]
        evaluated = store.read_json(cfg.run_dir / "eval" / "metrics.json")["models"]["student"]
        assert run.data.metrics["eval/top1_agreement"] == pytest.approx(evaluated["top1_agreement"], rel=1e-6)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
