"""Errors the runtime raises for user-facing inputs: one line naming the input and the problem.

Command-line tools print these without a traceback; nodes log them and keep serving (or refuse
to start). Anything else escaping the runtime is a bug.
"""

from __future__ import annotations


class InputError(ValueError):
    """A user-facing input (file, directory, parameter, message) is invalid."""


class BundleError(InputError):
    """A model bundle directory is missing, incomplete, corrupt or of another schema."""


class BackendError(RuntimeError):
    """An inference backend cannot run here (library, device or engine missing); says why."""
