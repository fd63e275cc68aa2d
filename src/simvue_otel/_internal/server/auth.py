"""Bearer tokens of the local server: HS256 JWTs signed with a secret kept in its database.

The official Simvue client reads the ``exp`` claim of its token (without verifying it) and
refuses a token that is not a JWT, so the server's tokens are real JWTs with an expiry.
``iat`` is kept to the microsecond: the store refuses tokens issued before a user's cut-off
(its creation, or the last revocation), so revoking takes effect at once and a user deleted
and created again does not bring its old tokens back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import jwt

__all__ = ["Identity", "TokenError", "issue_token", "issued_at", "verify_token"]

_ISSUER = "simvue-otel-server"
_ALGORITHM = "HS256"


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
