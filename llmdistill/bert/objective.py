"""One training step's loss for a phase: run the student, then the teacher under no_grad, then the terms.

The terms and their weights come from the phase's `losses` section; every term is a function in
llmdistill/bert/losses.py. Projections (student width -> teacher width, FitNets regressors / TinyBERT W_h)
are built once for the whole run, trained with the student and saved beside it.
"""

from __future__ import annotations

import torch
from torch import nn

from llmdistill.bert import losses as L
from llmdistill.bert import models as bmodels
from llmdistill.bert.data import mask_tokens
from llmdistill.config import BertLossConfig, BertPhaseConfig

DETAIL_TERMS = {"hidden", "attention", "embedding", "pkd", "minilm_attention", "minilm_value", "minilmv2",
                "rkd_distance", "rkd_angle"}
QKV_TERMS = {"minilm_value", "minilmv2"}
LAYER_TERMS = DETAIL_TERMS - {"rkd_distance", "rkd_angle"}  # the terms that read more than logits and pooled
PROJECTED_TERMS = {"hidden", "pkd", "embedding"}


def build_projections(student, teacher, pairs: list[tuple[int, int]], phases: list[BertPhaseConfig]) -> nn.ModuleDict:
    """Linear maps student width -> teacher width, one per mapped layer (and the embeddings) that a phase
    compares vector to vector. None are needed when the widths match."""
    used = set().union(*(p.losses.active() for p in phases))
    proj = nn.ModuleDict()
    if student.width == teacher.width or not (used & PROJECTED_TERMS):
        return proj
    if used & {"hidden", "pkd"}:
        for s, _ in pairs:
            proj[f"layer{s}"] = nn.Linear(student.width, teacher.width)
    if "embedding" in used or any(s == 0 for s, _ in pairs):
        proj["layer0"] = nn.Linear(student.width, teacher.width)
    return proj


def _project(proj: nn.ModuleDict, layer: int, x: torch.Tensor) -> torch.Tensor:
    key = f"layer{layer}"
    return proj[key](x) if key in proj else x


def masks_tokens(phase: BertPhaseConfig) -> bool:
    """Task-agnostic phases mask tokens when they train an MLM or distil MLM logits (DistilBERT); MiniLM-style
    general distillation compares the two models on the same unmasked text."""
    return phase.mode == "task_agnostic" and bool({"mlm", "kd"} & set(phase.losses.active()))


def needs_teacher(phase: BertPhaseConfig) -> bool:
    """Hard-label CE and the student's own MLM loss read no teacher output."""
    return bool(set(phase.losses.active()) - {"ce", "mlm"})


def relation_heads(losses: BertLossConfig, student) -> int:
    return losses.relation_heads or student.config.num_attention_heads


class PhaseObjective:
    """`__call__(batch) -> (loss, {term: detached value})` for one phase."""

    def __init__(self, phase: BertPhaseConfig, student, teacher, signal, pairs: list[tuple[int, int]],
                 proj: nn.ModuleDict, special_ids: list[int], mask_id: int | None, seed: int):
        self.phase, self.student, self.teacher, self.pairs, self.proj = phase, student, teacher, pairs, proj
        self.signal = signal
        self.weights = phase.losses.active()
        self.details = bool(set(self.weights) & DETAIL_TERMS) or phase.mode == "task_agnostic"
        self.qkv = bool(set(self.weights) & QKV_TERMS)
        self.special = torch.tensor(sorted(set(special_ids)))
        self.mask_id = mask_id
        self.generator = torch.Generator().manual_seed(seed)
        self.teacher_layer = phase.losses.minilm_teacher_layer or getattr(teacher, "num_layers", 0)
        if masks_tokens(phase) and mask_id is None:
            raise ValueError("task_agnostic phases need a tokenizer with a mask token")

    def __call__(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        mlm_labels = None
        if masks_tokens(self.phase):
            special = torch.isin(ids, self.special)
            ids, mlm_labels = mask_tokens(ids, mask, special, self.mask_id, self.teacher.config.vocab_size,
                                          self.phase.mlm_probability, self.generator)
        agnostic = mlm_labels is not None
        s = self.student(ids, mask, details=True, qkv=self.qkv, mlm=agnostic) if (self.details or agnostic) \
            else bmodels.Outputs(self.student(ids, mask), None)
        t = None
        if needs_teacher(self.phase):
            teacher_details = bool(set(self.weights) & LAYER_TERMS) or agnostic
            t = self.signal.outputs(batch, ids, mask, details=teacher_details, qkv=self.qkv,
                                    mlm=agnostic and "kd" in self.weights)
        terms = self.terms(s, t, mask, labels, mlm_labels)
        loss = sum(self.weights[k] * v for k, v in terms.items())
        return loss, {k: v.detach() for k, v in terms.items()}

    def terms(self, s, t, mask, labels, mlm_labels) -> dict[str, torch.Tensor]:
        w, lc, out = self.weights, self.phase.losses, {}
        if "ce" in w:
            out["ce"] = L.cross_entropy(s.logits, labels)
        if "kd" in w:
            if mlm_labels is not None:  # general distillation: KD on the masked tokens' MLM distributions
                picked = mlm_labels != -100
                out["kd"] = L.soft_kd(s.mlm_logits[picked], t.mlm_logits[picked], lc.temperature) if picked.any() \
                    else s.mlm_logits.sum() * 0.0
            else:
                out["kd"] = L.logit_kd(s.logits, t.logits, labels, lc.temperature, lc.alpha)
        if "mlm" in w:
            out["mlm"] = L.cross_entropy(s.mlm_logits.flatten(0, 1), mlm_labels.flatten())
        if "hidden" in w:
            fn = L.hidden_cosine if lc.hidden_kind == "cosine" else L.hidden_mse
            out["hidden"] = sum(fn(_project(self.proj, si, s.hidden_states[si]), t.hidden_states[ti], mask)
                                for si, ti in self.pairs)
        if "embedding" in w:
            out["embedding"] = L.hidden_mse(_project(self.proj, 0, s.hidden_states[0]), t.hidden_states[0], mask)
        if "attention" in w:
            out["attention"] = sum(L.attention_mse(s.attentions[si - 1], t.attentions[ti - 1], mask)
                                   for si, ti in self.pairs if si > 0 and ti > 0)
        if "pkd" in w:
            out["pkd"] = L.pkd([_project(self.proj, si, s.hidden_states[si][:, 0]) for si, _ in self.pairs],
                               [t.hidden_states[ti][:, 0] for _, ti in self.pairs])
        tl = self.teacher_layer
        if "minilm_attention" in w:
            out["minilm_attention"] = L.attention_kl(s.attentions[-1], t.attentions[tl - 1], mask)
        if "minilm_value" in w:
            heads = relation_heads(lc, self.student)
            out["minilm_value"] = L.relation_kl(s.qkv[-1][2], t.qkv[tl - 1][2], mask, heads)
        if "minilmv2" in w:
            out["minilmv2"] = L.minilmv2(s.qkv[-1], t.qkv[tl - 1], mask, relation_heads(lc, self.student))
        if "rkd_distance" in w:
            out["rkd_distance"] = L.rkd_distance(s.pooled, t.pooled)
        if "rkd_angle" in w:
            out["rkd_angle"] = L.rkd_angle(s.pooled, t.pooled)
        return out
