"""A batch of pages on its way to the store: each record encoded as the database takes it (canonical
JSON and its hash, then the upserts' array parameters), what a full listing has shown so far (the evidence checked
before deletions are inferred), and what a committed batch changed.  Pure: the sync engine's writer
(freshd.sync) encodes on a worker thread and commits."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import trio

from freshd import metrics
from freshd.connectors.base import Page, StreamSpec
from freshd.progress import EntityProgress
from freshd.store import deletions, jobs, records

# a JSON \u0000 escape: preceded by an even number of backslashes (an odd run would be literal text)
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def encode_record(stream: StreamSpec, record: Any) -> records.EncodedRecord:
    """Canonical JSON (sorted keys) and its hash: equal content, equal hash, no rewrite."""
    if not isinstance(record, dict):
        raise ValueError(f"record is a {type(record).__name__}, not an object")
    key = record.get(stream.primary_key)
    if key is None or key == "":
        raise ValueError(f"record has no {stream.primary_key!r}")
    data = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    if b"\\u0000" in data and _NUL_ESCAPE.search(data):
        # PostgreSQL's jsonb cannot hold NUL: left in, it would fail the whole page, not just this item
        raise ValueError("record contains a NUL character (\\u0000), which PostgreSQL cannot store")
    return records.EncodedRecord(str(key), data.decode(), hashlib.blake2b(data, digest_size=16).digest())


@dataclass(frozen=True, slots=True)
class Staged:
    """A batch of pages encoded off the trio thread, waiting for its commit."""

    pages: list[Page]  # without their records (encoded already)
    committed: list[trio.Event | None]  # lockstep: set once the page is committed
    size: int  # records the pages carried
    stored: int  # records encoded (the others failed)
    writes: list[records.PageWrite]  # a dry run's only (it classifies them)
    failures: list[tuple[str, str | None, str]]
    total: int | None  # the provider's own count, if a page gave it
    encoded: records.EncodedPages | None  # None in a dry run (nothing is written)


Pages = list[tuple[Page, trio.Event | None]]  # pages, each with the event set once it is committed


def take_waiting(receive: trio.MemoryReceiveChannel[tuple[Page, trio.Event | None]], batch: Pages,
                 room: int) -> Pages:
    """`batch` and the pages waiting behind it, up to `room` records."""
    size = sum(len(page.records) for page, _ in batch)
    while size < room:
        try:
            batch.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        size += len(batch[-1][0].records)
    return batch


async def stage_batches(receive: trio.MemoryReceiveChannel[tuple[Page, trio.Event | None]],
                        send: trio.MemorySendChannel[Staged], encode: Callable[[Pages], Awaitable[Staged]], *,
                        max_records: int, merge_while_busy: bool) -> None:
    """The writer's first stage: the pages waiting, grouped into batches of up to `max_records`,
    encoded (`encode`, on the encoder's thread) and handed to the committer in order.  While the
    committer is still busy with the previous batch, the pages fetched since join this one: fewer,
    larger commits when the store sets the pace (a dry run's batches are never merged)."""
    async for first in receive:
        batch = take_waiting(receive, [first], max_records)
        del first  # the batch's pages are let go by the encoder, not here
        staged = await encode(batch)
        while merge_while_busy and staged.size < max_records:
            try:
                send.send_nowait(staged)  # the committer is free: it takes this batch now
                break
            except trio.WouldBlock:
                more = take_waiting(receive, [], max_records - staged.size)
            if not more:
                await send.send(staged)
                break
            staged = merge(staged, await encode(more))
        else:
            await send.send(staged)


def merge(first: Staged, then: Staged) -> Staged:
    """Two staged batches of one entity as one transaction: `first`'s pages, then `then`'s (segments
    in order: writing them one after the other does what two commits would)."""
    assert first.encoded is not None and then.encoded is not None, "a dry run's batches are not merged"
    checkpoint = then.encoded.checkpoint if then.encoded.checkpoint is not None else first.encoded.checkpoint
    return Staged([*first.pages, *then.pages], [*first.committed, *then.committed], first.size + then.size,
                  first.stored + then.stored, [], [*first.failures, *then.failures],
                  then.total if then.total is not None else first.total,
                  dataclasses.replace(first.encoded, segments=[*first.encoded.segments, *then.encoded.segments],
                                      checkpoint=checkpoint))


class WriterPace:
    """A sync writer's time, committing batches or waiting for pages, as
    freshd_sync_writer_seconds_total counts it: which of the store and the provider sets the pace."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.since = time.monotonic()

    def spent(self, state: str) -> None:
        """The time since the last mark went to `state` ("committing" or "waiting")."""
        now = time.monotonic()
        metrics.sync_writer_seconds_total.labels(self.provider, state).inc(now - self.since)
        self.since = now


class ListingEvidence:
    """What one entity's run has seen of a full listing, to check before deletions are inferred."""

    def __init__(self, entity: str, started: Any) -> None:
        self.entity = entity
        self.started = started
        self.unstored = 0  # items of the listing that could not be stored (still seen)
        self.seen_ids: set[str] = set()  # a dry run's full listing: the ids it returned

    def add(self, batch: list[Page], failures: list[tuple[str, str | None, str]]) -> None:
        if any(p.full_listing for p in batch):
            self.unstored += len(failures)

    def reconciliations(self, batch: list[Page], progress: EntityProgress) -> list[records.Check]:
        checks = []
        for page in batch:
            if page.listing_complete:
                # the provider's own count only: an estimate is no evidence
                expected = page.total if page.total is not None else \
                    None if progress.estimated else progress.total
                checks.append(records.Check(self.entity, {"seen_since": self.started, "expected": expected,
                                                   "unstored": self.unstored}))
            if page.inferred_deleted:
                checks.append(records.Check(self.entity, {"gone_ids": list(page.inferred_deleted),
                                                   "seen": page.listing_seen, "expected": page.listing_total}))
        return checks


def encode_batch(stream: StreamSpec, batch: list[tuple[Page, trio.Event | None]], connection_id: int, *,
                 events: str | None, dry_run: bool) -> Staged:
    """On a worker thread: the batch's records as the database takes them.  Pure: the progress
    changes only when the batch commits (_commit_staged)."""
    writes = []
    failures: list[tuple[str, str | None, str]] = []
    total = None
    for page, _ in batch:
        encoded = []
        for record in page.records:
            try:
                encoded.append(encode_record(stream, record))
            except (ValueError, TypeError) as exc:
                key = record.get(stream.primary_key) if isinstance(record, dict) else None
                failures.append((stream.name, None if key is None else str(key), str(exc)))
        for external_id, reason in page.failures:
            failures.append((stream.name, external_id, reason))
        if page.total is not None:
            total = page.total
        writes.append(records.PageWrite(
            connection_id, stream.name, encoded, page.deleted, page.checkpoint,
            touch_seen=page.full_listing, events=events,
        ))
    # what waits for the commit is the packed arrays, not the decoded records (bounded memory)
    return Staged([dataclasses.replace(page, records=()) for page, _ in batch], [event for _, event in batch],
                   sum(len(page.records) for page, _ in batch), sum(len(w.records) for w in writes),
                   writes if dry_run else [], failures, total,
                   None if dry_run else records.encode_pages(writes))


def deltas(results: list[records.WriteResult], checks: list[deletions.Reconciliation],
           entities: Mapping[str, EntityProgress]) -> dict[str, dict[str, int]]:
    """Created, changed and deleted per entity of the job (`entities`) in a committed batch."""
    out: dict[str, dict[str, int]] = {}
    for r in results:
        delta = out.setdefault(r.entity, {"created": 0, "changed": 0, "deleted": 0})
        delta["created"] += r.inserted
        delta["changed"] += r.updated
        delta["deleted"] += r.deleted
    for check in checks:
        if check.outcome == "applied" and check.entity in entities:
            out.setdefault(check.entity, {"created": 0, "changed": 0, "deleted": 0})["deleted"] += check.gone
    return {name: d for name, d in out.items() if name in entities}


def commit_dry(conn: Any, writes: list[records.PageWrite], failures: list[tuple[str, str | None, str]],
               checks: list[records.Check], evidence: ListingEvidence, *, connection_id: int, job_id: int,
               progress_after: Callable[[list[records.WriteResult], list[deletions.Reconciliation]], dict[str, Any]],
               ) -> tuple[list[records.WriteResult], list[deletions.Reconciliation]]:
    """A dry run's commit: what the pages would create, change and delete, counted against the
    store and written nowhere but the job's own row (progress, failed items)."""
    results = [records.classify_page(conn, page) for page in writes]
    for page in writes:
        evidence.seen_ids.update(r.external_id for r in page.records)
    done = []
    for check in checks:
        args = dict(check.evidence)
        if "seen_since" in args:  # nothing was touched: the ids this run saw are the evidence
            args = {"seen_ids": list(evidence.seen_ids), "expected": args.get("expected"),
                    "unstored": args.get("unstored", 0)}
        done.append(deletions.count_reconcile(conn, connection_id, check.entity, **args))
    jobs.commit_failures(conn, job_id, failures)
    jobs.save_progress(conn, job_id, progress_after(results, done))
    return results, done


def refusal(check: deletions.Reconciliation, max_delete_share: float, connection: str) -> str:
    """Why a reconciliation inferred no deletions, for the job's warnings (the job ends partial)."""
    if check.outcome == "incomplete":
        return (f"{check.entity}: listing incomplete, no deletions inferred (saw {check.seen} of "
                f"{check.expected} records the provider reported)")
    return (f"{check.entity}: held {check.gone} deletions of {check.live} records "
            f"({check.share:.0%} > {max_delete_share:.0%}); review, then apply with "
            f"`freshctl sync {connection} --full --confirm-deletes`")
