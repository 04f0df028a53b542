"""Curriculum building: prompt sources, the template sandbox, routing, batching, shard assignment,
difficulty measures and the evolution bookkeeping."""

import json

import numpy as np
import pytest
import yaml

from conftest import write_prompts
from llmdistill import prompts as sources
from llmdistill.config import EvolveConfig, load_config, validate_dict
from llmdistill.errors import UserError
from llmdistill.generate import difficulty, evolve
from llmdistill.generate.stage import Item, make_batches, route, shard_of


def gen_config(tmp_path, generate: dict, **top) -> object:
    """A config whose generate section is `generate` (train/eval sections filled with minimal values)."""
    held = write_prompts(tmp_path / "held.jsonl", n_per_level=1)
    data = {"output_dir": str(tmp_path / "runs"), "generate": generate, "train": {"student": {"teacher_layers": [0]}},
            "eval": {"prompts": str(held)}, **top}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


# ----------------------------------------------------------------------------------------------- files
def test_file_sources_jsonl_and_text_with_overrides(tmp_path):
    jsonl = write_prompts(tmp_path / "a.jsonl", n_per_level=2)
    text = tmp_path / "b.txt"
    text.write_text("What is a river?\n\n  Name two colours.  \n")
    cfg = gen_config(tmp_path, {"prompts": str(jsonl), "sources": [
        {"kind": "file", "path": str(text), "level": 4, "source": "plain", "tags": ["easy"]},
        {"kind": "file", "path": [str(jsonl)], "level": 0, "source": "again"}]})
    loaded = sources.load_sources(cfg.generate)
    assert len(loaded.prompts) == 6 + 2 + 6
    plain = [p for p in loaded.prompts if p.source == "plain"]
    assert [p.messages[-1]["content"] for p in plain] == ["What is a river?", "Name two colours."]
    assert all(p.level == 4 and p.tags == ["easy"] for p in plain)
    assert {p.level for p in loaded.prompts if p.source == "again"} == {0}
    ordered = sources.curriculum_order(loaded.prompts)
    assert [p.level for p in ordered] == sorted(p.level for p in ordered)


def write_bad_file(path):
    good = json.dumps({"prompt": "fine", "level": 1})
    path.write_text("\n".join([good, "{not json", json.dumps({"prompt": ""}), json.dumps({"prompt": "x", "level": -1}),
                               json.dumps(["a list"]), good.replace("fine", "also fine")]) + "\n")
    return path


def test_a_source_gives_a_share_spread_over_it(tmp_path):
    """A task's prompts in full beside a spread share of general data (the mix of task-focused distillation)."""
    task = write_prompts(tmp_path / "task.jsonl", n_per_level=10, levels=(1,), tag="task")
    general = write_prompts(tmp_path / "general.jsonl", n_per_level=10, levels=(1, 2, 3), tag="general")
    cfg = gen_config(tmp_path, {"sources": [{"kind": "file", "path": str(task)},
                                            {"kind": "file", "path": str(general), "max_prompts": 6}]})
    got = sources.load_sources(cfg.generate).prompts
    assert len(got) == 16 and sum("task" in p.messages[-1]["content"] for p in got) == 10
    assert sorted(p.level for p in got[10:]) == [1, 1, 2, 2, 3, 3]  # spread over the file, not its head


def test_bad_lines_fatal_by_default_names_file_and_line(tmp_path):
    bad = write_bad_file(tmp_path / "bad.jsonl")
    cfg = gen_config(tmp_path, {"prompts": str(bad)})
    with pytest.raises(UserError, match=r"bad\.jsonl:2: not valid JSON"):
        sources.load_sources(cfg.generate)


def test_bad_lines_skipped_and_reported(tmp_path):
    bad = write_bad_file(tmp_path / "bad.jsonl")
    cfg = gen_config(tmp_path, {"prompts": str(bad), "on_bad_line": "skip"})
    loaded = sources.load_sources(cfg.generate)
    assert [p.messages[-1]["content"] for p in loaded.prompts] == ["fine", "also fine"]
    assert [line.split(": ", 1)[0].rsplit(":", 1)[1] for line in loaded.bad_lines] == ["2", "3", "4", "5"]
    assert "'level' must be a non-negative integer" in loaded.bad_lines[2]


