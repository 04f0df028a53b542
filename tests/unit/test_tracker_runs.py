"""llmdistill/tracking.py without a model: tracker runs opened, continued and reopened in real stores (an MLflow
file store and TensorBoard event files in tmp_path), the metric names every tracker gets, a tracker that fails
mid-run, and report_to's checks in the config."""

from __future__ import annotations

import pytest

from llmdistill import tracking
from llmdistill.config import TRACKER_PACKAGES, ConfigError, TrainConfig, literal_values
from llmdistill.config.base import Tracker
from llmdistill.errors import UserError


def _mlflow_client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _scalars(directory) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch):
    """A file store in tmp_path: instant (a new SQLite store runs MLflow's migrations, about 9 s here), and MLflow
    3.18 takes it once MLFLOW_ALLOW_FILE_STORE says so."""
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def test_the_table_and_the_config_name_the_same_trackers():
    assert set(tracking.BACKENDS) == set(literal_values(Tracker)) == set(TRACKER_PACKAGES)


def test_a_run_is_continued_from_its_record_and_reopened_to_add_to(tmp_path, mlflow_store):
    run = tracking.Run.start(["tensorboard", "mlflow"], project="proj", name="demo/student-1", run_dir=tmp_path,
                             params={"train.lr": "0.001"}, tags={"llmdistill.variant": "student"})
    run.log({"train/loss": 2.0, "train/loss_forward_kl": 1.5, "train/note": float("nan")}, 1)
    run.close("KILLED")
    record = run.record
    client = _mlflow_client(mlflow_store)
    assert client.get_run(record["mlflow"]["run_id"]).info.status == "KILLED"

    again = tracking.Run.start(["tensorboard", "mlflow"], project="proj", name="demo/student-2", run_dir=tmp_path,
                               params={"train.lr": "0.5"}, record=record)  # a resumed attempt: the same run
    assert again.record["mlflow"]["run_id"] == record["mlflow"]["run_id"]
    assert client.get_run(record["mlflow"]["run_id"]).info.status == "RUNNING"
    again.log({"train/loss": 1.0}, 2)
    again.close("FINISHED")
    later = tracking.Run.reopen(record, "eval")
    later.log({"eval/kl_to_teacher": 0.25}, 2)
    later.close(None)

    got = client.get_run(record["mlflow"]["run_id"])
    assert got.info.status == "FINISHED" and got.info.run_name == "demo/student-1"
    assert got.data.params == {"train.lr": "0.001"}  # logged when it was created, never changed
    assert got.data.tags["llmdistill.variant"] == "student"
    assert client.get_experiment(got.info.experiment_id).name == "proj"
    assert [(m.step, m.value) for m in client.get_metric_history(got.info.run_id, "train/loss")] == [(1, 2.0),
                                                                                                   (2, 1.0)]
    assert got.data.metrics["eval/kl_to_teacher"] == 0.25 and "train/note" not in got.data.metrics
    tb = _scalars(record["tensorboard"]["dir"])  # every attempt's event files, in one TensorBoard run
    assert tb["train/loss"] == [(1, 2.0), (2, 1.0)] and tb["eval/kl_to_teacher"] == [(2, 0.25)]
    assert record["tensorboard"]["dir"] == str(tmp_path.resolve() / "tensorboard" / "student-1")


def test_no_trackers_no_run(tmp_path):
    assert tracking.Run.start([], project="p", name="x/y", run_dir=tmp_path) is None


