"""Two-way sync's tables: pairs, links (the identity map), runs and their items, the idempotency
log of provider writes, and conflicts.  Plain functions ``fn(conn, ...)`` run in one transaction
by ``Store.call``, like the other store modules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from psycopg.types.json import Jsonb

from freshd import logs
from freshd.store.db import Connection


class RunState(StrEnum):
    DRAFT = "draft"
    QUEUED = "queued"
    PROCESSING = "processing"
    PAUSED = "paused"
    DONE = "done"
    PARTIAL = "partial"  # finished, some items failed or wait in conflicts
    FAILED = "failed"
    CANCELLED = "cancelled"


LIVE_RUN = (RunState.QUEUED, RunState.PROCESSING, RunState.PAUSED)
FINAL_RUN = (RunState.DONE, RunState.PARTIAL, RunState.FAILED, RunState.CANCELLED)

# every run transition, through set_run_state only
_RUN_TRANSITIONS: Mapping[RunState, frozenset[RunState]] = {
    RunState.DRAFT: frozenset({RunState.QUEUED, RunState.CANCELLED}),
    RunState.QUEUED: frozenset({RunState.PROCESSING, RunState.PAUSED, RunState.CANCELLED}),
    # processing -> queued: the member stopped mid-run (or lost a lease); the next start resumes it
    RunState.PROCESSING: frozenset({RunState.QUEUED, RunState.PAUSED, RunState.DONE, RunState.PARTIAL,
                                    RunState.FAILED, RunState.CANCELLED}),
    RunState.PAUSED: frozenset({RunState.QUEUED, RunState.CANCELLED}),
    RunState.DONE: frozenset(), RunState.PARTIAL: frozenset(), RunState.FAILED: frozenset(),
    RunState.CANCELLED: frozenset(),
}


class RunTransitionRefused(ValueError):
    pass


class ItemStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    CONFLICT = "conflict"


class ConflictType(StrEnum):
    DATA_MISMATCH = "DataMismatch"
    DUPLICATE_KEY = "DuplicateKey"
    VALIDATION_ERROR = "ValidationError"
    AUTH_ERROR = "AuthError"
    RETRY_EXHAUSTED = "RetryExhausted"


# --- pairs ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PairRow:
    name: str
    tenant: str
    left_id: int
    right_id: int
    left: str  # connection names
    right: str
    left_provider: str
    right_provider: str
    spec: dict[str, Any]
    source: str


_PAIR_SELECT = (
    "SELECT p.name, p.tenant, p.left_id, p.right_id, l.name AS left, r.name AS right,"
    " l.provider AS left_provider, r.provider AS right_provider, p.spec, p.source"
    " FROM pairs p JOIN connections l ON l.id = p.left_id JOIN connections r ON r.id = p.right_id"
)


def upsert_pair(conn: Connection, *, name: str, tenant: str, left_id: int, right_id: int, spec: dict[str, Any],
                source: str) -> PairRow:
    conn.execute(
        "INSERT INTO pairs (name, tenant, left_id, right_id, spec, source) VALUES (%s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (name) DO UPDATE SET tenant = excluded.tenant, left_id = excluded.left_id,"
        " right_id = excluded.right_id, spec = excluded.spec, source = excluded.source, updated_at = now()",
        (name, tenant, left_id, right_id, Jsonb(spec), source))
    row = get_pair(conn, name)
    assert row is not None
    return row


def get_pair(conn: Connection, name: str) -> PairRow | None:
    row = conn.execute(_PAIR_SELECT + " WHERE p.name = %s", (name,)).fetchone()
    return PairRow(**row) if row else None  # type: ignore[arg-type]


def list_pairs(conn: Connection) -> list[PairRow]:
    return [PairRow(**r) for r in conn.execute(_PAIR_SELECT + " ORDER BY p.name").fetchall()]  # type: ignore[arg-type]


def pair_groups(conn: Connection) -> dict[int, int]:
    """Connections that must run on one member (a two-way run writes to both of its pair's):
    connection id -> its group's smallest id, pairs that share a connection joined."""
    parent: dict[int, int] = {}

    def root(cid: int) -> int:
        while parent.setdefault(cid, cid) != cid:
            cid = parent[cid]
        return cid

    for row in conn.execute("SELECT left_id, right_id FROM pairs").fetchall():
        a, b = root(int(str(row["left_id"]))), root(int(str(row["right_id"])))
        parent[max(a, b)] = min(a, b)
    return {cid: root(cid) for cid in parent}


def pair_has_links(conn: Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM links WHERE pair = %s LIMIT 1", (name,)).fetchone() is not None


# --- records and links ------------------------------------------------------------------------------

def live_records(conn: Connection, connection_id: int, entity: str) -> dict[str, dict[str, Any]]:
    """external id -> payload of the stored, not deleted records of one stream."""
    rows = conn.execute(
        "SELECT external_id, payload FROM records WHERE connection_id = %s AND entity = %s AND deleted_at IS NULL",
        (connection_id, entity)).fetchall()
    return {str(r["external_id"]): r["payload"] for r in rows}  # type: ignore[misc]


def records_by_id(conn: Connection, connection_id: int, entity: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        "SELECT external_id, payload FROM records WHERE connection_id = %s AND entity = %s"
        " AND external_id = ANY(%s) AND deleted_at IS NULL", (connection_id, entity, list(ids))).fetchall()
    return {str(r["external_id"]): r["payload"] for r in rows}  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class Link:
    left_id: str
    right_id: str
    base: dict[str, Any]


def links(conn: Connection, pair: str, entity: str) -> list[Link]:
    rows = conn.execute("SELECT left_id, right_id, base FROM links WHERE pair = %s AND entity = %s",
                        (pair, entity)).fetchall()
    return [Link(str(r["left_id"]), str(r["right_id"]), r["base"]) for r in rows]  # type: ignore[arg-type]


def link_ids(conn: Connection, pair: str, entity: str) -> dict[str, str]:
    """left id -> right id of every link of one entity (what other entities' fields translate through)."""
    rows = conn.execute("SELECT left_id, right_id FROM links WHERE pair = %s AND entity = %s", (pair, entity))
    return {str(r["left_id"]): str(r["right_id"]) for r in rows.fetchall()}


def links_of(conn: Connection, pair: str, entity: str, *, left_ids: Sequence[str],
             right_ids: Sequence[str]) -> list[Link]:
    """The links of any of these records (one query for a batch)."""
    rows = conn.execute(
        "SELECT left_id, right_id, base FROM links WHERE pair = %s AND entity = %s"
        " AND (left_id = ANY(%s) OR right_id = ANY(%s))", (pair, entity, list(left_ids), list(right_ids))).fetchall()
    return [Link(str(r["left_id"]), str(r["right_id"]), r["base"]) for r in rows]  # type: ignore[arg-type]


def link_of(conn: Connection, pair: str, entity: str, *, left_id: str | None = None,
            right_id: str | None = None) -> Link | None:
    column, value = ("left_id", left_id) if left_id is not None else ("right_id", right_id)
    row = conn.execute(f"SELECT left_id, right_id, base FROM links WHERE pair = %s AND entity = %s AND {column} = %s",
                       (pair, entity, value)).fetchone()
    return Link(str(row["left_id"]), str(row["right_id"]), row["base"]) if row else None  # type: ignore[arg-type]


def save_link(conn: Connection, pair: str, entity: str, *, left_id: str, right_id: str, base: Mapping[str, Any],
              linked_by: str) -> bool:
    """Link two records (or move the base of their link on).  False: either record is already linked
    to another one (the identity map stays one-to-one; the caller records a conflict)."""
    moved = conn.execute(
        "UPDATE links SET base = %s, updated_at = now() WHERE pair = %s AND entity = %s AND left_id = %s"
        " AND right_id = %s", (Jsonb(dict(base)), pair, entity, left_id, right_id)).rowcount
    if moved:
        return True
    # a new link; DO NOTHING on either side's uniqueness (no savepoint needed): taken means refused
    inserted = conn.execute(
        "INSERT INTO links (pair, entity, left_id, right_id, base, linked_by) VALUES (%s, %s, %s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING RETURNING 1", (pair, entity, left_id, right_id, Jsonb(dict(base)), linked_by))
    return inserted.fetchone() is not None


# --- runs -------------------------------------------------------------------------------------------

_RUN_COLUMNS = ("id, pair, tenant, entities, state, phase, options, dry_run, plan, writes, sync_jobs, requested,"
                " error, created_at, started_at, finished_at, updated_at")


def create_run(conn: Connection, *, pair: str, tenant: str, entities: Sequence[str], options: Mapping[str, Any],
               dry_run: bool) -> tuple[dict[str, Any], bool]:
    """A queued run (draft -> queued in one step); (the pair's live run, False) if it has one."""
    live = conn.execute(f"SELECT {_RUN_COLUMNS} FROM twoway_runs WHERE pair = %s AND state = ANY(%s)",
                        (pair, list(LIVE_RUN))).fetchone()
    if live is not None:
        return dict(live), False
    row = conn.execute(
        "INSERT INTO twoway_runs (pair, tenant, entities, state, options, dry_run)"
        f" VALUES (%s, %s, %s, 'queued', %s, %s) RETURNING {_RUN_COLUMNS}",
        (pair, tenant, list(entities), Jsonb(dict(options)), dry_run)).fetchone()
    assert row is not None
    return dict(row), True


def get_run(conn: Connection, run_id: int) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM twoway_runs WHERE id = %s", (run_id,)).fetchone()
    return dict(row) if row else None


def list_runs(conn: Connection, *, pair: str | None = None, states: Sequence[str] | None = None,
              limit: int = 50) -> list[dict[str, Any]]:
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    if pair is not None:
        where.append("pair = %s")
        params.append(pair)
    if states is not None:
        where.append("state = ANY(%s)")
        params.append(list(states))
    rows = conn.execute(f"SELECT {_RUN_COLUMNS} FROM twoway_runs WHERE {' AND '.join(where)} ORDER BY id DESC"
                        " LIMIT %s", (*params, limit)).fetchall()
    return [dict(r) for r in rows]


def set_run_state(conn: Connection, run_id: int, state: RunState, *, error: str | None = None) -> dict[str, Any]:
    """The one funnel for run transitions: refuses those _RUN_TRANSITIONS does not allow."""
    row = conn.execute("SELECT state FROM twoway_runs WHERE id = %s FOR UPDATE", (run_id,)).fetchone()
    if row is None:
        raise RunTransitionRefused(f"no run {run_id}")
    current = RunState(row["state"])  # type: ignore[arg-type]
    if state is not current and state not in _RUN_TRANSITIONS[current]:
        raise RunTransitionRefused(f"run {run_id} is {current}: it cannot become {state}")
    conn.execute(
        "UPDATE twoway_runs SET state = %s, updated_at = now(), error = coalesce(%s, error),"
        " requested = CASE WHEN %s IN ('paused', 'cancelled', 'queued') THEN NULL ELSE requested END,"
        " started_at = CASE WHEN %s = 'processing' THEN coalesce(started_at, now()) ELSE started_at END,"
        " finished_at = CASE WHEN %s = ANY(%s) THEN now() ELSE finished_at END WHERE id = %s",
        (state.value, logs.scrub(error) if error else None, state.value, state.value, state.value,
         [s.value for s in FINAL_RUN], run_id))
    found = get_run(conn, run_id)
    assert found is not None
    return found


def update_run(conn: Connection, /, run_id: int, **values: Any) -> None:
    allowed = {"phase", "plan", "sync_jobs", "requested"}
    assert set(values) <= allowed, values
    sets = ", ".join(f"{k} = %s" for k in values)
    params = [Jsonb(v) if k == "plan" else v for k, v in values.items()]
    conn.execute(f"UPDATE twoway_runs SET {sets}, updated_at = now() WHERE id = %s", (*params, run_id))


def count_write(conn: Connection, run_id: int, side: str, n: int) -> None:
    conn.execute("UPDATE twoway_runs SET writes = jsonb_set(writes, %s, to_jsonb(coalesce((writes->>%s)::int, 0) + %s))"
                 " WHERE id = %s", ([side], side, n, run_id))


def running_per_tenant(conn: Connection) -> dict[str, int]:
    rows = conn.execute("SELECT tenant, count(*) AS n FROM twoway_runs WHERE state = 'processing' GROUP BY tenant"
                        ).fetchall()
    return {str(r["tenant"]): int(r["n"]) for r in rows}  # type: ignore[call-overload]


# --- items ------------------------------------------------------------------------------------------

def add_items(conn: Connection, run_id: int, items: Iterable[tuple[str, str | None, str | None]]) -> int:
    """The run's queue, in order: (entity, left_id, right_id)."""
    rows = [(run_id, seq, entity, left, right) for seq, (entity, left, right) in enumerate(items)]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO twoway_items (run_id, seq, entity, left_id, right_id) VALUES (%s, %s, %s, %s, %s)",
                        rows)
    return len(rows)


def pending_items(conn: Connection, run_id: int, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT seq, entity, left_id, right_id, attempts FROM twoway_items WHERE run_id = %s AND status = 'pending'"
        " ORDER BY seq LIMIT %s", (run_id, limit)).fetchall()
    return [dict(r) for r in rows]


def settle_item(conn: Connection, run_id: int, seq: int, status: ItemStatus, *, detail: Mapping[str, Any] | None = None,
                left_id: str | None = None, right_id: str | None = None, attempts: int | None = None) -> None:
    conn.execute(
        "UPDATE twoway_items SET status = %s, detail = coalesce(%s, detail), left_id = coalesce(%s, left_id),"
        " right_id = coalesce(%s, right_id), attempts = coalesce(%s, attempts) WHERE run_id = %s AND seq = %s",
        (status.value, Jsonb(logs.scrub_json(dict(detail))) if detail is not None else None, left_id, right_id,
         attempts, run_id, seq))


def skip_pending(conn: Connection, run_id: int, reason: str) -> int:
    return conn.execute(
        "UPDATE twoway_items SET status = 'skipped', detail = %s WHERE run_id = %s AND status = 'pending'",
        (Jsonb({"reason": reason}), run_id)).rowcount


def queue_stats(conn: Connection, run_id: int) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) AS n FROM twoway_items WHERE run_id = %s GROUP BY status",
                        (run_id,)).fetchall()
    by = {str(r["status"]): int(r["n"]) for r in rows}  # type: ignore[call-overload]
    total = sum(by.values())
    return {"total": total, "processed": total - by.get("pending", 0), "failed": by.get("failed", 0),
            "skipped": by.get("skipped", 0), "conflict": by.get("conflict", 0), "pending": by.get("pending", 0),
            "done": by.get("done", 0)}


