"""`llmdistill distill-bert CONFIG`: teacher -> student -> phases -> eval -> export, in one run directory.

    runs/<name>/config.resolved.yaml   the validated config, versions
    runs/<name>/layer_map.json         resolved (student, teacher) pairs, projections, MiniLM layers
    runs/<name>/student/               weights (safetensors), architecture JSON, tokenizer
    runs/<name>/student/projections.safetensors   the trained student -> teacher projections (if any)
    runs/<name>/onnx/model.onnx, model.int8.onnx
    runs/<name>/metrics.json           per phase: steps, time, last losses, val accuracy; test accuracy and
                                       macro-F1 for teacher, student, ONNX, ONNX int8 (+ agreement, latency)
    runs/<name>/_SUCCESS               written last (`store.mark_success`); holds the config fingerprint
                                       (a rerun with the same config returns the stored metrics)
    runs/<name>/tracking.json          with report_to: the run's tracker run (llmdistill/tracking.py): each loss
                                       term, each phase's validation metrics, the test metrics

Every file is written atomically through `store`, as the LLM stages write theirs, and one run holds the
directory's lock (a second run of the same config waits for nothing: it fails at once, exit 3).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from llmdistill import __version__, store, tracking
from llmdistill.bert import data as bdata
from llmdistill.bert import export as bexport
from llmdistill.bert import layer_map as lmap
from llmdistill.bert import models as bmodels
from llmdistill.bert import objective, signals, students, trainer
from llmdistill.bert import teacher as bteacher
from llmdistill.config import BertDistillConfig
from llmdistill.errors import UserError
from llmdistill.runner import RunLock

log = logging.getLogger("llmdistill")


# how the run is reported, not what it writes: out of the fingerprint (and of `same_training`'s comparison)
NOT_FINGERPRINTED = {"report_to", "tracking_project"}


def fingerprint(cfg: BertDistillConfig) -> str:
    h = hashlib.sha256(json.dumps(cfg.model_dump(mode="json", exclude=NOT_FINGERPRINTED), sort_keys=True).encode())
    for f in (cfg.data.train, cfg.data.val, cfg.data.test, cfg.data.unlabelled):
        if f is not None:
            h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def run(cfg: BertDistillConfig, force: bool = False) -> dict:
    """Run (or reuse) the distillation described by `cfg`; returns the metrics. One process at a time per
    run directory (a second one gets `LockedError`)."""
    out = cfg.run_dir
    fp = fingerprint(cfg)
    if not force and finished(out, fp):  # checked before the lock too: a finished run is read-only work
        log.info("distill-bert %s: done (fingerprint %s), skipping", out, fp)
        return store.read_json(out / "metrics.json")
    with RunLock(out) as lock:
        if not force and finished(out, fp):  # finished by another process since the check above
            return store.read_json(out / "metrics.json")
        if not force and same_training(cfg, out):
            return _reexport(cfg, out, fp)
        children = [child for child in out.iterdir() if child != lock.path]
        if children and not (out / "config.resolved.yaml").exists() and store.read_success(out) is None:
            raise UserError(f"{out} holds files llmdistill did not write (no config.resolved.yaml, which a run "
                            "writes first): refusing to clear it; choose another output_dir or name")
        for child in children:  # a fresh start; the lock file stays (it is what we hold)
            store.remove_path(child)
        return _run(cfg, out, fp)


def same_training(cfg: BertDistillConfig, out: Path) -> bool:
    """Whether `out` holds a finished run that trained what `cfg` trains (only `export` differs): its stored
    config, with today's data files, gives its fingerprint (so the data are unchanged) and equals `cfg`
    outside `export`. Then only the export is redone."""
    info = store.read_success(out)
    if not isinstance(info, dict) or not bmodels.is_saved_model(out / "student"):
        return False
    try:
        stored = BertDistillConfig.model_validate(yaml.safe_load((out / "config.resolved.yaml").read_text())["config"])
    except Exception:  # an older schema or a damaged file: train again
        return False
    if fingerprint(stored) != info.get("fingerprint"):
        return False
    a, b = (c.model_dump(mode="json", exclude=NOT_FINGERPRINTED) for c in (stored, cfg))
    a.pop("export")
    b.pop("export")
    return a == b


def _reexport(cfg: BertDistillConfig, out: Path, fp: str) -> dict:
    """Export and evaluate a finished run's saved student again under `cfg.export`; the training metrics stay."""
    torch.set_num_threads(cfg.threads)
    start = time.time()
    log.info("distill-bert %s: same training, export changed: re-exporting the saved student", out)
    data = _read_data(cfg)
    teacher, tokenizer, teacher_dir = bteacher.get_teacher(cfg)
    metrics = store.read_json(out / "metrics.json")
    store.remove_path(out / "onnx")
    _write_config(cfg, out, fp)  # before the new fingerprint is marked: a run cut short here trains again
    student = bmodels.load_model(out / "student")
    test = bdata.encode(data.test, tokenizer, cfg.data.max_seq_len)
    metrics["test"] = evaluate(cfg, teacher, teacher_dir, student, test, out, *_val_and_calibration(cfg, data,
                                                                                                    tokenizer))
    metrics["reexported"] = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             "seconds": round(time.time() - start, 1)}
    return _finish(cfg, out, fp, metrics)


