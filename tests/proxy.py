"""A loopback HTTP proxy for tests: it records every request it forwards to a real server
and can misbehave on cue.

Tests point a client (``simvue_otel.Run``, the exporters, the bridge, ``simvue-otel send`` or
the official ``simvue`` client) at ``proxy.url`` instead of the server's URL. Each request is
recorded as a :class:`Recorded` (method, path, query, content type, decoded body, headers), so a
test can check the exact wire traffic. Rules script faults, one request each, in order:

* an int status: answer that status (JSON ``{"detail": "scripted"}``) without forwarding;
  a 429 also carries ``Retry-After: 1``;
* ``"late"``: forward, then wait ``late_seconds`` before answering (past a client's timeout);
* ``"stored-then-<status>"``: forward (the server stores it), then answer ``<status>``;
* ``"stored-then-reset"``: forward, then close the connection without any answer;
* ``"html-<status>"``: answer ``<status>`` with an HTML page (``text/html``) without
  forwarding, as a gateway such as nginx does (a 502 whose upstream is down) or a web server
  that is not a Simvue API (``"html-200"``).
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import http.server
import json
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgpack
import requests

from tests.helpers import LocalServer

__all__ = ["Proxy", "Recorded", "Rule", "as_server", "serve"]

Rule = tuple[str, str, int | str]  # (method or "*", path prefix, action)

# Hop-by-hop headers and those the proxy recomputes are not passed on.
_NOT_FORWARDED = frozenset(
    {"host", "connection", "keep-alive", "content-length", "transfer-encoding", "te",
     "trailer", "upgrade", "proxy-connection"}
)  # fmt: skip
_REPLY_HEADERS = ("Retry-After", "Location")  # passed back to the client with the body
_SCRIPTED = b'{"detail": "scripted"}'


@dataclass(frozen=True)
class Recorded:
    """One request as the proxy received it, and what the proxy did with it."""

    method: str
    path: str  # without the query
    query: dict[str, list[str]]  # every key, blank values kept
    content_type: str | None  # media type only, lower case; None without a body
    body: Any  # JSON or msgpack decoded; None when empty or not decodable
    headers: dict[str, str]
    raw: bytes = b""
    decode_error: str | None = None
    fault: str | None = None  # the scripted action applied, if any
    status: int | None = None  # the status answered; None when the connection was reset

    def header(self, name: str) -> str | None:
        """A request header by name, case-insensitively."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    def describe(self) -> str:
        """A readable one-request summary for assertion messages (bodies abridged)."""
        body = _abridge(self.body)
        return (
            f"{self.method} {self.path} query={self.query} content-type={self.content_type} "
            f"body={body} headers={sorted(self.headers)}"
        )


def _abridge(value: Any, depth: int = 0) -> Any:
    """Long lists cut to their first items so a failure message stays readable."""
    if isinstance(value, list):
        items = [_abridge(v, depth + 1) for v in value[:3]]
        return [*items, f"... {len(value)} entries"] if len(value) > 3 else items
    if isinstance(value, dict) and depth < 4:
        return {k: _abridge(v, depth + 1) for k, v in value.items()}
    return value


def _decode(content_type: str | None, raw: bytes) -> tuple[Any, str | None]:
    """The body as data: JSON or msgpack by content type, else None (and why not)."""
    if not raw:
        return None, None
    try:
        if content_type == "application/msgpack":
            return msgpack.unpackb(raw, raw=False), None
        if content_type == "application/json":
            return json.loads(raw), None
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return None, f"no decoder for content type {content_type!r}"


