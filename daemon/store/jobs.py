"""Sync jobs: their rows, state changes, progress and history.

A job's status moves only forward through the funnel in `set_status`:

    queued ──> running ──> completed | partial | failed | cancelled
                 │  ^
                 v  │
               paused          running ──(daemon died)──> interrupted ──> running

The partial unique index `sync_jobs_one_live` makes "one live job per
connection" a database fact, not a hope.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from psycopg.types.json import Jsonb

from freshd import logs
from freshd.store.db import Connection


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


LIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.INTERRUPTED})
FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.PARTIAL, JobStatus.FAILED, JobStatus.CANCELLED})

_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: FINISHED | {JobStatus.PAUSED, JobStatus.INTERRUPTED},
    JobStatus.PAUSED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.INTERRUPTED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
}


class JobKind(StrEnum):
    INITIAL = "initial"
    FULL = "full"
    INCREMENTAL = "incremental"
    RETRY = "retry"  # fetch again the items another job recorded as failed


@dataclass(frozen=True, slots=True)
class JobRow:
    id: int
    connection_id: int
    connection: str
    tenant: str
    kind: JobKind
    status: JobStatus
    trigger: str
    progress: dict[str, dict[str, int | None]]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    retry_of: int | None = None
    confirm_deletes: bool = False  # may apply a reconciliation over the delete-share limit
    options: dict[str, Any] = field(default_factory=dict)  # per-run options (JobOptions.as_json)

    @property
    def run_options(self) -> JobOptions:
        return JobOptions.from_json(self.options)


@dataclass(frozen=True, slots=True)
class JobOptions:
    """Per-run options of a pull sync, kept on the job row so a resumed job keeps them.

    entities: only these (None: all the connection syncs); since: re-read these entities from
    this moment (ISO 8601, UTC) on; dry_run: fetch and count what would change, write nothing.
    """

    entities: tuple[str, ...] | None = None
    since: str | None = None
    dry_run: bool = False
    # find every change since the last sync, also those a provider without a modified filter only
    # shows in its periodic diff (two-way runs bring both sides up to date with it)
    catch_up: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobOptions:
        entities = data.get("entities")
        return cls(tuple(entities) if entities else None, data.get("since"), bool(data.get("dry_run")),
                   bool(data.get("catch_up")))

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.entities:
            out["entities"] = list(self.entities)
        if self.since:
            out["since"] = self.since
        if self.dry_run:
            out["dry_run"] = True
        if self.catch_up:
            out["catch_up"] = True
        return out


_SELECT = (
    "SELECT j.id, j.connection_id, c.name AS connection, c.tenant, j.kind, j.status, j.trigger, j.progress,"
    " j.created_at, j.started_at, j.finished_at, j.error, j.retry_of, j.confirm_deletes, j.options"
    " FROM sync_jobs j JOIN connections c ON c.id = j.connection_id"
)


def _job(row: dict[str, Any]) -> JobRow:
    row["kind"] = JobKind(row["kind"])
    row["status"] = JobStatus(row["status"])
    return JobRow(**row)


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A job wanted for one connection."""

    connection_id: int
    kind: JobKind
    options: JobOptions = JobOptions()
    confirm_deletes: bool = False  # may apply a reconciliation over the delete-share limit
    retry_of: int | None = None  # a RETRY job: the job whose failed items it fetches again


def create_jobs(conn: Connection, requests: Sequence[JobRequest], trigger: str) -> dict[int, tuple[JobRow, bool]]:
    """Queue many connections' jobs in one statement, none for a connection that already has a live
    one (that job is the answer): connection id -> (its live job, whether this call created it)."""
    if not requests:
        return {}
    ids = [r.connection_id for r in requests]
    created = conn.execute(
        "INSERT INTO sync_jobs (connection_id, kind, status, trigger, retry_of, confirm_deletes, options)"
        " SELECT cid, kind, 'queued', %s, retry_of, confirm, options"
        " FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::boolean[], %s::jsonb[])"
        " AS w(cid, kind, retry_of, confirm, options)"
        " ON CONFLICT (connection_id) WHERE status IN ('queued', 'running', 'paused', 'interrupted')"
        " DO NOTHING RETURNING id",
        (trigger, ids, [r.kind.value for r in requests], [r.retry_of for r in requests],
         [r.confirm_deletes for r in requests], [Jsonb(r.options.as_json()) for r in requests]),
    ).fetchall()
    new = {int(str(row["id"])) for row in created}
    rows = conn.execute(
        f"{_SELECT} WHERE j.connection_id = ANY(%s) AND j.status = ANY(%s)", (ids, [s.value for s in LIVE]),
    ).fetchall()
    return {job.connection_id: (job, job.id in new) for job in (_job(dict(row)) for row in rows)}


