"""The BERT distillation results table: one row per method and student, on the held-out tweet split.

    .venv/bin/python benchmarks/bert_table.py                  # every row, seeds 0 1 2 (finished runs are reused)
    .venv/bin/python benchmarks/bert_table.py --seeds 0 --only bert-kd.yaml bert-hard-label.yaml
    .venv/bin/python benchmarks/bert_table.py --seeds 0 1 2 --finished-only --previous OLD.json

Each configs/bert-*.yaml in ROWS is run through the distill-bert stage once per seed (seed 0 under the
config's own name, seed s as `<name>-seed<s>`; the teacher is the same for every seed). Accuracy and macro-F1
(2,000 held-out rows) are the mean over the seeds, with the per-seed values and their spread; every
distilled row is compared with the hard-label row of the same student, seed by seed. Then, in this one
process and interleaved (so every ratio compares models timed under the same load), the teacher and every
seed-0 student are timed on the CPU: PyTorch fp32, ONNX fp32 and the chosen ONNX int8 (onnxruntime) with one
thread and with `--server-threads`, and every int8 option with one thread, at batch 1 and batch 32, median of
N passes over real test rows. Writes benchmarks/results/bert_table.json and prints Markdown tables.

`--previous` takes the seeds a row lacks from an earlier results file, only where that file's seed-0
accuracy equals this run's (the runs are deterministic on a CPU, so equal seed-0 results show the same
training); the row records which seeds were taken.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from pathlib import Path

import torch
import yaml

from llmdistill.bert import data as bdata
from llmdistill.bert import export as bexport
from llmdistill.bert import models as bmodels
from llmdistill.bert.stage import fingerprint, finished, run, same_training
from llmdistill.bert.teacher import load_tokenizer
from llmdistill.config import load_bert_config

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "bert_table.json"
# (config, method, student) in table order
ROWS = [
    ("bert-hard-label.yaml", "hard labels only (baseline)", "narrow 2x192"),
    ("bert-kd.yaml", "logit KD (T=2, alpha=0.5)", "narrow 2x192"),
    ("bert-fitnets.yaml", "FitNets hidden MSE + KD", "narrow 2x192"),
    ("bert-tinybert.yaml", "TinyBERT two-stage (emb+hidden+attn, then KD)", "narrow 2x192"),
    ("bert-pkd.yaml", "BERT-PKD skip (KD + normalised [CLS])", "narrow 2x192"),
    ("bert-minilm.yaml", "MiniLM v1 (attn + value relation), then KD", "narrow 2x192"),
    ("bert-minilmv2.yaml", "MiniLMv2 (Q-Q, K-K, V-V, 12 rel. heads), then KD", "narrow 2x192"),
    ("bert-rkd.yaml", "RKD distance + angle + KD", "narrow 2x192"),
    ("bert-bilstm-hard-label.yaml", "hard labels only (baseline)", "BiLSTM 96/128"),
    ("bert-bilstm.yaml", "logit KD (Tang et al.)", "BiLSTM 96/128"),
    ("bert-subset-hard-label.yaml", "hard labels only (baseline)", "layer subset 3x384"),
    ("bert-distilbert.yaml", "DistilBERT-style task KD (CE + KD + cosine)", "layer subset 3x384"),
    ("bert-distilbert-general.yaml", "DistilBERT triple (MLM + KD + cosine), then task KD", "layer subset 3x384"),
    ("bert-hard-label-2x128-3ep.yaml", "hard labels only (baseline, 375 steps)", "narrow 2x128"),
    ("bert-hard-label-2x128.yaml", "hard labels only (baseline, 2,000 steps = the row below)", "narrow 2x128"),
    ("bert-tinybert-2x128.yaml", "TinyBERT two-stage, L + 12k transfer rows, 2 + 2 epochs", "narrow 2x128"),
]
# per student: its hard-label baselines, the equal-step-budget one first (the "vs hard labels" column)
BASELINES = {"narrow 2x192": ["bert-hard-label.yaml"], "BiLSTM 96/128": ["bert-bilstm-hard-label.yaml"],
             "layer subset 3x384": ["bert-subset-hard-label.yaml"],
             "narrow 2x128": ["bert-hard-label-2x128.yaml", "bert-hard-label-2x128-3ep.yaml"]}


def time_models(runs: list[dict], test_rows: int, b1_runs: int, b32_runs: int, threads: int,
                options: bool) -> dict:
    """Latency (ms) of the teacher and each student in each form, interleaved, with `threads` threads;
    `options`: every int8 option's file too, not only the chosen one."""
    torch.set_num_threads(threads)
    first = Path(runs[0]["dir"])
    tokenizer = load_tokenizer(first / "student")
    cfg = yaml.safe_load((first / "config.resolved.yaml").read_text())["config"]
    rows = bdata.read_rows(Path(cfg["data"]["test"]), "text", "label", len(cfg["data"]["labels"]), test_rows)
    enc = bdata.encode(rows, tokenizer, cfg["data"]["max_seq_len"])
    teacher_dir = Path(runs[0]["teacher"])
    forwards = {"teacher/pytorch": bexport.torch_forward(bmodels.load_model(teacher_dir)),
                "teacher/onnx": bexport.onnx_forward(bexport.onnx_session(teacher_onnx(teacher_dir), threads))}
    for r in runs:
        d = Path(r["dir"])
        files = {"onnx": d / "onnx" / "model.onnx", "onnx_int8": d / "onnx" / "model.int8.onnx"}
        if options:
            files.update({f"int8:{p.stem}": p for p in sorted((d / "onnx" / "int8").glob("*.onnx"))})
        forwards[f"{r['config']}/pytorch"] = bexport.torch_forward(bmodels.load_model(d / "student"))
        for form, path in files.items():
            forwards[f"{r['config']}/{form}"] = bexport.onnx_forward(bexport.onnx_session(path, threads))
    out: dict = {}
    for fwd in forwards.values():  # warm every model once, then time them in turn
        bexport.latency_ms(fwd, enc, 1, 1)
    for name, fwd in forwards.items():
        out[name] = {"b1": bexport.latency_ms(fwd, enc, 1, b1_runs), "b32": bexport.latency_ms(fwd, enc, 32, b32_runs)}
        logging.info("latency %d thread(s) %s %s", threads, name, out[name])
    return out


