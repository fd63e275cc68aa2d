"""The ``simvue-otel`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .config import setting

if TYPE_CHECKING:
    from .sink.send import SendResult

__all__ = ["main"]

_LOG_LEVELS = ["critical", "error", "warning", "info", "debug"]


def _host_port(parser: argparse.ArgumentParser, value: int) -> int:
    if not 0 < value < 65536:
        parser.error(f"--port must be between 1 and 65535, not {value}")
    return value


def _server_extra_missing(exc: ImportError) -> int:
    print(
        f"simvue-otel server needs the 'server' extra ({exc.name} is not installed): "
        "pip install 'simvue-otel[server]'",
        file=sys.stderr,
    )
    return 2


def _cmd_server(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        from .server import serve
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        return _server_extra_missing(exc)
    try:
        serve(
            args.host,
            _host_port(parser, args.port),
            Path(args.db),
            max_body=args.max_body,
            sweep_interval=args.sweep_interval,
            log_level=args.log_level,
        )
    except ImportError as exc:
        return _server_extra_missing(exc)
    return 0


def _cmd_server_token(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        from .server import mint_token
        from .server.store import StoreError
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        return _server_extra_missing(exc)
    if args.days <= 0:
        parser.error(f"--days must be positive, not {args.days}")
    try:
        if args.revoke:
            from .server import revoke_tokens

            revoke_tokens(Path(args.db), args.user)
            print(
                f"revoked every token, sign-in link and web session of {args.user!r} issued "
                "until now; mint a new token to go on",
                file=sys.stderr,
            )
        else:
            print(mint_token(Path(args.db), args.user, args.tenant, args.days, create=args.create))
    except StoreError as exc:
        print(f"simvue-otel server token: {exc.detail}", file=sys.stderr)
        return 1
    return 0


def _cmd_send(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .client import SimvueClient
    from .config import resolve_config
    from .errors import ConfigurationError, TransportError
    from .sink import online_spool_directory, spool_directory
    from .sink.send import send_spool
    from .sink.spool import SpoolBusyError

    try:
        if args.attempts < 1:
            parser.error(f"--attempts must be 1 or more, not {args.attempts}")
        config = resolve_config(offline_directory=args.cache)
        # send's own loop retries each batch (--attempts, with backoff): the client does not
        # retry inside it, so a server that is away costs `attempts` tries, not attempts x 5.
        client = SimvueClient.from_config(config, retries=0)
    except ConfigurationError as exc:
        print(f"simvue-otel send: {exc}", file=sys.stderr)
        return 2
    spool = spool_directory(config)
    try:
        if not args.quiet:
            print(
                f"simvue-otel send: sending as {config.identity()} to {client.url}",
                file=sys.stderr,
            )
        result = send_spool(
            spool,
            client,
            progress=None if args.quiet else sys.stderr,
            index_dir=online_spool_directory(config),
            identity=config.identity(),
            as_current_user=args.as_current_user,
            attempts=args.attempts,
        )
    except SpoolBusyError as exc:
        print(f"simvue-otel send: {exc}", file=sys.stderr)
        return 1
    except TransportError as exc:
        print(f"simvue-otel send: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the spool itself cannot be used (a link planted as its lock...)
        print(f"simvue-otel send: cannot use the spool in {spool}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    stats = result.stats
    refused = f", {stats.rejected} refused (see {spool / 'rejected'})" if stats.rejected else ""
    print(
        f"sent {result.frames} batch(es) from {spool} as {config.identity()}: "
        f"{stats.runs_created} run(s) created, "
        f"{stats.points} metric value(s), {stats.events} event(s), "
        f"{stats.states} state update(s){refused}"
    )
    for folder, (server, who) in result.skipped:
        print(
            f"simvue-otel send: left {folder} alone: it holds data logged as {who or 'unknown'} "
            f"for {server or 'an unknown server'}; send it with that user's SIMVUE_URL and "
            f"SIMVUE_TOKEN, or add --as-current-user to upload it as {config.identity()}",
            file=sys.stderr,
        )
    _report_undelivered(result, spool)
    if not result.complete:
        print(f"simvue-otel send: {result.reason}", file=sys.stderr)
        return 1
    if result.skipped:
        return 1
    return 3 if result.undelivered else 0


def _report_undelivered(result: SendResult, spool: Path) -> None:
    """Say on stderr what `send` could not deliver, naming the runs it belonged to."""
    for damage in result.damage:
        if not damage.tail:
            print(f"simvue-otel send: {damage.describe()}", file=sys.stderr)
    for run, reason in result.stats.rejected_runs.items():
        print(
            f"simvue-otel send: the server refused records of run {run} ({reason}); they are "
            f"set aside in {spool / 'rejected'} and were not sent",
            file=sys.stderr,
        )
    for path, why in result.left_alone.items():
        print(f"simvue-otel send: {why} ({path})", file=sys.stderr)
    lost = {ref for d in result.damage if not d.tail for ref in d.records}
    runs = sorted({r.name or r.key for r in lost | set(result.refused)})
    if result.undelivered:
        named = "; runs affected: " + ", ".join(repr(r) for r in runs) if runs else ""
        print(f"simvue-otel send: not everything could be delivered{named}", file=sys.stderr)


def _cmd_bridge(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:

    from .bridge import loopback_problem, parse_listen
    from .errors import SimvueOtelError

    try:
        listen = parse_listen(args.listen, 4318)
        grpc_listen = None if args.no_grpc else parse_listen(args.grpc_listen, 4317)
    except ValueError as exc:
        parser.error(str(exc))
    token = args.token or setting("SIMVUE_OTEL_BRIDGE_TOKEN")
    hosts = [listen[0]] + ([grpc_listen[0]] if grpc_listen else [])
    # Names are resolved: only a listener every address of which is loopback goes tokenless.
    problems = [] if token is not None else [p for p in map(loopback_problem, hosts) if p]
    if problems:
        print(
            f"simvue-otel bridge: {'; '.join(dict.fromkeys(problems))}. Listening beyond "
            "loopback needs a bearer token: set SIMVUE_OTEL_BRIDGE_TOKEN (or --token) and give "
            "senders the same token (OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer%20<token>)",
            file=sys.stderr,
        )
        return 2
    try:
        from .bridge import serve_bridge

        serve_bridge(
            listen,
            grpc_listen,
            token=token,
            mode=args.mode,
            max_body=args.max_body,
            max_backlog=args.max_backlog,
            log_level=args.log_level,
            metrics_token=setting("SIMVUE_OTEL_BRIDGE_METRICS_TOKEN"),
        )
    except ImportError as exc:
        print(
            f"simvue-otel bridge needs the 'bridge' extra ({exc.name} is not installed): "
            "pip install 'simvue-otel[bridge]'",
            file=sys.stderr,
        )
        return 2
    except (SimvueOtelError, OSError) as exc:
        print(f"simvue-otel bridge: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        from .demo import run_demo
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        return _server_extra_missing(exc)
    return run_demo(Path(args.db) if args.db else None, args.port, exit_at_once=args.exit)


def build_parser() -> argparse.ArgumentParser:
    from .server import DEFAULT_DB

    parser = argparse.ArgumentParser(
        prog="simvue-otel",
        description="OpenTelemetry exporters, OTLP bridge and local server for Simvue.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    server = commands.add_parser(
        "server",
        help="run a Simvue-compatible server on SQLite (development, tests, air-gapped sites)",
        description="Serve the Simvue REST API from a SQLite database. On a new database, "
        "create a first user and print a ready SIMVUE_URL and SIMVUE_TOKEN.",
    )
    server.add_argument("--host", default="127.0.0.1", help="address to listen on")
    server.add_argument("--port", type=int, default=8765, help="port to listen on")
    server.add_argument("--db", default=DEFAULT_DB, help="SQLite database file")
    server.add_argument(
        "--max-body", type=int, default=64 * 1024 * 1024, help="largest request body, bytes"
    )
    server.add_argument(
        "--sweep-interval",
        type=float,
        default=2.0,
        help="seconds between checks for lost runs and expired retention",
    )
    server.add_argument("--log-level", default="warning", choices=_LOG_LEVELS)
    server.set_defaults(handler=_cmd_server)
    server_commands = server.add_subparsers(dest="server_command", metavar="SUBCOMMAND")
    token = server_commands.add_parser(
        "token",
        help="print a bearer token for a user (created if needed)",
        description="Print a bearer token (a JWT) for USER of the server whose database is "
        "--db, creating the user (in --tenant, default 'default') if needed. The database "
        "must exist (a token works only for the server that uses it) unless --create is given.",
    )
    token.add_argument("--db", default=DEFAULT_DB, help="the server's SQLite database file")
    token.add_argument(
        "--create",
        action="store_true",
        help="make --db a new database when it does not exist (for a server to be started on "
        "it later); without it, a missing database is an error",
    )
    token.add_argument("--user", required=True, help="user name")
    token.add_argument("--tenant", default=None, help="tenant of a new user")
    token.add_argument("--days", type=float, default=365.0, help="token lifetime in days")
    token.add_argument(
        "--revoke",
        action="store_true",
        help="instead of printing a token, end every token, sign-in link and web session the "
        "user has now (a leaked token); tokens minted afterwards work",
    )
    token.set_defaults(handler=_cmd_server_token)

    send = commands.add_parser(
        "send",
        help="upload spooled data (offline runs, or what an exporter left on disk)",
        description="Upload everything spooled under the offline directory to the Simvue "
        "server named by SIMVUE_URL/SIMVUE_TOKEN (or simvue.toml). Safe to interrupt and to "
        "run again, and beside live processes: it resumes where it stopped, skips what another "
        "process is uploading, and never stores anything twice. Exit status: 0 all sent, 1 "
        "stopped early (run it again), 2 not configured, 3 some data could not be delivered "
        "(damaged, refused or left alone: the runs are named).",
    )
    send.add_argument(
        "--cache",
        default=None,
        help="offline directory (default: SIMVUE_OFFLINE_DIRECTORY, [offline] cache in "
        "simvue.toml, or ~/.simvue)",
    )
    send.add_argument("--quiet", action="store_true", help="no progress bar")
    send.add_argument(
        "--attempts",
        type=int,
        default=5,
        help="tries per batch while the server is away or failing, with waits of 0.5 s "
        "doubling up to 10 s between them, before stopping (what was sent is kept; run "
        "send again to resume); default 5",
    )
    send.add_argument(
        "--as-current-user",
        action="store_true",
        help="also upload what online processes spooled for another server or user, as the "
        "user of SIMVUE_TOKEN (by default such data is left alone and listed)",
    )
    send.set_defaults(handler=_cmd_send)

    bridge = commands.add_parser(
        "bridge",
        help="receive OTLP (HTTP and gRPC) and write it to Simvue",
        description="Receive OpenTelemetry data over OTLP/HTTP (/v1/traces, /v1/metrics, "
        "/v1/logs; protobuf or JSON; gzip) and OTLP/gRPC, map it to Simvue runs and write it to "
        "the Simvue server of SIMVUE_URL/SIMVUE_TOKEN (or simvue.toml), or to the offline spool.",
    )
    bridge.add_argument("--listen", default="127.0.0.1:4318", help="OTLP/HTTP address HOST:PORT")
    bridge.add_argument(
        "--grpc-listen", default="127.0.0.1:4317", help="OTLP/gRPC address HOST:PORT"
    )
    bridge.add_argument("--no-grpc", action="store_true", help="do not listen for OTLP/gRPC")
    bridge.add_argument(
        "--token",
        default=None,
        help="bearer token senders must present (default: SIMVUE_OTEL_BRIDGE_TOKEN); "
        "required when listening beyond loopback",
    )
    bridge.add_argument(
        "--mode", choices=["online", "offline"], default=None, help="default: SIMVUE_OTEL_MODE"
    )
    bridge.add_argument(
        "--max-body",
        type=int,
        default=20 * 2**20,
        help="largest request, bytes, compressed and after decompression (413 beyond)",
    )
    bridge.add_argument(
        "--max-backlog",
        type=int,
        default=10_000,
        help="batches waiting for the Simvue server before senders are told to retry (503)",
    )
    bridge.add_argument("--log-level", default="warning", choices=_LOG_LEVELS)
    bridge.set_defaults(handler=_cmd_bridge)

    demo = commands.add_parser(
        "demo",
        help="see it work: a local server, runs recorded three ways, their pages",
        description="Start a local Simvue server (temporary database unless --db), record a "
        "simulation through Run, a parameter scan, and an OpenTelemetry-instrumented app "
        "through the bridge, print the runs and their pages, and keep serving until Ctrl-C.",
    )
    demo.add_argument("--db", default=None, help="database file (default: a temporary one)")
    demo.add_argument("--port", type=int, default=8765, help="port of the local server")
    demo.add_argument("--exit", action="store_true", help="stop once the runs are recorded")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return int(args.handler(args, parser))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
