"""Errors a user fixes (a bad config value, a bad data file, an arm dir in use or damaged, a run that
diverged). Their message says what is wrong, where, and what to do; the CLI prints it alone, without a
traceback (``ARCA_TRACEBACK=1`` shows the traceback too)."""

from __future__ import annotations


class UserError(Exception):
    """An error whose message is the whole story: printed as ``error: <message>``, exit code 2."""
