"""The served teacher (`train.teacher_signal: served`) against a real vLLM server on 127.0.0.1: its prompt
log-probs give the in-process teacher's top-k and loss to fp32 rounding, and a train run distils from it."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch
import yaml
from vllm_server import SKIP_REASON, vllm_python

from llmdistill import losses, models, store
from llmdistill.config import APIOptions, load_config
from llmdistill.errors import UserError
from llmdistill.pipeline import run_stages
from llmdistill.teachers.token_map import UNMAPPED_ID
from llmdistill.train.served import ServedScorer, check_server, served_teacher_config

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.skipif(vllm_python() is None, reason=SKIP_REASON)]
K = 20


def served_config(tiny_vllm, server, **api):
    options = {"base_url": server.base_url, "served_model": "tiny", "api_key_env": None, **api}
    return served_teacher_config(str(tiny_vllm), None, APIOptions(**options))


def sequences(tokenizer, n=3):
    texts = ["the teacher scores every token of this sentence", "naïve café: 東京 🙂 12345",
             "a third, longer sequence of ordinary words to score " * 2][:n]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def in_process_topk(tiny_vllm, seq):
    model = models.load_causal_lm(str(tiny_vllm), "float32", "cpu")
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([seq])).logits[0].double(), -1).float()
    lps, ids = logp.topk(K, dim=-1)  # row i: the distribution of token i + 1
    return logp, ids, lps


def test_served_topk_and_loss_match_the_in_process_teacher(tmp_path, tiny_vllm, vllm_server):
    tok = models.load_tokenizer(str(tiny_vllm))
    seqs = sequences(tok)
    scored = ServedScorer(served_config(tiny_vllm, vllm_server), K, tmp_path / "cache", len(tok))(seqs)
    torch.manual_seed(0)
    for seq, (ids, lps) in zip(seqs, scored):
        assert ids.shape == (len(seq), K) and (ids[0] == UNMAPPED_ID).all()  # nothing predicts token 0
        ref_logp, ref_ids, ref_lps = in_process_topk(tiny_vllm, seq)
        s_ids = torch.as_tensor(ids[1:].astype(np.int64))  # served row i + 1 = in-process row i
        s_lps = torch.as_tensor(lps[1:])
        np.testing.assert_allclose(s_lps.numpy(), ref_lps[:-1].numpy(), atol=2e-5, rtol=1e-5)
        assert (s_ids == ref_ids[:-1]).float().mean() > 0.99  # ids may swap only between near-equal log-probs
        student = torch.log_softmax(ref_logp[:-1] + 0.5 * torch.randn_like(ref_logp[:-1]), -1)
        for temperature in (1.0, 2.0):
            for tail in ("bucket", "renormalize"):
                served_loss = losses.sparse_divergence_logp("forward_kl", student, s_ids, s_lps, temperature, tail)
                local_loss = losses.sparse_divergence_logp("forward_kl", student, ref_ids[:-1], ref_lps[:-1],
                                                           temperature, tail)
                # two engines' fp32 forward passes (vLLM's CPU kernels, transformers') round differently: per
                # token about 1e-5 relative (the log-probs agree to 2e-5 absolute); the batch loss to 1e-5
                torch.testing.assert_close(served_loss, local_loss, rtol=5e-5, atol=1e-6)
                torch.testing.assert_close(served_loss.mean(), local_loss.mean(), rtol=1e-5, atol=0.0)


def test_the_server_is_checked_before_step_one(tiny_vllm, tiny, vllm_server):
    tok = models.load_tokenizer(str(tiny_vllm))
    assert check_server(served_config(tiny_vllm, vllm_server), tok, 128, K)["served_model"] == "tiny"
    with pytest.raises(UserError, match="serves \\['tiny'\\], not 'other'"):
        check_server(served_config(tiny_vllm, vllm_server, served_model="other"), tok, 128, K)
    with pytest.raises(UserError, match="context of 256 tokens, shorter than train.max_seq_len 512"):
        check_server(served_config(tiny_vllm, vllm_server), tok, 512, K)
    other = models.load_tokenizer(str(tiny["other"]))
    with pytest.raises(UserError, match="tokenises a probe text differently"):
        check_server(served_teacher_config(str(tiny["other"]), None, APIOptions(
            base_url=vllm_server.base_url, served_model="tiny", api_key_env=None)), other, 128, K)


def test_a_train_run_distils_from_the_served_teacher(tmp_path, tiny_vllm, vllm_server, caplog):
    import logging

    from conftest import make_tiny_config

    path, data = make_tiny_config(tmp_path, {"teacher": tiny_vllm})
    data["teacher"]["model"] = str(tiny_vllm)
    # level-2 prompts written by a second teacher (the same model under another name): the one server
    # scores every row, and the run says so
    data["teachers"] = {"second": {"model": str(tiny_vllm)}}
    data["generate"]["routing"] = [{"teacher": "second", "levels": [2]}]
    data["train"].update(student={"teacher_layers": [0]}, sft_baseline=False, max_steps=4, max_seq_len=128,
                         teacher_signal="served", served={"base_url": vllm_server.base_url, "served_model": "tiny",
                                                          "api_key_env": None})
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    with caplog.at_level(logging.INFO, logger="llmdistill"):
        run_stages(cfg, ["generate", "filter", "train"])
    assert "holds rows of teachers default, second; the served teacher" in caplog.text
    metrics = store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]
    assert metrics["steps"] == 4 and metrics["teacher_signal"] == "served"
    assert np.isfinite(metrics["last_logged"]["loss_forward_kl"]) and metrics["last_logged"]["loss_forward_kl"] > 0
    db = sqlite3.connect(cfg.run_dir / "cache" / "api.sqlite")  # every scored sequence, for a resumed run
    assert db.execute("SELECT COUNT(*) FROM replies").fetchone()[0] >= 4
    db.close()


def test_each_row_is_scored_by_the_server_of_the_teacher_that_wrote_it(tmp_path, tiny_vllm, vllm_server):
    """generate.routing sends level-2 prompts to a second teacher (another model on the same tokenizer); with
    train.served_teachers each row's top-k comes from its own teacher's server, both checked before step 1."""
    from vllm_server import VLLMServer

    from conftest import build_llama, make_tiny_config
    from llmdistill.train.data import Collator
    from llmdistill.train.sources import served_teachers as _served_teachers

    tok = models.load_tokenizer(str(tiny_vllm))
    second = build_llama(tmp_path / "second", tok, layers=2, hidden=128, seed=1, init_range=0.3)
    path, data = make_tiny_config(tmp_path, {"teacher": tiny_vllm})
    data["teachers"] = {"second": {"model": str(second)}}
    data["generate"]["routing"] = [{"teacher": "second", "levels": [2]}]
    with VLLMServer(second, name="tiny2", log_path=tmp_path / "second.log") as server2:
        data["train"].update(student={"teacher_layers": [0]}, sft_baseline=False, max_steps=3, max_seq_len=128,
                             teacher_signal="served",
                             served={"base_url": vllm_server.base_url, "served_model": "tiny", "api_key_env": None},
                             served_teachers={"second": {"base_url": server2.base_url, "served_model": "tiny2",
                                                         "api_key_env": None}})
        path.write_text(yaml.safe_dump(data))
        cfg = load_config(path)
        run_stages(cfg, ["generate", "filter", "train"])
        metrics = store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]
        assert metrics["steps"] == 3 and sorted(metrics["served"]) == ["default", "second"]
        assert metrics["served"]["second"]["served_model"] == "tiny2"

        # a batch mixing both teachers' rows: each row's top-k is its own teacher's (in-process reference)
        rows = store.read_table(cfg.run_dir / "filter").to_pylist()
        picked = [next(r for r in rows if r["teacher"] == name) for name in ("default", "second", "default")]
        examples = [{"input_ids": [*models.encode_prompt(tok, r["messages"]), *r["completion_token_ids"]],
                     "prompt_len": len(models.encode_prompt(tok, r["messages"])), "teacher": r["teacher"]}
                    for r in picked]
        scorer, _ = _served_teachers(cfg, {"default": None, "second": None}, len(tok))
        batch = Collator(tok.pad_token_id, scorer=scorer)(examples)
    for b, ex in enumerate(examples):
        p, n = ex["prompt_len"], len(ex["input_ids"])
        own, other = (tiny_vllm, second) if ex["teacher"] == "default" else (second, tiny_vllm)
        _, _, own_lps = in_process_topk(own, ex["input_ids"])
        _, _, other_lps = in_process_topk(other, ex["input_ids"])
        served = batch["teacher_logprobs"][b, p - 1 : n - 1]
        np.testing.assert_allclose(served.numpy(), own_lps[p - 1 : n - 1].numpy(), atol=2e-5, rtol=1e-5)
        assert not np.allclose(served.numpy(), other_lps[p - 1 : n - 1].numpy(), atol=1e-2)
