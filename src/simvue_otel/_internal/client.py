"""A small client for the Simvue v3 REST API, on one ``requests.Session``.

It speaks the subset tracking needs (version, whoami, folders, runs, tags and metadata,
metrics and events in msgpack batches, heartbeats) and turns every HTTP failure into an
exception from :mod:`simvue_otel._internal.errors`. Connection errors, timeouts, 429 (honouring
``Retry-After``), 502, 503 and 504 are retried with exponential backoff and full jitter; no
other 4xx is ever retried, since sending the same request again cannot change the answer.

Requests the server does not deduplicate (creating a run, posting metrics or events) are only
retried when the server cannot have acted on them (no connection made, 429); any other failure
of theirs is raised at once with :func:`maybe_delivered` telling whether the server may have
stored it, so the caller can check before sending again. The requests made are those of the
official Simvue client, with the same paths, query keys and bodies.

One owner per retry, as in OpenTelemetry's exporters (the exporter retries, the batch processor
does not): where a loop of its own keeps the data and backs off — the online sink's worker,
``simvue-otel send`` — the client is built with ``retries=0``; a call a user waits on and that
nothing else repeats (``Run.reconnect``'s look-up, ``simvue-otel server token``...) keeps the
client's own retries.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import msgpack
import requests
from opentelemetry import context as otel_context

from .config import Secret, SimvueConfig, server_root
from .conventions import ENDED_STATUSES, RUN_KEY_METADATA
from .errors import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
    ServerUnreachableError,
    SimvueHTTPError,
)
from .version import VERSION as _version

__all__ = [
    "MAX_BATCH_ENTRIES",
    "SimvueClient",
    "format_timestamp",
    "maybe_delivered",
    "parse_timestamp",
]

_LOG = logging.getLogger("simvue_otel.client")

_RETRY_STATUS = frozenset({429, 502, 503, 504})

MAX_BATCH_ENTRIES = 16_000
"""Most entries in one metrics or events POST: what the official client sends at most
(``MAX_BUFFER_SIZE`` of its dispatcher), so no request is larger than a server expects."""

# Exceptions from requests (or urllib3 inside them) raised before a request left this host.
_NOT_SENT_REASONS = ("NewConnectionError", "NameResolutionError", "ConnectTimeoutError")


def _never_sent(exc: BaseException) -> bool:
    """Whether a requests failure happened before the server could have seen the request."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError) or isinstance(exc, requests.Timeout):
        return False
    reason = exc.args[0] if exc.args else None
    inner = getattr(reason, "reason", reason)  # MaxRetryError(reason=NewConnectionError(...))
    return type(inner).__name__ in _NOT_SENT_REASONS


def maybe_delivered(exc: BaseException) -> bool:
    """Whether a failed request may nevertheless have been carried out by the server: its
    answer was lost (timeout, reset connection) or was a 5xx, which proxies and servers also
    give after the work was done. False for refusals that prove nothing was stored."""
    if isinstance(exc, ServerUnreachableError):
        return not exc.never_sent
    if isinstance(exc, SimvueHTTPError):
        return exc.status_code >= 500
    return False


_stamp_cache: tuple[int, str] = (-1, "")


def format_timestamp(epoch_seconds: float) -> str:
    """Simvue's timestamp text: UTC, microseconds, no zone suffix.

    Hot on the upload path (one per metric point): the date-and-second prefix is cached, and
    the microseconds are two lookups of three digits (cheaper than a format spec)."""
    global _stamp_cache
    second, micro = divmod(round(epoch_seconds * 1_000_000), 1_000_000)
    cached_second, prefix = _stamp_cache
    if second != cached_second:
        moment = datetime.datetime.fromtimestamp(second, tz=datetime.timezone.utc)
        prefix = moment.strftime("%Y-%m-%dT%H:%M:%S.")
        _stamp_cache = (second, prefix)
    milli, micro = divmod(micro, 1000)
    return prefix + _DIGITS3[milli] + _DIGITS3[micro]


_DIGITS3 = [f"{i:03d}" for i in range(1000)]


def parse_timestamp(text: str) -> float:
    """Epoch seconds from Simvue's timestamp text (UTC assumed when no zone is given)."""
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


