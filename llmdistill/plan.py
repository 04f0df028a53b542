"""`llmdistill plan`: per-device memory of the train stage, estimated from the config before anything loads.

The student's architecture comes from a config.json (transformers' AutoConfig reads JSON only, no weights),
its parameter count from the Llama-style formula in `Arch`, and every component is arithmetic on it. The
formulas follow what this trainer holds, not a generic rule of thumb: HF mixed precision keeps fp32 master
weights (train.bf16 adds bf16 copies and halves most activations); Trainer frees the gradients after each
step (`zero_grad(set_to_none=True)`), so with grad_accum 1 they never coexist with the activations; the loss
(objective.chunked_loss) holds a [V, H] head gradient and one chunk's [chunk, V] tensors, never [N, V].
benchmarks/plan_memory.py checks the figures against measured peaks (docs/training.md, "Memory planning").
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from llmdistill import architecture
from llmdistill.config.train import DIVERGENCE_NAMES, auto_chunk_tokens, effective_loss
from llmdistill.errors import UserError, first_line

SHARDINGS = ("none", "ddp", "fsdp", "zero3")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FP32 = 4
MAX_DEVICE_MEMORY = 2**50  # 1 PiB: larger is a typo (1e999GiB), not a device
# the model types whose parameters and activations `Arch` counts (Llama's layout; Qwen2/3 and Gemma-3 by its flags)
ARCH_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")


def parse_size(text: str) -> int:
    """'80GiB', '80 GB', '512MiB', '1e9' -> bytes (GiB = 2^30, GB = 10^9)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if m is None or m.group(2) not in _UNITS:
        raise UserError(f"--device-memory takes a size such as 80GiB, 40GB or 512MiB (units B, KiB, MiB, GiB, TiB, "
                        f"KB, MB, GB, TB), got {text!r}")
    size = float(m.group(1)) * _UNITS[m.group(2)]
    if not 1 <= size <= MAX_DEVICE_MEMORY:
        raise UserError(f"--device-memory {text}: a device holds between 1 byte and 1 PiB, got {size:g} bytes")
    return int(size)


@dataclass(frozen=True)
class Arch:
    """A decoder-only transformer, Llama-style (Qwen2/3 and Gemma-3 variants through the flags)."""

    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    attn: str = "sdpa"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norms_per_layer: int = 2  # Gemma-3: 4 (pre/post attention and MLP)
    qk_norm: bool = False  # Qwen3, Gemma-3: RMSNorm over each head's queries and keys

    @classmethod
    def of(cls, c, what: str = "the model") -> Arch:
        """From a transformers config (its text part for a multimodal one); `what` names it in the refusal of
        an architecture this estimate does not know."""
        c = c.get_text_config() if hasattr(c, "get_text_config") else c
        if getattr(c, "model_type", None) not in ARCH_TYPES:
            raise UserError(f"plan: {what} is a {getattr(c, 'model_type', None)!r} model; the estimate knows decoders "
                            f"laid out as Llama ({', '.join(ARCH_TYPES)})")
        heads = c.num_attention_heads
        kind = c.model_type
        bias = bool(getattr(c, "attention_bias", False))
        return cls(model_type=kind, vocab=c.vocab_size, hidden=c.hidden_size, layers=c.num_hidden_layers,
                   heads=heads, kv_heads=getattr(c, "num_key_value_heads", None) or heads,
                   head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads, intermediate=c.intermediate_size,
                   tied=bool(getattr(c, "tie_word_embeddings", False)),
                   attn=getattr(c, "_attn_implementation", None) or "sdpa",
                   qkv_bias=bias or kind == "qwen2", o_bias=bias, mlp_bias=bool(getattr(c, "mlp_bias", False)),
                   norms_per_layer=4 if kind.startswith("gemma3") else 2,
                   qk_norm=kind.startswith("gemma3") or kind.startswith("qwen3"))

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def layer_parameters(self) -> int:
        shapes = self.linear_shapes()
        n = sum(a * b for a, b in shapes.values())
        n += sum(shapes[k][1] for k in ("q_proj", "k_proj", "v_proj")) if self.qkv_bias else 0
        n += self.hidden if self.o_bias else 0
        n += 2 * self.intermediate + self.hidden if self.mlp_bias else 0
        return n + self.norms_per_layer * self.hidden + (2 * self.head_dim if self.qk_norm else 0)

    def parameters(self) -> int:
        """Unique parameters: embeddings, the head unless tied to them, every layer, the final norm."""
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.layers * self.layer_parameters() + self.hidden


