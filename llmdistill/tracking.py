"""Experiment tracking: training and eval metrics in TensorBoard, MLflow and Trackio (`report_to`).

One tracker run per trained model: each variant of the train stage (student, sft_baseline) and each BERT run.
`Run.start` opens it in every tracker named, or, given the record of an earlier attempt, opens that run again (a
resumed training goes on in the run it started); `log` sends scalars at a step; `close` ends it. `Run.record` is
what finds the run again later: the train stage writes it to train/tracking.json, and the eval stage reopens each
variant's run from there (`Run.reopen`) to log its metrics into it.

Where each tracker keeps a run:
    tensorboard  event files in <run dir>/tensorboard/<variant>-<time>/ (tensorboard --logdir runs/<name>/tensorboard)
    mlflow       the store MLFLOW_TRACKING_URI names (a server, a database, a directory), else mlflow's default;
                 the experiment is `project`, the run is named <name>/<variant>-<time>
    trackio      trackio's local store (TRACKIO_DIR, else its default); the project is `project`, the run named as
                 in mlflow

Metric names are the same in every tracker (`trainer_scalars`, `flatten`): train/<key> for each training log entry
(train/loss, train/loss_<term>, train/curriculum_level, train/rollouts_*), heldout/<key> for the held-out
evaluation during training (train.eval_every), eval/<metric> for the eval stage. A tracker that fails while
logging is reported once and dropped, and training goes on (its checkpoints and metrics.json are what count); one
that cannot be opened is a one-line error before training starts.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path

from llmdistill.config import TRACKER_PACKAGES, literal_values
from llmdistill.config.base import Tracker
from llmdistill.errors import UserError, first_line

log = logging.getLogger("llmdistill")

RECORD = "tracking.json"  # in the train stage's directory: each variant's run, for the eval stage
TENSORBOARD_DIR = "tensorboard"  # in the run directory


def run_label(variant: str) -> str:
    """`<variant>-<UTC time>`: a new run per training attempt (a resumed one keeps its label)."""
    return f"{variant}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


# how a backend opens its run: "new" (create it), "resume" (a resumed training goes on in it), "append" (the eval
# stage adds its metrics to a finished run, whose status stays as it is)
MODES = ("new", "resume", "append")


class _TensorBoard:
    """Event files in one directory (a run of its own in TensorBoard); reopening adds an event file beside."""

    def __init__(self, record: dict, params: dict | None, mode: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=record["dir"])
        if params:
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()))

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self, status: str | None) -> None:
        self.writer.close()


class _MLflow:
    """A run in an MLflow store, through MlflowClient (no process-wide active run): created once, then found by its
    id. Params are logged when it is created only (MLflow refuses to change one)."""

    BATCH = 100  # params per request (MLflow's limit); metrics go in requests of up to 1000

    def __init__(self, record: dict, params: dict | None, mode: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=record["uri"])
        if mode == "new":
            experiment = self.client.get_experiment_by_name(record["experiment"])
            if experiment is None:
                try:
                    experiment_id = self.client.create_experiment(record["experiment"])
                except Exception:  # created meanwhile by another process
                    experiment_id = self.client.get_experiment_by_name(record["experiment"]).experiment_id
            else:
                experiment_id = experiment.experiment_id
            run = self.client.create_run(experiment_id, run_name=record["name"], tags=record.get("tags") or {})
            record["run_id"] = run.info.run_id
            record["experiment_id"] = experiment_id
            if params:
                from mlflow.entities import Param

                items = [Param(k, str(v)[:6000]) for k, v in params.items()]
                for i in range(0, len(items), self.BATCH):
                    self.client.log_batch(record["run_id"], params=items[i : i + self.BATCH])
        elif mode == "resume":
            self.client.update_run(record["run_id"], status="RUNNING")
        self.run_id = record["run_id"]

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        items = [Metric(k, v, stamp, step) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def close(self, status: str | None) -> None:
        if status is not None:
            self.client.set_terminated(self.run_id, status)


class _Trackio:
    """A run in trackio's local store, found again by its project and name."""

    def __init__(self, record: dict, params: dict | None, mode: str):
        import trackio

        # no background CPU/GPU sampling, no dashboard in a notebook: the run's own metrics only
        self.run = trackio.init(project=record["project"], name=record["name"], config=params or None,
                                resume="allow" if mode == "new" else "must", auto_log_cpu=False, auto_log_gpu=False,
                                embed=False)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self, status: str | None) -> None:
        self.run.finish()


BACKENDS = {"tensorboard": _TensorBoard, "mlflow": _MLflow, "trackio": _Trackio}
assert set(BACKENDS) == set(literal_values(Tracker)) == set(TRACKER_PACKAGES), "BACKENDS and config's Tracker disagree"