def create_job(
    conn: Connection, connection_id: int, kind: JobKind, trigger: str, *, retry_of: int | None = None,
    confirm_deletes: bool = False, options: JobOptions | None = None,
) -> tuple[JobRow, bool]:
    """Queue a job unless the connection already has a live one; return (job, created)."""
    request = JobRequest(connection_id, kind, options or JobOptions(), confirm_deletes, retry_of)
    return create_jobs(conn, [request], trigger)[connection_id]


def get_job(conn: Connection, job_id: int) -> JobRow | None:
    row = conn.execute(f"{_SELECT} WHERE j.id = %s", (job_id,)).fetchone()
    return _job(dict(row)) if row else None


def live_jobs(conn: Connection) -> dict[int, JobRow]:
    """Every connection's live job, in one query (the supervisor starting a fleet)."""
    rows = conn.execute(f"{_SELECT} WHERE j.status = ANY(%s)", ([s.value for s in LIVE],)).fetchall()
    return {job.connection_id: job for job in (_job(dict(row)) for row in rows)}


def live_job(conn: Connection, connection_id: int) -> JobRow | None:
    row = conn.execute(
        f"{_SELECT} WHERE j.connection_id = %s AND j.status = ANY(%s)",
        (connection_id, [s.value for s in LIVE]),
    ).fetchone()
    return _job(dict(row)) if row else None


def list_jobs(
    conn: Connection,
    *,
    connection: str | None = None,
    tenant: str | None = None,
    tenants: Collection[str] | None = None,
    status: JobStatus | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[JobRow], int]:
    """Newest first, filtered; returns one page and the total that matched."""
    filters: list[str] = []
    params: list[Any] = []
    for clause, value in (("c.name = %s", connection), ("c.tenant = %s", tenant),
                          ("j.status = %s", status.value if status else None)):
        if value is not None:
            filters.append(clause)
            params.append(value)
    if tenants is not None:  # a tenant-scoped caller sees only these
        filters.append("c.tenant = ANY(%s)")
        params.append(list(tenants))
    where = f"WHERE {' AND '.join(filters)}" if filters else ""
    total = conn.execute(
        f"SELECT count(*) AS n FROM sync_jobs j JOIN connections c ON c.id = j.connection_id {where}", params
    ).fetchone()
    rows = conn.execute(f"{_SELECT} {where} ORDER BY j.id DESC LIMIT %s OFFSET %s", [*params, limit, offset])
    return [_job(dict(row)) for row in rows.fetchall()], int(total["n"]) if total else 0  # type: ignore[call-overload]


class IllegalTransition(RuntimeError):
    pass


def set_status(conn: Connection, job_id: int, status: JobStatus, *, error: str | None = None) -> JobRow:
    """The one funnel for job state changes; an illegal transition raises."""
    current = conn.execute("SELECT status FROM sync_jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
    if current is None:
        raise LookupError(f"no job {job_id}")
    source = JobStatus(str(current["status"]))
    if status != source and status not in _ALLOWED.get(source, frozenset()):
        raise IllegalTransition(f"job {job_id}: {source} -> {status}")
    conn.execute(
        "UPDATE sync_jobs SET status = %s, error = COALESCE(%s, error),"
        " started_at = CASE WHEN %s = 'running' THEN COALESCE(started_at, now()) ELSE started_at END,"
        " finished_at = CASE WHEN %s THEN now() ELSE NULL END"
        " WHERE id = %s",
        (status.value, None if error is None else logs.scrub(error), status.value, status in FINISHED, job_id),
    )
    job = get_job(conn, job_id)
    assert job is not None
    return job


def commit_failures(conn: Connection, job_id: int, failures: Sequence[tuple[str, str | None, str]]) -> None:
    """Items of a job that could not be stored: (entity, external id or None, reason)."""
    if failures:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO failed_items (job_id, entity, external_id, reason) VALUES (%s, %s, %s, %s)",
                [(job_id, entity, eid, reason) for entity, eid, reason in failures],
            )


def save_progress(conn: Connection, job_id: int, progress: dict[str, dict[str, int | None]]) -> None:
    conn.execute("UPDATE sync_jobs SET progress = %s WHERE id = %s", (Jsonb(progress), job_id))


