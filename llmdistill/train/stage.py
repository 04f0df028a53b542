"""The train stage: fine-tune the student on the filtered samples.

Modes (train.mode):
    offline    the configured loss terms (divergences + CE) against the stored top-k or a live teacher
    seq_kd     cross-entropy on the teacher's text (re-tokenised when the student's tokenizer differs)
    on_policy  the student's own samples, scored by the teacher: through trl (HF generate, the local teacher),
               or from a vLLM engine holding the student (train.on_policy.rollouts: vllm; rollouts.py)

Outputs under train/:
    student/                   the final student (HF format, with tokenizer)
    sft_baseline/              a CE-only student on the same data and steps, when train.sft_baseline is on
    checkpoints/<variant>/     Trainer checkpoints; a killed run resumes from the last one
    metrics.json               per variant: steps, losses, seconds, parameters
    tracking.json              with train.report_to: each variant's tracker run (llmdistill/tracking.py), which a
                               resumed attempt goes on in and the eval stage adds its metrics to
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

from llmdistill import models, store, tracking
from llmdistill.config import CE_ONLY, Config, LossTerm, effective_loss, needs_teacher
from llmdistill.errors import StorageError, UserError
from llmdistill.runner import StageContext
from llmdistill.train import preflight

log = logging.getLogger("llmdistill")

PRUNED = "pruned"  # train/pruned/: the pruned teacher every variant starts from (train.student.prune)


def run(cfg: Config, ctx: StageContext) -> None:
    t = cfg.train
    src = ctx.upstream_dir
    store.require_complete(src)
    manifest = store.read_manifest(src)
    if manifest["counts"]["rows"] == 0:
        raise UserError(f"train: {src} has no samples left after filtering; loosen the filter or generate more")
    prov = manifest["provenance"]
    if t.stored_signal and needs_teacher(t.loss) and prov["logprob_mode"] == "processed" \
            and prov["capture_top_p"] < 1.0:
        raise UserError("train: the stored log-probs were captured after top-p truncation (logprob_mode processed, "
                        "top_p < 1); they cannot be re-tempered. Regenerate with logprob_mode: raw")
    student_src = t.student.model or cfg.teacher.model
    tokenizer = models.load_tokenizer(student_src, None if t.student.model else cfg.teacher.revision,
                                      cfg.teacher.trust_remote_code)
    variants = [("student", t.mode, t.loss)]
    if t.sft_baseline:
        variants.append(("sft_baseline", "seq_kd", list(CE_ONLY)))

    from llmdistill.train.data import COLUMNS

    dataset = store.load_dataset(src, COLUMNS)
    present = set(store.read_table(src, ["teacher"]).column("teacher").to_pylist())
    logit_loss = t.mode == "offline" and needs_teacher(t.loss)
    mixed = preflight.check_teacher_mix(manifest, present, logit_loss, cross_ok=t.stored_signal)
    teachers = {name: (manifest.get("teachers") or {}).get(name, prov) for name in sorted(present)}
    metrics_path = ctx.out_dir / "metrics.json"
    metrics = store.read_json(metrics_path) if metrics_path.exists() else {}
    if t.student.prune is not None and store.read_success(ctx.out_dir / PRUNED) is None and ctx.main_process:
        from llmdistill.train.prune import calibration_sequences, write_pruned

        record = write_pruned(cfg, ctx.out_dir / PRUNED, calibration_sequences(t.student.prune, tokenizer, dataset),
                              ctx.run_dir / "cache")
        store.mark_success(ctx.out_dir / PRUNED, {"layers": record["layers"]})
    if t.student.prune is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()  # the other ranks load what the main process pruned
    for name, mode, terms in variants:
        final_dir = ctx.out_dir / name
        if store.read_success(final_dir) is not None and name in metrics:
            log.info("train: %s already trained, keeping %s", name, final_dir)
            continue
        # mixed tokenizers: no single teacher tokenizer, so every row is re-tokenised (text-only training) or
        # aligned to its own teacher's tokens (cross-tokenizer, from the stored top-k)
        variant_prov = {**prov, "tokenizer_hash": None} if mixed and mode != "on_policy" else prov
        run = open_tracking(cfg, ctx, name, mode, terms) if ctx.main_process else None
        try:
            metrics[name] = train_variant(cfg, ctx, name, mode, terms, tokenizer, dataset, variant_prov, teachers,
                                          tracker=run)
        except BaseException as e:
            if run is not None:
                run.close("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
        if run is not None:
            run.close("FINISHED")
        if ctx.main_process:
            store.atomic_write_json(metrics_path, metrics)


def open_tracking(cfg: Config, ctx: StageContext, name: str, mode: str, terms: list[LossTerm]):
    """The variant's tracker run (train.report_to; None without trackers): the one an interrupted attempt of this
    stage started (train/tracking.json), or a new one, recorded there before training starts."""
    t = cfg.train
    path = ctx.out_dir / tracking.RECORD
    records = store.read_json(path) if path.exists() else {}
    params = tracking.config_params({"variant": {"name": name, "mode": mode,
                                                 "loss": [x.model_dump() for x in terms]},
                                     "train": t.model_dump(mode="json"), "teacher": {"model": cfg.teacher.model}})
    run = tracking.Run.start(t.report_to, project=t.tracking_project, name=f"{cfg.name}/{tracking.run_label(name)}",
                             run_dir=ctx.run_dir, params=params, record=records.get(name), what="train.report_to",
                             tags={"llmdistill.variant": name, "llmdistill.run": cfg.name})
    if run is not None:
        store.atomic_write_json(path, {**records, name: run.record})
    return run


def train_seed(cfg: Config) -> int:
    return cfg.train.seed if cfg.train.seed is not None else cfg.seed


def trainer_arguments(cfg: Config, ckpt_dir, **extra) -> dict:
    """The TrainingArguments every variant shares (trl's configs take the same keys); `extra` overrides."""
    import torch

    t = cfg.train
    return {**dict(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        num_train_epochs=t.epochs,
        logging_steps=t.logging_steps,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        report_to="none",  # train.report_to: our own callback (trainer.ReportToTrackers, llmdistill/tracking.py)
        seed=train_seed(cfg),
        bf16=t.bf16,
        **_checkpointing(t.gradient_checkpointing),
        train_sampling_strategy="random" if t.shuffle else "sequential",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    ), **extra}


def _checkpointing(on: bool) -> dict:
    """TrainingArguments for activation (gradient) checkpointing, under the name this transformers gives it.
    Non-reentrant: it works with frozen embeddings and LoRA (no input needs a gradient) and under FSDP."""
    from transformers import TrainingArguments

    name = "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ \
        else "gradient_checkpointing"  # the name before transformers 5.x renamed it
    return {name: on, f"{name}_kwargs": {"use_reentrant": False} if on else None}


def worker_error_line(message: str) -> str:
    """A UserError raised in a DataLoader worker (e.g. the served teacher's server is gone) reaches this
    process as "Caught UserError in DataLoader worker process 0. Original Traceback ...": its own line."""
    last = [line for line in message.splitlines() if line.strip()][-1]
    return last.split("UserError: ", 1)[1] if "UserError: " in last else last


def train_variant(cfg: Config, ctx: StageContext, name: str, mode: str, terms: list[LossTerm], tokenizer, dataset,
                  prov: dict, teachers: dict | None = None, *, start=None, steps: int | None = None, final_dir=None,
                  ckpt_dir=None, first_step: int = 0, tracker=None) -> dict:
    """teachers: the provenance of each teacher whose rows the data holds (generate.routing), by name.
    start: the student's directory to train from (default: the student as configured); steps: optimizer steps
    (default train.max_steps / epochs); final_dir, ckpt_dir: where the student and its checkpoints go (default
    <train>/<name> and <train>/checkpoints/<name>): offline on-policy rounds train in phases (opd.py);
    first_step: where such a phase starts in the variant's train.max_steps (its learning rate follows the whole
    variant's schedule from there, its tracker steps too); tracker: the variant's `tracking.Run`, or None."""
    import torch

    from llmdistill.train import sources
    from llmdistill.train.prune import PRUNING_FILE
    from llmdistill.train.student import build_student
    from llmdistill.train.trainer import LogAtCheckpoints, ReportToTrackers, StopOnNonFinite, mean_train_loss

    t = cfg.train
    if mode == "on_policy" and t.on_policy.rollouts == "offline":
        return _offline_rounds(cfg, ctx, name, tokenizer, dataset, prov, teachers, tracker)
    if effective_loss(mode, terms) != list(terms):
        # sequence-level KD learns the teacher's text; token-level divergences belong to mode offline
        log.info("train: %s: mode seq_kd trains on the teacher's text with cross-entropy; the divergence terms "
                 "(%s) are not used", name, ", ".join(x.name for x in terms if x.is_divergence))
    terms = effective_loss(mode, terms)
    torch.manual_seed(train_seed(cfg))
    student = build_student(cfg, ctx.out_dir / PRUNED) if start is None else models.load_causal_lm(
        str(start), "float32", "cpu", trust_remote_code=cfg.teacher.trust_remote_code)
    teacher_tokenizer = None
    if models.tokenizer_info(tokenizer)["tokenizer_hash"] != prov["tokenizer_hash"]:
        teacher_tokenizer = models.load_tokenizer(prov["teacher"]["source"], prov["teacher"]["revision"],
                                                  cfg.teacher.trust_remote_code)
    check_mode = mode if needs_teacher(terms) else "seq_kd"
    if prov["tokenizer_hash"] is None and check_mode == "offline":  # teachers on several tokenizers (run())
        check = preflight.Preflight("cross_tokenizer", student.config.vocab_size, "the data's teachers use different "
                                    "tokenizers: each row is aligned to its own teacher's tokens")
    else:
        check = preflight.check(prov, teacher_tokenizer, tokenizer, student.config.vocab_size, check_mode)
    log.info("train: preflight %s: %s", check.outcome, check.message)
    if t.packing:
        from llmdistill.train.trainer import check_packing

        check_packing(student)
    if t.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
    if t.lora is not None:
        student = _with_lora(student, t.lora)
    ckpt_dir = ckpt_dir or ctx.out_dir / "checkpoints" / name
    args = trainer_arguments(cfg, ckpt_dir, **({"max_steps": steps} if steps is not None else {}))
    source = rollouts = None  # trl's on-policy trainers score with their own teacher
    if mode == "on_policy" and t.on_policy.rollouts == "trl":
        from llmdistill.train.on_policy import build_on_policy_trainer

        trainer = build_on_policy_trainer(cfg, student, tokenizer, dataset, args)
        description = f"on-policy ({t.on_policy.trainer}, beta {t.on_policy.beta:g})"
    else:
        if mode == "on_policy":  # vLLM rollouts: the student samples until it ends its turn (its tokenizer's EOS)
            from llmdistill.teachers.vllm import _eos_ids

            teacher_tok = models.load_tokenizer(cfg.teacher.model, cfg.teacher.revision, cfg.teacher.trust_remote_code)
            preflight.check_turn_end(teacher_tok, _eos_ids(models.resolve_source(cfg.teacher.model), teacher_tok),
                                     tokenizer, [tokenizer.eos_token_id])
        source = sources.build(cfg, terms, check, prov, teachers, tokenizer, on_policy=mode == "on_policy")
        window = (first_step, t.max_steps) if steps is not None and t.max_steps is not None else None
        trainer, rollouts = _offline_trainer(cfg, args, student, tokenizer, dataset, terms, check, source,
                                             on_policy=mode == "on_policy", schedule_window=window)
        description = " + ".join(f"{x.weight:g}*{x.name}" + (f"(T={x.temperature:g})" if x.is_divergence else "")
                                 for x in terms) + source.describe()
        if mode == "on_policy":
            description += (f", on-policy share {t.on_policy.lmbda:g} from vLLM (weights reloaded every "
                            f"{t.on_policy.refresh_every} steps)")
    if t.lora is not None and _sharded(trainer):
        raise UserError("train.lora under FSDP or DeepSpeed ZeRO-3 is not supported (the adapters are merged into "
                        "whole weights at the end); launch LoRA runs with DDP (configs/accelerate/ddp.yaml)")
    trainer.add_callback(LogAtCheckpoints())
    if tracker is not None:
        trainer.add_callback(ReportToTrackers(tracker, first_step))
    trainer.add_callback(StopOnNonFinite())
    last = resume_point(ckpt_dir, name)
    log.info("train: %s with %s on %d samples", name, description, len(trainer.train_dataset))
    started = time.monotonic()
    state = store.read_json(os.path.join(last, "trainer_state.json")) if last else None
    if state and state["global_step"] >= state["max_steps"]:
        # killed after the last checkpoint: resuming would run one step too many, so take its weights
        log.info("train: %s finished at %s; saving it as the final student", name, last)
        trainer._load_from_checkpoint(last)
        trainer.state.global_step = state["global_step"]
        trainer.state.log_history = state["log_history"]
    else:
        if last:
            log.info("train: %s resuming from %s", name, last)
        try:
            with models.writing("a checkpoint under", ckpt_dir):
                trainer.train(resume_from_checkpoint=last)
        except BaseException as e:
            if rollouts is not None:
                rollouts.close()
            _close_progress_bars(trainer)  # so that the error is printed on a line of its own
            if isinstance(e, StorageError):
                last_complete_checkpoint(ckpt_dir)  # removes the one cut short: its space, a bad resume point
            if isinstance(e, UserError) and "DataLoader worker" in str(e):
                raise UserError(worker_error_line(str(e))) from None
            raise
    seconds = round(time.monotonic() - started, 1)

    final_dir = final_dir or ctx.out_dir / name
    history = trainer.state.log_history
    training_loss = mean_train_loss(history)  # every step, whichever attempts ran them
    for entry in history:
        if "train_loss" in entry:  # Trainer's own figure covers only this attempt's steps
            entry["train_loss"] = training_loss
    # FSDP and ZeRO-3 hold each weight in pieces across the processes: every process takes part in gathering them
    weights = trainer.accelerator.get_state_dict(trainer.model) if _sharded(trainer) else None
    if ctx.main_process:
        _save_final(trainer, tokenizer, final_dir, lora=t.lora is not None,
                    pruned=ctx.out_dir / PRUNED / PRUNING_FILE if t.student.prune is not None else None,
                    state_dict=weights)
        store.mark_success(final_dir, {"variant": name, "global_step": trainer.state.global_step})
        store.atomic_write_json(ctx.out_dir / f"log_history.{name}.json", history)
    term_logs = [h for h in history if "loss" in h]
    out = {
        "mode": mode,
        "steps": trainer.state.global_step,
        "train_loss": None if training_loss is None else round(training_loss, 5),
        "seconds_this_attempt": seconds,
        "parameters": models.count_parameters(student),
        "lora": t.lora.model_dump() if t.lora is not None else None,
        "loss_terms": [x.model_dump() for x in terms] if source is not None else None,
        "preflight": check.outcome,
        **(source or sources.Source()).metrics(history),
        "rollouts": rollouts.summary() if rollouts is not None else None,
        "last_logged": term_logs[-1] if term_logs else None,
    }
    log.info("train: %s done: %d steps, loss %s, %.0f s -> %s", name, out["steps"], out["train_loss"], seconds,
             final_dir)
    return out


def last_complete_checkpoint(ckpt_dir) -> str | None:
    """The newest checkpoint whose save finished, or None. Trainer writes trainer_state.json last, so a
    checkpoint without a whole one was cut short (a kill, a full disk): it is removed (resuming from it
    would fail)."""
    from transformers.trainer_utils import get_last_checkpoint

    while ckpt_dir.is_dir() and (last := get_last_checkpoint(str(ckpt_dir))) is not None:
        if _readable_state(os.path.join(last, "trainer_state.json")):
            return last
        log.warning("train: removing the incomplete checkpoint %s (its save was interrupted)", last)
        shutil.rmtree(last)
    return None


def resume_point(ckpt_dir, name: str) -> str | None:
    """The newest checkpoint that is complete and intact (`checkpoints.damage`: every file resuming loads reads,
    and nothing in them would run), or None. Damaged ones newer than an intact one are set aside as
    damaged-checkpoint-N (kept for a look; Trainer's rotation and resume see only checkpoint-N) with a warning
    naming each, and training resumes from the intact one; with none intact, one line says to delete them."""
    from llmdistill.train.checkpoints import damage

    last = last_complete_checkpoint(ckpt_dir)
    problem = damage(last) if last is not None else None
    if problem is None:
        return last
    damaged = [(last, problem)]
    for earlier in _complete_before(ckpt_dir, last):
        problem = damage(earlier)
        if problem is None:
            for path, why in damaged:
                aside = os.path.join(os.path.dirname(path), "damaged-" + os.path.basename(path))
                try:
                    os.replace(path, aside)
                except FileNotFoundError:  # another process of a multi-process run moved it first
                    pass
                log.warning("train: %s: the checkpoint %s is damaged (%s): set aside as %s (delete it when done)",
                            name, path, why, aside)
            log.warning("train: %s: resuming from the earlier checkpoint %s", name, earlier)
            return earlier
        damaged.append((earlier, problem))
    paths = " ".join(path for path, _ in damaged)
    raise UserError(f"train: {name}: the checkpoint {last} is damaged ({damaged[0][1]}) and no earlier checkpoint is "
                    f"intact: delete {'it' if len(damaged) == 1 else 'them'} (rm -r {paths}) and rerun; {name} then "
                    "trains from step 0")


def _complete_before(ckpt_dir, last: str) -> list[str]:
    """The complete checkpoints (a whole trainer_state.json) older than `last`, newest first."""
    step = int(os.path.basename(last).rsplit("-", 1)[1])
    found = [(int(p.name.rsplit("-", 1)[1]), str(p)) for p in ckpt_dir.glob("checkpoint-*")
             if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit()]
    return [path for s, path in sorted(found, reverse=True)
            if s < step and _readable_state(os.path.join(path, "trainer_state.json"))]


def _close_progress_bars(trainer) -> None:
    """End Trainer's progress bars, which a failed train() leaves open mid-line."""
    for callback in trainer.callback_handler.callbacks:
        for name in ("training_bar", "prediction_bar"):
            bar = getattr(callback, name, None)
            if bar is not None:
                bar.close()
                setattr(callback, name, None)


def _readable_state(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return "global_step" in json.load(f)
    except (OSError, ValueError, TypeError):
        return False


def _sharded(trainer) -> bool:
    """Whether the student's weights are split across processes (FSDP, DeepSpeed ZeRO-3)."""
    return bool(trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled)


def _save_final(trainer, tokenizer, final_dir, lora: bool, pruned=None, state_dict=None) -> None:
    """Write the final student next to its destination, then swap it in with one rename. state_dict: the
    whole weights, gathered from the processes of a sharded run (`_sharded`)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if state_dict is not None:  # gathered copies of tied weights are separate tensors: keep the source only
        tied = getattr(model, "all_tied_weights_keys", None) or {}
        state_dict = {k: v for k, v in state_dict.items() if not (k in tied and tied[k] in state_dict)}

    def write(tmp):
        if lora:
            model.save_pretrained(str(tmp / "adapter"))  # the adapter alone, for peft users
            model.merge_and_unload().save_pretrained(str(tmp))  # and a plain model with it merged in
        else:
            model.save_pretrained(str(tmp), state_dict=state_dict)
        tokenizer.save_pretrained(str(tmp))
        if pruned is not None:  # how the student was made, beside it (eval and the report show it)
            shutil.copy2(pruned, tmp / pruned.name)

    models.save_dir(final_dir, "the trained student", write, "trained-student")


def _with_lora(student, lora):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(student, config)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("train: LoRA r=%d on %s: %.2fM of %.1fM parameters trainable", lora.r, lora.target_modules,
             trainable / 1e6, total / 1e6)
    return model


def split_held_out(examples, fraction: float):
    """(train, held-out): the round(fraction * n) samples (at least one, at most n - 1) whose id hashes
    lowest are held out. Deterministic in the set of ids, so a resumed run holds out the same samples,
    and the held-out share is the one asked for even on a small dataset."""
    import hashlib

    n = len(examples)
    if n < 2:
        raise UserError(f"train.eval_every needs at least 2 samples to hold some out; the dataset has {n}")
    keys = [hashlib.blake2b(i.encode(), digest_size=8).digest() for i in examples["id"]]
    count = min(n - 1, max(1, round(fraction * n)))
    held = set(sorted(range(n), key=lambda i: (keys[i], i))[:count])
    train = examples.select([i for i in range(n) if i not in held])
    held_out = examples.select(sorted(held))
    log.info("train: %d of %d samples held out for the eval loss", len(held_out), n)
    return train, held_out


def _eval_arguments(t, eval_examples) -> dict:
    if eval_examples is None:
        return {}
    return {"eval_strategy": "steps", "eval_steps": t.eval_every, "per_device_eval_batch_size": t.batch_size,
            "prediction_loss_only": True}


def _offline_trainer(cfg: Config, args: dict, student, tokenizer, dataset, terms, check, source, on_policy=False,
                     schedule_window=None):
    """(our DistillTrainer, the vLLM rollouts or None): `args` the TrainingArguments (`trainer_arguments`);
    on_policy: the student's samples come from a vLLM engine on its weights (rollouts.py); `source` is where the
    teacher signal comes from (sources.py)."""
    from pathlib import Path

    from transformers import TrainingArguments

    from llmdistill.train.data import Collator
    from llmdistill.train.trainer import DistillTrainer

    t = cfg.train
    examples = source.examples(dataset, tokenizer, t.max_seq_len, check)
    eval_examples = None
    if t.eval_every is not None:
        examples, eval_examples = split_held_out(examples, t.eval_fraction)
    collator = Collator(tokenizer.pad_token_id, source=source, pack_to=t.max_seq_len if t.packing else None)
    rollouts = None
    if on_policy:
        from llmdistill.train.rollouts import OnPolicyCollator, Rollouts

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("train.on_policy.rollouts: vllm runs in one training process (one engine); launch "
                            "it without accelerate's multi-process launcher")
        op = t.on_policy
        rollouts = Rollouts(Path(args["output_dir"]).parent.parent / "rollouts", tokenizer, op.vllm, t.max_seq_len,
                            op.max_new_tokens, op.temperature, train_seed(cfg), op.min_new_tokens, op.cut_repetition)
        collator = OnPolicyCollator(collator, rollouts, op.lmbda, train_seed(cfg), set(examples["row"]))
    # served: one DataLoader worker asks the server for the next batch while this step trains (not with rollouts:
    # the engine is spoken to from this process)
    workers = {"dataloader_num_workers": 1, "dataloader_persistent_workers": True} \
        if source.fetches and rollouts is None else {}
    trainer = DistillTrainer(
        model=student,
        args=TrainingArguments(**{**args, **_eval_arguments(t, eval_examples), **workers}),
        train_dataset=examples,
        eval_dataset=eval_examples,
        data_collator=collator,
        processing_class=tokenizer,
        loss_terms=terms,
        source=source,
        chunk_tokens=t.chunk_tokens,
        curriculum=t.curriculum,
        schedule_window=schedule_window,
    )
    if rollouts is not None:
        from llmdistill.train.rollouts import RefreshRollouts

        trainer.add_callback(RefreshRollouts(rollouts, t.on_policy.refresh_every))
        trainer.extra_logs.append(rollouts.log_values)
    return trainer, rollouts


def _offline_rounds(cfg: Config, ctx: StageContext, name: str, tokenizer, dataset, prov: dict, teachers,
                    tracker=None) -> dict:
    """Offline on-policy distillation (opd.py): phases of this routine's `train_variant`, each from the last one's
    student; the variant's log history is theirs end to end, and so is its tracker run (each round's rollout
    statistics at the step the round starts)."""
    from llmdistill.train import opd

    t = cfg.train

    def train_phase(phase, data, data_prov, start, final_dir, ckpt_dir):
        return train_variant(cfg, ctx, f"{name}.{phase.name}", "offline", phase.loss, tokenizer,
                             dataset if data is None else data, prov if data_prov is None else data_prov,
                             teachers if data_prov is None else None, start=start, steps=phase.steps,
                             final_dir=final_dir, ckpt_dir=ckpt_dir, first_step=phase.first_step, tracker=tracker)

    out = opd.run(cfg, ctx.out_dir, name, dataset, teachers or {"default": prov}, _start_dir(cfg, ctx), train_phase)
    if tracker is not None:
        first = {p.name: p.first_step for p in opd.phases(cfg)}
        for phase in out["phases"]:
            if "samples" in phase:
                tracker.log(tracking.trainer_scalars({f"rollouts_{k}": v for k, v in phase["samples"].items()}),
                            first[phase["phase"]])
    history, offset = [], 0
    for phase in out["phases"]:
        part = store.read_json(ctx.out_dir / f"log_history.{name}.{phase['phase']}.json")
        history.extend({**h, "step": h["step"] + offset, "phase": phase["phase"]} if "step" in h else h for h in part)
        offset += phase.get("steps", 0)
    if ctx.main_process:
        store.atomic_write_json(ctx.out_dir / f"log_history.{name}.json", history)
    out["loss_terms"] = [x.model_dump() for x in (t.on_policy.loss or t.loss)]
    return out


def _start_dir(cfg: Config, ctx: StageContext):
    """The student the variant starts from, as a directory: the configured model, the pruned teacher, or a layer
    subset of the teacher built and saved once (under <train>/opd/start, the tool's own output)."""
    from llmdistill.train.student import build_student

    s = cfg.train.student
    if s.model is not None:
        return models.resolve_source(s.model)
    if s.prune is not None:
        return ctx.out_dir / PRUNED
    path = ctx.out_dir / "opd" / "start"
    if store.read_success(path) is None:
        student = build_student(cfg)
        tokenizer = models.load_tokenizer(cfg.teacher.model, cfg.teacher.revision, cfg.teacher.trust_remote_code)
        models.save_dir(path, "the student to start from", lambda tmp: (student.save_pretrained(str(tmp)),
                                                                        tokenizer.save_pretrained(str(tmp))),
                        "opd-start-student")
        store.mark_success(path, {"teacher_layers": s.teacher_layers})
    return path
