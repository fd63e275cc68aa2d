"""Sinks: where Simvue records go (a server, a spool on disk, or nowhere), and the sender.

Nothing here knows about OpenTelemetry: sinks take records from the mapping.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from ..config import SimvueConfig, resolve_config
from ..errors import ServerUnreachableError, SimvueValidationError
from .base import NullSink, Sink

__all__ = [
    "MODES",
    "MODE_ENV",
    "NullSink",
    "Sink",
    "create_sink",
    "online_spool_directory",
    "resolve_mode",
    "spool_directory",
]

_LOG = logging.getLogger("simvue_otel.sink")

MODES = ("online", "offline", "disabled")
MODE_ENV = "SIMVUE_OTEL_MODE"


def resolve_mode(
    mode: str | None = None, environ: Any = None, allowed: tuple[str, ...] = MODES
) -> str:
    """The mode given, else ``SIMVUE_OTEL_MODE``, else ``online``; checked against
    ``allowed`` (a ``Run`` also takes ``otlp``)."""
    env = os.environ if environ is None else environ
    chosen = mode or env.get(MODE_ENV) or "online"
    field = "mode" if mode else MODE_ENV
    if chosen not in allowed:
        raise SimvueValidationError(field, f"must be one of {', '.join(allowed)}", chosen)
    return str(chosen)


def spool_directory(config: SimvueConfig) -> Path:
    """Where spools live under the offline directory (what `simvue-otel send` reads)."""
    return config.offline_directory / "otel-spool"


def online_spool_directory(config: SimvueConfig) -> Path:
    """Where an online sink keeps what the server has not taken yet: one folder per server
    URL, so a later process sending to the same server can adopt what a crashed one left."""
    digest = hashlib.sha256((config.url or "").rstrip("/").encode()).hexdigest()[:12]
    return spool_directory(config) / f"server-{digest}"


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
    server that does not answer is not an error: one warning, and the data waits on disk.
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

    client = SimvueClient.from_config(cfg, timeout=timeout, retries=1, backoff=0.2)
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
    return OnlineSink(client, spool, **options)
