"""A teacher's or student's chat template that cannot work is one UserError line naming the model directory
(issue 11, item 10): the sandbox refusing an access, a syntax error, raise_exception, a string too large
for memory or for the rendered-length bound, endless recursion. Tokens agree with transformers' own path."""

import json

import pytest

from conftest import CHATML, build_tokenizer
from llmdistill import models
from llmdistill.errors import UserError

MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Caf\u00e9\u00a0au lait <|im_end|>?"}]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    build_tokenizer(d)
    return d


@pytest.fixture()
def tok(tok_dir):
    tok = models.load_tokenizer(str(tok_dir))
    assert tok.chat_template == CHATML
    return tok


def test_encode_prompt_equals_transformers_tokenised_template(tok):
    expected = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert models.encode_prompt(tok, MESSAGES) == list(expected)
    assert models.render_chat(tok, MESSAGES).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("template, problem", [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}",
     "refused by the sandbox: access to attribute '__class__' of 'str' object is unsafe."),
    ("{% for m in messages %}{{ m.content.__class__.__base__ }}{% endfor %}", "refused by the sandbox: "),
    ("{{ messages.append({'role': 'user'}) }}", "refused by the sandbox: access to attribute 'append'"),
    ("{% for m in messages %}{{ m['content'] }", "syntax error at line 1: "),
    ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}",
     "cannot render: System role not supported"),
    ("{% macro f(x) %}{{ f(x) }}{% endmacro %}{{ f(1) }}", "cannot render: it calls itself without end"),
    ("{% for i in range(10 ** 7) %}.{% endfor %}", "cannot render: OverflowError: Range too big."),
    ("{{ messages | length // 0 }}", "cannot render: ZeroDivisionError: "),
    # 2**50 characters: no machine has the memory, so the allocation fails at once (nothing is used up)
    ("{% for m in messages %}{{ m['content'] * 2 ** 50 }}{% endfor %}", "builds a string too large for memory"),
    # 2 MB from 40 characters: far past the bound, refused before it is tokenised
    ("{% for m in messages %}{{ m['content'] * 50000 }}{% endfor %}", "it builds a huge string; refused"),
], ids=["escape", "escape-in-loop", "mutate", "syntax", "raise-exception", "recursion", "range", "zero-division",
        "memory-error", "rendered-length-bound"])
def test_bad_chat_template_is_one_user_error_naming_the_model(tok, tok_dir, template, problem):
    tok.chat_template = template
    with pytest.raises(UserError) as e:
        models.encode_prompt(tok, MESSAGES)
    message = str(e.value)
    assert message.startswith(f"chat template of {tok_dir}: ") and problem in message, message
    assert "\n" not in message


def test_rendered_length_bound_is_generous_for_real_templates(tok):
    """Many short turns through a template that writes a long header per turn: over 100 characters of output per
    character of content, far beyond the slack, and still inside the bound (it counts the template per turn)."""
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} (turn {{ loop.index }} of "
                         "{{ messages | length }}; a long fixed header that every turn of this template repeats)\n"
                         "{{ m['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n")
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x"} for i in range(2001)]
    assert len(models.render_chat(tok, turns)) > 200_000
    assert len(models.encode_prompt(tok, MESSAGES)) > 10


def test_broken_template_fails_when_the_tokenizer_loads(tok_dir, tmp_path):
    """load_tokenizer renders the template once, so a template that cannot work fails before any weights
    load, and also where a library applies it (trl's on-policy trainers)."""
    bad = tmp_path / "bad-template"
    bad.mkdir()
    for f in tok_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "chat_template.jinja").write_text("{{ cycler.__init__.__globals__.os.popen('id').read() }}")
    config = json.loads((bad / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bad / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=f"^chat template of {bad}: refused by the sandbox: "):
        models.load_tokenizer(str(bad))
