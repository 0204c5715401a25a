"""Deletions inferred from a listing, checked first: a complete listing's unseen rows, or the ids a
connector found missing, are marked deleted only when the listing accounts for the provider's own
total, and held for confirmation (`held_deletions`) when they would delete more than a share of the
live records.  Runs inside the batch's transaction (records.commit_pages); a dry run counts only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from freshd.store import outbox
from freshd.store.db import Connection

# a handful of deletions is never held, whatever share of a small entity it is
MIN_HELD_DELETIONS = 10


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What one reconciliation found and did: deletions inferred from a listing, checked first."""

    entity: str
    seen: int  # distinct live records the listing touched (or the connector counted)
    expected: int | None  # the provider's own total for the listing, when it gave one
    gone: int  # records the evidence says are gone
    live: int  # live records before
    outcome: str  # "applied" | "held" (share over the limit, unconfirmed) | "incomplete" (evidence short)

    @property
    def share(self) -> float:
        return self.gone / self.live if self.live else 0.0


def reconcile(
    conn: Connection,
    connection_id: int,
    entity: str,
    *,
    seen_since: Any = None,
    gone_ids: Sequence[str] = (),
    seen: int | None = None,
    expected: int | None = None,
    unstored: int = 0,
    max_share: float,
    confirmed: bool,
    job_id: int | None,
    events: str | None = None,
) -> Reconciliation:
    """Mark records deleted that a *complete* listing did not return, if the evidence holds.

    Either `seen_since` (a full listing touched every row it returned since then: the unseen
    ones are gone) or `gone_ids` (the connector diffed a listing of `seen` ids itself).  The
    listing must account for the provider's own total (`expected`: rows seen, plus the
    `unstored` items it returned that could not be stored), or nothing is inferred.  A
    reconciliation deleting more than `max_share` of the live records is held for
    confirmation (`held_deletions`) unless `confirmed` (or it deletes MIN_HELD_DELETIONS or fewer).
    """
    if seen_since is not None:
        row = conn.execute(
            # seen: every row the listing touched, including those it just tombstoned (trash)
            "SELECT count(*) FILTER (WHERE deleted_at IS NULL AND last_seen_at < %s) AS gone,"
            " count(*) FILTER (WHERE last_seen_at >= %s) AS seen, count(*) FILTER (WHERE deleted_at IS NULL) AS live"
            " FROM records WHERE connection_id = %s AND entity = %s",
            (seen_since, seen_since, connection_id, entity),
        ).fetchone()
        assert row is not None
        gone, live, seen = int(row["gone"]), int(row["live"]), int(row["seen"])  # type: ignore[call-overload]
        where, param = "last_seen_at < %s", seen_since
    else:
        gone, live = _gone_and_live(conn, connection_id, entity, gone_ids)
        where, param = "external_id = ANY(%s)", list(gone_ids)
    seen = seen or 0
    result = Reconciliation(entity, seen, expected, gone, live, "applied")
    if _short(seen, unstored, expected):
        return Reconciliation(entity, seen, expected, gone, live, "incomplete")
    if gone > MIN_HELD_DELETIONS and live and gone / live > max_share and not confirmed:
        conn.execute(
            "INSERT INTO held_deletions (connection_id, entity, job_id, count, live) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (connection_id, entity) DO UPDATE SET job_id = excluded.job_id, count = excluded.count,"
            " live = excluded.live, held_at = now()",
            (connection_id, entity, job_id, gone, live),
        )
        return Reconciliation(entity, seen, expected, gone, live, "held")
    if gone:
        rows = conn.execute(
            f"UPDATE records SET deleted_at = now(), version = version + 1, changed_at = now()"
            f" WHERE connection_id = %s AND entity = %s AND deleted_at IS NULL AND {where}"
            f" RETURNING external_id, version",
            (connection_id, entity, param),
        ).fetchall()
        if events:
            outbox.record_deletions(conn, connection_id, entity,
                                    [(str(row["external_id"]), int(str(row["version"]))) for row in rows])
    conn.execute("DELETE FROM held_deletions WHERE connection_id = %s AND entity = %s", (connection_id, entity))
    return result


def _gone_and_live(conn: Connection, connection_id: int, entity: str, gone_ids: Sequence[str]) -> tuple[int, int]:
    """How many of `gone_ids` are live records, and how many live records there are."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE external_id = ANY(%s)) AS gone, count(*) AS live"
        " FROM records WHERE connection_id = %s AND entity = %s AND deleted_at IS NULL",
        (list(gone_ids), connection_id, entity),
    ).fetchone()
    assert row is not None
    return int(row["gone"]), int(row["live"])  # type: ignore[call-overload]


def _short(seen: int, unstored: int, expected: int | None) -> bool:
    """The evidence rule: a listing that does not account for the provider's own total proves nothing."""
    return expected is not None and seen + unstored < expected


def count_reconcile(
    conn: Connection,
    connection_id: int,
    entity: str,
    *,
    seen_ids: Sequence[str] | None = None,
    gone_ids: Sequence[str] = (),
    seen: int | None = None,
    expected: int | None = None,
    unstored: int = 0,
) -> Reconciliation:
    """A dry run's reconcile: how many live records a complete listing (`seen_ids`, or a connector's
    own `gone_ids`) would mark deleted, on the same evidence rule; nothing is written."""
    if seen_ids is not None:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE NOT (external_id = ANY(%s))) AS gone, count(*) AS live"
            " FROM records WHERE connection_id = %s AND entity = %s AND deleted_at IS NULL",
            (list(seen_ids), connection_id, entity),
        ).fetchone()
        assert row is not None
        gone, live, seen = int(row["gone"]), int(row["live"]), len(seen_ids)  # type: ignore[call-overload]
    else:
        gone, live = _gone_and_live(conn, connection_id, entity, gone_ids)
    seen = seen or 0
    if _short(seen, unstored, expected):
        return Reconciliation(entity, seen, expected, gone, live, "incomplete")
    return Reconciliation(entity, seen, expected, gone, live, "applied")
