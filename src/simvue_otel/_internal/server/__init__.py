"""``simvue-otel server``: a Simvue-compatible server on SQLite, for development, tests and
air-gapped sites. Needs the ``server`` extra (``pip install 'simvue-otel[server]'``)."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import TextIO

__all__ = ["mint_token", "serve"]

DEFAULT_DB = "simvue-otel-server.db"


def _default_user() -> str:
    try:
        name = getpass.getuser()
    except Exception:  # no login name in some containers
        name = ""
    return name or "simvue"


def mint_token(db: Path, user: str, tenant: str | None = None, days: float = 365.0) -> str:
    """A bearer token for ``user`` (created, in ``tenant``, if new) of the server at ``db``."""
    from .auth import issue_token
    from .store import Store

    store = Store(db)
    try:
        identity, _ = store.ensure_user(user, tenant)
        return issue_token(store.secret(), identity.user, identity.tenant, lifetime_days=days)
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

    from .app import create_app
    from .auth import issue_token
    from .store import Store

    store = Store(db)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"  # noqa: S104
    print(f"simvue-otel server: Simvue API at {url}/api (database {db})", file=out)
    if store.get_meta("first_user") is None:
        identity, _ = store.ensure_user(_default_user(), "default")
        store.set_meta("first_user", identity.user)
        token = issue_token(store.secret(), identity.user, identity.tenant)
        print(
            f"Created user {identity.user!r} (tenant {identity.tenant!r}). "
            "To track runs against this server, set:\n"
            f"  export SIMVUE_URL={url}\n"
            f"  export SIMVUE_TOKEN={token}\n"
            "More tokens: simvue-otel server token --db "
            f"{db} --user NAME [--tenant NAME]",
            file=out,
        )
    else:
        print(f"Tokens: simvue-otel server token --db {db} --user NAME [--tenant NAME]", file=out)
    first = store.get_meta("first_user")
    if first:
        from .web import issue_login_code

        identity, _ = store.ensure_user(first)
        code = issue_login_code(store.secret(), identity)
        print(f"Web view: {url}/login?code={code}  (sign-in link, valid 1 hour)", file=out)
    out.flush()
    app = create_app(store, max_body=max_body, sweep_interval=sweep_interval)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
    finally:
        store.close()
