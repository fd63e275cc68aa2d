"""Where the Simvue server URL, token and offline directory come from.

Resolution follows the official Simvue client: explicit arguments beat the environment
(``SIMVUE_URL``, ``SIMVUE_TOKEN``, ``SIMVUE_OFFLINE_DIRECTORY``), which beats a
``simvue.toml`` (or ``.simvue.toml``) file found from the working directory upwards or in the
home directory. The token is held in a :class:`Secret` so it never shows in a repr or message.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .hints import command

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    # tomli is installed only on 3.10, so a 3.11+ environment checking for 3.10 lacks it.
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "CONFIG_FILE_NAMES",
    "Secret",
    "SimvueConfig",
    "find_config_file",
    "resolve_config",
    "server_root",
    "token_identity",
]

CONFIG_FILE_NAMES: tuple[str, ...] = ("simvue.toml", ".simvue.toml")


def _how_to_configure() -> str:
    """The end of every "no server configured" message: what to set, and a command that
    starts a local server (named as this shell can run it, see :mod:`.hints`)."""
    return (
        "set SIMVUE_URL and SIMVUE_TOKEN, or [server] url and token in simvue.toml; "
        f"run `{command('server')}` to get a local server with a ready token"
    )


class Secret:
    """A token that shows as ``Secret('********')``; call :meth:`reveal` to get the text."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Secret wraps a str, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """Return the wrapped token; use only where it is sent, never where it is shown."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self._value == other._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class SimvueConfig:
    """The resolved connection settings: server URL, token, offline directory, source file."""

    url: str | None
    token: Secret | None
    offline_directory: Path
    config_file: Path | None

    def identity(self) -> str:
        """Who this configuration sends as, in words safe to write down and show: the user
        (and tenant) the token names, else a fingerprint of the token; never the token."""
        return token_identity(self.token.reveal()) if self.token else "no token"

    def api_url(self) -> str:
        """Return the REST API root: the URL without trailing slashes, plus ``/api``."""
        if self.url is None:
            raise ConfigurationError(f"no Simvue server URL configured; {_how_to_configure()}")
        return self.url.rstrip("/") + "/api"

    def require_online(self) -> None:
        """Raise :class:`ConfigurationError` unless a usable URL and a token are set."""
        url = self.url
        if not url or not self.token:
            missing = " and ".join(
                name
                for name, present in (("SIMVUE_URL", url), ("SIMVUE_TOKEN", self.token))
                if not present
            )
            raise ConfigurationError(
                f"no Simvue server configured ({missing} missing); {_how_to_configure()}"
            )
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"the Simvue server URL must start with http:// or https:// "
                f"(given: {url!r}); {_how_to_configure()}"
            )


def find_config_file(cwd: Path, home: Path) -> Path | None:
    """Return the Simvue config file that applies in ``cwd``, or ``None``.

    For ``simvue.toml`` and then ``.simvue.toml``, look in ``cwd`` and each parent up to the
    filesystem root, then in ``home``; the first file found wins.
    """
    start = cwd.absolute()
    for name in CONFIG_FILE_NAMES:
        for directory in (start, *start.parents):
            candidate = directory / name
            if candidate.is_file():
                return candidate
        candidate = home / name
        if candidate.is_file():
            return candidate
    return None


def _load_file(path: Path) -> dict[str, Any]:
    """Parse a config file, turning read and TOML errors into ConfigurationError."""
    try:
        with path.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from None
    return data


def _file_string(data: dict[str, Any], table: str, key: str, path: Path) -> str | None:
    """Return ``[table] key`` from a parsed file if it is a string; refuse other types."""
    section = data.get(table)
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigurationError(f"[{table}] in {path} must be a table")
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(
            f"[{table}] {key} in {path} must be a string, not {type(value).__name__}"
        )
    return value or None


def _expand_home(value: str, home: Path) -> Path:
    """Expand a leading ``~`` against ``home`` (``~user`` as the OS does)."""
    if value == "~" or value.startswith(("~/", "~" + os.sep)):
        return home / value[2:] if len(value) > 1 else home
    return Path(os.path.expanduser(value))


