"""Errors a user can act on. The CLI prints them as one line and exits with code 2 (no traceback)."""

from __future__ import annotations

import errno as _errno
import os


class UserError(Exception):
    """Bad input: a config, a file, a model or a dataset that cannot be used as given."""


class LockedError(UserError):
    """Another llmdistill process holds the run directory."""


class StorageError(UserError):
    """The file system refused a read or a write (disk full, read-only, permission denied).

    Raised with the path and the errno name; whatever was committed before stays as it was."""


def os_error_reason(e: OSError) -> str:
    """The errno name and its text, e.g. `[ENOSPC] No space left on device` (pyarrow's own text when no errno)."""
    if e.errno is None:
        return first_line(e)
    name = _errno.errorcode.get(e.errno)
    return f"[{name}] {os.strerror(e.errno)}" if name else f"[errno {e.errno}] {os.strerror(e.errno)}"


def describe_os_error(e: OSError) -> str:
    """One line naming the errno and the path(s), e.g. `[EACCES] Permission denied: /runs/x`."""
    where = e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    return f"{os_error_reason(e)}: {where}" if where is not None else os_error_reason(e)


class BudgetExceeded(UserError):
    """A configured spending limit was reached: the run stopped cleanly with its finished work kept."""


def describe_template_error(e: BaseException) -> str | None:
    """One line for a Jinja template that failed to compile or render (prompt templates and chat templates),
    or None when `e` did not come from the template.

    Covers the sandbox refusing an attribute or a call, syntax errors, undefined variables, `raise_exception`,
    a range the sandbox caps, a string too large for memory and endless recursion; any other exception counts
    when it was raised by template code."""
    import jinja2
    from jinja2.sandbox import SecurityError

    if isinstance(e, SecurityError):
        return f"refused by the sandbox: {e}"
    if isinstance(e, jinja2.TemplateSyntaxError):
        return f"syntax error at line {e.lineno}: {e.message}"
    if isinstance(e, jinja2.UndefinedError):
        return f"uses an undefined variable: {e.message}"
    if isinstance(e, jinja2.TemplateError):  # raise_exception('...') in a chat template lands here
        return f"cannot render: {_one_line(e)}"
    if isinstance(e, MemoryError):
        return "builds a string too large for memory"
    if isinstance(e, RecursionError):
        return "cannot render: it calls itself without end (maximum recursion depth exceeded)"
    if isinstance(e, OverflowError) or _raised_in_template(e):
        return f"cannot render: {type(e).__name__}: {_one_line(e)}"
    return None


def _raised_in_template(e: BaseException) -> bool:
    """Whether a frame of the traceback is compiled template code (Jinja names it `<template>` or the file)."""
    tb = e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename == "<template>" or tb.tb_frame.f_globals.get("__jinja_template__"):
            return True
        tb = tb.tb_next
    return False


def first_line(e: BaseException) -> str:
    """An exception's first non-blank line (its type's name when it has none), for a one-line error."""
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def text_problem(text: str) -> str | None:
    """Why a decoded string cannot be stored as UTF-8 text, or None: a lone surrogate, which a JSON or YAML escape
    can write ("\\ud800") but no text holds (Arrow, the tokenizers and every file we write refuse it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"holds a lone surrogate \\u{ord(text[e.start]):04x} at character {e.start + 1} (an unpaired "
                "\\ud800-\\udfff escape is not text)")
    return None
