"""The model card of a `distill-bert` student (<run>/student/README.md), from the run's records:

    config.resolved.yaml   the config (student, layer map, phases, export) and its fingerprint
    metrics.json           per phase: rows, steps, last losses, val; test: accuracy, macro-F1, latency of the
                           teacher, the student and its exports (agreement with the PyTorch student)
    layer_map.json         the (student, teacher) layer pairs and projections
    student/, onnx/        the files (sizes on disk)
"""

from __future__ import annotations

from pathlib import Path

from llmdistill import store
from llmdistill.cards import common as C

ONNX = ("model.onnx", "model.int8.onnx")  # in <run>/onnx/: the fp32 export and the chosen int8 one
EXPORTS = {"teacher": "teacher (fine-tuned)", "student": "student (PyTorch)", "student_torch_int8": "student, torch "
           "dynamic int8", "student_onnx": "student, ONNX fp32", "student_onnx_int8": "student, ONNX int8"}


def bert_card(run_dir: Path, repo_id: str | None = None) -> str:
    """The card of `run_dir`/student; `repo_id`: written for that Hub repo (no local paths)."""
    run_dir = Path(run_dir)
    resolved = C.read_config(run_dir) or {}
    cfg = resolved.get("config") or {}
    metrics = C.read_json(run_dir / "metrics.json") or {}
    layer_map = C.read_json(run_dir / "layer_map.json") or {}
    done = store.read_success(run_dir)
    teacher = C.teacher_origin((cfg.get("teacher") or {}).get("model"), hub=repo_id is not None)
    labels = (cfg.get("data") or {}).get("labels") or []
    student = cfg.get("student") or {}
    phases = cfg.get("phases") or []
    onnx = [f for f in ONNX if (run_dir / "onnx" / f).is_file()]

    from huggingface_hub import ModelCardData

    losses = sorted({n for p in phases for n, w in (p.get("losses") or {}).items()
                     if isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0
                     and n not in ("alpha", "temperature", "relation_heads", "minilm_teacher_layer")})
    data = ModelCardData(base_model=teacher["base_model"], library_name="onnx" if onnx else None,
                         pipeline_tag="text-classification", license=teacher["license"],
                         tags=["distillation", "llmdistill", "knowledge-distillation", "bert",
                               f"student-{student.get('kind', 'unknown')}", *losses],
                         model_name=cfg.get("name", run_dir.name))
    name = cfg.get("name", run_dir.name)
    body = [f"# {name}: a distilled text classifier",
            f"A {student.get('kind', '?')} student distilled from **{teacher['name']}** ({teacher['note']}), "
            f"fine-tuned first as the teacher, for the labels {', '.join(f'`{x}`' for x in labels)}; made by "
            f"`llmdistill distill-bert` {resolved.get('llmdistill', '')}. Written by llmdistill from the run's "
            "config.resolved.yaml, metrics.json and layer_map.json; nothing in it was written by hand.",
            "## Student", _student(run_dir, student, metrics, layer_map),
            "## Training recipe", _phases(phases, metrics),
            "## Evaluation", _tests(metrics, run_dir) if done and metrics.get("test")
            else "Not measured yet: the run has not finished (no _SUCCESS with metrics.json).",
            "## Files", _files(run_dir, onnx, metrics),
            "## How to use it", _usage(run_dir, repo_id, onnx, labels, (cfg.get("data") or {}).get("max_seq_len")),
            "## Provenance", C.table(["", ""], [["config fingerprint", (done or {}).get("fingerprint", "-")],
                                                ["llmdistill", resolved.get("llmdistill", "-")],
                                                ["torch", resolved.get("torch", "-")], ["seed", cfg.get("seed", "-")]])]
    return C.card_text(data, "\n\n".join(body))


def _student(run_dir: Path, student: dict, metrics: dict, layer_map: dict) -> str:
    kind = student.get("kind")
    shape = {"narrow": f"{student.get('num_layers')} layers x {student.get('hidden_size')} hidden, "
                       f"{student.get('num_heads')} heads, feed-forward {student.get('intermediate_size')}, "
                       f"embeddings {student.get('embedding_size')}",
             "bilstm": f"BiLSTM, {student.get('lstm_hidden')} per direction, "
                       f"embeddings {student.get('embedding_size')}",
             "layer_subset": f"teacher layers {layer_map.get('student_init_layers', student.get('teacher_layers'))}",
             "pretrained": "an existing small encoder"}.get(kind, "-")
    t, s = metrics.get("teacher_parameters"), metrics.get("student_parameters")
    rows = [["kind", kind], ["shape", shape],
            ["parameters", f"{s / 1e6:.2f}M of the teacher's {t / 1e6:.2f}M ({t / s:.1f}x fewer)" if s and t else "-"],
            ["layer map (student, teacher)", ", ".join(f"({a}, {b})" for a, b in layer_map.get("pairs") or []) or "-"],
            ["projections", ", ".join(f"{k}: {v.get('in')} -> {v.get('out')}"
                                      for k, v in (layer_map.get("projections") or {}).items()) or "none"]]
    return C.table(["", ""], rows)


