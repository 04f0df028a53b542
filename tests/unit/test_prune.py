"""Importance pruning (train/prune.py) on small random Llamas built here: the kept layers are the most
influential ones on a constructed case, dead channels go first, and the pruned model has the configured
shapes, reloads from disk and still runs."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from llmdistill.errors import UserError
from llmdistill.train.prune import measure_importance, prune, select_layers

HIDDEN, HEADS, KV, HEAD_DIM, MLP, LAYERS, VOCAB = 64, 4, 2, 16, 96, 4, 120


def llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=KV, max_position_embeddings=128,
                      tie_word_embeddings=True, initializer_range=0.2)
    return LlamaForCausalLM(cfg).eval()


def text(n: int = 12, length: int = 20, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    # ragged lengths, so padding is exercised (and must not count)
    return [torch.randint(3, VOCAB, (length - i % 5,), generator=g).tolist() for i in range(n)]


def silence_layer(model, i: int) -> None:
    """Layer i adds nothing to the residual stream: its output equals its input (block influence 0)."""
    layer = model.model.layers[i]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


def test_the_kept_layers_are_the_most_influential_ones():
    model = llama()
    silence_layer(model, 2)
    imp = measure_importance(model, text())
    bi = imp["block_influence"]
    assert bi[2] == pytest.approx(0.0, abs=1e-9) and min(bi[0], bi[1], bi[3]) > 1e-3
    assert select_layers(bi, 3, "importance") == [0, 1, 3]
    assert select_layers(bi, 3, "uniform") == [0, 2, 3]  # the uniform subset keeps the useless layer
    student, record = prune(model, imp, layers=3)
    assert record["layers"] == [0, 1, 3] and student.config.num_hidden_layers == 3
    # dropping a layer that did nothing changes nothing
    ids = torch.tensor([text(1, 16, seed=5)[0]])
    with torch.no_grad():
        assert torch.allclose(student(ids).logits, model(ids).logits, atol=1e-5)


def test_pruning_nothing_reproduces_the_teacher():
    model = llama()
    student, record = prune(model, measure_importance(model, text()))
    ids = torch.tensor([text(1, 18, seed=7)[0]] * 2)
    with torch.no_grad():
        assert torch.allclose(student(ids).logits, model(ids).logits, atol=1e-5)
    assert record["parameters"]["student"] == record["parameters"]["teacher"]


def test_dead_mlp_channels_are_pruned_first_and_padding_does_not_count():
    model = llama()
    dead = [5, 17, 40, 41, 90]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[dead] = 0.0  # these channels never carry anything
    seqs = text()
    imp = measure_importance(model, seqs)
    assert imp["tokens"] == sum(len(s) for s in seqs)
    for scores in imp["mlp"]:
        assert max(scores[j] for j in dead) == 0.0 < min(s for j, s in enumerate(scores) if j not in dead)
    student, record = prune(model, imp, intermediate_size=MLP - len(dead))
    assert record["intermediate_size"]["importance_kept"] == {str(i): 1.0 for i in range(LAYERS)}
    ids = torch.tensor([seqs[0]])
    with torch.no_grad():  # the channels dropped contributed exactly nothing
        assert torch.allclose(student(ids).logits, model(ids).logits, atol=1e-5)


def test_width_and_depth_pruned_model_has_the_shapes_and_reloads(tmp_path):
    model = llama()
    imp = measure_importance(model, text())
    student, record = prune(model, imp, layers=2, intermediate_size=48, attention_heads=2, hidden_size=40)
    layer = student.model.layers[0]
    assert layer.self_attn.q_proj.weight.shape == (2 * HEAD_DIM, 40)
    assert layer.self_attn.k_proj.weight.shape == (KV * HEAD_DIM, 40)  # key/value heads are all kept
    assert layer.self_attn.o_proj.weight.shape == (40, 2 * HEAD_DIM)
    assert layer.mlp.gate_proj.weight.shape == (48, 40) and layer.mlp.down_proj.weight.shape == (40, 48)
    assert student.model.embed_tokens.weight.shape == (VOCAB, 40)
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()  # still tied
    # one query head per key/value group: grouped-query attention stays grouped
    for kept in record["attention_heads"]["kept"].values():
        assert len(kept) == 2 and kept[0] in (0, 1) and kept[1] in (2, 3)
    student.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert again.config.num_hidden_layers == 2 and again.config.head_dim == HEAD_DIM
    ids = torch.tensor([text(1, 10, seed=3)[0]])
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, student(ids).logits, atol=1e-6)
        out = again.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 14)
    assert record["parameters"]["student"] == sum(p.numel() for p in again.parameters())


def test_bad_sizes_and_other_architectures_are_one_clear_error():
    model = llama()
    imp = measure_importance(model, text(4))
    with pytest.raises(UserError, match="multiple of the teacher's 2 key/value heads"):
        prune(model, imp, attention_heads=3)
    with pytest.raises(UserError, match="hidden size of 62 is not a multiple of the 4 query heads kept.*use 60 or 64"):
        prune(model, imp, hidden_size=62)
    with pytest.raises(UserError, match="has 4 layers, cannot keep 9"):
        prune(model, imp, layers=9)
    with pytest.raises(UserError, match="has 96, cannot keep 500"):
        prune(model, imp, intermediate_size=500)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB))
    with pytest.raises(UserError, match="Llama-family .* 'gpt2'"):
        measure_importance(gpt2, text(2))
    with pytest.raises(UserError, match="no calibration text"):
        measure_importance(model, [])


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_the_other_llama_layouts_prune_too(kind, tmp_path):
    """Mistral and Qwen2 (with its q/k/v biases) share the layout; a width-pruned one reloads and runs."""
    from transformers import AutoConfig

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(kind, vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP,
                               num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV,
                               max_position_embeddings=128, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    imp = measure_importance(model, text())
    same, _ = prune(model, imp)
    ids = torch.tensor([text(1, 12, seed=2)[0]])
    with torch.no_grad():
        assert torch.allclose(same(ids).logits, model(ids).logits, atol=1e-5)
    student, record = prune(model, imp, layers=3, intermediate_size=64, attention_heads=2, hidden_size=48)
    assert student.lm_head.weight.shape == (VOCAB, 48)  # an untied head is narrowed too
    student.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, student(ids).logits, atol=1e-6)
    assert record["parameters"]["student"] == sum(p.numel() for p in again.parameters())