def test_a_tracker_that_fails_mid_run_is_dropped_and_the_others_go_on(tmp_path, mlflow_store, caplog):
    run = tracking.Run.start(["mlflow", "tensorboard"], project="p", name="r/student-1", run_dir=tmp_path)
    _mlflow_client(mlflow_store).delete_run(run.record["mlflow"]["run_id"])  # MLflow now refuses to log to it
    run.log({"train/loss": 1.0}, 1)
    run.log({"train/loss": 0.5}, 2)
    run.close()
    warnings = [r.getMessage() for r in caplog.records if "stopped logging" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("report_to: mlflow stopped logging at step 1 (")
    assert "\n" not in warnings[0]
    assert _scalars(run.record["tensorboard"]["dir"])["train/loss"] == [(1, 1.0), (2, 0.5)]


def test_a_tracker_that_cannot_open_its_run_is_one_line(tmp_path, monkeypatch):
    """MLflow 3.18 refuses a file store unless MLFLOW_ALLOW_FILE_STORE is set: its reason, on one line."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(UserError) as err:
        tracking.Run.start(["tensorboard", "mlflow"], project="p", name="r/student-1", run_dir=tmp_path,
                           what="train.report_to")
    message = str(err.value)
    uri = (tmp_path / "mlruns").as_uri()
    assert message.startswith(f"train.report_to: mlflow could not open its run (mlflow {uri}, experiment p): ")
    assert "MLFLOW_ALLOW_FILE_STORE" in message and "\n" not in message


def test_names_every_tracker_takes():
    logs = {"loss": 1.0, "loss_forward_kl": 0.5, "eval_loss": 2.0, "eval_loss_ce": 3.0, "epoch": 0.5,
            "curriculum_level": 1.5, "flag": True, "text": "x", "bad": float("inf")}
    assert tracking.trainer_scalars(logs) == {
        "train/loss": 1.0, "train/loss_forward_kl": 0.5, "heldout/loss": 2.0, "heldout/loss_ce": 3.0,
        "train/epoch": 0.5, "train/curriculum_level": 1.5}
    nested = {"kl_to_teacher": 0.1, "tasks": {"capitals (fr)": {"accuracy": 0.75, "n": 4}}, "calibration": [1, 2],
              "device": "cpu", "by_level": {"1": {"top1_agreement": 0.5}}}
    assert tracking.flatten(nested, "eval") == {
        "eval/kl_to_teacher": 0.1, "eval/tasks/capitals _fr_/accuracy": 0.75, "eval/tasks/capitals _fr_/n": 4.0,
        "eval/by_level/1/top1_agreement": 0.5}
    assert tracking.config_params({"a": {"b": 1, "c": [1, 2], "d": {}}, "e": None}) == {
        "a.b": "1", "a.c": "[1, 2]", "a.d": "{}", "e": "None"}


def _train_section(report_to) -> dict:
    return {"student": {"teacher_layers": [0]}, "report_to": report_to}


def test_an_unknown_tracker_is_refused_naming_the_known_ones():
    with pytest.raises(Exception) as err:
        TrainConfig.model_validate(_train_section(["wandb"]))
    assert "'tensorboard', 'mlflow' or 'trackio'" in str(err.value)


def test_a_tracker_whose_package_is_missing_is_one_line(monkeypatch, tmp_path):
    from llmdistill.config import load_config

    monkeypatch.setitem(TRACKER_PACKAGES, "trackio", "llmdistill_no_such_package")
    with pytest.raises(Exception, match="trackio is not installed here"):
        TrainConfig.model_validate(_train_section(["tensorboard", "trackio"]))
    config = tmp_path / "c.yaml"
    config.write_text("name: t\nteacher: {model: smollm2-135m-instruct}\ngenerate: {prompts: " + str(config) +
                      "}\ntrain: {student: {teacher_layers: [0]}, report_to: [trackio]}\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    problems = [e for e in err.value.errors if "report_to" in e]
    assert len(problems) == 1 and "\n" not in problems[0] and "pip install llmdistill_no_such_package" in problems[0]


def test_each_tracker_once():
    with pytest.raises(Exception, match="each tracker once"):
        TrainConfig.model_validate(_train_section(["tensorboard", "tensorboard"]))


def test_rollout_statistics_for_each_log_entry(tmp_path):
    """rollouts: vllm: the counts so far, and the mean length of the samples drawn since the last entry (no timing:
    the log history holds what a rerun repeats)."""
    from llmdistill.config import VLLMOptions
    from llmdistill.train.rollouts import Rollouts

    r = Rollouts(tmp_path, None, VLLMOptions(), 64, 16, 1.0, 0)
    r.stats.update(samples=4, sampled_tokens=40, batches_sampled=1, sample_seconds=1.5)
    first = r.log_values()
    assert first["rollouts_samples"] == 4 and first["rollouts_mean_tokens"] == 10.0
    assert not any(k.endswith("_seconds") for k in first)
    r.stats.update(samples=6, sampled_tokens=44)
    assert r.log_values()["rollouts_mean_tokens"] == 2.0
    assert "rollouts_mean_tokens" not in r.log_values()  # nothing sampled since


def test_trackers_change_no_fingerprint_and_keep_the_old_ones():
    """report_to and tracking_project decide where a run is reported, not what it writes: changing them retrains
    nothing, and report_to (hashed before it was a tracker list) is hashed at its default, so the fingerprints of
    runs made before tracking existed still hold."""
    from llmdistill.config import load_config
    from llmdistill.pipeline import _hashed_as_default, _not_hashed, fingerprints

    plain = load_config(None, [])
    tracked = load_config(None, ["train.report_to=[tensorboard]", "train.tracking_project=elsewhere"])
    assert fingerprints(plain) == fingerprints(tracked)
    dumped = _hashed_as_default(tracked, tracked.model_dump(exclude=_not_hashed(tracked)))
    assert dumped["train"]["report_to"] == [] and "tracking_project" not in dumped["train"]
    assert fingerprints(load_config(None, ["train.max_steps=7"]))["train"] != fingerprints(plain)["train"]
