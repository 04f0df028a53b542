"""Every loss, teacher-signal kind and training mode trains end to end on the tiny models (CPU),
and the tokenizer preflight's three outcomes."""

import pytest

from conftest import build_llama, build_tokenizer, make_tiny_config
from llmdistill import store
from llmdistill.config import DIVERGENCE_NAMES, load_config
from llmdistill.errors import UserError
from llmdistill.pipeline import run_stages

FAST = ["train.max_steps=2", "train.save_steps=2", "train.sft_baseline=false", "eval.latency_prompts=1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny):
    path, _ = make_tiny_config(tmp_path_factory.mktemp("modes"), tiny)
    cfg = load_config(path, FAST)
    run_stages(cfg, ("generate", "filter"))
    return path


def train(path, *overrides):
    cfg = load_config(path, [*FAST, *overrides])
    out = run_stages(cfg)
    assert out["generate"] == out["filter"] == "skipped" and out["train"] == out["eval"] == "ran"
    metrics = store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]
    assert metrics["steps"] == 2
    assert store.read_json(cfg.run_dir / "eval" / "metrics.json")["models"]["student"]["tokens"] > 0
    return metrics


@pytest.mark.parametrize("name", DIVERGENCE_NAMES)
@pytest.mark.parametrize("signal", ["stored", "live"])
def test_each_divergence_with_each_signal(base, name, signal):
    m = train(base, f"train.loss=[{{name: {name}, weight: 1.0, temperature: 2.0}}, {{name: ce, weight: 0.5}}]",
              f"train.teacher_signal={signal}")
    assert m["preflight"] == "exact"
    logged = m["last_logged"]
    assert logged[f"loss_{name}"] >= 0 and logged["loss_ce"] > 0


def test_sequence_level_kd(base):
    m = train(base, "train.mode=seq_kd", "train.loss=[{name: ce, weight: 1.0}]")
    assert m["mode"] == "seq_kd"


@pytest.mark.parametrize("trainer", ["distillation", "gkd"])
def test_on_policy_through_trl(base, trainer):
    extra = ["train.on_policy.lmbda=0.5"] if trainer == "gkd" else []
    m = train(base, "train.mode=on_policy", f"train.on_policy.trainer={trainer}", "train.on_policy.max_new_tokens=4",
              *extra)
    assert m["mode"] == "on_policy" and m["last_logged"]["loss"] >= 0


def test_lmbda_is_refused_for_the_distillation_trainer(base):
    with pytest.raises(Exception, match="lmbda and seq_kd apply to on_policy.trainer: gkd only"):
        load_config(base, ["train.on_policy.lmbda=0.3"])


# ------------------------------------------------------------------------------------------- preflight
def test_preflight_exact_truncate_refuse(base, tiny, tmp_path):
    # exact: the layer-subset student (see above); truncate: the same tokenizer, 6 extra logit rows
    tok = build_tokenizer(tmp_path / "tok")
    padded = build_llama(tmp_path / "padded", tok, layers=2)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(padded)
    model.resize_token_embeddings(len(tok) + 6)
    model.save_pretrained(padded)
    cfg = load_config(base, [*FAST, f"train.student.model={padded}", "train.student.teacher_layers=null"])
    teacher_vocab = store.read_manifest(cfg.run_dir / "filter")["provenance"]["vocab_size"]
    assert teacher_vocab == len(tok)
    run_stages(cfg)
    assert store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]["preflight"] == "truncate"
    # refuse: a different vocabulary with a live teacher (cross-tokenizer works from the stored top-k), before
    # any training step
    cfg = load_config(base, [*FAST, f"train.student.model={tiny['other']}", "train.student.teacher_layers=null",
                             "train.teacher_signal=live"])
    with pytest.raises(UserError, match="cross-tokenizer distillation works from the stored top-k"):
        run_stages(cfg)
    # the refused rerun is staged beside the finished one: no step taken, the earlier student untouched
    assert not (cfg.run_dir / "train.next" / "checkpoints" / "student").exists()
    assert store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]["preflight"] == "truncate"
    # ... and the option it names works: sequence-level KD re-tokenises the teacher's text
    # (the default loss keeps its forward_kl term in the config: seq_kd trains on the text with CE alone)
    cfg = load_config(base, [*FAST, f"train.student.model={tiny['other']}", "train.student.teacher_layers=null",
                             "train.mode=seq_kd"])
    assert any(x.name == "forward_kl" for x in cfg.train.loss)
    run_stages(cfg)
    assert store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]["preflight"] == "retokenize"
    evaluated = store.read_json(cfg.run_dir / "eval" / "metrics.json")["models"]["student"]
    assert "another tokenizer" in evaluated["note"] and evaluated["latency_ms_per_token"] > 0


