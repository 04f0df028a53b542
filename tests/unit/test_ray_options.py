"""generate.executor: ray without a cluster: the options are checked up front, bad input is one line, a task's
resources follow the teacher, and nothing imports Ray until a Ray run starts."""

import subprocess

import pytest

from conftest import PYTHON
from llmdistill.config import ConfigError, TeacherConfig, load_config
from llmdistill.errors import UserError
from llmdistill.generate.ray_executor import default_shards, task_resources


def cli(*args, cwd=None):
    return subprocess.run([PYTHON, "-m", "llmdistill.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("overrides, problem", [
    (["generate.ray_address=auto"], "generate: ray_address set, but executor is local: set executor: ray"),
    (["generate.ray_shards=4"], "generate: ray_shards set, but executor is local: set executor: ray"),
    (["generate.executor=ray", "generate.ray_address=http://head:8265"],
     "generate.ray_address: 'http://head:8265' is not auto, local, host:port or ray://host:port"),
    (["generate.executor=ray", "generate.ray_address=head"], "generate.ray_address: 'head' is not auto"),
    (["generate.executor=ray", "generate.ray_shards=0"], "generate.ray_shards: Input should be greater than 0"),
    (["generate.executor=dask"], "generate.executor: Input should be 'local' or 'ray'"),
])
def test_bad_ray_options_are_refused_up_front(overrides, problem):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert any(line.startswith(problem) for line in e.value.errors), e.value.errors


def test_ray_options_are_not_part_of_the_fingerprint():
    from llmdistill.pipeline import fingerprints

    local = fingerprints(load_config(None))
    on_ray = fingerprints(load_config(None, ["generate.executor=ray", "generate.ray_address=ray://head:10001",
                                             "generate.ray_shards=8"]))
    assert on_ray == local  # a Ray run resumes a local one and back


def test_task_resources_follow_the_teacher():
    hf_auto, hf_cpu = TeacherConfig(), TeacherConfig(device="cpu")
    api = TeacherConfig(backend="openai", api={"api_key_env": None})
    vllm = TeacherConfig(backend="vllm", device="cuda", vllm={"tensor_parallel_size": 2,
                                                             "engine_args": {"pipeline_parallel_size": 2}})
    assert task_resources([hf_auto], cluster_gpus=0) == {"num_cpus": 1, "num_gpus": 0}
    assert task_resources([hf_auto], cluster_gpus=8) == {"num_cpus": 1, "num_gpus": 1}
    assert task_resources([hf_cpu, api], cluster_gpus=8)["num_gpus"] == 0
    assert task_resources([api, vllm], cluster_gpus=8)["num_gpus"] == 4  # tensor x pipeline parallel
    assert default_shards({"num_cpus": 1, "num_gpus": 4}, {"CPU": 64, "GPU": 8}) == 2
    assert default_shards({"num_cpus": 1, "num_gpus": 0}, {"CPU": 6}) == 6
    assert default_shards({"num_cpus": 1, "num_gpus": 2}, {"CPU": 6, "GPU": 1}) == 1


def test_cli_errors_are_one_line(tmp_path):
    missing = subprocess.run(
        [PYTHON, "-c", "import sys; sys.modules['ray'] = None  # as if Ray were not installed\n"
         "from llmdistill.cli import main; main()", "generate", "--executor", "ray", f"output_dir={tmp_path}"],
        capture_output=True, text=True)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == ["llmdistill: error: generate.executor: ray needs Ray: pip install "
                                                   "'llmdistill[ray]'"]
    both = cli("generate", f"output_dir={tmp_path}", "--address", "auto", "--shard", "0/2")
    assert both.returncode == 2 and both.stderr.strip().splitlines() == [
        "llmdistill: error: --shard runs one shard in this process, --executor ray runs them all on Ray: give one "
        "of them"]
    forced = cli("generate", f"output_dir={tmp_path}", "--executor", "ray", "--force")
    assert forced.returncode == 2 and "--force generate cannot be combined with generate.executor: ray" in \
        forced.stderr and "Traceback" not in forced.stderr
    device = cli("generate", f"output_dir={tmp_path}", "--executor", "ray", "teacher.device=cuda:1")
    assert device.returncode == 2 and "teacher.device cuda:1: on Ray a task's GPUs are Ray's to choose" in \
        device.stderr


def test_nothing_imports_ray_before_a_ray_run():
    code = ("import sys\nimport llmdistill.cli, llmdistill.config, llmdistill.pipeline, llmdistill.generate.stage\n"
            "import llmdistill.generate.ray_executor, llmdistill.generate.shards\nprint('ray' in sys.modules)")
    assert subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_task_that_does_not_see_the_drivers_run_directory_stops_with_one_line(tmp_path):
    """No shared file system: the task finds another driver's marker (or none) and writes nothing."""
    from llmdistill import store
    from llmdistill.generate import ray_executor
    from llmdistill.pipeline import _run_shard

    cfg = load_config(None, [f"output_dir={tmp_path}", "generate.executor=ray"])
    doc = cfg.model_dump(mode="json")
    result = ray_executor._shard_task(doc, (0, 2), "fp", "nonce", _run_shard, None)
    assert result["error"] == "UserError" and "does not see the run directory" in result["message"]
    store.atomic_write_json(cfg.run_dir / ray_executor.RAY_DIR / "driver.json", {"nonce": "another driver's"})
    result = ray_executor._shard_task(doc, (0, 2), "fp", "nonce", _run_shard, None)
    assert "does not see the run directory" in result["message"]
    assert sorted(p.name for p in cfg.run_dir.rglob("*")) == [".ray", "driver.json"]  # nothing else written
    # input files that differ from the driver's: another fingerprint, refused before the shard touches anything
    with pytest.raises(UserError, match="on this node the config's input files differ from the driver's"):
        _run_shard(cfg, (0, 2), False, "0123456789abcdef")
