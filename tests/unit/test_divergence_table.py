"""The divergence table (llmdistill/losses.py) and the config's LossTerm name Literal list the same names.

A divergence is added in two places: its function + row in `losses.DIVERGENCES`, and its name in
`LossTerm.name`. This fails when one side has it and the other does not, or when the config's per-name
parameters (beta, alpha, their defaults) disagree with the function's keyword arguments.
"""

from __future__ import annotations

import inspect

import torch

from llmdistill import losses
from llmdistill.config import DIVERGENCE_NAMES, LossTerm


def test_every_divergence_name_has_a_function_and_back():
    assert set(DIVERGENCE_NAMES) == set(losses.DIVERGENCES)


def test_the_config_passes_each_function_the_parameters_it_takes():
    for name, fn in losses.DIVERGENCES.items():
        keywords = {p.name: p.default for p in list(inspect.signature(fn).parameters.values())[2:]}
        term = LossTerm(name=name, weight=1.0)
        assert term.params == keywords, name  # names and the defaults the config fills in
        fn(*(torch.log_softmax(torch.randn(2, 5), -1) for _ in range(2)), **term.params)