@dataclass(frozen=True)
class Setup:
    """What the estimate depends on besides the architecture; `advice` varies it."""

    batch_size: int
    grad_accum: int
    seq_len: int
    checkpointing: bool = False
    bf16: bool = False
    lora_r: int | None = None
    lora_targets: tuple[str, ...] = LINEARS
    freeze_embeddings: bool = False
    sharding: str = "none"
    processes: int = 1
    chunk_tokens: int | None = None
    terms: tuple[tuple[str, float], ...] = (("forward_kl", 1.0), ("ce", 1.0))  # (name, temperature)
    live_teacher: bool = False
    topk: int = 20
    packing: bool = False

    @classmethod
    def of(cls, cfg, sharding: str = "none", processes: int = 1) -> Setup:
        t = cfg.train
        terms = tuple((x.name, x.temperature if x.is_divergence else 1.0) for x in effective_loss(t.mode, t.loss))
        targets = LINEARS
        if t.lora is not None and t.lora.target_modules != "all-linear":
            targets = tuple(n for n in LINEARS if any(n == m or n.endswith(m) for m in t.lora.target_modules))
        return cls(batch_size=t.batch_size, grad_accum=t.grad_accum, seq_len=t.max_seq_len,
                   checkpointing=bool(getattr(t, "gradient_checkpointing", False)), bf16=t.bf16,
                   lora_r=t.lora.r if t.lora is not None else None, lora_targets=targets,
                   freeze_embeddings=t.freeze_embeddings, sharding=sharding, processes=processes,
                   chunk_tokens=t.chunk_tokens, terms=terms, live_teacher=t.loads_live_teacher,
                   topk=cfg.annotate.topk if cfg.annotate.enabled else cfg.generate.topk,
                   packing=bool(getattr(t, "packing", False)))


def layer_activation_bytes(a: Arch, s: Setup) -> int:
    """Bytes one decoder layer saves for backward, per token, read off LlamaDecoderLayer's forward.

    fp32 (f = 4) everywhere, or under bf16 autocast the linear/attention outputs in bf16 (c = 2) while the
    residual stream and RMSNorm stay fp32. Saved: the layer input and the attention residual (f*H each); per
    RMSNorm its normalised input (f*H) and its output as the next matmul's input (c*H); queries, keys and values
    as sdpa gets them (keys/values repeated to every query head: a padding or packing mask makes transformers
    call repeat_kv instead of sdpa's enable_gqa), sdpa's output (c) and log-sum-exp (fp32 per head), o_proj's
    input (the transposed copy); the MLP's gate, silu(gate), up and their product (4*c*I). Eager attention
    also keeps the [heads, L] softmax per token (fp32, plus its bf16 copy under autocast)."""
    f, c = FP32, (2 if s.bf16 else FP32)
    q = a.heads * a.head_dim
    kv = q if (a.kv_heads < a.heads or a.attn == "eager") else a.kv_heads * a.head_dim
    norms = a.norms_per_layer * (f + c) * a.hidden
    attn = c * (q + 2 * kv + q + q) + f * a.heads
    if a.attn == "eager":
        attn += a.heads * s.seq_len * (f + (c if s.bf16 else 0))
    qk_norm = 2 * f * (q + a.kv_heads * a.head_dim) if a.qk_norm else 0
    lora = c * s.lora_r * len(s.lora_targets) if s.lora_r else 0
    return 2 * f * a.hidden + norms + attn + qk_norm + c * 4 * a.intermediate + lora


