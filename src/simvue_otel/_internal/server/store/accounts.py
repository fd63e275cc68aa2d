"""Users and the cut-off of their tokens, web sessions, single-use sign-in links, and the meta
table (which holds the token-signing secret)."""

from __future__ import annotations

import hashlib
import secrets
import time

from ..auth import Identity
from .db import Database
from .errors import Conflict


def _session_key(session_id: str) -> str:
    """What the database keeps of a session id: its hash, so a copy of the file holds no
    usable session."""
    return hashlib.sha256(session_id.encode()).hexdigest()


class Accounts(Database):
    """Users, tokens, sessions and sign-in links."""

    def secret(self) -> str:
        """The token-signing secret, created on first use and kept in the database."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()
            if row:
                return str(row["value"])
            value = secrets.token_urlsafe(48)
            db.execute("INSERT INTO meta (key, value) VALUES ('secret', ?)", (value,))
            return value

    def get_meta(self, key: str) -> str | None:
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return str(row["value"]) if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def ensure_user(self, name: str, tenant: str | None = None) -> tuple[Identity, bool]:
        """The user ``name`` (created if new); an existing user keeps their tenant unless one
        different from it is asked for, which is an error rather than a silent move."""
        with self._tx() as db:
            row = db.execute("SELECT tenant FROM users WHERE name = ?", (name,)).fetchone()
            if row:
                if tenant and tenant != row["tenant"]:
                    raise Conflict(
                        f"user {name!r} already belongs to tenant {row['tenant']!r}, not {tenant!r}"
                    )
                return Identity(name, str(row["tenant"])), False
            tenant = tenant or "default"
            now = time.time()
            # Tokens issued before a user's creation are refused: a user deleted and created
            # again under the same name does not bring its old tokens (or sessions) back.
            db.execute(
                "INSERT INTO users (name, tenant, created, tokens_after) VALUES (?, ?, ?, ?)",
                (name, tenant, now, now),
            )
            return Identity(name, tenant), True

    def user_exists(self, identity: Identity) -> bool:
        with self._read() as db:
            row = db.execute(
                "SELECT 1 FROM users WHERE name = ? AND tenant = ?",
                (identity.user, identity.tenant),
            ).fetchone()
            return row is not None

    def token_problem(self, identity: Identity) -> str | None:
        """Why a correctly signed token (or session) for ``identity`` is refused, or None when
        it is good: its user must exist, in its tenant, and it must be issued after the user's
        cut-off (creation, or the last :meth:`revoke_tokens`)."""
        with self._read() as db:
            row = db.execute(
                "SELECT tenant, tokens_after FROM users WHERE name = ?", (identity.user,)
            ).fetchone()
        if row is None or row["tenant"] != identity.tenant:
            return "the token's user does not exist on this server"
        if row["tokens_after"] is not None and identity.issued < row["tokens_after"]:
            return "the token has been revoked: mint a new one with 'simvue-otel server token'"
        return None

    def revoke_tokens(self, user: str) -> bool:
        """End every token, sign-in link and web session of ``user`` issued until now; tokens
        minted afterwards work. False when there is no such user."""
        with self._tx() as db:
            found = db.execute(
                "UPDATE users SET tokens_after = ? WHERE name = ?", (time.time(), user)
            ).rowcount
            db.execute("DELETE FROM sessions WHERE user = ?", (user,))
        return bool(found)

    # -- web sessions and sign-in links ----------------------------------------------------

    def create_session(self, who: Identity, lifetime: float) -> str:
        """A new web session for ``who``, valid ``lifetime`` seconds; returns its secret id."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO sessions (key, user, tenant, created, expires) VALUES (?,?,?,?,?)",
                (_session_key(session_id), who.user, who.tenant, now, now + lifetime),
            )
        return session_id

    def session_identity(self, session_id: str) -> Identity | None:
        """Who the session ``session_id`` belongs to; None when it is unknown, expired, ended,
        or its user's tokens were revoked since it began."""
        if not session_id or len(session_id) > 200:
            return None
        with self._read() as db:
            row = db.execute(
                "SELECT user, tenant, created FROM sessions WHERE key = ? AND expires > ?",
                (_session_key(session_id), time.time()),
            ).fetchone()
        if row is None:
            return None
        who = Identity(str(row["user"]), str(row["tenant"]), issued=float(row["created"]))
        return None if self.token_problem(who) else who

    def end_session(self, session_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM sessions WHERE key = ?", (_session_key(session_id),))

    def code_used(self, jti: str) -> bool:
        """Whether the sign-in link ``jti`` has been used."""
        with self._read() as db:
            return (
                db.execute("SELECT 1 FROM used_codes WHERE jti = ?", (jti,)).fetchone() is not None
            )

    def redeem_code(self, jti: str, expires: float) -> bool:
        """Mark the sign-in link ``jti`` used; False when it was used before."""
        with self._tx() as db:
            return bool(
                db.execute(
                    "INSERT OR IGNORE INTO used_codes (jti, expires) VALUES (?, ?)", (jti, expires)
                ).rowcount
            )
