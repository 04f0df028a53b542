"""The run report: one self-contained HTML page (plots inline as base64 PNGs) plus metrics.json.

`write_report(run_dir)` reads what the stages left in a run directory -- eval/metrics.json,
eval/token_kl.json, eval/samples.jsonl, train/log_history.<variant>.json, train/metrics.json,
filter/stats.json, generate/manifest.json and, for a retrain run, retrain.json -- and writes
run_dir/report/index.html and run_dir/report/metrics.json. A missing piece is shown as
"not available" with the reason; it never stops the report.

Every plot is an <img id="plot-..."> and every table a <table id="table-...">; PLOTS and TABLES list
the ids a complete run produces (the tests check them in the rendered page).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from llmdistill import store

log = logging.getLogger("llmdistill")

PLOTS = ("plot-loss", "plot-agreement-by-level", "plot-kl-histogram", "plot-calibration", "plot-funnel",
         "plot-pruning", "plot-latency-size")
TABLES = ("table-summary", "table-levels", "table-tasks", "table-samples", "table-funnel", "table-pruning",
          "table-run")
REPORT_DIR = "report"
STUDENT_ORDER = ("teacher", "student", "sft_baseline", "promoted")


# ------------------------------------------------------------------------------------------------- read
def _read(path: Path) -> Any:
    """JSON (or JSONL as a list) at `path`, or None when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in lines if line.strip()]
        return json.loads("\n".join(lines))
    except (OSError, ValueError) as e:
        log.warning("report: cannot read %s (%s)", path, e)
        return None