def trainable_parameters(a: Arch, s: Setup) -> int:
    if s.lora_r:
        shapes = a.linear_shapes()
        return a.layers * sum(s.lora_r * (shapes[n][0] + shapes[n][1]) for n in s.lora_targets)
    frozen = a.vocab * a.hidden if s.freeze_embeddings else 0  # the head too when tied (one tensor)
    return a.parameters() - frozen


def chunk_multiplier(s: Setup) -> int:
    """[chunk, V] fp32 tensors alive at once inside one loss chunk (objective.chunked_loss): the logits, per
    distinct temperature the student's log-probs (and logits / T when T != 1), then in the chunk's backward one
    gradient buffer per term plus their sum (one term: its buffer and d logits). A live teacher adds, per
    divergence term, its logits, its log-probs and three elementwise temporaries of the dense divergence.
    Checked against a measurement of chunked_loss alone (5.0 for forward_kl + ce, 7.0 at T = 2, 10.2 live)."""
    temps = {temp for _, temp in s.terms}
    m = 1 + sum(2 if temp != 1.0 else 1 for temp in temps) + len(s.terms) + 1
    if s.live_teacher:
        m += 5 * sum(1 for name, _ in s.terms if name in DIVERGENCE_NAMES)
    return m


def estimate(a: Arch, s: Setup, teacher: Arch | None = None, teacher_bytes: int = FP32) -> dict:
    """Per-device bytes of each component, the phases they coexist in, and the peak."""
    n_shard = s.processes if s.sharding in ("fsdp", "zero3") else 1
    tokens = s.batch_size * s.seq_len  # worst case: every row max_seq_len long, every position a label
    p, pt = a.parameters(), trainable_parameters(a, s)
    head_trainable = not s.lora_r and not s.freeze_embeddings
    vh = a.vocab * a.hidden * FP32
    chunk = min(s.chunk_tokens or auto_chunk_tokens(a.vocab), tokens)
    per_layer = layer_activation_bytes(a, s) * tokens
    shared = tokens * (2 * a.head_dim * FP32 + s.seq_len)  # RoPE cos/sin, the bool attention mask
    final = tokens * 3 * FP32 * a.hidden  # last layer's output, the final norm's, the hidden states returned
    saved = (a.layers * FP32 * a.hidden * tokens if s.checkpointing else a.layers * per_layer) + shared + final
    matmul = a.layers * sum(x * y for x, y in a.linear_shapes().values()) + a.vocab * a.hidden
    comp = {
        "weights (fp32 master)": math.ceil(p * FP32 / n_shard),
        "bf16 weight copies (autocast)": 2 * matmul // n_shard if s.bf16 else 0,
        "gathered parameters (fsdp/zero3)": ((a.vocab * a.hidden + 2 * a.layer_parameters()) * (2 if s.bf16 else FP32)
                                             if n_shard > 1 else 0),
        "gradients": math.ceil(pt * FP32 / n_shard),
        "DDP gradient buckets": pt * FP32 if s.sharding == "ddp" and s.processes > 1 else 0,
        "AdamW states (2 x fp32)": math.ceil(2 * pt * FP32 / n_shard),
        "activations (saved for backward)": saved,
        "recompute of one layer (checkpointing)": per_layer if s.checkpointing else 0,
        "loss: head gradient + hidden gradient": (vh if head_trainable else 0) + tokens * a.hidden * FP32,
        "loss: one chunk's logits": chunk_multiplier(s) * chunk * a.vocab * FP32,
        "batch (ids, mask, labels, teacher top-k)": tokens * (3 * 8 + (12 * s.topk * 2 if not s.live_teacher else 0)),
        "live teacher weights": teacher.parameters() * teacher_bytes if teacher else 0,
        "live teacher forward (no grad)": (tokens * teacher_bytes * (2 * teacher.hidden + 4 * teacher.hidden
                                                                     + 3 * teacher.intermediate) if teacher else 0),
    }
    grads_persist = s.grad_accum > 1
    persistent = sum(comp[k] for k in ("weights (fp32 master)", "bf16 weight copies (autocast)",
                                       "gathered parameters (fsdp/zero3)", "DDP gradient buckets",
                                       "AdamW states (2 x fp32)", "live teacher weights"))
    persistent += comp["gradients"] if grads_persist else 0
    step_grads = 0 if grads_persist else comp["gradients"]
    loss_kept = comp["loss: head gradient + hidden gradient"]
    phases = {  # bytes above the persistent ones
        "forward end": saved + loss_kept + comp["loss: one chunk's logits"]
        + comp["batch (ids, mask, labels, teacher top-k)"] + comp["live teacher forward (no grad)"],
        "backward start": saved + loss_kept + (vh if head_trainable else 0),  # the head gradient scaled
        "backward end": step_grads + comp["recompute of one layer (checkpointing)"]
        + (vh if head_trainable and a.tied else 0),  # the embedding's dense gradient, added to the head's
    }
    peak = persistent + max(phases.values())
    return {"parameters": p, "trainable_parameters": pt, "tokens_per_step": tokens, "chunk_tokens": chunk,
            "components": comp, "persistent": persistent, "phases": phases,
            "peak_phase": max(phases, key=phases.get), "peak": peak, "sum": sum(comp.values())}