def teacher_onnx(teacher_dir: Path) -> Path:
    path = teacher_dir / "onnx" / "model.onnx"
    if not path.is_file():
        bexport.export_onnx(bmodels.load_model(teacher_dir), path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="config names to include (default: all rows)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per row (default 0 1 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training")
    ap.add_argument("--server-threads", type=int, default=2, help="the second thread count timed (a server's)")
    ap.add_argument("--finished-only", action="store_true",
                    help="train nothing: tabulate and time the runs already finished (a row keeps the seeds it has); "
                    "a run whose export settings changed is re-exported")
    ap.add_argument("--previous", type=Path, help="an earlier results file: the seeds a row lacks (see above)")
    ap.add_argument("--b1-runs", type=int, default=100)
    ap.add_argument("--b32-runs", type=int, default=10)
    ap.add_argument("--test-rows", type=int, default=500, help="test rows the latency batches are cut from")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    previous = {r["config"]: r for r in json.loads(args.previous.read_text())["rows"]} if args.previous else {}
    runs = []
    for config, method, student in ROWS:
        if args.only and config not in args.only:
            continue
        seeds = {}
        for seed in args.seeds:
            extra = [] if seed == 0 else [f"seed={seed}", f"name={config[:-5]}-seed{seed}"]
            cfg = load_bert_config(REPO / "configs" / config, [*extra, f"threads={args.threads}"])
            if args.finished_only and not (finished(cfg.run_dir, fingerprint(cfg)) or same_training(cfg, cfg.run_dir)):
                logging.info("%s seed %d: not finished, left out", config, seed)
                continue
            seeds[seed] = (cfg, run(cfg))
        if not seeds:
            continue
        first_cfg, first = seeds[min(seeds)]
        per_seed = {s: {k: m["test"]["student"][k] for k in ("accuracy", "macro_f1")} for s, (_, m) in seeds.items()}
        runs.append({"config": config, "method": method, "student": student, "dir": str(first_cfg.run_dir),
                     "teacher": first["teacher"], "metrics": first, "per_seed": per_seed,
                     "reused": reuse_seeds(per_seed, previous.get(config), args.seeds)})
    lat = time_models(runs, args.test_rows, args.b1_runs, args.b32_runs, 1, options=True)
    lat_server = time_models(runs, args.test_rows, args.b1_runs, args.b32_runs, args.server_threads, options=False)
    teacher = runs[0]["metrics"]["test"]["teacher"]
    t_params = runs[0]["metrics"]["teacher_parameters"]
    forms = ("pytorch", "onnx", "onnx_int8")
    table = [{"method": "teacher (all-MiniLM-L6-v2 fine-tuned)", "student": "6x384", "config": None,
              "params": t_params, "accuracy": teacher["accuracy"], "macro_f1": teacher["macro_f1"],
              "retention": 100.0, "latency_ms": {k: lat[f"teacher/{k}"] for k in forms[:2]},
              "latency_ms_server": {k: lat_server[f"teacher/{k}"] for k in forms[:2]}}]
    by_config = {r["config"]: r for r in runs}
    for r in runs:
        s = r["metrics"]["test"]
        accs = [v["accuracy"] for _, v in sorted(r["per_seed"].items())]
        f1s = [v["macro_f1"] for v in r["per_seed"].values()]
        d = Path(r["dir"]) / "onnx"
        row = {
            "method": r["method"], "student": r["student"], "config": r["config"],
            "params": r["metrics"]["student_parameters"], "seeds": sorted(r["per_seed"]),
            "accuracy": round(statistics.mean(accs), 4),
            "accuracy_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else None,
            "accuracy_per_seed": accs,
            "macro_f1": round(statistics.mean(f1s), 4) if None not in f1s else previous[r["config"]]["macro_f1"],
            "retention": round(100 * statistics.mean(accs) / teacher["accuracy"], 1),
            "retention_per_seed": [round(100 * a / teacher["accuracy"], 1) for a in accs],
            "int8_accuracy": s["student_onnx_int8"]["accuracy"],
            "int8_agreement": s["student_onnx_int8"]["agreement_with_student"],
            "int8_option": s["student_onnx_int8"].get("option", "dynamic"),
            "int8_mb": round((d / "model.int8.onnx").stat().st_size / 1e6, 2),
            "onnx_mb": round((d / "model.onnx").stat().st_size / 1e6, 2),
            "int8_options": {name: {"val_agreement": o.get("val_agreement"),
                                    "test_agreement": o["agreement_with_student"], "test_accuracy": o["accuracy"],
                                    "max_abs_logit_diff": o["max_abs_logit_diff"], "mb": round(o["bytes"] / 1e6, 2),
                                    "latency_ms": lat[f"{r['config']}/int8:{name}"]}
                             for name, o in s["student_onnx_int8"].get("options", {}).items()},
            "onnx_agreement": s["student_onnx"]["agreement_with_student"],
            "train_seconds": sum(p["seconds"] for p in r["metrics"]["phases"]),
            "steps": sum(p["steps"] for p in r["metrics"]["phases"]),
            "latency_ms": {k: lat[f"{r['config']}/{k}"] for k in forms},
            "latency_ms_server": {k: lat_server[f"{r['config']}/{k}"] for k in forms},
        }
        if r["reused"]:
            row["seeds_from_previous"] = r["reused"]
        baselines = BASELINES.get(r["student"], [])
        for name in baselines if r["config"] not in baselines else []:
            base = by_config.get(name)
            if base is None:
                continue
            paired = [(r["per_seed"][k]["accuracy"], base["per_seed"][k]["accuracy"])
                      for k in r["per_seed"] if k in base["per_seed"]]
            margin = round(statistics.mean(a - b for a, b in paired), 4)
            wins = f"{sum(a > b for a, b in paired)}/{len(paired)}"
            row.setdefault("vs_baselines", {})[name] = {"margin": margin, "wins": wins}
            if name == baselines[0]:
                row["vs_hard_labels"], row["beats_hard_labels"] = margin, wins
        table.append(row)
    tb1, tb32 = lat["teacher/pytorch"]["b1"], lat["teacher/pytorch"]["b32"]
    sb1 = lat_server["teacher/pytorch"]["b1"]
    for row in table:
        row["size_x"] = round(t_params / row["params"], 2)
        best = min(v["b1"] for v in row["latency_ms"].values())
        row["speedup_b1_pytorch"] = round(tb1 / row["latency_ms"]["pytorch"]["b1"], 2)
        row["speedup_b32_pytorch"] = round(tb32 / row["latency_ms"]["pytorch"]["b32"], 2)
        row["speedup_b1_best"] = round(tb1 / best, 2)
        row["speedup_b1_pytorch_server"] = round(sb1 / row["latency_ms_server"]["pytorch"]["b1"], 2)
    result = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": platform.processor() or platform.machine(),
              "threads": 1, "server_threads": args.server_threads, "torch": str(torch.__version__),
              "test_rows": teacher["n"], "seeds": args.seeds, "rows": table,
              "note": "accuracy and macro-F1: mean over the seeds; int8 and latency: the first seed's run; "
                      "latency: median ms per forward pass, 1 thread (latency_ms) and server_threads "
                      "(latency_ms_server); int8: the option chosen by validation agreement, every option in "
                      "int8_options"}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(markdown(table))
    print()
    print(int8_markdown(table))


