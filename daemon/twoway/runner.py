"""One two-way run: bring both sides up to date, plan, then write in batches.

    processing/syncing ──both sides' syncs done──> planning ──queue stored──> writing ──> done | partial
         │ a sync failed or a side is paused: failed           (batch boundary) ├─pause──> paused ──resume──> queued
                                                                                 └─cancel─> cancelled

Crash safety: the queue, every write's intent (the idempotency log) and every batch's outcome are
committed; a resumed run syncs both sides again, then goes on from its first pending item.  A
create whose intent was committed but never settled is looked up at the provider by its
reference (`Writer.find_created`) before it is sent again, so it is never made twice
(freshd.twoway.writepath).

Each item gets `attempts` tries (exponential backoff `backoff`..`backoff_cap` between them) for
failures that may pass (rate limits exhausted, 5xx, an ambiguous create); then a RetryExhausted
conflict.  Refusals go to conflicts at once: DuplicateKey (a create linked to the record holding
the key when the provider names it), ValidationError (the provider's message), AuthError (the
connection is put in reauth_required by its actor).  How a batch's outcome is recorded is
freshd.twoway.settle.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
import trio

from freshd import metrics
from freshd.connectors.base import Connector
from freshd.connectors.writes import Create, Update
from freshd.errors import AuthExpired, PermanentError, ProviderError, ReauthRequired, Rejected, TransientError
from freshd.policies.ratelimit import TokenBucket
from freshd.store import activity, jobs
from freshd.store import twoway as db
from freshd.store.db import Connection
from freshd.store.jobs import JobKind, JobStatus
from freshd.store.twoway import ConflictType, Link, PairRow, RunState
from freshd.twoway.mapping import EntityMap, Pair, Side
from freshd.twoway.plan import decide, plan_entity
from freshd.twoway.settle import Settler
from freshd.twoway.transforms import Tables
from freshd.twoway.writepath import Gateway, ItemWork, PlannedWrite, WritePath, reference

log = structlog.get_logger(__name__)
T = TypeVar("T")

SYNC_WAIT = 3600.0  # a side's catch-up sync taking longer than this fails the run
POLL = 0.25


@dataclass(frozen=True, slots=True)
class RunSettings:
    batch_size: int = 50
    batch_delay: float = 0.0
    attempts: int = 3
    backoff: float = 1.0
    backoff_cap: float = 16.0


def link_tables(conn: Connection, pair: str, entities: frozenset[str]) -> dict[str, Mapping[str, str]]:
    out: dict[str, Mapping[str, str]] = {}
    for name in entities:
        forward = db.link_ids(conn, pair, name)
        out[f"links:{name}"] = forward
        out[f"links:{name}:reverse"] = {right: left for left, right in forward.items()}
    return out


class RunPaused(Exception):
    pass


class RunCancelled(Exception):
    pass


class RunMoved(Exception):
    """A connection of the pair is no longer run by this member (its lease moved): the run stops at
    the batch boundary, queued, and the member that runs both now resumes it."""


class Runner:
    def __init__(self, gateway: Gateway, run: Mapping[str, Any], pair: PairRow, mapping: Pair, *,
                 settings: RunSettings, budget: TokenBucket) -> None:
        self.gateway = gateway
        self.store = gateway.store
        self.run_id = int(run["id"])
        self.run = run
        self.pair = pair
        self.mapping = mapping
        self.settings = settings
        self.writes = WritePath(gateway, budget)
        gone = sorted(set(run["entities"]) - set(mapping.entities))
        if gone:
            raise PermanentError(f"the pair {pair.name} no longer maps {', '.join(gone)}: start a new run")
        self.entities = [mapping.entities[name] for name in run["entities"]]
        self.tables: tuple[dict[str, Mapping[str, str]], dict[str, Mapping[str, str]]] = ({}, {})
        self.log = log.bind(run=self.run_id, pair=pair.name)
        self.settler = Settler(gateway, pair, self.run_id)

    # -- the run ---------------------------------------------------------------------------------

    async def execute(self) -> RunState:
        await self.store.call(db.set_run_state, self.run_id, RunState.PROCESSING)
        self.log.info("twoway.run_started", entities=self.run["entities"], dry_run=self.run["dry_run"])
        try:
            await self._sync_up()
            await self._load_tables()
            if self.run["plan"] is None or self.run["dry_run"]:
                await self._load_links()
                await self._plan()
            if self.run["dry_run"]:
                return await self._finish(RunState.DONE)
            await self.store.call(db.update_run, self.run_id, phase="writing")
            while True:
                await self._boundary()
                items = await self.store.call(db.pending_items, self.run_id, self.settings.batch_size)
                if not items:
                    break
                await self._batch(items)
                if self.settings.batch_delay:
                    await trio.sleep(self.settings.batch_delay)
            stats = await self.store.call(db.queue_stats, self.run_id)
            final = RunState.PARTIAL if stats["failed"] or stats["conflict"] else RunState.DONE
            return await self._finish(final)
        except RunPaused:
            await self.store.call(db.set_run_state, self.run_id, RunState.PAUSED)
            await self._activity("twoway.run_paused", "paused at a batch boundary")
            return RunState.PAUSED
        except RunCancelled:
            await self.store.call(db.skip_pending, self.run_id, "run cancelled")
            return await self._finish(RunState.CANCELLED)
        except RunMoved as moved:
            await self.store.call(db.set_run_state, self.run_id, RunState.QUEUED)
            self.log.info("twoway.run_moved", connection=str(moved))
            return RunState.QUEUED
        except PermanentError as exc:
            return await self._finish(RunState.FAILED, error=str(exc))

    async def _finish(self, state: RunState, *, error: str | None = None) -> RunState:
        def finish(conn: Connection) -> None:
            db.set_run_state(conn, self.run_id, state, error=error)
            stats = db.queue_stats(conn, self.run_id)
            activity.log_activity(conn, f"twoway.run_{state.value}", f"run {self.run_id} of {self.pair.name} "
                                  f"{state.value}" + (f": {error}" if error else ""), run_id=self.run_id,
                                  details={"queue": stats})

        await self.store.call(finish)
        metrics.twoway_runs_total.labels(state.value).inc()
        self.log.info("twoway.run_finished", state=state.value, error=error)
        return state

    async def _activity(self, kind: str, message: str, **details: Any) -> None:
        await self.store.call(activity.log_activity, kind, f"run {self.run_id} of {self.pair.name}: {message}",
                              run_id=self.run_id, details=details)

    async def _boundary(self) -> None:
        for connection in (self.pair.left, self.pair.right):
            if self.gateway.fence(connection) is None:
                raise RunMoved(connection)
        run = await self.store.call(db.get_run, self.run_id)
        requested = run["requested"] if run else None
        if requested == "pause":
            raise RunPaused
        if requested == "cancel":
            raise RunCancelled

    # -- syncing: both sides up to date ----------------------------------------------------------

    async def _sync_up(self) -> None:
        await self.store.call(db.update_run, self.run_id, phase="syncing")
        wanted = {self.pair.left: self.pair.left_id, self.pair.right: self.pair.right_id}

        streams = {self.pair.left: sorted({e.left_stream for e in self.entities}),
                   self.pair.right: sorted({e.right_stream for e in self.entities})}

        async def queue() -> dict[str, tuple[jobs.JobRow, bool]]:
            synced = await self.store.call(jobs.ever_succeeded, list(wanted.values()))
            requests = {name: jobs.JobRequest(cid, JobKind.INCREMENTAL, jobs.JobOptions(tuple(streams[name]),
                                                                                        catch_up=True))
                        if cid in synced else jobs.JobRequest(cid, JobKind.INITIAL)
                        for name, cid in wanted.items()}
            queued = await self.gateway.queue_jobs(requests, f"twoway run {self.run_id}")
            await self.store.call(db.update_run, self.run_id, sync_jobs=[q.job.id for q in queued.values()])
            return {name: (q.job, q.created) for name, q in queued.items()}

        with trio.move_on_after(SYNC_WAIT) as waited:
            # a sync already live when the run starts may have begun before the last edits: after
            # it ends, one of the run's own follows
            for _ in range(2):
                queued = await queue()
                for name, (job, _) in queued.items():
                    if job.status is JobStatus.PAUSED:
                        raise PermanentError(f"connection {name} has a paused sync (job {job.id}): resume or "
                                             "cancel it, then start the run again")
                for name, (job, _) in queued.items():
                    await self._wait_job(name, job.id)
                if all(created for _, created in queued.values()):
                    break
        if waited.cancelled_caught:
            raise PermanentError(f"the syncs that bring both sides up to date took over {SYNC_WAIT:g} s")

    async def _wait_job(self, name: str, job_id: int) -> None:
        while True:
            await self._boundary()
            row = await self.store.call(jobs.get_job, job_id)
            if row is None or row.status in (JobStatus.COMPLETED, JobStatus.PARTIAL):
                return
            if row.status in (JobStatus.FAILED, JobStatus.CANCELLED):
                raise PermanentError(f"connection {name} could not be brought up to date "
                                     f"(job {job_id} {row.status}: {row.error})")
            if row.status is JobStatus.PAUSED:
                raise PermanentError(f"connection {name}'s sync (job {job_id}) was paused")
            await trio.sleep(POLL)

    async def _load_tables(self) -> None:
        for index, side in enumerate(Side):
            names = frozenset().union(*(e.tables(side) for e in self.entities))
            connection = self.pair.left if side is Side.LEFT else self.pair.right
            for name in sorted(names):
                async def fetch(connector: Connector, name: str = name) -> dict[str, str]:
                    return await connector.reference_table(name)

                async def call(connection: str = connection, fetch: Any = fetch) -> dict[str, str]:
                    table: dict[str, str] = await self.gateway.with_connector(connection, fetch)
                    return table

                self.tables[index][name] = await self._retrying(call)

    async def _load_links(self) -> None:
        """The links other entities' fields translate through ("links:ENTITY" tables, both ways),
        read again before each batch: a run links customers before it creates their orders."""
        names = frozenset().union(*(e.linked_entities() for e in self.entities))
        if names:
            found = await self.store.call(link_tables, self.pair.name, names)
            for table in self.tables:
                table.update(found)

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except TransientError:
                if attempt >= self.settings.attempts:
                    raise
                await trio.sleep(self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        return float(min(self.settings.backoff_cap, self.settings.backoff * 2 ** (attempt - 1)))

    # -- planning --------------------------------------------------------------------------------

    async def _plan(self) -> None:
        await self.store.call(db.update_run, self.run_id, phase="planning")
        summary: dict[str, dict[str, int]] = {}
        queue: list[tuple[str, str | None, str | None]] = []
        tables = (self.tables[0], self.tables[1])
        for entity in self.entities:
            def load(conn: Connection, entity: EntityMap = entity) -> tuple[Any, Any, list[Link]]:
                return (db.live_records(conn, self.pair.left_id, entity.left_stream),
                        db.live_records(conn, self.pair.right_id, entity.right_stream),
                        db.links(conn, self.pair.name, entity.name))

            left, right, links = await self.store.call(load)
            plan = await trio.to_thread.run_sync(plan_entity, entity, left, right, links, tables)
            del left, right, links
            summary[entity.name] = plan.summary()
            if self.run["dry_run"]:
                continue

            def keep(conn: Connection, entity: EntityMap = entity, plan: Any = plan) -> None:
                for left_id, right_id, base in plan.base_moves:
                    db.save_link(conn, self.pair.name, entity.name, left_id=left_id, right_id=right_id, base=base,
                                 linked_by="natural_key")
                for left_id, right_id in plan.natural_links:
                    if not db.save_link(conn, self.pair.name, entity.name, left_id=left_id, right_id=right_id,
                                        base={}, linked_by="natural_key"):
                        raise AssertionError("a natural link the plan found free was taken")  # one live run per pair
                for left_id, right_id, message in plan.duplicates:
                    self.settler.conflict(conn, pair=self.pair.name, run_id=self.run_id, entity=entity.name,
                                          type=ConflictType.DUPLICATE_KEY, left_id=left_id, right_id=right_id,
                                          fields=[entity.key], message=message)

            await self.store.call(keep)
            queue.extend((entity.name, left_id, right_id) for left_id, right_id in plan.items)

        def store_plan(conn: Connection) -> None:
            if not self.run["dry_run"]:
                conn.execute("DELETE FROM twoway_items WHERE run_id = %s", (self.run_id,))
                db.add_items(conn, self.run_id, queue)
            db.update_run(conn, self.run_id, plan=summary)
            activity.log_activity(conn, "twoway.run_planned", f"run {self.run_id} of {self.pair.name} planned: "
                                  f"{len(queue)} item(s)", run_id=self.run_id, details={"plan": summary})

        await self.store.call(store_plan)

    # -- writing ---------------------------------------------------------------------------------

    async def _batch(self, items: list[dict[str, Any]]) -> None:
        started = time.monotonic()
        await self._load_links()
        works = await self._prepare(items)
        attempt = 0
        while True:
            attempt += 1
            retry = await self._send(works, attempt)
            if not retry or attempt >= self.settings.attempts:
                break
            await trio.sleep(self._backoff(attempt))
        await self.settler.settle(works, seconds=time.monotonic() - started)

    async def _prepare(self, items: list[dict[str, Any]]) -> list[ItemWork]:
        """Each item's writes, decided again from the store as it is now."""
        by_entity: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            by_entity.setdefault(item["entity"], []).append(item)
        tables = (self.tables[0], self.tables[1])
        works: list[ItemWork] = []
        for name, group in by_entity.items():
            entity = self.mapping.entities[name]

            def load(conn: Connection, entity: EntityMap = entity, group: list[dict[str, Any]] = group) -> Any:
                found = db.links_of(conn, self.pair.name, entity.name,
                                    left_ids=[i["left_id"] for i in group if i["left_id"] is not None],
                                    right_ids=[i["right_id"] for i in group if i["right_id"] is not None])
                by_left = {ln.left_id: ln for ln in found}
                by_right = {ln.right_id: ln for ln in found}
                links: dict[tuple[str | None, str | None], Link | None] = {
                    (i["left_id"], i["right_id"]): by_left.get(i["left_id"]) or by_right.get(i["right_id"])
                    for i in group}
                lids = [i["left_id"] for i in group if i["left_id"]] + [ln.left_id for ln in links.values() if ln]
                rids = [i["right_id"] for i in group if i["right_id"]] + [ln.right_id for ln in links.values() if ln]
                return (links, db.records_by_id(conn, self.pair.left_id, entity.left_stream, lids),
                        db.records_by_id(conn, self.pair.right_id, entity.right_stream, rids))

            links, left, right = await self.store.call(load)
            for item in group:
                work = ItemWork(item["seq"], entity, item["left_id"], item["right_id"], attempts=item["attempts"])
                work.link = links[(item["left_id"], item["right_id"])]
                self._decide(work, left, right, tables)
                works.append(work)
        works.sort(key=lambda w: w.seq)
        return works

    def _decide(self, work: ItemWork, left: Mapping[str, Any], right: Mapping[str, Any],
                tables: tuple[Tables, Tables]) -> None:
        entity, link = work.entity, work.link
        if link is not None:
            work.left_id, work.right_id = link.left_id, link.right_id
            lrec, rrec = left.get(link.left_id), right.get(link.right_id)
            if lrec is None or rrec is None:
                work.skip_reason = "a record of the pair is gone (deletions are not propagated)"
                return
            decision = work.decision = decide(entity, link, lrec, rrec, tables)
            for side, values in ((Side.LEFT, decision.to_left), (Side.RIGHT, decision.to_right)):
                if values:
                    target = link.left_id if side is Side.LEFT else link.right_id
                    body = entity.fragment(side, values, tables[side is Side.RIGHT])
                    key = f"u_{self.run_id}_{work.seq}_{side.value}_{work.attempts}"
                    work.writes[side] = PlannedWrite(key, side, Update(target, body), dict(values),
                                                     link.right_id if side is Side.LEFT else link.left_id)
            return
        source = Side.LEFT if work.left_id is not None else Side.RIGHT
        source_id = work.left_id if source is Side.LEFT else work.right_id
        assert source_id is not None
        record = (left if source is Side.LEFT else right).get(source_id)
        if record is None:
            work.skip_reason = "the record to copy is gone"
            return
        target = source.other
        values = entity.common(source, record, tables[source is Side.RIGHT])
        try:
            body = entity.fragment(target, values, tables[target is Side.RIGHT])
        except ValueError as exc:
            work.errors[target] = Rejected(f"cannot map the record to {target}: {exc}")
            return
        key = reference(self.pair.name, entity.name, target, source_id)
        work.writes[target] = PlannedWrite(key, target, Create(body, key), values, source_id)

    async def _send(self, works: list[ItemWork], attempt: int) -> bool:
        """One attempt at every write still owed; True if some may succeed when tried again."""
        groups: dict[tuple[Side, str], list[tuple[ItemWork, PlannedWrite]]] = {}
        for work in works:
            for side, planned in work.writes.items():
                if side in work.written or (side in work.errors and not _retryable(work.errors[side])):
                    continue
                work.errors.pop(side, None)
                groups.setdefault((side, work.entity.name), []).append((work, planned))
        retry = False
        for (side, name), members in groups.items():
            entity = self.mapping.entities[name]
            for work, _ in members:
                work.attempts = max(work.attempts, attempt)
            try:
                outcomes = await self.writes.apply(self.pair, entity, side, [p for _, p in members], self.run_id)
            except (ReauthRequired, AuthExpired) as exc:
                for work, _ in members:
                    work.errors[side] = ReauthRequired(str(exc))
                continue
            except TransientError as exc:
                for work, _ in members:
                    work.errors[side] = exc
                retry = True
                continue
            except ProviderError as exc:
                for work, _ in members:
                    work.errors[side] = exc
                continue
            for (work, _), result in zip(members, outcomes, strict=True):
                if isinstance(result, ProviderError):
                    work.errors[side] = result
                    retry = retry or _retryable(result)
                else:
                    work.written[side] = result
        return retry


def _retryable(error: ProviderError) -> bool:
    return isinstance(error, TransientError)
