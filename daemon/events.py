"""Change events for downstream applications: the outbox relayed to Redis Streams (docs/EVENTS.md).

    page commit ──(same transaction)──> outbox rows ──> Relay.serve ──XADD──> freshd:{tenant}:{entity}
    backfill (Backfills.serve) ──────> outbox rows (historical, one application) ──> …:history:{app}
    job progress (ProgressHub) ──────> Relay (latest per job) ──XADD──> freshd:{tenant}:jobs

* Delivery is at least once: a row is marked published only after Redis acknowledged its XADD,
  so a crash in between publishes it again, with the same event id (the dedup key).
* Order is per record: one connection's changes commit one after another, and the relay reads
  finished transactions in outbox order.  A historical event whose record has a newer version by
  the time it is published is dropped (the newer live event says more); consumers that read the
  live and history streams keep the highest `version` per record.
* Redis unreachable: syncs go on, the outbox grows (`freshctl health` shows the lag), and the
  relay publishes in order once Redis answers again.
* With several daemons, each relays the events of the connections it holds the lease of, and
  marks them published fenced by that lease.

Redis is spoken with redis-py's blocking client in worker threads (a CapacityLimiter of 2), the
way psycopg is: one relay task and a few admin calls need no more, and redis-py works with
Valkey and every Streams command.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
import structlog
import trio

from freshd import metrics
from freshd.admin.views import job_json
from freshd.config_model import EventsConfig
from freshd.errors import AdminError, StoreUnavailable
from freshd.store import Store, cluster, outbox
from freshd.store.db import Fence
from freshd.store.jobs import JobRow

log = structlog.get_logger(__name__)

BATCH = 1000  # outbox rows per XADD pipeline
IDLE = 0.2  # seconds between two looks at an empty outbox
BACKFILL_CHUNK = 1000
APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


class Streams:
    """The Redis side: blocking redis-py calls in worker threads."""

    def __init__(self, url: str) -> None:
        import redis  # here, not at the top: a daemon without [events] never loads redis-py (6 MB, 0.1 s)

        self.url = url
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._limiter = trio.CapacityLimiter(2)

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self._limiter)

    async def publish(self, entries: list[tuple[str, dict[str, Any]]], maxlen: int) -> None:
        def send() -> None:
            pipe = self._client.pipeline(transaction=False)
            for stream, fields in entries:
                if maxlen:
                    pipe.xadd(stream, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
                else:
                    pipe.xadd(stream, fields)  # type: ignore[arg-type]
            pipe.execute()

        await self._run(send)

    async def create_group(self, stream: str, group: str) -> None:
        """At the stream's end ($): with the backfill that follows, nothing before or after is missed."""
        def create() -> None:
            import redis

            try:
                self._client.xgroup_create(stream, group, id="$", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

        await self._run(create)

    async def destroy_group(self, stream: str, group: str) -> None:
        def destroy() -> None:
            import redis

            with contextlib.suppress(redis.ResponseError):  # no such stream or group
                self._client.xgroup_destroy(stream, group)

        await self._run(destroy)

    async def group(self, stream: str, group: str) -> dict[str, Any]:
        def info() -> dict[str, Any]:
            import redis

            try:
                groups = self._client.xinfo_groups(stream)
            except redis.ResponseError:
                return {}
            for g in groups:
                name = g.get("name")
                if (name.decode() if isinstance(name, bytes) else name) == group:
                    return {"pending": g.get("pending"), "lag": g.get("lag"), "read": g.get("entries-read")}
            return {}

        result: dict[str, Any] = await self._run(info)
        return result

    async def ping(self) -> bool:
        import redis

        try:
            return bool(await self._run(self._client.ping))
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._client.close()


def event_fields(row: outbox.Pending, config: EventsConfig) -> tuple[str, dict[str, bytes]]:
    """The stream and the entry for one outbox row (the event is one JSON field, its id and type beside).
    The record's JSON text goes in as the database gave it: never parsed, never re-encoded."""
    event_id = f"{row.connection_id}:{row.entity}:{row.external_id}:{row.version}"
    event = {
        "id": event_id, "type": row.type, "tenant": row.tenant, "connection": row.connection,
        "provider": row.provider, "entity": row.entity, "external_id": row.external_id, "version": row.version,
        "occurred_at": row.occurred_at, "first_seen_at": _iso(row.first_seen_at), "synced_at": _iso(row.created_at),
        "historical": row.historical,
    }
    body = orjson.dumps(event)
    if config.payload == "full" and row.type != "record.deleted":
        if row.payload is None:  # changed again before it was published: the newer event follows
            body = body[:-1] + b',"superseded":true}'
        else:
            body = body[:-1] + b',"payload":' + row.payload.encode() + b"}"
    if row.consumer is not None:
        stream = config.history_stream.format(tenant=row.tenant, entity=row.entity, app=row.consumer)
    else:
        stream = config.stream.format(tenant=row.tenant, entity=row.entity)
    return stream, {"id": event_id.encode(), "type": row.type.encode(), "event": body}


@functools.cache
def occurred_sql() -> str:
    """An SQL expression for a record's own modified time: each provider stream's declared cursor
    field (the generic REST connector's streams are config, not declared: no occurred_at)."""
    from freshd.connectors.base import connector_class, providers

    cases = []
    for provider in providers():
        for spec in connector_class(provider).streams:
            if spec.cursor_field and re.fullmatch(r"[A-Za-z0-9_]+", spec.cursor_field):
                cases.append(f"WHEN c.provider = '{provider}' AND o.entity = '{spec.name}'"
                             f" THEN r.payload ->> '{spec.cursor_field}'")
    return f"CASE {' '.join(cases)} END" if cases else "NULL"


class Relay:
    """Publishes the outbox, in order, for the connections this member holds."""

    def __init__(self, store: Store, streams: Streams, config: EventsConfig,
                 fences: Callable[[], dict[int, Fence]]) -> None:
        self.store = store
        self.streams = streams
        self.config = config
        self.fences = fences
        self._jobs: dict[int, tuple[str, dict[str, Any]]] = {}  # the latest event per job, not yet sent
        self._wake = trio.Event()
        self._down = False
        self._acked: list[tuple[int, int]] = []  # (outbox id, connection id) Redis acknowledged, to mark

    def wake(self) -> None:
        self._wake.set()

    def job_changed(self, job: JobRow, shown: dict[str, Any]) -> None:
        """Job lifecycle and progress, coalesced: a busy job sends its latest state, not every page."""
        kind = "job.progress" if job.status.value in ("running", "paused") else f"job.{job.status.value}"
        stream = self.config.jobs_stream.format(tenant=job.tenant)
        self._jobs[job.id] = (stream, {"id": f"job:{job.id}", "type": kind,
                                       "event": orjson.dumps({"type": kind, "job": shown}).decode()})
        self._wake.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        import redis

        task_status.started()
        delay = 0.5
        while True:
            try:
                sent = await self.relay_once()
            except (redis.RedisError, StoreUnavailable) as exc:
                if not self._down:
                    self._down = True
                    log.warning("events.relay_paused", error=str(exc)[:200],
                                reason="events are kept in the outbox and published once this is back")
                await trio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if self._down:
                self._down = False
                log.info("events.relay_resumed")
            delay = 0.5
            if sent < BATCH:
                with trio.move_on_after(IDLE):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def relay_once(self) -> int:
        """One batch: read, publish, mark published (fenced). Returns the outbox rows handled."""
        import redis

        if self._jobs:
            jobs, self._jobs = self._jobs, {}
            try:
                await self.streams.publish(list(jobs.values()), self.config.maxlen)
            except redis.RedisError:
                self._jobs = {**jobs, **self._jobs}  # keep the latest states for the next try
                raise
        fences = self.fences()
        acked, self._acked = self._acked, []
        if not fences and not acked:
            return 0
        config, occurred = self.config, occurred_sql()

        def mark_then_read(conn: Any) -> tuple[list[outbox.Pending], list[tuple[str, dict[str, bytes]]]]:
            # the last batch Redis acknowledged is marked in the same transaction that reads the next
            # (one round trip per batch); marked only for connections whose lease is still ours
            if acked:
                still = cluster.lock_fences(conn, [fences[cid] for cid in {cid for _, cid in acked} if cid in fences])
                outbox.mark_published(conn, [row_id for row_id, cid in acked if cid in still])
            rows = outbox.pending(conn, list(fences), BATCH, occurred) if fences else []
            # the events are built in the worker thread too: the trio thread keeps syncing
            built = [event_fields(row, config) for row in rows
                     # a historical event superseded while queued: the newer live event is the one that counts
                     if not (row.historical and row.current_version is not None and row.current_version > row.version)]
            return rows, built

        try:
            rows, entries = await self.store.call(mark_then_read)
        except BaseException:
            self._acked = acked + self._acked  # not marked: marked with the next batch (or published again)
            raise
        if not rows:
            return 0
        if entries:
            started = trio.current_time()
            await self.streams.publish(entries, self.config.maxlen)
            metrics.events_published_total.inc(len(entries))
            metrics.event_relay_seconds.observe(trio.current_time() - started)
        self._acked = [(row.id, row.connection_id) for row in rows]
        oldest = min(row.created_at for row in rows)
        metrics.event_relay_lag_seconds.set(max(0.0, (datetime.now(oldest.tzinfo) - oldest).total_seconds()))
        if len(rows) < BATCH:
            self._wake.set()  # mark this batch at once rather than after the idle wait
        return len(rows)


def check_app(app: str) -> None:
    if not APP_NAME.match(app):
        raise AdminError("bad_request", f"application name {app!r}: letters, digits, '.', '_', '-' (max 64)")


class Backfills:
    """Runs the applications' backfills: chunks of current records queued as historical events,
    each chunk in one transaction with the backfill's progress and keyset cursor (a restart
    resumes after the last chunk).  Live events never wait for it: it only adds outbox rows."""

    def __init__(self, store: Store, config: EventsConfig) -> None:
        self.store = store
        self.config = config
        self._wake = trio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                for backfill in await self.store.call(outbox.backfills, live=True):
                    if backfill["status"] in ("queued", "running"):
                        await self._run(backfill)
            except StoreUnavailable as exc:
                log.warning("events.backfill_waiting", error=str(exc)[:200])
            with trio.move_on_after(1.0):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _run(self, backfill: dict[str, Any]) -> None:
        backfill_id, app = int(backfill["id"]), str(backfill["app"])
        found = await self.store.call(outbox.consumers, app)
        if not found:
            return
        tenant = str(found[0]["tenant"])
        progress: dict[str, Any] = dict(backfill["progress"] or {})
        if not progress:
            counts = await self.store.call(outbox.backfill_counts, tenant, backfill["entities"], backfill["since"])
            progress = {entity: {"total": n, "queued": 0} for entity, n in counts.items()}
            log.info("events.backfill_started", app=app, backfill=backfill_id, records=sum(counts.values()))
        cursor = backfill["cursor"]
        after = tuple(cursor) if cursor else None
        while True:
            def step(conn: Any, after: Any = after) -> tuple[str, Any]:
                row = conn.execute("SELECT status FROM backfills WHERE id = %s FOR UPDATE SKIP LOCKED",
                                   (backfill_id,)).fetchone()
                if row is None or row["status"] not in ("queued", "running"):
                    return "stop", None  # paused, cancelled, or another member has it right now
                counts, nxt = outbox.queue_backfill_chunk(
                    conn, app, tenant, backfill["entities"], since=backfill["since"], after=after,
                    limit=BACKFILL_CHUNK)
                for entity, n in counts.items():
                    slot = progress.setdefault(entity, {"total": None, "queued": 0})
                    slot["queued"] += n
                status = "running" if nxt is not None else "completed"
                outbox.save_backfill(conn, backfill_id, status=status, progress=progress,
                                     cursor=list(nxt) if nxt is not None else None)
                return status, nxt

            status, after = await self.store.call(step)
            if status != "running":
                if status == "completed":
                    log.info("events.backfill_completed", app=app, backfill=backfill_id,
                             queued=sum(int(p.get("queued") or 0) for p in progress.values()))
                return
            await trio.lowlevel.checkpoint()


class Events:
    """The change-event parts one daemon runs: the Redis side, the relay, the backfills."""

    def __init__(self, store: Store, config: EventsConfig, fences: Callable[[], dict[int, Fence]]) -> None:
        assert config.redis_url is not None
        self.config = config
        self.streams = Streams(config.redis_url)
        self.relay = Relay(store, self.streams, config, fences)
        self.backfills = Backfills(store, config)

    def _streams_of(self, app: str, tenant: str, entities: list[str]) -> list[str]:
        return [s for e in entities for s in (self.config.stream.format(tenant=tenant, entity=e),
                                              self.config.history_stream.format(tenant=tenant, entity=e, app=app))]

    async def create_groups(self, app: str, tenant: str, entities: list[str]) -> None:
        for stream in self._streams_of(app, tenant, entities):
            await self.streams.create_group(stream, app)

    async def destroy_groups(self, app: str, tenant: str, entities: list[str]) -> None:
        for stream in self._streams_of(app, tenant, entities):
            await self.streams.destroy_group(stream, app)

    async def serve(self, hub: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The relay, the backfills, and job progress from the hub into the jobs stream."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.relay.serve)
                await nursery.start(self.backfills.serve)
                log.info("events.relay_started", redis=self.streams.url.split("@")[-1].split("/")[2],
                         stream=self.config.stream, payload=self.config.payload)
                task_status.started()
                with hub.subscribe() as updates:
                    async for job, progress in updates:
                        self.relay.job_changed(job, job_json(job, progress))
        finally:
            self.streams.close()