class Proxy:
    """Forwards to ``upstream``, records every request, and applies scripted faults.

    ``rules`` holds ``(method, path prefix, action)`` tuples; the first rule whose method
    (``"*"`` for any) and prefix (of the path with its query) match a request is consumed and
    applied to it. ``applied`` counts the faults applied, by action.
    """

    def __init__(self, upstream: str, *, late_seconds: float = 3.0, timeout: float = 60.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.late_seconds = late_seconds
        self.timeout = timeout
        self.rules: list[Rule] = []
        self.applied: collections.Counter[str] = collections.Counter()
        self._requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    # -- public ---------------------------------------------------------------------------

    @property
    def requests(self) -> list[Recorded]:
        """Every request recorded so far, in the order they were answered (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def refused(self) -> int:
        """Requests answered with a scripted status and not forwarded."""
        with self._lock:
            return sum(n for action, n in self.applied.items() if action.isdigit())

    @property
    def delayed(self) -> int:
        """Requests forwarded and answered late."""
        with self._lock:
            return self.applied["late"]

    def clear(self) -> None:
        """Forget the requests recorded so far (rules and counters are kept)."""
        with self._lock:
            self._requests.clear()

    def take(self, method: str, path: str) -> int | str | None:
        """Consume and return the action of the first rule matching this request, if any."""
        with self._lock:
            for i, (m, prefix, action) in enumerate(self.rules):
                if m in ("*", method) and path.startswith(prefix):
                    del self.rules[i]
                    self.applied[str(action)] += 1
                    return action
        return None

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving --------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False  # loopback only, whatever the environment says
        return session

    def _serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        raw = _read_body(handler)
        headers = dict(handler.headers.items())
        encoding = (handler.headers.get("Content-Encoding") or "").lower()
        plain = _inflate(raw, encoding)
        media = handler.headers.get("Content-Type")
        content_type = media.split(";")[0].strip().lower() if media else None
        body, error = _decode(content_type, plain)
        parts = urlsplit(handler.path)
        action = self.take(handler.command, handler.path)
        record: dict[str, Any] = {
            "method": handler.command,
            "path": parts.path,
            "query": parse_qs(parts.query, keep_blank_values=True),
            "content_type": content_type,
            "body": body,
            "headers": headers,
            "raw": plain,
            "decode_error": error,
            "fault": None if action is None else str(action),
        }
        if isinstance(action, int):
            status: int | None = action
            _answer(handler, action, _SCRIPTED, "application/json")
        elif isinstance(action, str) and action.startswith("html-"):
            status = int(action.removeprefix("html-"))
            _answer(handler, status, _html_page(status), "text/html")
        else:
            status = self._forward(handler, raw, headers, action)
        with self._lock:
            self._requests.append(Recorded(**record, status=status))

    def _forward(
        self,
        handler: http.server.BaseHTTPRequestHandler,
        raw: bytes,
        headers: dict[str, str],
        action: str | None,
    ) -> int | None:
        """Pass the request upstream and answer as ``action`` says; the status answered
        (None when the connection was dropped instead)."""
        forward = {k: v for k, v in headers.items() if k.lower() not in _NOT_FORWARDED}
        try:
            reply = self._session().request(
                handler.command, self.upstream + handler.path, data=raw or None,
                headers=forward, timeout=self.timeout, allow_redirects=False,
            )  # fmt: skip
        except requests.RequestException as exc:  # upstream down: say so, as a gateway does
            detail = json.dumps({"detail": f"upstream: {type(exc).__name__}"}).encode()
            _answer(handler, 502, detail, "application/json")
            return 502
        if action == "late":
            time.sleep(self.late_seconds)
        if action is not None and action.startswith("stored-then-"):
            then = action.removeprefix("stored-then-")
            if then == "reset":
                _reset(handler)
                return None
            _answer(handler, int(then), _SCRIPTED, "application/json")
            return int(then)
        extra = {h: reply.headers[h] for h in _REPLY_HEADERS if h in reply.headers}
        content_type = reply.headers.get("Content-Type", "text/plain")
        _answer(handler, reply.status_code, reply.content, content_type, extra)
        return reply.status_code


def _read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
    """The request body, by Content-Length or chunked transfer encoding."""
    if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def _inflate(raw: bytes, encoding: str) -> bytes:
    """A compressed request body, decompressed (the recording holds what was meant)."""
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    return raw


def _answer(
    handler: http.server.BaseHTTPRequestHandler,
    status: int,
    payload: bytes,
    content_type: str,
    extra: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    headers = dict(extra or {})
    if status == 429 and "Retry-After" not in headers:
        headers["Retry-After"] = "1"
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    with contextlib.suppress(OSError):  # the client may have given up waiting
        handler.wfile.write(payload)


def _html_page(status: int) -> bytes:
    """The page a gateway (nginx) or a plain web server answers with: HTML, not JSON."""
    phrase = http.HTTPStatus(status).phrase
    return (
        f"<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {phrase}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()


def _reset(handler: http.server.BaseHTTPRequestHandler) -> None:
    """Drop the connection with no answer at all, as a crashed server or a cut link does."""
    handler.close_connection = True
    with contextlib.suppress(OSError):
        handler.connection.shutdown(socket.SHUT_RDWR)


def serve(upstream: str, **options: Any) -> Iterator[Proxy]:
    """A proxy for the length of a fixture: ``yield from serve(local_server.url)``."""
    proxy = Proxy(upstream, **options)
    try:
        yield proxy
    finally:
        proxy.close()


def as_server(proxy: Proxy, server: LocalServer) -> LocalServer:
    """``server`` as seen through ``proxy``: the same database and token, the proxy's URL."""
    return LocalServer(
        url=proxy.url, db=server.db, token=server.token, process=server.process, log=server.log
    )


# -- chaos: faults drawn at random, for soak tests ---------------------------------------------

CHAOS_ACTIONS: tuple[str, ...] = (
    "stored-then-502", "stored-then-504", "stored-then-reset", "late", "delay", "held", "503",
)  # fmt: skip
"""What :class:`ChaosProxy` may do to a request: the scripted actions above, ``"503"`` (refused,
not forwarded), ``"delay"`` (forwarded at once, answered after ``delay_seconds``, shorter than a
client's timeout: a slow server) and ``"held"`` (held ``delay_seconds`` before it is forwarded,
as a busy gateway queues a request: it still lands if its client has died meanwhile)."""


class ChaosProxy(Proxy):
    """A :class:`Proxy` that, besides its scripted ``rules`` (taken first), applies a fault drawn
    at random to a share ``rate`` of the requests that write (``POST``, ``PUT``) under
    ``/api/``, while ``rate`` is above 0; set ``rate = 0`` to let everything through again.
    ``applied`` counts the faults by action, as for scripted ones; ``requests`` holds only the
    last ``keep`` requests."""

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.0,
        seed: int = 0,
        actions: tuple[str, ...] = CHAOS_ACTIONS,
        delay_seconds: float = 2.0,
        keep: int = 1000,
        **options: Any,
    ) -> None:
        import random
        import sys

        super().__init__(upstream, **options)
        self._requests = collections.deque(maxlen=keep)  # type: ignore[assignment]  # a soak's worth would fill memory
        self.journal: list[Forwarded] = []  # every metrics and events POST forwarded, in brief
        report = self.server.handle_error

        def quiet(request: Any, client_address: Any) -> None:
            if not isinstance(sys.exc_info()[1], OSError):  # not a killed client's connection
                report(request, client_address)

        self.server.handle_error = quiet  # type: ignore[method-assign]
        self.rate = rate
        self.actions = actions
        self.delay_seconds = delay_seconds
        self._random = random.Random(seed)

    @property  # type: ignore[override]
    def late_seconds(self) -> float:
        """How long a ``"late"`` answer waits: ``delay_seconds`` for a ``"delay"`` fault."""
        return getattr(self._local, "late", None) or self._late_seconds

    @late_seconds.setter
    def late_seconds(self, seconds: float) -> None:
        self._late_seconds = seconds

    def take(self, method: str, path: str) -> int | str | None:
        scripted = super().take(method, path)
        if scripted is not None or method not in ("POST", "PUT") or not path.startswith("/api/"):
            return scripted
        with self._lock:
            if self.rate <= 0 or self._random.random() >= self.rate:
                return None
            action = self._random.choice(self.actions)
            self.applied[action] += 1
        return int(action) if action.isdigit() else action

    def _forward(
        self,
        handler: http.server.BaseHTTPRequestHandler,
        raw: bytes,
        headers: dict[str, str],
        action: str | None,
    ) -> int | None:
        received = time.monotonic()
        fault = action
        if action == "held":
            time.sleep(self.delay_seconds)
            action = None
        forwarded = time.monotonic()
        if action == "delay":  # the base's "late", for this request only, after delay_seconds
            self._local.late = self.delay_seconds
            action = "late"
        try:
            status = super()._forward(handler, raw, headers, action)
        finally:
            self._local.late = None
        if handler.command == "POST" and handler.path.split("?")[0] in _BATCHES:
            entry = Forwarded(received, forwarded, time.monotonic(), handler.path, fault, status,
                              *_batch_summary(raw, headers))  # fmt: skip
            with self._lock:
                self.journal.append(entry)
        return status


