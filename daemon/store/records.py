"""Records and cursors: one page of data and its checkpoint commit together.

``commit_pages`` is the heart of "nothing lost, nothing duplicated": the
records, tombstones, the entity's cursor, failed items and the job's progress
are written in the caller's single transaction (see Store.call), so after a
crash the cursor never points past data that is not stored, nor behind data
that is (the upsert makes any replayed page a no-op).

The write path is set-based: ``encode_pages`` (off the trio thread) packs
each segment's ids, payloads and hashes as three binary arrays; ``write_pages``
runs one upsert per segment over them (``unnest``).  Being plain parameters,
not a COPY, they let the whole batch's transaction be pipelined (`pipelined`):
two round trips to the server, whatever it holds.  Unchanged records are not rewritten:
the upsert compares a content hash in SQL.  With change events on it returns
each created or changed row (its outbox row is written in the same
transaction); with them off, only counts.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types.json import Jsonb

from freshd.store import jobs, outbox
from freshd.store.db import Connection, Cursor, pipelined
from freshd.store.deletions import Reconciliation, reconcile

# A segment's rows reach the database as three binary arrays (see `encode_pages`), passed as they
# are: no per-row parameters, no staging table, nothing that keeps the transaction from a pipeline.


class PackedArray(bytes):
    """A one-dimensional PostgreSQL array in its binary wire format, built off the trio thread."""

    ELEMENT_OID = 0


class TextArray(PackedArray):
    ELEMENT_OID = 25  # text


class JsonbArray(PackedArray):
    ELEMENT_OID = 3802  # jsonb


class ByteaArray(PackedArray):
    ELEMENT_OID = 17  # bytea


def _dumper(array: type[PackedArray], array_oid: int) -> type[Dumper]:
    class PackedDumper(Dumper):
        format = Format.BINARY
        oid = array_oid

        def dump(self, obj: Any) -> bytes:
            return bytes(obj) if not isinstance(obj, bytes) else obj

    PackedDumper.__name__ = f"{array.__name__}Dumper"
    return PackedDumper


for _array, _oid in ((TextArray, 1009), (JsonbArray, 3807), (ByteaArray, 1001)):
    psycopg.adapters.register_dumper(_array, _dumper(_array, _oid))

UPSERT_ROWS = 100  # rows one upsert statement carries (see Segment.chunks)
_ARRAY_HEADER = struct.Struct("!iiIii")  # ndim, has-null flag, element type; then the one dimension, lower bound
_LEN = struct.Struct("!i")
_JSONB = b"\x01"  # jsonb's binary format: a version byte, then the text


A = TypeVar("A", bound=PackedArray)


def pack(array: type[A], items: Sequence[bytes]) -> A:
    """`items` as a binary array of `array`'s element type (no nulls)."""
    length = _LEN.pack
    return array(b"".join([_ARRAY_HEADER.pack(1, 0, array.ELEMENT_OID, len(items), 1),
                           *(length(len(item)) + item for item in items)]))


# Unchanged rows are skipped in SQL (content hash compare): not rewritten, same version and changed_at.
# A full listing (touch) still refreshes last_seen_at, which reconciliation reads.
_UPSERT = """
WITH up AS (
    INSERT INTO records AS r (connection_id, entity, external_id, payload, content_hash)
    SELECT %(cid)s, %(entity)s, t.eid, t.payload, t.h
    FROM unnest(%(eids)s::text[], %(payloads)s::jsonb[], %(hashes)s::bytea[]) AS t (eid, payload, h)
    ON CONFLICT (connection_id, entity, external_id) DO UPDATE
        SET payload = excluded.payload,
            content_hash = excluded.content_hash,
            last_seen_at = now(),
            deleted_at = NULL,
            version = CASE WHEN r.content_hash <> excluded.content_hash OR r.deleted_at IS NOT NULL
                           THEN r.version + 1 ELSE r.version END,
            changed_at = CASE WHEN r.content_hash <> excluded.content_hash OR r.deleted_at IS NOT NULL
                              THEN now() ELSE r.changed_at END
        WHERE r.content_hash <> excluded.content_hash OR r.deleted_at IS NOT NULL OR %(touch)s
    RETURNING r.external_id, r.version, (xmax = 0) AS inserted, r.changed_at = now() AS changed
)
"""
# events off: counts only; events on: each created or changed row, for its outbox row
_UPSERT_COUNTS = _UPSERT + ("SELECT count(*) FILTER (WHERE inserted) AS inserted,"
                            " count(*) FILTER (WHERE changed AND NOT inserted) AS updated FROM up")
