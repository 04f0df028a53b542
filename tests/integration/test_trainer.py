"""Trainer invariants: gradient accumulation does not change the update; the loss matches the objective."""

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, TrainingArguments

from llmdistill.config import LossTerm
from llmdistill.train.data import Collator
from llmdistill.train.trainer import DistillTrainer

TERMS = [LossTerm(name="forward_kl", weight=0.8, temperature=2.0), LossTerm(name="ce", weight=0.2)]


def examples(vocab: int, n: int = 8, k: int = 4) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        prompt_len, completion = 3 + i % 3, 2 + (i * 5) % 7  # ragged lengths: padding must not count
        ids = rng.integers(4, vocab, size=prompt_len + completion).tolist()
        logits = rng.normal(size=(completion, vocab))
        lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        top = np.argsort(-lp, 1)[:, :k]
        rows.append({"input_ids": ids, "prompt_len": prompt_len, "topk_ids": top.tolist(),
                     "topk_logprobs": np.take_along_axis(lp, top, 1).astype(np.float16).tolist()})
    return datasets.Dataset.from_list(rows)


def one_step(teacher_dir, tmp_path, batch_size, accumulation):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    args = TrainingArguments(output_dir=str(tmp_path / f"out-{batch_size}-{accumulation}"), max_steps=1,
                             per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                             learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", report_to="none",
                             train_sampling_strategy="sequential", remove_unused_columns=False, save_strategy="no",
                             dataloader_pin_memory=False, disable_tqdm=True)
    trainer = DistillTrainer(model=model, args=args, train_dataset=examples(model.config.vocab_size),
                             data_collator=Collator(pad_token_id=0), loss_terms=TERMS, tail="bucket",
                             capture_temperature=1.0, chunk_tokens=5)
    trainer.train()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_batch_8_equals_batch_2_times_accumulation_4(tiny, tmp_path):
    a = one_step(tiny["teacher"], tmp_path, 8, 1)
    b = one_step(tiny["teacher"], tmp_path, 2, 4)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_loss_is_the_token_mean_of_the_objective(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny["teacher"], dtype=torch.float32)
    ds = examples(model.config.vocab_size, n=3)
    batch = Collator(pad_token_id=0)([ds[i] for i in range(3)])
    args = TrainingArguments(output_dir="/tmp/unused", report_to="none", use_cpu=True)
    trainer = DistillTrainer(model=model, args=args, loss_terms=TERMS, tail="bucket", capture_temperature=1.0,
                             chunk_tokens=4)
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    mask = batch["labels"][:, 1:] != -100
    from llmdistill import losses

    s = logits[mask]
    kl = losses.forward_kl_sparse(s, batch["teacher_ids"][:, :-1][mask], batch["teacher_logprobs"][:, :-1][mask], 2.0)
    ce = losses.cross_entropy(s, batch["labels"][:, 1:][mask])
    want = (0.8 * 4.0 * kl.sum() + 0.2 * ce.sum()) / mask.sum()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_paced_curriculum_and_closed_loop(tiny, tmp_path):
    from llmdistill.config import CurriculumConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny["teacher"], dtype=torch.float32)
    ds = examples(model.config.vocab_size, n=12)
    ds = ds.add_column("level", [1] * 4 + [2] * 4 + [3] * 4).add_column("row", list(range(12)))
    args = TrainingArguments(output_dir=str(tmp_path / "cur"), max_steps=6, per_device_train_batch_size=2,
                             learning_rate=1e-3, report_to="none", save_strategy="no", disable_tqdm=True,
                             remove_unused_columns=False, dataloader_pin_memory=False, use_cpu=True)
    curriculum = CurriculumConfig(pacing="linear", start=0.25, full_at=0.5, closed_loop_every=2,
                                  drop_fraction=0.5, repeat_fraction=0.25)
    trainer = DistillTrainer(model=model, args=args, train_dataset=ds, data_collator=Collator(pad_token_id=0),
                             loss_terms=TERMS, tail="bucket", capture_temperature=1.0, chunk_tokens=8,
                             curriculum=curriculum)
    trainer.train()
    assert trainer.paced_sampler.pools == [3, 6, 9, 12, 12, 12]
    weights = trainer.paced_sampler.weights
    assert (weights == 0).any() and (weights == 2).any()  # the closed loop reweighted what it measured


def test_ce_is_logged_for_a_student_without_a_ce_term(tiny, tmp_path):
    """loss_ce (train) and eval_loss_ce (held out) are logged whatever the objective: the report compares
    a KD student with the SFT-only one on CE, never on their different total losses."""
    from llmdistill import losses

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny["teacher"], dtype=torch.float32)
    ds = examples(model.config.vocab_size, n=8)
    batch = Collator(pad_token_id=0)([ds[i] for i in range(8)])
    with torch.no_grad():  # the CE of step 1 is measured on the weights before its update
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        mask = batch["labels"][:, 1:] != -100
        want_ce = losses.cross_entropy(logits[mask], batch["labels"][:, 1:][mask]).mean().item()
    args = TrainingArguments(output_dir=str(tmp_path / "ce"), max_steps=2, per_device_train_batch_size=8,
                             learning_rate=1e-3, report_to="none", save_strategy="no", disable_tqdm=True,
                             logging_steps=1, eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=4,
                             prediction_loss_only=True, train_sampling_strategy="sequential",
                             remove_unused_columns=False, dataloader_pin_memory=False, use_cpu=True)
    trainer = DistillTrainer(model=model, args=args, train_dataset=ds, eval_dataset=ds.select(range(4)),
                             data_collator=Collator(pad_token_id=0), tail="bucket", capture_temperature=1.0,
                             loss_terms=[LossTerm(name="forward_kl", weight=1.0, temperature=2.0)], chunk_tokens=8)
    trainer.train()
    history = trainer.state.log_history
    train_logs = [h for h in history if "loss" in h]
    held_out = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in train_logs] == [h["step"] for h in held_out] == [1, 2]
    assert train_logs[0]["loss_ce"] == pytest.approx(want_ce, abs=1e-5)
    for h in train_logs:
        assert h["loss"] == pytest.approx(4.0 * h["loss_forward_kl"], abs=1e-4)  # CE is not in the loss
        assert h["loss_ce"] > 0 and h["tokens"] > 0
    for h in held_out:
        assert h["eval_loss"] == pytest.approx(4.0 * h["eval_loss_forward_kl"], abs=1e-4)
        assert h["eval_loss_ce"] > 0 and h["eval_tokens"] > 0
