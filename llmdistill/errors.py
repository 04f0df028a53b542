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
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    name = _errno.errorcode.get(e.errno)
    return f"[{name}] {os.strerror(e.errno)}" if name else f"[errno {e.errno}] {os.strerror(e.errno)}"


def describe_os_error(e: OSError) -> str:
    """One line naming the errno and the path(s), e.g. `[EACCES] Permission denied: /runs/x`."""
    where = e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    return f"{os_error_reason(e)}: {where}" if where is not None else os_error_reason(e)


class BudgetExceeded(UserError):
    """A configured spending limit was reached: the run stopped cleanly with its finished work kept."""
