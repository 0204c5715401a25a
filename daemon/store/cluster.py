"""Members, leases, cluster-wide sync slots and forwarded commands: the SQL of scale-out.

Every lease statement is one conditional statement scoped by owner AND epoch, so a member
that lost a lease (expired, taken over) can neither renew it nor write under it.  Times are
the database's (`now()`), never a member's clock.  No session-level advisory lock is used:
those vanish silently with their backend and break behind PgBouncer in transaction mode.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from freshd.store.db import Connection, Fence, check_fence

# serializes slot claims (a transaction-level advisory lock: released at commit, never orphaned)
_SLOT_LOCK = 0x66726573  # "fres"


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    name: str
    host: str
    pid: int
    version: str
    started_at: datetime
    heartbeat_at: datetime
    alive: bool
    age: float  # seconds since it started, on the database clock


def lock_fences(conn: Connection, fences: list[Fence]) -> set[int]:
    """The connections of `fences` whose lease is still as fenced (locked FOR SHARE until commit):
    a batch write (the sweeps' job queueing) touches only those."""
    if not fences:
        return set()
    rows = conn.execute(
        "SELECT l.connection_id FROM leases l JOIN unnest(%s::bigint[], %s::text[], %s::bigint[])"
        " AS f(cid, owner, epoch) ON l.connection_id = f.cid AND l.owner = f.owner AND l.epoch = f.epoch"
        " FOR SHARE OF l",
        ([f.connection_id for f in fences], [f.member for f in fences], [f.epoch for f in fences]),
    ).fetchall()
    return {int(str(r["connection_id"])) for r in rows}


# -- members ------------------------------------------------------------------------------------------


def register(conn: Connection, member_id: str, *, name: str, host: str, pid: int, version: str,
             ttl: float, predecessor_dead: Any) -> list[str]:
    """Join; a member of the same name that is alive on another process is a misconfiguration.

    `predecessor_dead(host, pid)` says whether an earlier incarnation of this name is certainly
    gone (same host, its pid no longer runs): its leases are then released at once rather than
    waited out, so a restarted daemon resumes its connections without the lease time.
    """
    released: list[str] = []
    rows = conn.execute(
        "SELECT id, host, pid, heartbeat_at > now() - %s AS fresh FROM members"
        " WHERE name = %s AND stopped_at IS NULL FOR UPDATE",
        (timedelta(seconds=ttl), name),
    ).fetchall()
    for row in rows:
        if predecessor_dead(str(row["host"]), int(row["pid"])):  # type: ignore[call-overload]
            leave(conn, str(row["id"]))
            released.append(str(row["id"]))
        elif row["fresh"]:
            raise RuntimeError(f"another daemon with member name {name!r} is alive (pid {row['pid']} on "
                               f"{row['host']}): give each daemon its own [cluster] member_name")
    conn.execute(
        "INSERT INTO members (id, name, host, pid, version) VALUES (%s, %s, %s, %s, %s)",
        (member_id, name, host, pid, version),
    )
    return released


def heartbeat(conn: Connection, member_id: str) -> bool:
    """False when this member was declared gone (a clean leave of its row, or removed)."""
    return conn.execute(
        "UPDATE members SET heartbeat_at = now() WHERE id = %s AND stopped_at IS NULL", (member_id,)
    ).rowcount == 1


def leave(conn: Connection, member_id: str) -> int:
    """A clean leave: the member's leases are free at once (epochs kept: the next owner bumps them)."""
    conn.execute("UPDATE members SET stopped_at = now() WHERE id = %s", (member_id,))
    conn.execute("DELETE FROM sync_slots WHERE member = %s", (member_id,))
    return conn.execute(
        "UPDATE leases SET owner = NULL, expires_at = now() WHERE owner = %s", (member_id,)
    ).rowcount


def members(conn: Connection, ttl: float) -> list[Member]:
    rows = conn.execute(
        "SELECT id, name, host, pid, version, started_at, heartbeat_at,"
        " stopped_at IS NULL AND heartbeat_at > now() - %s AS alive,"
        " extract(epoch FROM now() - started_at)::float8 AS age"
        " FROM members WHERE stopped_at IS NULL OR stopped_at > now() - interval '1 hour'"
        " ORDER BY started_at, id",
        (timedelta(seconds=ttl),),
    ).fetchall()
    return [Member(**row) for row in rows]  # type: ignore[arg-type]


def prune_members(conn: Connection, older_than: timedelta) -> int:
    return conn.execute(
        "DELETE FROM members WHERE coalesce(stopped_at, heartbeat_at) < now() - %s", (older_than,)
    ).rowcount


# -- leases -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseRound:
    renewed: dict[int, int]  # connection id -> epoch, still ours
    lost: list[int]  # held until now, no longer ours
    acquired: dict[int, int]  # newly ours: connection id -> epoch
    took_over: dict[int, float]  # acquired from an expired owner: seconds it had been expired


def lease_round(
    conn: Connection,
    member_id: str,
    *,
    ttl: float,
    held: Mapping[int, int],
    wanted: Collection[int],
    release: Collection[int],
) -> LeaseRound:
    """One upkeep round, one transaction: renew what is held, give back what another member
    should now run, take what is wanted and free (or expired)."""
    lease = timedelta(seconds=ttl)
    renewed: dict[int, int] = {}
    keep = {cid: epoch for cid, epoch in held.items() if cid not in release}
    if keep:
        rows = conn.execute(
            "UPDATE leases AS l SET expires_at = now() + %s"
            " FROM unnest(%s::bigint[], %s::bigint[]) AS h(cid, epoch)"
            " WHERE l.connection_id = h.cid AND l.owner = %s AND l.epoch = h.epoch"
            " RETURNING l.connection_id, l.epoch",
            (lease, list(keep), list(keep.values()), member_id),
        ).fetchall()
        renewed = {int(r["connection_id"]): int(r["epoch"]) for r in rows}  # type: ignore[call-overload]
    if release:
        conn.execute(
            "UPDATE leases SET owner = NULL, expires_at = now() WHERE connection_id = ANY(%s) AND owner = %s",
            (list(release), member_id),
        )
    lost = [cid for cid in keep if cid not in renewed]
    acquired: dict[int, int] = {}
    took_over: dict[int, float] = {}
    want = [cid for cid in wanted if cid not in renewed]
    if want:
        conn.execute(
            "INSERT INTO leases (connection_id) SELECT unnest(%s::bigint[])"
            " ON CONFLICT (connection_id) DO NOTHING", (want,),
        )
        rows = conn.execute(
            "UPDATE leases AS l SET owner = %s, epoch = l.epoch + 1, expires_at = now() + %s, acquired_at = now()"
            " FROM (SELECT connection_id, owner AS previous, extract(epoch FROM now() - expires_at)::float8 AS late"
            # SKIP LOCKED: a lease still share-locked by a write in flight (or by a stopped member's
            # open transaction, until the server ends it) is taken in a later round; the others now
            "       FROM leases WHERE connection_id = ANY(%s) AND (owner IS NULL OR expires_at < now())"
            "       FOR UPDATE SKIP LOCKED) AS free"
            " WHERE l.connection_id = free.connection_id"
            " RETURNING l.connection_id, l.epoch, free.previous, free.late",
            (member_id, lease, want),
        ).fetchall()
        for r in rows:
            cid = int(str(r["connection_id"]))
            acquired[cid] = int(str(r["epoch"]))
            if r["previous"] is not None:
                took_over[cid] = float(str(r["late"]))
    return LeaseRound(renewed, lost, acquired, took_over)


def owners(conn: Connection) -> dict[int, str | None]:
    """connection id -> the member holding a live lease on it (None: unowned right now)."""
    rows = conn.execute(
        "SELECT connection_id, CASE WHEN expires_at > now() THEN owner END AS owner FROM leases"
    ).fetchall()
    return {int(str(r["connection_id"])): None if r["owner"] is None else str(r["owner"]) for r in rows}


def unowned_for(conn: Connection, seconds: float, parked: Collection[str] = ()) -> int:
    """Connections (but the `parked` names, which run nowhere) whose lease has been free this long."""
    row = conn.execute(
        "SELECT count(*) AS n FROM connections c LEFT JOIN leases l ON l.connection_id = c.id"
        " WHERE coalesce(l.expires_at, c.created_at) < now() - %s AND (l.owner IS NULL OR l.expires_at < now())"
        " AND c.name <> ALL(%s)",
        (timedelta(seconds=seconds), list(parked)),
    ).fetchone()
    return 0 if row is None else int(str(row["n"]))


# -- cluster-wide sync slots --------------------------------------------------------------------------


def claim_slot(conn: Connection, fence: Fence, tenant: str, *, max_running: int, tenant_max_running: int,
               ttl: float) -> bool:
    """Take a running-sync slot if the cluster is under both caps. Serialized by a transaction-level
    advisory lock, so the caps hold exactly; slots of members that stopped heart-beating no longer
    count (their connections' jobs are being taken over)."""
    check_fence(conn, fence)
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SLOT_LOCK,))
    row = conn.execute(
        # a slot counts while its member is alive and still holds that connection's lease
        "SELECT count(*) AS total, count(*) FILTER (WHERE s.tenant = %s) AS tenant FROM sync_slots s"
        " JOIN members m ON m.id = s.member"
        " JOIN leases l ON l.connection_id = s.connection_id AND l.owner = s.member AND l.expires_at > now()"
        " WHERE m.stopped_at IS NULL AND m.heartbeat_at > now() - %s AND s.connection_id <> %s",
        (tenant, timedelta(seconds=ttl), fence.connection_id),
    ).fetchone()
    assert row is not None
    if int(row["total"]) >= max_running or int(row["tenant"]) >= tenant_max_running:  # type: ignore[call-overload]
        return False
    conn.execute(
        "INSERT INTO sync_slots (connection_id, member, tenant) VALUES (%s, %s, %s)"
        " ON CONFLICT (connection_id) DO UPDATE SET member = excluded.member, tenant = excluded.tenant,"
        " claimed_at = now()",
        (fence.connection_id, fence.member, tenant),
    )
    return True