def _phases(phases: list[dict], metrics: dict) -> str:
    done = {p.get("name"): p for p in metrics.get("phases") or []}
    rows = []
    for p in phases:
        m = done.get(p.get("name")) or {}
        losses = p.get("losses") or {}
        active = [f"{w} x {n}" for n, w in losses.items() if isinstance(w, (int, float)) and not isinstance(w, bool)
                  and w > 0 and n not in ("alpha", "temperature", "relation_heads", "minilm_teacher_layer")]
        if "kd" in losses and losses.get("kd"):
            active.append(f"(T {losses.get('temperature')}, alpha {losses.get('alpha')})")
        val = (m.get("val") or {}).get("accuracy")
        rows.append([p.get("name"), p.get("mode"), p.get("data"), m.get("rows", "-"), m.get("steps", "-"),
                     p.get("batch_size"), p.get("lr"), " + ".join(active), C.num(val)])
    return C.table(["phase", "mode", "rows", "rows used", "steps", "batch", "lr", "loss", "val accuracy"], rows)


def _tests(metrics: dict, run_dir: Path) -> str:
    test = metrics["test"]
    base = (test.get("teacher") or {}).get("latency_ms_b1")
    rows = []
    for key, m in test.items():
        rows.append([EXPORTS.get(key, key), C.num(m.get("accuracy"), ".4f"), C.num(m.get("macro_f1"), ".4f"),
                     m.get("n", "-"), C.num(m.get("agreement_with_student"), ".4f"),
                     C.num(m.get("latency_ms_b1"), ".2f"), C.num(m.get("latency_ms_b32"), ".2f"),
                     f"{base / m['latency_ms_b1']:.1f}x" if base and m.get("latency_ms_b1") else "-"])
    int8 = test.get("student_onnx_int8") or {}
    note = f" The int8 export is the `{int8['option']}` option." if int8.get("option") else ""
    return "\n\n".join(["On the test split (metrics.json), CPU latency per batch of 1 and of 32:" + note,
                        C.table(["model", "accuracy", "macro-F1", "rows", "agreement with the PyTorch student",
                                 "ms (batch 1)", "ms (batch 32)", "speed-up vs teacher (batch 1)"], rows)])


def _files(run_dir: Path, onnx: list[str], metrics: dict) -> str:
    rows = [["student/model.safetensors", C.mib(C.weights_bytes(run_dir / "student", ("model.safetensors",))),
             "the PyTorch weights (llmdistill's classifier: llmdistill_bert.json holds its architecture)"]]
    for f in onnx:
        rows.append([f"onnx/{f}", C.mib((run_dir / "onnx" / f).stat().st_size),
                     "ONNX, int8-quantised" if "int8" in f else "ONNX, fp32"])
    if not onnx:
        rows.append(["onnx/", "-", "not exported (export.onnx: false)"])
    return C.table(["file", "size", "what"], rows)


def _usage(run_dir: Path, repo_id: str | None, onnx: list[str], labels: list[str], max_len: int | None) -> str:
    if not onnx:
        where = repo_id or str((run_dir / "student").resolve())
        fetch = f'path = snapshot_download("{repo_id}")' if repo_id else f'path = "{where}"'
        return C.code(f"""
{"from huggingface_hub import snapshot_download" if repo_id else ""}
from transformers import AutoTokenizer
from llmdistill.bert.models import load_model

{fetch}
tokenizer, model = AutoTokenizer.from_pretrained(path), load_model(path)
enc = tokenizer(["what a great day"], padding=True, truncation=True, max_length={max_len}, return_tensors="pt")
print(model(enc["input_ids"], enc["attention_mask"]).argmax(-1).tolist())  # class ids of {labels}
""")
    chosen = "model.int8.onnx" if "model.int8.onnx" in onnx else onnx[0]
    if repo_id:
        head = "from huggingface_hub import hf_hub_download\n"
        tok, model = f'"{repo_id}"', f'hf_hub_download("{repo_id}", "onnx/{chosen}")'
    else:
        head = ""
        tok, model = f'"{(run_dir / "student").resolve()}"', f'"{(run_dir / "onnx" / chosen).resolve()}"'
    return C.code(f"""
import numpy as np
import onnxruntime as ort
{head}from transformers import AutoTokenizer

labels = {labels!r}
tokenizer = AutoTokenizer.from_pretrained({tok})
session = ort.InferenceSession({model})
enc = tokenizer(["what a great day"], padding=True, truncation=True, max_length={max_len}, return_tensors="np")
logits = session.run(["logits"], {{"input_ids": enc["input_ids"].astype(np.int64),
                                   "attention_mask": enc["attention_mask"].astype(np.int64)}})[0]
print([labels[i] for i in logits.argmax(-1)])
""")