def collect(run_dir: Path) -> dict:
    """Everything the report shows, read from the run directory (None where missing)."""
    run_dir = Path(run_dir)
    histories = {}
    for path in sorted((run_dir / "train").glob("log_history.*.json")):
        history = _read(path)
        if history:
            histories[path.name[len("log_history."):-len(".json")]] = history
    import yaml

    config = None
    try:
        config = yaml.safe_load((run_dir / "config.resolved.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        pass
    generate = _read(run_dir / "generate" / "manifest.json")
    return {
        "run_dir": str(run_dir),
        "name": (config or {}).get("name", run_dir.name),
        "config": config,
        "eval": _read(run_dir / "eval" / "metrics.json"),
        "token_kl": _read(run_dir / "eval" / "token_kl.json"),
        "samples": _read(run_dir / "eval" / "samples.jsonl"),
        "train": _read(run_dir / "train" / "metrics.json"),
        "histories": histories or None,
        "filter": _read(run_dir / "filter" / "stats.json"),
        "generate": generate.get("counts") if isinstance(generate, dict) else None,
        "retrain": _read(run_dir / "retrain.json"),
        "pruning": _read(run_dir / "train" / "student" / "pruning.json"),
    }


def _models(data: dict) -> dict[str, dict]:
    models = (data.get("eval") or {}).get("models") or {}
    order = [n for n in STUDENT_ORDER if n in models] + sorted(n for n in models if n not in STUDENT_ORDER)
    return {n: models[n] for n in order}


# ------------------------------------------------------------------------------------------------ plots
def _figure(width: float = 7.0, height: float = 3.6):
    from matplotlib.figure import Figure  # the object API: no pyplot state, Agg canvas

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def loss_series(histories: dict[str, list[dict]] | None) -> dict[str, dict]:
    """The curves of the training-loss plot, as (step, value) lists, from the train log histories.

    'ce': per variant, the cross-entropy on the teacher's tokens ('train', and 'held_out' when
    train.eval_every is set): the one quantity every offline variant logs (`loss_ce`, measured even when
    CE is not a term of its objective), so the curves of a KD student and of the SFT-only baseline are
    comparable. 'terms': per variant, each distillation term, unweighted ('loss_<divergence>'); a variant
    that logs no CE (on-policy training through trl) has its own objective there as 'objective'.
    A variant's total objective (Trainer's 'loss') is never put beside another variant's CE.
    """
    ce: dict[str, dict] = {}
    terms: dict[str, dict] = {}
    histories = histories or {}
    rank = {n: i for i, n in enumerate(STUDENT_ORDER)}
    for name in sorted(histories, key=lambda n: (rank.get(n, len(rank)), n)):  # the other plots' order
        history = histories[name]
        steps = [h for h in history if "step" in h]
        train = [(h["step"], h["loss_ce"]) for h in steps if "loss_ce" in h]
        held = [(h["step"], h["eval_loss_ce"]) for h in steps if "eval_loss_ce" in h]
        if train:
            ce[name] = {"train": train, "held_out": held}
        divergences = sorted({k[len("loss_"):] for h in steps for k in h if k.startswith("loss_") and k != "loss_ce"})
        curves = {d: [(h["step"], h[f"loss_{d}"]) for h in steps if f"loss_{d}" in h] for d in divergences}
        if not train and any("loss" in h for h in steps):
            curves["objective"] = [(h["step"], h["loss"]) for h in steps if "loss" in h]
        if curves:
            terms[name] = curves
    return {"ce": ce, "terms": terms}


def plot_loss(histories: dict[str, list[dict]] | None) -> bytes | None:
    series = loss_series(histories)
    panels = [p for p in ("ce", "terms") if series[p]]
    if not panels:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(panels), 3.8), dpi=100, layout="constrained")
    axes = dict(zip(panels, fig.subplots(1, len(panels), squeeze=False)[0]))
    colors = {name: f"C{i}" for i, name in enumerate(dict.fromkeys([*series["ce"], *series["terms"]]))}
    if "ce" in axes:
        ax = axes["ce"]
        for name, curves in series["ce"].items():
            ax.plot(*zip(*curves["train"]), marker=".", color=colors[name], label=f"{name} (train)")
            if curves["held_out"]:
                ax.plot(*zip(*curves["held_out"]), linestyle="--", marker="o", color=colors[name],
                        label=f"{name} (held out)")
        ax.set(xlabel="optimizer step", ylabel="cross-entropy, nats per token",
               title="CE on the teacher's tokens (every variant)")
    if "terms" in axes:
        ax = axes["terms"]
        for name, curves in series["terms"].items():
            for (term, points), style in zip(curves.items(), ("-", ":", "-.", "--") * 4):
                ax.plot(*zip(*points), marker=".", linestyle=style, color=colors[name], label=f"{name}: {term}")
        ax.set(xlabel="optimizer step", ylabel="nats per token (unweighted)", title="Distillation terms")
    from matplotlib.ticker import MaxNLocator

    for ax in axes.values():
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _png(fig)


def plot_agreement_by_level(models: dict[str, dict]) -> bytes | None:
    students = {n: m for n, m in models.items() if n != "teacher" and m.get("by_level")}
    if not students:
        return None
    levels = sorted({lv for m in students.values() for lv in m["by_level"]}, key=lambda v: (len(v), v))
    fig, ax = _figure()
    width = 0.8 / len(students)
    for i, (name, m) in enumerate(students.items()):
        xs = [j + (i - (len(students) - 1) / 2) * width for j in range(len(levels))]
        ys = [m["by_level"].get(lv, {}).get("top1_agreement", float("nan")) for lv in levels]
        ax.bar(xs, ys, width=width, label=name)
    ax.set_xticks(range(len(levels)), [f"level {lv}" for lv in levels])
    ax.set(ylabel="top-1 agreement with the teacher", title="Agreement by curriculum level", ylim=(0, 1))
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _png(fig)


