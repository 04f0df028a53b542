"""Student builders: a layer subset of the teacher, a narrow BERT, an existing pretrained encoder, a BiLSTM.

All of them read the teacher's tokenizer ids. Narrow and BiLSTM students can start from the teacher's
word embeddings projected on their top `embedding_size` principal components (a cheap, deterministic way
to give a small student the teacher's lexical knowledge).
"""

from __future__ import annotations

import copy
import logging
import re

import torch

from llmdistill.bert import layer_map as lmap
from llmdistill.bert import models as bmodels
from llmdistill.config import BertStudentConfig
from llmdistill.errors import UserError

log = logging.getLogger("llmdistill")


def _no_attention_dropout(config) -> None:
    """transformers returns attention maps after dropout; maps that are distilled must be the real ones."""
    config.attention_probs_dropout_prob = 0.0


def build_student(spec: BertStudentConfig, teacher: torch.nn.Module, num_labels: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if not isinstance(teacher, bmodels.EncoderClassifier):
        raise UserError("the teacher must be a BERT encoder classifier")
    if spec.kind == "layer_subset":
        layers = spec.teacher_layers or lmap.alternate_layers(teacher.num_layers)
        student = layer_subset(teacher, layers, spec.mlm_head)
    elif spec.kind == "narrow":
        student = narrow(teacher, spec, num_labels)
    elif spec.kind == "pretrained":
        from llmdistill.bert.teacher import encoder_classifier, resolve_source

        student = encoder_classifier(resolve_source(spec.model), num_labels)
        if student.config.vocab_size != teacher.config.vocab_size:
            raise UserError(f"student.model {spec.model}: vocabulary {student.config.vocab_size} differs from the "
                            f"teacher's {teacher.config.vocab_size} (students read the teacher's tokenizer)")
        if spec.mlm_head:
            raise UserError("student.mlm_head is not supported for kind pretrained")
    elif spec.kind == "bilstm":
        e = spec.embedding_size or teacher.width
        student = bmodels.BiLSTMClassifier(teacher.config.vocab_size, e, spec.lstm_hidden, num_labels,
                                           teacher.config.pad_token_id or 0)
        if spec.init_embeddings == "teacher_pca":
            student.embed.weight.data.copy_(pca_embeddings(teacher_word_embeddings(teacher), e))
    else:  # pragma: no cover - the config schema forbids it
        raise UserError(f"unknown student kind {spec.kind}")
    log.info("student: %s, %.2fM parameters (teacher %.2fM)", spec.kind, bmodels.count_parameters(student) / 1e6,
             bmodels.count_parameters(teacher) / 1e6)
    return student


def teacher_word_embeddings(teacher: bmodels.EncoderClassifier) -> torch.Tensor:
    emb = teacher.backbone.embeddings.word_embeddings
    if isinstance(emb, torch.nn.Sequential):  # factorised: V x E times E -> H
        return (emb[0].weight @ emb[1].weight.t()).detach()
    return emb.weight.detach()


def pca_embeddings(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """[V, H] -> [V, dim]: centred rows projected on the top `dim` right singular vectors, rescaled so the
    entries keep the teacher's standard deviation."""
    if dim > weight.shape[1]:
        raise UserError(f"embedding_size {dim} is wider than the teacher's embeddings ({weight.shape[1]})")
    x = weight.float() - weight.float().mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    out = x @ v[:dim].t()
    return out * (weight.float().std() / out.std().clamp(min=1e-8))


def narrow(teacher: bmodels.EncoderClassifier, spec: BertStudentConfig, num_labels: int):
    """A smaller BERT on the teacher's vocabulary (MobileBERT-like: narrow body, factorised embeddings)."""
    config = copy.deepcopy(teacher.config)
    _no_attention_dropout(config)
    config.num_hidden_layers = spec.num_layers
    config.hidden_size = spec.hidden_size
    config.num_attention_heads = spec.num_heads
    config.intermediate_size = spec.intermediate_size
    e = spec.embedding_size or spec.hidden_size
    student = bmodels.EncoderClassifier(config, num_labels, embedding_size=e, mlm_head=spec.mlm_head)
    if spec.init_embeddings == "teacher_pca":
        init = pca_embeddings(teacher_word_embeddings(teacher), e)
        word = student.backbone.embeddings.word_embeddings
        (word[0] if isinstance(word, torch.nn.Sequential) else word).weight.data.copy_(init)
    return student


def layer_subset(teacher: bmodels.EncoderClassifier, layers: list[int], mlm_head: bool = False):
    """DistilBERT initialisation: the teacher's embeddings, head and the given layers (1-based), in order."""
    n = teacher.num_layers
    bad = [i for i in layers if not 1 <= i <= n]
    if bad or not layers:
        raise UserError(f"student.teacher_layers: the teacher has layers 1..{n}, got {bad or layers}")
    config = copy.deepcopy(teacher.config)
    _no_attention_dropout(config)
    config.num_hidden_layers = len(layers)
    student = bmodels.EncoderClassifier(config, teacher.num_labels, teacher.embedding_size,
                                        mlm_head=mlm_head or teacher.mlm is not None)
    new_of = {old - 1: new for new, old in enumerate(layers)}
    pattern = re.compile(r"^(backbone\.encoder\.layer\.)(\d+)(\..*)$")
    state = {}
    for name, tensor in teacher.state_dict().items():
        m = pattern.match(name)
        if m is None:
            state[name] = tensor.clone()
        elif int(m.group(2)) in new_of:
            state[f"{m.group(1)}{new_of[int(m.group(2))]}{m.group(3)}"] = tensor.clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("mlm.")]
    if missing or unexpected:
        raise UserError(f"layer subset failed: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return student
