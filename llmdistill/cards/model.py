"""The model card of an LLM student (<run>/train/<variant>/README.md): front matter the Hub reads, the recipe,
the eval tables, latency and size, and how to load it, all from the run's records:

    config.resolved.yaml          the recipe's settings (only when its train fingerprint is the student's)
    train/_SUCCESS, metrics.json  steps, loss terms, phases (on-policy rounds), parameters
    train/<variant>/pruning.json  how a pruned student was cut from the teacher
    train/<variant>/config.json   the architecture; its *.safetensors give the size on disk
    filter/manifest.json          the training data (rows, levels) and the teacher's provenance
    eval/_SUCCESS, metrics.json   the tables, when eval measured this very student (its upstream token)
    retrain.json                  a retrain run's decision and gates
"""

from __future__ import annotations

from pathlib import Path

from llmdistill import store
from llmdistill.cards import common as C

STUDENT_ORDER = ("student", "sft_baseline", "promoted", "teacher")
WHAT = {"student": "the distilled student", "sft_baseline": "the SFT-only baseline (cross-entropy on the teacher's "
        "text, same data and steps as the distilled student)"}


def model_card(run_dir: Path, variant: str = "student", repo_id: str | None = None) -> str:
    """The card of train/<variant> in `run_dir`; `repo_id`: written for that Hub repo (no local paths)."""
    run_dir = Path(run_dir)
    directory = run_dir / "train" / variant
    cfg_all = C.read_config(run_dir)
    train_ok = store.read_success(run_dir / "train")
    cfg = C.config_for(cfg_all, "train", train_ok)
    record = (C.read_json(run_dir / "train" / "metrics.json") or {}).get(variant) or {}
    teacher = C.teacher_origin(((cfg_all or {}).get("teacher") or {}).get("model"), hub=repo_id is not None)
    name = (cfg_all or {}).get("name", run_dir.name)
    evaluation, why_not = _evaluation(run_dir, train_ok)
    pruning = C.read_json(directory / "pruning.json")
    filtered = C.read_json(run_dir / "filter" / "manifest.json") or {}
    retrain = C.read_json(run_dir / "retrain.json")
    mode = ((cfg or {}).get("train") or {}).get("mode") or record.get("mode")

    from huggingface_hub import ModelCardData

    tags = ["distillation", "llmdistill", "knowledge-distillation"]
    tags += ["pruned"] if pruning else []
    tags += ["on-policy-distillation"] if mode == "on_policy" and variant != "sft_baseline" else []
    tags += ["lora"] if record.get("lora") else []
    data = ModelCardData(base_model=teacher["base_model"], library_name="transformers", pipeline_tag="text-generation",
                         license=teacher["license"], tags=tags, datasets=_hub_datasets(cfg_all) or None,
                         model_name=f"{name}-{variant}")
    body = [f"# {name}: {WHAT.get(variant, variant)}",
            f"A student of the teacher **{teacher['name']}** ({teacher['note']}), made with llmdistill "
            f"{train_ok.get('llmdistill_version', '') if train_ok else ''} in the run `{name}`. This card was written "
            "by llmdistill from the run's own records (config.resolved.yaml, train/metrics.json, eval/metrics.json, "
            "the data manifests); nothing in it was written by hand, and what was not measured says so.",
            "## Model", _model_table(directory, record),
            "## How the student was built", _construction(cfg, pruning, variant, hub=repo_id is not None),
            "## Training recipe", _recipe(cfg, record, variant),
            "## Training data", _data(run_dir, filtered, cfg_all),
            "## Evaluation", _eval_tables(evaluation, variant) if evaluation else f"Not measured yet: {why_not}.",
            "## Latency and size", _latency(evaluation, variant, directory, why_not)]
    if retrain:
        body += ["## Retrain decision", _retrain(retrain)]
    body += ["## How to use it", _usage(directory, repo_id),
             "## Provenance", _provenance(cfg_all, train_ok, filtered, teacher)]
    return C.card_text(data, "\n\n".join(body))