def test_cross_tokenizer_distillation_from_the_stored_top_k(base, tiny):
    """A student on another tokenizer: chosen automatically, tokens aligned by bytes, shares in the metrics."""
    cfg = load_config(base, [*FAST, f"train.student.model={tiny['other']}", "train.student.teacher_layers=null",
                             "name=cross-tokenizer"])
    run_stages(cfg)
    m = store.read_json(cfg.run_dir / "train" / "metrics.json")["student"]
    assert m["preflight"] == "cross_tokenizer" and m["steps"] == 2
    x = m["cross_tokenizer"]
    assert x["tokens"] > 0 and 0 < x["exact"] < 1 and abs(x["exact"] + x["uld"] + x["none"] - 1) < 1e-3
    assert m["last_logged"]["loss_forward_kl"] > 0 and m["last_logged"]["loss_ce"] > 0
    from llmdistill.report import write_report

    html = write_report(cfg.run_dir).read_text(encoding="utf-8")
    assert f"{100 * x['exact']:.1f} % aligned exactly to a teacher token" in html
    # on-policy needs one tokenizer
    cfg = load_config(base, [*FAST, f"train.student.model={tiny['other']}", "train.student.teacher_layers=null",
                             "train.mode=on_policy"])
    with pytest.raises(UserError, match="on-policy distillation needs|the student's tokenizer differs"):
        run_stages(cfg)


def test_lora_trains_adapters_and_saves_a_merged_student(base):
    import torch
    from transformers import AutoModelForCausalLM

    m = train(base, "train.lora={r: 4, alpha: 8}", "train.lr=0.05")
    assert m["lora"]["r"] == 4
    cfg = load_config(base, [*FAST, "train.lora={r: 4, alpha: 8}", "train.lr=0.05"])
    student_dir = cfg.run_dir / "train" / "student"
    assert (student_dir / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(student_dir)
    assert not any("lora" in n for n, _ in merged.named_parameters())  # a plain model
    teacher = AutoModelForCausalLM.from_pretrained(cfg.teacher.model)
    # LoRA changed the adapted projections, and only them: the embeddings are the teacher's
    assert torch.equal(merged.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    q_student, q_teacher = merged.model.layers[0].self_attn.q_proj, teacher.model.layers[0].self_attn.q_proj
    assert not torch.equal(q_student.weight, q_teacher.weight)


def test_paced_curriculum_with_closed_loop_end_to_end(base):
    m = train(base, "train.curriculum={pacing: root, start: 0.3, closed_loop_every: 1}")
    assert m["steps"] == 2


def test_curriculum_rules(base):
    with pytest.raises(Exception, match="curriculum pacing needs train.max_steps"):
        load_config(base, ["train.max_steps=null", "train.curriculum.pacing=linear"])
    with pytest.raises(Exception, match="closed_loop_every needs a pacing"):
        load_config(base, ["train.curriculum.closed_loop_every=5"])


def test_held_out_eval_loss_every_n_steps(base):
    m = train(base, "train.eval_every=1", "train.eval_fraction=0.3")
    cfg = load_config(base, [*FAST, "train.eval_every=1", "train.eval_fraction=0.3"])
    history = store.read_json(cfg.run_dir / "train" / "log_history.student.json")
    assert [h["step"] for h in history if "eval_loss" in h] == [1, 2]
    assert m["steps"] == 2


def test_gradable_task_accuracy_for_every_model(base, tmp_path):
    import json

    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"say {w}", "level": 1, "answer": w}) + "\n"
                            for w in ("blue", "one", "cat")))
    train(base, f"eval.tasks=[{{name: words, prompts: {task}, grader: contains, max_new_tokens: 4}}]")
    cfg = load_config(base, FAST)
    models = store.read_json(cfg.run_dir / "eval" / "metrics.json")["models"]
    for name in ("teacher", "student"):
        t = models[name]["tasks"]["words"]
        assert t["total"] == 3 and 0 <= t["correct"] <= 3 and t["grader"] == "contains"
        assert len(t["examples"]) == 3
    graded = [json.loads(line) for line in (cfg.run_dir / "eval" / "tasks.jsonl").read_text().splitlines()]
    assert sorted(r["model"] for r in graded) == ["student"] * 3 + ["teacher"] * 3
    assert {r["answer"] for r in graded} == {"blue", "one", "cat"}
    cached = list((cfg.run_dir / "cache").glob("eval-task-*.json"))
    assert len(cached) == 1 and len(store.read_json(cached[0])) == 3  # the teacher answers once per task


