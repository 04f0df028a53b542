"""Student construction by importance pruning: depth by block influence (ShortGPT), width by activation
importance (Minitron), for Llama-family decoders.

The teacher reads calibration text once, with hooks that record, over every non-padding token t:
    block influence of layer l   BI_l = 1 - mean_t cos(x_l[t], y_l[t])     (x_l, y_l: the layer's input and output)
    MLP channel j of layer l     sqrt(mean_t a_lj[t]^2)    a = act(gate(x)) * up(x), the input of down_proj
    query head h of layer l      sqrt(mean_t |o_lh[t]|^2)  o_lh = head h's attention output, the input of o_proj
    hidden channel c             sqrt(mean_t,n z_nc[t]^2)  z_n = the output of every RMSNorm n (the residual stream
                                                           as each block and the head read it)
Depth keeps the `layers` layers with the largest BI (or every k-th, `select: uniform`); width keeps, in every kept
layer, the most important MLP channels and query heads (the same number per key/value group, so grouped-query
attention stays grouped) and the most important hidden channels everywhere. Kept indices keep their order, and
every weight is a slice of the teacher's. The importances are saved with the student (pruning.json).
"""

from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path

from llmdistill import architecture, models
from llmdistill.errors import UserError

log = logging.getLogger("llmdistill")

PRUNING_FILE = "pruning.json"
PRUNED_KIND = "pruned-student"  # save_dir's mark of a pruned student: what a later prune may replace


def check_supported(model) -> None:
    architecture.check_prunable(getattr(model.config, "model_type", None), type(model).__name__)


