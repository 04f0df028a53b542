"""`llmdistill push RUN_DIR --to REPO_ID`: a student (or a stage's dataset) to a Hugging Face Hub repo.

What is sent, one commit, nothing else:
- a model (`--student NAME`, default `student`): its card (README.md), its safetensors weights and its config,
  tokenizer and generation files (`MODEL_FILES`); a LoRA run's adapter/ too; a distill-bert student also its
  ONNX exports under onnx/. Never checkpoints, optimizer states, caches, .bin pickles, lock or marker files.
- a dataset (`--dataset STAGE`: generate, annotate or filter): its card, its shards (part-*.parquet),
  manifest.json and stats.json; not the removed rows, the request cache or the prompts file.

The card is rewritten in the run directory first (from the records, as after a run); the one uploaded is the same
card written for the repo: the Hub's load snippet instead of local paths. The repo is created private unless
`--public` (an existing repo keeps its visibility). Everything is checked before anything is written or sent:
a repo id huggingface_hub refuses, no token (HF_TOKEN, or `hf auth login`), a student or stage that does not
exist or did not complete. A refused token (401/403) or a server that fails mid-upload is one line; the local
files stay as they were (the card is rewritten with what it already said).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path

from llmdistill import cards, store
from llmdistill.errors import UserError, first_line

# The files of a model directory that are sent (fnmatch patterns, relative to it)
MODEL_FILES = ("*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
               "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
               "adapter/adapter_config.json", "adapter/*.safetensors", cards.common.BERT_SPEC)
NOT_SENT = ("projections.safetensors",)  # a BERT student's training-only projections to the teacher
DATASET_FILES = ("part-*.parquet", store.MANIFEST, store.STATS)


@dataclass
class Plan:
    """What one push sends: `files` are (path in the repo, local file), the card aside."""

    kind: str  # "model" or "dataset"
    name: str  # the student's or the stage's name
    directory: Path  # where the card is written
    files: list[tuple[str, Path]] = field(default_factory=list)

    @property
    def repo_type(self) -> str:
        return "dataset" if self.kind == "dataset" else "model"


def plan(run_dir: Path, student: str | None = None, dataset: str | None = None) -> Plan:
    """What `push` would send from `run_dir` (checked: it exists and completed); writes nothing."""
    run_dir = Path(run_dir)
    if student is not None and dataset is not None:
        raise UserError("push takes --student or --dataset, not both")
    if not run_dir.is_dir():
        raise UserError(f"not a run directory: {run_dir}")
    if dataset is not None:
        return _dataset_plan(run_dir, dataset)
    return _model_plan(run_dir, student or "student")


def _dataset_plan(run_dir: Path, stage: str) -> Plan:
    if stage not in cards.DATASET_STAGES:
        raise UserError(f"--dataset takes a stage with a dataset ({', '.join(cards.DATASET_STAGES)}), got {stage!r}")
    directory = run_dir / stage
    if store.read_success(directory) is None:
        state = "did not complete (no _SUCCESS)" if directory.is_dir() else "has not run"
        raise UserError(f"the {stage} stage of {run_dir} {state}: nothing to push")
    return Plan("dataset", stage, directory, _select(directory, DATASET_FILES))


def _model_plan(run_dir: Path, name: str) -> Plan:
    if cards.is_bert_run(run_dir):
        if name != "student":
            raise UserError(f"a distill-bert run has one student, `student`; got --student {name}")
        if store.read_success(run_dir) is None:
            raise UserError(f"the distill-bert run {run_dir} did not complete (no _SUCCESS): nothing to push")
        directory = run_dir / "student"
        files = _select(directory, MODEL_FILES)
        files += [(f"onnx/{f}", run_dir / "onnx" / f) for f in cards.bert.ONNX if (run_dir / "onnx" / f).is_file()]
        return Plan("model", name, directory, files)
    if store.read_success(run_dir / "train") is None:
        state = "did not complete (no train/_SUCCESS)" if (run_dir / "train").is_dir() else "has not run"
        raise UserError(f"the train stage of {run_dir} {state}: no student to push")
    trained = cards.students(run_dir)
    if name not in trained:
        raise UserError(f"{run_dir} has no trained student {name!r} (it has: {', '.join(trained) or 'none'})")
    directory = run_dir / "train" / name
    files = _select(directory, MODEL_FILES)
    if not any(p.endswith(".safetensors") for p, _ in files):
        raise UserError(f"{directory} holds no safetensors weights: nothing to push")
    return Plan("model", name, directory, files)


def _select(directory: Path, patterns: tuple[str, ...]) -> list[tuple[str, Path]]:
    """The plain files under `directory` (two levels at most) whose relative path matches a pattern at the same
    depth (`*.safetensors` is not checkpoint-2/model.safetensors)."""
    found = []
    for path in sorted(directory.glob("*")) + sorted(directory.glob("*/*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and not path.is_symlink() and path.name not in NOT_SENT and \
                any(rel.count("/") == p.count("/") and fnmatch.fnmatchcase(rel, p) for p in patterns):
            found.append((rel, path))
    return found


def push(run_dir: Path, repo_id: str, student: str | None = None, dataset: str | None = None,
         public: bool = False, dry_run: bool = False) -> dict:
    """Send what `plan` selects, with its card, to the Hub repo `repo_id` (see the module doc). Returns
    {"repo": url, "commit": oid, "files": [paths in the repo], "private": bool}; with `dry_run`, only the files
    (and their sizes) that would be sent: nothing is written, and no token is needed."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"--to: {first_line(e)}") from None
    p = plan(run_dir, student, dataset)
    directory, card = cards.card_for(run_dir, p.kind, p.name, repo_id=repo_id)
    sizes = {"README.md": len(card.encode("utf-8"))} | {rel: path.stat().st_size for rel, path in p.files}
    if dry_run:
        return {"repo": repo_id, "repo_type": p.repo_type, "private": not public, "files": sizes}
    token = _token()
    from llmdistill.runner import RunLock

    with RunLock(run_dir, shared=True):  # no run rewrites these files while they are read
        cards.common.write_card(*cards.card_for(run_dir, p.kind, p.name))
        url, oid = _upload(repo_id, p, card.encode("utf-8"), token, public)
    return {"repo": url, "commit": oid, "repo_type": p.repo_type, "private": not public, "files": sizes}


