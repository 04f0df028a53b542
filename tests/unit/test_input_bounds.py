"""Bounds checked where the input enters (issue 28, items 15-17 and 19): numbers that look like digits but
are not ASCII, sizes no model can use, seeds and levels that do not fit what they are stored in, lone
surrogates and byte-order marks in user files. Each is one line naming the field or file:line, before any
work is done."""

from __future__ import annotations

import json
import subprocess

import pytest
import typer

from conftest import PYTHON
from llmdistill import cli
from llmdistill.config import ConfigError, load_config


# ------------------------------------------------------------------------------ 17: ASCII digits only
@pytest.mark.parametrize("shard", ["²/3", "1/³", "0/٣", "٣/4", "1/３"])
def test_shard_takes_ascii_digits_only(shard):
    with pytest.raises(typer.Exit) as e:
        cli._parse_shard(shard)
    assert e.value.exit_code == cli.EXIT_BAD_INPUT


def test_shard_with_superscript_is_one_line_on_the_command_line():
    res = subprocess.run([PYTHON, "-m", "llmdistill.cli", "generate", "--shard", "²/3"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.splitlines() == ["llmdistill: error: --shard takes i/n with 0 <= i < n (e.g. 2/8), got '²/3'"]


@pytest.mark.parametrize("override", ["generate.sources.²=1", "train.loss.٠.weight=0.5"])
def test_override_list_index_takes_ascii_digits_only(override):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert len(e.value.errors) == 1 and "has no item" in e.value.errors[0]


def test_ray_address_port_takes_ascii_digits_only():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["generate.executor=ray", f"generate.ray_address={json.dumps('host:²')}"])
    assert e.value.errors == ["generate.ray_address: 'host:²' is not auto, local, host:port or ray://host:port"]