def reuse_seeds(per_seed: dict, prev: dict | None, wanted: list[int]) -> list[int]:
    """Fill the seeds `per_seed` lacks from an earlier table's row, if its seed-0 accuracy is this run's."""
    if prev is None or 0 not in per_seed or not prev.get("seeds") or prev["seeds"][0] != 0:
        return []
    old = dict(zip(prev["seeds"], prev["accuracy_per_seed"]))
    if old[0] != per_seed[0]["accuracy"]:
        logging.info("previous seed 0 %.4f != %.4f: nothing reused", old[0], per_seed[0]["accuracy"])
        return []
    taken = [s for s in wanted if s not in per_seed and s in old]
    for s in taken:
        per_seed[s] = {"accuracy": old[s], "macro_f1": None}
    return taken


def markdown(table: list[dict]) -> str:
    head = ("| method | student | params | smaller | acc (mean ± sd) | macro-F1 | retention | vs hard labels "
            "| int8 (chosen) | int8 acc (seed 0) | int8 = torch | MB onnx / int8 | ms b1 torch / onnx / int8 "
            "| ms b32 torch / onnx / int8 | ms b1 torch, 2 threads | faster b1 (torch) | faster b32 (torch) |")
    lines = [head, "|" + " --- |" * 2 + " ---: |" * 6 + " --- |" + " ---: |" * 8]
    for r in table:
        lat = r["latency_ms"]
        b1 = " / ".join(f"{lat[k]['b1']:.1f}" if k in lat else "-" for k in ("pytorch", "onnx", "onnx_int8"))
        b32 = " / ".join(f"{lat[k]['b32']:.0f}" if k in lat else "-" for k in ("pytorch", "onnx", "onnx_int8"))
        agree = f"{100 * r['int8_agreement']:.2f} %" if "int8_agreement" in r else "-"
        int8 = f"{r['int8_accuracy']:.4f}" if "int8_accuracy" in r else "-"
        mb = f"{r['onnx_mb']:.1f} / {r['int8_mb']:.1f}" if "int8_mb" in r else "-"
        acc = f"{r['accuracy']:.4f}" + (f" ± {r['accuracy_std']:.4f}" if r.get("accuracy_std") is not None else "")
        vs = (f"{100 * r['vs_hard_labels']:+.1f} pt ({r['beats_hard_labels']})" if "vs_hard_labels" in r else "-")
        lines.append(f"| {r['method']} | {r['student']} | {r['params'] / 1e6:.2f}M | {r['size_x']:.1f}x "
                     f"| {acc} | {r['macro_f1']:.4f} | {r['retention']:.1f} % | {vs} | {r.get('int8_option', '-')} "
                     f"| {int8} | {agree} | {mb} | {b1} | {b32} | {r['latency_ms_server']['pytorch']['b1']:.1f} "
                     f"| {r['speedup_b1_pytorch']:.1f}x | {r['speedup_b32_pytorch']:.1f}x |")
    return "\n".join(lines)


def int8_markdown(table: list[dict]) -> str:
    """Every int8 option of every seed-0 student: validation and test agreement, size, latency (1 thread)."""
    lines = ["| config | int8 option | val = torch | test = torch | MB | ms b1 / b32 |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in table:
        for name, o in r.get("int8_options", {}).items():
            mark = " (chosen)" if name == r["int8_option"] else ""
            val = f"{100 * o['val_agreement']:.1f} %" if o["val_agreement"] is not None else "-"
            lines.append(f"| {r['config']} | {name}{mark} | {val} | {100 * o['test_agreement']:.2f} % | {o['mb']:.1f} "
                         f"| {o['latency_ms']['b1']:.1f} / {o['latency_ms']['b32']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