def test_bad_utf8_byte_is_named_by_file_and_line_in_both_modes(tmp_path):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"prompt": "fine", "level": 1}\n{"prompt": "na\xefve", "level": 1}\n{"prompt": "also fine"}\n')
    cfg = gen_config(tmp_path, {"prompts": str(bad)})
    with pytest.raises(UserError, match=r"latin1\.jsonl:2: not UTF-8 text \(byte 0xef at character 15\)"):
        sources.load_sources(cfg.generate)
    text = tmp_path / "latin1.txt"
    text.write_bytes(b"fine\nna\xefve\n")
    cfg = gen_config(tmp_path, {"prompts": str(bad), "on_bad_line": "skip",
                                "sources": [{"kind": "file", "path": str(text)}]})
    loaded = sources.load_sources(cfg.generate)
    assert [p.messages[-1]["content"] for p in loaded.prompts] == ["fine", "also fine", "fine"]
    assert loaded.bad_lines == [f"{bad}:2: not UTF-8 text (byte 0xef at character 15)",
                                f"{text}:2: not UTF-8 text (byte 0xef at character 3)"]


def test_template_that_is_not_utf8_names_the_line(tmp_path):
    template = tmp_path / "t.j2"
    template.write_bytes(b"What is {{ a }}?\n{# caf\xe9 #}\n")
    cfg = gen_config(tmp_path, {"sources": [{"kind": "template", "template": str(template), "rows": [{"a": 1}]}]})
    with pytest.raises(UserError, match=r"t\.j2:2: not UTF-8 text \(byte 0xe9"):
        sources.load_sources(cfg.generate)


def test_generate_needs_some_prompts(tmp_path):
    with pytest.raises(UserError, match="generate.prompts .* or generate.sources"):
        gen_config(tmp_path, {})


def test_unknown_key_in_a_source_gets_did_you_mean(tmp_path):
    p = write_prompts(tmp_path / "a.jsonl")
    with pytest.raises(UserError, match=r"generate\.sources\.0\.levle: unknown key \(did you mean 'level'\?\)"):
        gen_config(tmp_path, {"sources": [{"kind": "file", "path": str(p), "levle": 2}]})


# ------------------------------------------------------------------------------------------- templates
def test_template_grid_and_rows(tmp_path):
    t = tmp_path / "ask.md.j2"
    t.write_text("{#- comment -#}\nExplain {{ thing }} to {{ who }}.{% if who == 'a child' %} Be simple.{% endif %}")
    cfg = gen_config(tmp_path, {"sources": [{"kind": "template", "template": str(t), "level": 2, "tags": ["t"],
                                             "grid": {"thing": ["rain", "snow"], "who": ["a child", "an expert"]},
                                             "rows": [{"thing": "fog", "who": "me", "answer": 42}]}]})
    prompts = sources.load_sources(cfg.generate).prompts
    texts = [p.messages[-1]["content"] for p in prompts]
    assert texts == ["Explain rain to a child. Be simple.", "Explain rain to an expert.",
                     "Explain snow to a child. Be simple.", "Explain snow to an expert.", "Explain fog to me."]
    assert {p.source for p in prompts} == {"ask"} and {p.level for p in prompts} == {2}
    assert prompts[-1].answer == "42" and prompts[0].answer is None


@pytest.mark.parametrize("body, problem", [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "refused by the sandbox"),
    ("{{ cycler.__init__.__globals__.os.popen('id').read() }}", "refused by the sandbox"),
    ("{{ thing.__class__ }}", "refused by the sandbox"),
    ("{% set xs = [1] %}{{ xs.append(2) }}", "refused by the sandbox"),
    ("{% include '/etc/passwd' %}", "cannot render"),
    ("{% import '/etc/hostname' as h %}", "cannot render"),
    ("{{ missing_variable }}", "undefined variable"),
    ("{% if %}", "syntax error"),
])
def test_template_sandbox_refuses_escapes_and_file_access(tmp_path, body, problem):
    t = tmp_path / "evil.md.j2"
    t.write_text(body)
    cfg = gen_config(tmp_path, {"sources": [{"kind": "template", "template": str(t), "rows": [{"thing": "x"}]}]})
    with pytest.raises(UserError, match=problem) as e:
        sources.load_sources(cfg.generate)
    assert "evil.md.j2" in str(e.value) and "root:" not in str(e.value)


def test_template_source_needs_variables(tmp_path):
    t = tmp_path / "t.j2"
    t.write_text("hi")
    with pytest.raises(UserError, match="needs `grid` or `rows`"):
        gen_config(tmp_path, {"sources": [{"kind": "template", "template": str(t)}]})


