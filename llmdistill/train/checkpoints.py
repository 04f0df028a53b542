"""Is a Trainer checkpoint fit to resume from? Read every file resuming loads, without running any of it.

A checkpoint whose `trainer_state.json` is whole was saved to the end, but its files can be damaged later (a
disk error, a copy cut short, a hand edit) or replaced (a pickle that would run code when loaded). Trainer
then fails deep inside `train()` with a SafetensorError, an UnpicklingError or "Weights only load failed":
`damage` finds that first, with the same readers Trainer uses and never more permissive ones: safetensors
headers (which cover the file's length) and torch's weights-only unpickler (which refuses anything that is
not tensors and plain data, so a payload is never run), memory-mapped so a large optimizer state is not read
into memory. What to do about a damaged checkpoint is the train stage's (`stage.resume_point`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

# what Trainer loads on resume besides the weights (trainer_state.json is checked when the checkpoint is
# found; training_args.bin is written, never loaded)
STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth", "rng_state_*.pth")
WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "adapter_model.bin")
# sharded runs keep their states in directories of their own (FSDP, DeepSpeed), not checked here
SHARDED = ("pytorch_model_fsdp_*", "optimizer_*", "global_step*")


def damage(checkpoint: str | Path) -> str | None:
    """Why `checkpoint` cannot be resumed from ("model.safetensors: SafetensorError: ..."), or None."""
    checkpoint = Path(checkpoint)
    weights = sorted({p for pattern in WEIGHTS for p in checkpoint.glob(pattern)})
    if not weights and not any(next(checkpoint.glob(p), None) for p in SHARDED):
        return "it holds no model weights (model.safetensors is missing)"
    for path in weights:
        problem = _safetensors_problem(path) if path.suffix == ".safetensors" else _torch_problem(path)
        if problem:
            return f"{path.name}: {problem}"
    for path in sorted({p for pattern in STATE_FILES for p in checkpoint.glob(pattern)}):
        problem = _torch_problem(path)
        if problem:
            return f"{path.name}: {problem}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:  # the header, checked against the file's length
            f.keys()
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...: any is a reason not to resume
        return _one_line(e)
    return None


def _torch_problem(path: Path) -> str | None:
    import torch
    from transformers.trainer_pt_utils import safe_globals  # the numpy types Trainer allows in rng_state.pth

    try:
        with safe_globals(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on a foreign pickle's protocol: the error says it all
            try:
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap can only be used" not in str(e):
                    raise
                torch.load(path, map_location="cpu", weights_only=True)  # not a zip: what is it?
    except Exception as e:  # noqa: BLE001 - UnpicklingError (a pickle with code), RuntimeError (a cut zip), ...
        text = _one_line(e)
        if "Weights only load failed" in text or "Unsupported global" in text:
            return "not a plain tensor file: it holds Python objects that loading would run (refused, nothing run)"
        return text
    return None


def _one_line(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__
