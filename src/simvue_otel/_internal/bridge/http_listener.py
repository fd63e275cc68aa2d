"""The OTLP/HTTP listener: ``POST /v1/traces``, ``/v1/metrics``, ``/v1/logs``, ``GET /health``
and ``GET /metrics`` (the bridge's own metrics, Prometheus text).

Answers as the OTLP specification says: 200 (with partial-success counts when some items are
refused), 400 for bodies that do not decode, 401 without the bearer token, 413 past the size
limit (checked on the compressed body and again while decompressing, so a gzip bomb is refused
after reading at most the limit), 415 for other content types or encodings, and 503 with
``Retry-After`` while the sink is backed up, so collectors retry instead of dropping. Replies
use the request's content type (protobuf or JSON). Every answer is counted and logged at debug
(:meth:`BridgeCore.answered`).
"""

from __future__ import annotations

import time
import zlib

from google.protobuf import json_format
from google.rpc import status_pb2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..mapping.otlp import OtlpDecodeError, decode_request
from .core import BridgeCore, Outcome
from .signals import SIGNALS

__all__ = ["create_http_app"]

_TYPES = {"application/x-protobuf": "protobuf", "application/protobuf": "protobuf",
          "application/json": "json"}  # fmt: skip


class _TooLarge(Exception):
    pass


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """The decompressed body, never more than ``limit`` bytes of it held."""
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ValueError(encoding)
    parts: list[bytes] = []
    size = 0
    data = body
    while True:
        # gzip bodies may hold several members (RFC 1952); each is inflated in turn, and
        # the limit counts all of them together.
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        out = inflater.decompress(data, limit - size + 1)
        size += len(out)
        if size > limit or inflater.unconsumed_tail:
            raise _TooLarge
        if not inflater.eof:
            raise OtlpDecodeError("the compressed body is truncated")
        parts.append(out)
        data = inflater.unused_data
        if not data:
            return b"".join(parts)
        if encoding != "gzip" or data[:2] != b"\x1f\x8b":
            raise OtlpDecodeError("the compressed body has trailing bytes that are not gzip")


def _status(code: int, message: str, fmt: str, status: int, **headers: str) -> Response:
    """A failure reply: ``google.rpc.Status`` in the request's encoding."""
    if fmt == "json":
        return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)
    body = status_pb2.Status(code=code, message=message).SerializeToString()
    return Response(body, status_code=status, media_type="application/x-protobuf", headers=headers)


def create_http_app(core: BridgeCore, *, max_body: int = 20 * 2**20) -> Starlette:
    """The ASGI app of the OTLP/HTTP listener."""

    async def export(request: Request) -> Response:
        signal = request.url.path.rsplit("/", 1)[-1]
        started = time.perf_counter()
        response, outcome = await _handle(request, signal)
        core.answered("http", signal, str(response.status_code), started, outcome)
        return response

    async def _handle(request: Request, signal: str) -> tuple[Response, Outcome | None]:
        fmt, refusal = _refusal(request)
        if refusal is not None:
            return refusal, None
        encoding = request.headers.get("content-encoding", "").strip().lower()
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body:
            return _status(8, f"the body is larger than {max_body} bytes", fmt, 413), None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                return _status(8, f"the body is larger than {max_body} bytes", fmt, 413), None
            chunks.append(chunk)
        try:
            body = _inflate(b"".join(chunks), encoding, max_body)
            message = decode_request(SIGNALS[signal].request_type, signal, body, fmt)
        except _TooLarge:
            too_large = f"the decompressed body is larger than {max_body} bytes"
            return _status(8, too_large, fmt, 413), None
        except (OtlpDecodeError, zlib.error) as exc:
            return _status(3, str(exc), fmt, 400), None
        outcome = await run_in_threadpool(core.ingest, signal, message, body)
        reply = SIGNALS[signal].response_type()
        if outcome.rejected:
            setattr(reply.partial_success, SIGNALS[signal].rejected_field, outcome.rejected)
            reply.partial_success.error_message = outcome.message
        if fmt == "json":
            return JSONResponse(json_format.MessageToDict(reply)), outcome
        body = reply.SerializeToString()
        return Response(body, media_type="application/x-protobuf"), outcome

    def _refusal(request: Request) -> tuple[str, Response | None]:
        """The request's format, and the answer when it is refused before its body is read."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        fmt = _TYPES.get(ctype)
        if fmt is None:
            unsupported = f"unsupported content type {ctype!r}: send application/x-protobuf or "
            return "json", _status(3, unsupported + "application/json", "json", 415)
        if not core.authorized(request.headers.get("authorization")):
            return fmt, _status(16, "missing or wrong bearer token", fmt, 401,
                                **{"WWW-Authenticate": "Bearer"})  # fmt: skip
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity", "gzip", "deflate"):
            return fmt, _status(3, f"unsupported content encoding {encoding!r}", fmt, 415)
        wait = core.retry_after()
        if wait is not None:
            return fmt, _status(14, "the bridge is backed up; retry later", fmt, 503,
                                **{"Retry-After": str(wait)})  # fmt: skip
        return fmt, None

    async def health(request: Request) -> Response:
        return JSONResponse(
            {"status": "ok", "backlog": core.sink.backlog(),
             "backed_up": core.retry_after() is not None}
        )  # fmt: skip

    async def metrics(request: Request) -> Response:
        if not core.may_scrape(request.headers.get("authorization")):
            return Response(
                "missing or wrong bearer token\n",
                status_code=401,
                media_type="text/plain",
                headers={"WWW-Authenticate": "Bearer"},
            )
        body, content_type = await run_in_threadpool(
            core.metrics.exposition, request.headers.get("accept")
        )
        return Response(body, headers={"Content-Type": content_type})

    routes = [Route(f"/v1/{signal}", export, methods=["POST"]) for signal in SIGNALS]
    routes.append(Route("/health", health, methods=["GET"]))
    routes.append(Route("/metrics", metrics, methods=["GET"]))
    return Starlette(routes=routes)
