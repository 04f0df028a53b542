import subprocess

from conftest import PYTHON


def test_help_imports_no_heavy_library():
    code = (
        "import sys; from llmdistill import cli\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'trl', 'vllm') if m in sys.modules]\n"
        "print(heavy)"
    )
    res = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


def test_help_lists_every_command():
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for cmd in ("run", "generate", "filter", "train", "eval", "validate", "inspect", "report", "retrain", "rollback",
                "push"):
        assert cmd in res.stdout


def test_missing_config_file_is_one_line_exit_2(tmp_path):
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "run", str(tmp_path / "nope.yaml")],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "config file not found" in res.stderr and "Traceback" not in res.stderr


def test_inspect_missing_directory(tmp_path):
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "inspect", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "does not exist" in res.stderr