# --- the idempotency log ----------------------------------------------------------------------------

def intend(conn: Connection, *, key: str, run_id: int | None, pair: str, entity: str, side: str, op: str,
           source_id: str | None, target_id: str | None, fields: Mapping[str, Any]) -> bool:
    """Commit the intent of one provider write.  False: this key was already applied (never again)."""
    row = conn.execute(
        "INSERT INTO twoway_writes (key, run_id, pair, entity, side, op, source_id, target_id, fields, state)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'intended')"
        " ON CONFLICT (key) DO UPDATE SET run_id = excluded.run_id, fields = excluded.fields,"
        " target_id = coalesce(twoway_writes.target_id, excluded.target_id)"
        " WHERE twoway_writes.state <> 'applied' RETURNING key",
        (key, run_id, pair, entity, side, op, source_id, target_id, Jsonb(logs.scrub_json(dict(fields))))).fetchone()
    return row is not None


def write_states(conn: Connection, keys: Sequence[str]) -> dict[str, str]:
    """key -> state of the writes already logged under these keys (locked until the transaction ends)."""
    rows = conn.execute("SELECT key, state FROM twoway_writes WHERE key = ANY(%s) FOR UPDATE", (list(keys),))
    return {str(r["key"]): str(r["state"]) for r in rows.fetchall()}


