"""`llmdistill plan`: the parameter formula against real models, what sharding/LoRA/checkpointing change, units,
and the command's exit codes (benchmarks/plan_memory.py checks the bytes against measured peaks)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_tiny_config
from llmdistill import plan
from llmdistill.config import load_config
from llmdistill.errors import UserError


def _count(config) -> int:
    from transformers import AutoModelForCausalLM

    from llmdistill import models

    return models.count_parameters(AutoModelForCausalLM.from_config(config))


def test_parameter_count_equals_the_tiny_llama(tiny):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny["teacher"])
    assert plan.Arch.of(config).parameters() == _count(config)


@pytest.mark.parametrize("kind", ["llama_untied_gqa_bias", "qwen2", "qwen3", "gemma3_text"])
def test_parameter_count_equals_other_layouts(kind):
    import transformers

    common = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16)
    config = {
        "llama_untied_gqa_bias": lambda: transformers.LlamaConfig(**common, tie_word_embeddings=False,
                                                                  attention_bias=True, mlp_bias=True),
        "qwen2": lambda: transformers.Qwen2Config(**common, tie_word_embeddings=False),
        "qwen3": lambda: transformers.Qwen3Config(**common),
        "gemma3_text": lambda: transformers.Gemma3TextConfig(**common),
    }[kind]()
    assert plan.Arch.of(config).parameters() == _count(config)


def _cfg(tmp_path, tiny, **train):
    path, data = make_tiny_config(tmp_path, tiny)
    data["train"].update(train)
    path.write_text(yaml.safe_dump(data))
    return load_config(str(path), [])


def test_student_from_teacher_layers_and_prune_sizes(tmp_path, tiny):
    from llmdistill import models
    from llmdistill.train.student import layer_subset

    arch, origin = plan.student_arch(_cfg(tmp_path, tiny))  # teacher_layers [0, 3]
    teacher = models.load_causal_lm(str(tiny["teacher"]))
    assert arch.layers == 2 and arch.parameters() == models.count_parameters(layer_subset(teacher, [0, 3]))
    pruned, origin = plan.student_arch(_cfg(tmp_path, tiny, student={"prune": {"layers": 3, "intermediate_size": 32}}))
    assert (pruned.layers, pruned.intermediate, pruned.hidden) == (3, 32, 64) and "pruned" in origin


ARCH = plan.Arch("llama", vocab=1000, hidden=64, layers=4, heads=4, kv_heads=2, head_dim=16, intermediate=128,
                 tied=True)
SETUP = plan.Setup(batch_size=4, grad_accum=1, seq_len=64)


def test_fsdp_and_zero3_divide_weights_gradients_and_optimizer_ddp_does_not():
    one = plan.estimate(ARCH, SETUP)["components"]
    for sharding in ("fsdp", "zero3"):
        four = plan.estimate(ARCH, replace(SETUP, sharding=sharding, processes=4))["components"]
        for k in ("weights (fp32 master)", "gradients", "AdamW states (2 x fp32)"):
            assert four[k] == -(-one[k] // 4)
        assert four["activations (saved for backward)"] == one["activations (saved for backward)"]
    ddp = plan.estimate(ARCH, replace(SETUP, sharding="ddp", processes=4))["components"]
    assert ddp["weights (fp32 master)"] == one["weights (fp32 master)"]
    assert ddp["DDP gradient buckets"] == one["gradients"]


def test_lora_shrinks_gradients_and_optimizer_to_the_adapters():
    full = plan.estimate(ARCH, SETUP)
    lora = plan.estimate(ARCH, replace(SETUP, lora_r=4))
    adapters = ARCH.layers * sum(4 * (i + o) for i, o in ARCH.linear_shapes().values())
    assert lora["trainable_parameters"] == adapters < full["trainable_parameters"] / 5
    assert lora["components"]["AdamW states (2 x fp32)"] == 8 * adapters
    assert lora["components"]["weights (fp32 master)"] == full["components"]["weights (fp32 master)"]
    assert lora["components"]["loss: head gradient + hidden gradient"] < \
        full["components"]["loss: head gradient + hidden gradient"]  # the frozen head gets no gradient


def test_checkpointing_lowers_activations_and_adds_one_layer_of_recompute():
    off = plan.estimate(ARCH, SETUP)["components"]
    on = plan.estimate(ARCH, replace(SETUP, checkpointing=True))["components"]
    assert on["activations (saved for backward)"] < off["activations (saved for backward)"] / 2
    assert on["recompute of one layer (checkpointing)"] == plan.layer_activation_bytes(ARCH, SETUP) * 4 * 64
    assert off["recompute of one layer (checkpointing)"] == 0


def test_bf16_keeps_fp32_master_weights_and_lowers_activations():
    fp32, bf16 = plan.estimate(ARCH, SETUP)["components"], plan.estimate(ARCH, replace(SETUP, bf16=True))["components"]
    assert bf16["weights (fp32 master)"] == fp32["weights (fp32 master)"] and bf16["bf16 weight copies (autocast)"]
    assert bf16["activations (saved for backward)"] < fp32["activations (saved for backward)"]


def test_chunking_follows_the_objective():
    assert plan.chunk_multiplier(SETUP) == 5  # forward_kl + ce at T = 1, measured 5.0 (docs/training.md)


@pytest.mark.parametrize("text,expected", [("80GiB", 80 * 2**30), ("40GB", 40 * 10**9), ("512 MiB", 512 * 2**20),
                                           ("1.5gib", 3 * 2**29), ("4096", 4096)])
def test_sizes(text, expected):
    assert plan.parse_size(text) == expected


@pytest.mark.parametrize("text", ["80XB", "lots", "GiB", "-1GiB", "1e999GiB", "0", "0GiB", "0.1", "2PiB"])
def test_bad_sizes(text):
    with pytest.raises(UserError, match="--device-memory"):
        plan.parse_size(text)


def test_cli_exit_codes(tmp_path, tiny):
    from llmdistill import cli

    path, _ = make_tiny_config(tmp_path, tiny)
    run = CliRunner().invoke
    ok = run(cli.app, ["plan", str(path)])
    assert ok.exit_code == 0 and "peak" in ok.output and "activations" in ok.output
    fits = run(cli.app, ["plan", str(path), "--device-memory", "1TiB", "--json"])
    assert fits.exit_code == 0 and json.loads(fits.output)["fits"] is True
    over = run(cli.app, ["plan", str(path), "--device-memory", "1MiB"])
    assert over.exit_code == cli.EXIT_NO_FIT == 5 and "does not fit" in over.output
    assert "train.gradient_checkpointing: true" in over.output
    for bad in (["--device-memory", "80XB"], ["--sharding", "zero9"], ["--processes", "2"]):
        res = run(cli.app, ["plan", str(path), *bad])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output


# ----------------------------------------------------- plan refuses what a run refuses (issue 28, item 13)
PRUNE_REFUSED = [{"layers": 99}, {"intermediate_size": 500}, {"attention_heads": 3}, {"attention_heads": 9},
                 {"hidden_size": 63}, {"hidden_size": 65}]


@pytest.mark.parametrize("sizes", PRUNE_REFUSED)
def test_plan_refuses_the_pruned_sizes_prune_refuses_with_the_same_line(tmp_path, tiny, sizes):
    """The tiny teacher: 4 layers, hidden 64, 2 heads of 2 key/value heads, MLP 128."""
    from llmdistill import models
    from llmdistill.train.prune import measure_importance, prune

    teacher = models.load_causal_lm(str(tiny["teacher"]))
    with pytest.raises(UserError) as by_prune:
        prune(teacher, measure_importance(teacher, [[5, 6, 7, 8]]), **sizes)
    with pytest.raises(UserError) as by_plan:
        plan.student_arch(_cfg(tmp_path, tiny, student={"prune": sizes}))
    assert str(by_plan.value) == str(by_prune.value)


def test_plan_refuses_teacher_layers_the_teacher_lacks_as_the_student_builder_does(tmp_path, tiny):
    from llmdistill import models
    from llmdistill.train.student import layer_subset

    with pytest.raises(UserError) as by_train:
        layer_subset(models.load_causal_lm(str(tiny["teacher"])), [0, 7])
    with pytest.raises(UserError) as by_plan:
        plan.student_arch(_cfg(tmp_path, tiny, student={"teacher_layers": [0, 7]}))
    assert str(by_plan.value) == str(by_train.value)
    assert str(by_plan.value) == "train.student.teacher_layers: the teacher has layers 0..3, got [7]"


def test_plan_on_a_student_it_cannot_estimate_or_an_impossible_memory_is_one_line(tmp_path, tiny):
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmdistill import cli

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=320)).save_pretrained(gpt2)
    path, _ = make_tiny_config(tmp_path, tiny)
    cases = {(f"train.student={{model: {gpt2}}}",): "train.student.model is a 'gpt2' model",
             ("train.student={prune: {layers: 99}}",): "the teacher has 4 layers, cannot keep 99",
             ("--device-memory", "1e999GiB"): "--device-memory 1e999GiB",
             ("--device-memory", "0"): "--device-memory 0"}
    for extra, message in cases.items():
        res = CliRunner().invoke(cli.app, ["plan", str(path), *extra])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
        assert message in res.output and "Traceback" not in res.output, res.output
