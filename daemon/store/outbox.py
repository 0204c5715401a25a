"""The transactional outbox: one row per change event, written with the change itself.

`record_changes` and `record_deletions` run inside the page's own transaction (records,
cursor and progress), so an event exists exactly when its change was committed.  The relay
(freshd.events) reads the committed, unpublished rows in id order, publishes them, then marks
them published one by one: a row whose transaction took its id earlier but committed later is
simply read later, never skipped (no high-water mark is kept).  Per record, order holds: one
connection's changes commit one after another, so a record's later version is never visible
before its earlier one.  (A horizon on transaction ids, pg_snapshot_xmin, was not used: it is
cluster-wide, so one long transaction in any database of the server would stall the events.)

Consumers and backfills live here too: the applications reading the streams, and the jobs
that queue every current record as a historical event for one of them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from freshd.store.db import Connection


def record_changes(conn: Connection, connection_id: int, entity: str,
                   changed: Sequence[tuple[str, bool, int]]) -> None:
    """Events for records just inserted or changed: (external id, created?, version) as the upsert
    returned them.  No payload is copied: the relay takes it from the record, which holds this
    version until the next change."""
    if not changed:
        return
    conn.execute(
        "INSERT INTO outbox (connection_id, entity, external_id, type, version)"
        " SELECT %s, %s, u.eid, CASE WHEN u.created THEN 'record.created' ELSE 'record.updated' END, u.version"
        " FROM unnest(%s::text[], %s::bool[], %s::bigint[]) AS u(eid, created, version)",
        (connection_id, entity, [c[0] for c in changed], [c[1] for c in changed], [c[2] for c in changed]),
    )


def record_deletions(conn: Connection, connection_id: int, entity: str, deleted: Sequence[tuple[str, int]]) -> None:
    """Events for records just marked deleted: (external id, version)."""
    if not deleted:
        return
    conn.execute(
        "INSERT INTO outbox (connection_id, entity, external_id, type, version)"
        " SELECT %s, %s, u.eid, 'record.deleted', u.version FROM unnest(%s::text[], %s::bigint[]) AS u(eid, version)",
        (connection_id, entity, [d[0] for d in deleted], [d[1] for d in deleted]),
    )


@dataclass(frozen=True, slots=True)
class Pending:
    """An outbox row ready to publish, with what the event needs from its connection and record."""

    id: int
    connection_id: int
    connection: str
    tenant: str
    provider: str
    entity: str
    external_id: str
    type: str
    version: int
    payload: str | None  # the record's JSON text while it still is this version (else None: superseded)
    occurred_at: str | None  # the provider's own modified time of the record, when it has one
    historical: bool
    consumer: str | None
    created_at: datetime
    first_seen_at: datetime | None
    current_version: int | None  # the record's version now (a stale historical event is dropped)


def pending(conn: Connection, connection_ids: Collection[int] | None, limit: int,
            occurred: str = "NULL") -> list[Pending]:
    """Unpublished committed rows, oldest first (`connection_ids`: only those).  `occurred` is an SQL
    expression over `c.provider`, `o.entity` and `r.payload` giving the record's modified time."""
    rows = conn.execute(
        "SELECT o.id, o.connection_id, c.name AS connection, c.tenant, c.provider, o.entity, o.external_id,"
        " o.type, o.version, CASE WHEN r.version = o.version AND r.deleted_at IS NULL THEN r.payload::text END"
        " AS payload, CASE WHEN r.version = o.version THEN " + occurred + " END AS occurred_at,"
        " o.historical, o.consumer, o.created_at, r.first_seen_at, r.version AS current_version"
        " FROM outbox o JOIN connections c ON c.id = o.connection_id"
        " LEFT JOIN records r ON r.connection_id = o.connection_id AND r.entity = o.entity"
        "  AND r.external_id = o.external_id"
        " WHERE o.published_at IS NULL"
        " AND (%s::bigint[] IS NULL OR o.connection_id = ANY(%s::bigint[]))"
        " ORDER BY o.id LIMIT %s",
        (None if connection_ids is None else list(connection_ids),
         None if connection_ids is None else list(connection_ids), limit),
    ).fetchall()
    return [Pending(**row) for row in rows]  # type: ignore[arg-type]


def mark_published(conn: Connection, ids: Sequence[int]) -> None:
    conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY(%s)", (list(ids),))


def prune(conn: Connection, older_than: timedelta) -> int:
    return conn.execute("DELETE FROM outbox WHERE published_at < now() - %s", (older_than,)).rowcount


def lag(conn: Connection) -> dict[str, Any]:
    """Unpublished events and the age of the oldest (health, metrics)."""
    row = conn.execute(
        "SELECT count(*) AS pending, extract(epoch FROM now() - min(created_at))::float8 AS oldest"
        " FROM outbox WHERE published_at IS NULL"
    ).fetchone()
    assert row is not None
    return {"pending": int(str(row["pending"])), "oldest_seconds": row["oldest"]}


# -- consumers ----------------------------------------------------------------------------------------


def add_consumer(conn: Connection, app: str, tenant: str, entities: Sequence[str] | None) -> bool:
    return conn.execute(
        "INSERT INTO consumers (app, tenant, entities) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        (app, tenant, None if entities is None else list(entities)),
    ).rowcount == 1


def consumers(conn: Connection, app: str | None = None) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT app, tenant, entities, created_at FROM consumers WHERE %s::text IS NULL OR app = %s ORDER BY app",
        (app, app),
    ).fetchall()
    return [dict(row) for row in rows]


def remove_consumer(conn: Connection, app: str) -> bool:
    conn.execute("DELETE FROM outbox WHERE consumer = %s AND published_at IS NULL", (app,))
    return conn.execute("DELETE FROM consumers WHERE app = %s", (app,)).rowcount == 1


