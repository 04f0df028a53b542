"""The answer graders (llmdistill/graders.py) on real-looking model replies, their config checks, the eval stage's
check of a task file, and the filter step `correct` (rejection sampling) on rows and through a real filter run."""

import importlib.util
import json
import re
import subprocess

import numpy as np
import pytest

from conftest import PYTHON, REPO
from llmdistill import config as C
from llmdistill import graders, records, store
from llmdistill.errors import UserError
from llmdistill.graders import grade

SENTIMENT = ["positive", "negative", "neutral"]


def test_exact():
    assert grade("exact", "  Blue! ", "blue")
    assert grade("exact", "“Blue.”", "blue")  # typographic quotes are punctuation too
    assert grade("exact", "New   York\n", "new york")
    assert not grade("exact", "light blue", "blue")
    assert not grade("exact", "The answer is blue.", "blue")
    assert not grade("exact", "", "")  # an empty gold answer is never matched


@pytest.mark.parametrize("reply, gold, right", [
    ("The capital of France is Paris.", "Paris", True),
    ("Parisian cuisine is famous all over the world.", "Paris", False),  # whole words only
    ("It's New York City, of course.", "new york", True),
    ("York is in England, and New Jersey is not.", "new york", False),  # in order and next to each other
    ("The Hague is the seat of the Dutch government.", "The Hague", True),
    ("The seat of government is Hague.", "the Hague", True),  # articles are ignored on both sides
    ("It is the capital of the United Kingdom.", "United Kingdom", True),
    ("Carrots are rich in vitamin A.", "vitamin A", True),
    ("Oranges are rich in vitamin C.", "vitamin A", False),  # a last-word "a" is no article
    ("Die Hauptstadt von Bayern ist München.", "münchen", True),
    ("SÃO PAULO is the largest city in Brazil.", "São Paulo", True),
    ("Die STRASSE ist lang.", "Straße", True),  # case folding
    ("The answer is ＰＡＲＩＳ.", "Paris", True),  # fullwidth letters (NFKC)
    ("The answer is Pa\u00adris.", "Paris", True),  # a soft hyphen does not split the word
    ("Tokyo—the capital of Japan—is huge.", "Tokyo", True),  # an em dash separates words
    ("A Tokyo-based company.", "Tokyo", False),  # a hyphen joins them (as before)
    ("I am not sure.", "", False),
])
def test_contains(reply, gold, right):
    assert grade("contains", reply, gold) is right


