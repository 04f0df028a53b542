"""The public Python API (llmdistill/api.py, exported from the package): its names, a light `import llmdistill`,
errors raised as exceptions (never printed, never an exit), `load_dataset` and `load_metrics` on real shard and
metrics files. No model is loaded here; tests/integration/test_python_api.py runs stages."""

import importlib
import inspect
import json
import logging
import pkgutil
import subprocess

import pytest

import llmdistill
from conftest import PYTHON, write_prompts
from llmdistill import api, records, store
from llmdistill.runner import RunLock

PUBLIC = {
    "load_config", "run", "run_generate", "merge_shards", "run_annotate", "run_filter", "run_train", "run_eval",
    "RunResult", "status", "plan_memory", "load_dataset", "load_metrics", "write_report",
    "run_retrain", "rollback", "RetrainResult",
    "load_bert_config", "distill_bert", "BertResult",
    "Config", "BertDistillConfig",
    "UserError", "ConfigError", "LockedError", "BudgetExceeded", "StorageError",
    "forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd", "divergence", "sparse_divergence",
    "dense_divergence", "cross_entropy",
}


def test_all_lists_exactly_the_public_names_and_each_resolves():
    assert len(llmdistill.__all__) == len(set(llmdistill.__all__))
    assert set(llmdistill.__all__) == PUBLIC
    for name in llmdistill.__all__:
        value = getattr(llmdistill, name)
        assert getattr(value, "__name__", None) == name, name  # the object itself, not a module or an alias
        assert (value.__doc__ or "").strip(), f"{name} has no docstring"
    # every public function and class of api.py is exported (a new one cannot be forgotten in __all__)
    defined = {n for n, v in vars(api).items() if not n.startswith("_") and (inspect.isfunction(v) or
               inspect.isclass(v)) and v.__module__ == "llmdistill.api"}
    assert defined <= PUBLIC, defined - PUBLIC
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        llmdistill.nope  # noqa: B018


def test_every_api_function_is_typed():
    for name, value in vars(api).items():
        if inspect.isfunction(value) and value.__module__ == "llmdistill.api" and not name.startswith("_"):
            sig = inspect.signature(value)
            assert sig.return_annotation is not inspect.Signature.empty, name
            assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()), name


def test_no_public_name_is_shadowed_by_a_subpackage():
    """`llmdistill.filter` is the filter stage's package: importing it would replace a function of that name,
    which is why the stage functions are run_filter, ... ."""
    submodules = {m.name for m in pkgutil.iter_modules(llmdistill.__path__)}
    assert not PUBLIC & submodules
    importlib.import_module("llmdistill.filter.stage")  # what running the stage does
    assert inspect.isfunction(llmdistill.run_filter)


def test_import_llmdistill_imports_no_torch(tmp_path):
    """The package, the config and the stage status load without torch, transformers or datasets."""
    code = ("import sys, llmdistill\n"
            "assert llmdistill.__version__\n"
            "before = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
            f"cfg = llmdistill.load_config(None, ['output_dir={tmp_path}'])\n"
            "status = llmdistill.status(cfg)\n"
            "after = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
            "print(before, after, status['generate'])\n")
    res = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[] [] missing"


