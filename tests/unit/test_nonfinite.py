"""A diverged run stops with one line instead of saving a NaN student (Trainer's own loss filter hides it)."""

import math
from types import SimpleNamespace

import pytest

from llmdistill.errors import UserError
from llmdistill.train.trainer import StopOnNonFinite


def log(logs):
    StopOnNonFinite().on_log(SimpleNamespace(learning_rate=3e-4), SimpleNamespace(global_step=20), None, logs=logs)


def test_finite_logs_pass():
    log({"loss": 1.2, "grad_norm": 3.4, "loss_forward_kl": 0.9, "learning_rate": 1e-4, "epoch": 0.1})
    log({"train_runtime": 3.0, "note": "text"})


@pytest.mark.parametrize("key,value", [("grad_norm", math.nan), ("loss_forward_kl", "nan"), ("loss_ce", math.inf),
                                       ("eval_loss", -math.inf)])
def test_a_nan_or_infinite_term_stops_training(key, value):
    with pytest.raises(UserError, match=rf"train: {key} is .* at step 20: training diverged .*lower train.lr, "
                       r"now 0.0003"):
        log({"loss": 0.0, key: value})