def test_a_task_on_the_held_out_prompts_reuses_the_teachers_references(base, tmp_path):
    """eval.prompts and a task on the same file at the same length: the teacher's greedy replies are the
    references it already wrote, not a second generation."""
    import json

    task = tmp_path / "same.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"name the colour {w}", "level": 1, "answer": w}) + "\n"
                            for w in ("red", "green")))
    cfg = load_config(base, FAST)
    before = set((cfg.run_dir / "cache").glob("eval-task-*.json"))
    assert run_stages(load_config(base, [*FAST, f"eval.prompts={task}", "eval.max_new_tokens=4",
                                         f"eval.tasks=[{{name: same, prompts: {task}, grader: contains, "
                                         "max_new_tokens: 4}]"]))["eval"] == "ran"
    assert set((cfg.run_dir / "cache").glob("eval-task-*.json")) == before
    refs = [store.read_json(p) for p in (cfg.run_dir / "cache").glob("eval-refs-*.json")]
    texts = {r["text"] for rs in refs for r in rs}
    graded = [json.loads(line) for line in (cfg.run_dir / "eval" / "tasks.jsonl").read_text().splitlines()]
    teacher = [r["output"] for r in graded if r["model"] == "teacher"]
    assert len(teacher) == 2 and set(teacher) <= texts


PRUNED = "train.student={prune: {layers: 2, intermediate_size: 96, hidden_size: 48, calibration_samples: 6}}"


def test_a_pruned_student_trains_and_carries_its_pruning_record(base):
    cfg = load_config(base, [*FAST, PRUNED])
    m = train(base, PRUNED)
    record = store.read_json(cfg.run_dir / "train" / "student" / "pruning.json")
    assert len(record["layers"]) == 2 and record["method"] == "importance"
    assert record["hidden_size"] == {**record["hidden_size"], "teacher": 64, "student": 48}
    assert record["calibration"]["samples"] == 6 and record["calibration"]["tokens"] > 0
    assert m["parameters"] == record["parameters"]["student"] < record["parameters"]["teacher"]
    assert len(list((cfg.run_dir / "cache").glob("importance-*.json"))) == 1  # another size would not remeasure
    from llmdistill.report import write_report

    page = write_report(cfg.run_dir).read_text()
    assert 'id="plot-pruning"' in page and 'id="table-pruning"' in page and "importance kept" in page
    # the most influential layers were kept
    bi = record["block_influence"]
    assert sorted(bi, reverse=True)[:2] == sorted((bi[i] for i in record["layers"]), reverse=True)


def test_prune_command_writes_a_student_and_refuses_without_calibration(base, tmp_path):
    from typer.testing import CliRunner

    from llmdistill import cli

    res = CliRunner().invoke(cli.app, ["prune", str(base), *FAST, PRUNED, "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "pruned: layers" in res.output and (tmp_path / "s" / "pruning.json").is_file()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "s").config.hidden_size == 48
    res = CliRunner().invoke(cli.app, ["prune", str(base), *FAST, "output_dir=" + str(tmp_path / "none"), PRUNED])
    assert res.exit_code == 2 and "no calibration text" in res.output
    res = CliRunner().invoke(cli.app, ["prune", str(base), *FAST])
    assert res.exit_code == 2 and "no train.student.prune" in res.output


def test_train_seed_repeats_training_on_the_same_data(base):
    first = train(base, "train.shuffle=true")  # train() checks that generate and filter were not rerun
    again = train(base, "train.shuffle=true", "train.seed=1")
    assert first["train_loss"] != again["train_loss"]
    assert train(base, "train.shuffle=true")["train_loss"] == first["train_loss"]