def _no_grad(fn):
    """torch.no_grad() around `fn`, with torch imported at the call (`prune` refuses a bad --out at once)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)
    return wrapper


@_no_grad
def measure_importance(model, sequences: list[list[int]], batch_size: int = 8, pad_id: int = 0) -> dict:
    """Block influence per layer and activation importance per MLP channel, query head and hidden channel,
    measured on `sequences` (token ids). Returns lists (JSON-ready) plus the token count."""
    import torch

    check_supported(model)
    if not sequences:
        raise UserError("train.student.prune: no calibration text (the generate stage wrote no samples?)")
    cfg = model.config
    layers = model.model.layers
    n, heads = len(layers), cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    state = {"mask": None}
    cos_sum = torch.zeros(n, dtype=torch.float64)
    mlp = torch.zeros(n, cfg.intermediate_size, dtype=torch.float64)
    attn = torch.zeros(n, heads, dtype=torch.float64)
    hidden = torch.zeros(cfg.hidden_size, dtype=torch.float64)
    norm_outputs = [0]

    def rows(t):  # [B, T, C] -> [N, C] of the non-padding tokens, float64
        return t[state["mask"]].double()

    def on_layer(i):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos_sum[i] += torch.nn.functional.cosine_similarity(rows(x), rows(y), dim=-1).sum()
        return hook

    def on_down(i):
        def hook(module, args):
            mlp[i] += rows(args[0]).pow(2).sum(0)
        return hook

    def on_o(i):
        def hook(module, args):
            a = rows(args[0])
            attn[i] += a.view(a.shape[0], heads, head_dim).pow(2).sum((0, 2))
        return hook

    def on_norm(module, args, output):
        hidden.add_(rows(output).pow(2).sum(0))
        norm_outputs[0] += 1

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(on_layer(i), with_kwargs=True))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(on_down(i)))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(on_o(i)))
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            handles.append(norm.register_forward_hook(on_norm))
    handles.append(model.model.norm.register_forward_hook(on_norm))
    tokens = 0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.bool)
            for row, seq in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = True
            state["mask"] = mask.to(device)
            model(input_ids=ids.to(device), attention_mask=state["mask"].long(), use_cache=False)
            tokens += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    norms_per_pass = 2 * n + 1
    return {
        "tokens": tokens,
        "samples": len(sequences),
        "block_influence": (1.0 - cos_sum / tokens).tolist(),
        "mlp": (mlp / tokens).sqrt().tolist(),
        "heads": (attn / tokens).sqrt().tolist(),
        "hidden": (hidden / (tokens * norms_per_pass)).sqrt().tolist(),
    }


def select_layers(block_influence: list[float], keep: int, select: str) -> list[int]:
    """The indices of the layers kept, increasing: the `keep` largest block influences (ties: the earlier
    layer), or `keep` layers spread evenly from the first to the last (select: uniform)."""
    n = len(block_influence)
    if not 1 <= keep <= n:
        raise UserError(f"train.student.prune.layers: the teacher has {n} layers, cannot keep {keep}")
    if select == "uniform":
        if keep == 1:
            return [0]
        return sorted({round(i * (n - 1) / (keep - 1)) for i in range(keep)})
    order = sorted(range(n), key=lambda i: (-block_influence[i], i))
    return sorted(order[:keep])


def _top(scores: list[float], keep: int) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:keep])


def _heads_kept(scores: list[float], keep: int, kv_heads: int) -> list[int]:
    """The query heads kept: the same number in every key/value group, the most important of each group."""
    per_group = len(scores) // kv_heads  # keep is a multiple of kv_heads (check_prune)
    kept = []
    for g in range(kv_heads):
        group = list(range(g * per_group, (g + 1) * per_group))
        kept += [group[i] for i in _top([scores[h] for h in group], keep // kv_heads)]
    return kept


def prune(model, importance: dict, layers: int | None = None, select: str = "importance",
          intermediate_size: int | None = None, attention_heads: int | None = None,
          hidden_size: int | None = None):
    """(student, record): a smaller copy of `model` built from slices of its weights; `record` says what was
    kept and why (for pruning.json and the report). None keeps a dimension whole."""
    import torch

    check_supported(model)
    cfg = model.config
    n = cfg.num_hidden_layers
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    architecture.check_prune(cfg.to_dict(), layers, intermediate_size, attention_heads, hidden_size)
    kept_layers = select_layers(importance["block_influence"], layers or n, select)
    mlp_keep = {i: _top(importance["mlp"][i], intermediate_size or cfg.intermediate_size) for i in kept_layers}
    head_keep = {i: _heads_kept(importance["heads"][i], attention_heads or heads, kv) for i in kept_layers}
    hid = _top(importance["hidden"], hidden_size or cfg.hidden_size)
    hid_t = torch.tensor(hid)

    new_cfg = copy.deepcopy(cfg)
    new_cfg.num_hidden_layers = len(kept_layers)
    if getattr(new_cfg, "layer_types", None):
        new_cfg.layer_types = [cfg.layer_types[i] for i in kept_layers]
    new_cfg.intermediate_size = intermediate_size or cfg.intermediate_size
    new_cfg.num_attention_heads = attention_heads or heads
    new_cfg.head_dim = head_dim  # no longer hidden_size / heads once either is pruned
    new_cfg.hidden_size = hidden_size or cfg.hidden_size
    student = type(model)(new_cfg)

    src = model.state_dict()
    out = {"model.embed_tokens.weight": src["model.embed_tokens.weight"][:, hid_t],
           "model.norm.weight": src["model.norm.weight"][hid_t]}
    if "lm_head.weight" in src and not getattr(cfg, "tie_word_embeddings", False):
        out["lm_head.weight"] = src["lm_head.weight"][:, hid_t]
    for new, old in enumerate(kept_layers):
        p, q = f"model.layers.{old}.", f"model.layers.{new}."
        q_rows = torch.tensor([h * head_dim + d for h in head_keep[old] for d in range(head_dim)])
        mlp_rows = torch.tensor(mlp_keep[old])
        rows_of = {"self_attn.q_proj": q_rows, "self_attn.o_proj": None, "self_attn.k_proj": None,
                   "self_attn.v_proj": None, "mlp.gate_proj": mlp_rows, "mlp.up_proj": mlp_rows, "mlp.down_proj": None}
        for name, sel in rows_of.items():
            w = src[p + name + ".weight"]
            if name in ("self_attn.o_proj", "mlp.down_proj"):  # output: hidden rows; input: the kept heads / channels
                inner = q_rows if name == "self_attn.o_proj" else mlp_rows
                out[q + name + ".weight"] = w[hid_t][:, inner]
                if p + name + ".bias" in src:
                    out[q + name + ".bias"] = src[p + name + ".bias"][hid_t]
            else:
                out[q + name + ".weight"] = (w if sel is None else w[sel])[:, hid_t]
                if p + name + ".bias" in src:
                    b = src[p + name + ".bias"]
                    out[q + name + ".bias"] = b if sel is None else b[sel]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[q + norm + ".weight"] = src[p + norm + ".weight"][hid_t]
    missing, unexpected = student.load_state_dict({k: v.clone() for k, v in out.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise UserError(f"pruning {type(model).__name__} failed: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if getattr(new_cfg, "tie_word_embeddings", False):
        student.tie_weights()

    def kept_share(scores, kept):  # the share of the squared importance that the kept units carry
        total = sum(s * s for s in scores)
        return round(sum(scores[i] ** 2 for i in kept) / total, 4) if total else 1.0

    record = {
        "method": select,
        "teacher_layers": n,
        "layers": kept_layers,
        "block_influence": [round(b, 5) for b in importance["block_influence"]],
        "intermediate_size": {"teacher": cfg.intermediate_size, "student": new_cfg.intermediate_size,
                              "importance_kept": {str(i): kept_share(importance["mlp"][i], mlp_keep[i])
                                                  for i in kept_layers}},
        "attention_heads": {"teacher": heads, "student": new_cfg.num_attention_heads, "key_value_heads": kv,
                            "kept": {str(i): head_keep[i] for i in kept_layers},
                            "importance": {str(i): [round(s, 4) for s in importance["heads"][i]] for i in kept_layers}},
        "hidden_size": {"teacher": cfg.hidden_size, "student": new_cfg.hidden_size,
                        "importance_kept": kept_share(importance["hidden"], hid)},
        "calibration": {"samples": importance["samples"], "tokens": importance["tokens"]},
        "parameters": {"teacher": models.count_parameters(model), "student": models.count_parameters(student)},
    }
    log.info("prune: kept layers %s of %d (%s); MLP %d/%d, heads %d/%d, hidden %d/%d: %.1fM of %.1fM parameters",
             kept_layers, n, select, new_cfg.intermediate_size, cfg.intermediate_size, new_cfg.num_attention_heads,
             heads, new_cfg.hidden_size, cfg.hidden_size, record["parameters"]["student"] / 1e6,
             record["parameters"]["teacher"] / 1e6)
    return student.eval(), record


def calibration_sequences(p, tokenizer, dataset=None) -> list[list[int]]:
    """Token ids to measure on: `p.calibration_samples` sequences spread evenly over the prompt files of
    `p.calibration` (each chat-encoded prompt), or else over `dataset` (prompt + the teacher's completion),
    each cut to `p.calibration_tokens`."""
    from llmdistill.prompts import load_prompts, spread

    if p.calibration:
        try:
            prompts = load_prompts(p.calibration, None, "file", p.calibration_samples)  # spread evenly
        except ValueError as e:
            raise UserError(f"train.student.prune.calibration: {e}") from None
        seqs = [models.encode_prompt(tokenizer, q.messages) for q in prompts]
    elif dataset is not None:
        picked = spread(len(dataset), p.calibration_samples)
        rows = dataset.select(picked).select_columns(["messages", "completion_token_ids"])
        seqs = [models.encode_prompt(tokenizer, r["messages"]) + list(r["completion_token_ids"] or []) for r in rows]
    else:
        raise UserError("prune: no calibration text: run the generate and filter stages first, or set "
                        "train.student.prune.calibration to a prompt file")
    return [s[: p.calibration_tokens] for s in seqs if s]


def write_pruned(cfg, target, sequences, cache_dir=None, force: bool = False, keep: dict | None = None) -> dict:
    """Prune the configured teacher as `cfg.train.student.prune` says, measured on `sequences`, and write
    the student (model, tokenizer, pruning.json) to `target` in one swap. Returns the pruning record.
    `cache_dir`: the importances are kept there, keyed by the teacher and the calibration text, so another
    student size (or a rerun) on the same text does not measure again. `target` is replaced only if it is
    an earlier pruned student, empty, or `force` (never a path of `keep`: `models.check_replaceable`)."""
    from llmdistill import records, store

    p = cfg.train.student.prune
    models.check_replaceable(target, PRUNED_KIND, (PRUNING_FILE,), force, keep)  # before any work
    tokenizer = models.load_tokenizer(cfg.teacher.model, cfg.teacher.revision, cfg.teacher.trust_remote_code)
    teacher = models.load_causal_lm(cfg.teacher.model, "float32", "cpu", cfg.teacher.revision,
                                    cfg.teacher.trust_remote_code)
    check_supported(teacher)
    architecture.check_prune(teacher.config.to_dict(), p.layers, p.intermediate_size, p.attention_heads,
                             p.hidden_size)  # before the measuring, not after
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    key = records.stable_hash({"teacher": models.model_hash(cfg.teacher.model), "revision": cfg.teacher.revision,
                               "sequences": sequences})
    cache = Path(cache_dir) / f"importance-{key}.json" if cache_dir is not None else None
    if cache is not None and cache.exists():
        log.info("prune: importances from cache %s", cache)
        importance = store.read_json(cache)
    else:
        importance = measure_importance(teacher, sequences, pad_id=pad)
        if cache is not None:
            store.atomic_write_json(cache, importance)
    student, record = prune(teacher, importance, layers=p.layers, select=p.select,
                            intermediate_size=p.intermediate_size, attention_heads=p.attention_heads,
                            hidden_size=p.hidden_size)

    def write(tmp):
        student.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        store.atomic_write_json(tmp / PRUNING_FILE, record)

    models.save_dir(target, "the pruned student", write, PRUNED_KIND, (PRUNING_FILE,), force, keep)
    return record


def protected_paths(cfg, config_path=None) -> dict:
    """{path: what it is} for what `prune --out` must never replace or contain, even with --force: every file
    and directory the config names (the teacher and every other model directory, prompt files, the history
    index, ...), the run directory, the config file, the working directory and llmdistill's model cache."""
    from llmdistill.config import default_config_path

    keep = {}

    def named_in(data, where):
        items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else None
        if items is not None:
            for key, value in items:
                named_in(value, f"{where}.{key}" if where else str(key))
        elif isinstance(data, str) and Path(data).is_absolute() and Path(data).exists():
            keep[Path(data)] = where

    named_in(cfg.model_dump(mode="json"), "")
    keep[Path(cfg.run_dir)] = "the run directory"
    keep[Path(config_path) if config_path is not None else default_config_path()] = "the config file"
    keep[Path.cwd()] = "the working directory"
    if models.cache_dir().is_dir():
        keep[models.cache_dir()] = "llmdistill's model cache"
    return keep


def prune_command(cfg, target=None, force: bool = False, config_path=None) -> tuple[Path, dict]:
    """`llmdistill prune CONFIG`: write the pruned student to `target` (default <run>/pruned), measured on
    train.student.prune.calibration or else on the run's filtered samples. Returns (directory, record).
    `target` must be new, empty or an earlier pruned student (`force`: any directory but the protected ones,
    `protected_paths`); that is checked first, before any work."""
    from llmdistill import store

    p = cfg.train.student.prune
    if p is None:
        raise UserError("prune: the config has no train.student.prune (set layers, intermediate_size, "
                        "attention_heads or hidden_size)")
    target = Path(target) if target is not None else cfg.run_dir / "pruned"
    keep = protected_paths(cfg, config_path)
    models.check_replaceable(target, PRUNED_KIND, (PRUNING_FILE,), force, keep,
                             hint="give a new or empty directory, or --force to replace it")
    dataset = None
    if not p.calibration:
        from llmdistill.train.data import COLUMNS

        samples = cfg.run_dir / "filter"
        if store.read_success(samples) is None:
            raise UserError(f"prune: no calibration text: {samples} is not complete; run `llmdistill filter` "
                            "first, or set train.student.prune.calibration to a prompt file")
        dataset = store.load_dataset(samples, COLUMNS)
    tokenizer = models.load_tokenizer(cfg.teacher.model, cfg.teacher.revision, cfg.teacher.trust_remote_code)
    record = write_pruned(cfg, target, calibration_sequences(p, tokenizer, dataset), cfg.run_dir / "cache", force,
                          keep)
    return target, record