_BATCHES = ("/api/metrics", "/api/events")


@dataclass(frozen=True)
class Forwarded:
    """A metrics or events POST a :class:`ChaosProxy` passed to the server, in brief: when it
    arrived, was forwarded and answered (``time.monotonic()``), the fault applied, the status
    answered (None: reset), and which entries it held (the run, their steps or messages)."""

    received: float
    forwarded: float
    answered: float
    path: str
    fault: str | None
    status: int | None
    run: str | None
    entries: tuple[Any, ...]

    def describe(self) -> str:
        shown = list(self.entries[:4]) + (["..."] if len(self.entries) > 4 else [])
        return (
            f"{self.received:.1f}->{self.forwarded:.1f}->{self.answered:.1f} {self.path} "
            f"fault={self.fault} status={self.status} run={self.run} "
            f"{len(self.entries)} entries {shown}"
        )


def _batch_summary(raw: bytes, headers: dict[str, str]) -> tuple[str | None, tuple[Any, ...]]:
    """The run and the steps (metrics) or messages (events) of a batch POST body."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        plain = _inflate(raw, (lower.get("content-encoding") or "").lower())
    except (OSError, zlib.error):
        return None, ()
    media = (lower.get("content-type") or "").split(";")[0].strip().lower()
    body, _ = _decode(media, plain)
    if not isinstance(body, dict):
        return None, ()
    entries = body.get("metrics") or body.get("events") or []
    keys = tuple(e.get("step", e.get("message")) for e in entries if isinstance(e, dict))
    return (str(body.get("run")) if body.get("run") is not None else None), keys
