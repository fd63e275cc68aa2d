"""Sinks: where Simvue records go (a server, a spool on disk, or nowhere), and the sender.

Nothing here knows about OpenTelemetry: sinks take records from the mapping.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from ..config import SimvueConfig, resolve_config, setting
from ..errors import ServerUnreachableError, SimvueValidationError
from .base import NullSink, Sink
from .files import private_dir, read_private, replace_private

__all__ = [
    "MODES",
    "MODE_ENV",
    "NullSink",
    "Sink",
    "create_sink",
    "online_spool_directory",
    "read_identity",
    "resolve_mode",
    "spool_directory",
    "write_identity",
]

_LOG = logging.getLogger("simvue_otel.sink")

MODES = ("online", "offline", "disabled")
MODE_ENV = "SIMVUE_OTEL_MODE"


def resolve_mode(
    mode: str | None = None, environ: Any = None, allowed: tuple[str, ...] = MODES
) -> str:
    """The mode given, else ``SIMVUE_OTEL_MODE``, else ``online``; checked against
    ``allowed`` (a ``Run`` also takes ``otlp``)."""
    chosen = mode or setting(MODE_ENV, environ) or "online"
    field = "mode" if mode else MODE_ENV
    if chosen not in allowed:
        raise SimvueValidationError(field, f"must be one of {', '.join(allowed)}", chosen)
    return str(chosen)


def spool_directory(config: SimvueConfig) -> Path:
    """Where spools live under the offline directory (what `simvue-otel send` reads)."""
    return config.offline_directory / "otel-spool"


def online_spool_directory(config: SimvueConfig) -> Path:
    """Where an online sink keeps what the server has not taken yet: one folder per server
    URL *and identity* (the token's user), so a later process sending to the same server as
    the same user adopts what a crashed one left, and nobody else's data is ever uploaded
    under another name. The folder's ``identity.json`` says whose it is."""
    who = f"{(config.url or '').rstrip('/')}\n{config.identity()}"
    digest = hashlib.sha256(who.encode()).hexdigest()[:12]
    return spool_directory(config) / f"server-{digest}"


IDENTITY_FILE = "identity.json"


def write_identity(spool_dir: Path, url: str, identity: str) -> None:
    """Record whose data a spool folder holds (server and user; never the token)."""
    path = spool_dir / IDENTITY_FILE
    if path.exists() or path.is_symlink():
        return
    private_dir(spool_dir)
    replace_private(path, json.dumps({"server": url, "identity": identity}).encode("utf-8"))


def read_identity(spool_dir: Path) -> tuple[str, str] | None:
    """(server, identity) a spool folder's data was logged under, or None when unrecorded."""
    try:
        entry = json.loads(read_private(spool_dir / IDENTITY_FILE).decode("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict):
        return None
    return str(entry.get("server", "")), str(entry.get("identity", ""))


def create_sink(
    mode: str | None = None,
    config: SimvueConfig | None = None,
    *,
    timeout: float = 10.0,
    **options: Any,
) -> Sink:
    """A sink for ``mode`` (see :func:`resolve_mode`), configured from ``config`` (default:
    arguments, environment and simvue.toml as :func:`resolve_config` finds them).

    Online mode raises :class:`ConfigurationError` at once when no server URL or token is set,
    or when the server answers but refuses the token or is not a Simvue API, so a
    misconfiguration shows up when the exporter is made, not as data that never arrives. A
    server that does not answer is not an error, nor one that answers 429, 502, 503 or 504
    (restarting behind a gateway): one warning, and the data waits on disk.
    ``timeout`` bounds each HTTP request; ``options`` go to :class:`OnlineSink`.
    """
    chosen = resolve_mode(mode)
    if chosen == "disabled":
        return NullSink()
    cfg = config or resolve_config()
    if chosen == "offline":
        from .offline import OfflineSink

        return OfflineSink(spool_directory(cfg))
    from ..client import SimvueClient
    from .online import OnlineSink

    # The sink's worker owns retries (it keeps the data and backs off): the client makes none.
    client = SimvueClient.from_config(cfg, timeout=timeout, retries=0)
    spool = online_spool_directory(cfg)
    try:
        client.check()
    except ServerUnreachableError as exc:
        _LOG.warning(
            "the Simvue server at %s does not answer (%s); data is kept in %s and sent when it "
            "answers",
            client.url,
            exc.reason,
            spool,
        )
    except BaseException:
        client.close()
        raise
    write_identity(spool, client.url, cfg.identity())
    return OnlineSink(client, spool, **options)