def test_shipped_templates_render(tmp_path):
    from llmdistill.generate.evolve import PROMPTS_DIR

    text = sources.render((PROMPTS_DIR / "explain_concept.md.j2").read_text(),
                             {"concept": "gravity", "audience": "a ten-year-old", "length": "two sentences"}, "x")
    assert text == "Explain gravity to a ten-year-old in two sentences. Use one everyday example."
    for op in EvolveConfig().operators:
        rendered = sources.render(evolve.operator_template(op), {"prompt": "What is 2 + 2?"}, op)
        assert "What is 2 + 2?" in rendered and rendered.endswith("Rewritten prompt:")


# ----------------------------------------------------------------------------------------- hf datasets
def test_hf_dataset_from_save_to_disk_and_from_json(tmp_path):
    import datasets

    rows = {"question": ["q one", "q two", "q three"], "difficulty": [2, 1, 3], "gold": ["a", "b", "c"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "saved"))
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({"text": q}) + "\n" for q in rows["question"]))
    cfg = gen_config(tmp_path, {"sources": [
        {"kind": "hf_dataset", "path": str(tmp_path / "saved"), "prompt_column": "question",
         "level_column": "difficulty", "answer_column": "gold", "source": "saved"},
        {"kind": "hf_dataset", "path": "json", "data_files": str(jsonl), "prompt_column": "text", "level": 5,
         "max_rows": 2}]})
    prompts = sources.load_sources(cfg.generate).prompts
    saved = [p for p in prompts if p.source == "saved"]
    assert [(p.messages[-1]["content"], p.level, p.answer) for p in saved] == [
        ("q one", 2, "a"), ("q two", 1, "b"), ("q three", 3, "c")]
    from_json = [p for p in prompts if p.source == "json"]
    assert [(p.messages[-1]["content"], p.level) for p in from_json] == [("q one", 5), ("q two", 5)]


def test_hf_dataset_missing_column_and_missing_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"q": ["x"]}).save_to_disk(str(tmp_path / "d"))
    cfg = gen_config(tmp_path, {"sources": [{"kind": "hf_dataset", "path": str(tmp_path / "d")}]})
    with pytest.raises(UserError, match=r"no column 'prompt' \(columns: q\)"):
        sources.load_sources(cfg.generate)
    with pytest.raises(UserError, match="dataset not found"):
        gen_config(tmp_path, {"sources": [{"kind": "hf_dataset", "path": "./nowhere"}]})


# ------------------------------------------------------------------------------- routing and batching
def prompt(source="s", level=1, tags=(), text="q"):
    return sources.Prompt(messages=[{"role": "user", "content": text}], level=level, source=source, tags=list(tags))


def test_routing_first_match_then_default(tmp_path):
    p = write_prompts(tmp_path / "a.jsonl")
    cfg = gen_config(tmp_path, {"prompts": str(p), "routing": [
        {"teacher": "mathy", "sources": ["math/*"], "levels": [2, 3]},
        {"teacher": "coder", "tags": ["code"]},
        {"teacher": "mathy", "tags": ["math"]}]},
        teachers={"mathy": {"model": "org/math-model"}, "coder": {"model": "org/code-model"}})
    rules = cfg.generate.routing
    assert route(rules, prompt("math/add", 2)) == "mathy"
    assert route(rules, prompt("math/add", 1)) == "default"  # every criterion of a rule must match
    assert route(rules, prompt("x", 1, ["code", "math"])) == "coder"  # first matching rule wins
    assert route(rules, prompt("x", 1, ["math"])) == "mathy"
    assert route(rules, prompt("x", 1)) == "default"


def test_routing_to_an_unknown_teacher_is_a_config_error(tmp_path):
    p = write_prompts(tmp_path / "a.jsonl")
    with pytest.raises(UserError, match="unknown teacher mathy"):
        gen_config(tmp_path, {"prompts": str(p), "routing": [{"teacher": "mathy", "levels": [1]}]})
    with pytest.raises(UserError, match="name 'default' is taken"):
        gen_config(tmp_path, {"prompts": str(p)}, teachers={"default": {"model": "org/x"}})


