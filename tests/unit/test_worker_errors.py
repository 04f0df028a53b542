"""A user error raised in a DataLoader worker (where the served teacher is asked) keeps its one line."""

from __future__ import annotations

import pytest
import torch

from llmdistill.errors import UserError
from llmdistill.train.stage import worker_error_line


def _collate(rows):
    raise UserError("served teacher: scoring a sequence of 12 tokens failed: connection error: refused")


def test_a_user_error_from_a_dataloader_worker_comes_back_as_its_own_line():
    loader = torch.utils.data.DataLoader(list(range(4)), batch_size=2, num_workers=1, collate_fn=_collate)
    with pytest.raises(UserError) as e:
        next(iter(loader))
    assert "DataLoader worker" in str(e.value) and "Traceback" in str(e.value)  # what torch hands back
    assert worker_error_line(str(e.value)) == ("served teacher: scoring a sequence of 12 tokens failed: "
                                               "connection error: refused")


def test_first_line_is_the_first_non_blank_line_or_the_type():
    from llmdistill.errors import first_line

    assert first_line(OSError("\n  [Errno 98] address already in use \nmore")) == "[Errno 98] address already in use"
    assert first_line(ValueError("   ")) == "ValueError"