def _demo_grader():
    spec = importlib.util.spec_from_file_location("build_task", REPO / "data" / "demo" / "build_task.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.grade_contains


def _contains_before(output: str, answer: str) -> bool:
    """`contains` as it was before articles were ignored (llmdistill/evaluate/metrics.py)."""
    def normal(text):
        return " ".join(re.sub(r"[^\w\s-]", " ", text.lower()).split())

    return bool(normal(answer)) and f" {normal(answer)} " in f" {normal(output)} "


def test_ignoring_articles_leaves_the_demo_task_score_as_it_was():
    """On replies built from every item of data/demo/task_facts.jsonl (one-word gold answers), `contains` says
    what it said before articles were ignored, and what the demo's reference grader (build_task.grade_contains)
    says, except where a hyphen joins the answer to another word: the reference splits words there."""
    reference = _demo_grader()
    items = [json.loads(line) for line in (REPO / "data" / "demo" / "task_facts.jsonl").read_text().splitlines()]
    golds = [it["answer"] for it in items]
    checked = right = 0
    for i, it in enumerate(items):
        gold, other = it["answer"], golds[(i + 1) % len(golds)]
        for reply in (f"The answer is {gold}.", f"{gold.upper()}!", f"It's the {gold}, I think.", f"{gold}s",
                      f"an {gold}ian thing", it["prompt"], f"Not {other}, but {gold}", f"Probably {other}.",
                      f"a {gold}-like one", f"the {gold} the", f"A: {gold}", f"The {other} and a {gold}"):
            new = graders.contains(reply, gold)
            assert new == _contains_before(reply, gold), (reply, gold)
            assert new == reference(reply, gold) or "-" in reply, (reply, gold)
            checked += 1
            right += new
    assert checked == 12 * len(items) == 1056 and 0 < right < checked


@pytest.mark.parametrize("reply, gold, right", [
    ("3 + 4 = 7, so the answer is 7.", "7", True),
    ("That makes 1,200 apples in total.", "1200", True),
    ("That makes 1200 apples in total.", "1,200", True),
    ("The ticket costs $3.50.", "3.5", True),
    ("The total is 1,234,567.25 dollars", "1234567.25", True),
    ("The temperature dropped to -4 °C overnight.", "-4", True),
    ("The temperature dropped to \u22124 °C overnight.", "-4", True),  # a Unicode minus sign
    ("It takes 3-4 hours.", "4", True),  # a range: the hyphen is no minus sign
    ("0.1 + 0.2 = 0.30000000000000004", "0.3", True),  # compared as floats, with a tiny tolerance
    ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day.\n#### 18", "18", True),
    ("The answer is 17, I am quite sure.", "18", False),
    ("The answer is 7 (see step 2 of 3).", "7", False),  # the last number counts
    ("Version 2.5.1 fixed it", "2.5", True),
    ("The answer is seven.", "7", False),
    ("The answer is ٧.", "7", True),  # any Unicode decimal digits (Arabic-Indic here)
])
def test_numeric(reply, gold, right):
    assert grade("numeric", reply, gold) is right
    assert grade("number", reply, gold) is right  # the old name, the same grader


def test_regex_with_groups_and_flags():
    verdict = r"^\s*(?P<verdict>true|false)\b"
    assert grade("regex", "  TRUE. The statement holds because 2 is even.", verdict)
    assert not grade("regex", "It is not true.", verdict)  # anchored at the start
    distance = r"(\d{1,3}(?:,\d{3})*)\s*(?:km|kilomet(?:er|re)s)"
    assert grade("regex", "The Moon is about 384,400 kilometres from Earth.", distance)
    assert not grade("regex", "The Moon is very far away.", distance)
    assert grade("regex", "A naïve approach works here.", r"\bNAÏVE\b")  # case-insensitive, Unicode
    assert grade("regex", "Answer: (B) Mitochondria", r"\(b\)|\bmitochondria\b")


@pytest.mark.parametrize("reply, gold, right", [
    ("Negative. Although the flight was on time, nothing else was positive.", "negative", True),
    ("Negative. Although the flight was on time, nothing else was positive.", "positive", False),
    ("This tweet is positive, not negative.", "negative", False),  # two labels: the first one counts
    ("Sentiment: NEUTRAL", "neutral", True),
    ("I'd say it's positively thrilled.", "positive", False),  # whole words only
    ("I cannot tell.", "neutral", False),
])
def test_choice(reply, gold, right):
    assert grade("choice", reply, gold, SENTIMENT) is right


def test_choice_prefers_the_longer_label_at_the_same_place():
    labels = ["positive", "very positive", "negative"]
    assert grade("choice", "Very positive! They loved it.", "very positive", labels)
    assert not grade("choice", "Very positive! They loved it.", "positive", labels)
    assert graders.first_choice("Quite positive, really", labels) == "positive"
    assert not grade("choice", "positive", "positive", None)  # no label set: nothing is right


def test_the_config_literal_is_the_table_and_its_aliases():
    names = (*graders.GRADERS, *graders.ALIASES)
    assert C.literal_values(C.TaskConfig, "grader") == names
    assert C.literal_values(C.CorrectStep, "grader") == names
    assert set(graders.ALIASES.values()) <= set(graders.GRADERS) and graders.NEEDS_CHOICES <= set(graders.GRADERS)
    for name in graders.GRADERS:
        assert f"{name}: " in C.GRADER_HELP
    assert C.TaskConfig(name="t", prompts=[str(REPO / "README.md")], grader="number").grader == "numeric"
    assert C.CorrectStep(name="correct", grader="number").grader == "numeric"
    with pytest.raises(ValueError, match="unknown grader 'fuzzy'"):
        grade("fuzzy", "a", "a")


@pytest.mark.parametrize("fields, message", [
    ({"grader": "choice"}, "the choice grader needs `choices`"),
    ({"grader": "choice", "choices": ["yes"]}, "at least two labels"),
    ({"grader": "choice", "choices": ["Positive", "positive!"]}, "the same after normalisation"),
    ({"grader": "choice", "choices": ["yes", "?!"]}, "empty after normalisation"),
    ({"grader": "contains", "choices": ["yes", "no"]}, "applies to the choice grader only"),
])
def test_choice_config_is_checked(fields, message):
    with pytest.raises(ValueError, match=message):
        C.CorrectStep(name="correct", **fields)
    with pytest.raises(ValueError, match=message):
        C.TaskConfig(name="t", prompts=[str(REPO / "README.md")], **fields)


@pytest.mark.parametrize("grader, answer, choices, message", [
    ("regex", "(unclosed", None, "is not a valid regular expression"),
    ("regex", "[a-", None, "is not a valid regular expression"),
    ("choice", "mixed", SENTIMENT, "is not one of the choices"),
    ("numeric", "seven", None, "has no number"),
    ("contains", "?!", None, "empty after normalisation"),
])
def test_an_answer_the_grader_cannot_use_is_a_user_error_naming_the_item(grader, answer, choices, message):
    items = [("tasks.jsonl:1", {"regex": "fine", "choice": "neutral", "numeric": "7", "contains": "ok"}[grader]),
             ("tasks.jsonl:2", answer)]
    with pytest.raises(UserError, match=f"eval.tasks t: tasks.jsonl:2: answer .* {message}"):
        graders.check_answers(grader, items, choices, "eval.tasks t")
    graders.check_answers(grader, items[:1], choices, "eval.tasks t")  # the good one passes


def _config(tmp_path, **sections):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"prompt": "Why is the sky blue?"}) + "\n")
    return C.validate_dict({"name": "g", "output_dir": str(tmp_path / "runs"), "teacher": {"model": "smollm2-135m"
                            "-instruct"}, "generate": {"prompts": str(seeds)}, "train": {"student": {"model": "smo"
                            "llm2-135m-instruct"}}, "eval": {"prompts": str(seeds)}, **sections})


