"""Request bodies, read up to a limit: shared by the API and the web view's sign-in form."""

from __future__ import annotations

from starlette.requests import Request

from .store import StoreError

__all__ = ["LOGIN_MAX_BODY", "TooLarge", "read_body"]

LOGIN_MAX_BODY = 16 * 1024
"""Largest sign-in form: a token and a path fit many times over."""


class TooLarge(StoreError):
    """413: a request body over the limit of its path."""

    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than the server's limit of {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The body of a request that may carry one (POST, PUT, PATCH), read up to ``limit``
    bytes and no further (413 past it, whatever Content-Length said)."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return b""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
