"""Records and cursors: one page of data and its checkpoint commit together.

``write_page`` is the heart of "nothing lost, nothing duplicated": the
records, tombstones, the entity's cursor and the job's progress are written in
the caller's single transaction (see Store.call), so after a crash the cursor
never points past data that is not stored, nor behind data that is (the
upsert makes any replayed page a no-op).

Unchanged records are not rewritten: the upsert compares a content hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from freshd.store.db import Connection

_UPSERT = """
INSERT INTO records AS r (connection_id, entity, external_id, payload, content_hash)
SELECT %(cid)s, %(entity)s, t.eid, t.payload::jsonb, t.h
FROM unnest(%(eids)b::text[], %(payloads)b::text[], %(hashes)b::bytea[]) AS t(eid, payload, h)
ON CONFLICT (connection_id, entity, external_id) DO UPDATE
    SET payload = excluded.payload,
        content_hash = excluded.content_hash,
        last_seen_at = now(),
        deleted_at = NULL
    WHERE r.content_hash <> excluded.content_hash OR r.deleted_at IS NOT NULL OR %(touch)s
RETURNING (xmax = 0) AS inserted
"""


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """A record ready for the database: its id, canonical JSON text and content hash."""

    external_id: str
    payload_json: str
    content_hash: bytes


@dataclass(frozen=True, slots=True)
class PageWrite:
    """Everything one transaction writes for one page of one entity."""

    connection_id: int
    entity: str
    records: Sequence[EncodedRecord]
    deleted: Sequence[str]
    checkpoint: dict[str, Any] | None
    # a full listing touches every row it sees, so reconciliation can find the missing ones
    touch_seen: bool = False


@dataclass(frozen=True, slots=True)
class WriteResult:
    inserted: int
    updated: int
    unchanged: int
    deleted: int


def write_page(conn: Connection, page: PageWrite) -> WriteResult:
    inserted = updated = deleted = 0
    if page.records:
        # ON CONFLICT cannot touch one row twice in a statement: the last version of an id wins.
        unique = {r.external_id: r for r in page.records}
        rows = conn.execute(
            _UPSERT,
            {
                "cid": page.connection_id,
                "entity": page.entity,
                "eids": list(unique),
                "payloads": [r.payload_json for r in unique.values()],
                "hashes": [r.content_hash for r in unique.values()],
                "touch": page.touch_seen,
            },
        ).fetchall()
        inserted = sum(1 for row in rows if row["inserted"])
        updated = len(rows) - inserted
    if page.deleted:
        deleted = conn.execute(
            "UPDATE records SET deleted_at = now() WHERE connection_id = %s AND entity = %s"
            " AND external_id = ANY(%s) AND deleted_at IS NULL",
            (page.connection_id, page.entity, list(page.deleted)),
        ).rowcount
    if page.checkpoint is not None:
        save_cursor(conn, page.connection_id, page.entity, page.checkpoint)
    unchanged = len(page.records) - inserted - updated
    return WriteResult(inserted, updated, unchanged, deleted)


def save_cursor(conn: Connection, connection_id: int, entity: str, state: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO cursors (connection_id, entity, state) VALUES (%s, %s, %s)"
        " ON CONFLICT (connection_id, entity) DO UPDATE SET state = excluded.state, updated_at = now()",
        (connection_id, entity, Jsonb(state)),
    )


def load_cursors(conn: Connection, connection_id: int) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        "SELECT entity, state FROM cursors WHERE connection_id = %s", (connection_id,)
    ).fetchall()
    return {str(row["entity"]): row["state"] for row in rows}  # type: ignore[misc]


def database_now(conn: Connection) -> Any:
    return conn.execute("SELECT now() AS now").fetchone()["now"]  # type: ignore[index]


def mark_unseen_deleted(conn: Connection, connection_id: int, entity: str, seen_since: Any) -> int:
    """After a *complete* listing: records it did not touch are gone at the provider."""
    return conn.execute(
        "UPDATE records SET deleted_at = now() WHERE connection_id = %s AND entity = %s"
        " AND deleted_at IS NULL AND last_seen_at < %s",
        (connection_id, entity, seen_since),
    ).rowcount


def known_versions(conn: Connection, connection_id: int, entity: str, field: str) -> dict[str, str]:
    """external_id -> the stored value of `field` for live records (for client-side diffing)."""
    rows = conn.execute(
        "SELECT external_id, payload ->> %s AS version FROM records"
        " WHERE connection_id = %s AND entity = %s AND deleted_at IS NULL",
        (field, connection_id, entity),
    ).fetchall()
    return {str(row["external_id"]): str(row["version"]) for row in rows}


def count_records(conn: Connection) -> dict[int, int]:
    """Live record count per connection (status)."""
    rows = conn.execute(
        "SELECT connection_id, count(*) AS n FROM records WHERE deleted_at IS NULL GROUP BY connection_id"
    ).fetchall()
    return {int(row["connection_id"]): int(row["n"]) for row in rows}  # type: ignore[call-overload]
