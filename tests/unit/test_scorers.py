"""Scorers: judge parsing (and a real hf judge), reward model, perplexity and teacher confidence against
references written from the definitions."""

import math

import numpy as np
import pytest
import torch

from llmdistill import config as C
from llmdistill.filter import scorers
from llmdistill.records import Sample
from llmdistill.teachers import Generation


def sample(completion, prompt="What is the capital of France?", i=0):
    return Sample(id=f"s{i}", prompt_id="p", messages=[{"role": "user", "content": prompt}], completion=completion,
                  source="s", teacher="t", gen={}, finish_reason="stop")


@pytest.mark.parametrize("text,expected", [
    ("Clear and correct.\nScore: 8", 8.0),
    ("score = 3 at first, but on reflection\nScore: **9**", 9.0),
    ("Score: 11", None),  # outside the scale
    ("I would give it eight.", None),
    ("Score: 7.5", 7.5),
])
def test_parse_judgement(text, expected):
    assert scorers.parse_judgement(text, 1, 10) == expected


def test_rubric_renders_prompt_and_answer():
    assert C.JudgeStep(name="judge").prompt is None  # the built-in rubric
    text = scorers.render_rubric(scorers.DEFAULT_RUBRIC, prompt="Q?", completion="A.", scale_min=1, scale_max=5)
    assert "Q?" in text and "A." in text and "Score: N" in text and "from 1 to 5" in text


class FixedJudge:
    """A deterministic teacher for the parsing path (the real hf judge is tested below)."""

    name = "fixed"

    def __init__(self, replies):
        self.replies = replies
        self.prompts = []

    def generate(self, prompts, seed):
        self.prompts.extend(prompts)
        return [Generation(r, [], np.zeros((0, 1)), np.zeros((0, 1)), "stop", 0) for r in self.replies]

    def provenance(self):
        return {}


def test_judge_scores_and_counts_unparsed():
    step = C.JudgeStep(name="judge", key="quality")
    judge = scorers.JudgeScorer(step, teacher=FixedJudge(["Good.\nScore: 9", "No idea"]))
    assert judge.score([sample("Paris."), sample("Lyon.", i=1)]) == [{"quality": 9.0}, {}]
    assert judge.unparsed == 1
    assert "Paris." in judge.teacher.prompts[0][0]["content"]


def test_real_hf_judge_runs_through_build_teacher(tiny):
    step = C.JudgeStep(name="judge", teacher=C.TeacherConfig(model=str(tiny["teacher"]), device="cpu"),
                       max_new_tokens=6)
    judge = scorers.JudgeScorer(step)
    out = judge.score([sample("Paris."), sample("Rome.", i=1)])
    # a random tiny model writes no valid "Score: N": both rows stay unscored, and are counted
    assert len(out) == 2 and all(r == {} or 1 <= r["judge"] <= 10 for r in out)
    assert judge.unparsed == sum(r == {} for r in out)


def test_perplexity_matches_a_direct_computation(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    step = C.PerplexityStep(name="perplexity", model=str(tiny["teacher"]))
    batch = [sample("the cat sat on the mat"), sample("one two three four five six seven", prompt="count", i=1)]
    got = scorers.PerplexityScorer(step).score(batch)
    tok = AutoTokenizer.from_pretrained(tiny["teacher"])
    model = AutoModelForCausalLM.from_pretrained(tiny["teacher"]).eval()
    for s, g in zip(batch, got):
        prompt = tok.apply_chat_template(s.messages, add_generation_prompt=True, tokenize=True)
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
        comp = tok(s.completion, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + comp])
        labels = ids.clone()
        labels[0, : len(prompt)] = -100
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()
        assert g["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)


def test_reward_model_scores_with_its_head(tmp_path, tiny):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny["teacher"])
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    rm = LlamaForSequenceClassification(cfg).eval()
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    step = C.RewardModelStep(name="reward_model", model=str(tmp_path / "rm"), key="reward")
    batch = [sample("Paris."), sample("It is Paris, a city on the Seine.", i=1)]
    got = scorers.RewardScorer(step).score(batch)
    for s, g in zip(batch, got):
        text = tok.apply_chat_template([*s.messages, {"role": "assistant", "content": s.completion}], tokenize=False)
        with torch.no_grad():
            ref = rm(**tok(text, return_tensors="pt")).logits[0, 0].item()
        assert g["reward"] == pytest.approx(ref, abs=1e-4)  # batched with padding == alone
    bad = C.RewardModelStep(name="reward_model", model=str(tmp_path / "rm"), label=3)
    with pytest.raises(Exception, match="label 3 does not exist"):
        scorers.RewardScorer(bad).score(batch)