def _val_and_calibration(cfg: BertDistillConfig, data: Data, tokenizer):
    """The validation rows (the int8 choice) and the first data.train rows that calibrate static int8."""
    val = bdata.encode(data.val, tokenizer, cfg.data.max_seq_len) if data.val is not None else None
    n, labelled = cfg.export.int8_calibration_rows, data.labelled
    return val, bdata.encode(bdata.Rows(labelled.texts[:n], labelled.labels[:n]), tokenizer, cfg.data.max_seq_len)


def _write_config(cfg: BertDistillConfig, out: Path, fp: str) -> None:
    store.atomic_write_bytes(out / "config.resolved.yaml", yaml.safe_dump(
        {"config": cfg.model_dump(mode="json"), "llmdistill": __version__, "torch": str(torch.__version__),
         "fingerprint": fp}, sort_keys=False).encode())


def _finish(cfg: BertDistillConfig, out: Path, fp: str, metrics: dict) -> dict:
    store.atomic_write_json(out / "metrics.json", metrics)
    store.mark_success(out, {"fingerprint": fp, "llmdistill": __version__, "seconds": metrics["seconds"]})
    log.info("distill-bert %s: test %s", out, {k: v["accuracy"] for k, v in metrics["test"].items()})
    return metrics


def _run(cfg: BertDistillConfig, out: Path, fp: str) -> dict:
    torch.set_num_threads(cfg.threads)
    data = _read_data(cfg)  # a bad line fails before any model loads
    _write_config(cfg, out, fp)
    run = tracking.Run.start(cfg.report_to, project=cfg.tracking_project, name=tracking.run_label(cfg.name),
                             run_dir=out, params=tracking.config_params(cfg.model_dump(mode="json")), what="report_to",
                             tags={"llmdistill.run": cfg.name})
    if run is None:
        return _train(cfg, out, fp, data, None)
    store.atomic_write_json(out / tracking.RECORD, run.record)
    try:
        metrics = _train(cfg, out, fp, data, run)
    except BaseException as e:
        run.close("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    run.close("FINISHED")
    return metrics


def _train(cfg: BertDistillConfig, out: Path, fp: str, data: Data, run: tracking.Run | None) -> dict:
    """Teacher, student, phases, evaluation and export; every figure also to the tracker `run` (or None): the
    loss terms at their step (counted over all phases), each phase's val/<phase>/<metric>, test/<model>/<metric>."""
    start = time.time()

    teacher, tokenizer, teacher_dir = bteacher.get_teacher(cfg)
    for p in teacher.parameters():
        p.requires_grad_(False)
    labelled, unlabelled = data.labelled, data.unlabelled
    test = bdata.encode(data.test, tokenizer, cfg.data.max_seq_len)
    val, calibration = _val_and_calibration(cfg, data, tokenizer)

    student = students.build_student(cfg.student, teacher, len(cfg.data.labels), cfg.seed)
    pairs = _pairs(cfg, student, teacher)
    proj = objective.build_projections(student, teacher, pairs, cfg.phases)
    store.atomic_write_json(out / "layer_map.json", _layer_map_record(cfg, student, teacher, pairs, proj))
    log.info("layer map %s; projections %s", pairs, {k: list(m.weight.shape[::-1]) for k, m in proj.items()})

    metrics: dict = {"name": cfg.name, "teacher": str(teacher_dir), "student_kind": cfg.student.kind,
                     "teacher_parameters": bmodels.count_parameters(teacher),
                     "student_parameters": bmodels.count_parameters(student), "seed": cfg.seed, "phases": []}
    special = list(tokenizer.all_special_ids)
    steps = 0  # over every phase so far: the tracker's step
    for i, phase in enumerate(cfg.phases):
        rows = {"labelled": labelled, "unlabelled": unlabelled,
                "both": bdata.concat(labelled, unlabelled) if unlabelled else labelled}[phase.data]
        enc = bdata.encode(rows, tokenizer, cfg.data.max_seq_len)
        signal = _signal(cfg, phase, teacher, teacher_dir, enc)
        step = objective.PhaseObjective(phase, student, teacher, signal, pairs, proj, special,
                                        tokenizer.mask_token_id, cfg.seed + 1000 * i)
        params = [p for p in list(student.parameters()) + list(proj.parameters()) if p.requires_grad]
        info = trainer.train_loop(params, [student, proj], enc, step, batch_size=phase.batch_size,
                                  epochs=phase.epochs, max_steps=phase.max_steps, lr=phase.lr,
                                  warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
                                  seed=cfg.seed + i, log_every=cfg.log_every, name=f"{cfg.name}/{phase.name}",
                                  on_log=_tracked(run, steps))
        steps += info["steps"]
        record = {"name": phase.name, "mode": phase.mode, "rows": len(enc.ids), **info}
        if val is not None and phase.mode == "task_specific":
            pred = trainer.predict_logits(student, val).argmax(-1).tolist()
            record["val"] = trainer.classification_metrics(pred, val.labels, len(cfg.data.labels))
            log.info("%s: val %s", phase.name, record["val"])
            if run is not None:
                run.log(tracking.flatten(record["val"], f"val/{phase.name}"), steps)
        metrics["phases"].append(record)

    bmodels.save_model(student, out / "student", tokenizer)
    if len(proj):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in proj.state_dict().items()},
                  str(out / "student" / "projections.safetensors"))
    metrics["test"] = evaluate(cfg, teacher, teacher_dir, student, test, out, val, calibration)
    metrics["seconds"] = round(time.time() - start, 1)
    if run is not None:
        run.log(tracking.flatten(metrics["test"], "test"), steps)
    return _finish(cfg, out, fp, metrics)


