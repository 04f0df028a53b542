"""Teachers, below the stages: the protocol (`base`) and the backends, picked by the short name in
`teacher.backend` and built from a `TeacherConfig` plus a `Sampling`.

    hf      transformers `generate` on a local model (hf.py)
    vllm    the offline vLLM engine, in this process or a worker under another Python (vllm.py, vllm_worker.py)
    openai  any OpenAI-compatible endpoint (api.py; api_pool.py: servers; api_client.py: retries, rate limits,
            request cache, replies; api_cost.py: spend; api_batch.py; api_workers.py; token_map.py)

A backend module is imported only when its teacher is built, so optional backends cost nothing when absent.
"""

from __future__ import annotations

import importlib

from llmdistill.config import TeacherConfig
from llmdistill.errors import UserError
from llmdistill.teachers.base import (
    TOO_LONG,
    ContextCheck,
    Generation,
    LocalTeacher,
    PromptTooLong,
    Sampling,
    Scored,
    Teacher,
    is_transient,
    model_context,
    too_long,
)

__all__ = ["BACKENDS", "TOO_LONG", "ContextCheck", "Generation", "LocalTeacher", "PromptTooLong", "Sampling",
           "Scored", "Teacher", "build_teacher", "is_transient", "model_context", "teacher_class", "too_long"]

# backend name (the `teacher.backend` Literal) -> "module:class"
BACKENDS = {
    "hf": "llmdistill.teachers.hf:HFTeacher",
    "vllm": "llmdistill.teachers.vllm:VLLMTeacher",
    "openai": "llmdistill.teachers.api:OpenAITeacher",
}


def teacher_class(backend: str) -> type[Teacher]:
    """The class of the backend named `backend` (a `teacher.backend` name), its module imported now: what it
    declares (`accepts_cache_dir`, `gpus`) can be asked before, or without, building one."""
    module, cls = BACKENDS[backend].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("llmdistill"):
            raise UserError(f"teacher backend {backend!r} is not available in this version") from None
        raise UserError(f"teacher backend {backend!r} needs the package {e.name!r}: {e}") from None
    return getattr(mod, cls)


def build_teacher(tcfg: TeacherConfig, sampling: Sampling, cache_dir=None) -> Teacher:
    """The backend named by `tcfg.backend`; `cache_dir` (run_dir/cache) goes to backends that keep a cache.
    Use it as a context manager (`with build_teacher(...) as teacher:`): that closes it on every path."""
    teacher_cls = teacher_class(tcfg.backend)
    if teacher_cls.accepts_cache_dir:
        return teacher_cls(tcfg, sampling, cache_dir=cache_dir)
    return teacher_cls(tcfg, sampling)
