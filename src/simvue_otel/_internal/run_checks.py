"""Checks of ``Run.init``'s arguments that are more than one validator's call.

Each returns the value as the ``Run`` keeps it, or raises :class:`SimvueValidationError`
naming the argument (as ``init`` reports it).
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import SimvueValidationError
from .validation import validate_visibility

__all__ = ["check_notification", "checked_shell_vars", "checked_visibility"]


def checked_visibility(visibility: str | Sequence[str] | None) -> str | list[str] | None:
    """A level (``private``, ``tenant``, ``public``), a list of user names, or None."""
    validate_visibility(visibility)
    if isinstance(visibility, str) or visibility is None:
        return visibility
    return list(visibility)


def check_notification(notification: str) -> None:
    """Simvue's e-mail notification choice (accepted for compatibility)."""
    if notification not in ("none", "all", "error", "lost"):
        raise SimvueValidationError(
            "notification", "must be one of none, all, error, lost", notification
        )


def checked_shell_vars(record_shell_vars: Sequence[str]) -> tuple[str, ...]:
    """Environment variable names or glob patterns to record at init."""
    if isinstance(record_shell_vars, str) or not all(
        isinstance(p, str) and p for p in record_shell_vars
    ):
        raise SimvueValidationError(
            "record_shell_vars",
            "must be a list or set of environment variable names or glob patterns",
            record_shell_vars,
        )
    return tuple(record_shell_vars)