def test_the_eval_stage_checks_a_task_file_when_it_loads_it(tmp_path):
    from llmdistill.evaluate.stage import task_items

    task = tmp_path / "verdicts.jsonl"
    task.write_text(json.dumps({"prompt": "Is 4 even? Answer true or false.", "answer": r"^\s*true\b"}) + "\n"
                    + json.dumps({"prompt": "Is 5 even? Answer true or false.", "answer": r"^\s*(false\b"}) + "\n")
    cfg = _config(tmp_path, eval={"prompts": str(tmp_path / "seeds.jsonl"),
                                  "tasks": [{"name": "parity", "prompts": str(task), "grader": "regex"}]})
    with pytest.raises(UserError, match=r"eval.tasks parity: .*verdicts.jsonl:2: answer .*not a valid regular "
                                        r"expression \(missing \), unterminated subpattern"):
        task_items(cfg, cfg.eval.tasks[0])
    task.write_text(json.dumps({"prompt": "How did the customer feel?", "answer": "Negative"}) + "\n")
    cfg = _config(tmp_path, eval={"prompts": str(tmp_path / "seeds.jsonl"), "tasks": [
        {"name": "mood", "prompts": str(task), "grader": "choice", "choices": ["positive", "negative"]}]})
    assert [p.answer for p in task_items(cfg, cfg.eval.tasks[0])] == ["Negative"]


def test_graders_import_without_torch():
    code = "import sys, llmdistill.graders, llmdistill.config; assert 'torch' not in sys.modules, 'torch'"
    res = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]


# ------------------------------------------------------------------------------------- the filter step `correct`
GSM = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many " \
      "clips did Natalia sell altogether in April and May?"
ROWS = [  # (prompt, gold answer or None, the teacher's completion, kept by `correct` with grader numeric)
    (GSM, "72", "In May she sold 48 / 2 = 24 clips.\nAltogether she sold 48 + 24 = 72 clips.\n#### 72", True),
    (GSM, "72", "In May she sold 48 * 2 = 96 clips.\nAltogether she sold 48 + 96 = 144 clips.\n#### 144", False),
    ("A shop sells pens at $1.25 each. How much do 960 pens cost?", "1200",
     "960 pens cost 960 × $1.25 = $1,200.", True),
    ("Write a haiku about autumn.", None, "Crisp leaves drift and fall,\nthe maple lets go of red —\nquiet "
     "afternoon.", True),  # general data: no gold answer, kept untouched
    ("What is 15 minus 19?", "-4", "15 − 19 = −4", True),
    ("What is 15 minus 19?", "-4", "I'm sorry, I can't do arithmetic.", False),
]


def rows(prompts=ROWS, k=3):
    out = []
    for i, (prompt, answer, completion, _) in enumerate(prompts):
        t = max(1, len(completion.split()))
        ids = np.arange(t * k, dtype=np.int32).reshape(t, k)
        lps = np.log(np.full((t, k), 1.0 / (k + 1))).astype(np.float16)
        out.append(records.Sample(
            id=f"{i:04d}-" + records.stable_hash([prompt, completion], 8), prompt_id=records.stable_hash([prompt], 8),
            messages=[{"role": "user", "content": prompt}], completion=completion, source="gsm8k", teacher="t",
            gen={}, finish_reason="stop", metadata={"answer": answer} if answer is not None else {},
            completion_token_ids=ids[:, 0].tolist(), topk_ids=ids, topk_logprobs=lps))
    return out


