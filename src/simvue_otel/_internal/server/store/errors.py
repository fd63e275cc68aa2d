"""The store's errors, each with the HTTP status the server answers it with."""

from __future__ import annotations

from typing import Any

__all__ = [
    "RETRY_AFTER_FULL",
    "Conflict",
    "DiskFull",
    "Forbidden",
    "Invalid",
    "NotFound",
    "StoreError",
    "invalid",
]


class StoreError(Exception):
    """An API-level failure with its HTTP status; ``detail`` becomes ``{"detail": ...}``."""

    status = 400

    def __init__(self, detail: Any, **extra: Any) -> None:
        super().__init__(str(detail))
        self.detail = detail
        self.extra = extra


class NotFound(StoreError):
    status = 404


class Forbidden(StoreError):
    status = 403


class Conflict(StoreError):
    status = 409


class Invalid(StoreError):
    status = 422


RETRY_AFTER_FULL = 30
"""Seconds a client is told to wait (``Retry-After``) when the disk is full."""


class DiskFull(StoreError):
    """A write refused because the disk holding the database is full: 503 with
    ``Retry-After`` (a full disk is temporary, and clients retry a 503), nothing stored."""

    status = 503

    def __init__(self, path: str) -> None:
        super().__init__(
            f"the disk holding the server's database ({path}) is full: nothing of this request "
            f"was stored; try again once space is freed (GET /health says when)",
        )
        self.headers = {"Retry-After": str(RETRY_AFTER_FULL)}


def invalid(field: str, msg: str) -> Invalid:
    """422 naming the body field ``field``, with ``msg`` saying what is wrong."""
    return Invalid([{"loc": ["body", field], "msg": msg, "type": "value_error"}])