def test_teacher_confidence_from_the_definition():
    rng = np.random.default_rng(0)
    t, k = 6, 4
    ids = np.stack([rng.permutation(50)[:k] for _ in range(t)])
    probs = rng.dirichlet(np.ones(k + 3), size=t)[:, :k]
    lps = np.log(probs)
    tokens = [int(ids[i, i % k]) if i != 5 else 999 for i in range(t)]  # the last token is outside the top-k
    lp, ent = scorers.teacher_confidence(tokens, ids, lps)
    chosen, ents = [], []
    for i in range(t):
        tail = 1 - probs[i].sum()
        chosen.append(math.log(probs[i][i % k]) if i != 5 else math.log(tail))
        ents.append(-sum(p * math.log(p) for p in probs[i]) - tail * math.log(tail))
    assert lp == pytest.approx(sum(chosen) / t) and ent == pytest.approx(sum(ents) / t)


def test_a_failed_judge_generation_is_unparsed_not_a_crash():
    """A judge reply that failed (no text: a prompt too long for the judge, an API error) counts as unparsed."""
    step = C.JudgeStep(name="judge", key="quality")
    failed = Generation(None, None, None, None, "error", 0, error="prompt too long")
    judge = scorers.JudgeScorer(step, teacher=FixedJudge([]))
    judge.teacher.generate = lambda prompts, seed: [failed]
    assert judge.score([sample("Paris.")]) == [{}]
    assert judge.unparsed == 1


CUSTOM_RM = """
import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class CustomRMConfig(PretrainedConfig):
    model_type = "custom_rm"

    def __init__(self, vocab_size=8, hidden_size=8, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        super().__init__(**kwargs)


class CustomRM(PreTrainedModel):
    config_class = CustomRMConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.score = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
        return SequenceClassifierOutput(logits=self.score(pooled))
"""


def test_reward_model_with_its_own_code_loads_only_when_trusted(tmp_path, tiny):
    """A reward model whose repository ships its modeling code (auto_map) needs trust_remote_code."""
    import json

    from transformers import AutoTokenizer

    from llmdistill.errors import UserError

    tok = AutoTokenizer.from_pretrained(tiny["teacher"])
    out = tmp_path / "custom_rm"
    code: dict = {}
    exec(CUSTOM_RM, code)
    code["CustomRM"](code["CustomRMConfig"](vocab_size=len(tok), num_labels=1)).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "custom_rm.py").write_text(CUSTOM_RM)
    config = json.loads((out / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom_rm.CustomRMConfig",
                          "AutoModelForSequenceClassification": "custom_rm.CustomRM"}
    (out / "config.json").write_text(json.dumps(config))
    batch = [sample("Paris.")]
    with pytest.raises(UserError, match="ships its own model code; set trust_remote_code: true"):
        scorers.RewardScorer(C.RewardModelStep(name="reward_model", model=str(out))).score(batch)
    step = C.RewardModelStep(name="reward_model", model=str(out), key="reward", trust_remote_code=True)
    got = scorers.RewardScorer(step).score(batch)
    assert math.isfinite(got[0]["reward"])
