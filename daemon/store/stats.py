"""Daily statistics: per connection (and its tenant), one row per day, kept for a retention period.

The cleanup sweep computes the previous day's (UTC) from the jobs that finished that day, before
it prunes job history; recomputing a day replaces its rows, so running the sweep twice is harmless.

    syncs, successes (completed or partial), records by entity (processed), created / changed /
    deleted, failed items, errors by kind (see `error_kind`), average duration
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from freshd.store.db import Connection

# what a job's error text says went wrong, first match wins (the kinds are stable: dashboards group by them)
_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("auth", re.compile(r"credential|re-?auth|unauthori[sz]ed|invalid_grant|\b401\b|\b403\b", re.I)),
    ("rate_limited", re.compile(r"rate.?limit|\b429\b|retry-after|asked to wait", re.I)),
    ("timeout", re.compile(r"timed? ?out|deadline", re.I)),
    ("config", re.compile(r"invalid connection settings|configuration", re.I)),
    ("incomplete_listing", re.compile(r"listing incomplete", re.I)),
    ("held_deletions", re.compile(r"held \d+ deletions", re.I)),
    ("items_failed", re.compile(r"items failed", re.I)),
    ("unavailable", re.compile(r"\b5\d\d\b|unavailable|connect|circuit", re.I)),
)


def error_kind(status: str, error: str | None) -> str | None:
    """The kind of a finished job's error (None: it completed cleanly)."""
    if status == "completed":
        return None
    if status == "cancelled":
        return "cancelled"
    for kind, pattern in _KINDS:
        if error and pattern.search(error):
            return kind
    return "provider" if status == "failed" else "partial"


def compute_day(conn: Connection, day: date) -> list[dict[str, Any]]:
    """Compute and store `day`'s statistics for every connection with a job that finished that day."""
    start = datetime.combine(day, time.min, UTC)
    rows = conn.execute(
        "SELECT j.id, j.connection_id, c.tenant, j.status, j.progress, j.error, j.options,"
        " EXTRACT(EPOCH FROM (j.finished_at - COALESCE(j.started_at, j.created_at)))::float AS seconds,"
        " (SELECT count(*) FROM failed_items f WHERE f.job_id = j.id) AS failed_items"
        " FROM sync_jobs j JOIN connections c ON c.id = j.connection_id"
        " WHERE j.finished_at >= %s AND j.finished_at < %s ORDER BY j.id",
        (start, start + timedelta(days=1)),
    ).fetchall()
    by_connection: dict[int, dict[str, Any]] = {}
    for row in rows:
        s = by_connection.setdefault(int(row["connection_id"]), {  # type: ignore[call-overload]
            "connection_id": int(row["connection_id"]), "tenant": row["tenant"], "syncs": 0,  # type: ignore[call-overload]
            "successes": 0, "records": {}, "created": 0, "changed": 0, "deleted": 0, "failed_items": 0,
            "errors": {}, "durations": []})
        s["syncs"] += 1
        s["successes"] += row["status"] in ("completed", "partial")
        s["failed_items"] += int(row["failed_items"])  # type: ignore[call-overload]
        if row["seconds"] is not None:
            s["durations"].append(float(row["seconds"]))  # type: ignore[arg-type]
        if (kind := error_kind(str(row["status"]), row["error"])) is not None:  # type: ignore[arg-type]
            s["errors"][kind] = s["errors"].get(kind, 0) + 1
        if (row["options"] or {}).get("dry_run"):  # type: ignore[attr-defined]
            continue  # a dry run stored nothing
        for entity, p in (row["progress"] or {}).items():  # type: ignore[attr-defined]
            s["records"][entity] = s["records"].get(entity, 0) + int(p.get("processed") or 0)
            for key in ("created", "changed", "deleted"):
                s[key] += int(p.get(key) or 0)
    conn.execute("DELETE FROM daily_stats WHERE day = %s", (day,))
    out = []
    for s in by_connection.values():
        durations = s.pop("durations")
        s["avg_duration_seconds"] = round(sum(durations) / len(durations), 3) if durations else None
        conn.execute(
            "INSERT INTO daily_stats (day, connection_id, tenant, syncs, successes, records, created, changed,"
            " deleted, failed_items, errors, avg_duration_seconds)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (day, s["connection_id"], s["tenant"], s["syncs"], s["successes"], Jsonb(s["records"]), s["created"],
             s["changed"], s["deleted"], s["failed_items"], Jsonb(s["errors"]), s["avg_duration_seconds"]),
        )
        out.append({"day": day, **s})
    return out


def prune_stats(conn: Connection, *, keep_days: int, today: date) -> int:
    return conn.execute("DELETE FROM daily_stats WHERE day < %s", (today - timedelta(days=keep_days),)).rowcount


def list_stats(
    conn: Connection,
    *,
    since: date,
    connection: str | None = None,
    tenant: str | None = None,
    tenants: Any = None,
) -> list[dict[str, Any]]:
    """Stored daily rows from `since` on, newest day first, then by connection name."""
    filters: list[str] = ["s.day >= %s"]
    params: list[Any] = [since]
    for clause, value in (("c.name = %s", connection), ("s.tenant = %s", tenant)):
        if value is not None:
            filters.append(clause)
            params.append(value)
    if tenants is not None:
        filters.append("s.tenant = ANY(%s)")
        params.append(list(tenants))
    rows = conn.execute(
        "SELECT s.day, c.name AS connection, s.tenant, s.syncs, s.successes, s.records, s.created, s.changed,"
        " s.deleted, s.failed_items, s.errors, s.avg_duration_seconds"
        f" FROM daily_stats s JOIN connections c ON c.id = s.connection_id WHERE {' AND '.join(filters)}"
        " ORDER BY s.day DESC, c.name", params,
    ).fetchall()
    return [dict(row) for row in rows]