# --------------------------------------------------------------------------------------------- sections
def _evaluation(run_dir: Path, train_ok: dict | None) -> tuple[dict | None, str]:
    """eval/metrics.json when eval completed on this train output, else (None, why not)."""
    if train_ok is None:
        return None, "the train stage has not completed in this run (no train/_SUCCESS)"
    eval_ok = store.read_success(run_dir / "eval")
    if eval_ok is None:
        return None, "the eval stage has not run on this student (no eval/_SUCCESS)"
    if "upstream_output" in eval_ok and eval_ok["upstream_output"] != train_ok.get("output"):
        return None, "eval/metrics.json measured an earlier student (train ran again since): rerun the eval stage"
    metrics = C.read_json(run_dir / "eval" / "metrics.json")
    if not metrics or not metrics.get("models"):
        return None, "eval/metrics.json is missing or unreadable"
    return metrics, ""


def _models(evaluation: dict) -> dict[str, dict]:
    models = evaluation["models"]
    order = [n for n in STUDENT_ORDER if n in models] + sorted(n for n in models if n not in STUDENT_ORDER)
    return {n: models[n] for n in order}


def _millions(n: int | None) -> str:
    return f"{n / 1e6:.1f}M" if n else "-"


def _label(name: str, variant: str) -> str:
    return f"**{name} (this model)**" if name == variant else name


def _model_table(directory: Path, record: dict) -> str:
    arch = C.read_json(directory / "config.json") or {}
    rows = [["architecture", ", ".join(arch.get("architectures") or []) or arch.get("model_type", "-")],
            ["decoder layers", C.num(arch.get("num_hidden_layers"))], ["hidden size", C.num(arch.get("hidden_size"))],
            ["MLP channels", C.num(arch.get("intermediate_size"))],
            ["attention heads (key/value)", f"{C.num(arch.get('num_attention_heads'))} "
                                            f"({C.num(arch.get('num_key_value_heads'))})"],
            ["vocabulary", C.num(arch.get("vocab_size"))],
            ["parameters", _millions(record.get("parameters"))],
            ["weights on disk", f"{C.mib(C.weights_bytes(directory))} (safetensors, {arch.get('dtype', '-')})"]]
    return C.table(["", ""], rows)


def _construction(cfg: dict | None, pruning: dict | None, variant: str, hub: bool) -> str:
    student = ((cfg or {}).get("train") or {}).get("student") or {}
    lines = []
    if pruning:
        params = pruning.get("parameters") or {}
        lines.append(f"Pruned from the teacher ({pruning.get('method', '-')} selection, measured on "
                     f"{(pruning.get('calibration') or {}).get('samples', '-')} calibration sequences of "
                     f"{(pruning.get('calibration') or {}).get('tokens', '-')} tokens in all), "
                     "from train/<student>/pruning.json:")
        rows = [["decoder layers", pruning.get("teacher_layers"), len(pruning.get("layers") or []),
                 ", ".join(map(str, pruning.get("layers") or []))]]
        for key, label in (("intermediate_size", "MLP channels"), ("attention_heads", "query heads"),
                           ("hidden_size", "hidden channels")):
            d = pruning.get(key) or {}
            rows.append([label, C.num(d.get("teacher")), C.num(d.get("student")), ""])
        rows.append(["parameters", _millions(params.get("teacher")), _millions(params.get("student")), ""])
        lines.append(C.table(["", "teacher", "student", "kept"], rows))
    elif student.get("teacher_layers"):
        lines.append(f"A layer subset of the teacher: its embeddings, decoder layers {student['teacher_layers']} "
                     "and its output head (DistilBERT-style initialisation).")
    elif student.get("model"):
        model = str(student["model"])
        shown = Path(model).name if hub and Path(model).is_absolute() else model
        lines.append(f"Started from the model `{shown}` (train.student.model).")
    else:
        lines.append("Not recorded: config.resolved.yaml does not describe this student's training run "
                     "(another configuration was used in this run directory since).")
    if variant == "sft_baseline":
        lines.append("Built the same way as the distilled student, then trained with cross-entropy only.")
    return "\n\n".join(lines)


