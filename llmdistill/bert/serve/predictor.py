"""What the server runs: a finished distill-bert run checked before the port is bound (`check_run`), and the
`Predictor` loaded from it (texts -> class ids and probabilities).

The model is an ONNX file (run with onnxruntime) or a saved llmdistill classifier directory (PyTorch);
the tokenizer is read from the run's student directory. Every problem with the run is one `UserError`.
torch and onnxruntime are imported when the model loads, after the port is bound (it answers 503 meanwhile).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from pydantic import ConfigDict, ValidationError, create_model

from llmdistill.config.bert import BertDataConfig
from llmdistill.errors import UserError, first_line

MODEL_FILES = {"int8": "onnx/model.int8.onnx", "fp32": "onnx/model.onnx", "torch": "student"}

# What serving reads of a run's data section, with the bounds the run was validated under.
_ServedData = create_model("ServedData", __config__=ConfigDict(extra="ignore", strict=True),
                           labels=(list[str], BertDataConfig.model_fields["labels"]),
                           max_seq_len=(int, BertDataConfig.model_fields["max_seq_len"]))


class Predictor:
    """texts -> (class ids, probabilities) with a fixed tokenizer and model."""

    def __init__(self, model_path: Path, tokenizer_dir: Path, labels: list[str], max_seq_len: int = 64,
                 threads: int = 1):
        from llmdistill.bert import export as bexport
        from llmdistill.bert import models as bmodels
        from llmdistill.bert.teacher import load_tokenizer

        self.labels, self.max_seq_len, self.name = list(labels), max_seq_len, str(model_path)
        self.tokenizer = load_tokenizer(tokenizer_dir)
        try:
            if Path(model_path).suffix == ".onnx":
                self.forward = bexport.onnx_forward(bexport.onnx_session(model_path, threads))
            elif bmodels.is_saved_model(model_path):
                import torch

                torch.set_num_threads(threads)
                self.forward = bexport.torch_forward(bmodels.load_model(model_path))
            else:
                raise UserError(f"{model_path}: neither an .onnx file nor a saved llmdistill classifier")
            probe = np.asarray(self.forward(self._batch(["probe"])))
        except UserError:
            raise
        except Exception as e:  # a damaged file: onnxruntime, safetensors and torch each raise their own type
            raise UserError(f"cannot load the model {model_path}: {first_line(e)}") from None
        if probe.shape != (1, len(self.labels)):
            raise UserError(f"{model_path} gives logits of shape {list(probe.shape)} for one text, but the run "
                            f"has {len(self.labels)} labels")

    def _batch(self, texts: list[str]) -> dict:
        from llmdistill.bert import data as bdata

        enc = bdata.encode(bdata.Rows(texts, [bdata.UNLABELLED] * len(texts)), self.tokenizer, self.max_seq_len)
        return bdata.collate(enc, list(range(len(texts))))

    def __call__(self, texts: list[str]) -> tuple[list[int], np.ndarray]:
        logits = np.asarray(self.forward(self._batch(texts)), dtype=np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return probs.argmax(-1).tolist(), probs


@dataclass(frozen=True)
class ServedRun:
    """A finished run as checked before binding: what `load` needs, every path known to exist."""

    model_path: Path
    tokenizer_dir: Path
    labels: list[str]
    max_seq_len: int

    def load(self, threads: int = 1) -> Predictor:
        return Predictor(self.model_path, self.tokenizer_dir, self.labels, self.max_seq_len, threads)


def check_run(run_dir: Path, form: str = "int8") -> ServedRun:
    """Everything about `run_dir` that can be checked without loading the model: finished, its resolved
    config readable with valid labels and max_seq_len, the model file and the tokenizer directory present."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory" if not run_dir.exists() else
                        f"{run_dir} is not a directory (give a distill-bert run directory)")
    if not (run_dir / "_SUCCESS").is_file():
        raise UserError(f"{run_dir}: not a finished distill-bert run (no _SUCCESS)")
    resolved = run_dir / "config.resolved.yaml"
    try:
        doc = yaml.safe_load(resolved.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{resolved}: missing (every finished distill-bert run has one)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{resolved}: cannot be read: {first_line(e)}") from None
    data = doc.get("config", {}).get("data") if isinstance(doc, dict) and isinstance(doc.get("config"), dict) else None
    if not isinstance(data, dict):
        raise UserError(f"{resolved}: no config.data section (not a distill-bert run's resolved config)")
    try:
        served = _ServedData.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in ("config", "data", *err["loc"]))
        raise UserError(f"{resolved}: {where}: {err['msg']}") from None
    if form not in MODEL_FILES:
        raise UserError(f"the model form must be one of {', '.join(MODEL_FILES)}, got {form!r}")
    model = run_dir / MODEL_FILES[form]
    if form == "torch" and not model.is_dir():
        raise UserError(f"{model}: missing (the saved PyTorch student)")
    if form != "torch" and not model.is_file():
        raise UserError(f"{model} not found (was export.onnx / export.int8 off for this run?)")
    tokenizer_dir = run_dir / "student"
    if not tokenizer_dir.is_dir():
        raise UserError(f"{tokenizer_dir}: missing (the run's tokenizer is read from there)")
    return ServedRun(model, tokenizer_dir, served.labels, served.max_seq_len)


def predictor_for_run(run_dir: Path, onnx: str = "int8", threads: int = 1) -> Predictor:
    """The predictor of a finished distill-bert run: its int8 ONNX, fp32 ONNX, or PyTorch student."""
    return check_run(run_dir, onnx).load(threads)