def signal_size(topk: int) -> dict:
    """Stored teacher signal per completion token (records.py): the token id (int32), k ids (int32), k
    log-probs (float16), plus two int32 list offsets in Arrow."""
    raw = 4 + 6 * topk + 8
    return {"topk": topk, "raw_bytes_per_token": raw, "raw_bytes_per_million_tokens": raw * 10**6}


def data_on_disk(run_dir: Path) -> dict | None:
    """The stored samples the train stage reads (filter/, else annotate/ or generate/), if the run has them."""
    from llmdistill import store

    for stage in ("filter", "annotate", "generate"):
        d = Path(run_dir) / stage
        shards = store.list_shards(d) if d.is_dir() else []
        if shards:
            import pyarrow.compute as pc

            ids = store.read_table(d, ["completion_token_ids"]).column("completion_token_ids")
            tokens = int(pc.sum(pc.list_value_length(ids)).as_py() or 0)
            size = sum(p.stat().st_size for p in shards)
            return {"dir": str(d), "shards": len(shards), "bytes": size, "completion_tokens": tokens,
                    "bytes_per_token": round(size / tokens, 1) if tokens else None}
    return None


def _hf_config(source: str, revision: str | None = None, trust_remote_code: bool = False):
    """A model's transformers config from its config.json (an alias is materialised once, as every stage does)."""
    from llmdistill import models

    path = models.resolve_source(source)
    models.model_config(path, revision)  # sizes checked as every loader checks them: one line, not a traceback
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"plan: cannot read the config of model {source!r} (offline: a local directory or a cached "
                        f"hub id): {first_line(e)}") from None


def student_arch(cfg) -> tuple[Arch, str]:
    """The student's architecture as the train stage will build it (train/student.py), without weights."""
    s, t = cfg.train.student, cfg.teacher
    if s.model is not None:
        arch = Arch.of(_hf_config(s.model, None, t.trust_remote_code), "train.student.model")
        return arch, f"student.model {s.model}"
    if s.prune is not None and (Path(cfg.run_dir) / "train" / "pruned" / "config.json").exists():
        pruned = Path(cfg.run_dir) / "train" / "pruned"
        return Arch.of(_hf_config(str(pruned)), str(pruned)), "the run's pruned student"
    config = _hf_config(t.model, t.revision, t.trust_remote_code)
    teacher = Arch.of(config, "teacher.model")
    if s.teacher_layers is not None:
        architecture.check_teacher_layers(s.teacher_layers, teacher.layers)
        return replace(teacher, layers=len(s.teacher_layers)), f"{len(s.teacher_layers)} layers of {t.model}"
    p = s.prune
    architecture.check_prune(config.to_dict(), p.layers, p.intermediate_size, p.attention_heads, p.hidden_size)
    arch = replace(teacher, layers=p.layers or teacher.layers, intermediate=p.intermediate_size or teacher.intermediate,
                   heads=p.attention_heads or teacher.heads, hidden=p.hidden_size or teacher.hidden)
    sizes = {k: v for k, v in (("layers", p.layers), ("intermediate_size", p.intermediate_size),
                               ("attention_heads", p.attention_heads), ("hidden_size", p.hidden_size)) if v}
    return arch, f"{t.model} pruned to " + ", ".join(f"{k} {v}" for k, v in sizes.items())