@contextlib.contextmanager
def _uninstrumented() -> Iterator[None]:
    """Our own calls to the Simvue server are not the app's telemetry: an app under
    ``opentelemetry-instrument`` with the requests (or urllib3) instrumentation would otherwise
    trace every upload and export it back to Simvue, forever. The SDK's own exporters suppress
    instrumentation the same way."""
    ctx = otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True)
    ctx = otel_context.set_value(otel_context._SUPPRESS_HTTP_INSTRUMENTATION_KEY, True, ctx)
    ctx = otel_context.set_value("suppress_instrumentation", True, ctx)  # older instrumentations
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def _retry_after(response: requests.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), if any."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _detail(response: requests.Response) -> str:
    """The server's explanation: ``detail`` of a JSON body, else the start of the text."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:300] if text else response.reason or "no detail"
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail)[:500]
    return json.dumps(body)[:300]


# OpenSSL's reasons for a TLS handshake answered with plain HTTP bytes (https:// given for a
# server that speaks http): WRONG_VERSION_NUMBER, or RECORD_LAYER_FAILURE from OpenSSL 3.2 on.
_PLAIN_HTTP_REASONS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE"})


def _plain_http_reply(exc: BaseException) -> str | None:
    """OpenSSL's words when a TLS handshake met plain HTTP (a wrong scheme), else None.

    requests wraps the ``ssl.SSLError`` in urllib3's errors (``args`` and causes): walk them."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLError) and item.reason in _PLAIN_HTTP_REASONS:
            return str(item)
        todo.extend([*item.args, getattr(item, "reason", None), item.__cause__, item.__context__])
    return None


