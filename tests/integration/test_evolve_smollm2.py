"""Evolution with the real SmolLM2-135M-Instruct: rewrites arrive, are checked, and become level + 1 prompts."""

import json
import subprocess

import pytest

from conftest import PYTHON, REPO
from llmdistill import store


@pytest.mark.slow
def test_curriculum_example_evolves_and_routes_with_smollm2(tmp_path):
    cmd = [PYTHON, "-m", "llmdistill.cli", "generate", str(REPO / "configs" / "curriculum-example.yaml"),
           f"output_dir={tmp_path}", "teachers.math.model=smollm2-135m-instruct", "teachers.math.backend=hf",
           "teachers.math.dtype=float32", "generate.max_prompts=6", "generate.max_new_tokens=12",
           "generate.evolve.max_new_tokens=64"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "curriculum-example" / "generate"
    manifest = store.read_manifest(out)
    ev = manifest["prompts"]["evolve"]
    seeds = manifest["prompts"]["seed_prompts"]
    assert seeds == 6
    assert ev["requested"] == ev["accepted"] + sum(ev["rejected"].values())
    assert ev["accepted"] > 0  # SmolLM2 ends most rewrites within 64 tokens
    prompts = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    by_id = {p["id"]: p for p in prompts}
    evolved = [p for p in prompts if any(t.startswith("evol:") for t in p["tags"])]
    assert len(evolved) == ev["accepted"] and len(prompts) == seeds + ev["accepted"]
    assert ev["requested"] == sum(p not in evolved and p["level"] in (1, 2) for p in prompts)  # evolve.levels
    for p in evolved:
        parent = by_id[next(t for t in p["tags"] if t.startswith("parent:"))[len("parent:"):]]
        assert p["level"] == parent["level"] + 1 and p["messages"] != parent["messages"]
    assert set(manifest["counts"]["teachers"]) <= {"default", "math"} and manifest["counts"]["rows"] == len(prompts)
    assert set(manifest["difficulty"]) == set(manifest["counts"]["levels"])