_UPSERT_CHANGES = _UPSERT + "SELECT external_id, version, inserted FROM up WHERE changed"



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
    # change events (freshd.store.outbox): "full" or "thin" writes one outbox row per change
    events: str | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    inserted: int
    updated: int
    unchanged: int
    deleted: int
    entity: str = ""


@dataclass(frozen=True, slots=True)
class Segment:
    """Consecutive pages written by one upsert: same `touch`, deletions only after the last one."""

    touch: bool
    received: int  # records the pages carried (duplicates included)
    rows: int  # distinct ids staged (the last version of an id wins)
    deleted: Sequence[str]
    # the staged rows, as the array parameters of its upserts (ids, payloads, hashes), UPSERT_ROWS
    # at most each: a statement's parameters are copied whole into the connection's send buffer
    chunks: Sequence[tuple[TextArray, JsonbArray, ByteaArray]]


@dataclass(frozen=True, slots=True)
class EncodedPages:
    """Pages of one entity, ready for the database: built off the trio thread (`encode_pages`)."""

    connection_id: int
    entity: str
    segments: Sequence[Segment]
    checkpoint: dict[str, Any] | None  # the last page's that has one: the cursor after these pages
    events: str | None = None


def encode_pages(pages: Sequence[PageWrite]) -> EncodedPages:
    """Pages of one entity as array parameters, split into segments so that writing each segment's
    records then its deletions, in order, does what writing the pages one by one would do."""
    assert pages, "nothing to encode"
    segments: list[Segment] = []
    staged: dict[str, EncodedRecord] = {}
    received = 0
    touch = pages[0].touch_seen
    checkpoint = None

    def close(deleted: Sequence[str]) -> None:
        nonlocal staged, received
        rows = list(staged.values())
        chunks = [rows[i:i + UPSERT_ROWS] for i in range(0, len(rows), UPSERT_ROWS)]
        segments.append(Segment(touch, received, len(staged), deleted, [
            (pack(TextArray, [r.external_id.encode() for r in chunk]),
             pack(JsonbArray, [_JSONB + r.payload_json.encode() for r in chunk]),
             pack(ByteaArray, [r.content_hash for r in chunk])) for chunk in chunks]))
        staged, received = {}, 0

    for page in pages:
        if page.touch_seen != touch and (staged or received):
            close(())
        touch = page.touch_seen
        for record in page.records:
            staged.pop(record.external_id, None)  # re-inserted: the last version of an id, in page order
            staged[record.external_id] = record
        received += len(page.records)
        if page.deleted:
            close(page.deleted)
        if page.checkpoint is not None:
            checkpoint = page.checkpoint
    if staged or received or not segments:
        close(())
    return EncodedPages(pages[0].connection_id, pages[0].entity, segments, checkpoint, pages[0].events)


