"""SIGKILL `llmdistill run` at many points of every stage, rerun, and get the outputs of an uninterrupted run.

Each attempt is a real process running the CLI's `run` command, killed with SIGKILL (by itself at an exact
`LLMDISTILL_FAULT` point, or by the test at a random wall-clock time). To keep hundreds of process
starts cheap, the processes are forked from a multiprocessing forkserver that has already imported
torch and transformers (a fresh interpreter would spend ~6 s on imports per attempt).

Scenarios (one reference run each, kills chained in one run directory):
    A  a fresh run directory (stages work in place): kill points across generate, filter, train, eval
    B  a config change after a finished run (train and eval rerun staged in `<stage>.next` and swap in):
       after every kill, the previous train output is still complete
    C  random wall-clock kills of a fresh run
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from conftest import make_tiny_config
from llmdistill import store
from llmdistill.config import load_config

pytestmark = pytest.mark.slow

KILLED = -9
PRELOAD = ["torch", "transformers", "datasets", "llmdistill.cli", "llmdistill.pipeline", "llmdistill.generate.stage",
           "llmdistill.filter.stage", "llmdistill.train.stage", "llmdistill.train.trainer", "llmdistill.train.data",
           "llmdistill.evaluate.stage"]

# Scenario A: one process per entry; the first spec reached kills it (the later spec is a backstop, so that
# a process never runs past the stage the entry is about). 11 + 9 + 25 + 6 = 51 kill points.
CHAIN_A = [
    *[f"generate:{p},filter:file:1" for p in (
        "file:1", "shard-tmp:1", "shard:1", "shard:1", "shard-tmp:1", "file:2", "file-tmp:3", "file:3",
        "stage-end:1", "file-tmp:4", "file:4")],
    *[f"filter:{p},train:file:1" for p in (
        "file:1", "shard-tmp:1", "shard:1", "shard:2", "file-tmp:2", "file:2", "file:3", "stage-end:1", "file:4")],
    *[f"train:{p},eval:file:1" for p in (
        # the student: steps, a checkpoint cut short, whole checkpoints, its final save and metrics
        "file:1", "step:1", "step:2", "checkpoint-partial:1", "checkpoint:1", "step:1", "checkpoint-partial:1",
        "checkpoint:1", "file-tmp:2", "file:2", "file:3", "file:4",
        # the SFT baseline, then the stage's own _SUCCESS
        "step:1", "checkpoint-partial:1", "checkpoint:1", "step:1", "step:2", "checkpoint:1", "file:2", "file:3",
        "file-tmp:4", "file:4", "stage-end:1", "file-tmp:2", "file:2")],
    *[f"eval:{p}" for p in ("file:1", "file:2", "file-tmp:2", "stage-end:1", "file-tmp:3", "file:3")],
]
# Scenario B: train.lr changes after a finished run: train and eval rerun in <stage>.next, then swap.
# 12 + 5 = 17 kill points, among them one after train.next is complete but not swapped in, and one mid-swap.
CHANGE_B = ["train.lr=0.002"]
CHAIN_B = [
    *[f"train:{p},eval:file:1" for p in (
        "file:1", "step:1", "checkpoint:1", "step:1", "checkpoint:1", "file:2", "file:4", "step:2",
        "checkpoint:2", "file:4", "stage-end:1", "file:2")],
    *[f"eval:{p}" for p in ("file:1", "file-tmp:2", "file:2", "stage-end:1", "swap:1")],
]
RANDOM_KILLS_C = 12


def _child(config: str, overrides: list[str], fault: str | None, log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if fault:
        os.environ["LLMDISTILL_FAULT"] = fault
    else:
        os.environ.pop("LLMDISTILL_FAULT", None)
    import torch

    torch.set_num_threads(1)
    from llmdistill import cli

    cli.app(args=["run", config, *overrides], prog_name="llmdistill")


class Runner:
    """Starts `llmdistill run CONFIG OVERRIDES` in forked processes; counts the kills."""

    def __init__(self, config: Path, log: Path):
        self.config, self.log = str(config), str(log)
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)
        self.kills = 0

    def start(self, overrides=(), fault=None):
        p = self.ctx.Process(target=_child, args=(self.config, list(overrides), fault, self.log))
        p.start()
        return p

    def run(self, overrides=(), fault=None, timeout=600) -> int:
        p = self.start(overrides, fault)
        p.join(timeout)
        assert p.exitcode is not None, f"attempt with {fault} hung"
        self.kills += p.exitcode == KILLED
        return p.exitcode

    def finish(self, overrides=()) -> None:
        code = self.run(overrides)
        assert code == 0, f"the final rerun failed ({code}); log: {self.tail()}"

    def tail(self) -> str:
        return Path(self.log).read_text(errors="replace")[-4000:]


# ------------------------------------------------------------------------------------------- comparing
def weights(model_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(model_dir / "model.safetensors"))


def removed_rows(run: Path) -> list[dict]:
    return [row for p in store.list_shards(run / "filter/removed") for row in store.read_shard(p, ["id", "reason"])
            .to_pylist()]


def assert_same_outputs(run: Path, ref: Path) -> None:
    """The outputs that do not depend on timing are equal to the reference's, bit for bit."""
    for stage in ("generate", "filter", "train", "eval"):
        assert store.read_success(run / stage)["fingerprint"] == store.read_success(ref / stage)["fingerprint"]
        assert not (run / stage / "_STARTED").exists()
    leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name.endswith((".next", ".prev"))]
    assert not leftovers, leftovers

    columns = ["id", "completion", "completion_token_ids", "topk_ids", "topk_logprobs", "finish_reason"]
    for sub in ("generate", "filter"):
        assert store.read_table(run / sub, columns).equals(store.read_table(ref / sub, columns)), sub
    assert removed_rows(run) == removed_rows(ref)
    for name in ("generate", "filter"):
        assert store.read_json(run / name / "stats.json").keys() == store.read_json(ref / name / "stats.json").keys()
    assert store.read_json(run / "filter/stats.json") == store.read_json(ref / "filter/stats.json")

    # training resumes from checkpoints (weights, optimizer, scheduler and RNG states): the same students
    for variant in ("student", "sft_baseline"):
        got, want = weights(run / "train" / variant), weights(ref / "train" / variant)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{variant} {key}")
    # and the same reported metrics: the train loss covers every step, whichever attempt ran it
    got_m, want_m = store.read_json(run / "train/metrics.json"), store.read_json(ref / "train/metrics.json")
    untimed = {"seconds_this_attempt"}
    assert {k: {m: x for m, x in v.items() if m not in untimed} for k, v in got_m.items()} == \
           {k: {m: x for m, x in v.items() if m not in untimed} for k, v in want_m.items()}

    timing = {"latency_ms_per_token", "device"}
    got_e, want_e = store.read_json(run / "eval/metrics.json"), store.read_json(ref / "eval/metrics.json")
    assert got_e["models"].keys() == want_e["models"].keys()
    for name, m in want_e["models"].items():
        assert {k: v for k, v in got_e["models"][name].items() if k not in timing} == \
               {k: v for k, v in m.items() if k not in timing}, name