def tenant_entities(conn: Connection, tenant: str) -> dict[str, int]:
    """entity -> live records, over the tenant's connections (what an application can subscribe to)."""
    rows = conn.execute(
        "SELECT r.entity, count(*) FILTER (WHERE r.deleted_at IS NULL) AS n FROM records r"
        " JOIN connections c ON c.id = r.connection_id WHERE c.tenant = %s GROUP BY r.entity ORDER BY r.entity",
        (tenant,),
    ).fetchall()
    return {str(r["entity"]): int(str(r["n"])) for r in rows}


# -- backfills ----------------------------------------------------------------------------------------


def _selection(tenant: str, entities: Sequence[str] | None, since: datetime | None) -> tuple[str, list[Any]]:
    where = ["c.tenant = %s", "r.deleted_at IS NULL"]
    params: list[Any] = [tenant]
    if entities:
        where.append("r.entity = ANY(%s)")
        params.append(list(entities))
    if since is not None:
        where.append("(r.first_seen_at >= %s OR r.changed_at >= %s)")
        params += [since, since]
    return " AND ".join(where), params


def backfill_counts(conn: Connection, tenant: str, entities: Sequence[str] | None,
                    since: datetime | None) -> dict[str, int]:
    where, params = _selection(tenant, entities, since)
    rows = conn.execute(
        f"SELECT r.entity, count(*) AS n FROM records r JOIN connections c ON c.id = r.connection_id"
        f" WHERE {where} GROUP BY r.entity ORDER BY r.entity", params,
    ).fetchall()
    return {str(r["entity"]): int(str(r["n"])) for r in rows}


def backfill_sample(conn: Connection, tenant: str, entities: Sequence[str] | None, since: datetime | None,
                    limit: int = 3) -> list[dict[str, Any]]:
    where, params = _selection(tenant, entities, since)
    rows = conn.execute(
        f"SELECT c.name AS connection, c.provider, r.entity, r.external_id, r.version, r.first_seen_at,"
        f" r.changed_at, r.payload FROM records r JOIN connections c ON c.id = r.connection_id WHERE {where}"
        f" ORDER BY r.connection_id, r.entity, r.external_id LIMIT %s", [*params, limit],
    ).fetchall()
    return [dict(r) for r in rows]


def queue_backfill_chunk(conn: Connection, app: str, tenant: str, entities: Sequence[str] | None, *,
                         since: datetime | None, after: tuple[int, str, str] | None,
                         limit: int) -> tuple[dict[str, int], tuple[int, str, str] | None]:
    """The next `limit` current records (after the keyset `after`) as historical events for `app`:
    entity -> events queued, and the new keyset position (None: done)."""
    where, params = _selection(tenant, entities, since)
    if after is not None:
        where += " AND (r.connection_id, r.entity, r.external_id) > (%s, %s, %s)"
        params += list(after)
    rows = conn.execute(
        f"INSERT INTO outbox (connection_id, entity, external_id, type, version, historical, consumer)"
        f" SELECT r.connection_id, r.entity, r.external_id, 'record.created', r.version, true, %s"
        f" FROM records r JOIN connections c ON c.id = r.connection_id WHERE {where}"
        f" ORDER BY r.connection_id, r.entity, r.external_id LIMIT %s"
        f" RETURNING connection_id, entity, external_id",
        [app, *params, limit],
    ).fetchall()
    counts: dict[str, int] = {}
    last: tuple[int, str, str] | None = None
    for r in rows:
        counts[str(r["entity"])] = counts.get(str(r["entity"]), 0) + 1
        key = (int(str(r["connection_id"])), str(r["entity"]), str(r["external_id"]))
        last = key if last is None or key > last else last
    return counts, (last if len(rows) == limit else None)


def create_backfill(conn: Connection, app: str, entities: Sequence[str] | None, since: datetime | None) -> int:
    row = conn.execute(
        "INSERT INTO backfills (app, entities, since, status) VALUES (%s, %s, %s, 'queued')"
        " ON CONFLICT (app) WHERE status IN ('queued', 'running', 'paused') DO NOTHING RETURNING id",
        (app, None if entities is None else list(entities), since),
    ).fetchone()
    if row is None:
        live = conn.execute("SELECT id FROM backfills WHERE app = %s AND status IN ('queued', 'running', 'paused')",
                            (app,)).fetchone()
        assert live is not None
        return -int(str(live["id"]))  # negative: the live one, not a new one
    return int(str(row["id"]))


def backfills(conn: Connection, app: str | None = None, *, live: bool = False) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, app, entities, since, status, progress, cursor, error, created_at, started_at, finished_at"
        " FROM backfills WHERE (%s::text IS NULL OR app = %s)"
        " AND (NOT %s OR status IN ('queued', 'running', 'paused')) ORDER BY id",
        (app, app, live),
    ).fetchall()
    return [dict(r) for r in rows]


def save_backfill(conn: Connection, backfill_id: int, *, status: str | None = None,
                  progress: dict[str, Any] | None = None, cursor: Any = None, error: str | None = None) -> None:
    conn.execute(
        "UPDATE backfills SET status = coalesce(%s, status), progress = coalesce(%s, progress),"
        " cursor = coalesce(%s, cursor), error = coalesce(%s, error),"
        " started_at = CASE WHEN %s = 'running' THEN coalesce(started_at, now()) ELSE started_at END,"
        " finished_at = CASE WHEN %s IN ('completed', 'failed', 'cancelled') THEN now() ELSE finished_at END"
        " WHERE id = %s",
        (status, None if progress is None else Jsonb(progress), None if cursor is None else Jsonb(cursor),
         error, status, status, backfill_id),
    )