def settle_write(conn: Connection, key: str, *, applied: bool, target_id: str | None = None,
                 error: str | None = None, seconds: float | None = None) -> None:
    conn.execute(
        "UPDATE twoway_writes SET state = %s, target_id = coalesce(%s, target_id), error = %s, settled_at = now(),"
        " seconds = %s WHERE key = %s",
        ("applied" if applied else "refused", target_id, logs.scrub(error) if error else None, seconds, key))


def unsettled_creates(conn: Connection, pair: str, entity: str) -> list[dict[str, Any]]:
    """Creates whose outcome is unknown (a crash or an ambiguous failure after the intent)."""
    rows = conn.execute(
        "SELECT key, side, source_id, fields FROM twoway_writes WHERE pair = %s AND entity = %s"
        " AND state = 'intended' AND op = 'create' ORDER BY created_at", (pair, entity)).fetchall()
    return [dict(r) for r in rows]


def write_log(conn: Connection, *, run_id: int | None = None, pair: str | None = None,
              limit: int = 100) -> list[dict[str, Any]]:
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    if run_id is not None:
        where.append("run_id = %s")
        params.append(run_id)
    if pair is not None:
        where.append("pair = %s")
        params.append(pair)
    rows = conn.execute(
        "SELECT key, run_id, pair, entity, side, op, source_id, target_id, fields, state, error, created_at,"
        f" settled_at, seconds FROM twoway_writes WHERE {' AND '.join(where)} ORDER BY created_at DESC LIMIT %s",
        (*params, limit)).fetchall()
    return [dict(r) for r in rows]