def write_pages(conn: Connection, batch: EncodedPages) -> list[WriteResult]:
    """Per segment one upsert (skipping unchanged rows in SQL) and its tombstones, then the cursor:
    a WriteResult per segment.  In the caller's transaction.

    With change events off nothing is read back before the cursor is saved, so in a pipeline
    (`pipelined`) every statement goes out together; with them on, each segment's changed rows
    are read as it is written (its outbox rows must precede the next segment's)."""
    written: list[tuple[Segment, list[Cursor], int, int, int]] = []  # counts known now (events on)
    for segment in batch.segments:
        upserts: list[Cursor] = []
        inserted = updated = 0
        for eids, payloads, hashes in segment.chunks:
            params = {"cid": batch.connection_id, "entity": batch.entity, "touch": segment.touch,
                      "eids": eids, "payloads": payloads, "hashes": hashes}
            if batch.events:
                rows = conn.execute(_UPSERT_CHANGES, params).fetchall()
                changed = [(str(row["external_id"]), bool(row["inserted"]), int(str(row["version"])))
                           for row in rows]
                outbox.record_changes(conn, batch.connection_id, batch.entity, changed)
                created = sum(1 for c in changed if c[1])
                inserted, updated = inserted + created, updated + len(changed) - created
            else:
                upserts.append(conn.execute(_UPSERT_COUNTS, params))  # read below: queued in a pipeline
        deleted = len(tombstone(conn, batch.connection_id, batch.entity, segment.deleted, events=batch.events)) \
            if segment.deleted else 0
        written.append((segment, upserts, inserted, updated, deleted))
    if batch.checkpoint is not None:
        save_cursor(conn, batch.connection_id, batch.entity, batch.checkpoint)
    results = []
    for segment, upserts, known_inserted, known_updated, deleted in written:
        inserted, updated = known_inserted, known_updated
        for upsert in upserts:
            row = upsert.fetchone()
            assert row is not None
            inserted, updated = inserted + int(str(row["inserted"])), updated + int(str(row["updated"]))
        results.append(WriteResult(inserted, updated, segment.received - inserted - updated, deleted, batch.entity))
    return results


def write_page(conn: Connection, page: PageWrite) -> WriteResult:
    """One page: records, tombstones and cursor (write_pages of one page)."""
    (result,) = write_pages(conn, encode_pages([page]))
    return result


@dataclass(frozen=True, slots=True)
class Check:
    """One reconciliation a commit runs after its pages: `reconcile`'s evidence arguments."""

    entity: str
    evidence: dict[str, Any]


@pipelined
def commit_pages(
    conn: Connection,
    batch: EncodedPages,
    *,
    job_id: int,
    failures: Sequence[tuple[str, str | None, str]] = (),
    checks: Sequence[Check] = (),
    max_share: float,
    confirmed: bool,
    progress: Callable[[list[WriteResult], list[Reconciliation]], dict[str, Any]],
) -> tuple[list[WriteResult], list[Reconciliation]]:
    """The sync engine's one transaction per batch of pages: records, tombstones and the cursor
    (`write_pages`), the reconciliations the pages completed, the items that could not be stored,
    and the job's progress (`progress(results, reconciliations)`: what it saves counts this batch).
    Committed together or not at all: after a crash the cursor never points past a record not stored."""
    results = write_pages(conn, batch)
    done = [reconcile(conn, batch.connection_id, check.entity, **check.evidence, max_share=max_share,
                      confirmed=confirmed, job_id=job_id, events=batch.events) for check in checks]
    jobs.commit_failures(conn, job_id, failures)
    jobs.save_progress(conn, job_id, progress(results, done))
    return results, done


def tombstone(conn: Connection, connection_id: int, entity: str, external_ids: Sequence[str], *,
              events: str | None = None) -> list[str]:
    """Mark these live records deleted (a new version each), with their events: the ids marked."""
    rows = conn.execute(
        "UPDATE records SET deleted_at = now(), version = version + 1, changed_at = now()"
        " WHERE connection_id = %s AND entity = %s AND external_id = ANY(%s) AND deleted_at IS NULL"
        " RETURNING external_id, version",
        (connection_id, entity, list(external_ids)),
    ).fetchall()
    gone = [(str(row["external_id"]), int(str(row["version"]))) for row in rows]
    if events and gone:
        outbox.record_deletions(conn, connection_id, entity, gone)
    return [eid for eid, _ in gone]


