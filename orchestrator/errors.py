"""The errors a user can cause or fix: one root, with the exit code on it.

``orchestrate`` catches :class:`UserError` and prints its message as one line; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a bad environment: one line for the user, and a documented exit code."""

    exit_code = 2


class DataError(UserError, RuntimeError):
    """Benchmark data that is missing or malformed, or cannot be fetched."""


class StoreError(UserError, OSError):
    """The run directory cannot be written (full disk, read-only, no such folder, quota)."""

    exit_code = 4


class LoadConfigError(UserError, ValueError):
    """A load-test option that cannot be used."""


class ScoringError(UserError, RuntimeError):
    """A scorer could not run (a module missing where scoring happens, a checker that fails): the
    run stops with one line; every answer already scored is on disk."""