# --- conflicts --------------------------------------------------------------------------------------

_CONFLICT_COLUMNS = ("id, pair, run_id, last_run_id, entity, type, left_id, right_id, fields, base, left_values,"
                     " right_values, message, status, resolution, created_at, resolved_at")


def record_conflict(conn: Connection, *, pair: str, run_id: int | None, entity: str, type: ConflictType,
                    left_id: str | None, right_id: str | None, fields: Sequence[str] = (),
                    base: Mapping[str, Any] | None = None, left: Mapping[str, Any] | None = None,
                    right: Mapping[str, Any] | None = None, message: str | None = None,
                    status: str = "unresolved", resolution: Mapping[str, Any] | None = None) -> int:
    """One open conflict per record pair and type: seen again, it is brought up to date."""
    def j(value: Mapping[str, Any] | None) -> Jsonb | None:
        return None if value is None else Jsonb(logs.scrub_json(dict(value)))

    params = (pair, run_id, entity, type.value, left_id, right_id, list(fields), j(base), j(left), j(right),
              logs.scrub(message) if message else None, status, j(resolution))
    if status != "unresolved":
        row = conn.execute(
            "INSERT INTO conflicts (pair, run_id, entity, type, left_id, right_id, fields, base, left_values,"
            " right_values, message, status, resolution, resolved_at, last_run_id) VALUES"
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), %s) RETURNING id",
            (*params, run_id)).fetchone()
    else:
        row = conn.execute(
            "INSERT INTO conflicts (pair, run_id, entity, type, left_id, right_id, fields, base, left_values,"
            " right_values, message, status, resolution, last_run_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (pair, entity, type, coalesce(left_id, ''), coalesce(right_id, ''))"
            " WHERE status = 'unresolved' DO UPDATE SET last_run_id = excluded.last_run_id,"
            " fields = excluded.fields,"
            " base = excluded.base, left_values = excluded.left_values, right_values = excluded.right_values,"
            " message = excluded.message RETURNING id", (*params, run_id)).fetchone()
    assert row is not None
    return int(str(row["id"]))


