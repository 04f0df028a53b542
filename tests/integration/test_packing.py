"""Sequence packing and gradient checkpointing change how a step is computed, not what it computes:
each sample's loss, and so every update, is the one of the plain padded batch."""

import pytest
import torch
from test_trainer import TERMS, examples
from transformers import AutoModelForCausalLM, TrainingArguments

from llmdistill.train.data import Collator, pack
from llmdistill.train.stage import _checkpointing
from llmdistill.train.trainer import DistillTrainer, final_hidden_states


def model_of(path):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def test_a_packed_row_gives_each_sample_its_own_hidden_states_and_loss(tiny):
    model = model_of(tiny["teacher"])
    ds = examples(model.config.vocab_size, n=6)
    rows = [ds[i] for i in range(6)]
    plain, packed = Collator(pad_token_id=0)(rows), Collator(pad_token_id=0, pack_to=24)(rows)
    assert packed["input_ids"].shape[0] < plain["input_ids"].shape[0]  # several samples share a row
    with torch.no_grad():
        h_plain = final_hidden_states(model, plain["input_ids"], plain["attention_mask"])
        h_packed = final_hidden_states(model, packed["input_ids"], None, packed["position_ids"])
    place, _ = pack([len(r["input_ids"]) for r in rows], 24)  # where the collator put each sample
    for i, (r, (b, o)) in enumerate(zip(rows, place)):
        n = len(r["input_ids"])
        assert packed["input_ids"][b, o:o + n].tolist() == r["input_ids"]
        torch.testing.assert_close(h_packed[b, o:o + n], h_plain[i, :n], rtol=1e-5, atol=1e-5)

    args = TrainingArguments(output_dir="/tmp/unused", report_to="none", use_cpu=True)
    trainer = DistillTrainer(model=model, args=args, loss_terms=TERMS, tail="bucket", capture_temperature=1.0,
                             chunk_tokens=4)
    losses, grads = [], []
    for batch in (plain, packed):
        model.zero_grad()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def train_steps(path, tmp_path, tag, pack_to=None, checkpointing=False, live=False, steps=3):
    model = model_of(path)
    args = TrainingArguments(output_dir=str(tmp_path / tag), max_steps=steps, per_device_train_batch_size=4,
                             learning_rate=0.1, lr_scheduler_type="constant", report_to="none", logging_steps=1,
                             train_sampling_strategy="sequential", remove_unused_columns=False, save_strategy="no",
                             dataloader_pin_memory=False, disable_tqdm=True, use_cpu=True,
                             optim="sgd", **_checkpointing(checkpointing))
    teacher = model_of(path) if live else None
    trainer = DistillTrainer(model=model, args=args, train_dataset=examples(model.config.vocab_size, n=12),
                             data_collator=Collator(pad_token_id=0, with_teacher=not live, pack_to=pack_to),
                             loss_terms=TERMS, tail="bucket", capture_temperature=1.0, chunk_tokens=5,
                             teacher_model=teacher)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("live", [False, True], ids=["stored-topk", "live-teacher"])
def test_packed_training_follows_the_unpacked_run(tiny, tmp_path, live):
    path = tiny["teacher"]
    plain_losses, plain = train_steps(path, tmp_path, "plain", live=live)
    packed_losses, packed = train_steps(path, tmp_path, "packed", pack_to=32, live=live)
    assert len(plain_losses) == 3
    assert packed_losses == pytest.approx(plain_losses, abs=1e-5)
    for name in plain:
        torch.testing.assert_close(packed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_gradient_checkpointing_gives_the_same_updates(tiny, tmp_path):
    path = tiny["teacher"]
    plain_losses, plain = train_steps(path, tmp_path, "plain")
    ckpt_losses, ckpt = train_steps(path, tmp_path, "ckpt", checkpointing=True)
    both_losses, both = train_steps(path, tmp_path, "both", pack_to=32, checkpointing=True)
    assert ckpt_losses == pytest.approx(plain_losses, abs=1e-6)
    assert both_losses == pytest.approx(plain_losses, abs=1e-5)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
        torch.testing.assert_close(both[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_model_whose_attention_ignores_packing_is_refused(tiny):
    from llmdistill.errors import UserError
    from llmdistill.train.trainer import check_packing

    model = model_of(tiny["teacher"])
    check_packing(model)  # Llama's attention keeps packed samples apart
    model.config._attn_implementation = "eager"
    check_packing(model)  # on every attention path transformers masks
    plain_forward = model.forward

    def forward(*args, position_ids=None, **kwargs):  # an attention that reads no sample boundaries
        return plain_forward(*args, position_ids=None, **kwargs)

    model.forward = forward
    with pytest.raises(UserError, match="does not keep packed samples apart"):
        check_packing(model)
