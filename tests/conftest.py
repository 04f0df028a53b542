"""Shared fixtures: tiny offline models and configs, built once per session.

The tiny teacher is a random-init Llama (hidden 64, 4 layers) on a byte-level BPE tokenizer trained
here on a few KB of text, with a ChatML template; it takes about a second to build and needs no
network. The real SmolLM2 is only used by tests marked `slow`.
"""

from __future__ import annotations

import errno
import io
import json
import os
import sys
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (
    "the a teacher student model learns small fast large language data token prompt answer question "
    "what why how when where is are was were can could should will would explain describe list give "
    "one two three four five six seven eight nine ten plus minus times equals number sum total "
    "cat dog bird fish tree river mountain city country capital france paris rome italy water fire "
    "light dark red blue green because therefore first then finally step reason simple hard easy"
).split()


def _corpus() -> str:
    import random

    rng = random.Random(0)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 15))) + "." for _ in range(400)]
    return "\n".join(lines)


def build_tokenizer(path: Path, vocab_size: int = 320, seed_text: str = ""):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([_corpus() + seed_text], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(path)
    return fast


def build_llama(path: Path, tokenizer, layers: int = 4, hidden: int = 64, seed: int = 0,
                init_range: float = 0.02) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=init_range,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """{'teacher': dir, 'other': dir (a model on a different tokenizer)}."""
    root = tmp_path_factory.mktemp("tiny-models")
    tok = build_tokenizer(root / "tok")
    teacher = build_llama(root / "teacher", tok)
    other_tok = build_tokenizer(root / "tok2", vocab_size=300, seed_text="zebra quantum " * 50)
    other = build_llama(root / "other", other_tok, layers=2)
    return {"teacher": teacher, "other": other}


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` are skipped where no CUDA device is (torch is imported only when there are some)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        import torch

        if not torch.cuda.is_available():
            for item in gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture()
def server(tiny):
    """A factory of fake OpenAI-compatible servers (tests/fakeopenai.py) over the tiny teacher's tokenizer, on
    127.0.0.1; every one is stopped at teardown."""
    from fakeopenai import FakeOpenAI

    started = []

    def make(**kwargs) -> FakeOpenAI:
        srv = FakeOpenAI(tiny["teacher"], **kwargs).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="session")
def tiny_vllm(tmp_path_factory) -> Path:
    """A tiny Llama that vLLM can run (head_dim 64: hidden 128, 2 heads), with weights drawn wide enough
    (std 0.3) that its next-token distributions are peaked: greedy decoding then does not hinge on
    float rounding, so two engines must agree on it."""
    root = tmp_path_factory.mktemp("tiny-vllm")
    tok = build_tokenizer(root / "tok")
    return build_llama(root / "teacher", tok, layers=2, hidden=128, init_range=0.3)


@pytest.fixture(scope="session")
def vllm_server(tiny_vllm, tmp_path_factory):
    """A real vLLM OpenAI-compatible server on 127.0.0.1 serving `tiny_vllm` as model "tiny"
    (tokens returned as `token_id:N`); stopped by PID at the end of the session."""
    from vllm_server import SKIP_REASON, VLLMServer, vllm_python

    if vllm_python() is None:
        pytest.skip(SKIP_REASON)
    with VLLMServer(tiny_vllm, name="tiny", log_path=tmp_path_factory.mktemp("vllm-server") / "server.log") as s:
        yield s


class FullDiskFile(io.RawIOBase):
    """A stream that takes `budget` bytes, then fails every write with ENOSPC, as a full disk does; the bytes
    go to a real file at `path`, or nowhere (path None)."""

    def __init__(self, path: str | None, budget: int):
        self.f, self.budget = (open(path, "wb") if path else None), budget  # noqa: SIM115 (closed with the stream)

    def writable(self):
        return True

    def write(self, b):
        if len(b) > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= len(b)
        return self.f.write(b) if self.f else len(b)

    def close(self):
        if self.f:
            self.f.close()
        super().close()


def write_prompts(path: Path, n_per_level: int = 4, levels=(1, 2, 3), tag: str = "p") -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for level in levels:
            for i in range(n_per_level):
                text = f"{tag} question {i} at level {level}: why is the sky blue"
                f.write(json.dumps({"prompt": text, "level": level, "source": "test"}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny) -> Path:
    """A finished tiny run through the CLI (`llmdistill run`), built once per session and shared (the report's and
    the cards' tests read it): a pruned student, the SFT-only baseline, a gradable task; the run ends by writing
    the report and the cards. Its config is `<run>/../../config.yaml`."""
    import subprocess

    tmp = tmp_path_factory.mktemp("report")
    path, data = make_tiny_config(tmp, tiny)
    tasks = tmp / "task.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": f"what is {a} plus {b}", "answer": str(a + b)}) + "\n"
                             for a, b in ((1, 2), (2, 3), (3, 4))))
    data["eval"]["tasks"] = [{"name": "sums", "prompts": str(tasks), "grader": "number", "max_new_tokens": 4}]
    data["train"]["student"] = {"prune": {"layers": 2, "intermediate_size": 96, "calibration_samples": 4}}
    path.write_text(yaml.safe_dump(data))
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "run", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = tmp / "runs" / "tiny"
    page = run_dir / "report" / "index.html"
    assert f"report: {page}" in res.stdout
    return run_dir


@pytest.fixture()
def tiny_config(tmp_path, tiny):
    """A complete config (as a dict and a file) for a fast end-to-end run on the tiny teacher."""
    return make_tiny_config(tmp_path, tiny)


def make_tiny_config(tmp_path: Path, tiny: dict) -> tuple[Path, dict]:
    seeds = write_prompts(tmp_path / "seeds.jsonl")
    held_out = write_prompts(tmp_path / "eval.jsonl", n_per_level=2, tag="held-out")
    data = {
        "name": "tiny",
        "output_dir": str(tmp_path / "runs"),
        "teacher": {"model": str(tiny["teacher"])},
        "generate": {"prompts": str(seeds), "max_new_tokens": 12, "topk": 8, "batch_size": 4, "shard_rows": 4},
        "filter": {"steps": [{"name": "failed"}, {"name": "empty"}, {"name": "exact_dedup"}]},
        "train": {"student": {"teacher_layers": [0, 3]}, "max_steps": 4, "batch_size": 4, "save_steps": 2,
                  "logging_steps": 1, "lr": 1e-3, "sft_baseline": True},
        "eval": {"prompts": str(held_out), "max_new_tokens": 8, "batch_size": 4, "latency_prompts": 1,
                 "latency_new_tokens": 4},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data
