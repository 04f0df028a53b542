"""Errors a user can act on. The CLI prints them as one line and exits with code 2 (no traceback)."""


class UserError(Exception):
    """Bad input: a config, a file, a model or a dataset that cannot be used as given."""


class LockedError(UserError):
    """Another llmdistill process holds the run directory."""


class BudgetExceeded(UserError):
    """A configured spending limit was reached: the run stopped cleanly with its finished work kept."""
