"""The eval stage: students vs teacher on held-out prompts.

1. The teacher answers every held-out prompt greedily (cached under runs/<name>/cache/, keyed by the
   teacher, the prompts and the length, so retraining never pays for it twice).
2. On those teacher completions, each student (and the previously promoted one, eval.compare_to) is
   scored against the teacher's full next-token distribution: mean KL(teacher || student) and JSD per
   token, top-1 agreement, top-k overlap, the student's perplexity and its calibration error (ECE).
3. Gradable tasks, size (parameters, bytes) and CPU/GPU latency per generated token (greedy, batch 1).
Writes eval/metrics.json, eval/token_kl.json (per-token KL, for the report's histogram) and
eval/samples.jsonl (side-by-side generations), eval/tasks.jsonl (every graded reply) and prints a summary
that fits the width (`print_table`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import statistics
import sys
import textwrap
import time

from tqdm.auto import tqdm

from llmdistill import graders, models, records, store
from llmdistill.config import Config
from llmdistill.errors import UserError
from llmdistill.evaluate.metrics import add_sums, finish, sums_of, token_stats
from llmdistill.prompts import load_prompts
from llmdistill.runner import StageContext
from llmdistill.teachers import ContextCheck, PromptTooLong, model_context

log = logging.getLogger("llmdistill")

STUDENT_VARIANTS = ("student", "sft_baseline")
PROMOTED = "promoted"  # the previously promoted student (eval.compare_to), scored beside the new ones


def run(cfg: Config, ctx: StageContext) -> None:
    import torch

    e = cfg.eval
    try:
        prompts = load_prompts(e.prompts, cfg.generate.system_prompt, "curriculum", e.max_prompts)
    except ValueError as err:
        raise UserError(str(err)) from None
    files = ", ".join(map(str, e.prompts))
    if not prompts:
        raise UserError(f"eval.prompts {files}: no prompts in it (an empty file, or blank lines only)")
    trained_on = set(store.read_table(ctx.stage_dir("filter"), ["prompt_id"]).column("prompt_id").to_pylist())
    overlap = [p for p in prompts if p.id in trained_on]
    if overlap:
        log.warning("eval: %d held-out prompts also appear in the training data; they are left out", len(overlap))
        prompts = [p for p in prompts if p.id not in trained_on]
    if not prompts:
        raise UserError(f"eval.prompts {files}: every one of its {len(overlap)} prompts is in the training data too: "
                        "no held-out prompt is left to evaluate on")
    # a task file the grader cannot use fails now, before any model is loaded
    tasks = [(task, task_items(cfg, task)) for task in e.tasks]

    device = models.pick_device(cfg.teacher.device)
    tokenizer = models.load_tokenizer(cfg.teacher.model, cfg.teacher.revision, cfg.teacher.trust_remote_code)
    teacher = models.load_causal_lm(cfg.teacher.model, cfg.teacher.dtype, device, cfg.teacher.revision,
                                    cfg.teacher.trust_remote_code)
    check_lengths(cfg, tokenizer, model_context(teacher.config), prompts, tasks)
    refs = teacher_references(cfg, ctx, teacher, tokenizer, prompts, device)

    students, other_tokenizer = {}, {}
    teacher_hash = models.tokenizer_info(tokenizer)["tokenizer_hash"]
    # students are derived from the teacher and saved with its code, if it has any: trusted as the teacher is
    trust = cfg.teacher.trust_remote_code
    paths = {name: ctx.upstream_dir / name for name in STUDENT_VARIANTS
             if store.read_success(ctx.upstream_dir / name) is not None}
    if not paths:
        raise UserError(f"eval: no trained student under {ctx.upstream_dir}")
    if e.compare_to is not None:
        paths[PROMOTED] = e.compare_to
    for name, path in paths.items():
        students[name] = models.load_causal_lm(str(path), "float32", device, trust_remote_code=trust)
        student_tokenizer = models.load_tokenizer(str(path), trust_remote_code=trust)
        if models.tokenizer_info(student_tokenizer)["tokenizer_hash"] != teacher_hash:
            other_tokenizer[name] = student_tokenizer
    for name in other_tokenizer:
        log.warning("eval: %s uses another tokenizer than the teacher: token-level metrics are left out for it", name)

    scored = {"teacher": teacher, **{k: v for k, v in students.items() if k not in other_tokenizer}}
    by_level: dict[str, dict[str, dict]] = {name: {} for name in scored}
    token_kl: dict[str, list[float]] = {name: [] for name in scored if name != "teacher"}
    with torch.no_grad():
        for start in tqdm(range(0, len(refs), e.batch_size), desc="eval: score", unit="batch"):
            chunk = refs[start : start + e.batch_size]
            batch, positions, targets, levels = _score_batch(chunk, tokenizer.pad_token_id, device)
            t_logits = _logits_at(teacher, batch, positions)
            for name, model in scored.items():
                s_logits = t_logits if model is teacher else _logits_at(model, batch, positions)
                stats = token_stats(t_logits, s_logits, targets, e.topk)
                if name in token_kl:
                    token_kl[name].extend(round(v, 5) for v in stats["kl"].tolist())
                for level in sorted(set(levels)):
                    sel = torch.tensor([lv == level for lv in levels])
                    part = sums_of({key: v[sel] for key, v in stats.items()}, e.ece_bins)
                    add_sums(by_level[name].setdefault(str(level), {}), part)

    result = {}
    for name, model in scored.items():
        total: dict = {}
        for part in by_level[name].values():
            add_sums(total, part)
        per_level = {}
        for lv, sums in sorted(by_level[name].items()):
            per_level[lv] = finish(sums)
            per_level[lv].pop("calibration", None)
        result[name] = {**finish(total), "parameters": models.count_parameters(model), "bytes": _bytes(model),
                        "by_level": per_level}
        if model is teacher:  # the reference tokens are its own greedy picks: its calibration says nothing
            for m in (result[name], *per_level.values()):
                m.pop("ece", None)
                m.pop("calibration", None)
    for name in other_tokenizer:
        result[name] = {"parameters": models.count_parameters(students[name]), "bytes": _bytes(students[name]),
                        "tokens": 0,
                        "note": "another tokenizer than the teacher: no token-level metrics"}
    everyone = {"teacher": teacher, **students}
    tokenizers = {name: other_tokenizer.get(name, tokenizer) for name in everyone}
    for name, tasks in task_scores(cfg, ctx, everyone, tokenizers, device, refs).items():
        if tasks:
            result[name]["tasks"] = tasks
    samples = {}
    for name, model in everyone.items():
        ms, texts = latency(model, tokenizers[name], prompts[: e.latency_prompts],
                            e.latency_new_tokens, device)
        result[name]["latency_ms_per_token"] = ms
        result[name]["device"] = device
        samples[name] = texts
    with open(ctx.out_dir / "samples.jsonl", "w", encoding="utf-8") as f:
        for i, p in enumerate(prompts[: e.latency_prompts]):
            row = {"prompt": p.messages[-1]["content"], **{name: samples[name][i] for name in samples}}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    metrics = {"eval_prompts": len(prompts), "eval_tokens": result["teacher"]["tokens"],
               "left_out_overlapping_prompts": len(overlap), "topk": e.topk, "ece_bins": e.ece_bins,
               "compare_to": e.compare_to, "models": result}
    store.atomic_write_json(ctx.out_dir / "token_kl.json", token_kl)
    store.atomic_write_json(ctx.out_dir / "metrics.json", metrics)
    log_to_trackers(ctx, metrics)
    print_table(metrics)


def log_to_trackers(ctx: StageContext, metrics: dict) -> None:
    """Each trained variant's metrics into the tracker run it was trained in (train.report_to; the runs are in
    train/tracking.json): eval/<metric> for the variant, eval/teacher/<metric> for the teacher beside it (its size,
    latency, perplexity and task scores: its distances to itself say nothing), at the variant's last training step.
    A tracker that cannot be reached is a warning: metrics.json is written."""
    from llmdistill import tracking

    path = ctx.upstream_dir / tracking.RECORD
    if not path.exists():
        return
    trained = store.read_json(ctx.upstream_dir / "metrics.json")
    models_ = metrics["models"]
    teacher = {k: v for k, v in models_["teacher"].items()
               if k in ("parameters", "bytes", "perplexity", "latency_ms_per_token", "tasks")}
    common = {**tracking.flatten(teacher, "eval/teacher"), "eval/prompts": metrics["eval_prompts"]}
    for name, record in store.read_json(path).items():
        if name not in models_ or name not in trained:
            continue
        try:
            run = tracking.Run.reopen(record, "eval: train.report_to")
        except UserError as e:
            log.warning("%s; the eval metrics of %s are in %s only", e, name, ctx.out_dir / "metrics.json")
            continue
        run.log({**tracking.flatten(models_[name], "eval"), **common}, trained[name]["steps"])
        run.close(None)
        log.info("eval: %s's metrics logged to its %s run %s", name, ", ".join(record["trackers"]), record["name"])


def _bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def teacher_references(cfg: Config, ctx: StageContext, teacher, tokenizer, prompts, device) -> list[dict]:
    """The teacher's greedy completion of every prompt (token ids include the EOS), cached per content."""

    e = cfg.eval

    def compute():
        answered = greedy(teacher, tokenizer, prompts, e.max_new_tokens, e.batch_size, device,
                          "eval: teacher references")
        return [{"prompt_id": p.id, "level": p.level, "prompt_ids": prompt_ids, "completion_ids": completion,
                 "text": tokenizer.decode(completion, skip_special_tokens=True)}
                for p, (prompt_ids, completion) in zip(prompts, answered)]

    return teacher_cached(cfg, ctx, "refs", prompts, e.max_new_tokens, compute, "teacher references")


