"""Model and dataset cards (README.md with Hub front matter), written from a run's own records, never by hand.

`write_run_cards(run_dir)` writes every card the run's completed outputs allow:

    <run>/generate/README.md, annotate/, filter/   dataset cards (cards/dataset.py), once the stage completed
    <run>/train/<student>/README.md                model cards of the trained students (cards/model.py):
                                                   `student`, and `sft_baseline` when one was trained
    <run>/student/README.md                        a distill-bert run's student (cards/bert.py)

A card sits inside a completed stage directory, beside its `_SUCCESS`: nothing the runner reads (fingerprints,
`_SUCCESS`, shards) changes, so a rerun still skips the stage. Cards are rewritten whole, atomically, every time
(the CLI after every run, `llmdistill push` before an upload), so they follow the run. A card written for a Hub
repo (`repo_id`) is the same card without local paths, with the Hub's load snippet: `push` uploads that one.
"""

from __future__ import annotations

from pathlib import Path

from llmdistill import store
from llmdistill.cards.bert import bert_card
from llmdistill.cards.common import BERT_SPEC, CARD, read_json, write_card
from llmdistill.cards.dataset import STAGES as DATASET_STAGES
from llmdistill.cards.dataset import dataset_card
from llmdistill.cards.model import model_card

__all__ = ["CARD", "DATASET_STAGES", "bert_card", "card_for", "dataset_card", "is_bert_run", "model_card",
           "students", "write_run_cards"]


def is_bert_run(run_dir: Path) -> bool:
    """Whether `run_dir` is a distill-bert run (its student holds llmdistill's BERT architecture record)."""
    return (Path(run_dir) / "student" / BERT_SPEC).is_file()


def students(run_dir: Path) -> list[str]:
    """The trained students of a completed LLM train stage, by name (train/metrics.json's entries that are
    saved model directories), `student` first."""
    run_dir = Path(run_dir)
    if store.read_success(run_dir / "train") is None:
        return []
    metrics = read_json(run_dir / "train" / "metrics.json") or {}
    names = [n for n in metrics if (run_dir / "train" / n / "config.json").is_file()]
    return sorted(names, key=lambda n: (n != "student", n))


def card_for(run_dir: Path, kind: str, name: str, repo_id: str | None = None) -> tuple[Path, str]:
    """(the directory, the card text) of one card: kind "model" (`name`: a student of train/, or "student" of a
    distill-bert run) or "dataset" (`name`: generate, annotate or filter)."""
    run_dir = Path(run_dir)
    if kind == "dataset":
        return run_dir / name, dataset_card(run_dir, name, repo_id)
    if is_bert_run(run_dir):
        return run_dir / "student", bert_card(run_dir, repo_id)
    return run_dir / "train" / name, model_card(run_dir, name, repo_id)


def write_run_cards(run_dir: Path) -> list[Path]:
    """Write every card `run_dir`'s completed outputs allow; returns the paths written (none for an empty run)."""
    run_dir = Path(run_dir)
    targets: list[tuple[str, str]] = []
    if is_bert_run(run_dir):
        targets = [("model", "student")] if store.read_success(run_dir) is not None else []
    else:
        targets += [("dataset", s) for s in DATASET_STAGES if store.read_success(run_dir / s) is not None]
        targets += [("model", s) for s in students(run_dir)]
    return [write_card(*card_for(run_dir, kind, name)) for kind, name in targets]