def test_bad_input_is_raised_never_printed_nor_an_exit(tmp_path, capsys):
    with pytest.raises(llmdistill.ConfigError) as e:
        llmdistill.load_config(None, ["train.max_stepz=3", "eval.prompts=nope.jsonl"])
    assert e.value.errors[0] == "train.max_stepz: unknown key (did you mean 'max_steps'?)"
    assert e.value.errors[1].startswith("eval.prompts.0: file not found:")
    with pytest.raises(llmdistill.ConfigError, match="config file not found"):
        llmdistill.run(tmp_path / "missing.yaml")
    with pytest.raises(llmdistill.ConfigError, match="is not of the form key.sub=value"):
        llmdistill.run_filter(None, "train.max_steps")  # one string is one override
    cfg = llmdistill.load_config(None, [f"output_dir={tmp_path}"])
    with pytest.raises(llmdistill.UserError, match=r"--force takes a stage name \(generate, annotate, filter, "
                       r"train, eval\), got trian"):
        llmdistill.run(cfg, force="trian")
    with pytest.raises(llmdistill.UserError, match="stages takes stage names .*, got evaluate"):
        llmdistill.run(cfg, stages=["generate", "evaluate"])
    with pytest.raises(llmdistill.UserError, match=r"shard takes \(i, n\) with 0 <= i < n, got \(2, 2\)"):
        llmdistill.run_generate(cfg, shard=(2, 2))
    with pytest.raises(llmdistill.UserError, match=r"shard takes \(i, n\) with 0 <= i < n, got '0/2'"):
        llmdistill.run_generate(cfg, shard="0/2")
    with pytest.raises(llmdistill.UserError, match="needs the generate stage's output, which is missing"):
        llmdistill.run_filter(cfg)
    with pytest.raises(TypeError, match="config must be a path, a Config or None"):
        llmdistill.run({"name": "x"})
    with pytest.raises(llmdistill.ConfigError, match="config file not found"):
        llmdistill.distill_bert(tmp_path / "bert.yaml")
    with pytest.raises(TypeError, match="runs with llmdistill.run"):
        llmdistill.distill_bert(cfg)
    assert capsys.readouterr() == ("", "")
    assert not any((tmp_path / "demo" / stage).exists() for stage in ("generate", "filter"))  # nothing started


def test_overrides_on_a_loaded_config_make_a_new_one(tmp_path, monkeypatch):
    cfg = llmdistill.load_config(None, [f"output_dir={tmp_path}", "train.max_steps=3"])
    monkeypatch.chdir(tmp_path)
    write_prompts(tmp_path / "mine.jsonl")
    changed = llmdistill.load_config(cfg, ["train.batch_size=2", "name=small", "eval.prompts=mine.jsonl"])
    assert (changed.train.batch_size, changed.train.max_steps, changed.run_dir) == (2, 3, tmp_path / "small")
    assert changed.eval.prompts == [tmp_path / "mine.jsonl"]  # relative to the current directory, as in a CLI
    assert (cfg.train.batch_size, cfg.name) == (8, "demo")  # the loaded one is left as it was
    assert llmdistill.load_config(cfg) is cfg
    with pytest.raises(llmdistill.ConfigError) as e:
        llmdistill.load_config(cfg, ["train.batch_size=-1"])
    assert e.value.errors == ["train.batch_size: Input should be greater than or equal to 1 (got -1)"]


def _sample(i: int) -> records.Sample:
    messages = [{"role": "user", "content": f"question {i}"}]
    gen = {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 8, "seed": 0, "sample_index": 0}
    return records.Sample(id=records.record_id(messages, "test", "chat", "t", gen, 0),
                          prompt_id=records.prompt_id(messages, "test"), messages=messages, source="test",
                          teacher="t", gen=gen, level=1 + i % 2, completion=f"answer {i}", finish_reason="stop",
                          completion_token_ids=[1, 2], topk_ids=[[1, 3], [2, 4]], topk_logprobs=[[-0.1, -2.5]] * 2)


@pytest.fixture()
def run_dir(tmp_path):
    """A run directory whose generate and filter stages completed (real shards, as the stages write them), and
    whose train stage started but did not finish."""
    run = tmp_path / "runs" / "tiny"
    samples = [_sample(i) for i in range(5)]
    store.ShardWriter(run / "generate").write(samples)
    store.mark_success(run / "generate", {"stage": "generate"})
    store.ShardWriter(run / "filter").write(samples[:3])
    store.ShardWriter(run / "filter" / "removed", records.removed_schema()).write(samples[3:], ["exact_dup", "empty"])
    store.mark_success(run / "filter", {"stage": "filter"})
    (run / "train").mkdir()
    (run / "train" / "_STARTED").write_text("abc")
    return run