class Run:
    """One run open in each of the trackers of `record` (see the module docstring)."""

    def __init__(self, record: dict, mode: str, params: dict | None = None, what: str = "report_to"):
        self.record = record
        self.what = what
        self.backends: dict[str, object] = {}
        name = ""
        try:
            for name in record["trackers"]:
                self.backends[name] = BACKENDS[name](record[name], params, mode)
        except Exception as e:
            self.close("FAILED")
            raise UserError(f"{what}: {name} could not open its run ({_where(name, record[name])}): "
                            f"{first_line(e)}") from None

    @classmethod
    def start(cls, trackers: list[str], *, project: str, name: str, run_dir: Path, params: dict | None = None,
              record: dict | None = None, tags: dict | None = None, what: str = "report_to") -> Run | None:
        """The run `name` (a `run_label`) in each of `trackers`, new, or the one `record` describes (an earlier
        attempt of the same training, which goes on in it); None without trackers. `params`: flat {key: value}
        logged with a new run (the config)."""
        if not trackers:
            return None
        if record is not None and record.get("trackers") == list(trackers):
            log.info("%s: continuing the %s run %s", what, ", ".join(trackers), record["name"])
            return cls(record, "resume", what=what)
        new: dict = {"trackers": list(trackers), "name": name}
        for tracker in trackers:
            if tracker == "tensorboard":
                new[tracker] = {"dir": str(Path(run_dir).resolve() / TENSORBOARD_DIR / name.rsplit("/", 1)[-1])}
            elif tracker == "mlflow":
                import mlflow

                new[tracker] = {"uri": _absolute_uri(mlflow.get_tracking_uri()), "experiment": project,
                                "name": name, "tags": {"llmdistill.run_dir": str(Path(run_dir).resolve()),
                                                       **(tags or {})}}
            else:
                new[tracker] = {"project": project, "name": name}
        run = cls(new, "new", params, what)
        log.info("%s: %s run %s (%s)", what, ", ".join(trackers), name,
                 "; ".join(_where(t, new[t]) for t in trackers))
        return run

    @classmethod
    def reopen(cls, record: dict, what: str) -> Run:
        """The run `record` describes, to add to (the eval stage's metrics): its status is left as it is."""
        return cls(record, "append", what=what)

    def log(self, values: dict[str, float], step: int) -> None:
        """Send `values` (finite numbers; anything else is left out) at `step` to every tracker still working."""
        values = {k: float(v) for k, v in values.items() if _number(v)}
        if not values:
            return
        for name, backend in list(self.backends.items()):
            try:
                backend.log(values, step)
            except Exception as e:  # the run goes on without it: checkpoints and metrics.json are what count
                log.warning("%s: %s stopped logging at step %d (%s); the run goes on without it", self.what, name,
                            step, first_line(e))
                self.backends.pop(name)

    def close(self, status: str | None = "FINISHED") -> None:
        """End the run in every tracker: status FINISHED, FAILED or KILLED (MLflow records it), or None to leave
        it as it was (a reopened run)."""
        for name, backend in list(self.backends.items()):
            try:
                backend.close(status)
            except Exception as e:
                log.warning("%s: %s could not close its run (%s)", self.what, name, first_line(e))
        self.backends.clear()


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _absolute_uri(uri: str) -> str:
    """A tracking URI that means the same from another working directory: a plain or file: path made absolute."""
    if "://" not in uri and not uri.startswith("file:"):
        return Path(uri).resolve().as_uri()
    if uri.startswith("file:") and not uri.startswith("file:///"):
        return Path(uri[len("file:"):]).resolve().as_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def _where(tracker: str, record: dict) -> str:
    if tracker == "tensorboard":
        return f"tensorboard {record['dir']}"
    if tracker == "mlflow":
        return f"mlflow {record['uri']}, experiment {record['experiment']}"
    return f"trackio project {record['project']}"


_BAD = re.compile(r"[^0-9A-Za-z_\-./ ]")


def flatten(values: dict, prefix: str) -> dict[str, float]:
    """Nested metrics as {prefix/a/b: number}: numbers only (booleans and lists left out), names spelled so that
    every tracker takes them (letters, digits, _ - . / and space)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}/{_BAD.sub('_', str(key))}"
        if isinstance(value, dict):
            out.update(flatten(value, name))
        elif _number(value):
            out[name] = float(value)
    return out


def trainer_scalars(logs: dict) -> dict[str, float]:
    """A transformers Trainer log entry as tracker scalars: eval_<key> (the held-out evaluation) -> heldout/<key>,
    any other key -> train/<key>; numbers only."""
    out = {}
    for key, value in logs.items():
        if _number(value):
            name = f"heldout/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
            out[_BAD.sub("_", name)] = float(value)
    return out


def config_params(section: dict, prefix: str = "") -> dict[str, str]:
    """A config section (its model_dump) as flat {dotted.key: text}: the params of a new run."""
    out: dict[str, str] = {}
    for key, value in section.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(config_params(value, f"{name}."))
        else:
            out[name] = str(value)
    return out
