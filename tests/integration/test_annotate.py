"""The annotate stage: a local teacher re-scores generated text (teacher forcing) and fills the top-k."""

import numpy as np
import pytest
import yaml
from vllm_server import SKIP_REASON, vllm_python

from llmdistill import models, store
from llmdistill.config import load_config
from llmdistill.errors import UserError
from llmdistill.pipeline import STARTED, fingerprints, run_stages


def configure(tiny_config, **annotate):
    path, data = tiny_config
    data["annotate"] = {"enabled": True, "teacher": {"model": data["teacher"]["model"]}, "topk": 8,
                        "batch_size": 3} | annotate
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def assert_same_topk(a_ids, a_lps, b_ids, b_lps):
    """Equal to fp16 rounding; ids may swap only between log-probs equal within that rounding."""
    a, b = a_lps.astype(np.float32), b_lps.astype(np.float32)
    np.testing.assert_allclose(a, b, atol=4e-3, rtol=2e-3)
    distinct = np.abs(np.diff(a, axis=1, prepend=np.inf)) > 1e-2
    distinct &= np.abs(np.diff(a, axis=1, append=-np.inf)) > 1e-2
    np.testing.assert_array_equal(a_ids[distinct], b_ids[distinct])


def test_hf_annotate_reproduces_the_generated_topk(tiny_config):
    cfg = configure(tiny_config)
    assert run_stages(cfg, ["generate", "annotate", "filter"]) == {s: "ran" for s in ("generate", "annotate", "filter")}
    run = cfg.run_dir
    gen = {s.id: s for s in store.iter_samples(run / "generate")}
    ann = list(store.iter_samples(run / "annotate"))
    assert [s.id for s in ann] == list(gen)  # same rows, same (curriculum) order
    for s in ann:
        g = gen[s.id]
        assert s.completion == g.completion and s.completion_token_ids == g.completion_token_ids
        assert s.topk_ids.shape == g.topk_ids.shape == (len(g.completion_token_ids), 8)
        assert_same_topk(s.topk_ids, s.topk_logprobs, g.topk_ids, g.topk_logprobs)
    manifest = store.read_manifest(run / "annotate")
    prov = manifest["provenance"]
    assert prov["annotated_by"] == cfg.annotate.teacher.model and prov["teacher"]["backend"] == "hf"
    assert prov["annotate_method"].startswith("teacher forcing") and prov["logprob_mode"] == "raw"
    assert prov["text_from"] == store.read_manifest(run / "generate")["provenance"]["teacher"]
    assert manifest["upstream"] == {"generate": fingerprints(cfg)["generate"]}
    assert store.read_json(run / "annotate" / "stats.json")["this_attempt"] == {"annotated": 12}
    # filter now reads annotate's output
    assert store.read_manifest(run / "filter")["upstream"] == {"annotate": fingerprints(cfg)["annotate"]}
    assert store.read_manifest(run / "filter")["provenance"]["annotated_by"] == cfg.annotate.teacher.model


def test_another_tokenizer_retokenizes_the_text(tiny_config, tiny):
    cfg = configure(tiny_config, teacher={"model": str(tiny["other"])}, topk=4)
    run_stages(cfg, ["generate", "annotate"])
    tok = models.load_tokenizer(str(tiny["other"]))
    prov = store.read_manifest(cfg.run_dir / "annotate")["provenance"]
    assert prov["tokenizer_hash"] == models.tokenizer_info(tok)["tokenizer_hash"] and prov["topk"] == 4
    gen = {s.id: s for s in store.iter_samples(cfg.run_dir / "generate")}
    for s in store.iter_samples(cfg.run_dir / "annotate"):
        expected = tok.encode(s.completion, add_special_tokens=False)
        if gen[s.id].finish_reason == "stop":
            expected.append(tok.eos_token_id)
        assert s.completion_token_ids == expected and s.topk_ids.shape == (len(expected), 4)
        assert s.usage["completion_tokens"] == len(expected)
    assert store.read_json(cfg.run_dir / "annotate" / "stats.json")["this_attempt"] == {"retokenized": 12}


def test_a_killed_annotate_resumes_after_its_last_shard(tiny_config):
    cfg = configure(tiny_config)
    run_stages(cfg, ["generate", "annotate"])
    out = cfg.run_dir / "annotate"
    before = store.read_table(out).to_pylist()
    shards = store.list_shards(out)
    assert len(shards) == 2  # 12 rows: a shard is committed once 4 rows are ready, i.e. after 2 batches of 3
    shards[-1].unlink()  # as if killed before the last shard was committed
    (out / store.SUCCESS).unlink()
    (out / STARTED).write_text(fingerprints(cfg)["annotate"])
    assert run_stages(cfg, ["annotate"], standalone=True) == {"annotate": "ran"}
    assert store.read_json(out / "stats.json")["this_attempt"] == {"annotated": 6}
    assert store.read_table(out).to_pylist() == before


def test_disabled_annotate_is_skipped_and_refused_alone(tiny_config):
    cfg = load_config(tiny_config[0])
    assert "annotate" not in fingerprints(cfg)
    with pytest.raises(UserError, match="annotate is disabled"):
        run_stages(cfg, ["annotate"], standalone=True)


def test_annotate_refuses_an_api_teacher(tiny_config):
    from llmdistill.config import ConfigError

    with pytest.raises(ConfigError, match="annotate.teacher: .*local model"):
        configure(tiny_config, teacher={"model": "some-api-model", "backend": "openai"})


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(vllm_python() is None, reason=SKIP_REASON)
def test_vllm_annotate_matches_hf_annotate(tiny_config, tiny_vllm):
    path, data = tiny_config
    data["teacher"]["model"] = str(tiny_vllm)
    vllm_opts = {"python": str(vllm_python()), "max_model_len": 256, "enforce_eager": True, "cpu_kvcache_gib": 1}
    cfg = configure(tiny_config, teacher={"model": str(tiny_vllm), "backend": "vllm", "vllm": vllm_opts})
    run_stages(cfg, ["generate", "annotate"])
    prov = store.read_manifest(cfg.run_dir / "annotate")["provenance"]
    assert prov["teacher"]["backend"] == "vllm" and prov["annotate_method"].endswith("prompt_logprobs)")
    gen = {s.id: s for s in store.iter_samples(cfg.run_dir / "generate")}
    for s in store.iter_samples(cfg.run_dir / "annotate"):
        g = gen[s.id]
        assert s.completion_token_ids == g.completion_token_ids
        assert_same_topk(s.topk_ids, s.topk_logprobs, g.topk_ids, g.topk_logprobs)


def test_cli_annotate_command(tiny_config):
    import subprocess

    from conftest import PYTHON

    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "annotate", str(tiny_config[0])], capture_output=True,
                         text=True)
    assert res.returncode == 2
    assert "stage annotate is disabled in this config: set annotate.enabled: true" in res.stderr
