"""``simvue-otel server``: a Simvue-compatible server on SQLite, for development, tests and
air-gapped sites. Needs the ``server`` extra (``pip install 'simvue-otel[server]'``)."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import TextIO

__all__ = ["is_server_database", "mint_token", "serve"]

DEFAULT_DB = "simvue-otel-server.db"


def _default_user() -> str:
    try:
        name = getpass.getuser()
    except Exception:  # no login name in some containers
        name = ""
    return name or "simvue"


def is_server_database(db: Path) -> bool:
    """Whether ``db`` is an existing database of this server (it holds a token-signing
    secret, which the server makes on its first start). Opens it without creating it."""
    import sqlite3

    if not db.is_file():
        return False
    try:
        conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=rw", uri=True, timeout=10)
    except sqlite3.Error:
        return False
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()
    except sqlite3.Error:  # not SQLite, or no `meta` table: another program's file
        return False
    finally:
        conn.close()
    return row is not None


def mint_token(
    db: Path, user: str, tenant: str | None = None, days: float = 365.0, *, create: bool = False
) -> str:
    """A bearer token for ``user`` (created, in ``tenant``, if new) of the server at ``db``.

    A token is only good for the server whose database signed it, so a mistyped ``db`` must
    not quietly become a new database whose tokens every running server refuses: unless
    ``create`` is true, ``db`` must be an existing server database (else :class:`NotFound`).
    A file that is not one is refused either way (:class:`Invalid`), never converted."""
    from .auth import issue_token
    from .store import Invalid, NotFound, Store

    if db.exists():
        if not is_server_database(db):
            raise Invalid(
                f"{db.absolute()} is not a simvue-otel server database: point --db at the "
                "database the server was started with (its first line of output names it)"
            )
    elif not create:
        raise NotFound(
            f"no server database at {db.absolute()}: point --db at the database the server "
            "was started with (its first line of output names it), or pass --create to make "
            "a new one (tokens from a new database work only for a server started on it)"
        )
    store = Store(db)
    try:
        identity, _ = store.ensure_user(user, tenant)
        return issue_token(store.secret(), identity.user, identity.tenant, lifetime_days=days)
    finally:
        store.close()


def revoke_tokens(db: Path, user: str) -> None:
    """End every token, sign-in link and web session ``user`` has on the server at ``db``
    (tokens minted afterwards work). :class:`NotFound` for a missing database or user."""
    from .store import Invalid, NotFound, Store

    if not db.exists():
        raise NotFound(f"no server database at {db.absolute()}")
    if not is_server_database(db):
        raise Invalid(f"{db.absolute()} is not a simvue-otel server database")
    store = Store(db)
    try:
        if not store.revoke_tokens(user):
            raise NotFound(f"no user {user!r} on the server at {db.absolute()}")
    finally:
        store.close()


def serve(
    host: str,
    port: int,
    db: Path,
    *,
    max_body: int,
    sweep_interval: float,
    log_level: str = "warning",
    out: TextIO = sys.stdout,
) -> None:
    """Run the server until interrupted. On a new database, create a first user and print a
    ready token for it, so the README's commands work without any other step."""
    import uvicorn

    from ..hints import command
    from .app import create_app
    from .auth import issue_token
    from .store import Store

    store = Store(db)
    for warning in store.warnings:
        print(f"simvue-otel server: warning: {warning}", file=sys.stderr, flush=True)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"  # noqa: S104
    print(f"simvue-otel server: Simvue API at {url}/api (database {db.absolute()})", file=out)
    if store.get_meta("first_user") is None:
        identity, _ = store.ensure_user(_default_user(), "default")
        store.set_meta("first_user", identity.user)
        token = issue_token(store.secret(), identity.user, identity.tenant)
        print(
            f"Created user {identity.user!r} (tenant {identity.tenant!r}). "
            "To track runs against this server, set:\n"
            f"  export SIMVUE_URL={url}\n"
            f"  export SIMVUE_TOKEN={token}",
            file=out,
        )
    first = store.get_meta("first_user")
    # A line to paste as it is: this database, the first user (another --user for others).
    hint = command("server", "token", "--db", db, "--user", first or _default_user())
    print(f"Tokens (another --user for another user): {hint}", file=out)
    if first:
        from .auth import issue_login_code

        identity, _ = store.ensure_user(first)
        code = issue_login_code(store.secret(), identity)
        print(f"Web view: {url}/login?code={code}  (sign-in link, valid 1 hour)", file=out)
    out.flush()
    app = create_app(store, max_body=max_body, sweep_interval=sweep_interval)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
    finally:
        store.close()
