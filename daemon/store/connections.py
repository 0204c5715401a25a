"""Connections and their credentials.

Credentials and tokens are sealed (freshd.secrets, AES-GCM) with the
connection's id as associated data, in the same statement that writes them;
rows are opened only here, so plaintext never leaves this module except inside
a `ConnectionRow` (whose repr hides it).  Tokens are kept apart from the
credentials: `save_tokens` writes a refreshed token (and a rotated refresh
token) in one transaction; new credentials clear the tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from freshd import logs
from freshd.secrets import Keyring
from freshd.store.db import Connection


@dataclass(frozen=True, slots=True)
class ConnectionRow:
    id: int
    name: str
    tenant: str
    provider: str
    base_url: str
    options: dict[str, Any]
    source: str
    created_at: datetime
    last_success_at: datetime | None
    last_error: str | None
    credentials: dict[str, str] = field(repr=False, default_factory=dict)
    tokens: dict[str, Any] | None = field(repr=False, default=None)  # the last refreshed token


_COLUMNS = "c.id, c.name, c.tenant, c.provider, c.base_url, c.options, c.source, c.created_at," \
    " c.last_success_at, c.last_error, cr.scheme, cr.secret, cr.tokens"


def _aad(connection_id: int, what: str) -> str:
    return f"freshd:{what}:{connection_id}"


def _open_json(keyring: Keyring, scheme: str | None, blob: Any, connection_id: int, what: str) -> Any:
    if blob is None:
        return None
    if scheme == "plain":  # written before 0003; re-sealed by `reseal_all` at start
        return json.loads(bytes(blob))
    return json.loads(keyring.open(bytes(blob), _aad(connection_id, what)))


def _seal_json(keyring: Keyring, value: Any, connection_id: int, what: str) -> bytes:
    return keyring.seal(json.dumps(value, sort_keys=True).encode(), _aad(connection_id, what))


def _row(keyring: Keyring, row: dict[str, Any]) -> ConnectionRow:
    secret, scheme, tokens = row.pop("secret"), row.pop("scheme"), row.pop("tokens")
    credentials = _open_json(keyring, scheme, secret, row["id"], "credentials") or {}
    return ConnectionRow(**row, credentials=credentials,
                         tokens=_open_json(keyring, scheme, tokens, row["id"], "tokens"))


def list_connections(conn: Connection, keyring: Keyring) -> list[ConnectionRow]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM connections c LEFT JOIN credentials cr ON cr.connection_id = c.id"
        " ORDER BY c.name"
    ).fetchall()
    return [_row(keyring, dict(row)) for row in rows]


@dataclass(frozen=True, slots=True)
class ConnectionHead:
    """A connection without its credentials (nothing to decrypt): what the config's reconciliation reads."""

    id: int
    name: str
    tenant: str
    provider: str
    source: str


def list_heads(conn: Connection) -> list[ConnectionHead]:
    rows = conn.execute("SELECT id, name, tenant, provider, source FROM connections ORDER BY name").fetchall()
    return [ConnectionHead(row["id"], row["name"], row["tenant"], row["provider"], row["source"])  # type: ignore[arg-type]
            for row in rows]


@dataclass(frozen=True, slots=True)
class SyncState:
    """What the sweeps need of a connection: no credentials, nothing to decrypt."""

    id: int
    name: str
    last_success_at: datetime | None
    failed: bool = False  # its last sync failed (last_error set)


def list_sync_states(conn: Connection) -> list[SyncState]:
    """Failed connections first (the sync sweep queues them before the others), then by name."""
    rows = conn.execute(
        "SELECT id, name, last_success_at, last_error IS NOT NULL AS failed FROM connections"
        " ORDER BY last_error IS NULL, name"
    ).fetchall()
    return [SyncState(row["id"], row["name"], row["last_success_at"], bool(row["failed"]))  # type: ignore[arg-type]
            for row in rows]


def get_connection(conn: Connection, name: str, keyring: Keyring) -> ConnectionRow | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM connections c LEFT JOIN credentials cr ON cr.connection_id = c.id"
        " WHERE c.name = %s",
        (name,),
    ).fetchone()
    return _row(keyring, dict(row)) if row else None


def _write_credentials(conn: Connection, keyring: Keyring, connection_id: int, credentials: dict[str, str],
                       tokens: dict[str, Any] | None) -> None:
    sealed_tokens = None if tokens is None else _seal_json(keyring, tokens, connection_id, "tokens")
    conn.execute(
        "INSERT INTO credentials (connection_id, scheme, secret, tokens) VALUES (%s, 'aesgcm', %s, %s)"
        " ON CONFLICT (connection_id) DO UPDATE SET scheme = excluded.scheme, secret = excluded.secret,"
        " tokens = excluded.tokens, updated_at = now()",
        (connection_id, _seal_json(keyring, credentials, connection_id, "credentials"), sealed_tokens),
    )


