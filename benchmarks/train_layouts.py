"""What sequence packing and gradient checkpointing cost or save: the demo-general student (10 of SmolLM2's
30 layers) distilled from the stored top-20 on the samples of benchmarks/train_throughput.py (up to 192
tokens each), batch 16, rows of up to 512 tokens. Four rows, the same samples and steps in each:

    plain          padded batches, activations kept (the default)
    packed         train.packing: the batch's samples first-fit in rows of max_seq_len, no padding between
    checkpointed   train.gradient_checkpointing: each decoder layer recomputed in the backward pass
    packed+ckpt    both

Reported: completion tokens/s (median over repeats; rows alternate so machine noise hits all alike), its
ratio to `plain`, the share of padding in the batches, and on a GPU the peak memory allocated (CUDA) and
its ratio to `plain`; `--bf16` adds train.bf16. On a CPU the memory column is empty: per-process peaks
are what benchmarks/plan_memory.py measures.

    .venv/bin/python benchmarks/train_layouts.py [--steps 6] [--repeats 3] [--batch-size 16] [--max-seq-len 512]
                                                 [--bf16]

Packing gains where several samples fit a row: with max_seq_len at the longest sample (the plain batch's
length anyway) each sample gets a row of its own and nothing changes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

import train_throughput as tt  # noqa: E402

OUT = ROOT / "results" / "train_layouts.json"
ROWS = {"plain": (False, False), "packed": (True, False), "checkpointed": (False, True), "packed+ckpt": (True, True)}


def padding_share(trainer, steps: int) -> float:
    """Share of the [rows, length] input positions that are padding, over the batches these steps read (the
    collator marks every sample's tokens in attention_mask, packed or not)."""
    batches = iter(trainer.get_train_dataloader())
    real = total = 0
    for _ in range(steps):
        batch = next(batches)
        total += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum())
    return round(1 - real / total, 3) if total else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="train.batch_size")
    parser.add_argument("--max-seq-len", type=int, default=512, help="train.max_seq_len: the packed rows' length")
    parser.add_argument("--bf16", action="store_true", help="train.bf16 (GPUs)")
    args = parser.parse_args()
    import torch

    cfg, prov = tt.dataset()
    cfg.train.batch_size, cfg.train.max_seq_len, cfg.train.bf16 = args.batch_size, args.max_seq_len, args.bf16
    cuda = torch.cuda.is_available()
    runs = {name: [] for name in ROWS}
    for _ in range(args.repeats):
        for name, (packing, checkpointing) in ROWS.items():
            trainer = tt.build(cfg, prov, "kd_stored", args.steps, packing=packing, checkpointing=checkpointing)
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            result = tt.measure(trainer, args.steps)
            if cuda:
                result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            result["padding_share"] = padding_share(trainer, args.steps)
            runs[name].append(result)
            print(name, result, flush=True)
            del trainer

    def median(name, key):
        values = [r[key] for r in runs[name] if r.get(key) is not None]
        return statistics.median(values) if values else None

    base_tps, base_mem = median("plain", "tokens_per_second"), median("plain", "peak_gib")
    table = []
    for name in ROWS:
        tps, mem = median(name, "tokens_per_second"), median(name, "peak_gib")
        table.append({"row": name, "tokens_per_second": round(tps, 1), "ratio_to_plain": round(tps / base_tps, 3),
                      "padding_share": median(name, "padding_share"),
                      "peak_gib": None if mem is None else round(mem, 3),
                      "peak_ratio_to_plain": None if mem is None else round(mem / base_mem, 3)})
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\npacking and checkpointing, {device}, batch {cfg.train.batch_size}, max_seq_len {cfg.train.max_seq_len}"
          f"{', bf16' if args.bf16 else ''}, {args.steps} steps x {args.repeats} repeats (median)")
    print("| row | tokens/s | ratio to plain | padding share | peak GiB | peak ratio |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in table:
        print(f"| {r['row']} | {r['tokens_per_second']} | {r['ratio_to_plain']} | {r['padding_share']} | "
              f"{r['peak_gib'] if r['peak_gib'] is not None else '-'} | {r['peak_ratio_to_plain'] or '-'} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"device": device, "steps": args.steps, "repeats": args.repeats, "bf16": args.bf16,
                               "batch_size": cfg.train.batch_size, "max_seq_len": cfg.train.max_seq_len,
                               "rows": table, "runs": runs}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
