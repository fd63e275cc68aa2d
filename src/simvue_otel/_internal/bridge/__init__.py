"""``simvue-otel bridge``: OTLP in (HTTP and gRPC), Simvue out, through the one mapping.

Run identity comes from ``simvue.run.key``: a run is looked up (the run index beside the
spool, then the server's metadata filter) before it is ever created, and re-sent requests are
recognised in a request log beside the spool. Several replicas behind a collector's
load-balancing exporter (routing by Resource, see ``docs/deploy.md``) never make two runs of one.
An operator watches it through structured log lines (``key=value``: info at start, adoption of
a spool and shutdown, debug per request) and the Prometheus metrics at ``GET /metrics``.
Needs the ``bridge`` extra (an ASGI framework and server, and the Prometheus client).
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..config import resolve_config
from ..config import shutdown_timeout as config_shutdown_timeout
from ..hints import command
from ..sink import create_sink, resolve_mode, spool_directory

__all__ = ["is_loopback", "loopback_problem", "parse_listen", "serve_bridge"]

_LOG = logging.getLogger("simvue_otel.bridge")


def parse_listen(value: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT`` (or ``HOST``, or ``:PORT``) → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{value!r}: the port must be a number from 0 to 65535")
    return host.strip("[]") or "127.0.0.1", int(port)


def loopback_problem(host: str) -> str | None:
    """None when every address ``host`` stands for is a loopback one (``127.0.0.0/8``,
    ``::1``), so that only this machine can reach a listener on it; else why not, naming
    the addresses. A name is resolved (``127.x.example`` may be anywhere, and ``localhost``
    is whatever the resolver says), and one that cannot be resolved is not loopback."""
    name = host.strip("[]")
    try:
        found = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return f"{host!r} cannot be resolved ({exc}), so it is not known to be loopback"
    addresses = sorted({str(info[4][0]) for info in found})
    outside = [a for a in addresses if not _loopback_address(a)]
    if not addresses:
        return f"{host!r} resolves to no address"
    if outside:
        what = "is" if outside == [name] else f"resolves to {', '.join(outside)}, which is"
        return f"{host!r} {what} not a loopback address"
    return None


def _loopback_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope (%eth0) aside
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1
    return ip.is_loopback


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback one (see
    :func:`loopback_problem`)."""
    return loopback_problem(host) is None


def _log_to_stderr(level: str) -> None:
    """Show the package's log lines at ``level`` (the bridge's ``--log-level``), one per line
    with time, level and logger, unless the embedding program configured logging already."""
    package = logging.getLogger("simvue_otel")
    package.setLevel(level.upper())
    if package.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package.addHandler(handler)


def _left_in_spool(spool_dir: Path) -> tuple[int, int]:
    """(segments, bytes) not yet uploaded in a spool and held by no live writer: what earlier
    processes left there, which this bridge adopts."""
    from ..sink.spool import SpoolReader

    try:
        reader = SpoolReader(spool_dir)
        return len(reader.segments()), reader.pending_bytes()
    except OSError:
        return 0, 0


def serve_bridge(
    listen: tuple[str, int],
    grpc_listen: tuple[str, int] | None,
    *,
    token: str | None,
    mode: str | None = None,
    max_body: int = 20 * 2**20,
    max_backlog: int = 10_000,
    shutdown_timeout: float | None = None,
    log_level: str = "warning",
    metrics_token: str | None = None,
    out: Any = sys.stdout,
) -> None:
    """Run the bridge until SIGINT/SIGTERM; then stop listening and drain the sink."""
    import uvicorn

    from .core import BridgeCore
    from .grpc_listener import start_grpc_server
    from .http_listener import create_http_app
    from .metrics import replica_name

    _log_to_stderr(log_level)
    began = time.monotonic()
    replica = replica_name()
    chosen = resolve_mode(mode)
    config = resolve_config()
    if chosen == "online":
        # Write-ahead: every accepted batch goes to disk before the sender answers 200.
        sink = create_sink("online", config, max_memory_points=0, live_window=180.0)
        target = f"the Simvue server at {config.url}"
    else:
        sink = create_sink(chosen, config)
        target = f"the spool in {spool_directory(config)}" if chosen == "offline" else "nowhere"
    spool_dir = sink.spool_dir
    if chosen == "online" and spool_dir is not None:
        segments, size = _left_in_spool(spool_dir)
        if segments:
            _LOG.info(
                "adopt replica=%s spool=%s segments=%d bytes=%d: uploading what an earlier "
                "process left, once the server answers",
                replica, spool_dir, segments, size,
            )  # fmt: skip
    from .core import RequestLog

    requests = RequestLog(spool_directory(config) / "bridge-requests.sqlite")
    core = BridgeCore(
        sink,
        token=token,
        max_backlog=max_backlog,
        requests=requests,
        metrics_token=metrics_token,
        mode=chosen,
    )
    grpc_server = None
    if grpc_listen is not None:
        grpc_server, grpc_port = start_grpc_server(core, *grpc_listen, max_body=max_body)
        grpc_listen = (grpc_listen[0], grpc_port)
    app = create_http_app(core, max_body=max_body)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=listen[0],
            port=listen[1],
            log_level=log_level,
            access_log=False,
            # Longer than any Retry-After we send, so a sender that waits and re-sends on its
            # pooled connection does not find it just closed.
            timeout_keep_alive=30,
        )
    )
    lines = [f"simvue-otel bridge: OTLP/HTTP on http://{listen[0]}:{listen[1]}/v1/"]
    if grpc_listen is not None:
        lines.append(f"simvue-otel bridge: OTLP/gRPC on {grpc_listen[0]}:{grpc_listen[1]}")
    lines.append(f"simvue-otel bridge: writing to {target}")
    lines.append(
        "simvue-otel bridge: bearer token required"
        if token
        else "simvue-otel bridge: no token (listening on loopback only)"
    )
    print("\n".join(lines), file=out, flush=True)
    _LOG.info(
        "start replica=%s http=%s:%d grpc=%s mode=%s spool=%s token=%s metrics=/metrics",
        replica, listen[0], listen[1],
        f"{grpc_listen[0]}:{grpc_listen[1]}" if grpc_listen is not None else "off",
        chosen, spool_dir or spool_directory(config), "required" if token else "none",
    )  # fmt: skip
    # uvicorn handles SIGINT/SIGTERM during run() and re-raises them afterwards to the
    # handlers found before; quiet ones here let the drain below run instead of dying.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    try:
        server.run()
    finally:
        _LOG.info("shutdown replica=%s stage=listeners-closing", replica)
        if grpc_server is not None:
            grpc_server.stop(grace=5).wait()
        waiting = sink.backlog()
        delivered = sink.close(
            config_shutdown_timeout() if shutdown_timeout is None else shutdown_timeout
        )
        requests.close()
        _LOG.info(
            "shutdown replica=%s stage=done delivered=%s backlog_at_stop=%d runs_seen=%d "
            "uptime_s=%.0f",
            replica, str(delivered).lower(), waiting, core.mapper.runs_seen,
            time.monotonic() - began,
        )  # fmt: skip
        if not delivered:
            send = command("send", "--cache", config.offline_directory)
            print(
                "simvue-otel bridge: some data could not be delivered before shutdown; it is "
                f"kept in {spool_directory(config)}; upload it with: {send}",
                file=sys.stderr,
            )
