"""The activity (audit) log: what happened to which connection and job, and why."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from psycopg.types.json import Jsonb

from freshd import logs
from freshd.store.db import Connection


def log_activity(
    conn: Connection,
    kind: str,
    message: str,
    *,
    connection_id: int | None = None,
    job_id: int | None = None,
    run_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO activity_log (connection_id, job_id, run_id, kind, message, details)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (connection_id, job_id, run_id, kind, logs.scrub(message), Jsonb(logs.scrub_json(details or {}))),
    )


def recent_activity(conn: Connection, *, connection_id: int | None = None, run_id: int | None = None,
                    limit: int = 50) -> list[dict[str, Any]]:
    where, params = ("WHERE connection_id = %s", [connection_id]) if connection_id else ("", [])
    if run_id is not None:
        where, params = "WHERE run_id = %s", [run_id]
    rows = conn.execute(
        f"SELECT at, connection_id, job_id, run_id, kind, message, details FROM activity_log {where}"
        " ORDER BY id DESC LIMIT %s",
        [*params, limit],
    ).fetchall()
    return [dict(row) for row in rows]


def prune_activity(conn: Connection, *, max_age: timedelta) -> int:
    return conn.execute("DELETE FROM activity_log WHERE at < now() - %s", (max_age,)).rowcount