_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def plan(cfg, sharding: str = "none", processes: int = 1, device_memory: int | None = None) -> dict:
    """The whole estimate for a config: student, setup, components, peak, fit and advice, stored signal."""
    if sharding not in SHARDINGS:
        raise UserError(f"--sharding takes {', '.join(SHARDINGS)}, got {sharding!r}")
    if processes < 1 or (sharding == "none" and processes > 1):
        raise UserError(f"--processes {processes}: needs at least 1, and --sharding ddp, fsdp or zero3 for more")
    arch, origin = student_arch(cfg)
    setup = Setup.of(cfg, sharding, processes)
    teacher = None  # routed live teachers: the default one is counted
    if setup.live_teacher:
        teacher = Arch.of(_hf_config(cfg.teacher.model, cfg.teacher.revision, cfg.teacher.trust_remote_code),
                          "teacher.model")
    tbytes = _DTYPE_BYTES[cfg.teacher.dtype]
    est = estimate(arch, setup, teacher, tbytes)
    out = {"student": {"from": origin, **asdict(arch)}, "setup": asdict(setup), **est,
           "signal": signal_size(setup.topk), "data": data_on_disk(cfg.run_dir), "device_memory": device_memory,
           "fits": None if device_memory is None else est["peak"] <= device_memory, "advice": []}
    if device_memory is not None and not out["fits"]:
        out["advice"] = advice(arch, setup, teacher, tbytes, device_memory)
    return out


def _variants(s: Setup) -> list[tuple[str, str, Setup]]:
    """(kind, the config line or launch option, the changed setup): single changes that lower memory, each
    kind from mild to strong."""
    out = []
    if not s.checkpointing:
        out.append(("checkpointing", "train.gradient_checkpointing: true", replace(s, checkpointing=True)))
    b, a = s.batch_size, s.grad_accum
    while b > 1:
        b, a = (b + 1) // 2, a * 2
        out.append(("batch", f"train.batch_size: {b}, train.grad_accum: {a} (the global batch kept)",
                    replace(s, batch_size=b, grad_accum=a)))
    length = s.seq_len
    while length > 64:
        length //= 2
        out.append(("length", f"train.max_seq_len: {length} (train.packing: true fills rows with whole samples)",
                    replace(s, seq_len=length)))
    if s.sharding not in ("fsdp", "zero3"):
        for n in (2, 4, 8, 16, 32, 64):
            out.append(("sharding", f"--sharding fsdp --processes {n} (accelerate launch, FSDP or ZeRO-3 config)",
                        replace(s, sharding="fsdp", processes=n)))
    if not s.lora_r:
        out.append(("lora", "train.lora: {r: 16}", replace(s, lora_r=16)))
    if not s.bf16:
        out.append(("bf16", "train.bf16: true (GPUs with bf16)", replace(s, bf16=True)))
    return out


