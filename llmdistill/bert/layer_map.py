"""Layer maps: which teacher layer each student layer learns from. Layers are 1-based (0 = embeddings).

    uniform   student i -> teacher i * Lt / Ls                 (TinyBERT's g(m) = m * N / M; top maps to top)
    skip      student i -> teacher i * k, k = Lt // (Ls + 1)   (BERT-PKD-skip: every k-th layer below the top,
                                                               whose output the logit KD already covers)
    last      student i -> teacher Lt - Ls - 1 + i             (BERT-PKD-last: the Ls layers just below the top)
    pairs     an explicit list of (student, teacher)

For Ls >= Lt the skip and last strategies have no room below the top and fall back to uniform.
"""

from __future__ import annotations

from llmdistill.errors import UserError


def resolve(strategy: str, student_layers: int, teacher_layers: int,
            pairs: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """The (student_layer, teacher_layer) pairs, checked against both depths."""
    ls, lt = student_layers, teacher_layers
    if strategy == "pairs":
        out = [(int(s), int(t)) for s, t in pairs or []]
        bad = [p for p in out if not (0 <= p[0] <= ls and 0 <= p[1] <= lt)]
        if bad or not out:
            raise UserError(f"layer_map.pairs: {bad or 'empty'} out of range (student 0..{ls}, teacher 0..{lt})")
        return out
    if strategy in ("skip", "last") and ls + 1 > lt:
        strategy = "uniform"
    if strategy == "uniform":
        return [(i, max(1, round(i * lt / ls))) for i in range(1, ls + 1)]
    if strategy == "skip":
        k = lt // (ls + 1)
        return [(i, i * k) for i in range(1, ls + 1)]
    if strategy == "last":
        return [(i, lt - ls - 1 + i) for i in range(1, ls + 1)]
    raise UserError(f"layer_map.strategy: unknown {strategy!r}")


def alternate_layers(teacher_layers: int) -> list[int]:
    """DistilBERT's initialisation: every other teacher layer, 1-based (12 -> 2, 4, ..., 12)."""
    return list(range(2, teacher_layers + 1, 2)) or [1]