def _terms(terms: list[dict] | None) -> str:
    parts = []
    for t in terms or []:
        extra = [f"T {t['temperature']}"] if t.get("temperature") not in (None, 1.0) else []
        extra += [f"beta {t['beta']}"] if t.get("beta") is not None else []
        extra += [f"alpha {t['alpha']}"] if t.get("alpha") is not None else []
        parts.append(f"{t.get('weight')} x {t.get('name')}" + (f" ({', '.join(extra)})" if extra else ""))
    return " + ".join(parts) or "-"


def _recipe(cfg: dict | None, record: dict, variant: str) -> str:
    if not record:
        return "Not recorded: train/metrics.json has no entry for this model."
    t = (cfg or {}).get("train") or {}
    rows = [["mode", t.get("mode") or record.get("mode")],
            ["teacher signal", record.get("teacher_signal") or "none (cross-entropy only)"],
            ["loss" + (" (the last phase; every phase below)" if record.get("phases") else ""),
             _terms(record.get("loss_terms"))],
            ["optimizer steps", record.get("steps")]]
    if t:
        rows += [["batch size x gradient accumulation", f"{t.get('batch_size')} x {t.get('grad_accum')}"],
                 ["learning rate", f"{t.get('lr')} ({t.get('lr_scheduler')}, {t.get('warmup_steps')} warm-up steps)"],
                 ["max sequence length", t.get("max_seq_len")], ["epochs (cap)", t.get("epochs")],
                 ["data order", _order(cfg)], ["LoRA", t.get("lora") or "no (full fine-tuning)"],
                 ["seed", t.get("seed") if t.get("seed") is not None else (cfg or {}).get("seed")]]
        op = t.get("on_policy") or {}
        if t.get("mode") == "on_policy" and variant != "sft_baseline":
            rows.append(["on-policy", f"rollouts {op.get('rollouts')}, trainer {op.get('trainer')}, "
                                      f"{op.get('rounds')} rounds after {op.get('offline_steps')} offline steps, "
                                      f"sampling T {op.get('temperature')}, {op.get('max_new_tokens')} new tokens, "
                                      f"loss {_terms(op.get('loss'))}"])
    else:
        rows.append(["settings", "not shown: config.resolved.yaml was written for another configuration since"])
    x = record.get("cross_tokenizer")
    if x:
        rows.append(["teacher on another tokenizer", f"of {x.get('tokens')} student tokens, "
                     f"{100 * x.get('exact', 0):.1f} % aligned exactly to a teacher token, {100 * x.get('uld', 0):.1f} "
                     f"% by start only (ULD), {100 * x.get('none', 0):.1f} % without a teacher row (CE only)"])
    rows.append(["mean training loss", C.num(record.get("train_loss"), ".4f")])
    out = [C.table(["", ""], rows)]
    phases = record.get("phases") or []
    if phases:
        out.append("Phases, in order (train/metrics.json):")
        out.append(C.table(["phase", "steps", "loss", "student samples", "mean training loss"], [
            [p.get("phase"), p.get("steps"), _terms(p.get("loss_terms")),
             (p.get("samples") or {}).get("rows", "-"), C.num(p.get("train_loss"), ".4f")] for p in phases]))
    return "\n\n".join(out)


def _order(cfg: dict | None) -> str:
    g, t = (cfg or {}).get("generate") or {}, (cfg or {}).get("train") or {}
    cur = t.get("curriculum") or {}
    pacing = cur.get("pacing")
    paced = f", pacing {pacing} (from {cur.get('start')} of the data to all at {cur.get('full_at')})" \
        if pacing not in (None, "none") else ", no pacing"
    return f"prompts in {g.get('order', '-')} order{paced}; shuffle within it: {t.get('shuffle')}"