def interrupt_running(conn: Connection) -> list[int]:
    """At start-up: jobs left 'running' by a daemon that died are 'interrupted' (and resumed)."""
    rows = conn.execute(
        "UPDATE sync_jobs SET status = 'interrupted' WHERE status = 'running' RETURNING id"
    ).fetchall()
    return [int(row["id"]) for row in rows]  # type: ignore[call-overload]


def failed_items(conn: Connection, job_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT entity, external_id, reason, created_at FROM failed_items WHERE job_id = %s ORDER BY id",
        (job_id,),
    ).fetchall()
    return [dict(row) for row in rows]


def retry_work(conn: Connection, job_id: int) -> dict[str, tuple[list[str], int]]:
    """What a retry of job `job_id` fetches again: entity -> (its failed ids, in order, once each;
    how many failed items had no id, which cannot be fetched)."""
    out: dict[str, tuple[list[str], int]] = {}
    for item in failed_items(conn, job_id):
        ids, anonymous = out.get(item["entity"], ([], 0))
        if item["external_id"] is None:
            anonymous += 1
        elif item["external_id"] not in ids:
            ids.append(item["external_id"])
        out[item["entity"]] = (ids, anonymous)
    return out


def prune_jobs(conn: Connection, *, keep_per_connection: int, max_age: timedelta) -> int:
    """Cleanup: finished jobs beyond the newest N per connection, or older than max_age."""
    return conn.execute(
        "DELETE FROM sync_jobs WHERE id IN ("
        " SELECT id FROM (SELECT id, status, finished_at,"
        "   row_number() OVER (PARTITION BY connection_id ORDER BY id DESC) AS rank FROM sync_jobs) j"
        " WHERE j.status = ANY(%s) AND (j.rank > %s OR j.finished_at < now() - %s))",
        ([s.value for s in FINISHED], keep_per_connection, max_age),
    ).rowcount


def job_stats(conn: Connection) -> dict[str, int]:
    """For `freshctl health`: finished jobs, the successful ones, and the live ones."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE status = ANY(%s)) AS total,"
        " count(*) FILTER (WHERE status IN ('completed', 'partial')) AS successful,"
        " count(*) FILTER (WHERE status = ANY(%s)) AS active FROM sync_jobs",
        ([s.value for s in FINISHED], [s.value for s in LIVE]),
    ).fetchone()
    assert row is not None
    return {k: int(v) for k, v in row.items()}  # type: ignore[call-overload]


def last_started(conn: Connection) -> dict[int, datetime]:
    """connection id -> when its latest job started (or was queued): for the minimum gap."""
    rows = conn.execute(
        "SELECT connection_id, max(COALESCE(started_at, created_at)) AS at FROM sync_jobs GROUP BY connection_id"
    ).fetchall()
    return {int(row["connection_id"]): row["at"] for row in rows}  # type: ignore[call-overload, misc]


def last_successful_jobs(conn: Connection, connection_ids: Collection[int] | None = None) -> dict[int, JobRow]:
    """connection id -> its latest completed or partial job that was not a dry run (ensure, health)."""
    distinct = _SELECT.replace("SELECT ", "SELECT DISTINCT ON (j.connection_id) ", 1)
    rows = conn.execute(
        f"{distinct} WHERE j.status IN ('completed', 'partial')"
        " AND NOT COALESCE((j.options ->> 'dry_run')::boolean, false)"
        " AND (%s::bigint[] IS NULL OR j.connection_id = ANY(%s::bigint[]))"
        " ORDER BY j.connection_id, j.id DESC",
        (None if connection_ids is None else list(connection_ids),) * 2,
    ).fetchall()
    return {job.connection_id: job for job in (_job(dict(row)) for row in rows)}


def held_deletions(conn: Connection, connection_id: int) -> list[dict[str, Any]]:
    """Reconciliations held for confirmation (too large a share of the entity), oldest first."""
    rows = conn.execute(
        "SELECT entity, job_id, count, live, held_at FROM held_deletions WHERE connection_id = %s"
        " ORDER BY held_at, entity", (connection_id,),
    ).fetchall()
    return [dict(row) for row in rows]


def ever_succeeded(conn: Connection, connection_ids: Collection[int]) -> set[int]:
    """Of these connections, those with a completed or partial job: one whose outcome is not yet
    written on the connection row (a separate transaction) has synced all the same."""
    if not connection_ids:
        return set()
    rows = conn.execute(
        "SELECT DISTINCT connection_id FROM sync_jobs WHERE connection_id = ANY(%s)"
        " AND status IN ('completed', 'partial')", (list(connection_ids),),
    ).fetchall()
    return {int(str(r["connection_id"])) for r in rows}