def token_identity(token: str) -> str:
    """The identity a token speaks for: ``user`` or ``user@tenant`` from a JWT's ``sub`` and
    ``tenant`` claims (read without verifying, as the official client reads ``exp``), else
    ``token <fingerprint>`` (12 hex digits of its SHA-256)."""
    parts = token.split(".")
    if len(parts) == 3:
        try:
            padded = parts[1] + "=" * (-len(parts[1]) % 4)
            claims = json.loads(base64.urlsafe_b64decode(padded))
        except (ValueError, binascii.Error):
            claims = None
        if isinstance(claims, dict) and isinstance(claims.get("sub"), str) and claims["sub"]:
            tenant = claims.get("tenant")
            return f"{claims['sub']}@{tenant}" if isinstance(tenant, str) else claims["sub"]
    return "token " + hashlib.sha256(token.encode()).hexdigest()[:12]


def refuse_credentials(url: str, where: str = "the Simvue server URL") -> None:
    """Raise :class:`ConfigurationError` when ``url`` holds a user name or password
    (``http://user:pass@host``): HTTP libraries send those as Basic authentication in place
    of the Bearer token, and print them with the URL in errors. The message shows the URL
    with its credentials masked, never them."""
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    if "@" not in authority:
        return
    host = authority.rpartition("@")[2]
    path = rest[end:].split("?", 1)[0].split("#", 1)[0]
    shown = f"{scheme}{sep}***@{host}{path}"
    raise ConfigurationError(
        f"{where} holds a user name or password ({shown}): remove the 'user:password@' part. "
        "simvue-otel signs in with the token (SIMVUE_TOKEN), and credentials in the URL would "
        "be sent in its place"
    )


def server_root(url: str) -> str:
    """The server's address as simvue-otel keeps it: no trailing slash, and no ``/api`` (the
    API address, which users often copy, names the same server, as the official client
    takes it). A URL holding credentials is refused (:func:`refuse_credentials`)."""
    refuse_credentials(url)
    root = url.strip().rstrip("/")
    if root.endswith("/api"):
        root = root[: -len("/api")].rstrip("/")
    return root