def _hub_datasets(cfg: dict | None) -> list[str]:
    """The Hub datasets the prompts came from (generate.sources of kind hf_dataset with a Hub id)."""
    from llmdistill.config.base import is_hub_id

    sources = ((cfg or {}).get("generate") or {}).get("sources") or []
    return sorted({s["path"] for s in sources if s.get("kind") == "hf_dataset" and isinstance(s.get("path"), str)
                   and "/" in s["path"] and is_hub_id(s["path"])})


def _data(run_dir: Path, filtered: dict, cfg: dict | None) -> str:
    counts = filtered.get("counts") or {}
    if not counts:
        return "Not recorded: the filter stage's manifest (filter/manifest.json) is missing."
    sampling = filtered.get("sampling") or {}
    prov = filtered.get("provenance") or {}
    lines = [f"{counts.get('rows')} samples kept by the filter ({counts.get('removed', 0)} removed); per curriculum "
             f"level: {', '.join(f'level {k}: {v}' for k, v in sorted((counts.get('levels') or {}).items()))}. "
             f"The teacher answered with temperature {sampling.get('temperature')}, top-p {sampling.get('top_p')}, "
             f"up to {sampling.get('max_new_tokens')} new tokens, {sampling.get('n')} answer(s) per prompt, and its "
             f"top-{prov.get('topk')} log-probabilities ({prov.get('logprob_mode')}) were stored with every token. "
             "The dataset has its own card (filter/README.md)."]
    try:
        sources = C.source_counts(run_dir / "filter")
    except store.StoreError as e:
        sources = {}
        lines.append(f"Rows per source: not read ({e}).")
    if sources:
        lines.append(C.table(["prompt source", "samples"], [[k, v] for k, v in sources.items()]))
    return "\n\n".join(lines)


def _eval_tables(evaluation: dict, variant: str) -> str:
    models = _models(evaluation)
    topk = evaluation.get("topk")
    out = [f"On {evaluation.get('eval_prompts')} held-out prompts ({evaluation.get('eval_tokens')} teacher tokens; "
           f"eval/metrics.json), each model scored on the teacher's own answers:",
           C.table(["model", "KL to teacher", "JSD", "top-1 agreement", f"top-{topk} overlap", "perplexity", "ECE"],
                   [[_label(n, variant), C.num(m.get("kl_to_teacher"), ".4f"), C.num(m.get("jsd_to_teacher"), ".4f"),
                     C.num(m.get("top1_agreement")), C.num(m.get("topk_overlap")), C.num(m.get("perplexity"), ".2f"),
                     C.num(m.get("ece"))] for n, m in models.items()])]
    tasks = sorted({t for m in models.values() for t in m.get("tasks") or {}})
    if tasks:
        mine = models.get(variant, {}).get("tasks") or {}
        teacher = models.get("teacher", {}).get("tasks") or {}
        other = "sft_baseline" if variant != "sft_baseline" else "student"
        against = models.get(other, {}).get("tasks") or {}
        rows = []
        for t in tasks:
            first = next(m["tasks"][t] for m in models.values() if t in (m.get("tasks") or {}))
            acc = (mine.get(t) or {}).get("accuracy")
            t_acc = (teacher.get(t) or {}).get("accuracy")
            o_acc = (against.get(t) or {}).get("accuracy")
            rows.append([t, first.get("grader"), first.get("total"), _score(mine.get(t)), _score(teacher.get(t)),
                         C.num(acc / t_acc if acc is not None and t_acc else None, ".2f"), _score(against.get(t)),
                         C.num(acc - o_acc if acc is not None and o_acc is not None else None, "+.3f")])
        label = "SFT-only baseline" if other == "sft_baseline" else "distilled student"
        out += ["Gradable tasks (greedy answers, graded against the gold answers):",
                C.table(["task", "grader", "items", "this model", "teacher", "retention of the teacher's score",
                         label, f"this model - {label}"], rows)]
        if not against:
            out.append(f"No {label} was trained in this run (train.sft_baseline), so there is nothing beside it.")
    levels = (models.get(variant) or {}).get("by_level") or {}
    if levels:
        out += ["This model per curriculum level:",
                C.table(["level", "tokens", "top-1 agreement", "KL to teacher"],
                        [[k, v.get("tokens"), C.num(v.get("top1_agreement")), C.num(v.get("kl_to_teacher"), ".4f")]
                         for k, v in levels.items()])]
    return "\n\n".join(out)