def _tracked(run: tracking.Run | None, offset: int):
    """train_loop's on_log for the tracker run: a phase's step counted from the start of the first phase."""
    if run is None:
        return None
    return lambda step, values: run.log(tracking.trainer_scalars(values), offset + step)


def finished(out: Path, fp: str) -> bool:
    """Whether `out` holds a finished run of the config with fingerprint `fp`."""
    info = store.read_success(out)
    return isinstance(info, dict) and info.get("fingerprint") == fp


def _rows_key(enc: bdata.Encoded) -> str:
    return hashlib.sha256(json.dumps([enc.ids, enc.labels]).encode()).hexdigest()[:16]


def _cached(path: Path, compute) -> dict:
    """A JSON result stored at `path` (the teacher's test metrics: the same for every run that shares it)."""
    if path.is_file():
        return store.read_json(path)
    value = compute()
    store.atomic_write_json(path, value)
    return value


def evaluate(cfg: BertDistillConfig, teacher, teacher_dir: Path, student, test: bdata.Encoded, out: Path,
             val: bdata.Encoded | None = None, calibration: bdata.Encoded | None = None) -> dict:
    """Accuracy, macro-F1 and CPU latency (batch 1 and 32) of the teacher, the student and its exports;
    agreement = share of test rows where an export predicts what the PyTorch student predicts;
    max_abs_logit_diff = the largest change of any logit against the PyTorch student."""
    n_labels, runs = len(cfg.data.labels), cfg.export.latency_runs

    def measure(forward, reference=None) -> tuple[dict, np.ndarray]:
        out = bexport.logits(forward, test)
        pred = out.argmax(-1).tolist()
        entry = trainer.classification_metrics(pred, test.labels, n_labels)
        entry["latency_ms_b1"] = bexport.latency_ms(forward, test, 1, runs)
        entry["latency_ms_b32"] = bexport.latency_ms(forward, test, 32, max(3, runs // 4))
        if reference is not None:
            entry["agreement_with_student"] = bexport.agreement(pred, reference.argmax(-1).tolist())
            entry["max_abs_logit_diff"] = round(float(np.abs(out - reference).max()), 6) if len(out) else 0.0
        return entry, out

    teacher_fwd = bexport.torch_forward(teacher)
    teacher_entry = _cached(Path(teacher_dir) / "eval" / f"{_rows_key(test)}.json",
                            lambda: trainer.classification_metrics(bexport.predict(teacher_fwd, test), test.labels,
                                                                   n_labels))
    result: dict = {"teacher": {**teacher_entry,
                                "latency_ms_b1": bexport.latency_ms(teacher_fwd, test, 1, runs),
                                "latency_ms_b32": bexport.latency_ms(teacher_fwd, test, 32, max(3, runs // 4))}}
    result["student"], ref = measure(bexport.torch_forward(student))
    if cfg.export.torch_int8:
        result["student_torch_int8"], _ = measure(bexport.torch_forward(bexport.quantize_torch(student)), ref)
    if cfg.export.onnx:
        path = bexport.export_onnx(student, out / "onnx" / "model.onnx", cfg.export.opset)
        result["student_onnx"], _ = measure(bexport.onnx_forward(bexport.onnx_session(path, cfg.threads)), ref)
        if cfg.export.int8:
            val_pred = bexport.predict(bexport.torch_forward(student), val) if val is not None else None
            options = {}
            for opt in cfg.export.int8_options:
                q = bexport.quantize_onnx(path, out / "onnx" / "int8" / f"{opt.name}.onnx", opt.mode, opt.keep_fp32,
                                          calibration)
                forward = bexport.onnx_forward(bexport.onnx_session(q, cfg.threads))
                options[opt.name], _ = measure(forward, ref)
                options[opt.name]["bytes"] = q.stat().st_size
                if val_pred is not None:
                    options[opt.name]["val_agreement"] = bexport.agreement(bexport.predict(forward, val), val_pred)
            chosen = choose_int8(options, cfg.export.int8_min_agreement)
            store.atomic_write_bytes(out / "onnx" / "model.int8.onnx",
                                     (out / "onnx" / "int8" / f"{chosen}.onnx").read_bytes())
            result["student_onnx_int8"] = {**options[chosen], "option": chosen, "options": options}
            log.info("int8: %s chosen of %s", chosen, {k: (v.get("val_agreement"), v["agreement_with_student"],
                                                            v["bytes"]) for k, v in options.items()})
    return result


def choose_int8(options: dict[str, dict], min_agreement: float) -> str:
    """The first option (config order) whose val agreement reaches `min_agreement`; none does: the one that
    agrees most (the first of equals); no val measured: the first. The test split plays no part."""
    names = list(options)
    if any("val_agreement" not in options[n] for n in names):
        return names[0]
    good = [n for n in names if options[n]["val_agreement"] >= min_agreement]
    return good[0] if good else max(names, key=lambda n: (options[n]["val_agreement"], -names.index(n)))


def _signal(cfg: BertDistillConfig, phase, teacher, teacher_dir: Path, enc: bdata.Encoded):
    """The live teacher, or its stored outputs for these rows (teacher.signal stored, unmasked phases)."""
    if cfg.teacher.signal == "live" or objective.masks_tokens(phase) or not objective.needs_teacher(phase):
        return signals.LiveSignal(teacher)
    layers = sorted({p.losses.minilm_teacher_layer or teacher.num_layers for p in cfg.phases
                     if p.losses.minilm_value or p.losses.minilmv2})
    details = any(set(p.losses.active()) & objective.LAYER_TERMS for p in cfg.phases)
    return signals.StoredSignal.build(teacher, teacher_dir, enc, layers, details=details)


def _read(cfg: BertDistillConfig, path, labelled: bool, limit: int | None = None) -> bdata.Rows:
    return bdata.read_rows(path, cfg.data.text_field, cfg.data.label_field if labelled else None,
                           len(cfg.data.labels), limit)


@dataclass
class Data:
    """Every data file of a run, read and checked (`_read_data`) before any model is loaded."""

    labelled: bdata.Rows
    unlabelled: bdata.Rows | None
    test: bdata.Rows
    val: bdata.Rows | None


def _read_data(cfg: BertDistillConfig) -> Data:
    labelled, unlabelled = _rows(cfg)
    one = bdata.only_class(labelled)
    if one is not None:  # still worth a run: the teacher's soft labels, and task-agnostic phases, read no label
        log.warning("data.train %s: all %d labelled rows read are class %d (%r, of %s): the hard labels teach one "
                    "answer", cfg.data.train, len(labelled.texts), one, cfg.data.labels[one],
                    ", ".join(cfg.data.labels))
    return Data(labelled, unlabelled, _read(cfg, cfg.data.test, True),
                _read(cfg, cfg.data.val, True) if cfg.data.val else None)


def _rows(cfg: BertDistillConfig) -> tuple[bdata.Rows, bdata.Rows | None]:
    labelled = _read(cfg, cfg.data.train, True, cfg.data.max_train)
    unlabelled = _read(cfg, cfg.data.unlabelled, False, cfg.data.max_unlabelled) if cfg.data.unlabelled else None
    if cfg.data.train_rest_unlabelled:
        rest = _read(cfg, cfg.data.train, False).texts[cfg.data.max_train:]
        if not rest:
            raise UserError(f"data.train_rest_unlabelled: {cfg.data.train} has no rows after the first "
                            f"{cfg.data.max_train}")
        rest = bdata.Rows(rest, [bdata.UNLABELLED] * len(rest))
        unlabelled = bdata.concat(unlabelled, rest) if unlabelled else rest
    return labelled, unlabelled


def _pairs(cfg: BertDistillConfig, student, teacher) -> list[tuple[int, int]]:
    if not isinstance(student, bmodels.EncoderClassifier):
        return []
    lm = cfg.layer_map
    return lmap.resolve(lm.strategy, student.num_layers, teacher.num_layers, lm.pairs)


def _layer_map_record(cfg, student, teacher, pairs, proj) -> dict:
    losses = [p.losses for p in cfg.phases]
    minilm = [lc for lc in losses if lc.minilm_attention or lc.minilm_value or lc.minilmv2]
    record = {"strategy": cfg.layer_map.strategy, "student_layers": getattr(student, "num_layers", 0),
              "teacher_layers": teacher.num_layers, "pairs": [list(p) for p in pairs],
              "student_width": student.width, "teacher_width": teacher.width,
              "projections": {k: {"in": m.in_features, "out": m.out_features} for k, m in proj.items()}}
    if cfg.student.kind == "layer_subset":
        record["student_init_layers"] = cfg.student.teacher_layers or lmap.alternate_layers(teacher.num_layers)
    if minilm:
        lc = minilm[0]
        record["minilm"] = {"student_layer": student.num_layers,
                            "teacher_layer": lc.minilm_teacher_layer or teacher.num_layers,
                            "relation_heads": objective.relation_heads(lc, student)}
        if record["minilm"]["teacher_layer"] > teacher.num_layers:
            raise UserError(f"minilm_teacher_layer {lc.minilm_teacher_layer}: the teacher has "
                            f"{teacher.num_layers} layers")
    return record