def test_batches_are_single_teacher_and_keep_plan_order():
    teachers = ["a", "a", "a", "b", "a", "b", "b", "b", "b", "a"]
    items = [Item(prompt(text=str(i)), 0, str(i), t) for i, t in enumerate(teachers)]
    batches = make_batches(items, 3)
    assert [[it.id for it in b] for b in batches] == [["0", "1", "2"], ["3"], ["4"], ["5", "6", "7"], ["8"], ["9"]]
    assert all(len({it.teacher for it in b}) == 1 for b in batches)


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_are_disjoint_covering_and_balanced(count):
    n_batches, batch_size, shard_rows = 100, 4, 16  # blocks of 4 batches
    owner = [shard_of(j, count, batch_size, shard_rows) for j in range(n_batches)]
    assert set(owner) == set(range(count))  # every shard gets work; each batch exactly one owner
    assert all(owner[j] == owner[j - j % 4] for j in range(n_batches))  # whole blocks
    sizes = [owner.count(i) for i in range(count)]
    assert max(sizes) - min(sizes) <= 4
    assert owner == [shard_of(j, count, batch_size, shard_rows) for j in range(n_batches)]  # deterministic


# ---------------------------------------------------------------------------------------------- difficulty
def test_entropy_with_full_vocabulary_is_exact_and_top_k_is_a_lower_bound():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 50)) * 2
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    exact = float((-(np.exp(logp) * logp).sum(1)).mean())
    order = np.argsort(-logp, axis=1)
    full = np.take_along_axis(logp, order, 1)
    assert difficulty.mean_entropy(full) == pytest.approx(exact, rel=1e-9)
    top5 = full[:, :5]
    assert difficulty.mean_entropy(top5) < exact
    tail = 1 - np.exp(top5).sum(1)
    reference = (-(np.exp(top5) * top5).sum(1) - tail * np.log(tail)).mean()
    assert difficulty.mean_entropy(top5) == pytest.approx(reference, rel=1e-9)


def test_nll_counts_misses_at_the_kth_logprob_and_measure_keys():
    ids = np.array([[3, 1], [2, 0]])
    lps = np.log(np.array([[0.6, 0.3], [0.5, 0.2]]))
    nll = difficulty.mean_nll([1, 7], ids, lps)  # token 1 is in the top-k at 0.3; token 7 is not: 0.2
    assert nll == pytest.approx(-(np.log(0.3) + np.log(0.2)) / 2)
    m = difficulty.measure([1, 7], ids, lps)
    assert set(m) == {"teacher_nll", "teacher_entropy", "completion_tokens"} and m["completion_tokens"] == 2
    assert difficulty.measure([], None, None) == {}
    summary = difficulty.summary_by_level([1, 1, 2], [{"teacher_nll": 1.0}, {"teacher_nll": 3.0}, {}])
    assert summary == {"1": {"samples": 2, "mean_teacher_nll": 2.0}, "2": {"samples": 1}}


# ------------------------------------------------------------------------------------------------ evolve
@pytest.mark.parametrize("text, finish, reason", [
    (None, "stop", "failed"),
    ("A long enough rewrite that is cut", "length", "truncated"),
    ("  ", "stop", "empty"),
    ("what is 2 + 2?", "stop", "unchanged"),
    ("Why?", "stop", "too_short"),
    ("x" * 3000, "stop", "too_long"),
    ("Boil an egg. Please provide the rewritten prompt that meets all these criteria.", "stop",
     "leaked_instructions"),
])
def test_evolve_rejects_with_a_reason(text, finish, reason):
    assert evolve.clean(text, finish, "What is 2 + 2?", EvolveConfig())[1] == reason


def test_evolve_cleans_labels_and_quotes():
    text, reason = evolve.clean('Rewritten prompt: "What is 2 + 2, shown in binary?"', "stop", "What is 2 + 2?",
                                EvolveConfig())
    assert (text, reason) == ("What is 2 + 2, shown in binary?", None)


class RewritingTeacher:
    """A deterministic stand-in for the evolution bookkeeping (the real teacher runs in the integration
    test): appends the operator's name, so every answer is checkable; every fourth is empty."""

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, seed):
        from llmdistill.teachers import Generation

        self.calls += 1
        out = []
        for messages in prompts:
            ask = messages[-1]["content"]
            instruction, original = ask.split("Prompt: ", 1)
            original = original.split("\n", 1)[0]
            op = next(o for o in ("constraint", "depth", "specific", "reasoning steps") if o in instruction)
            text = "" if len(original) % 4 == 0 else f"{original} (harder: {op})"
            out.append(Generation(text, [1], np.zeros((1, 1)), np.zeros((1, 1)), "stop", 3))
        return out


