"""Teacher backends and annotate's methods are named once: the config's `teacher.backend` Literal is the list,
and the implementation tables (teachers.BACKENDS, annotate's METHOD) must hold exactly its names."""

from __future__ import annotations

import importlib
import typing

import pydantic
import pytest

from llmdistill.config import AnnotateConfig, TeacherConfig


def backend_names() -> set[str]:
    return set(typing.get_args(TeacherConfig.model_fields["backend"].annotation))


def annotate_accepts(backend: str) -> bool:
    """Whether the config lets annotate score with this backend (annotate takes local models only)."""
    try:
        AnnotateConfig.model_validate({"teacher": {"backend": backend}})
    except pydantic.ValidationError:
        return False
    return True


def test_every_backend_in_the_config_has_an_implementation_and_no_other():
    from llmdistill.teachers import BACKENDS

    assert set(BACKENDS) == backend_names()


@pytest.mark.parametrize("backend", sorted(backend_names()))
def test_each_backend_names_a_class_that_exists(backend):
    """The table's "module:class" resolves (the backend modules import their heavy packages only when used)."""
    from llmdistill.teachers import BACKENDS

    module, cls = BACKENDS[backend].split(":")
    assert callable(getattr(importlib.import_module(module), cls))


def test_annotate_has_a_method_for_exactly_the_backends_its_config_accepts():
    from llmdistill.annotate.stage import METHOD

    accepted = {b for b in backend_names() if annotate_accepts(b)}
    assert accepted, "annotate accepts no backend at all"
    assert set(METHOD) == accepted