def test_load_dataset_reads_a_completed_stage(run_dir):
    kept = llmdistill.load_dataset(run_dir)  # the filter stage by default
    assert kept["completion"] == ["answer 0", "answer 1", "answer 2"]
    assert kept[0]["messages"] == [{"role": "user", "content": "question 0"}]
    assert kept[0]["topk_ids"] == [[1, 3], [2, 4]]
    assert len(llmdistill.load_dataset(str(run_dir), "generate")) == 5
    removed = llmdistill.load_dataset(run_dir, "filter", removed=True)
    assert removed["reason"] == ["exact_dup", "empty"] and removed["completion"] == ["answer 3", "answer 4"]
    light = llmdistill.load_dataset(run_dir, columns=["id", "level"])
    assert light.column_names == ["id", "level"] and light["level"] == [1, 2, 1]


@pytest.mark.parametrize(("stage", "removed", "message"), [
    ("annotate", False, r"tiny/annotate does not exist: the annotate stage has not run in this run directory"),
    ("train", False, r"the train stage writes no dataset: load_dataset reads generate, annotate, filter"),
    ("evaluate", False, r"no stage is named 'evaluate': load_dataset reads generate, annotate, filter"),
    ("generate", True, r"removed=True reads the rows the filter stage removed: give stage='filter', not 'generate'"),
])
def test_load_dataset_names_what_is_missing(run_dir, stage, removed, message):
    with pytest.raises(llmdistill.UserError, match=message):
        llmdistill.load_dataset(run_dir, stage, removed=removed)


def test_load_dataset_refuses_an_unfinished_stage_and_a_missing_run(run_dir, tmp_path):
    (run_dir / "filter" / store.SUCCESS).unlink()  # as after a kill during the stage
    with pytest.raises(llmdistill.UserError, match=r"tiny/filter is not complete \(no _SUCCESS\): the filter stage "
                       "has not finished"):
        llmdistill.load_dataset(run_dir)
    with pytest.raises(llmdistill.UserError, match=r"run directory .*/nope does not exist"):
        llmdistill.load_dataset(tmp_path / "nope")


def test_load_metrics(run_dir):
    with pytest.raises(llmdistill.UserError, match="tiny/eval does not exist: the eval stage has not run"):
        llmdistill.load_metrics(run_dir)
    metrics = {"models": {"teacher": {"top1_agreement": 1.0}, "student": {"top1_agreement": 0.5}}}
    store.atomic_write_json(run_dir / "eval" / "metrics.json", metrics)
    with pytest.raises(llmdistill.UserError, match="tiny/eval is not complete"):
        llmdistill.load_metrics(run_dir)
    store.mark_success(run_dir / "eval", {"stage": "eval"})
    assert llmdistill.load_metrics(run_dir) == json.loads((run_dir / "eval" / "metrics.json").read_text())


def test_write_report_on_a_partial_run_and_a_missing_one(run_dir, tmp_path):
    page = llmdistill.write_report(run_dir)
    assert page == run_dir / "report" / "index.html" and "<html" in page.read_text(encoding="utf-8")
    with pytest.raises(llmdistill.UserError, match="not a run directory"):
        llmdistill.write_report(tmp_path / "nope")


def test_a_locked_run_directory_is_an_exception_and_nothing_is_lost(run_dir, tmp_path):
    before = llmdistill.load_dataset(run_dir, "generate")["id"]
    with RunLock(run_dir), pytest.raises(llmdistill.LockedError, match="is in use by another llmdistill process"):
        llmdistill.run_generate(_tiny_config(tmp_path), force=True)
    assert llmdistill.load_dataset(run_dir, "generate")["id"] == before


def _tiny_config(tmp_path) -> llmdistill.Config:
    """A config whose run directory is the fixture's (tmp/runs/tiny); its teacher is never loaded here."""
    return llmdistill.load_config(None, [f"output_dir={tmp_path / 'runs'}", "name=tiny"])


def test_the_api_adds_no_logging_handler(run_dir):
    logger = logging.getLogger("llmdistill")
    handlers, level = list(logger.handlers), logger.level
    llmdistill.load_dataset(run_dir)
    llmdistill.load_config(None)
    assert logger.handlers == handlers and logger.level == level