def plot_kl_histogram(token_kl: dict[str, list[float]] | None) -> bytes | None:
    import numpy as np

    values = {n: np.asarray(v, dtype=np.float64) for n, v in (token_kl or {}).items() if v}
    if not values:
        return None
    top = max(float(np.quantile(v, 0.99)) for v in values.values())
    bins = np.linspace(0.0, max(top, 1e-6), 41)
    fig, ax = _figure()
    for name, v in values.items():
        ax.hist(np.clip(v, 0.0, bins[-1]), bins=bins, histtype="step", linewidth=1.8,
                label=f"{name} (mean {v.mean():.3f})")
    ax.set(xlabel="KL(teacher || student) per token, nats (clipped at the 99th percentile)", ylabel="tokens",
           title="Per-token KL to the teacher on held-out teacher text")
    ax.legend()
    return _png(fig)


def plot_calibration(models: dict[str, dict]) -> bytes | None:
    # the teacher is left out: on its own greedy text its top token is the reference by construction
    curves = {n: m["calibration"] for n, m in models.items() if m.get("calibration") and n != "teacher"}
    if not curves:
        return None
    fig, ax = _figure(5.5, 4.2)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for name, bins in curves.items():
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
                label=f"{name} (ECE {models[name]['ece']:.3f})")
    ax.set(xlabel="confidence (max next-token probability)", ylabel="accuracy on the reference token",
           title="Calibration (reliability diagram)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize="small")
    return _png(fig)


def funnel_rows(generated: dict | None, stats: dict | None) -> list[tuple[str, int]] | None:
    """(label, rows left) from generation through each removal reason to the kept rows."""
    if not stats:
        return None
    left = stats["input_rows"]
    rows = [("generated" if generated is None else f"generated ({generated.get('failed', 0)} failed)", left)]
    for reason, count in stats.get("removed_by_reason", {}).items():
        left -= count
        rows.append((f"- {reason} ({count})", left))
    rows.append(("kept", stats["kept"]))
    return rows


def plot_funnel(rows: list[tuple[str, int]] | None) -> bytes | None:
    if not rows:
        return None
    fig, ax = _figure(7.0, 0.5 + 0.45 * len(rows))
    labels, counts = zip(*rows)
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, counts, color=["#4c72b0"] + ["#dd8452"] * (len(rows) - 2) + ["#55a868"])
    ax.set_yticks(ys, labels)
    for y, c in zip(ys, counts):
        ax.text(c, y, f" {c}", va="center")
    ax.set(xlabel="samples", title="Filter funnel: samples left after each removal reason")
    ax.set_xlim(0, max(counts) * 1.15 or 1)
    return _png(fig)


def plot_latency_size(models: dict[str, dict]) -> bytes | None:
    points = {n: m for n, m in models.items() if m.get("latency_ms_per_token") is not None and m.get("parameters")}
    if not points:
        return None
    fig, ax = _figure(6.0, 4.0)
    for marker, (name, m) in zip("osD^v<>", points.items()):
        ax.scatter([m["parameters"] / 1e6], [m["latency_ms_per_token"]], s=70, marker=marker, alpha=0.8,
                   label=f"{name}: {m['parameters'] / 1e6:.1f}M, {m['latency_ms_per_token']:.1f} ms")
    device = next(iter(points.values())).get("device", "?")
    ax.set(xlabel="parameters (millions)", ylabel="ms per generated token (greedy, batch 1)",
           title=f"Latency vs size on {device}")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