def classify_page(conn: Connection, page: PageWrite) -> WriteResult:
    """A dry run's write_page: what it would insert, update and delete, writing nothing."""
    unique = {r.external_id: r for r in page.records}
    inserted = updated = deleted = 0
    if unique:
        rows = conn.execute(
            "SELECT external_id, content_hash, deleted_at IS NOT NULL AS gone FROM records"
            " WHERE connection_id = %s AND entity = %s AND external_id = ANY(%s)",
            (page.connection_id, page.entity, list(unique)),
        ).fetchall()
        stored = {str(row["external_id"]): (bytes(row["content_hash"]), bool(row["gone"])) for row in rows}  # type: ignore[call-overload]
        for eid, record in unique.items():
            if eid not in stored:
                inserted += 1
            elif stored[eid][1] or stored[eid][0] != record.content_hash:
                updated += 1
    if page.deleted:
        row = conn.execute(
            "SELECT count(*) AS n FROM records WHERE connection_id = %s AND entity = %s"
            " AND external_id = ANY(%s) AND deleted_at IS NULL",
            (page.connection_id, page.entity, list(page.deleted)),
        ).fetchone()
        deleted = int(row["n"]) if row else 0  # type: ignore[call-overload]
    return WriteResult(inserted, updated, len(page.records) - inserted - updated, deleted, page.entity)


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


def estimate_total(conn: Connection, connection_id: int, entity: str, *, full: bool) -> int | None:
    """A guess at an entity's size for a run whose provider gives no count: a full listing returns about
    the live records stored; an incremental one about what the last completed incremental one processed
    (or, before there was one, the last completed run of any kind: an overestimate, marked as a guess)."""
    if full:
        row = conn.execute("SELECT count(*) AS n FROM records WHERE connection_id = %s AND entity = %s"
                           " AND deleted_at IS NULL", (connection_id, entity)).fetchone()
    else:
        row = conn.execute(
            "SELECT (progress -> %s ->> 'processed')::bigint AS n FROM sync_jobs WHERE connection_id = %s"
            " AND status IN ('completed', 'partial') AND progress ? %s"
            " AND NOT COALESCE((options ->> 'dry_run')::boolean, false)"
            " ORDER BY kind = 'incremental' DESC, id DESC LIMIT 1",
            (entity, connection_id, entity)).fetchone()
    return int(row["n"]) if row and row["n"] else None  # type: ignore[call-overload]


def known_versions(conn: Connection, connection_id: int, entity: str, field: str) -> dict[str, str]:
    """external_id -> the stored value of `field` for live records (for client-side diffing)."""
    rows = conn.execute(
        "SELECT external_id, payload ->> %s AS version FROM records"
        " WHERE connection_id = %s AND entity = %s AND deleted_at IS NULL",
        (field, connection_id, entity),
    ).fetchall()
    return {str(row["external_id"]): str(row["version"]) for row in rows}


def count_by_entity(conn: Connection, connection_ids: Sequence[int] | None = None) -> dict[int, dict[str, int]]:
    """Live record counts per connection and entity (health, ensure)."""
    rows = conn.execute(
        "SELECT connection_id, entity, count(*) AS n FROM records WHERE deleted_at IS NULL"
        " AND (%s::bigint[] IS NULL OR connection_id = ANY(%s::bigint[])) GROUP BY connection_id, entity",
        (None if connection_ids is None else list(connection_ids),) * 2,
    ).fetchall()
    out: dict[int, dict[str, int]] = {}
    for row in rows:
        out.setdefault(int(row["connection_id"]), {})[str(row["entity"])] = int(row["n"])  # type: ignore[call-overload]
    return out


def count_records(conn: Connection) -> dict[int, int]:
    """Live record count per connection (status)."""
    rows = conn.execute(
        "SELECT connection_id, count(*) AS n FROM records WHERE deleted_at IS NULL GROUP BY connection_id"
    ).fetchall()
    return {int(row["connection_id"]): int(row["n"]) for row in rows}  # type: ignore[call-overload]
