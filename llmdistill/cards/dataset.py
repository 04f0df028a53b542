"""The dataset card of a generate, annotate or filter output (<run>/<stage>/README.md): what produced it, its
counts, the schema with the teacher-signal columns explained, decontamination, and how to load it, from

    <stage>/manifest.json        teacher provenance (tokenizer hash, k, logprob mode), sampling, counts
    <stage>/stats.json           what the stage did (filter: removals per reason, scores, decontamination)
    <stage>/decontamination.json the eval sets checked, n-gram size and scope (filter, when it decontaminated)
    <stage>/part-*.parquet       rows per source (the `source` column only)
"""

from __future__ import annotations

from pathlib import Path

from llmdistill import records, store
from llmdistill.cards import common as C

STAGES = ("generate", "annotate", "filter")
SHARDS = "part-*.parquet"  # the committed shards (store.SHARD_RE); removed rows live in removed/ (filter)

# What each column holds (records.arrow_schema, plus the removed rows' `reason`); tests/unit/test_cards.py checks
# that every column of the schema is here.
COLUMNS = {
    "id": "stable content hash of the sample (prompt, template, teacher, sampling parameters, sample index): the "
          "key for resume, caching and dedup",
    "prompt_id": "content hash of the prompt (its turns and source)",
    "messages": "the prompt turns sent to the teacher (role, content)",
    "completion": "the teacher's answer (null for a failed generation, kept and counted)",
    "source": "where the prompt came from (seed file, dataset, template family)",
    "teacher": "the teacher that answered (its name in the run's teachers)",
    "gen": "sampling parameters: temperature, top_p, max_new_tokens, seed, sample_index",
    "usage": "prompt and completion token counts",
    "finish_reason": "stop, length or error",
    "error": "why the generation failed (null otherwise)",
    "level": "curriculum level of the prompt (1 = easiest)",
    "difficulty": "measured difficulty: the teacher's mean negative log-likelihood of its own tokens",
    "scores": "JSON text: measured scores (mean NLL, entropy, length; the filter's scorers)",
    "metadata": "JSON text: free metadata of the prompt (gold answer, tags, ...)",
    "completion_token_ids": "[T] the teacher's own tokens of the completion: never re-tokenise the text",
    "topk_ids": "[T][k] the ids of the teacher's k most likely tokens at each step, best first",
    "topk_logprobs": "[T][k] their log-probabilities (float16)",
    "reason": "removed rows only (removed/): the reason code of the filter step that removed the row",
}
WHAT = {"generate": "the teacher's answers to the run's prompts, with its top-k log-probabilities",
        "annotate": "the generated answers re-scored by a local teacher (top-k log-probabilities by teacher forcing)",
        "filter": "the samples kept by the filter (dedup, heuristics, decontamination)"}


def dataset_card(run_dir: Path, stage: str, repo_id: str | None = None) -> str:
    """The card of `run_dir`/`stage`; `repo_id`: written for that Hub dataset repo (no local paths)."""
    run_dir = Path(run_dir)
    directory = run_dir / stage
    manifest = C.read_json(directory / store.MANIFEST) or {}
    stats = C.read_json(directory / store.STATS) or {}
    name = (C.read_config(run_dir) or {}).get("name", run_dir.name)
    counts = manifest.get("counts") or {}
    rows = counts.get("rows")
    prov = manifest.get("provenance") or {}
    # the teachers whose log-probs the rows hold: an annotated dataset's are the scoring teacher's
    teachers = {"scoring teacher": prov} if "annotated_by" in prov else manifest.get("teachers") or {"default": prov}
    shown = sorted({C.teacher_origin((p.get("teacher") or {}).get("name"), hub=repo_id is not None)["name"]
                    for p in teachers.values()})

    from huggingface_hub import DatasetCardData

    data = DatasetCardData(pretty_name=f"{name} / {stage}", task_categories=["text-generation"],
                           size_categories=[_size_category(rows)],
                           tags=["distillation", "llmdistill", "synthetic", "teacher-logprobs"],
                           configs=[{"config_name": "default", "data_files": [{"split": "train", "path": SHARDS}]}])
    body = [f"# {name} / {stage}: {WHAT.get(stage, stage)}",
            f"{C.num(rows)} rows made by llmdistill's `{stage}` stage in the run `{name}`, from the teacher(s) "
            f"{', '.join(f'**{t}**' for t in shown)}. Every row keeps the teacher's own tokens and its top-k "
            "log-probabilities beside the text, so a filter can never separate text and logits. This card was written "
            f"by llmdistill from {stage}/manifest.json and {stage}/stats.json; nothing in it was written by hand.",
            "## What produced it", _producers(teachers, manifest, repo_id is not None),
            "## Counts", _counts(directory, counts, stage)]
    if stage == "filter":
        body += ["## Filtering", _filtering(stats), "## Decontamination", _decontamination(directory, stats)]
    body += ["## Schema", _schema(teachers, stage), "## How to load it", _usage(directory, repo_id, rows, stage),
             "## Licence", "Not set by llmdistill. The text was written by the teacher(s) above from the run's "
             "prompts: the teacher's licence and the prompt sources' terms apply to it.",
             "## Provenance", C.table(["", ""], [
                 ["stage fingerprint", manifest.get("fingerprint", "-")],
                 ["built from", ", ".join(f"{k} {v}" for k, v in (manifest.get("upstream") or {}).items()) or "-"],
                 ["schema version", manifest.get("schema_version", "-")],
                 ["llmdistill", manifest.get("llmdistill_version", "-")]])]
    return C.card_text(data, "\n\n".join(body))