def save_tokens(conn: Connection, keyring: Keyring, connection_id: int, tokens: dict[str, Any]) -> None:
    """A refreshed token (with a rotated refresh token), committed before anyone uses it."""
    updated = conn.execute(
        "UPDATE credentials SET tokens = %s, updated_at = now() WHERE connection_id = %s AND scheme = 'aesgcm'",
        (_seal_json(keyring, tokens, connection_id, "tokens"), connection_id),
    ).rowcount
    if not updated:
        raise LookupError(f"connection {connection_id} has no sealed credentials row")


def set_credentials(conn: Connection, keyring: Keyring, name: str, changes: dict[str, str | None]) -> ConnectionRow:
    """Merge `changes` into a connection's credentials (None removes a key); clears its tokens."""
    row = get_connection(conn, name, keyring)
    if row is None:
        raise LookupError(name)
    merged = {k: v for k, v in {**row.credentials, **changes}.items() if v is not None}
    _write_credentials(conn, keyring, row.id, merged, None)
    conn.execute("UPDATE connections SET updated_at = now() WHERE id = %s", (row.id,))
    stored = get_connection(conn, name, keyring)
    assert stored is not None
    return stored


def reseal_all(conn: Connection, keyring: Keyring) -> int:
    """Seal 'plain' rows and re-seal rows sealed with an older key (key rotation). Returns rows changed."""
    changed = 0
    rows = conn.execute(
        "SELECT connection_id, scheme, secret, tokens FROM credentials FOR UPDATE"
    ).fetchall()
    for found in rows:
        row: dict[str, Any] = dict(found)
        if row["scheme"] == "aesgcm" and not keyring.needs_reseal(row["secret"]) and (
                row["tokens"] is None or not keyring.needs_reseal(row["tokens"])):
            continue
        cid = row["connection_id"]
        credentials = _open_json(keyring, row["scheme"], row["secret"], cid, "credentials")
        tokens = _open_json(keyring, row["scheme"], row["tokens"], cid, "tokens")
        _write_credentials(conn, keyring, cid, credentials, tokens)
        changed += 1
    return changed


def upsert_connection(
    conn: Connection,
    keyring: Keyring,
    *,
    name: str,
    tenant: str,
    provider: str,
    base_url: str,
    options: dict[str, Any],
    credentials: dict[str, str],
    source: str,
) -> tuple[ConnectionRow, bool]:
    """Insert or update by name; returns the row and whether it was created."""
    row = conn.execute(
        "INSERT INTO connections (name, tenant, provider, base_url, options, source)"
        " VALUES (%s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (name) DO UPDATE SET tenant = excluded.tenant, provider = excluded.provider,"
        " base_url = excluded.base_url, options = excluded.options, source = excluded.source,"
        " updated_at = now()"
        " RETURNING id, (xmax = 0) AS created",
        (name, tenant, provider, base_url, Jsonb(options), source),
    ).fetchone()
    assert row is not None
    previous = None if row["created"] else get_connection(conn, name, keyring)
    # same credentials: keep the tokens refreshed with them; new credentials start over
    tokens = previous.tokens if previous is not None and previous.credentials == credentials else None
    _write_credentials(conn, keyring, row["id"], credentials, tokens)  # type: ignore[arg-type]
    stored = get_connection(conn, name, keyring)
    assert stored is not None
    return stored, bool(row["created"])


def purge_connection(conn: Connection, name: str) -> dict[str, int] | None:
    """Delete a connection and everything synced for it (records, cursors, jobs cascade); returns
    what went, or None if there is no such connection.  Only ever an explicit act (`--purge`,
    `purge = true`): callers log it in the activity log and the daemon log."""
    found = conn.execute("SELECT id FROM connections WHERE name = %s FOR UPDATE", (name,)).fetchone()
    if found is None:
        return None
    counts = conn.execute(
        "SELECT (SELECT count(*) FROM records WHERE connection_id = %(id)s) AS records,"
        " (SELECT count(*) FROM cursors WHERE connection_id = %(id)s) AS cursors,"
        " (SELECT count(*) FROM sync_jobs WHERE connection_id = %(id)s) AS jobs",
        {"id": found["id"]},
    ).fetchone()
    assert counts is not None
    conn.execute("DELETE FROM connections WHERE id = %s", (found["id"],))
    return {key: int(value) for key, value in counts.items()}  # type: ignore[call-overload]


def record_outcome(conn: Connection, connection_id: int, *, success: bool, error: str | None) -> None:
    if success:
        conn.execute(
            "UPDATE connections SET last_success_at = now(), last_error = NULL WHERE id = %s",
            (connection_id,),
        )
    else:
        conn.execute("UPDATE connections SET last_error = %s WHERE id = %s",
                     (None if error is None else logs.scrub(error), connection_id))


def names_by_id(conn: Connection) -> dict[int, str]:
    """Every stored connection's id and name (cheap: the membership's round reads it)."""
    return {int(str(r["id"])): str(r["name"]) for r in conn.execute("SELECT id, name FROM connections").fetchall()}
