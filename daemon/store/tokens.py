"""HTTP API bearer tokens: made, listed, revoked, looked up by hash (never stored in clear).

A token is ``fsk_`` and 43 URL-safe characters (256 random bits).  Only its SHA-256 is stored,
so a look-up is an index probe on the hash of what the client sent; the daemon cannot show a
token again once `create_token` has returned it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from freshd.store.db import Connection

TOKEN_PREFIX = "fsk_"
SHOWN_PREFIX = 10  # "fsk_" and 6 characters, enough to tell tokens apart in a list


@dataclass(frozen=True, slots=True)
class TokenRow:
    id: int
    tenant: str
    label: str | None
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


_COLUMNS = "id, tenant, label, prefix, created_at, last_used_at, revoked_at"


def create_token(conn: Connection, tenant: str, label: str | None) -> tuple[TokenRow, str]:
    """A new token for `tenant`: its row and the token itself (the only time anyone sees it)."""
    token = new_token()
    row = conn.execute(
        f"INSERT INTO api_tokens (tenant, label, token_sha256, prefix) VALUES (%s, %s, %s, %s) RETURNING {_COLUMNS}",
        (tenant, label, token_hash(token), token[:SHOWN_PREFIX]),
    ).fetchone()
    assert row is not None
    return TokenRow(**row), token  # type: ignore[arg-type]


def list_tokens(conn: Connection, *, tenant: str | None = None) -> list[TokenRow]:
    where, params = ("WHERE tenant = %s", [tenant]) if tenant else ("", [])
    rows = conn.execute(f"SELECT {_COLUMNS} FROM api_tokens {where} ORDER BY id", params).fetchall()
    return [TokenRow(**row) for row in rows]  # type: ignore[arg-type]


def revoke_token(conn: Connection, token_id: int) -> TokenRow | None:
    """Revoke (at once: the next request with it gets 401); None if there is no such token.
    Revoking a revoked token changes nothing."""
    row = conn.execute(
        f"UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s RETURNING {_COLUMNS}",
        (token_id,),
    ).fetchone()
    return TokenRow(**row) if row is not None else None  # type: ignore[arg-type]


def authenticate(conn: Connection, token: str) -> TokenRow | None:
    """The live token `token` is, or None; marks it used (at most one write a minute per token)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM api_tokens WHERE token_sha256 = %s AND revoked_at IS NULL",
        (token_hash(token),),
    ).fetchone()
    if row is None:
        return None
    conn.execute("UPDATE api_tokens SET last_used_at = now() WHERE id = %s"
                 " AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')", (row["id"],))
    return TokenRow(**row)  # type: ignore[arg-type]
