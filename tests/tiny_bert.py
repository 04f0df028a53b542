"""A tiny BERT teacher and a distilled student run, real and small, for the BERT tests and the serving benchmark.

`build_teacher(root)`: a random BERT (hidden 64, 4 layers, with an MLM head) and an encoder without one, a
WordPiece tokenizer trained here on the committed tweets, and the first rows of data/sentiment.
`distill(fx, out, overrides)`: a finished distill-bert run (configs/bert-kd.yaml, a few steps) in `out`.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SENTIMENT = REPO / "data" / "sentiment"


def _head(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("".join(src.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    return dst


def build_teacher(root: Path) -> dict:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast

    root = Path(root)
    texts = [json.loads(line)["text"] for line in (SENTIMENT / "train.jsonl").read_text().splitlines()[:600]]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    teacher_dir = root / "teacher"
    teacher_dir.mkdir(parents=True)
    tok.save(str(root / "tokenizer.json"))
    fast = BertTokenizerFast(tokenizer_file=str(root / "tokenizer.json"))
    fast.save_pretrained(str(teacher_dir))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(fast), hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, pad_token_id=fast.pad_token_id)
    BertForMaskedLM(config).save_pretrained(str(teacher_dir))
    encoder_dir = root / "encoder"  # no MLM head, like the sentence-embedding encoders
    fast.save_pretrained(str(encoder_dir))
    BertModel(config, add_pooling_layer=False).save_pretrained(str(encoder_dir))
    data = root / "data"
    data.mkdir()
    files = {"train": 64, "val": 32, "test": 64, "unlabelled": 48}
    paths = {k: _head(SENTIMENT / f"{k}.jsonl", data / f"{k}.jsonl", n) for k, n in files.items()}
    return {"root": root, "teacher": teacher_dir, "encoder": encoder_dir, **paths}


def distill(fx: dict, out: Path, overrides: list[str] = ()) -> Path:
    """configs/bert-kd.yaml on the tiny teacher: a narrow student (2 x 32 unless `overrides` say otherwise),
    3 steps, ONNX and dynamic int8 exported; returns the finished run directory."""
    from llmdistill.bert.stage import run
    from llmdistill.config import load_bert_config

    o = [f"data.{k}={fx[k]}" for k in ("train", "val", "test", "unlabelled")]
    o += [f"teacher.model={fx['teacher']}", "teacher.finetune.max_examples=64", "teacher.finetune.batch_size=16",
          f"teacher.cache_dir={fx['root'] / 'teachers'}", f"output_dir={out}", "threads=1",
          "student.hidden_size=32", "student.num_heads=2", "student.intermediate_size=64",
          "student.embedding_size=16", "export.latency_runs=1", "export.int8_options=[{mode: dynamic}]",
          "data.max_seq_len=32", "phases.0.max_steps=3", "phases.0.batch_size=16", *overrides]
    cfg = load_bert_config(REPO / "configs" / "bert-kd.yaml", o)
    run(cfg)
    return cfg.run_dir