def staged_output_intact(run: Path, stage: str) -> bool:
    """A stage's completed output survives every kill: in place, or (mid-swap) as .prev beside a complete .next."""
    out = run / stage
    if store.read_success(out) is not None:
        return True
    return store.read_success(out.with_name(stage + ".next")) is not None and out.with_name(stage + ".prev").is_dir()


# ------------------------------------------------------------------------------------------------ test
@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("kill")
    path, data = make_tiny_config(root, tiny)
    runner = Runner(path, root / "log.txt")
    ref = load_config(path).run_dir
    runner.finish()  # the uninterrupted reference
    started = time.monotonic()
    ref_b = ref.with_name("tiny-ref-b")
    shutil.copytree(ref, ref_b)
    cfg_b = root / "config-b.yaml"
    cfg_b.write_text(yaml.safe_dump({**data, "name": "tiny-ref-b"}))
    Runner(cfg_b, root / "log.txt").finish(CHANGE_B)  # B's reference: the same change, uninterrupted
    seconds_b = time.monotonic() - started
    return root, data, runner, ref, ref_b, seconds_b


def _config_for(root: Path, data: dict, name: str) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**data, "name": name}))
    return path


def test_kill_points_across_every_stage_then_rerun(setup):
    root, data, _, ref, ref_b, _ = setup
    runner = Runner(_config_for(root, data, "chain-a"), root / "log-a.txt")
    codes = [runner.run(fault=spec) for spec in CHAIN_A]
    print("chain A:", list(zip(CHAIN_A, codes)))
    runner.finish()
    run = root / "runs" / "chain-a"
    assert_same_outputs(run, ref)
    # every entry is a real kill: a point that is never reached would make the chain a lie
    assert codes == [KILLED] * len(CHAIN_A), list(zip(CHAIN_A, codes))

    # B: a config change after the finished run: staged reruns, the old output intact after every kill
    shutil.copytree(run, root / "runs" / "chain-b")
    runner_b = Runner(_config_for(root, data, "chain-b"), root / "log-b.txt")
    run_b = root / "runs" / "chain-b"
    for spec in CHAIN_B:
        assert runner_b.run(CHANGE_B, fault=spec) == KILLED, f"{spec} not reached: {runner_b.tail()}"
        assert staged_output_intact(run_b, "train") and staged_output_intact(run_b, "eval"), spec
    runner_b.finish(CHANGE_B)
    assert_same_outputs(run_b, ref_b)
    assert runner.kills + runner_b.kills >= 50


def test_random_wall_clock_kills_then_rerun(setup):
    root, data, _, ref, _, _ = setup
    seconds = store.read_json(ref / "eval/_SUCCESS")["seconds"] + sum(
        store.read_success(ref / s)["seconds"] for s in ("generate", "filter", "train"))
    runner = Runner(_config_for(root, data, "chain-c"), root / "log-c.txt")
    rng = random.Random(7)
    for _ in range(RANDOM_KILLS_C):
        p = runner.start()
        time.sleep(rng.uniform(0.05, 0.6 * seconds))  # each attempt resumes, so most land before the end
        if p.exitcode is None:
            p.kill()
        p.join()
        runner.kills += p.exitcode == KILLED
    runner.finish()
    assert_same_outputs(root / "runs" / "chain-c", ref)
    print(f"random kills that landed before the run completed: {runner.kills} of {RANDOM_KILLS_C}")
    assert runner.kills >= RANDOM_KILLS_C // 3, "the random kills must land before the run completes"
