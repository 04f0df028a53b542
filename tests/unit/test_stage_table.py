"""The stage table (runner.TABLE, used by the pipeline) is the one list of stages: every row names a stage
module, config sections that exist and an upstream before it; the runner's other lists are derived from it."""

from __future__ import annotations

import importlib
import importlib.util

from llmdistill import pipeline, show
from llmdistill.config import Config


def test_every_row_names_a_stage_module_sections_and_an_earlier_upstream():
    names = [row.name for row in pipeline.TABLE]
    for i, row in enumerate(pipeline.TABLE):
        assert importlib.util.find_spec(f"llmdistill.{row.package}.stage") is not None, row
        assert set(row.sections) <= set(Config.model_fields), row
        assert row.upstream is None or row.upstream in names[:i], row
        if row.optional:
            assert "enabled" in Config.model_fields[row.name].annotation.model_fields, row
        if row.templates:
            module, function = row.templates.split(":")
            assert callable(getattr(importlib.import_module(module), function)), row


def test_the_other_lists_are_the_table():
    assert pipeline.STAGES == tuple(row.name for row in pipeline.TABLE)
    assert show.STAGES is pipeline.STAGES  # `llmdistill inspect` lists the run's stage directories from the table
