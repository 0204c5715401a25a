"""Connections and their credentials."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

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


_COLUMNS = "c.id, c.name, c.tenant, c.provider, c.base_url, c.options, c.source, c.created_at," \
    " c.last_success_at, c.last_error, cr.scheme, cr.secret"


def _row(row: dict[str, Any]) -> ConnectionRow:
    secret = row.pop("secret")
    scheme = row.pop("scheme")
    credentials = json.loads(bytes(secret)) if secret is not None and scheme == "plain" else {}
    return ConnectionRow(**row, credentials=credentials)


def list_connections(conn: Connection) -> list[ConnectionRow]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM connections c LEFT JOIN credentials cr ON cr.connection_id = c.id"
        " ORDER BY c.name"
    ).fetchall()
    return [_row(dict(row)) for row in rows]


def get_connection(conn: Connection, name: str) -> ConnectionRow | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM connections c LEFT JOIN credentials cr ON cr.connection_id = c.id"
        " WHERE c.name = %s",
        (name,),
    ).fetchone()
    return _row(dict(row)) if row else None


def upsert_connection(
    conn: Connection,
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
    conn.execute(
        "INSERT INTO credentials (connection_id, scheme, secret) VALUES (%s, 'plain', %s)"
        " ON CONFLICT (connection_id) DO UPDATE SET scheme = excluded.scheme, secret = excluded.secret,"
        " updated_at = now()",
        (row["id"], json.dumps(credentials, sort_keys=True).encode()),
    )
    stored = get_connection(conn, name)
    assert stored is not None
    return stored, bool(row["created"])


def delete_connection(conn: Connection, name: str) -> bool:
    return conn.execute("DELETE FROM connections WHERE name = %s", (name,)).rowcount > 0


def record_outcome(conn: Connection, connection_id: int, *, success: bool, error: str | None) -> None:
    if success:
        conn.execute(
            "UPDATE connections SET last_success_at = now(), last_error = NULL WHERE id = %s",
            (connection_id,),
        )
    else:
        conn.execute("UPDATE connections SET last_error = %s WHERE id = %s", (error, connection_id))
