"""The networks: a BERT encoder with a classification head (teacher and BERT students), a BiLSTM student,
and one output record for both, so the losses never look inside a model.

Hidden states are indexed 0..L: 0 is the embedding output, i the output of layer i (the transformers
convention). Attention maps are the post-softmax probabilities of layers 1..L ([B, heads, T, T]);
queries/keys/values ([B, T, H], before the split into heads) are captured by forward hooks on each
layer's `query`/`key`/`value` projections, only when a loss asks for them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from llmdistill import store

CONFIG_FILE = "llmdistill_bert.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class Outputs:
    """What a forward pass exposes to the losses. Absent pieces are None/empty."""

    logits: torch.Tensor  # [B, C] class logits (task head)
    pooled: torch.Tensor  # [B, H] the representation the head reads
    hidden_states: tuple[torch.Tensor, ...] = ()  # (L + 1) x [B, T, H]
    attentions: tuple[torch.Tensor, ...] = ()  # L x [B, heads, T, T]
    qkv: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # L x (q, k, v)
    mlm_logits: torch.Tensor | None = None  # [B, T, V]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the unmasked positions: [B, T, H], [B, T] -> [B, H]."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class EncoderClassifier(nn.Module):
    """A transformers BertModel (any width/depth, optionally factorised embeddings) + mean pooling + a linear
    head. An optional MLM head (transformers' BertOnlyMLMHead) serves task-agnostic distillation."""

    kind = "encoder"

    def __init__(self, bert_config, num_labels: int, embedding_size: int | None = None, mlm_head: bool = False):
        super().__init__()
        from transformers import BertModel

        bert_config._attn_implementation = "eager"  # attention maps are a distillation signal
        self.backbone = BertModel(bert_config, add_pooling_layer=False)
        self.embedding_size = embedding_size
        if embedding_size is not None and embedding_size != bert_config.hidden_size:
            # factorised word embeddings (ALBERT/MobileBERT): V x E, then E -> H
            self.backbone.embeddings.word_embeddings = nn.Sequential(
                nn.Embedding(bert_config.vocab_size, embedding_size, padding_idx=bert_config.pad_token_id),
                nn.Linear(embedding_size, bert_config.hidden_size, bias=False),
            )
        self.dropout = nn.Dropout(bert_config.hidden_dropout_prob)
        self.head = nn.Linear(bert_config.hidden_size, num_labels)
        self.mlm = None
        if mlm_head:
            from transformers.models.bert.modeling_bert import BertOnlyMLMHead

            self.mlm = BertOnlyMLMHead(bert_config)
        self.num_labels = num_labels
        self._qkv_store: list | None = None
        for layer in self.backbone.encoder.layer:
            for name in ("query", "key", "value"):
                getattr(layer.attention.self, name).register_forward_hook(self._capture)

    @property
    def config(self):
        return self.backbone.config

    @property
    def num_layers(self) -> int:
        return self.backbone.config.num_hidden_layers

    @property
    def width(self) -> int:
        return self.backbone.config.hidden_size

    def _capture(self, module, inputs, output):
        if self._qkv_store is not None:
            self._qkv_store.append(output)

    def forward(self, input_ids, attention_mask, details: bool = False, qkv: bool = False, mlm: bool = False):
        self._qkv_store = [] if qkv else None
        try:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                                output_hidden_states=details, output_attentions=details)
        finally:
            captured, self._qkv_store = self._qkv_store, None
        last = out.last_hidden_state
        pooled = mean_pool(last, attention_mask)
        logits = self.head(self.dropout(pooled))
        if not details:
            return logits
        triples = [tuple(captured[i:i + 3]) for i in range(0, len(captured), 3)] if captured else []
        mlm_logits = self.mlm(last) if (mlm and self.mlm is not None) else None
        return Outputs(logits, pooled, tuple(out.hidden_states), tuple(out.attentions), triples, mlm_logits)

    def spec(self) -> dict:
        return {"kind": self.kind, "bert_config": self.backbone.config.to_dict(), "num_labels": self.num_labels,
                "embedding_size": self.embedding_size, "mlm_head": self.mlm is not None}


class BiLSTMClassifier(nn.Module):
    """Tang et al. (2019): word embeddings -> one bidirectional LSTM -> max pooling -> MLP -> classes.

    It reads the teacher's tokenizer ids; only logit-level losses (KD, CE, RKD on `pooled`) apply to it."""

    kind = "bilstm"

    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, num_labels: int,
                 pad_token_id: int = 0, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_size, padding_idx=pad_token_id)
        self.lstm = nn.LSTM(embedding_size, hidden_size, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(2 * hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, num_labels))
        self.num_labels = num_labels
        self._spec = {"vocab_size": vocab_size, "embedding_size": embedding_size, "hidden_size": hidden_size,
                      "pad_token_id": pad_token_id, "dropout": dropout}

    num_layers = 0

    @property
    def width(self) -> int:
        return 2 * self._spec["hidden_size"]

    def forward(self, input_ids, attention_mask, details: bool = False, qkv: bool = False, mlm: bool = False):
        h, _ = self.lstm(self.embed(input_ids))
        h = h.masked_fill(attention_mask.unsqueeze(-1) == 0, torch.finfo(h.dtype).min)
        pooled = h.max(dim=1).values
        logits = self.mlp(self.dropout(pooled))
        return Outputs(logits, pooled) if details else logits

    def spec(self) -> dict:
        return {"kind": self.kind, "num_labels": self.num_labels, **self._spec}


def from_spec(spec: dict) -> nn.Module:
    if spec["kind"] == "bilstm":
        args = {k: v for k, v in spec.items() if k != "kind"}
        return BiLSTMClassifier(**args)
    from transformers import BertConfig

    return EncoderClassifier(BertConfig.from_dict(spec["bert_config"]), spec["num_labels"], spec["embedding_size"],
                             spec.get("mlm_head", False))


def save_model(model: nn.Module, directory: Path, tokenizer=None) -> None:
    """The module's weights as safetensors, its architecture as JSON, and the tokenizer beside them."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    store.atomic_write_json(directory / CONFIG_FILE, model.spec())
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def is_saved_model(directory: Path) -> bool:
    return (Path(directory) / CONFIG_FILE).is_file()


def load_model(directory: Path) -> nn.Module:
    from safetensors.torch import load_file

    directory = Path(directory)
    model = from_spec(json.loads((directory / CONFIG_FILE).read_text()))
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """Parameters used for prediction: an MLM head serves training only (it is not exported), so it is left out."""
    return sum(p.numel() for name, p in model.named_parameters(remove_duplicate=True) if not name.startswith("mlm."))