def advice(a: Arch, s: Setup, teacher: Arch | None, tbytes: int, budget: int) -> list[dict]:
    """Per kind of change the mildest variant that fits (else the strongest); when none fits alone, the
    kinds combined, largest saving first, until it fits."""
    def peak(v: Setup) -> int:
        return estimate(a, v, teacher, tbytes)["peak"]

    def pick(options):
        return next(((ln, v) for ln, v in options if peak(v) <= budget), options[-1])

    kinds: dict[str, list] = {}
    for kind, line, v in _variants(s):
        kinds.setdefault(kind, []).append((line, v))
    rows = [{"change": ln, "peak": peak(v), "fits": peak(v) <= budget} for ln, v in map(pick, kinds.values())]
    if rows and not any(r["fits"] for r in rows):
        combined, lines = s, []
        for kind in sorted(kinds, key=lambda k: peak(pick(kinds[k])[1])):
            options = [(ln, v) for k, ln, v in _variants(combined) if k == kind]
            if options:
                line, combined = pick(options)
                lines.append(line)
                if peak(combined) <= budget:
                    break
        rows.append({"change": " + ".join(lines), "peak": peak(combined), "fits": peak(combined) <= budget})
    return sorted(rows, key=lambda r: (not r["fits"], r["peak"]))


def print_plan(out: dict) -> None:
    """The estimate as a table (rich), with the stored signal's size and the verdict."""
    from rich.console import Console
    from rich.table import Table

    st, s = out["student"], out["setup"]
    console = Console()
    console.print(f"student: {st['from']}: {st['model_type']}, {st['layers']} layers x {st['hidden']}, heads "
                  f"{st['heads']}/{st['kv_heads']} kv, MLP {st['intermediate']}, vocab {st['vocab']:,}, "
                  f"{'tied' if st['tied'] else 'untied'} head, {st['attn']} attention; {out['parameters']:,} "
                  f"parameters ({out['trainable_parameters']:,} trainable)")
    console.print(f"per device: batch {s['batch_size']} x {s['seq_len']} tokens (grad_accum {s['grad_accum']}), "
                  f"{'bf16 autocast' if s['bf16'] else 'fp32'}, checkpointing {'on' if s['checkpointing'] else 'off'}"
                  f", sharding {s['sharding']} over {s['processes']} process(es), loss chunk {out['chunk_tokens']} "
                  f"tokens")
    table = Table(title="training memory per device")
    for col in ("component", "MiB", "GiB"):
        table.add_column(col, justify="left" if col == "component" else "right")
    for name, size in out["components"].items():
        if size:
            table.add_row(name, f"{size / 2**20:,.1f}", f"{size / 2**30:.3f}")
    table.add_row(f"[bold]peak ({out['peak_phase']})[/bold]", f"[bold]{out['peak'] / 2**20:,.1f}[/bold]",
                  f"[bold]{out['peak'] / 2**30:.3f}[/bold]")
    table.add_row("sum of all components (upper bound)", f"{out['sum'] / 2**20:,.1f}", f"{out['sum'] / 2**30:.3f}")
    console.print(table)
    console.print("the peak is what coexists: weights and optimizer states, plus the largest of the step's phases "
                  f"({', '.join(f'{k} {v / 2**20:,.0f} MiB' for k, v in out['phases'].items())})")
    sig, data = out["signal"], out["data"]
    line = (f"stored teacher signal (top-{sig['topk']}): {sig['raw_bytes_per_token']} B/token in Arrow, "
            f"{sig['raw_bytes_per_million_tokens'] / 2**20:,.0f} MiB per million tokens before compression")
    if data:
        where = os.path.relpath(data["dir"]) if not os.path.relpath(data["dir"]).startswith("..") else data["dir"]
        line += (f"; {where}: {data['bytes'] / 2**20:,.2f} MiB on disk for {data['completion_tokens']:,} "
                 f"completion tokens ({data['bytes_per_token']} B/token)")
    console.print(line)
    if out["device_memory"] is not None:
        verdict = "fits" if out["fits"] else "does not fit"
        console.print(f"[bold]{verdict}[/bold] in {out['device_memory'] / 2**30:,.2f} GiB "
                      f"({out['peak'] / out['device_memory']:.0%} of it)")
        for r in out["advice"]:
            console.print(f"  {'fits' if r['fits'] else 'still over'} with {r['change']}: "
                          f"{r['peak'] / 2**30:,.2f} GiB")
