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


# ONNX node-name marks of the parts an int8 option can keep in fp32 (the traced module paths: the BERT
# students' backbone.embeddings and head, the BiLSTM's embed and mlp)
FP32_PARTS = {"embeddings": ("/embeddings/", "/embed/"), "head": ("/model/head/", "/model/mlp/")}


def fp32_nodes(path: Path, parts: list[str]) -> list[str]:
    """The names of the nodes of the ONNX model at `path` that belong to `parts` (see FP32_PARTS)."""
    import onnx

    marks = tuple(m for p in parts for m in FP32_PARTS[p])
    nodes = [n for n in onnx.load(str(path)).graph.node if any(m in n.name for m in marks)]
    # onnxruntime's quantiser rewrites a Gemm as <name>_MatMul + <name>_Add before it reads the exclusions
    names = [n.name for n in nodes] + [f"{n.name}_MatMul" for n in nodes if n.op_type == "Gemm"]
    if parts and not nodes:
        raise UserError(f"{path}: no nodes of {', '.join(parts)} to keep in fp32")
    return names


class _Calibration:
    """onnxruntime's CalibrationDataReader over encoded rows, 32 at a time."""

    def __init__(self, enc: bdata.Encoded):
        self._batches = iter([bdata.collate(enc, b) for b in bdata.batches(enc, 32, None)])

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {k: batch[k].numpy() for k in ("input_ids", "attention_mask")}


def quantize_onnx(src: Path, dst: Path, mode: str = "dynamic", keep_fp32: list[str] | tuple = (),
                  calibration: bdata.Encoded | None = None) -> Path:
    """int8 quantisation of the weights of MatMul/Gemm/Gather, leaving the nodes of `keep_fp32` in fp32.

    `dynamic` (onnxruntime) also quantises each MatMul's input at run time and multiplies in integers;
    `static` (onnxruntime, QDQ) uses activation ranges calibrated on `calibration` rows; `weights` stores
    the weights in int8 (8-bit, per output channel or per embedding row) and computes in fp32: the size
    of int8 with the agreement of fp32, no speed-up. Dynamic int8 on the 384-wide layer-subset students
    moved logits by up to 0.8 and agreed with PyTorch on about 97.5 % of rows: the per-tensor activation
    ranges (BERT's outlier dimensions), not the weights, as 8-bit weights agreed less, not more.

    Weights are 7-bit (reduce_range) and per output channel. 7 bits make the result independent of the
    CPU's int8 instructions: on x86 without VNNI (AVX2, many AMD EPYCs) onnxruntime multiplies uint8
    activations by int8 weights with vpmaddubsw, which adds pairs of products in int16 and saturates
    when 255 * 127 * 2 > 32767; with |w| <= 63, 255 * 63 * 2 = 32130 cannot saturate, so VNNI and
    AVX2 machines compute the same integers. Full 8-bit weights saturated here: a tiny trained student
    moved its logits by up to 0.22 (logit sd 0.31) and disagreed with PyTorch on 1.3 % of rows; 7-bit
    per-channel moved them by 0.014 and agreed on every row (tests/integration/test_bert.py).
    """
    import logging

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    exclude = fp32_nodes(src, list(keep_fp32))
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # one INFO line per tensor, and a pre-processing hint, on the root logger
    try:
        if mode == "dynamic":
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                             nodes_to_exclude=exclude)
        elif mode == "weights":
            weights_int8(src, dst, exclude)
        elif mode == "static":
            if calibration is None:
                raise UserError("static int8 needs calibration rows")
            quantize_static(str(src), str(dst), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            reduce_range=True, nodes_to_exclude=exclude)
        else:
            raise UserError(f"int8 mode must be dynamic, static or weights, got {mode!r}")
    finally:
        root.setLevel(level)
    return dst


def weights_int8(src: Path, dst: Path, exclude: list[str]) -> Path:
    """Weight-only int8: every 2-D float weight of a MatMul/Gemm becomes int8 + a per-output-channel scale
    behind a DequantizeLinear node; an embedding matrix read by a Gather becomes int8 rows + a per-row scale,
    gathered together, so only the looked-up rows are dequantised. Nodes named in `exclude` keep fp32."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    users: dict[str, list] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            users.setdefault(name, []).append((node, k))
    skip, drop = set(exclude), set()
    added, kept = [], []
    for init in graph.initializer:
        w = numpy_helper.to_array(init)
        use = users.get(init.name, [])
        if w.dtype != np.float32 or w.ndim != 2 or len(use) != 1 or use[0][0].name in skip:
            kept.append(init)
            continue
        node, k = use[0]
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        if node.op_type in ("MatMul", "Gemm") and k == 1:
            axis = 0 if trans_b else 1  # the output channel
        elif node.op_type == "Gather" and k == 0:
            axis = 0  # one scale per row
        else:
            kept.append(init)
            continue
        scale = np.abs(w).max(axis=1 - axis) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        shaped = scale[None, :] if axis == 1 else scale[:, None]
        q = np.clip(np.round(w / shaped), -127, 127).astype(np.int8)
        n = init.name
        kept += [numpy_helper.from_array(q, f"{n}_int8"), numpy_helper.from_array(scale, f"{n}_scale")]
        if node.op_type == "Gather":  # gather int8 rows and their scales, then scale the rows
            ids = node.input[1]
            added += [helper.make_node("Gather", [f"{n}_int8", ids], [f"{n}_rows8"], name=f"{n}_gather8"),
                      helper.make_node("Gather", [f"{n}_scale", ids], [f"{n}_rowscale"], name=f"{n}_gatherscale"),
                      helper.make_node("Cast", [f"{n}_rows8"], [f"{n}_rows"], to=onnx.TensorProto.FLOAT,
                                       name=f"{n}_cast"),
                      helper.make_node("Unsqueeze", [f"{n}_rowscale", f"{n}_axis"], [f"{n}_rowscale1"],
                                       name=f"{n}_unsqueeze"),
                      helper.make_node("Mul", [f"{n}_rows", f"{n}_rowscale1"], [node.output[0]], name=f"{n}_dequant")]
            kept.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{n}_axis"))
            drop.add(id(node))  # the int8 Gather chain replaces it
        else:
            added.append(helper.make_node("DequantizeLinear", [f"{n}_int8", f"{n}_scale"], [n], axis=axis,
                                          name=f"{n}_dequant"))
    nodes = added + [node for node in graph.node if id(node) not in drop]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    graph.ClearField("node")
    graph.node.extend(_topological(nodes, {i.name for i in graph.input} | {i.name for i in kept}))
    onnx.save(model, str(dst))
    return dst


def _topological(nodes: list, available: set[str]) -> list:
    """`nodes` ordered so each comes after the producers of its inputs (ONNX requires it)."""
    done, out, pending = set(available), [], list(nodes)
    while pending:
        ready = [n for n in pending if all(not x or x in done for x in n.input)]
        if not ready:
            raise UserError("int8 weights: the ONNX graph has a cycle or a missing input")
        for n in ready:
            out.append(n)
            done.update(n.output)
        pending = [n for n in pending if n not in ready]
    return out


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
