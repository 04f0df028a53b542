"""Bad input after a finished run: exit code 2, one error line naming the problem, nothing written lost.

Each test starts from a copy of one finished tiny run, breaks one thing, runs the real CLI, and checks
(1) the exit code, (2) that stderr holds exactly one `llmdistill: error:` line (or one config error
line), naming the file / key / line, and no traceback, (3) that every completed stage output is
byte-for-byte what it was before.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import PYTHON, make_tiny_config
from llmdistill import store
from llmdistill.config import load_config
from llmdistill.pipeline import STAGES, run_stages


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("finished")
    path, data = make_tiny_config(root, tiny)
    run_stages(load_config(path))
    return root, data


@pytest.fixture()
def run_copy(finished, tmp_path):
    """(config path, config dict, run dir): a private copy of the finished run."""
    root, data = finished
    data = yaml.safe_load(yaml.safe_dump(data))
    data["output_dir"] = str(tmp_path / "runs")
    shutil.copytree(root / "runs", tmp_path / "runs")
    for section in ("generate", "eval"):  # private prompt files too (fingerprints hash content, not paths)
        copy = tmp_path / Path(data[section]["prompts"]).name
        shutil.copy(data[section]["prompts"], copy)
        data[section]["prompts"] = str(copy)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data, tmp_path / "runs" / data["name"]


def snapshot(run_dir: Path) -> dict[str, str]:
    """sha256 of every file of every completed stage output."""
    out = {}
    for stage in STAGES:
        for p in sorted((run_dir / stage).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(run_dir))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def cli(*args, env=None):
    return subprocess.run([PYTHON, "-m", "llmdistill.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def error_line(res, code: int = 2) -> str:
    """The one error line of a failed run (log lines on stderr start with a time stamp)."""
    assert res.returncode == code, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("llmdistill: error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    return errors[0]


# --------------------------------------------------------------------------------------------- configs
def _set(section: str, key: str, value):
    def edit(data: dict) -> str:
        data[section][key] = value
        return yaml.safe_dump(data)
    return edit


@pytest.mark.parametrize("edit, expected", [
    (lambda data: yaml.safe_dump(data) + "train: {max_steps: [4\n", "not valid YAML (line "),
    (_set("train", "batch_sise", 4), "train.batch_sise: unknown key (did you mean 'batch_size'?)"),
    (_set("train", "max_steps", "many"), "train.max_steps: Input should be a valid integer"),
    (_set("teacher", "model", "./no-such-model-dir"), "teacher.model: model directory not found"),
    (lambda data: "- just\n- a list\n", "top level must be a mapping of sections"),
], ids=["yaml-syntax", "unknown-key", "wrong-type", "missing-model-dir", "not-a-mapping"])
def test_malformed_config_is_one_line(run_copy, edit, expected):
    path, data, run_dir = run_copy
    before = snapshot(run_dir)
    bad = path.with_name("bad.yaml")
    bad.write_text(edit(data))
    res = cli("run", bad)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"{bad}: ") and expected in lines[0], lines[0]
    assert snapshot(run_dir) == before


# --------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_generate_shard_keeps_the_previous_filter_output(run_copy, damage):
    path, _, run_dir = run_copy
    shard = store.list_shards(run_dir / "generate")[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"PAR1 garbage" * 50)
    before = snapshot(run_dir)
    res = cli("run", path, "--force", "filter")  # a forced rerun of filter over the damaged input
    assert "part-00001.parquet" in error_line(res)
    assert snapshot(run_dir) == before  # the previous filter, train and eval outputs are all still there
    assert store.read_success(run_dir / "filter") is not None


def test_bad_prompt_line_is_named_and_generate_output_kept(run_copy):
    path, data, run_dir = run_copy
    before = snapshot(run_dir)
    seeds = Path(data["generate"]["prompts"])
    with open(seeds, "a") as f:  # the prompts changed, so generate reruns (staged) and meets the bad line
        f.write("{oops\n")
    line = error_line(cli("run", path))
    assert f"{seeds}:13:" in line
    assert snapshot(run_dir) == before


def test_eval_prompt_with_a_byte_that_is_not_utf8_is_named(run_copy):
    path, data, run_dir = run_copy
    before = snapshot(run_dir)
    held = Path(data["eval"]["prompts"])
    n = len(held.read_bytes().splitlines())
    with open(held, "ab") as f:  # a Latin-1 line: the eval prompts changed, so eval reruns and meets it
        f.write(b'{"prompt": "r\xe9sum\xe9 of the sky", "level": 1}\n')
    line = error_line(cli("run", path))
    assert f"{held}:{n + 1}: not UTF-8 text (byte 0xe9 at character 14)" in line, line
    assert snapshot(run_dir) == before


# --------------------------------------------------------------------------------------------- models
def _broken_teacher(tiny, tmp_path, how: str) -> Path:
    d = tmp_path / f"teacher-{how}"
    shutil.copytree(tiny["teacher"], d)
    if how == "corrupt-safetensors":
        (d / "model.safetensors").write_bytes(os.urandom(4096))
    elif how == "config-not-json":
        (d / "config.json").write_text("{this is not json")
    elif how == "no-weights":
        (d / "model.safetensors").unlink()
    return d


@pytest.mark.parametrize("how, expected", [
    ("corrupt-safetensors", "Error while deserializing header"),
    ("config-not-json", "config.json: not valid JSON (Expecting property name"),  # read before transformers
    ("no-weights", "no file named model.safetensors"),
])
def test_broken_teacher_is_one_line(run_copy, tiny, tmp_path, how, expected):
    path, data, run_dir = run_copy
    before = snapshot(run_dir)
    teacher = _broken_teacher(tiny, tmp_path, how)
    line = error_line(cli("run", path, f"teacher.model={teacher}"))
    assert (f"cannot load model '{teacher}'" in line or f"cannot load tokenizer '{teacher}'" in line
            or f"{teacher / 'config.json'}: " in line), line
    assert expected in line, line
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("template, expected", [
    ("{% for m in messages %}{{ m['content'].__class__.__mro__[1].__subclasses__() }}{% endfor %}",
     "refused by the sandbox: access to attribute '__class__' of 'str' object is unsafe."),
    ("{% for m in messages %}{{ m['content'] * 10 ** 6 }}{% endfor %}", "it builds a huge string; refused"),
    ("{% for m in messages %}{{ m['content'] * 2 ** 50 }}{% endfor %}", "builds a string too large for memory"),
], ids=["sandbox", "huge-string", "memory-error"])
def test_teacher_chat_template_that_cannot_work_is_one_line(run_copy, tiny, tmp_path, template, expected):
    path, data, run_dir = run_copy
    before = snapshot(run_dir)
    teacher = _broken_teacher(tiny, tmp_path, "template")
    (teacher / "chat_template.jinja").write_text(template)
    line = error_line(cli("run", path, f"teacher.model={teacher}"))
    assert f"chat template of {teacher}: " in line and expected in line, line
    assert snapshot(run_dir) == before


def test_teacher_deleted_after_validation_is_one_line(run_copy, tiny, tmp_path):
    """The model directory exists when the config is read but is gone when the stage loads it."""
    path, data, run_dir = run_copy
    before = snapshot(run_dir)
    teacher = _broken_teacher(tiny, tmp_path, "fine")
    for f in teacher.iterdir():
        f.unlink()
    line = error_line(cli("run", path, f"teacher.model={teacher}"))
    assert f"'{teacher}'" in line
    assert snapshot(run_dir) == before


def test_pickled_weights_cannot_run_code(tiny, tmp_path):
    """A `.bin` checkpoint loads only through torch.load(weights_only=True): a pickle with code is refused."""
    import torch
    from safetensors.torch import load_file

    from llmdistill import models
    from llmdistill.errors import UserError

    marker = tmp_path / "code-ran"
    plain, evil = tmp_path / "plain", tmp_path / "evil"
    for d in (plain, evil):
        shutil.copytree(tiny["teacher"], d)
        (d / "model.safetensors").unlink()
    state = load_file(str(tiny["teacher"] / "model.safetensors"))
    torch.save(state, plain / "pytorch_model.bin")
    torch.save({**state, "payload": _Payload(str(marker))}, evil / "pytorch_model.bin")

    assert models.count_parameters(models.load_causal_lm(str(plain))) > 0  # plain tensors load
    with pytest.raises(UserError, match="cannot load model .*Weights only load failed"):
        models.load_causal_lm(str(evil))
    assert not marker.exists()


class _Payload:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


# --------------------------------------------------------------------------------------------- storage
def test_output_dir_that_cannot_be_created_is_one_line(run_copy, tmp_path):
    path, _, _ = run_copy
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = error_line(cli("run", path, f"output_dir={blocker / 'runs'}"))
    assert "[ENOTDIR] Not a directory" in line and str(blocker) in line, line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_dir_is_one_line(run_copy, tmp_path):
    path, _, _ = run_copy
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = error_line(cli("run", path, f"output_dir={ro / 'runs'}"))
    finally:
        ro.chmod(0o755)
    assert "[EACCES] Permission denied" in line and str(ro) in line, line


@pytest.mark.parametrize("temperature", [0.7, 0.0], ids=["sampling", "greedy"])
def test_teacher_returning_garbage_is_one_line(run_copy, tiny, tmp_path, temperature):
    """A teacher whose weights are NaN loads fine but produces garbage: caught before anything is written."""
    import torch
    from safetensors.torch import load_file, save_file

    path, data, run_dir = run_copy
    before = snapshot(run_dir)
    teacher = _broken_teacher(tiny, tmp_path, "nan-weights")
    state = load_file(str(teacher / "model.safetensors"))
    name = next(k for k in state if k.endswith("layers.0.mlp.down_proj.weight"))
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(teacher / "model.safetensors"), metadata={"format": "pt"})
    line = error_line(cli("run", path, f"teacher.model={teacher}", f"generate.temperature={temperature}"))
    assert f"teacher '{teacher}' returned garbage" in line and "NaN" in line, line
    assert snapshot(run_dir) == before
    assert not store.list_shards(run_dir / "generate.next")  # no shard of garbage was committed


# ------------------------------------------------------------------------------- read-only run directory
def every_file(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _with_report(run_copy) -> tuple[Path, dict, Path]:
    """The finished copy as `llmdistill run` leaves it: with its report."""
    path, data, run_dir = run_copy
    assert cli("report", run_dir).returncode == 0
    return path, data, run_dir


@pytest.fixture()
def read_only_mount(run_copy, tmp_path):
    """(config path, run dir): the finished run copied onto a tmpfs that is then remounted read-only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path, data, run_dir = _with_report(run_copy)
    mnt = tmp_path / "ro-disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        shutil.copytree(run_dir.parent, mnt / "runs")
        data["output_dir"] = str(mnt / "runs")
        path.write_text(yaml.safe_dump(data))
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield path, mnt / "runs" / data["name"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_finished_run_on_a_read_only_file_system_runs_to_a_no_op(read_only_mount):
    path, run_dir = read_only_mount
    before = every_file(run_dir)
    res = cli("run", path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert all(f"stage {s}: up to date" in res.stderr for s in ("generate", "filter", "train", "eval")), res.stderr
    assert cli("validate", path).returncode == 0
    # work to do on read-only storage: one line that says so
    line = error_line(cli("run", path, "train.max_steps=5"))
    assert "[EROFS] Read-only file system" in line and str(run_dir) in line, line
    assert every_file(run_dir) == before


def test_finished_run_in_a_directory_that_refuses_writes_runs_to_a_no_op(run_copy, monkeypatch):
    """The same with the refusal injected (runs anywhere, root or not): every call that would create,
    change or remove anything under the run directory fails with EROFS, as a read-only mount does."""
    import builtins
    import errno
    import io

    from typer.testing import CliRunner

    from llmdistill import cli as llmdistill_cli

    path, _, run_dir = _with_report(run_copy)
    before = every_file(run_dir)
    root = str(run_dir.parent)

    def refuse(target):
        if str(os.path.abspath(os.fspath(target))).startswith(root):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(target))

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(file, flags, *args, **kwargs):
        if flags & writes:
            refuse(file)
        return real_os_open(file, flags, *args, **kwargs)

    def mkdir(file, *args, **kwargs):
        if os.path.exists(file):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(file))
        refuse(file)
        return real_mkdir(file, *args, **kwargs)

    def refused(real):
        def call(file, *args, **kwargs):
            refuse(file)
            return real(file, *args, **kwargs)
        return call

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    for name in ("unlink", "remove", "rmdir", "replace", "rename", "chmod", "truncate"):
        monkeypatch.setattr(os, name, refused(getattr(os, name)))
    res = CliRunner().invoke(llmdistill_cli.app, ["run", str(path)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(llmdistill_cli.app, ["run", str(path), "train.max_steps=5"])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("llmdistill: error:")]
    assert len(errors) == 1 and "[EROFS] Read-only file system" in errors[0], res.output
    monkeypatch.undo()
    assert every_file(run_dir) == before
