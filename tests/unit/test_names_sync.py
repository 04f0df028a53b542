"""Every name list is written once (a union or Literal in llmdistill/config/); these tests fail when a name is
added on one side only: a config class left out of its union, a template or loss term without its config name.

(The divergence and teacher-backend tables are checked beside their implementations.)"""

import inspect
import re
import typing

import pytest

from conftest import REPO
from llmdistill import config as C
from llmdistill.config import filter as filter_config
from llmdistill.config import generate as generate_config


def _tagged_classes(module, key: str) -> dict[str, type]:
    """The Section classes defined in `module` whose `key` field is a one-value Literal: tag -> class."""
    out = {}
    for obj in vars(module).values():
        if inspect.isclass(obj) and issubclass(obj, C.Section) and obj.__module__ == module.__name__ \
                and key in obj.model_fields \
                and typing.get_origin(obj.model_fields[key].annotation) is typing.Literal:
            (tag,) = C.literal_values(obj, key)
            out[tag] = obj
    return out


@pytest.mark.parametrize("union, names, module, key", [
    (C.FilterStep, C.FILTER_STEP_NAMES, filter_config, "name"),
    (C.PromptSource, C.PROMPT_SOURCE_KINDS, generate_config, "kind"),
])
def test_every_tagged_class_is_in_its_union(union, names, module, key):
    members = typing.get_args(C.unwrap(union))
    assert C.discriminator(union) == key
    assert names == tuple(C.literal_values(m, key)[0] for m in members)
    assert len(set(names)) == len(names)
    classes = _tagged_classes(module, key)
    assert classes == dict(zip(names, members)), "a class with a tag is missing from its union (or the reverse)"


def test_evolve_operators_are_the_templates():
    from llmdistill.generate.evolve import operator_template

    files = sorted(p.name[len("evol_"):-len(".md")] for p in (REPO / "prompts").glob("evol_*.md"))
    assert files == sorted(C.EVOLVE_OPERATORS)
    assert C.EvolveConfig().operators == list(C.EVOLVE_OPERATORS)  # the default draws from every operator
    for op in C.EVOLVE_OPERATORS:
        assert operator_template(op).strip(), op


def test_bert_loss_terms_are_the_objectives():
    """Each weight field of BertLossConfig is a term PhaseObjective computes, and the reverse; the terms that
    compare intermediate layers are the same on both sides."""
    from llmdistill.bert import objective

    computed = set(re.findall(r'out\["(\w+)"\] = ', inspect.getsource(objective.PhaseObjective.terms)))
    assert computed == set(C.BERT_LOSSES)
    assert set(C.BERT_INTERMEDIATE_LOSSES) == objective.LAYER_TERMS
    assert objective.DETAIL_TERMS <= set(C.BERT_LOSSES)
    weights = {n for n, f in C.BertLossConfig.model_fields.items() if f.annotation is float and f.default == 0.0}
    assert weights == set(C.BERT_LOSSES)  # every 0-default float field is a marked weight
