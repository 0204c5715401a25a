"""The sync engine: runs one job, entity by entity, from connector pages to committed rows.

Per entity, two tasks in one nursery:

    connector.sync_entity ──emit(page)──> [bounded channel] ──> writer ──> store (one tx per batch)

* The writer commits records, tombstones, the connector's checkpoint, failed
  items and the job's progress in ONE transaction (records.commit_pages); when
  it falls behind it groups the pages already waiting into one transaction
  (group commit).  The next batch is encoded (canonical JSON, hashes, the
  upserts' array parameters) on a worker thread while the previous one commits,
  and a batch's transaction is one pipeline: two round trips to the server.
* Pause and cancel take effect in the writer, between two commits: the cursor
  is saved, nothing half-written.  Pause blocks the writer, and the bounded
  channel then blocks the connector; cancel stops the connector.
* A store outage blocks the writer, which retries with backoff: the job waits,
  nothing is lost, and replayed pages are no-ops (idempotent upsert).
* An item that cannot be stored (no primary key) is recorded as failed and the
  job goes on.  A provider error ends that entity; the other entities still run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
import trio

from freshd import metrics
from freshd.batches import ListingEvidence, Staged, WriterPace, commit_dry, deltas, encode_batch, refusal, stage_batches
from freshd.connection_state import MAX_DELETE_SHARE
from freshd.connectors.base import Connector, Page, StreamSpec, SyncMode
from freshd.errors import ProviderError, ReauthRequired
from freshd.progress import ControlRequest, EntityProgress, JobControl, JobOutcome, JobProgress, limiter_rate
from freshd.store import Store, activity, deletions, jobs, records
from freshd.store.jobs import JobKind, JobRow, JobStatus

log = structlog.get_logger(__name__)

MAX_BATCH_RECORDS = 2000  # group commit: at most this many records per transaction
PAGES_AHEAD = 8  # pages fetched ahead of the writer (bounded memory: about 8 x 100 records)
INTERRUPT_GRACE = 1.0  # seconds a pause or cancel waits for a page boundary before interrupting
PROGRESS_LOG_EVERY = 5.0  # seconds between two job.progress log lines of one job


class _Cancelled(Exception):
    """Cancel was requested: the entity's fetches and waits were interrupted, its commits kept."""


class _Paused(Exception):
    """Pause was requested: the entity's fetches and waits were interrupted, its commits kept."""