def teacher_cached(cfg: Config, ctx: StageContext, kind: str, prompts, max_new_tokens: int, compute, what: str):
    """`compute()` (the teacher's greedy replies to `prompts`), cached under runs/<name>/cache/, keyed by the
    teacher, the prompts, the length and the system prompt: a retrain or a sweep does not pay for it again."""
    key = records.stable_hash({"teacher": cfg.teacher.model_dump(mode="json"), "prompts": [p.id for p in prompts],
                               "max_new_tokens": max_new_tokens, "system": cfg.generate.system_prompt})
    cache = ctx.run_dir / "cache" / f"eval-{kind}-{key}.json"
    if cache.exists():
        log.info("eval: %s from cache %s", what, cache)
        return store.read_json(cache)
    out = compute()
    store.atomic_write_json(cache, out)
    return out


def greedy(model, tokenizer, prompts, max_new_tokens: int, batch_size: int, device, desc: str):
    """(prompt ids, completion ids up to and including EOS) for each prompt: greedy, left-padded batches."""
    import torch

    eos = models.eos_token_ids(model, tokenizer)
    tokenizer.padding_side = "left"
    out_rows = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
        encoded = [models.encode_prompt(tokenizer, p.messages) for p in prompts[start : start + batch_size]]
        batch = tokenizer.pad({"input_ids": encoded}, padding=True, return_tensors="pt").to(device)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
        for prompt_ids, row in zip(encoded, out[:, batch["input_ids"].shape[1]:].tolist()):
            end = next((i for i, t in enumerate(row) if t in eos), None)
            out_rows.append((prompt_ids, row if end is None else row[: end + 1]))
    return out_rows


