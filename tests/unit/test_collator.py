"""The teacher's top-k row for completion token j sits at the position that predicts it."""

import torch

from llmdistill.train.data import IGNORE, Collator


def test_alignment_labels_and_padding():
    k = 2
    rows = [
        {"input_ids": [5, 6, 7, 8, 9], "prompt_len": 3,
         "topk_ids": [[8, 1], [9, 2]], "topk_logprobs": [[-0.1, -2.0], [-0.2, -3.0]]},
        {"input_ids": [5, 6, 7], "prompt_len": 2,
         "topk_ids": [[7, 4], [0, 0]], "topk_logprobs": [[-0.5, -1.0], [0, 0]]},
    ]
    batch = Collator(pad_token_id=0)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, IGNORE, 8, 9], [IGNORE, IGNORE, 7, IGNORE, IGNORE]]
    # position i predicts token i + 1: row 0 completion starts at 3, so its top-k rows sit at 2 and 3
    assert batch["teacher_ids"][0, 2].tolist() == [8, 1]
    assert batch["teacher_ids"][0, 3].tolist() == [9, 2]
    assert batch["teacher_ids"][1, 1].tolist() == [7, 4]
    # the truncated second row keeps only the completion tokens it has (one)
    assert batch["teacher_ids"][1, 2].tolist() == [0, 0]
    assert batch["teacher_logprobs"].shape == (2, 5, k)
    # every position with a shifted label has a teacher row whose first id is that label
    mask = batch["labels"][:, 1:] != IGNORE
    assert torch.equal(batch["teacher_ids"][:, :-1][mask][:, 0], batch["labels"][:, 1:][mask])


def test_ce_only_batches_carry_no_teacher_tensors():
    rows = [{"input_ids": [1, 2, 3], "prompt_len": 1}]
    batch = Collator(pad_token_id=0, with_teacher=False)(rows)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


def test_routed_scorer_sends_each_row_to_its_teacher_and_keeps_the_order():
    import numpy as np

    from llmdistill.train.served import RoutedScorer

    calls = {}

    def scorer(tag):  # a deterministic stand-in for one server: row i of a sequence is [tag, token i]
        def score(seqs):
            calls.setdefault(tag, []).append([list(s) for s in seqs])
            return [(np.array([[tag, t] for t in s]), np.full((len(s), 2), -float(tag), np.float32)) for s in seqs]
        return score

    routed = RoutedScorer({"default": scorer(1), "second": scorer(2)})
    seqs = [[5, 6], [7, 8, 9], [10, 11], [12, 13]]
    out = routed(seqs, ["second", "default", "unrouted", "second"])
    assert calls == {2: [[[5, 6], [12, 13]]], 1: [[[7, 8, 9], [10, 11]]]}  # one call per teacher, unrouted: default
    assert [int(ids[0, 0]) for ids, _ in out] == [2, 1, 1, 2]
    assert [ids[:, 1].tolist() for ids, _ in out] == seqs
    teachers = ["second", None, "default", "second"]
    rows = [{"input_ids": s, "prompt_len": 1, "teacher": t} for s, t in zip(seqs, teachers)]
    batch = Collator(pad_token_id=0, scorer=routed)(rows)
    assert batch["teacher_logprobs"][:, 0, 0].tolist() == [-2.0, -1.0, -1.0, -2.0]  # a row without a teacher: default


def test_packing_lays_samples_out_first_fit_with_positions_restarting_per_sample():
    from llmdistill.train.data import pack

    assert pack([5, 3, 4, 2], 8) == ([(0, 0), (0, 5), (1, 0), (1, 4)], ["default", "default"])
    # with groups a row holds one group's samples only; a sample longer than the capacity gets its own row
    assert pack([3, 3, 3, 9], 8, ["a", "b", "a", "b"]) == ([(0, 0), (1, 0), (0, 3), (2, 0)], ["a", "b", "b"])
    rows = [
        {"input_ids": [5, 6, 7, 8, 9], "prompt_len": 3, "row": 0,
         "topk_ids": [[8, 1], [9, 2]], "topk_logprobs": [[-0.1, -2.0], [-0.2, -3.0]]},
        {"input_ids": [4, 6, 7], "prompt_len": 2, "row": 1, "topk_ids": [[7, 4]], "topk_logprobs": [[-0.5, -1.0]]},
        {"input_ids": [3, 5, 8, 9], "prompt_len": 1, "row": 2,
         "topk_ids": [[5, 1], [8, 1], [9, 1]], "topk_logprobs": [[-0.3, -1.0]] * 3},
    ]
    batch = Collator(pad_token_id=0, pack_to=8)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 4, 6, 7], [3, 5, 8, 9, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 1, 2, 3]]
    assert batch["rows"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1], [2, 2, 2, 2, -1, -1, -1, -1]]
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, IGNORE, 8, 9, IGNORE, IGNORE, 7],
                                        [IGNORE, 5, 8, 9, IGNORE, IGNORE, IGNORE, IGNORE]]
    # each label's teacher row sits at the position before it, inside the same sample
    mask = batch["labels"][:, 1:] != IGNORE
    assert torch.equal(batch["teacher_ids"][:, :-1][mask][:, 0], batch["labels"][:, 1:][mask])
    assert mask.sum() == 2 + 1 + 3
    # the last token of sample 0 (position 4) predicts the next sample's first token: never a label
    assert batch["labels"][0, 5] == IGNORE and batch["teacher_ids"][0, 4].tolist() == [0, 0]
