"""The train stage: fine-tune the student on the filtered samples with the configured KL + CE terms.

Outputs under train/:
    student/                   the final student (HF format, with tokenizer)
    sft_baseline/              the CE-only student, when train.sft_baseline is on
    checkpoints/<variant>/     Trainer checkpoints; a killed run resumes from the last one
    metrics.json               per variant: steps, losses, seconds, parameters
"""

from __future__ import annotations

import logging
import os
import shutil
import time

from llmdistill import models, store
from llmdistill.config import Config, LossTerm
from llmdistill.errors import UserError
from llmdistill.pipeline import StageContext

log = logging.getLogger("llmdistill")


def preflight(manifest: dict, tokenizer, student_vocab: int, terms: list[LossTerm]) -> None:
    """Refuse a student whose tokenizer does not match the teacher's stored token ids."""
    prov = manifest["provenance"]
    info = models.tokenizer_info(tokenizer)
    if info["tokenizer_hash"] != prov["tokenizer_hash"]:
        raise UserError(
            "train: the student's tokenizer differs from the teacher's (tokenizer hash "
            f"{info['tokenizer_hash'][:12]} vs {prov['tokenizer_hash'][:12]}); the stored token ids would mean "
            "different tokens. Use a student with the teacher's tokenizer (e.g. train.student.teacher_layers)"
        )
    if student_vocab < prov["tokenizer_size"]:
        raise UserError(f"train: the student's vocabulary ({student_vocab}) is smaller than the teacher's "
                        f"tokenizer ({prov['tokenizer_size']})")
    if any(t.name != "ce" and t.weight > 0 for t in terms) and prov["logprob_mode"] == "processed":
        if prov["capture_top_p"] < 1.0:
            raise UserError("train: the stored log-probs were captured after top-p truncation (logprob_mode "
                            "processed, top_p < 1); they cannot be re-tempered. Regenerate with logprob_mode: raw")


def run(cfg: Config, ctx: StageContext) -> None:
    t = cfg.train
    src = ctx.upstream_dir
    store.require_complete(src)
    manifest = store.read_manifest(src)
    if manifest["counts"]["rows"] == 0:
        raise UserError(f"train: {src} has no samples left after filtering; loosen the filter or generate more")
    student_src = t.student.model or cfg.teacher.model
    tokenizer = models.load_tokenizer(student_src, None if t.student.model else cfg.teacher.revision,
                                      cfg.teacher.trust_remote_code)
    variants = [("student", t.loss)]
    if t.sft_baseline:
        variants.append(("sft_baseline", [LossTerm(name="ce", weight=1.0)]))

    from llmdistill.train.data import COLUMNS, build_examples

    dataset = store.load_dataset(src, COLUMNS)
    examples = build_examples(dataset, tokenizer, t.max_seq_len)
    metrics_path = ctx.out_dir / "metrics.json"
    metrics = store.read_json(metrics_path) if metrics_path.exists() else {}
    for name, terms in variants:
        final_dir = ctx.out_dir / name
        if store.read_success(final_dir) is not None and name in metrics:
            log.info("train: %s already trained, keeping %s", name, final_dir)
            continue
        metrics[name] = train_variant(cfg, ctx, name, terms, tokenizer, examples, manifest)
        store.atomic_write_json(metrics_path, metrics)


def train_variant(cfg: Config, ctx: StageContext, name: str, terms: list[LossTerm], tokenizer, examples,
                  manifest: dict) -> dict:
    import torch
    from transformers import TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    from llmdistill.train.data import Collator
    from llmdistill.train.student import build_student
    from llmdistill.train.trainer import DistillTrainer

    t = cfg.train
    torch.manual_seed(cfg.seed)
    student = build_student(cfg)
    preflight(manifest, tokenizer, student.config.vocab_size, terms)
    if t.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
    ckpt_dir = ctx.out_dir / "checkpoints" / name
    args = TrainingArguments(
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
        report_to=t.report_to or "none",
        seed=cfg.seed,
        bf16=t.bf16,
        train_sampling_strategy="random" if t.shuffle else "sequential",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
    )
    trainer = DistillTrainer(
        model=student,
        args=args,
        train_dataset=examples,
        data_collator=Collator(tokenizer.pad_token_id, with_teacher=any(x.name != "ce" for x in terms)),
        processing_class=tokenizer,
        loss_terms=terms,
        tail=t.tail,
        capture_temperature=float(manifest["provenance"]["capture_temperature"]),
        chunk_tokens=t.chunk_tokens,
    )
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    log.info("train: %s with loss %s on %d samples", name,
             " + ".join(f"{x.weight:g}*{x.name}" + (f"(T={x.temperature:g})" if x.name != "ce" else "") for x in terms),
             len(examples))
    started = time.monotonic()
    state = store.read_json(os.path.join(last, "trainer_state.json")) if last else None
    if state and state["global_step"] >= state["max_steps"]:
        # killed after the last checkpoint: resuming would run one step too many, so take its weights
        log.info("train: %s finished at %s; saving it as the final student", name, last)
        trainer.model.load_state_dict(models.load_causal_lm(last).state_dict())
        trainer.state.global_step = state["global_step"]
        trainer.state.log_history = state["log_history"]
        training_loss = None
    else:
        if last:
            log.info("train: %s resuming from %s", name, last)
        training_loss = trainer.train(resume_from_checkpoint=last).training_loss
    seconds = round(time.monotonic() - started, 1)

    final_dir = ctx.out_dir / name
    tmp = final_dir.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(tmp, final_dir)
    store.mark_success(final_dir, {"variant": name, "global_step": trainer.state.global_step})
    history = trainer.state.log_history
    store.atomic_write_json(ctx.out_dir / f"log_history.{name}.json", history)
    term_logs = [h for h in history if any(k.startswith("loss_") for k in h)]
    out = {
        "steps": trainer.state.global_step,
        "train_loss": None if training_loss is None else round(training_loss, 5),
        "seconds_this_attempt": seconds,
        "parameters": models.count_parameters(student),
        "loss_terms": [x.model_dump() for x in terms],
        "last_logged": term_logs[-1] if term_logs else None,
    }
    log.info("train: %s done: %d steps, loss %s, %.0f s -> %s", name, out["steps"], out["train_loss"], seconds,
             final_dir)
    return out