def check_lengths(cfg: Config, tokenizer, context: int | None, prompts, tasks) -> None:
    """Every reply eval asks for fits the teacher's context (prompt tokens + that length), checked before anything
    is generated, by the check generate makes of its prompts (`ContextCheck`); else one line naming the key."""
    if context is None:  # the model's config does not say
        return
    e = cfg.eval
    asks = [("eval.max_new_tokens", e.max_new_tokens, prompts),
            ("eval.latency_new_tokens", e.latency_new_tokens, prompts[: e.latency_prompts]),
            *((f"eval.tasks {task.name}: max_new_tokens", task.max_new_tokens, items) for task, items in tasks)]
    for key, new_tokens, items in asks:
        if new_tokens >= context:
            raise UserError(f"{key} is {new_tokens}, but the teacher's context holds {context} tokens, prompt and "
                            "reply together: lower it")
        try:
            ContextCheck(tokenizer, context, new_tokens, "error").encode([p.messages for p in items])
        except PromptTooLong as err:
            prompt = items[err.index]
            raise UserError(f"{key}: {prompt.origin or repr(prompt.messages[-1]['content'][:60])}: {err.reason}") \
                from None


def task_items(cfg: Config, task) -> list:
    """The task's prompts (`eval.tasks[]` entry `task`), each with a gold answer its grader can use."""
    try:
        items = load_prompts(task.prompts, cfg.generate.system_prompt, "file", task.max_items)
    except ValueError as err:
        raise UserError(str(err)) from None
    if not items:
        raise UserError(f"eval.tasks {task.name}: prompts {', '.join(map(str, task.prompts))}: no prompts in it (an "
                        "empty file, or blank lines only)")
    missing = [p for p in items if p.answer is None]
    if missing:
        raise UserError(f"eval.tasks {task.name}: {len(missing)} items have no 'answer' "
                        f"(first: {missing[0].messages[-1]['content'][:60]!r})")
    graders.check_answers(task.grader, [(p.origin or repr(p.messages[-1]["content"][:60]), p.answer) for p in items],
                          task.choices, f"eval.tasks {task.name}")
    return items