def open_conflict_fields(conn: Connection, pair: str, entity: str, left_id: str, right_id: str) -> set[str]:
    """Fields of this record pair that wait for a person (the run leaves them alone)."""
    rows = conn.execute(
        "SELECT fields FROM conflicts WHERE pair = %s AND entity = %s AND left_id = %s AND right_id = %s"
        " AND status = 'unresolved' AND type = 'DataMismatch'", (pair, entity, left_id, right_id)).fetchall()
    return {f for r in rows for f in r["fields"]}  # type: ignore[attr-defined]


def close_stale_mismatch(conn: Connection, pair: str, entity: str, left_id: str, right_id: str) -> int:
    """Both sides agree again (someone fixed it by hand): the open DataMismatch is closed."""
    return conn.execute(
        "UPDATE conflicts SET status = 'resolved', resolved_at = now(), resolution = %s WHERE pair = %s"
        " AND entity = %s AND left_id = %s AND right_id = %s AND status = 'unresolved' AND type = 'DataMismatch'",
        (Jsonb({"by": "agreement"}), pair, entity, left_id, right_id)).rowcount


def get_conflict(conn: Connection, conflict_id: int) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {_CONFLICT_COLUMNS} FROM conflicts WHERE id = %s", (conflict_id,)).fetchone()
    return dict(row) if row else None


def list_conflicts(conn: Connection, *, pair: str | None = None, type: str | None = None, unresolved: bool = False,
                   run_id: int | None = None, limit: int = 200) -> list[dict[str, Any]]:
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    for column, value in (("pair", pair), ("type", type)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if run_id is not None:
        where.append("(run_id = %s OR last_run_id = %s)")
        params += [run_id, run_id]
    if unresolved:
        where.append("status = 'unresolved'")
    rows = conn.execute(f"SELECT {_CONFLICT_COLUMNS} FROM conflicts WHERE {' AND '.join(where)} ORDER BY id"
                        " LIMIT %s", (*params, limit)).fetchall()
    return [dict(r) for r in rows]


def conflict_stats(conn: Connection, run_id: int) -> dict[str, Any]:
    rows = conn.execute("SELECT type, status, count(*) AS n FROM conflicts WHERE run_id = %s OR last_run_id = %s"
                        " GROUP BY type, status", (run_id, run_id)).fetchall()
    by_type: dict[str, int] = {}
    total = unresolved = 0
    for r in rows:
        n = int(r["n"])  # type: ignore[call-overload]
        total += n
        by_type[str(r["type"])] = by_type.get(str(r["type"]), 0) + n
        if r["status"] == "unresolved":
            unresolved += n
    return {"total": total, "unresolved": unresolved, "by_type": by_type}


def resolve_conflict(conn: Connection, conflict_id: int, resolution: Mapping[str, Any]) -> dict[str, Any]:
    conn.execute("UPDATE conflicts SET status = 'resolved', resolution = %s, resolved_at = now() WHERE id = %s",
                 (Jsonb(logs.scrub_json(dict(resolution))), conflict_id))
    found = get_conflict(conn, conflict_id)
    assert found is not None
    return found