def plot_pruning(record: dict | None) -> bytes | None:
    """Block influence of every teacher layer, the kept ones filled."""
    if not record or not record.get("block_influence"):
        return None
    bi, kept = record["block_influence"], set(record["layers"])
    fig, ax = _figure(7.0, 3.2)
    ax.bar(range(len(bi)), bi, color=["#1f77b4" if i in kept else "#d3d3d3" for i in range(len(bi))])
    ax.set(xlabel="teacher layer", ylabel="block influence (1 - cos)", yscale="log",
           title=f"Layers kept ({record['method']}): {len(kept)} of {len(bi)} (blue)")
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def pruning_table(record: dict | None) -> str | None:
    if not record:
        return None
    rows = [["layers", record["teacher_layers"], len(record["layers"]), ", ".join(map(str, record["layers"]))]]
    for key, label in (("intermediate_size", "MLP channels"), ("attention_heads", "query heads"),
                       ("hidden_size", "hidden channels")):
        d = record.get(key) or {}
        kept = d.get("importance_kept")
        share = (f"importance kept: {_num(min(kept.values()))} to {_num(max(kept.values()))} per layer"
                 if isinstance(kept, dict) and kept else f"importance kept: {_num(kept)}" if kept is not None else "")
        rows.append([label, d.get("teacher"), d.get("student"), share])
    params = record.get("parameters") or {}
    rows.append(["parameters", params.get("teacher"), params.get("student"),
                 f"calibration: {record.get('calibration', {}).get('samples')} sequences, "
                 f"{record.get('calibration', {}).get('tokens')} tokens"])
    return _table("table-pruning", ["", "teacher", "student", "kept"], rows,
                  "how the student was pruned from the teacher (train/student/pruning.json)")


# ------------------------------------------------------------------------------------------------- html
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, fmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt) if isinstance(value, (int, float)) else str(value)