def task_scores(cfg: Config, ctx: StageContext, models_by_name: dict, tokenizers: dict, device,
                refs: list[dict] = ()) -> dict[str, dict]:
    """Accuracy of every model on every gradable task, with the first answers for inspection; every graded
    reply goes to eval/tasks.jsonl. The teacher's replies are cached (runs/<name>/cache/), like its references;
    a task asked on the held-out prompts themselves, at the same length, reads them from the references
    (`refs`: the same greedy replies) instead of generating them again."""
    e = cfg.eval
    out: dict[str, dict] = {name: {} for name in models_by_name}
    rows = []
    ref_text = {r["prompt_id"]: r["text"] for r in refs}
    for task in e.tasks:
        items = task_items(cfg, task)
        for name, model in models_by_name.items():
            tok = tokenizers[name]
            replies = functools.partial(_replies, model, tok, items, task.max_new_tokens, e.batch_size, device,
                                        f"eval: {task.name} / {name}")
            if name == "teacher" and task.max_new_tokens == e.max_new_tokens and all(p.id in ref_text for p in items):
                answers = [ref_text[p.id] for p in items]
            elif name == "teacher":
                answers = teacher_cached(cfg, ctx, "task", items, task.max_new_tokens, replies,
                                         f"the teacher's {task.name} replies")
            else:
                answers = replies()
            correct = [graders.grade(task.grader, a, p.answer, task.choices) for a, p in zip(answers, items)]
            out[name][task.name] = {"accuracy": sum(correct) / len(items), "correct": sum(correct),
                                    "total": len(items), "grader": task.grader,
                                    "examples": [{"prompt": p.messages[-1]["content"], "answer": p.answer,
                                                  "output": a, "correct": c}
                                                 for p, a, c in list(zip(items, answers, correct))[:5]]}
            rows += [{"task": task.name, "model": name, "prompt": p.messages[-1]["content"], "answer": p.answer,
                      "output": a, "correct": c} for p, a, c in zip(items, answers, correct)]
    if rows:
        store.atomic_write_bytes(ctx.out_dir / "tasks.jsonl", "".join(
            json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
    return out


def _replies(model, tok, items, max_new_tokens: int, batch_size: int, device, desc: str) -> list[str]:
    return [tok.decode(c, skip_special_tokens=True)
            for _, c in greedy(model, tok, items, max_new_tokens, batch_size, device, desc)]


def _score_batch(refs: list[dict], pad_id: int, device):
    """Right-padded prompt + completion; the positions that predict each completion token and its level."""
    import torch

    seqs = [r["prompt_ids"] + r["completion_ids"] for r in refs]
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    positions, targets, levels = [], [], []
    for b, (r, s) in enumerate(zip(refs, seqs)):
        ids[b, : len(s)] = torch.tensor(s)
        mask[b, : len(s)] = 1
        p = len(r["prompt_ids"])
        for j, tok in enumerate(r["completion_ids"]):
            positions.append((b, p + j - 1))
            targets.append(tok)
            levels.append(r["level"])
    pos = torch.tensor(positions, dtype=torch.long).reshape(-1, 2)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, pos, torch.tensor(targets), levels


def _logits_at(model, batch, positions):
    """Logits [N, V] at the given (row, position) pairs, projecting only those hidden states."""
    hidden = model.get_decoder()(**batch).last_hidden_state
    h = hidden[positions[:, 0].to(hidden.device), positions[:, 1].to(hidden.device)]
    head, post = models.lm_head(model)
    logits = head(h)
    return (logits if post is None else post(logits)).float().cpu()


def latency(model, tokenizer, prompts, new_tokens: int, device) -> tuple[float | None, list[str]]:
    """Median milliseconds per generated token, greedy, batch 1; and the generated texts."""
    import torch

    eos = models.eos_token_ids(model, tokenizer)
    per_token, texts = [], []
    for i, p in enumerate(prompts):
        ids = torch.tensor([models.encode_prompt(tokenizer, p.messages)], device=device)
        if i == 0:  # warm-up
            with torch.no_grad():
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        gen = out[0, ids.shape[1]:]
        per_token.append(elapsed / max(len(gen), 1) * 1000)
        texts.append(tokenizer.decode(gen, skip_special_tokens=True))
    return (round(statistics.median(per_token), 2) if per_token else None), texts


def summary(metrics: dict) -> tuple[str, list[str], list[list[str]]]:
    """(title, column headers, one row of cells per model) of the eval summary, as text."""
    tasks = sorted({t for m in metrics["models"].values() for t in m.get("tasks", {})})
    headers = ["model", "params (M)", "KL to teacher", "JSD", "top-1 agreement", f"top-{metrics['topk']} overlap",
               "perplexity", "ECE", "ms / token", *tasks]
    rows = []
    for name, m in metrics["models"].items():
        rows.append([
            name,
            f"{m['parameters'] / 1e6:.1f}",
            f"{m['kl_to_teacher']:.4f}" if "kl_to_teacher" in m else "-",
            f"{m['jsd_to_teacher']:.4f}" if "jsd_to_teacher" in m else "-",
            f"{m['top1_agreement']:.3f}" if "top1_agreement" in m else "-",
            f"{m['topk_overlap']:.3f}" if "topk_overlap" in m else "-",
            f"{m['perplexity']:.2f}" if "perplexity" in m else "-",
            f"{m['ece']:.3f}" if m.get("ece") is not None else "-",
            f"{m['latency_ms_per_token']:.1f}" if m.get("latency_ms_per_token") is not None else "-",
            *[f"{m['tasks'][t]['accuracy']:.3f}" if t in m.get("tasks", {}) else "-" for t in tasks],
        ])
    title = f"eval: {metrics['eval_prompts']} held-out prompts, {metrics['eval_tokens']} teacher tokens"
    return title, headers, rows


def plain_layout(headers: list[str], rows: list[list[str]], width: int) -> list[str]:
    """The summary as plain text no wider than `width` where it can be: one line per model when that
    fits, else one column per model (metrics down the side), else one block per model. Nothing is cut."""

    def columns(table: list[list[str]]) -> list[str]:
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
                for row in table]

    wide = columns([headers, *rows])
    if max(map(len, wide)) <= width:
        return wide
    transposed = columns([[headers[0], *(r[0] for r in rows)],
                          *([h, *(r[i] for r in rows)] for i, h in enumerate(headers) if i > 0)])
    if max(map(len, transposed)) <= width:
        return transposed
    label = max(len(h) for h in headers[1:])
    blocks = []
    for r in rows:
        blocks += [r[0], *(f"  {h.ljust(label)}  {c}" for h, c in zip(headers[1:], r[1:]))]
    return blocks


def output_width(stream) -> int:
    """$COLUMNS when set, else the terminal's width, else 80 (a pipe, a CI log, a cron mail)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isascii() and columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 80


def print_table(metrics: dict, stream=None) -> None:
    """The eval summary on `stream` (stderr): a rich table on a terminal wide enough for it, else plain
    text that fits the width (see `plain_layout`), so a log never shows headers cut to "teac…"."""
    from rich.console import Console
    from rich.table import Table

    stream = stream if stream is not None else sys.stderr
    title, headers, rows = summary(metrics)
    width = output_width(stream)
    if getattr(stream, "isatty", lambda: False)():
        table = Table(title=title)
        for col in headers:
            table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
        for row in rows:
            table.add_row(*row)
        console = Console(file=stream, width=width)
        if console.measure(table, options=console.options.update_width(10**6)).maximum <= width:  # unclamped
            console.print(table)
            return
    stream.write("\n".join([*textwrap.wrap(title, width), *plain_layout(headers, rows, width)]) + "\n")
    stream.flush()
