"""Offline on-policy distillation (train.mode: on_policy, train.on_policy.rollouts: offline).

On-policy distillation trains the student on sequences it writes itself, scored by the teacher, which fixes the
exposure bias of training on the teacher's text alone (GKD, MiniLLM; ShortOPD for pruned students). Offline, as
in Lightning OPD, the teacher scores each round's samples once and they are stored, so training needs no teacher
in memory and no sampler in the loop. A variant runs these phases in turn, each starting from the last one's
student:

    offline     (on_policy.offline_steps > 0) train.loss on the teacher's own data: distil or fine-tune first
    round-r     1. the current student samples a completion for each of the round's prompts (vLLM, or HF
                   generate), at the round's length budget (short to long with on_policy.min_new_tokens), its
                   repetitive suffixes cut (repetition.py)
                2. the teacher scores them by teacher forcing: its top-k at every sampled token and the exact
                   log-prob of the token itself (the `token_logprobs` column)
                3. the student trains on them with the rounds' loss (on_policy.loss, else train.loss): divergences
                   on the stored top-k at the student's own tokens, `sampled_reverse_kl` on the sampled tokens

Each round's samples are a dataset under `train/opd/<variant>/round-<r>/rollouts/` (shards committed batch by
batch, manifest.json, _SUCCESS holding its fingerprint), readable like any other (`llmdistill inspect`). A killed
round resumes: its committed batches are not sampled again (each batch is seeded by the round and its index, so
the rows come out the same) and its training resumes from the last checkpoint. A finished phase is never redone.

Teacher consistency: the teacher that scores must be the one that wrote the training data (Lightning OPD: with
another teacher, offline and online OPD converge to a biased point); it is checked from the manifests and
refused with one line unless on_policy.allow_other_teacher.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from llmdistill import models, records, store
from llmdistill.config import Config, LossTerm, TeacherConfig
from llmdistill.errors import UserError
from llmdistill.train.repetition import cut_repetition

log = logging.getLogger("llmdistill")

ROLLOUT_COLUMN = "token_logprobs"  # [T] float32: the teacher's log-prob of each token the student sampled
LOCAL_BACKENDS = ("hf", "vllm")


def rollout_schema() -> pa.Schema:
    """A sample shard's schema plus the teacher's log-prob of every completion token."""
    return records.arrow_schema().append(pa.field(ROLLOUT_COLUMN, pa.list_(pa.float32())))


@dataclass(frozen=True)
class Phase:
    name: str  # "offline" or "round-<r>"
    steps: int
    loss: list[LossTerm]
    round: int = 0  # 0: the teacher's data; r >= 1: the student's samples of round r
    max_new_tokens: int = 0
    first_step: int = 0  # where the phase starts in train.max_steps (the learning-rate schedule is the variant's)


def phases(cfg: Config) -> list[Phase]:
    """The variant's phases: offline_steps on the teacher's data, then the rounds, train.max_steps in all (the
    rounds' share split evenly, the first rounds taking the remainder), on one learning-rate schedule."""
    t, op = cfg.train, cfg.train.on_policy
    out = [Phase("offline", op.offline_steps, list(t.loss))] if op.offline_steps else []
    left = t.max_steps - op.offline_steps
    loss = list(op.loss) if op.loss is not None else list(t.loss)
    for r in range(1, op.rounds + 1):
        steps = left // op.rounds + (1 if r <= left % op.rounds else 0)
        out.append(Phase(f"round-{r}", steps, loss, r, budget(op, r), sum(p.steps for p in out)))
    return out


def budget(op, r: int) -> int:
    """New tokens a round's samples may have: from min_new_tokens in round 1 to max_new_tokens in the last."""
    if op.min_new_tokens is None or op.rounds == 1:
        return op.max_new_tokens
    return round(op.min_new_tokens + (op.max_new_tokens - op.min_new_tokens) * (r - 1) / (op.rounds - 1))


def check_teacher_consistency(cfg: Config, teachers: dict) -> None:
    """Refuse (one line) a scoring teacher that is not the one that wrote the training data, read from the data's
    manifest (`teachers`: each writing teacher's provenance, by name), unless on_policy.allow_other_teacher."""
    if cfg.teacher.backend not in LOCAL_BACKENDS:
        raise UserError(f"train.on_policy.rollouts: offline scores the student's samples with a local teacher "
                        f"(teacher.backend hf or vllm), not {cfg.teacher.backend!r}")
    scoring = models.model_hash(cfg.teacher.model)
    others = {name: (p.get("teacher") or {}).get("source") for name, p in teachers.items()
              if (p.get("teacher") or {}).get("model_hash") != scoring}
    if others and not cfg.train.on_policy.allow_other_teacher:
        wrote = ", ".join(f"{name}: {source}" for name, source in sorted(others.items()))
        raise UserError(f"train.on_policy: the teacher that scores the student's samples ({cfg.teacher.model}) is not "
                        f"the one that wrote the training data ({wrote}); on-policy distillation with another "
                        "teacher converges to a biased point (teacher consistency). Score with the data's teacher, "
                        "or set train.on_policy.allow_other_teacher: true")


def run(cfg: Config, out_dir: Path, name: str, dataset, teachers: dict, start: Path, train_phase) -> dict:
    """Train the variant `name` phase by phase (see the module docstring) from the student in directory `start`,
    and return its metrics. `train_phase(phase, data, prov, start, final_dir, ckpt_dir) -> metrics` trains one
    phase (the train stage's own routine) on `data` (None: the teacher's data) of provenance `prov`, from the
    student in `start`, into `final_dir`."""
    check_teacher_consistency(cfg, teachers)
    check_turns(cfg, start)
    work = out_dir / "opd" / name
    plan = phases(cfg)
    metrics: list[dict] = []
    scorer = None
    try:
        for i, phase in enumerate(plan):
            last = i == len(plan) - 1
            final_dir = out_dir / name if last else work / phase.name / "student"
            ckpt_dir = out_dir / "checkpoints" / name / phase.name
            if store.read_success(final_dir) is not None and (work / phase.name / "metrics.json").exists():
                log.info("train: %s %s already trained, keeping %s", name, phase.name, final_dir)
                metrics.append(store.read_json(work / phase.name / "metrics.json"))
                start = final_dir
                continue
            entry: dict = {"phase": phase.name, "steps_planned": phase.steps}
            if phase.round:
                if scorer is None and store.read_success(work / phase.name / "rollouts") is None:
                    scorer = _Scorer(cfg)
                data_dir = rollouts(cfg, work / phase.name / "rollouts", start, dataset, phase, scorer)
                data = store.load_dataset(data_dir, _columns())
                prov = store.read_manifest(data_dir)["provenance"]
                entry["samples"] = store.read_manifest(data_dir)["rollouts"]
            else:
                data, prov = None, None
            entry.update(train_phase(phase, data, prov, start, final_dir, ckpt_dir))
            store.atomic_write_json(work / phase.name / "metrics.json", entry)
            metrics.append(entry)
            start = final_dir
    finally:
        if scorer is not None:
            scorer.close()
    out = {**metrics[-1], "phases": metrics, "steps": sum(m.get("steps", 0) for m in metrics),
           "seconds_this_attempt": round(sum(m.get("seconds_this_attempt", 0.0) for m in metrics), 1)}
    out["rollouts"] = {"kind": "offline", "rounds": [m["samples"] for m in metrics if "samples" in m]}
    return out


def check_turns(cfg: Config, student) -> None:
    """The student (directory `student`) and the teacher end their turns alike (`preflight.check_turn_end`)."""
    from llmdistill.teachers.vllm import _eos_ids
    from llmdistill.train.preflight import check_turn_end

    teacher = models.load_tokenizer(cfg.teacher.model, cfg.teacher.revision, cfg.teacher.trust_remote_code)
    own = models.load_tokenizer(str(student), None, cfg.teacher.trust_remote_code)
    check_turn_end(teacher, _eos_ids(models.resolve_source(cfg.teacher.model), teacher), own,
                   _eos_ids(models.resolve_source(str(student)), own))


def _columns() -> list[str]:
    from llmdistill.train.data import COLUMNS

    return [*COLUMNS, ROLLOUT_COLUMN]


class _Scorer:
    """The teacher, loaded once for every round, scoring by teacher forcing."""

    def __init__(self, cfg: Config):
        from llmdistill.teachers import Sampling, build_teacher

        self.teacher = build_teacher(cfg.teacher, Sampling.scoring(cfg.generate.topk))

    def close(self) -> None:
        self.teacher.close()


def _prompts(dataset, n: int, seed: int, r: int) -> list[dict]:
    """n prompts of the data (each distinct prompt once per pass, a seeded order per round and pass)."""
    seen: dict[str, dict] = {}
    for row in dataset.select_columns(["messages", "level"]):
        key = records.stable_hash(row["messages"])
        seen.setdefault(key, {"messages": row["messages"], "level": row["level"], "prompt_id": key})
    unique = list(seen.values())
    out: list[dict] = []
    rounds_pass = 0
    while len(out) < n:
        order = np.random.default_rng(_draw(seed, "prompts", r, rounds_pass)).permutation(len(unique))
        out.extend(unique[i] for i in order[: n - len(out)])
        rounds_pass += 1
    return out


def rollouts(cfg: Config, out: Path, student: Path, dataset, phase: Phase, scorer: _Scorer) -> Path:
    """The round's samples scored by the teacher, as a dataset at `out` (resumed batch by batch; see the module
    docstring). Returns `out`."""
    from llmdistill.teachers import Sampling, build_teacher

    t, op = cfg.train, cfg.train.on_policy
    seed = t.seed if t.seed is not None else cfg.seed
    fingerprint = records.stable_hash({"student": models.model_hash(str(student)), "round": phase.round,
                                       "seed": seed, "on_policy": op.model_dump(mode="json"),
                                       "teacher": models.model_hash(cfg.teacher.model), "topk": cfg.generate.topk})
    done = store.read_success(out)
    if done is not None and done.get("fingerprint") == fingerprint:
        return out
    if done is not None or (out.exists() and (out / "fingerprint.json").exists()
                            and store.read_json(out / "fingerprint.json") != fingerprint):
        store.remove_path(out)  # our own output of other inputs (its student, round or settings changed)
    out.mkdir(parents=True, exist_ok=True)
    store.atomic_write_json(out / "fingerprint.json", fingerprint)
    store.clean_temporaries(out)
    n = op.prompts_per_round or phase.steps * t.batch_size * t.grad_accum
    prompts = _prompts(dataset, n, seed, phase.round)
    size = cfg.generate.batch_size
    batches = [prompts[i : i + size] for i in range(0, len(prompts), size)]
    committed = {int(p.name[5:10]) for p in store.list_shards(out)}
    writer = store.ShardWriter(out, rollout_schema())
    sampling = Sampling(max_new_tokens=phase.max_new_tokens, temperature=op.temperature, top_p=1.0, topk=1,
                        logprob_mode="raw", too_long="skip")
    backend = _generator(op)
    generator = None
    started = time.monotonic()
    try:
        for b, batch in enumerate(batches):
            if b in committed:
                continue
            if generator is None:
                generator = build_teacher(_student_config(student, backend, op), sampling)
                eos = set(getattr(generator, "eos_ids", None) or [generator.tokenizer.eos_token_id])
            table = _score_batch(generator, scorer.teacher, batch, _draw(seed, "sample", phase.round, b), eos,
                                 op.cut_repetition, b * size, phase)
            writer.write_table(table, index=b)
            log.info("train: %s: rollouts batch %d of %d committed", phase.name, b + 1, len(batches))
    finally:
        if generator is not None:
            generator.close()
    stats = _stats(out, backend, time.monotonic() - started)
    store.write_manifest(out, {
        "stage": "opd-rollouts", "round": phase.round, "fingerprint": fingerprint, "schema_version":
        records.SCHEMA_VERSION, "provenance": {**scorer.teacher.provenance(), "samples_from": str(student),
                                               "generator": backend},
        "counts": {"rows": stats["rows"]}, "rollouts": stats})
    store.mark_success(out, {"fingerprint": fingerprint, "rows": stats["rows"]})
    log.info("train: %s: %d samples of the student (%.1f tokens on average, %.1f %% cut for repetition, %.1f %% "
             "ended on their own), teacher log-prob %.3f per token -> %s", phase.name, stats["rows"],
             stats["mean_tokens"], 100 * stats["cut_share"], 100 * stats["stop_share"],
             stats["teacher_logprob_per_token"], out)
    return out


def _generator(op) -> str:
    if op.generator != "auto":
        return op.generator
    from llmdistill.teachers.vllm import worker_python

    try:
        worker_python(op.vllm)
        return "vllm"
    except UserError:
        return "hf"


def _student_config(student: Path, backend: str, op) -> TeacherConfig:
    return TeacherConfig(model=str(student), backend=backend, dtype="float32", device="cpu" if backend == "hf"
                         else "auto", vllm=op.vllm)


def _score_batch(generator, teacher, batch: list[dict], seed: int, eos: set[int], cut: bool, first_index: int,
                 phase: Phase) -> pa.Table:
    """One batch: the student's samples, cut, scored by the teacher, as rows of the rollout schema."""
    messages = [p["messages"] for p in batch]
    gens = generator.generate(messages, seed)
    samples, token_lps = [], []
    keep = [(p, g) for p, g in zip(batch, gens) if g.error is None and g.token_ids]
    completions, was_cut = [], []
    for _, g in keep:
        ids, c = cut_repetition(list(g.token_ids), eos) if cut else (list(g.token_ids), False)
        completions.append(ids)
        was_cut.append(c)
    scored = teacher.score([p["messages"] for p, _ in keep], completions) if keep else []
    tok = generator.tokenizer
    for i, ((p, g), ids, c, s) in enumerate(zip(keep, completions, was_cut, scored)):
        gen = {"temperature": generator.sampling.temperature, "top_p": 1.0, "max_new_tokens": phase.max_new_tokens,
               "seed": seed, "sample_index": first_index + i}
        finish = "stop" if ids and ids[-1] in eos and not c else "length"
        samples.append(records.Sample(
            id=records.record_id(p["messages"], "opd", phase.name, "student", gen, first_index + i),
            prompt_id=p["prompt_id"], messages=p["messages"], completion=tok.decode(ids, skip_special_tokens=True),
            source="opd", teacher="default", gen=gen, finish_reason=finish, level=p["level"] or 0,
            usage={"prompt_tokens": g.prompt_tokens, "completion_tokens": len(ids)},
            metadata={"round": phase.round, "cut_repetition": c, "student_finish": g.finish_reason},
            completion_token_ids=ids, topk_ids=s.topk_ids, topk_logprobs=s.topk_logprobs))
        token_lps.append(np.asarray(s.token_logprobs, dtype=np.float32).tolist())
    table = records.samples_to_table(samples)
    return table.append_column(pa.field(ROLLOUT_COLUMN, pa.list_(pa.float32())),
                                pa.array(token_lps, type=pa.list_(pa.float32())))


def _stats(out: Path, backend: str, seconds: float) -> dict:
    table = store.read_table(out, ["finish_reason", "metadata", ROLLOUT_COLUMN])
    lengths = [len(x) for x in table.column(ROLLOUT_COLUMN).to_pylist()]
    total = sum(lengths)
    meta = [records.decode_json_column(m) for m in table.column("metadata").to_pylist()]
    rows = table.num_rows
    lps = [v for x in table.column(ROLLOUT_COLUMN).to_pylist() for v in x]
    return {"rows": rows, "generator": backend, "mean_tokens": round(total / max(rows, 1), 2),
            "cut_share": round(sum(m.get("cut_repetition", False) for m in meta) / max(rows, 1), 4),
            "stop_share": round(table.column("finish_reason").to_pylist().count("stop") / max(rows, 1), 4),
            "teacher_logprob_per_token": round(float(np.mean(lps)) if lps else 0.0, 4),
            "seconds_this_attempt": round(seconds, 1)}


def _draw(seed: int, what: str, *keys: int) -> int:
    """A seed from the run's seed and keys (stable across processes and runs)."""
    from llmdistill.train.rollouts import SEED_MASK
    from llmdistill.train.rollouts import _draw as draw

    return draw(seed, what, *keys) & SEED_MASK