def test_evolve_rounds_levels_tags_cache_and_determinism(tmp_path):
    seeds = [prompt(f"src{i % 2}", level=1 + i % 2, tags=["math"], text=f"Question number {i}?") for i in range(7)]
    ev = EvolveConfig(rounds=2, per_prompt=2)
    teacher = RewritingTeacher()
    out, stats = evolve.evolve(seeds, ev, 0, 4, tmp_path / "evolve.jsonl", lambda: teacher)
    assert stats["requested"] == stats["accepted"] + sum(stats["rejected"].values())
    round1 = [p for p in out if p.messages[-1]["content"].count("harder") == 1]
    round2 = [p for p in out if p.messages[-1]["content"].count("harder") == 2]
    assert len(round1) == 14 and len(round1) + len(round2) == len(out)  # 7 seeds x 2 operators, all accepted
    # round 2 rewrites round 1; the stand-in answers empty when the text length is a multiple of 4,
    # which here is exactly the round-1 prompts made by add_reasoning
    reasoned = sum("evol:add_reasoning" in p.tags for p in round1)
    assert stats == {"rounds": 2, "requested": 14 + 28, "accepted": 14 + 28 - 2 * reasoned,
                     "rejected": {"empty": 2 * reasoned}}
    assert {p.level for p in round1} == {2, 3} and {p.level for p in round2} == {3, 4}
    by_id = {p.id: p for p in seeds + out}
    for p in out:
        parent = by_id[next(t for t in p.tags if t.startswith("parent:"))[len("parent:"):]]
        assert p.level == parent.level + 1 and p.source == parent.source and "math" in p.tags
        op = next(t for t in p.tags if t.startswith("evol:"))[len("evol:"):]
        assert op in ev.operators and p.messages[-1]["content"].startswith(parent.messages[-1]["content"])
    # every prompt got two distinct operators
    ops_per_parent = {}
    for p in out:
        ops_per_parent.setdefault(next(t for t in p.tags if t.startswith("parent:")), []).append(p.tags[-2])
    assert all(len(v) == len(set(v)) for v in ops_per_parent.values())
    # a rerun reads the cache and asks nothing; the result is identical
    again = RewritingTeacher()
    out2, stats2 = evolve.evolve(seeds, ev, 0, 4, tmp_path / "evolve.jsonl", lambda: again)
    assert again.calls == 0 and [p.id for p in out2] == [p.id for p in out] and stats2 == stats
    # a torn last line (a kill mid-write) costs one re-ask of that batch only
    cache = tmp_path / "evolve.jsonl"
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])
    third = RewritingTeacher()
    out3, _ = evolve.evolve(seeds, ev, 0, 4, cache, lambda: third)
    assert third.calls == 1 and [p.id for p in out3] == [p.id for p in out]


def test_evolve_config_checks():
    with pytest.raises(ValueError, match="per_prompt"):
        EvolveConfig(per_prompt=3, operators=["deepen", "concretise"])
    with pytest.raises(ValueError, match="distinct"):
        EvolveConfig(operators=["deepen", "deepen"])


def test_validate_dict_accepts_multi_teacher(tmp_path):
    p = write_prompts(tmp_path / "a.jsonl")
    cfg = validate_dict({"generate": {"prompts": str(p), "routing": [{"teacher": "big", "levels": [3]}],
                                      "evolve": {"teacher": "big"}},
                         "teachers": {"big": {"model": "org/big", "backend": "openai"}},
                         "train": {"student": {"teacher_layers": [0]}}, "eval": {"prompts": str(p)}})
    assert cfg.teacher_config("big").model == "org/big" and cfg.teacher_config("default") is cfg.teacher


def test_plan_groups_teachers_within_a_level_and_keeps_level_order(tmp_path):
    from llmdistill.generate.stage import plan

    rows = [{"prompt": f"q{i}", "level": 1 + i // 6, "tags": ["math"] if i % 2 else []} for i in range(12)]
    seeds = tmp_path / "s.jsonl"
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = gen_config(tmp_path, {"prompts": str(seeds), "routing": [{"teacher": "m", "tags": ["math"]}]},
                     teachers={"m": {"model": "org/m"}})
    items = plan(cfg, sources.curriculum_order(sources.load_sources(cfg.generate).prompts))
    assert [(it.prompt.level, it.teacher) for it in items] == (
        [(1, "default")] * 3 + [(1, "m")] * 3 + [(2, "default")] * 3 + [(2, "m")] * 3)
    assert [it.prompt.messages[0]["content"] for it in items[:6]] == ["q0", "q2", "q4", "q1", "q3", "q5"]
    assert len(make_batches(items, 16)) == 4