def release_slot(conn: Connection, connection_id: int, member_id: str) -> None:
    conn.execute("DELETE FROM sync_slots WHERE connection_id = %s AND member = %s", (connection_id, member_id))


def running_slots(conn: Connection, ttl: float) -> dict[str, int]:
    rows = conn.execute(
        "SELECT s.tenant, count(*) AS n FROM sync_slots s JOIN members m ON m.id = s.member"
        " WHERE m.stopped_at IS NULL AND m.heartbeat_at > now() - %s GROUP BY s.tenant",
        (timedelta(seconds=ttl),),
    ).fetchall()
    return {str(r["tenant"]): int(r["n"]) for r in rows}  # type: ignore[call-overload]


# -- forwarded admin commands -------------------------------------------------------------------------


def post_command(conn: Connection, member: str, request: dict[str, Any]) -> int:
    row = conn.execute(
        "INSERT INTO cluster_commands (member, request) VALUES (%s, %s) RETURNING id", (member, Jsonb(request))
    ).fetchone()
    assert row is not None
    conn.execute("SELECT pg_notify('freshd_commands', %s)", (member,))
    return int(str(row["id"]))


def pending_commands(conn: Connection, member: str) -> list[tuple[int, dict[str, Any]]]:
    rows = conn.execute(
        "SELECT id, request FROM cluster_commands WHERE member = %s AND answered_at IS NULL ORDER BY id"
        " FOR UPDATE SKIP LOCKED", (member,),
    ).fetchall()
    return [(int(r["id"]), r["request"]) for r in rows]  # type: ignore[call-overload, misc]


def answer_command(conn: Connection, command_id: int, reply: dict[str, Any]) -> None:
    conn.execute("UPDATE cluster_commands SET reply = %s, answered_at = now() WHERE id = %s",
                 (Jsonb(reply), command_id))
    conn.execute("SELECT pg_notify('freshd_replies', %s)", (str(command_id),))


def command_reply(conn: Connection, command_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT reply FROM cluster_commands WHERE id = %s", (command_id,)).fetchone()
    return None if row is None else row["reply"]  # type: ignore[return-value]


def prune_commands(conn: Connection, older_than: timedelta) -> int:
    return conn.execute("DELETE FROM cluster_commands WHERE created_at < now() - %s", (older_than,)).rowcount
