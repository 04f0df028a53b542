"""The hf teacher's stored top-k equals the model's own distribution, recomputed by a forward pass."""

import numpy as np
import pytest
import torch

from llmdistill import models
from llmdistill.config import GenerateConfig, TeacherConfig
from llmdistill.teachers import Sampling, build_teacher


@pytest.fixture(scope="module")
def prompts():
    return [[{"role": "user", "content": "why is the sky blue"}], [{"role": "user", "content": "one two"}],
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is a cat"}]]


def reference_logprobs(teacher_dir, prompt, token_ids, temperature=1.0):
    tok = models.load_tokenizer(str(teacher_dir))
    model = models.load_causal_lm(str(teacher_dir))
    p = models.encode_prompt(tok, prompt)
    ids = torch.tensor([p + token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(p) - 1 : len(p) - 1 + len(token_ids)]
    return torch.log_softmax(logits / temperature, -1).numpy()


@pytest.mark.parametrize("mode", ["raw", "processed"])
def test_stored_topk_matches_forward_pass(tmp_path, tiny, prompts, mode):
    gcfg = GenerateConfig(prompts=[], max_new_tokens=10, temperature=0.8, topk=5, logprob_mode=mode)
    teacher = build_teacher(TeacherConfig(model=str(tiny["teacher"])), Sampling.from_generate(gcfg))
    out = teacher.generate(prompts, seed=3)
    assert len(out) == len(prompts)
    for prompt, g in zip(prompts, out):
        assert g.topk_ids.shape == (len(g.token_ids), 5) == g.topk_logprobs.shape
        assert g.finish_reason in ("stop", "length")
        ref = reference_logprobs(tiny["teacher"], prompt, g.token_ids, 1.0 if mode == "raw" else 0.8)
        stored = g.topk_logprobs.astype(np.float32)
        # the stored ids carry the model's log-probs ...
        np.testing.assert_allclose(stored, np.take_along_axis(ref, g.topk_ids.astype(np.int64), 1),
                                   atol=2e-3, rtol=2e-3)
        # ... and they are the k largest (ties within fp16 rounding allowed), best first
        kth_best = np.sort(ref, 1)[:, -5]
        assert np.all(stored[:, -1] >= kth_best - 2e-3)
        assert np.all(np.diff(stored, axis=1) <= 1e-6)
    prov = teacher.provenance()
    assert prov["logprob_mode"] == mode
    assert prov["capture_temperature"] == (1.0 if mode == "raw" else 0.8)
    assert prov["topk"] == 5 and prov["vocab_size"] > 0


def test_same_seed_same_batch_same_output(tiny, prompts):
    gcfg = GenerateConfig(prompts=[], max_new_tokens=8, temperature=1.0, topk=3)
    teacher = build_teacher(TeacherConfig(model=str(tiny["teacher"])), Sampling.from_generate(gcfg))
    a = teacher.generate(prompts, seed=7)
    b = teacher.generate(prompts, seed=7)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]


@pytest.mark.gpu
def test_on_a_gpu_the_teacher_writes_what_it_writes_on_the_cpu(tiny_vllm, prompts):
    """The hf teacher on cuda: the same greedy completions, token for token, and their top-k log-probs within GPU
    rounding, as on the CPU (`tiny_vllm` is peaked, so greedy decoding does not hinge on rounding)."""
    sampling = Sampling(max_new_tokens=12, temperature=0.0, top_p=1.0, topk=5, logprob_mode="raw", too_long="skip")
    out = []
    for device in ("cpu", "cuda"):
        with build_teacher(TeacherConfig(model=str(tiny_vllm), device=device), sampling) as teacher:
            out.append(teacher.generate(prompts, seed=0))
    for a, b in zip(*out):
        assert a.error is None and a.token_ids == b.token_ids and len(a.token_ids) > 0
        assert (a.topk_ids[:, 0] == b.topk_ids[:, 0]).all()  # lower ranks may swap between near-equal log-probs
        np.testing.assert_allclose(a.topk_logprobs.astype(np.float32), b.topk_logprobs.astype(np.float32), atol=2e-2)
