"""The exception hierarchy of simvue-otel.

Every error the package raises derives from :class:`SimvueOtelError`, so callers can catch
one type. Messages say what went wrong, where, and what to do; none ever contains a token.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "NotFoundError",
    "PermissionDeniedError",
    "ServerError",
    "ServerUnreachableError",
    "SimvueHTTPError",
    "SimvueOtelError",
    "SimvueValidationError",
    "TransportError",
]


class SimvueOtelError(Exception):
    """Base class of every error raised by simvue-otel."""


class SimvueValidationError(SimvueOtelError, ValueError):
    """A value given by the user breaks a rule; raised before anything is sent or written.

    ``field`` names the argument (``"folder"``, ``"metadata.solver.tol"``), ``rule`` states the
    rule in words, ``value`` is what was given.
    """

    def __init__(self, field: str, rule: str, value: Any) -> None:
        self.field = field
        self.rule = rule
        self.value = value
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:197] + "..."
        super().__init__(f"invalid {field}: {rule} (given: {shown})")


class ConfigurationError(SimvueOtelError):
    """The server URL, token or offline directory is missing or unusable."""


class TransportError(SimvueOtelError):
    """Talking to the Simvue server failed."""


class ServerUnreachableError(TransportError):
    """No answer from the server (connection refused, DNS failure, timeout) after retries.

    ``never_sent`` is True when the request cannot have reached the server (no connection
    was made); otherwise the server may have acted on it before the answer was lost.
    """

    def __init__(self, method: str, url: str, reason: str, *, never_sent: bool = False) -> None:
        self.method = method
        self.url = url
        self.reason = reason
        self.never_sent = never_sent
        super().__init__(
            f"{method} {url}: the Simvue server did not answer ({reason}); "
            "check SIMVUE_URL and that the server is running"
        )


class SimvueHTTPError(TransportError):
    """The server answered with an error status."""

    def __init__(self, method: str, url: str, status_code: int, detail: str) -> None:
        self.method = method
        self.url = url
        self.status_code = status_code
        self.detail = detail
        super().__init__(f"{method} {url} failed with HTTP {status_code}: {detail}")


class AuthenticationError(SimvueHTTPError):
    """401: the token is missing, malformed, expired or unknown to the server."""

    def __init__(self, method: str, url: str, status_code: int, detail: str) -> None:
        super().__init__(method, url, status_code, detail)
        self.args = (
            f"{method} {url} was refused (HTTP {status_code}: {detail}); "
            "check SIMVUE_TOKEN (or [server] token in simvue.toml) is a valid, unexpired token "
            "for this server",
        )


class PermissionDeniedError(SimvueHTTPError):
    """403: the token is valid but may not do this."""


class NotFoundError(SimvueHTTPError):
    """404: no such object, or not visible to this user."""


class ServerError(SimvueHTTPError):
    """5xx or 429 that persisted through every retry."""