class JobRunner:
    """Runs one job to an outcome. Owned by the connection's actor."""

    def __init__(
        self,
        store: Store,
        connector: Connector,
        connection_id: int,
        job: JobRow,
        control: JobControl,
        *,
        on_progress: Callable[[JobRow, JobProgress], None] | None = None,
        entities: list[str] | None = None,
        max_batch_records: int = MAX_BATCH_RECORDS,
        max_delete_share: float = MAX_DELETE_SHARE,
        events: str | None = None,
    ) -> None:
        self.max_batch_records = max_batch_records
        self.max_delete_share = max_delete_share
        self.events = events  # change events to the outbox: "full", "thin" or None (off)
        # what made the job partial without failing an entity (deletions not inferred, or held)
        self.warnings: list[str] = []
        self._parked = False  # the writer waits at a page boundary (paused in place)
        self.store = store
        self.connector = connector
        self.connection_id = connection_id
        self.job = job
        self.control = control
        self.on_progress = on_progress
        self.options = job.run_options
        names = entities or [s.name for s in connector.streams]
        if self.options.entities:  # `sync --entities`: only these (validated when queued)
            names = [n for n in names if n in self.options.entities]
        self.progress = JobProgress.from_json(names, job.progress)
        self.dry_run = self.options.dry_run
        # entities that committed a page of this job: a `since` applies to the others only (a
        # resumed entity goes on from its committed listing position)
        self._committed = {n for n, p in self.progress.entities.items()
                           if p.state == "running" and p.processed + p.failed + p.skipped > 0}
        self._run_started = time.monotonic()
        self._run_processed = sum(p.processed for p in self.progress.entities.values())
        self._pages = 0
        self._page_records = 0
        self._encoder = trio.CapacityLimiter(1)  # the worker thread encoding the next batch
        self.log = log.bind(job=job.id, connection=job.connection)
        self._logged_at = time.monotonic()

    async def run(self) -> JobOutcome:
        provider = self.connector.provider
        started = time.monotonic()
        self.job = await self.store.call_retrying(jobs.set_status, self.job.id, JobStatus.RUNNING)
        self.log.info("job.started", kind=self.job.kind.value)
        mode = SyncMode.INCREMENTAL if self.job.kind is JobKind.INCREMENTAL else SyncMode.FULL
        cursors = await self.store.call_retrying(records.load_cursors, self.connection_id)
        retry_ids = await self.store.call_retrying(jobs.retry_work, self.job.retry_of or 0) \
            if self.job.kind is JobKind.RETRY else None
        if retry_ids is None:  # a guess for every entity up front, so the job's ETA covers them all
            for name, progress in self.progress.entities.items():
                await self._estimate(name, progress, mode)
        errors: list[str] = []
        outcome: JobOutcome | None = None
        for name, progress in self.progress.entities.items():
            if progress.state == "done":
                continue  # a resumed job keeps what it finished before the interruption
            try:
                if retry_ids is not None:
                    await self._retry_entity(self.connector.stream(name), retry_ids.get(name, ([], 0)), progress)
                    continue
                while True:
                    try:
                        stream = self.connector.stream(name)
                        await self._sync_entity(stream, self._start_state(stream, cursors.get(name), progress),
                                                mode, progress)
                        break
                    except _Paused:
                        # the fetches in flight were dropped; resumed, the entity goes on from its
                        # committed cursor (a cancel while paused raises _Cancelled here)
                        await self._wait_while_paused()
                        cursors = await self.store.call_retrying(records.load_cursors, self.connection_id)
            except _Cancelled:
                outcome = JobOutcome(JobStatus.CANCELLED, "cancelled by request")
                break
            except ReauthRequired as exc:
                progress.state = "failed"
                outcome = JobOutcome(JobStatus.FAILED, f"{name}: {exc}", reauth_required=True)
                break
            except ProviderError as exc:
                progress.state = "failed"
                errors.append(f"{name}: {exc}")
                self.log.warning("job.entity_failed", entity=name, error=str(exc))
        if outcome is None:
            failed_entities = [n for n, p in self.progress.entities.items() if p.state == "failed"]
            items_failed = any(p.failed for p in self.progress.entities.values())
            if failed_entities and len(failed_entities) == len(self.progress.entities):
                outcome = JobOutcome(JobStatus.FAILED, "; ".join(errors))
            elif failed_entities or items_failed or self.warnings:
                summary = "; ".join([*errors, *self.warnings]) or "some items failed (see freshctl job)"
                outcome = JobOutcome(JobStatus.PARTIAL, summary)
            else:
                outcome = JobOutcome(JobStatus.COMPLETED, None)
        with trio.CancelScope(shield=True):
            await self._finish(outcome)
        metrics.sync_jobs_total.labels(provider, outcome.status.value).inc()
        metrics.sync_duration_seconds.labels(provider).observe(time.monotonic() - started)
        self.log.info("job.finished", status=outcome.status.value, error=outcome.error,
                      seconds=round(time.monotonic() - started, 3))
        return outcome

    async def _finish(self, outcome: JobOutcome) -> None:
        def finish(conn: Any) -> JobRow:
            jobs.save_progress(conn, self.job.id, self.progress.as_json())
            job = jobs.set_status(conn, self.job.id, outcome.status, error=outcome.error)
            activity.log_activity(
                conn, f"job.{outcome.status.value}", f"{job.kind.value} sync {outcome.status.value}",
                connection_id=self.connection_id, job_id=job.id,
                details={"progress": self.progress.as_json(), "error": outcome.error},
            )
            return job

        self.job = await self.store.call_retrying(finish)
        self._notify()

    def _notify(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.job, self.progress)
        # the progress a watcher sees is logged too, at most every PROGRESS_LOG_EVERY seconds
        now = time.monotonic()
        if now - self._logged_at >= PROGRESS_LOG_EVERY:
            self._logged_at = now
            self.log.info("job.progress", status=self.job.status.value, percent=self.progress.percent(),
                          eta_seconds=self.progress.eta_seconds(), progress=self.progress.as_json())

    async def _estimate(self, name: str, progress: EntityProgress, mode: SyncMode) -> None:
        """Until the connector says (ctx.set_total, Page.total), a guess from what we know, marked as one."""
        if progress.total is None and progress.state in ("pending", "running"):
            guess = await self.store.call_retrying(records.estimate_total, self.connection_id, name,
                                                   full=mode is SyncMode.FULL)
            if guess:
                progress.total, progress.estimated = guess, True

    def _start_state(self, stream: StreamSpec, state: dict[str, Any] | None,
                     progress: EntityProgress) -> dict[str, Any] | None:
        """The state an entity's listing starts from: its committed cursor, or (`sync --since`) the
        connector's incremental start at that date.  A dry run never commits, so each attempt starts
        afresh: its counts start again from zero."""
        if self.dry_run:
            progress.processed = progress.failed = progress.skipped = 0
            progress.created = progress.changed = progress.deleted = 0
        if self.options.catch_up and state and stream.name not in self._committed:
            return self.connector.catch_up_state(stream, state)
        if self.options.since is None or (stream.name in self._committed and not self.dry_run):
            return state
        since = datetime.fromisoformat(self.options.since)
        start = self.connector.since_state(stream, state, since)
        self.log.info("job.since", entity=stream.name, since=self.options.since)
        return start

    async def _retry_entity(self, stream: StreamSpec, work: tuple[list[str], int], progress: EntityProgress) -> None:
        ids, anonymous = work
        progress.total = len(ids) + anonymous
        progress.skipped += anonymous  # no id to fetch it by
        if ids:
            await self._sync_entity(stream, None, SyncMode.INCREMENTAL, progress, retry_ids=ids)
        progress.state = "done"

    async def _sync_entity(
        self,
        stream: StreamSpec,
        state: dict[str, Any] | None,
        mode: SyncMode,
        progress: EntityProgress,
        *,
        retry_ids: list[str] | None = None,
    ) -> None:
        progress.state = "running"
        progress.started = time.monotonic()
        processed_at_start = progress.processed
        if retry_ids is None:
            await self._estimate(stream.name, progress, mode)
        listing_started = await self.store.call_retrying(records.database_now)
        concurrency = int(getattr(self.connector, "concurrency", 2))
        # page_concurrency = 1 is lockstep: emit returns once the page is committed, so nothing is
        # fetched ahead and a crash loses at most the one page in flight
        lockstep = concurrency <= 1
        # otherwise pages wait here while a batch commits, up to a full batch's worth: when the writer
        # falls behind, the next transaction carries them all (group commit, up to max_batch_records)
        ahead = 0 if lockstep else max(concurrency, PAGES_AHEAD)
        send, receive = trio.open_memory_channel[tuple[Page, trio.Event | None]](ahead)
        runner = self

        class Context:
            async def emit(self, page: Page) -> None:
                committed = trio.Event() if lockstep else None
                await send.send((page, committed))
                if committed is not None:
                    await committed.wait()

            async def known_versions(self, entity: str, field_name: str) -> dict[str, str]:
                versions: dict[str, str] = await runner.store.call_retrying(
                    records.known_versions, runner.connection_id, entity, field_name)
                return versions

            def set_total(self, entity: str, total: int | None, *, estimated: bool = False) -> None:
                if entity in runner.progress.entities:
                    runner.progress.entities[entity].total = total
                    runner.progress.entities[entity].estimated = estimated and total is not None
                runner._notify()

        failure: BaseException | None = None
        interrupted = ControlRequest.NONE
        async with trio.open_nursery() as nursery:

            async def produce() -> None:
                nonlocal failure
                async with send:
                    try:
                        if retry_ids is not None:
                            await self.connector.fetch_items(stream, retry_ids, Context())
                        else:
                            await self.connector.sync_entity(stream, state, mode, Context())
                    except Exception as exc:
                        # raised after the pages before it are committed
                        if failure is None:
                            failure = exc

            async def watch_control() -> None:
                """Pause and cancel take effect at the next page boundary; if none comes within
                INTERRUPT_GRACE (the entity waits out a Retry-After, a request trickles, the rate
                limiter holds it), they interrupt the waits and requests in flight.  A commit in
                flight still finishes (store calls are not abandoned): the cursor is what was committed."""
                nonlocal interrupted
                while True:
                    changed = self.control.changed
                    if self._interrupt_wanted():
                        await trio.sleep(INTERRUPT_GRACE)
                        if self._interrupt_wanted():  # no page boundary came in time
                            interrupted = self.control.request
                            nursery.cancel_scope.cancel()
                            return
                        continue
                    await changed.wait()

            nursery.start_soon(produce)
            nursery.start_soon(watch_control)
            try:
                await self._write(stream, receive, progress, listing_started, processed_at_start)
            except _Cancelled:
                interrupted = ControlRequest.CANCEL
            nursery.cancel_scope.cancel()  # written to the end (or cancelled at a boundary): stop watching
        if interrupted is ControlRequest.CANCEL:
            raise _Cancelled
        if interrupted is ControlRequest.PAUSE:
            raise _Paused
        if failure is not None:
            raise failure
        progress.state = "done"
        seen = progress.processed + progress.failed + progress.skipped
        # finished: the count is known now (a guess), or grew while the listing ran (a count taken at its start)
        if progress.estimated or (progress.total is not None and seen > progress.total):
            progress.total, progress.estimated = seen, False
        self._notify()

    async def _write(
        self,
        stream: StreamSpec,
        receive: trio.MemoryReceiveChannel[tuple[Page, trio.Event | None]],
        progress: EntityProgress,
        listing_started: Any,
        processed_at_start: int,
    ) -> None:
        """Two stages: `stage` groups the pages waiting into a batch and encodes it on a worker thread
        (canonical JSON, hashes, the upserts' arrays) while the previous batch commits; this loop commits
        the batches in order, one transaction each, with a page boundary after each commit."""
        evidence = ListingEvidence(stream.name, listing_started)
        send_staged, receive_staged = trio.open_memory_channel[Staged](0)
        failure: Exception | None = None  # the committer's: it wins over the stage's
        staging: Exception | None = None

        async def encode(batch: list[tuple[Page, trio.Event | None]]) -> Staged:
            return await trio.to_thread.run_sync(self._encode, stream, batch, limiter=self._encoder)

        async def stage() -> None:
            nonlocal staging
            async with receive, send_staged:
                try:
                    await stage_batches(receive, send_staged, encode, max_records=self.max_batch_records,
                                        merge_while_busy=not self.dry_run)
                except trio.BrokenResourceError:
                    pass  # the committer stopped (cancel, pause, an error): it says why
                except Exception as exc:  # the batches staged before it are still committed
                    staging = exc

        pace = WriterPace(self.connector.provider)  # committing (the store) or waiting for pages (the provider)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stage)
            try:
                async with receive_staged:
                    async for staged in receive_staged:
                        pace.spent("waiting")
                        await self._commit_staged(stream, staged, progress, evidence, processed_at_start)
                        pace.spent("committing")
            except Exception as exc:
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None or staging is not None:
            raise failure or staging  # type: ignore[misc]

    async def _commit_staged(self, stream: StreamSpec, staged: Staged, progress: EntityProgress,
                             evidence: ListingEvidence, processed_at_start: int) -> None:
        provider = self.connector.provider
        batch = staged.pages
        evidence.add(batch, staged.failures)
        stored = staged.stored
        # counted before the commit, so the progress it saves includes this batch
        before = (progress.processed, progress.failed, progress.total, progress.estimated)
        # an item listed as deleted, or asked for by id and gone, was gone through too: as a tombstone
        progress.processed += stored + sum(len(page.deleted) for page in batch)
        progress.failed += len(staged.failures)
        if staged.total is not None:
            progress.total, progress.estimated = staged.total, False  # the provider's own count
        checks = evidence.reconciliations(batch, progress)
        try:
            if self.dry_run:
                results, done = await self.store.call_retrying(
                    commit_dry, staged.writes, staged.failures, checks, evidence, connection_id=self.connection_id,
                    job_id=self.job.id, progress_after=self._progress_after)
            else:
                assert staged.encoded is not None
                results, done = await self.store.call_retrying(
                    records.commit_pages, staged.encoded, job_id=self.job.id, failures=staged.failures,
                    checks=checks, max_share=self.max_delete_share, confirmed=self.job.confirm_deletes,
                    progress=self._progress_after)
        except BaseException:
            progress.processed, progress.failed, progress.total, progress.estimated = before  # not committed
            raise
        self._committed.add(stream.name)
        self._count(progress, results, done)
        for check in done:
            self._after_reconciliation(check)
        changed = sum(r.inserted + r.updated for r in results)
        if not self.dry_run:
            metrics.records_synced_total.labels(provider, stream.name).inc(stored)
        now = time.monotonic()
        elapsed = now - (progress.started or now)
        if elapsed > 0:
            progress.rate = (progress.processed - processed_at_start) / elapsed
        size = staged.size
        self._pages += len(batch)
        self._page_records += size
        seen = progress.processed + progress.failed + progress.skipped
        if progress.total is None or (progress.estimated and seen >= progress.total):
            # no count, or the guess was short: at least one more page (marked as a guess)
            progress.total, progress.estimated = seen + max(size, 1), True
        self._update_job_rate(now)
        self.log.debug("job.page_committed", entity=stream.name, records=size, changed=changed,
                       pages=len(batch))
        self._notify()
        for event in staged.committed:
            if event is not None:
                event.set()
        await self._boundary()

    def _encode(self, stream: StreamSpec, batch: list[tuple[Page, trio.Event | None]]) -> Staged:
        try:  # on the encoder's thread, which also frees the pages' parsed records (not the trio thread)
            return encode_batch(stream, batch, self.connection_id, events=self.events, dry_run=self.dry_run)
        finally:
            batch.clear()

    def _progress_after(self, results: list[records.WriteResult],
                        checks: list[deletions.Reconciliation]) -> dict[str, Any]:
        saved = self.progress.as_json()
        for name, delta in deltas(results, checks, self.progress.entities).items():
            for key, value in delta.items():
                saved[name][key] += value
        return saved

    def _count(self, progress: EntityProgress, results: list[records.WriteResult],
               checks: list[deletions.Reconciliation]) -> None:
        for name, delta in deltas(results, checks, self.progress.entities).items():
            for key, value in delta.items():  # created, changed, deleted
                setattr(self.progress.entities[name], key, getattr(self.progress.entities[name], key) + value)

    def _update_job_rate(self, now: float) -> None:
        """The job's observed rate (this run, all entities), and the rate limiter's ceiling on it:
        requests per second allowed times the records a page has brought so far."""
        elapsed = now - self._run_started
        processed = sum(p.processed for p in self.progress.entities.values()) - self._run_processed
        if elapsed > 0:
            self.progress.rate = max(0.0, processed / elapsed)
        per_second = limiter_rate(getattr(self.connector, "policies", None))
        if per_second is not None and self._pages:
            self.progress.rate_ceiling = per_second * self._page_records / self._pages

    def _after_reconciliation(self, check: deletions.Reconciliation) -> None:
        """Log and count what a reconciliation did; anything short of 'applied' makes the job partial."""
        if check.outcome == "applied":
            if check.gone:
                self.log.info("job.dry_run_deletes" if self.dry_run else "job.reconciled_deletes",
                              entity=check.entity, deleted=check.gone, live=check.live)
            return
        metrics.reconciliations_refused_total.labels(self.connector.provider, check.outcome).inc()
        self.log.warning("job.reconciliation_refused", entity=check.entity, outcome=check.outcome, seen=check.seen,
                         expected=check.expected, gone=check.gone, live=check.live)
        self.warnings.append(refusal(check, self.max_delete_share, self.job.connection))

    def _interrupt_wanted(self) -> bool:
        """A pause or cancel waits, and the writer is not parked at a page boundary for it."""
        return self.control.request is not ControlRequest.NONE and not self._parked

    async def _boundary(self) -> None:
        """Between two commits: cancel ends the entity; pause holds the writer here (the bounded
        channel then holds the connector) until resume or cancel."""
        self._parked = True
        try:
            await self._wait_while_paused()
        finally:
            self._parked = False

    async def _wait_while_paused(self) -> None:
        """Paused: say so, wait for resume (return) or cancel (raise _Cancelled)."""
        while True:
            # taken before any await: a request made while the status is written sets this event
            # (JobControl.set swaps in a fresh one, which nothing would set: a lost wake-up)
            changed = self.control.changed
            match self.control.request:
                case ControlRequest.CANCEL:
                    raise _Cancelled
                case ControlRequest.PAUSE:
                    if self.job.status is not JobStatus.PAUSED:
                        self.job = await self.store.call_retrying(jobs.set_status, self.job.id, JobStatus.PAUSED)
                        self.log.info("job.paused")
                        self._notify()
                    await changed.wait()
                case ControlRequest.NONE:
                    if self.job.status is JobStatus.PAUSED:
                        self.job = await self.store.call_retrying(jobs.set_status, self.job.id, JobStatus.RUNNING)
                        self.log.info("job.resumed")
                        self._notify()
                    return
