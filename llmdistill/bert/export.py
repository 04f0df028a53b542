"""Export a classifier to ONNX, quantise it to dynamic int8 (onnxruntime, and optionally torch), and
measure each form's predictions and CPU latency the same way.

Latency: median wall time of `runs` forward passes on real rows (batch 1: the first `runs` rows one at a
time; batch 32: `runs` batches), after 3 warm-up passes, with the thread count fixed by the caller.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from llmdistill.bert import data as bdata
from llmdistill.errors import UserError


class _Logits(torch.nn.Module):
    """The classifier as (input_ids, attention_mask) -> logits, for tracing."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask)


def export_onnx(model, path: Path, opset: int = 17) -> Path:
    """Trace the classifier to ONNX with dynamic batch and sequence axes."""
    model.eval()
    example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(_Logits(model), example, str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], opset_version=opset, dynamo=False,
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                    "logits": {0: "batch"}})
    return path


def quantize_onnx(src: Path, dst: Path) -> Path:
    """Dynamic int8 quantisation of the weights of MatMul/Gemm (and friends) with onnxruntime.

    Weights are 7-bit (reduce_range) and per output channel. 7 bits make the result independent of the
    CPU's int8 instructions: on x86 without VNNI (AVX2, many AMD EPYCs) onnxruntime multiplies uint8
    activations by int8 weights with vpmaddubsw, which adds pairs of products in int16 and saturates
    when 255 * 127 * 2 > 32767; with |w| <= 63, 255 * 63 * 2 = 32130 cannot saturate, so VNNI and
    AVX2 machines compute the same integers. Full 8-bit weights saturated here: a tiny trained student
    moved its logits by up to 0.22 (logit sd 0.31) and disagreed with PyTorch on 1.3 % of rows; 7-bit
    per-channel moved them by 0.014 and agreed on every row (tests/integration/test_bert.py).
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # one INFO line per tensor, and a pre-processing hint, on the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    finally:
        root.setLevel(level)
    return dst


def quantize_torch(model) -> torch.nn.Module:
    """torch dynamic int8 quantisation of the Linear (and LSTM) layers."""
    import copy

    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear, torch.nn.LSTM}, dtype=torch.qint8)


def onnx_session(path: Path, threads: int = 1):
    import onnxruntime as ort

    if not Path(path).is_file():
        raise UserError(f"ONNX model not found: {path}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_forward(session) -> Callable[[dict], np.ndarray]:
    def run(batch: dict) -> np.ndarray:
        return session.run(["logits"], {"input_ids": batch["input_ids"].numpy(),
                                        "attention_mask": batch["attention_mask"].numpy()})[0]

    return run


def torch_forward(model) -> Callable[[dict], np.ndarray]:
    model.eval()

    def run(batch: dict) -> np.ndarray:
        with torch.no_grad():
            return model(batch["input_ids"], batch["attention_mask"]).numpy()

    return run


def logits(forward: Callable[[dict], np.ndarray], enc: bdata.Encoded, batch_size: int = 64) -> np.ndarray:
    """[rows, labels] logits of every row, in order."""
    out = [np.asarray(forward(bdata.collate(enc, index))) for index in bdata.batches(enc, batch_size, None)]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def predict(forward: Callable[[dict], np.ndarray], enc: bdata.Encoded, batch_size: int = 64) -> list[int]:
    return logits(forward, enc, batch_size).argmax(-1).tolist()


def latency_ms(forward: Callable[[dict], np.ndarray], enc: bdata.Encoded, batch_size: int, runs: int) -> float:
    """Median milliseconds per forward pass at `batch_size` over real rows."""
    index = list(range(len(enc.ids)))
    batches = [index[(i * batch_size) % len(index):][:batch_size] for i in range(runs + 3)]
    batches = [b if len(b) == batch_size else index[:batch_size] for b in batches]
    times = []
    for i, b in enumerate(batches):
        batch = bdata.collate(enc, b)
        start = time.perf_counter()
        forward(batch)
        if i >= 3:
            times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def agreement(a: list[int], b: list[int]) -> float:
    return round(sum(x == y for x, y in zip(a, b)) / len(a), 4)