def _size_category(rows: int | None) -> str:
    """The Hub's size bucket for a row count."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M")):
        if (rows or 0) < limit:
            return label
    return "n>10M"


def _producers(teachers: dict, manifest: dict, hub: bool) -> str:
    header = ["", *teachers]
    def model(p: dict) -> str:
        o = C.teacher_origin((p.get("teacher") or {}).get("name"), hub)
        return f"{o['name']} ({o['note']})" if o["note"] else o["name"]

    keys = [("model", model),
            ("backend", lambda p: (p.get("teacher") or {}).get("backend")),
            ("dtype", lambda p: (p.get("teacher") or {}).get("dtype")),
            ("revision", lambda p: (p.get("teacher") or {}).get("revision") or "-"),
            ("model hash", lambda p: (p.get("teacher") or {}).get("model_hash")),
            ("tokenizer hash", lambda p: p.get("tokenizer_hash")),
            ("chat template hash", lambda p: p.get("chat_template_hash")),
            ("vocabulary size", lambda p: p.get("vocab_size")),
            ("top-k stored (k)", lambda p: p.get("topk")),
            ("log-prob mode", lambda p: p.get("logprob_mode")),
            ("log-probs from", lambda p: p.get("annotate_method") or p.get("logprobs_source")),
            ("capture temperature / top-p", lambda p: f"{p.get('capture_temperature')} / {p.get('capture_top_p')}")]
    if any("annotated_by" in p for p in teachers.values()):
        keys.append(("text written by",
                     lambda p: C.teacher_origin((p.get("text_from") or {}).get("name"), hub)["name"]))
    rows = [[label, *[C.num(get(p)) for p in teachers.values()]] for label, get in keys]
    s = manifest.get("sampling") or {}
    prompts = manifest.get("prompts") or {}
    return "\n\n".join([C.table(header, rows),
                        f"Sampling: temperature {s.get('temperature')}, top-p {s.get('top_p')}, up to "
                        f"{s.get('max_new_tokens')} new tokens, {s.get('n')} answer(s) per prompt, seed {s.get('seed')}"
                        f". Prompts: {C.num(prompts.get('prompts'))} ({C.num(prompts.get('bad_lines'))} bad lines "
                        "skipped in the prompt files)."])


def _counts(directory: Path, counts: dict, stage: str) -> str:
    rows = [["rows", C.num(counts.get("rows"))]]
    rows += [["failed (kept, completion null)", counts["failed"]]] if "failed" in counts else []
    rows += [[f"finish reason: {k}", v] for k, v in sorted((counts.get("finish_reasons") or {}).items())]
    if "completion_tokens" in counts:
        rows.append(["prompt / completion tokens", f"{C.num(counts.get('prompt_tokens'))} / "
                                                   f"{C.num(counts['completion_tokens'])}"])
    lines = [C.table(["", ""], rows), "Per curriculum level:",
             C.table(["level", "rows"], [[k, v] for k, v in sorted((counts.get("levels") or {}).items())])]
    try:
        sources = C.source_counts(directory)
        lines += ["Per prompt source (the `source` column):",
                  C.table(["source", "rows"], [[k, v] for k, v in sources.items()])]
    except store.StoreError as e:
        lines.append(f"Per prompt source: not read ({e}).")
    difficulty = (C.read_json(directory / store.MANIFEST) or {}).get("difficulty") or {}
    if difficulty and stage == "generate":  # later manifests carry the generated rows' figures on
        lines += ["Measured difficulty per level (the teacher's own log-probs):",
                  C.table(["level", "samples", "mean completion tokens", "mean teacher NLL", "mean teacher entropy"],
                          [[k, v.get("samples"), v.get("mean_completion_tokens"), v.get("mean_teacher_nll"),
                            v.get("mean_teacher_entropy")] for k, v in sorted(difficulty.items())])]
    return "\n\n".join(lines)


def _filtering(stats: dict) -> str:
    if not stats:
        return "Not recorded: filter/stats.json is missing."
    removed = stats.get("removed_by_reason") or {}
    lines = [f"{C.num(stats.get('input_rows'))} rows in, {C.num(stats.get('kept'))} kept, "
             f"{C.num(stats.get('removed'))} removed by the steps {', '.join(stats.get('steps') or [])}. Removed "
             "rows are kept beside the data, in removed/, with their reason code."]
    if removed:
        lines.append(C.table(["removal reason", "rows"], [[k, v] for k, v in sorted(removed.items())]))
    scores = {k: v for k, v in (stats.get("scores") or {}).items() if isinstance(v, dict)}
    if scores:
        lines.append(C.table(["score", "rows", "mean", "min", "max"],
                             [[k, v.get("count"), C.num(v.get("mean")), C.num(v.get("min")), C.num(v.get("max"))]
                              for k, v in sorted(scores.items())]))
    return "\n\n".join(lines)


def _decontamination(directory: Path, stats: dict) -> str:
    sets = stats.get("decontamination") or {}
    if not sets:
        return "Not checked: the filter had no decontaminate step, so no eval set was compared with these samples."
    detail = C.read_json(directory / "decontamination.json") or {}
    removed = stats.get("removed_by_reason") or {}
    rows = [[name, v.get("items"), v.get("items_hit"), removed.get(f"contamination:{name}", 0)]
            for name, v in sorted(sets.items())]
    how = (f"Samples sharing a {detail['ngram']}-word n-gram ({detail.get('scope')}) with an eval item were removed."
           if detail.get("ngram") else "Samples overlapping an eval item were removed.")
    return "\n\n".join([how, C.table(["eval set", "items", "items found in the samples", "rows removed"], rows)])


def _schema(teachers: dict, stage: str) -> str:
    schema = records.removed_schema() if stage == "filter" else records.arrow_schema()
    prov = next(iter(teachers.values()), {})
    rows = [[f"`{f.name}`", str(f.type).replace("<", "&lt;").replace(">", "&gt;"), COLUMNS[f.name]] for f in schema]
    return "\n\n".join([C.table(["column", "type", "meaning"], rows), (
        "The teacher signal: row t of `topk_ids` and `topk_logprobs` is the distribution the teacher sampled "
        "`completion_token_ids[t]` from, its k most likely tokens best first "
        f"(k = {prov.get('topk')}). The ids are the teacher's own, in a vocabulary of {prov.get('vocab_size')} "
        f"(tokenizer hash {prov.get('tokenizer_hash')}): a student on another tokenizer must map them, never "
        f"re-tokenise the text. The log-probabilities are `{prov.get('logprob_mode')}`: raw ones are the log-softmax "
        "of the model's logits at temperature 1, whatever the sampling temperature; processed ones are after the "
        f"sampling temperature and top-p (captured at temperature {prov.get('capture_temperature')}, top-p "
        f"{prov.get('capture_top_p')}). A failed generation keeps its row with these columns null. The mass outside "
        "the top k is 1 - sum(exp(topk_logprobs[t])).")])


def _usage(directory: Path, repo_id: str | None, rows: int | None, stage: str) -> str:
    if repo_id:
        load = f'ds = load_dataset("{repo_id}", split="train")'
    else:
        load = f'ds = load_dataset("parquet", data_files="{directory.resolve() / SHARDS}", split="train")'
    text = [C.code(f"""
from datasets import load_dataset

{load}
print(ds.num_rows)  # {C.num(rows)}
""")]
    if stage == "filter" and not repo_id:
        text.append("The removed rows, with their `reason`: "
                    f"`load_dataset(\"parquet\", data_files=\"{directory.resolve() / 'removed' / SHARDS}\", "
                    "split=\"train\")`.")
    text.append("The top-k matrices come back as nested lists: `numpy.array(ds[0][\"topk_logprobs\"])` is [T, k]; "
                "`llmdistill inspect` prints samples with their reasons.")
    return "\n\n".join(text)
