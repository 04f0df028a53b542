"""The README's demo: the embedded default config with the real SmolLM2-135M-Instruct, shrunk by overrides."""

import os
import re
import subprocess

import pytest
from huggingface_hub import ModelCard

from conftest import PYTHON
from llmdistill import store

SHRINK = [
    "generate.sources.0.max_prompts=4", "generate.sources.1.max_prompts=3",  # 4 task prompts, 3 general ones
    "generate.batch_size=7", "generate.max_new_tokens=12",
    "train.max_steps=2", "train.batch_size=3", "train.save_steps=1",
    "eval.max_prompts=3", "eval.max_new_tokens=8", "eval.latency_prompts=1", "eval.latency_new_tokens=4",
    "eval.tasks.0.max_items=4",
]


@pytest.mark.slow
def test_demo_config_end_to_end_with_smollm2(tmp_path):
    cmd = [PYTHON, "-m", "llmdistill.cli", "run", f"output_dir={tmp_path}", *SHRINK]  # no config: the demo
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "demo"
    manifest = store.read_manifest(run / "generate")
    assert manifest["provenance"]["vocab_size"] == 49152
    assert manifest["provenance"]["topk"] == 20
    assert manifest["counts"]["levels"] == {"1": 5, "2": 1, "3": 1}  # the general share spans the levels
    metrics = store.read_json(run / "eval" / "metrics.json")["models"]
    assert set(metrics) == {"teacher", "student", "sft_baseline"}
    assert metrics["student"]["parameters"] < 0.7 * metrics["teacher"]["parameters"]  # 18 of 30 layers
    assert metrics["student"]["tasks"]["facts"]["total"] == 4
    pruning = store.read_json(run / "train" / "student" / "pruning.json")
    assert len(pruning["layers"]) == 18 and pruning["hidden_size"]["student"] == 576
    assert f"report: {run / 'report' / 'index.html'}" in res.stdout  # the run ends with the HTML report
    assert (run / "report" / "metrics.json").exists()
    # and with the cards (docs/sharing.md): the student's, with the eval table, and the filtered data's
    card = ModelCard.load(run / "train" / "student" / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    assert f"| **student (this model)** | {metrics['student']['kl_to_teacher']:.4f} |" in card.text
    assert "| facts | contains | 4 |" in card.text
    data_card = (run / "filter" / "README.md").read_text(encoding="utf-8")
    load = re.search(r"```python\n(.*?)```", data_card, re.S).group(1)
    loaded = subprocess.run([PYTHON, "-c", load], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")})
    assert loaded.stdout.strip() == str(store.read_manifest(run / "filter")["counts"]["rows"]), loaded.stderr
    cards = {p: p.read_bytes() for p in run.rglob("README.md")}
    # a finished run reruns as a no-op
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stderr.count("skipping") == 4
    assert {p: p.read_bytes() for p in run.rglob("README.md")} == cards