def _score(task: dict | None) -> str:
    return f"{task['accuracy']:.3f} ({task.get('correct')} / {task.get('total')})" if task else "-"


def _latency(evaluation: dict | None, variant: str, directory: Path, why_not: str) -> str:
    size = f"Weights on disk: {C.mib(C.weights_bytes(directory))}."
    if not evaluation:
        return f"{size} Latency: not measured yet ({why_not})."
    models = _models(evaluation)
    base = (models.get("teacher") or {}).get("latency_ms_per_token")
    rows = [[_label(n, variant), _millions(m.get("parameters")),
             C.mib(m.get("bytes")), C.num(m.get("latency_ms_per_token"), ".2f"),
             f"{base / m['latency_ms_per_token']:.2f}x" if base and m.get("latency_ms_per_token") else "-",
             m.get("device", "-")] for n, m in models.items()]
    return "\n\n".join([size, "Measured by the eval stage (greedy decoding, batch 1):",
                        C.table(["model", "parameters", "weights in memory", "ms / token", "speed-up vs teacher",
                                 "device"], rows)])


def _retrain(retrain: dict) -> str:
    rows = [[g.get("metric"), C.num(g.get("student"), ".4f"), C.num(g.get("promoted"), ".4f"),
             C.num(g.get("max_regression"), ".4f"), "pass" if g.get("passed") else "FAIL"]
            for g in retrain.get("gates") or []]
    text = f"`llmdistill retrain` decision: **{retrain.get('decision')}** ({retrain.get('reason')})."
    return text + ("\n\n" + C.table(["gate", "this model", "promoted before", "allowed regression", "result"], rows)
                   if rows else "")


def _usage(directory: Path, repo_id: str | None) -> str:
    where = repo_id or str(directory.resolve())
    chat = (directory / "chat_template.jinja").is_file() or "chat_template" in (
        C.read_json(directory / "tokenizer_config.json") or {})
    if chat:
        ask = ('messages = [{"role": "user", "content": "What is the capital of France?"}]\n'
               'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,\n'
               '                                       return_tensors="pt")')
    else:
        ask = 'inputs = tokenizer("The capital of France is", return_tensors="pt")'
    return C.code(f"""
from transformers import AutoModelForCausalLM, AutoTokenizer

path = "{where}"
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
{ask}
output = model.generate(**inputs, max_new_tokens=32, do_sample=False)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
""")


def _provenance(cfg: dict | None, train_ok: dict | None, filtered: dict, teacher: dict) -> str:
    prov = (cfg or {}).get("_provenance") or {}
    tprov = filtered.get("provenance") or {}
    rows = [["teacher", f"{teacher['name']} ({teacher['note']})"],
            ["teacher model hash", (tprov.get("teacher") or {}).get("model_hash", "-")],
            ["tokenizer hash (teacher and student)", tprov.get("tokenizer_hash", "-")],
            ["chat template hash", tprov.get("chat_template_hash", "-")],
            ["train fingerprint", (train_ok or {}).get("fingerprint", "-")],
            ["llmdistill", (train_ok or {}).get("llmdistill_version", "-")],
            ["git commit", prov.get("git_sha") or "-"]]
    versions = prov.get("versions") or {}
    if versions:
        rows.append(["libraries", ", ".join(f"{k} {v}" for k, v in versions.items() if v and k != "llmdistill")])
    return C.table(["", ""], rows)
