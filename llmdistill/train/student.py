"""Student construction: an existing model, a layer subset of the teacher (DistilBERT-style init), or the
teacher pruned by importance (train/prune.py)."""

from __future__ import annotations

import copy
import logging
import re

from llmdistill import architecture, models
from llmdistill.config import Config
from llmdistill.errors import UserError

log = logging.getLogger("llmdistill")


def build_student(cfg: Config, pruned_dir=None):
    """A fresh student (float32 unless configured) on the CPU; the Trainer moves it where it trains.
    `pruned_dir`: where the train stage wrote the pruned teacher (train.student.prune)."""
    s = cfg.train.student
    if s.model is not None or s.prune is not None:
        source = s.model if s.model is not None else str(pruned_dir)
        return models.load_causal_lm(source, "float32", "cpu", trust_remote_code=cfg.teacher.trust_remote_code)
    teacher = models.load_causal_lm(cfg.teacher.model, "float32", "cpu", cfg.teacher.revision,
                                    cfg.teacher.trust_remote_code)
    return layer_subset(teacher, s.teacher_layers)


def layer_subset(model, layers: list[int]):
    """A copy of a decoder-only model keeping its embeddings, final norm, head and the given layers.

    The new model is built from a config with `num_hidden_layers = len(layers)` (so per-layer indices,
    caches and `layer_types` are consistent) and the kept layers' weights are copied in order.
    """
    n = model.config.num_hidden_layers
    architecture.check_teacher_layers(layers, n)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in layers]
    student = type(model)(config)
    new_of = {old: new for new, old in enumerate(layers)}
    pattern = re.compile(r"^(.*\.layers\.)(\d+)(\..*)$")
    state = {}
    for name, tensor in model.state_dict().items():
        m = pattern.match(name)
        if m is None:
            state[name] = tensor
        elif int(m.group(2)) in new_of:
            state[f"{m.group(1)}{new_of[int(m.group(2))]}{m.group(3)}"] = tensor
    missing, unexpected = student.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
    if missing or unexpected:
        raise UserError(f"layer subset of {type(model).__name__} failed: "
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    if getattr(config, "tie_word_embeddings", False):
        student.tie_weights()
    log.info("student: layers %s of %d from the teacher, %.1fM parameters", layers, n,
             models.count_parameters(student) / 1e6)
    return student.eval()