def _table(table_id: str, header: list[str], rows: list[list[Any]], caption: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    return f'<table id="{table_id}">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _missing(element_id: str, why: str) -> str:
    return f'<p class="missing" id="{element_id}-missing">not available: {_esc(why)}</p>'


def _img(plot_id: str, png: bytes | None, alt: str, why: str) -> str:
    if png is None:
        return _missing(plot_id, why)
    data = base64.b64encode(png).decode("ascii")
    return f'<img id="{plot_id}" alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def summary_table(models: dict[str, dict], topk: int | None) -> str:
    tasks = sorted({t for m in models.values() for t in m.get("tasks", {})})
    header = ["model", "params (M)", "size (MB)", "KL to teacher", "JSD", "top-1 agreement", f"top-{topk} overlap",
              "perplexity", "ECE", "ms / token", *[f"task: {t}" for t in tasks]]
    rows = []
    for name, m in models.items():
        rows.append([name, _num(m.get("parameters", 0) / 1e6, ".1f"),
                     _num(m["bytes"] / 2**20, ".1f") if m.get("bytes") else "-",
                     _num(m.get("kl_to_teacher"), ".4f"), _num(m.get("jsd_to_teacher"), ".4f"),
                     _num(m.get("top1_agreement")), _num(m.get("topk_overlap")), _num(m.get("perplexity"), ".2f"),
                     _num(m.get("ece")), _num(m.get("latency_ms_per_token"), ".2f"),
                     *[_num(m["tasks"][t]["accuracy"]) if t in m.get("tasks", {}) else "-" for t in tasks]])
    return _table("table-summary", header, rows, "Students vs the teacher (and the previously promoted student)")


def levels_table(models: dict[str, dict]) -> str | None:
    with_levels = {n: m for n, m in models.items() if m.get("by_level")}
    if not with_levels:
        return None
    rows = []
    for name, m in with_levels.items():
        for level, lm in m["by_level"].items():
            rows.append([name, level, lm.get("tokens"), _num(lm.get("top1_agreement")), _num(lm.get("topk_overlap")),
                         _num(lm.get("kl_to_teacher"), ".4f"), _num(lm.get("jsd_to_teacher"), ".4f"),
                         _num(lm.get("perplexity"), ".2f")])
    return _table("table-levels", ["model", "level", "tokens", "top-1 agreement", "top-k overlap", "KL", "JSD",
                                   "perplexity"], rows, "Per curriculum level")


def tasks_table(models: dict[str, dict]) -> str | None:
    tasks = sorted({t for m in models.values() for t in m.get("tasks", {})})
    if not tasks:
        return None
    names = [n for n in models if any(t in models[n].get("tasks", {}) for t in tasks)]
    rows = []
    for t in tasks:
        first = next(models[n]["tasks"][t] for n in names if t in models[n].get("tasks", {}))
        rows.append([t, first["grader"], first["total"],
                     *[f"{models[n]['tasks'][t]['accuracy']:.3f} ({models[n]['tasks'][t]['correct']})"
                       if t in models[n].get("tasks", {}) else "-" for n in names]])
    return _table("table-tasks", ["task", "grader", "items", *names], rows,
                  "Task accuracy (greedy answers; the teacher's own score beside the students')")


def samples_table(samples: list[dict] | None) -> str | None:
    if not samples:
        return None
    columns = ["prompt"] + [c for c in STUDENT_ORDER if any(c in s for s in samples)]
    columns += sorted({c for s in samples for c in s} - set(columns))
    return _table("table-samples", columns, [[s.get(c, "") for c in columns] for s in samples],
                  "Side-by-side generations (greedy)")


def funnel_table(rows: list[tuple[str, int]] | None) -> str | None:
    if not rows:
        return None
    return _table("table-funnel", ["step", "samples left"], [list(r) for r in rows], "Generate and filter counts")


def run_table(data: dict) -> str:
    cfg = data.get("config") or {}
    prov = cfg.get("_provenance") or {}
    train = data.get("train") or {}
    rows = [["run directory", data["run_dir"]], ["name", data["name"]],
            ["teacher", (cfg.get("teacher") or {}).get("model", "-")],
            ["written", prov.get("written_at", "-")], ["git", prov.get("git_sha") or "-"]]
    for stage, fp in (prov.get("fingerprints") or {}).items():
        rows.append([f"fingerprint: {stage}", fp])
    for name, m in train.items():
        rows.append([f"train: {name}", f"{m.get('steps')} steps, mode {m.get('mode')}, mean training loss "
                                       f"{_num(m.get('train_loss'), '.4f')}"])
        if m.get("cross_tokenizer"):
            x = m["cross_tokenizer"]
            rows.append([f"train: {name}: teacher on another tokenizer",
                         f"of {x['tokens']} student tokens, {100 * x['exact']:.1f} % aligned exactly to a teacher "
                         f"token (divergence), {100 * x['uld']:.1f} % by start only (ULD), {100 * x['none']:.1f} % "
                         "without a teacher row (CE only)"])
        if m.get("rollouts") and m["rollouts"].get("kind") == "offline":
            for i, r in enumerate(m["rollouts"]["rounds"], 1):
                rows.append([f"train: {name}: offline on-policy round {i}",
                             f"{r['rows']} samples of the student ({r['generator']}), {r['mean_tokens']} tokens on "
                             f"average, {100 * r['stop_share']:.1f} % ended on their own, {100 * r['cut_share']:.1f} % "
                             f"cut for repetition; the teacher's log-prob {r['teacher_logprob_per_token']} per token"])
        elif m.get("rollouts"):
            r = m["rollouts"]
            rows.append([f"train: {name}: on-policy rollouts (vLLM)",
                         f"{r['batches_sampled']} batches the student's, {r['batches_teacher']} the teacher's; "
                         f"{r['sampled_tokens']} tokens sampled in {r['sample_seconds']} s, {r['refreshes']} weight "
                         f"reloads in {r['refresh_seconds']} s"])
    ev = data.get("eval") or {}
    if ev:
        rows.append(["eval", f"{ev.get('eval_prompts')} held-out prompts, {ev.get('eval_tokens')} teacher tokens"])
    return _table("table-run", ["", ""], rows, "Run")


def gates_table(retrain: dict | None) -> str | None:
    if not retrain or not retrain.get("gates"):
        return None
    rows = [[g["metric"], _num(g.get("student"), ".4f"), _num(g.get("promoted"), ".4f"),
             _num(g.get("regression"), ".4f"), _num(g.get("max_regression"), ".4f"), "pass" if g["passed"] else "FAIL"]
            for g in retrain["gates"]]
    return _table("table-gates", ["metric", "new student", "promoted student", "regression", "allowed", "gate"],
                  rows, f"Retrain gates: {retrain.get('decision', '?')}")


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}caption{text-align:left;color:#555;padding:.2em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;max-width:360px}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0}
.missing{color:#a33;font-style:italic}.grid{display:flex;flex-wrap:wrap;gap:16px}
"""


# marks every image the browser decoded (data-decoded = its pixel width): tests read it from the DOM
_DECODED = ("<script>window.addEventListener('load',()=>document.querySelectorAll('img').forEach("
            "i=>{if(i.complete&&i.naturalWidth>0)i.dataset.decoded=i.naturalWidth;}));</script>")


def render(data: dict) -> str:
    """The report page for collected run data (see `collect`)."""
    models = _models(data)
    ev = data.get("eval") or {}
    funnel = funnel_rows(data.get("generate"), data.get("filter"))
    no_eval = "the eval stage has not written eval/metrics.json"
    parts = [f"<h1>llmdistill report: {_esc(data['name'])}</h1>"]
    if data.get("retrain"):
        r = data["retrain"]
        parts.append(f"<p id=\"retrain-decision\">Retrain decision: <b>{_esc(r.get('decision'))}</b> "
                     f"({_esc(r.get('reason', ''))})</p>")
        parts.append(gates_table(r) or "")
    parts.append("<h2>Summary</h2>")
    parts.append(summary_table(models, ev.get("topk")) if models else _missing("table-summary", no_eval))
    sections = [
        ("Training loss", _img("plot-loss", plot_loss(data.get("histories")),
                               "CE on the teacher's tokens and the distillation terms per step",
                               "no train/log_history.*.json with logged losses")),
        ("Agreement by curriculum level",
         _img("plot-agreement-by-level", plot_agreement_by_level(models), "top-1 agreement per level", no_eval)
         + (levels_table(models) or _missing("table-levels", no_eval))),
        ("KL to the teacher", _img("plot-kl-histogram", plot_kl_histogram(data.get("token_kl")),
                                   "histogram of per-token KL", "no eval/token_kl.json")),
        ("Calibration", _img("plot-calibration", plot_calibration(models), "reliability diagram", no_eval)),
        ("Gradable tasks", tasks_table(models) or _missing("table-tasks", "no gradable tasks configured (eval.tasks)")),
        ("Data: generate and filter", _img("plot-funnel", plot_funnel(funnel), "filter funnel",
                                           "no filter/stats.json")
         + (funnel_table(funnel) or _missing("table-funnel", "no filter/stats.json"))),
        ("Student construction", (_img("plot-pruning", plot_pruning(data.get("pruning")),
                                       "block influence per teacher layer", "")
                                  + pruning_table(data.get("pruning")))
         if data.get("pruning") else _missing("table-pruning", "the student was not pruned (train.student.prune)")),
        ("Latency vs size", _img("plot-latency-size", plot_latency_size(models), "latency against size", no_eval)),
        ("Side-by-side generations", samples_table(data.get("samples"))
         or _missing("table-samples", "no eval/samples.jsonl")),
        ("Run", run_table(data)),
    ]
    for title, body in sections:
        parts.append(f"<h2>{_esc(title)}</h2>{body}")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>llmdistill report: {_esc(data['name'])}</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + _DECODED + "</body></html>\n")


def report_metrics(data: dict) -> dict:
    """The numbers behind the page, in one JSON document."""
    return {"run": data["name"], "run_dir": data["run_dir"], "eval": data.get("eval"), "train": data.get("train"),
            "filter": data.get("filter"), "generate": data.get("generate"), "retrain": data.get("retrain"),
            "pruning": data.get("pruning")}


def write_report(run_dir: Path) -> Path:
    """Write run_dir/report/index.html and run_dir/report/metrics.json; returns the HTML path."""
    run_dir = Path(run_dir)
    data = collect(run_dir)
    out = run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    store.atomic_write_bytes(out / "index.html", render(data).encode("utf-8"))
    store.atomic_write_json(out / "metrics.json", report_metrics(data))
    return out / "index.html"