def check(step, samples):
    from llmdistill.filter import steps

    fn = steps.implementation(step)(step)
    return [fn(s) for s in samples]


def test_correct_step_drops_wrong_answers_and_keeps_rows_without_one():
    step = C.CorrectStep(name="correct", grader="number")
    assert check(step, rows()) == [None if keep else "incorrect:numeric" for *_, keep in ROWS]
    labelled = rows([("@united thanks for the upgrade today, great way to start my week!", "positive",
                      "Sentiment: positive. The customer thanks the airline.", True),
                     ("@united lost my bag again, third time this year.", "negative",
                      "Positive? No: negative, the customer is angry about a lost bag.", False),
                     ("Summarise the tweet.", None, "A customer is happy.", True)])
    sentiment = C.CorrectStep(name="correct", grader="choice", choices=SENTIMENT)
    assert check(sentiment, labelled) == [None, "incorrect:choice", None]
    assert check(C.CorrectStep(name="correct"), labelled) == [None, None, None]  # contains: the label is there


def test_correct_step_grades_only_the_tagged_rows_when_tags_are_set():
    """Demo-like seeds mix number answers (tag math) and word answers: a numeric step limited to the math rows
    leaves the word answers alone (without `tags` they would stop it: no number to compare)."""
    mixed = rows([("Compute 58 + 88.", "146", "58 + 88 = 146", True),
                  ("Compute 58 + 88.", "146", "58 + 88 = 136", False),
                  ("Tom is taller than Ana, and Ana is taller than Raj. Who is the shortest?", "Raj",
                   "Raj is the shortest of the three.", True)])
    for s, tags in zip(mixed, (["math"], ["math"], ["reasoning"])):
        s.metadata["tags"] = tags
    math_only = C.CorrectStep(name="correct", grader="numeric", tags=["math"])
    assert check(math_only, mixed) == [None, "incorrect:numeric", None]
    assert check(C.CorrectStep(name="correct", grader="numeric", sources=["elsewhere"]), mixed) == [None] * 3
    with pytest.raises(UserError, match="answer 'Raj' has no number"):
        check(C.CorrectStep(name="correct", grader="numeric"), mixed)


def test_correct_step_names_the_row_whose_answer_it_cannot_use():
    bad = rows([("Is 9 prime? Reply yes or no.", "(no", "No, 9 = 3 × 3.", True)])
    with pytest.raises(UserError, match=rf"filter step correct: row {bad[0].id} \(prompt {bad[0].prompt_id}, "
                                        r"source gsm8k\): answer '\(no' is not a valid regular expression"):
        check(C.CorrectStep(name="correct", grader="regex"), bad)
    mixed = rows([("@united ok flight.", "mixed", "Neutral.", True)])
    with pytest.raises(UserError, match="answer 'mixed' is not one of the choices"):
        check(C.CorrectStep(name="correct", grader="choice", choices=SENTIMENT), mixed)


def test_correct_step_in_a_real_filter_run(tmp_path):
    from llmdistill.pipeline import fingerprints, run_stages

    cfg = _config(tmp_path, filter={"steps": [{"name": "failed"}, {"name": "correct", "grader": "numeric"}],
                                    "read_rows": 2})
    samples = rows()
    out = cfg.run_dir / "generate"
    writer = store.ShardWriter(out)
    writer.write(samples[:3])
    writer.write(samples[3:])
    fp = fingerprints(cfg)["generate"]
    store.write_manifest(out, {"fingerprint": fp, "counts": {"rows": len(samples)}, "topk": 3})
    store.mark_success(out, {"stage": "generate", "fingerprint": fp, "seconds": 0.0})
    run_stages(cfg, ("filter",), standalone=True)
    kept = store.read_table(cfg.run_dir / "filter")
    removed = store.read_table(cfg.run_dir / "filter" / "removed")
    assert kept.column("id").to_pylist() == [s.id for s, (*_, keep) in zip(samples, ROWS) if keep]
    assert dict(zip(removed.column("id").to_pylist(), removed.column("reason").to_pylist())) == {
        samples[1].id: "incorrect:numeric", samples[5].id: "incorrect:numeric"}
    gen = store.read_table(out)
    keep_rows = [i for i, (*_, keep) in enumerate(ROWS) if keep]
    for col in ("completion", "completion_token_ids", "topk_ids", "topk_logprobs", "metadata"):
        assert kept.column(col).equals(gen.take(keep_rows).column(col)), col
    stats = store.read_json(cfg.run_dir / "filter" / "stats.json")
    assert stats["removed_by_reason"] == {"incorrect:numeric": 2}