def _token() -> str:
    from huggingface_hub import constants, get_token

    token = get_token()
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN to a token with write access (or run `hf auth login`)")
    if constants.HF_HUB_OFFLINE:
        raise UserError("HF_HUB_OFFLINE is set: unset it (or set it to 0) to push to the Hub")
    return token


def _upload(repo_id: str, p: Plan, card: bytes, token: str, public: bool) -> tuple[str, str]:
    """create_repo (private unless `public`, an existing one kept) and one commit of the card and the files."""
    import httpx2
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        repo = api.create_repo(repo_id, repo_type=p.repo_type, private=not public, exist_ok=True)
        operations = [CommitOperationAdd("README.md", card)]
        operations += [CommitOperationAdd(rel, str(path)) for rel, path in p.files]
        info = api.create_commit(repo.repo_id, operations, repo_type=p.repo_type,
                                 commit_message=f"llmdistill push: the {p.name} {p.kind} ({len(operations)} files)")
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise UserError(f"the Hub refused the token for {repo_id} ({status}): HF_TOKEN needs write access to "
                            "that namespace") from None
        raise UserError(f"push to {repo_id} failed: {first_line(e)}") from None
    except (httpx2.HTTPError, OSError, ValueError, RuntimeError) as e:  # dropped connection, LFS refusal, ...
        cause = e.__cause__ if isinstance(e, RuntimeError) and e.__cause__ is not None else e
        raise UserError(f"push to {repo_id} failed: {first_line(e)}"
                        + (f" ({first_line(cause)})" if cause is not e else "")) from None
    return str(repo), info.oid
