"""Bearer tokens of the local server: HS256 JWTs signed with a secret kept in its database.

The official Simvue client reads the ``exp`` claim of its token (without verifying it) and
refuses a token that is not a JWT, so the server's tokens are real JWTs with an expiry.
``iat`` is kept to the microsecond: the store refuses tokens issued before a user's cut-off
(its creation, or the last revocation), so revoking takes effect at once and a user deleted
and created again does not bring its old tokens back.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt

__all__ = [
    "LOGIN_USE",
    "Identity",
    "TokenError",
    "issue_login_code",
    "issue_token",
    "issued_at",
    "read_login_code",
    "verify_token",
]

_ISSUER = "simvue-otel-server"
_ALGORITHM = "HS256"
LOGIN_USE = "web-login"
"""The ``use`` claim of a web sign-in code (which :func:`verify_token` refuses as a token)."""


class TokenError(Exception):
    """The token is missing, malformed, badly signed or expired; the message never holds it."""


@dataclass(frozen=True)
class Identity:
    """Who a valid token speaks for; ``issued`` is when the token was issued (epoch seconds),
    checked against the user's cut-off by the store, and ignored by comparisons."""

    user: str
    tenant: str
    issued: float = field(default=0.0, compare=False)


def issue_token(secret: str, user: str, tenant: str, *, lifetime_days: float = 365.0) -> str:
    """A signed token for ``user`` of ``tenant`` that expires after ``lifetime_days``."""
    now = time.time()
    claims = {
        "sub": user,
        "tenant": tenant,
        "iss": _ISSUER,
        "iat": now,
        "exp": int(now + lifetime_days * 86400),
    }
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def verify_token(secret: str, header: str | None) -> Identity:
    """Check an ``Authorization: Bearer <jwt>`` header and return whose it is."""
    if not header:
        raise TokenError("missing Authorization header: send 'Authorization: Bearer <token>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("the Authorization header must be 'Bearer <token>'")
    try:
        claims = jwt.decode(
            token.strip(),
            secret,
            algorithms=[_ALGORITHM],
            issuer=_ISSUER,
            options={"require": ["exp", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError(
            "the token has expired: mint a new one with 'simvue-otel server token'"
        ) from None
    except jwt.InvalidTokenError:
        raise TokenError("the token is not valid for this server") from None
    if claims.get("use"):  # a web sign-in code is not an API token
        raise TokenError("the token is not valid for this server")
    return Identity(
        user=str(claims["sub"]),
        tenant=str(claims.get("tenant") or "default"),
        issued=issued_at(claims),
    )


def issued_at(claims: dict[str, object]) -> float:
    """The token's ``iat`` as a number, 0 when absent or not a number (then only users with no
    cut-off, made before cut-offs existed, accept it)."""
    value = claims.get("iat")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return 0.0


def issue_login_code(secret: str, identity: Identity, *, minutes: float = 60.0) -> str:
    """A short-lived, single-use sign-in code for the web view (refused as an API token)."""
    now = time.time()
    claims = {
        "sub": identity.user,
        "tenant": identity.tenant,
        "iss": _ISSUER,
        "use": LOGIN_USE,
        "jti": secrets.token_urlsafe(16),
        "iat": now,
        "exp": int(now + minutes * 60),
    }
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def read_login_code(secret: str, code: str) -> tuple[Identity, dict[str, Any]]:
    """Whose a web sign-in code is, and its claims (``jti`` and ``exp`` say which link it is
    and until when); TokenError saying why it is refused. Whether the link was used already
    is for the store to say."""
    try:
        claims = jwt.decode(code, secret, algorithms=[_ALGORITHM], issuer=_ISSUER)
        if claims.get("use") != LOGIN_USE or not isinstance(claims.get("jti"), str):
            raise jwt.InvalidTokenError
        who = Identity(
            str(claims["sub"]),
            str(claims.get("tenant") or "default"),
            issued=issued_at(claims),
        )
    except jwt.ExpiredSignatureError:
        raise TokenError(
            "this sign-in link has expired: restart the server or paste a token"
        ) from None
    except (jwt.InvalidTokenError, KeyError):
        raise TokenError("this sign-in link is not valid for this server") from None
    return who, claims