class SimvueClient:
    """Talks to one Simvue server as one user.

    ``retries`` is how many times a retryable failure is tried again (so ``retries + 1``
    attempts); waits grow from ``backoff`` seconds, doubling up to ``max_backoff``, each drawn
    uniformly below its bound (full jitter) so many clients do not retry in lockstep.
    """

    def __init__(
        self,
        url: str,
        token: str | Secret,
        *,
        timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        self.url = server_root(url)
        self.api = self.url + "/api"
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        secret = token if isinstance(token, Secret) else Secret(token)
        self._secret = secret
        self._session = session or requests.Session()
        self._session.headers.update(
            {
                "Authorization": f"Bearer {secret.reveal()}",
                "User-Agent": f"simvue-otel/{_version}",
                "Accept": "application/json",
            }
        )
        self._folders: set[str] = {"/"}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: SimvueConfig, **options: Any) -> SimvueClient:
        """A client for the server and token of ``config`` (which must name both)."""
        config.require_online()
        assert config.url is not None and config.token is not None  # require_online checked
        return cls(config.url, config.token, **options)

    def __repr__(self) -> str:
        return f"SimvueClient(url={self.url!r})"

    def copy(self) -> SimvueClient:
        """The same server, user and settings on a new connection pool (a forked child must
        not talk over its parent's sockets)."""
        return SimvueClient(
            self.url,
            self._secret,
            timeout=self.timeout,
            retries=self.retries,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
        )

    def close(self) -> None:
        """Release the connection pool."""
        self._session.close()

    def __enter__(self) -> SimvueClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        msgpack_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        accept: Iterable[int] = (200,),
        timeout: float | None = None,
        idempotent: bool = True,
    ) -> tuple[int, Any]:
        """Send one request (retrying what may succeed later); returns (status, JSON body).

        Statuses in ``accept`` are answers; any other raises the matching error. A request
        that is not ``idempotent`` is retried only when it cannot have reached the server.
        """
        url = f"{self.api}/{path.lstrip('/')}"
        data: bytes | None = None
        send_headers = dict(headers or {})
        if msgpack_body is not None:
            data = msgpack.packb(msgpack_body, use_bin_type=True)
            send_headers["Content-Type"] = "application/msgpack"
        elif json_body is not None:
            data = json.dumps(json_body).encode()
            send_headers["Content-Type"] = "application/json"
        accepted = frozenset(accept)
        attempt = 0
        while True:
            wait: float | None = None
            try:
                with _uninstrumented():
                    response = self._session.request(
                        method,
                        url,
                        data=data,
                        params=params,
                        headers=send_headers,
                        timeout=timeout or self.timeout,
                    )
            except (requests.ConnectionError, requests.Timeout) as exc:
                unsent = _never_sent(exc)
                if attempt >= self.retries or not (idempotent or unsent):
                    raise ServerUnreachableError(
                        method, url, type(exc).__name__, never_sent=unsent
                    ) from exc
                _LOG.debug("%s %s: %s; retrying", method, url, type(exc).__name__)
            else:
                status = response.status_code
                if status in accepted:
                    return status, self._body(response)
                retry = status in _RETRY_STATUS and (idempotent or status == 429)
                if not retry or attempt >= self.retries:
                    raise self._error(method, url, response)
                wait = _retry_after(response)
                _LOG.debug("%s %s: HTTP %d; retrying", method, url, status)
            bound = min(self.max_backoff, self.backoff * (2**attempt))
            delay = random.uniform(0, bound)
            if wait is not None:
                delay = max(delay, min(wait, max(self.max_backoff, 60.0)))
            time.sleep(delay)
            attempt += 1

    @staticmethod
    def _body(response: requests.Response) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    @staticmethod
    def _error(method: str, url: str, response: requests.Response) -> SimvueHTTPError:
        status = response.status_code
        detail = _detail(response)
        if status == 401:
            return AuthenticationError(method, url, status, detail)
        if status == 403:
            return PermissionDeniedError(method, url, status, detail)
        if status == 404:
            return NotFoundError(method, url, status, detail)
        if status >= 500 or status == 429:
            return ServerError(method, url, status, detail)
        return SimvueHTTPError(method, url, status, detail)

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)[1]

    # -- server ---------------------------------------------------------------------------

    def check(self, timeout: float = 5.0) -> str:
        """Make sure ``url`` is a Simvue server that takes this token; returns its API version.

        One ``GET /api/version`` (the official client's own first request), not retried.
        Raises :class:`ConfigurationError` naming what to fix when the token is refused, the
        URL answers but is not a Simvue API, or an ``https://`` URL is answered in plain HTTP
        (a wrong scheme), and :class:`ServerUnreachableError` when nothing answers (which is
        not a configuration error: a node may be cut off for a while).

        429, 502, 503 and 504 are "not answering now", not a wrong URL: a server that is
        restarting or overloaded, or a gateway in front of one whose upstream is down (nginx
        answers 502 with an HTML page). They raise :class:`ServerUnreachableError`, as a reset
        or a timeout does, so the caller takes the path of a server that is down. The official
        client treats 502, 503 and 504 alike with connection errors and timeouts: its GET
        retries all of them (simvue 2.6.2, simvue/api/request.py:40 and 233-286) before its
        version check gives up (simvue/config/user.py:182-190); 429 too, which
        :meth:`request` retries as well.
        """
        url = f"{self.api}/version"
        try:
            with _uninstrumented():
                response = self._session.get(url, timeout=timeout)
        except requests.exceptions.SSLError as exc:
            plain = _plain_http_reply(exc)
            if plain is None:  # a handshake cut short, say: not answering now
                raise ServerUnreachableError("GET", url, type(exc).__name__) from exc
            raise ConfigurationError(
                f"SIMVUE_URL={self.url!r} does not speak https: GET {url} was answered in "
                f"plain HTTP ({plain}); write SIMVUE_URL (or [server] url in simvue.toml) "
                "with http://"
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ServerUnreachableError("GET", url, type(exc).__name__) from exc
        except requests.exceptions.ChunkedEncodingError as exc:  # the answer was cut off
            raise ServerUnreachableError("GET", url, type(exc).__name__) from exc
        status = response.status_code
        if status in _RETRY_STATUS:
            reason = f"HTTP {status}" + (f" {response.reason}" if response.reason else "")
            raise ServerUnreachableError("GET", url, reason)
        if status in (401, 403):
            raise ConfigurationError(
                f"the Simvue server at {self.url} refused the token (HTTP {status}: "
                f"{_detail(response)}): set SIMVUE_TOKEN (or [server] token in simvue.toml) "
                "to a valid, unexpired token for this server"
            )
        body = self._body(response)
        if status != 200 or not isinstance(body, dict) or "version" not in body:
            answer = f"HTTP {status}" if status != 200 else "an answer that is not Simvue's"
            raise ConfigurationError(
                f"SIMVUE_URL={self.url!r} is not a Simvue server: GET {url} gave {answer}; "
                "set SIMVUE_URL (or [server] url in simvue.toml) to the server's address, "
                "e.g. http://127.0.0.1:8765 as `simvue-otel server` prints it"
            )
        return str(body["version"])

    def version(self) -> str:
        """The server's API version (``GET /api/version``)."""
        body = self._get("version")
        return str(body.get("version")) if isinstance(body, dict) else str(body)

    def whoami(self) -> dict[str, Any]:
        """The user the token belongs to."""
        body = self._get("whoami")
        return dict(body) if isinstance(body, dict) else {}

    # -- folders --------------------------------------------------------------------------

    def create_folder(self, path: str) -> str | None:
        """Make sure the folder exists; returns its id (an existing one answers 409 + id)."""
        _, body = self.request("POST", "folders", json_body={"path": path}, accept=(200, 409))
        with self._lock:
            self._folders.add(path)
        return str(body["id"]) if isinstance(body, dict) and "id" in body else None

    def find_folder(self, path: str) -> dict[str, Any] | None:
        """The folder at ``path``, or None."""
        found = self._list("folders", [f"path == {path}"], count=1)
        return found[0] if found else None

    # -- runs -----------------------------------------------------------------------------

    def create_run(
        self,
        *,
        name: str,
        folder: str = "/",
        description: str | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        status: str = "running",
        visibility: Mapping[str, Any] | None = None,
        ttl: int | None = None,
        heartbeat_timeout: int | None = None,
        started: float | None = None,
        system: Mapping[str, Any] | None = None,
    ) -> str:
        """Create a run (``created`` = queued, ``running`` = live); returns its id.

        Every call makes a new run (a Simvue server does not deduplicate), so it is never
        retried once the request may have left: on an unknown outcome the caller looks the
        run up before creating it again.
        """
        with self._lock:
            known = folder in self._folders
        if not known:
            self.create_folder(folder)
        body: dict[str, Any] = {
            "folder": folder,
            "name": name,
            "status": status,
            "tags": list(tags or ()),
            "metadata": dict(metadata or {}),
            "visibility": dict(visibility or {"public": False, "tenant": False, "users": []}),
        }
        if description is not None:
            body["description"] = description
        if ttl is not None:
            body["ttl"] = ttl
        if heartbeat_timeout is not None:
            body["heartbeat_timeout"] = heartbeat_timeout
        if system:
            body["system"] = dict(system)
        if started is not None and status == "running":
            body["started"] = format_timestamp(started)  # as the official offline sender does
        # A 409 carrying an id is taken as the run, as the official client takes it: simvue
        # 2.6.2, simvue/api/objects/base.py:818-830 (``_post_single`` accepts 200 and 409 and
        # keeps ``_json_response.get("id")``). A run carrying another run key is not ours.
        code, reply = self.request(
            "POST", "runs", json_body=body, accept=(200, 409), idempotent=False
        )
        if not isinstance(reply, dict) or "id" not in reply:
            raise SimvueHTTPError("POST", f"{self.api}/runs", code, "the reply carried no run id")
        run_id = str(reply["id"])
        key = body["metadata"].get(RUN_KEY_METADATA)
        if code == 409 and key is not None:
            held = (self.get_run(run_id).get("metadata") or {}).get(RUN_KEY_METADATA)
            if held != key:
                raise SimvueHTTPError(
                    "POST",
                    f"{self.api}/runs",
                    409,
                    f"the server answered 409 with run {run_id}, which carries run key "
                    f"{held!r}, not this run's {key!r}: not adopted",
                )
        return run_id

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The run with this id (NotFoundError when missing or not visible)."""
        return dict(self._get(f"runs/{run_id}"))

    def find_runs(
        self,
        filters: Sequence[str] = (),
        *,
        count: int | None = None,
        sorting: Sequence[Mapping[str, Any]] | None = None,
        metadata: bool = False,
        metrics: bool = False,
    ) -> list[dict[str, Any]]:
        """Runs matching every filter (Simvue's filter grammar), all pages, asked for as the
        official ``Client.get_runs`` asks: basic fields, plus metadata and the metric
        summaries when asked for."""
        flags = {
            "return_basic": "True",
            "return_system": "False",
            "return_timing": "False",
            "return_metrics": str(bool(metrics)),
            "return_alerts": "False",
            "return_metadata": str(bool(metadata)),
        }
        return self._list("runs", filters, count=count, sorting=sorting, extra=flags)

    def find_runs_by_name(self, name: str, folder: str | None = None) -> list[dict[str, Any]]:
        """The visible runs with this name (in ``folder`` if given), newest first."""
        filters = [f"name == {name}"]
        if folder is not None:
            filters.append(f"folder.path == {folder}")
        return self.find_runs(filters, count=100, sorting=[{"id": "created", "desc": True}])

    def find_run_by_key(self, run_key: str) -> dict[str, Any] | None:
        """The run carrying this simvue-otel run key in its metadata (as the list gives it:
        ``id``, ``name``, ``status``...), or None.

        The key is a flat metadata entry, found with the ``metadata.<key> == value`` filter
        the official client's own tests use. The key of each run returned is checked (a
        server that ignored the filter would list unrelated runs): pages are read, newest
        first, until a run carries it."""
        flags = {
            "return_basic": "True",
            "return_system": "False",
            "return_timing": "False",
            "return_metrics": "False",
            "return_alerts": "False",
            "return_metadata": "True",
        }
        pages = self._pages(
            "runs",
            [f"metadata.{RUN_KEY_METADATA} == {run_key}"],
            sorting=[{"id": "created", "desc": True}],
            extra=flags,
        )
        for run in pages:
            if "id" not in run:
                continue
            metadata = run.get("metadata")
            if not isinstance(metadata, Mapping):  # the list left it out: ask the run
                metadata = self.get_run(str(run["id"])).get("metadata") or {}
            if metadata.get(RUN_KEY_METADATA) == run_key:
                return run
        return None

    def update_run(self, run_id: str, **changes: Any) -> None:
        """Change some fields of a run (``PUT``: only the keys given; metadata is merged)."""
        if changes:
            self.request("PUT", f"runs/{run_id}", json_body=changes)

    def set_status(self, run_id: str, status: str, *, endtime: float | None = None) -> None:
        """Set the status; a final status also records the end time."""
        changes: dict[str, Any] = {"status": status}
        if status in ENDED_STATUSES:
            changes["endtime"] = format_timestamp(endtime if endtime is not None else time.time())
        self.update_run(run_id, **changes)

    def update_metadata(self, run_id: str, metadata: Mapping[str, Any]) -> None:
        """Merge metadata into the run's (existing keys replaced, others kept)."""
        self.update_run(run_id, metadata=dict(metadata))

    def heartbeat(self, run_id: str) -> None:
        """Tell the server the run is alive (keeps it from turning ``lost``)."""
        self.request("PUT", f"runs/{run_id}/heartbeat")

    def abort_requested(self, run_id: str) -> bool:
        """Whether someone asked the server to abort this run."""
        body = self._get(f"runs/{run_id}/abort")
        return bool(body.get("status")) if isinstance(body, dict) else False

    # -- metrics and events ---------------------------------------------------------------

    def post_metrics(self, run_id: str, points: Sequence[Mapping[str, Any]]) -> None:
        """Post metric points ``{values, step, time, timestamp}`` in one msgpack batch (at most
        :data:`MAX_BATCH_ENTRIES`). Not retried once it may have reached the server."""
        self._post_batch("metrics", run_id, points)

    def post_events(self, run_id: str, events: Sequence[Mapping[str, Any]]) -> None:
        """Post events ``{message, log_level, timestamp}`` in one msgpack batch (at most
        :data:`MAX_BATCH_ENTRIES`). Not retried once it may have reached the server."""
        self._post_batch("events", run_id, events)

    def _post_batch(self, kind: str, run_id: str, entries: Sequence[Mapping[str, Any]]) -> None:
        if len(entries) > MAX_BATCH_ENTRIES:
            raise ValueError(f"{len(entries)} {kind} entries in one POST (most: 16,000)")
        self.request(
            "POST", kind, msgpack_body={"run": run_id, kind: list(entries)}, idempotent=False
        )

    def metric_names(self, run_id: str) -> list[str]:
        """Names of the run's metrics."""
        body = self._get("metrics/names", {"runs": json.dumps([run_id])})
        return [str(n) for n in body or []]

    def get_metrics(
        self,
        run_id: str,
        names: Sequence[str] | None = None,
        xaxis: str = "step",
        *,
        max_points: int | None = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """The points of the named metrics (all when None): ``{name: [{step, value, ...},
        ...]}``. A server may give fewer points than it holds unless ``max_points`` asks for
        at least that many (the official client's test of this passes twice the number
        logged), and may leave out ``time`` and ``timestamp``: see :meth:`read_metrics`."""
        wanted = list(names) if names is not None else self.metric_names(run_id)
        if not wanted:
            return {}
        params: dict[str, Any] = {
            "runs": json.dumps([run_id]),
            "metrics": json.dumps(wanted),
            "xaxis": xaxis,
            "aggregate": "False",
        }
        if max_points is not None:
            params["max_points"] = max(1, max_points)
        body = self._get("metrics", params)
        per_run = body.get(run_id, {}) if isinstance(body, dict) else {}
        return {str(k): list(v) for k, v in per_run.items()} if isinstance(per_run, dict) else {}

    def metric_counts(self, run_id: str) -> dict[str, int] | None:
        """How many points the server holds per metric of the run (its ``metrics`` summary,
        ``{name: {"count": n, ...}}``); None when the run's answer carries no summary."""
        summary = self.get_run(run_id).get("metrics")
        if not isinstance(summary, Mapping):
            return None
        counts: dict[str, int] = {}
        for name, stats in summary.items():
            count = stats.get("count") if isinstance(stats, Mapping) else None
            if isinstance(count, int) and not isinstance(count, bool):
                counts[str(name)] = count
        return counts

    def read_metrics(
        self, run_id: str, names: Sequence[str]
    ) -> tuple[dict[str, list[dict[str, Any]]], set[str]]:
        """Every point of the named metrics, and which of them the answer provably holds in
        full: the run's point counts are read first, then the points, asked for with a
        ``max_points`` above what is held (as the official client asks for all of them); a
        metric whose answer has fewer points than counted before (or has no count) is not
        complete."""
        counts = self.metric_counts(run_id)
        held = sum(counts.get(n, 0) for n in names) if counts is not None else 0
        points = self.get_metrics(run_id, names, max_points=2 * held + 1000)
        if counts is None:
            return points, set()
        complete = {n for n in names if len(points.get(n, ())) >= counts.get(n, 0)}
        return points, complete

    def get_events(self, run_id: str, *, page: int = 1000) -> list[dict[str, Any]]:
        """Every event of the run, oldest first (as far as the server gives them)."""
        return self.read_events(run_id, page=page)[0]

    def read_events(self, run_id: str, *, page: int = 1000) -> tuple[list[dict[str, Any]], bool]:
        """The run's events, oldest first, paged by the total ``count`` of the reply (a server
        may give shorter pages than asked for), and whether that total was reached: without
        a total, or when a page comes back empty before it, the answer is not complete."""
        events: list[dict[str, Any]] = []
        while True:
            body = self._get(
                "events", {"run": run_id, "filters": "", "start": len(events), "count": page}
            )
            data = list(body.get("data") or []) if isinstance(body, dict) else []
            total = body.get("count") if isinstance(body, dict) else None
            events.extend(data)
            if not isinstance(total, int) or isinstance(total, bool):
                return events, False
            if len(events) >= total:
                return events, True
            if not data:
                return events, False

    # -- helpers --------------------------------------------------------------------------

    def _list(
        self,
        path: str,
        filters: Sequence[str],
        *,
        count: int | None = None,
        sorting: Sequence[Mapping[str, Any]] | None = None,
        page: int = 100,
        extra: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if count is not None and count <= 0:
            return items
        size = page if count is None else max(1, min(page, count))
        for item in self._pages(path, filters, sorting=sorting, page=size, extra=extra):
            items.append(item)
            if count is not None and len(items) >= count:
                break
        return items

    def _pages(
        self,
        path: str,
        filters: Sequence[str],
        *,
        sorting: Sequence[Mapping[str, Any]] | None = None,
        page: int = 100,
        extra: Mapping[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The items of a list endpoint, page after page, read lazily. Paged by the reply's
        total ``count``, as the official client pages (a server may give shorter pages than
        asked for); by a short page only when the reply has no total."""
        start = 0
        while True:
            params: dict[str, Any] = {
                "filters": json.dumps(list(filters)),
                "start": start,
                "count": page,
            }
            if sorting:
                params["sorting"] = json.dumps(list(sorting))
            if extra:
                params.update(extra)
            body = self._get(path, params)
            data = list(body.get("data") or []) if isinstance(body, dict) else []
            total = body.get("count") if isinstance(body, dict) else None
            yield from data
            start += len(data)
            if not data:
                return
            if isinstance(total, int) and not isinstance(total, bool):
                if start >= total:
                    return
            elif len(data) < page:
                return