def resolve_config(
    url: str | None = None,
    token: str | Secret | None = None,
    offline_directory: str | Path | None = None,
    *,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> SimvueConfig:
    """Resolve the connection settings: arguments, then environment, then config file.

    Empty strings count as unset. The offline directory defaults to ``home/.simvue`` and has
    ``~`` expanded. A config file that is unreadable, not TOML, or has a non-string value
    raises :class:`ConfigurationError` naming the file.
    """
    cwd = Path.cwd() if cwd is None else cwd
    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else home

    config_file = find_config_file(cwd, home)
    data = _load_file(config_file) if config_file is not None else {}

    def pick(explicit: str | None, env_name: str, table: str, key: str) -> str | None:
        if explicit:
            return explicit
        from_env = environ.get(env_name)
        if from_env:
            return from_env
        if config_file is None:
            return None
        return _file_string(data, table, key, config_file)

    if isinstance(token, Secret):
        token = token.reveal()
    resolved_url = pick(url, "SIMVUE_URL", "server", "url")
    if resolved_url:
        if url:
            where = "the server URL given"
        elif environ.get("SIMVUE_URL"):
            where = "SIMVUE_URL"
        else:
            where = f"[server] url in {config_file}"
        refuse_credentials(resolved_url, where)
    resolved_token = pick(token, "SIMVUE_TOKEN", "server", "token")
    offline = pick(
        None if offline_directory is None else str(offline_directory),
        "SIMVUE_OFFLINE_DIRECTORY",
        "offline",
        "cache",
    )
    return SimvueConfig(
        url=server_root(resolved_url) if resolved_url else resolved_url,
        token=Secret(resolved_token) if resolved_token is not None else None,
        offline_directory=_expand_home(offline, home) if offline else home / ".simvue",
        config_file=config_file,
    )


# -- Every environment variable simvue-otel reads, in one table ---------------------------------


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, its default (None: unset), who reads it and what
    it means (Markdown). The configuration page of the docs is generated from this table."""

    name: str
    default: str | None
    used_by: str
    doc: str
    file_key: str | None = None
    """Where ``simvue.toml`` holds it (the three server settings only)."""
    core: bool = False
    """One of the three settings shared with the official client (URL, token, offline)."""


SETTINGS: tuple[Setting, ...] = (
    Setting("SIMVUE_URL", None, "online mode", "the Simvue server's root URL (without a "
            "user name or password: the token signs in)", "[server] url", True),
    Setting("SIMVUE_TOKEN", None, "online mode", "a Simvue access token",
            "[server] token", True),
    Setting(
        "SIMVUE_OFFLINE_DIRECTORY", "~/.simvue", "spools, offline runs",
        "where offline runs and undelivered data are kept", "[offline] cache", True,
    ),
    Setting(
        "SIMVUE_OTEL_MODE", "online", "exporters, bridge, `Run()` without `mode`",
        "`online`, `offline` or `disabled` (and `otlp` for `Run`) "
        "([details](exporters.md#environment-variables))",
    ),
    Setting(
        "SIMVUE_OTEL_SHUTDOWN_TIMEOUT", "30", "`Run`, exporters, bridge",
        "seconds to wait for delivery at shutdown",
    ),
    Setting(
        "SIMVUE_OTEL_SETTLE_SECONDS", "15", "`Run`, exporters, bridge, `simvue-otel send`",
        "seconds after a metrics or events POST began before its part, if no answer came, "
        "is checked against the server and what is missing sent again: longer than any "
        "gateway on the way may hold a request before passing it on "
        "([conventions §10](conventions.md#10-delivery-guarantees))",
    ),
    Setting(
        "SIMVUE_OTEL_SPAN_EVENTS", "all", "`Run`, exporters, bridge",
        "which spans become events: `all`, `errors` or `none`",
    ),
    Setting(
        "SIMVUE_OTEL_BRIDGE_TOKEN", None, "`simvue-otel bridge`",
        "the bearer token senders must present ([the bridge](exporters.md#the-otlp-bridge))",
    ),
    Setting(
        "SIMVUE_OTEL_BRIDGE_METRICS_TOKEN", None, "`simvue-otel bridge`",
        "a read-only token for `GET /metrics` on a bridge that has a token: a scraper holding "
        "it cannot send telemetry ([watching a bridge](deploy.md#watching-a-bridge))",
    ),
    Setting(
        "SIMVUE_DISABLE_SYSTEM_METRICS", None, "`Run`",
        "any value: do not record the run's `system` field (the official client's variable; "
        "[conventions §2](conventions.md#system-and-environment))",
    ),
    Setting(
        "SIMVUE_DISABLE_GIT_METRICS", None, "`Run`",
        "any value: do not record `git` metadata (the official client's variable)",
    ),
    Setting(
        "SIMVUE_DISABLE_ENVIRONMENT_METRICS", None, "`Run`",
        "any value: do not record the installed Python packages (the official client's "
        "variable)",
    ),
    *(
        Setting(
            f"OTEL_{signal}_EXPORTER", None, "`opentelemetry-instrument`",
            f"OpenTelemetry's choice of {signal.lower()} exporter; `simvue` selects simvue-otel's "
            "([zero-code](exporters.md#zero-code-opentelemetry-instrument)), and with it the "
            "SIGTERM handler that delivers what was recorded",
        )
        for signal in ("TRACES", "METRICS", "LOGS")
    ),
    Setting(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", '`Run("otlp")`',
        "`grpc` or `http/protobuf`: how to send OTLP; `OTEL_EXPORTER_OTLP_ENDPOINT` and "
        "`OTEL_EXPORTER_OTLP_HEADERS` are read by the OTel exporters themselves "
        "([modes](run.md#modes))",
    ),
)  # fmt: skip
_BY_NAME = {s.name: s for s in SETTINGS}


def setting(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of a setting of :data:`SETTINGS`: the environment's when set and not empty,
    else its default. The one place that reads simvue-otel's environment variables."""
    default = _BY_NAME[name].default
    value = (os.environ if environ is None else environ).get(name)
    return value if value else default


def shutdown_timeout() -> float:
    """Seconds to wait for delivery at shutdown (``SIMVUE_OTEL_SHUTDOWN_TIMEOUT``, 30)."""
    try:
        return max(0.0, float(setting("SIMVUE_OTEL_SHUTDOWN_TIMEOUT") or "30"))
    except ValueError:
        return 30.0


SETTLE_SECONDS = 15.0
"""The default of ``SIMVUE_OTEL_SETTLE_SECONDS``: a little more than the 10 s an HTTP request
of the sinks may take (their client's timeout)."""


def settle_seconds() -> float:
    """Seconds after a POST began past which no copy of it can still reach the server
    (``SIMVUE_OTEL_SETTLE_SECONDS``, 15): before that, a POST whose answer was lost is not
    judged missing, since a gateway may still be holding it. A value that is not a number
    of seconds keeps the default (and says so)."""
    text = setting("SIMVUE_OTEL_SETTLE_SECONDS") or ""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0.0 or value == float("inf"):
        logging.getLogger("simvue_otel").warning(
            "SIMVUE_OTEL_SETTLE_SECONDS must be a number of seconds, 0 or more (given: %r); "
            "using %g",
            text,
            SETTLE_SECONDS,
        )
        return SETTLE_SECONDS
    return value


def span_events() -> str:
    """Which spans become events (``SIMVUE_OTEL_SPAN_EVENTS``); checked by the mapper."""
    return setting("SIMVUE_OTEL_SPAN_EVENTS") or "all"


def environment_matching(patterns: Sequence[str]) -> dict[str, str]:
    """The environment variables whose names match any of these glob patterns (what
    ``Run.init(record_shell_vars=...)`` records)."""
    return {k: v for k, v in os.environ.items() if any(fnmatch.fnmatch(k, p) for p in patterns)}


def child_environment(drop: tuple[str, ...] = (), **changes: str) -> dict[str, str]:
    """This process's environment for a child process: variables starting with ``drop``
    removed, ``changes`` applied."""
    env = {k: v for k, v in os.environ.items() if not (drop and k.startswith(drop))}
    env.update(changes)
    return env


def recorded_facts(environ: Mapping[str, str] | None = None) -> dict[str, bool]:
    """Which facts a run records about its process, switched off by the official client's
    variables: ``SIMVUE_DISABLE_SYSTEM_METRICS`` (the ``system`` field),
    ``SIMVUE_DISABLE_GIT_METRICS`` (``git`` metadata) and
    ``SIMVUE_DISABLE_ENVIRONMENT_METRICS`` (``python`` metadata: the installed packages)."""
    return {
        fact: setting(f"SIMVUE_DISABLE_{fact.upper()}_METRICS", environ) is None
        for fact in ("system", "git", "environment")
    }


def settings_markdown(core: bool) -> str:
    """The table of settings for the docs' configuration page (generated at build time)."""
    if core:
        lines = [
            "| Environment variable | `simvue.toml` | Default | Meaning |",
            "|---|---|---|---|",
        ]
        rows = [
            f"| `{s.name}` | `{s.file_key}` | {f'`{s.default}`' if s.default else 'none'} "
            f"| {s.doc} |"
            for s in SETTINGS
            if s.core
        ]
    else:
        lines = ["| Variable | Default | Used by | Meaning |", "|---|---|---|---|"]
        rows = [
            f"| `{s.name}` | {f'`{s.default}`' if s.default else 'unset'} | {s.used_by} | {s.doc} |"
            for s in SETTINGS
            if not s.core
        ]
    return "\n".join(lines + rows) + "\n"
