"""The two-way runs of this daemon, and manual resolutions.

`serve` (one task in the daemon's nursery) starts queued runs, and resumes runs a stopped
process left `processing`, when this member runs both of the pair's connections, at most
`max_runs_per_tenant` at once per tenant.  Pause and cancel are requests on the run's row,
honoured by the run at its next batch boundary.  Each tenant has one write budget
(`write_rate_per_minute`) that every provider request of its runs and resolutions takes a token
from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import outcome
import structlog
import trio

from freshd import metrics
from freshd.connectors.base import Connector, connector_class
from freshd.connectors.writes import Create, Update
from freshd.errors import ConfigError, FreshdError, ProviderError, TransientError
from freshd.messages import WithConnector
from freshd.policies.ratelimit import Rate, TokenBucket
from freshd.queueing import JobQueue, Queued
from freshd.store import Store, activity, records
from freshd.store import twoway as db
from freshd.store.db import Fence
from freshd.store.jobs import JobRequest
from freshd.store.twoway import Link, PairRow, RunState
from freshd.supervisor import Supervisor
from freshd.twoway.declarations import build_pair
from freshd.twoway.mapping import EntityMap, Pair, Side
from freshd.twoway.runner import Runner, RunSettings, link_tables
from freshd.twoway.settings import PairConfig, TwoWaySettings
from freshd.twoway.transforms import Tables
from freshd.twoway.writepath import ItemWork, PlannedWrite, WritePath, reference, written_pages

log = structlog.get_logger(__name__)
T = TypeVar("T")

TICK = 1.0


def mapping_of(pair: PairRow) -> Pair:
    """The pair's entities, built from its stored declaration (raises ConfigError)."""
    streams = tuple(frozenset(s.name for s in connector_class(p).streams)
                    for p in (pair.left_provider, pair.right_provider))
    return build_pair(pair.name, pair.left, pair.right, pair.spec,
                      providers=(pair.left_provider, pair.right_provider), streams=(streams[0], streams[1]))


def apply_config_pair(conn: Any, pair: PairConfig) -> str | None:
    """Store a [pairs.NAME] declaration (in the config transaction); why not, if it cannot be."""
    rows = {side: conn.execute("SELECT id, name, tenant, provider FROM connections WHERE name = %s",
                               (getattr(pair, side),)).fetchone() for side in ("left", "right")}
    for side, row in rows.items():
        if row is None:
            return f"no connection {getattr(pair, side)!r} (the pair's {side})"
    left, right = rows["left"], rows["right"]
    if left["tenant"] != right["tenant"]:
        return f"{left['name']} and {right['name']} belong to different tenants"
    if left["id"] == right["id"]:
        return "a pair joins two different connections"
    existing = db.get_pair(conn, pair.name)
    if existing is not None and (existing.left_id, existing.right_id) != (left["id"], right["id"]) \
            and db.pair_has_links(conn, pair.name):
        return (f"it already links records of {existing.left} and {existing.right}; a pair's connections cannot "
                "change under its links (give the new pair another name)")
    candidate = PairRow(pair.name, str(left["tenant"]), int(left["id"]), int(right["id"]), str(left["name"]),
                        str(right["name"]), str(left["provider"]), str(right["provider"]), pair.spec, "config")
    try:
        mapping_of(candidate)
    except ConfigError as exc:
        return str(exc)
    db.upsert_pair(conn, name=pair.name, tenant=candidate.tenant, left_id=candidate.left_id,
                   right_id=candidate.right_id, spec=pair.spec, source="config")
    return None


class TwoWay:
    def __init__(self, store: Store, supervisor: Supervisor, queue: JobQueue,
                 settings: TwoWaySettings | None = None) -> None:
        self.store = store
        self.supervisor = supervisor
        self.queue = queue
        self.settings = settings or TwoWaySettings()
        self._budgets: dict[str, TokenBucket] = {}
        self._running: dict[int, str] = {}  # run id -> tenant
        self._wake = trio.Event()
        # tests and benchmarks: a faster write rate than the config allows (never set by the config)
        self.rate_override: float | None = None

    # -- the gateway a run writes through ----------------------------------------------------------

    def fence(self, connection: str) -> Fence | None:
        return self.supervisor.fence_of(connection)

    async def with_connector(self, connection: str, call: Callable[[Connector], Awaitable[T]]) -> T:
        send, receive = trio.open_memory_channel[outcome.Outcome[Any]](1)
        async with receive:
            if not self.supervisor.send_nowait(connection, WithConnector(call, send)):
                send.close()
                raise TransientError(f"connection {connection} has no running actor here (stopped, restarting "
                                     "or run by another member)")
            try:
                result = await receive.receive()
            except trio.EndOfChannel:
                raise TransientError(f"connection {connection}'s actor stopped before it answered") from None
        value: T = result.unwrap()
        return value

    async def queue_jobs(self, wanted: Mapping[str, JobRequest], trigger: str) -> dict[str, Queued]:
        return await self.queue.queue_jobs(wanted, trigger)

    @property
    def events(self) -> str | None:
        return self.supervisor.policy.events

    def budget(self, tenant: str) -> TokenBucket:
        per_minute = self.rate_override or self.settings.write_rate_per_minute
        bucket = self._budgets.get(tenant)
        if bucket is None or bucket.rate is None or abs(bucket.rate.per_second * 60 - per_minute) > 1e-9:
            # a burst of one minute's requests, then the rate
            bucket = self._budgets[tenant] = TokenBucket(Rate(per_minute / 60.0, max(1.0, per_minute)),
                                                         name=f"twoway:{tenant}")
        return bucket

    # -- runs ----------------------------------------------------------------------------------

    def nudge(self) -> None:
        self._wake.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    await self._start_runs(nursery)
                except FreshdError as exc:  # the store is down: the next tick tries again
                    log.warning("twoway.tick_failed", error=str(exc))
                with trio.move_on_after(TICK):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _start_runs(self, nursery: trio.Nursery) -> None:
        runs = await self.store.call(db.list_runs, states=[RunState.QUEUED.value, RunState.PROCESSING.value],
                                     limit=1000)
        for run in sorted(runs, key=lambda r: r["id"]):
            if run["id"] in self._running:
                continue
            tenant = str(run["tenant"])
            if sum(1 for t in self._running.values() if t == tenant) >= self.settings.max_runs_per_tenant:
                continue
            pair = await self.store.call(db.get_pair, run["pair"])
            if pair is None or not (self.supervisor.owns(pair.left) and self.supervisor.owns(pair.right)):
                continue
            self._running[run["id"]] = tenant
            metrics.twoway_runs_processing.set(len(self._running))
            nursery.start_soon(self._execute, run, pair)

    async def _execute(self, run: Mapping[str, Any], pair: PairRow) -> None:
        run_id = int(run["id"])
        try:
            settings = self.run_settings(run["options"])
            runner = Runner(self, run, pair, mapping_of(pair), settings=settings, budget=self.budget(pair.tenant))
            await runner.execute()
        except (TransientError, FreshdError) as exc:
            if isinstance(exc, ConfigError) or (isinstance(exc, ProviderError)
                                                and not isinstance(exc, TransientError)):
                await self._fail(run_id, str(exc))  # it would fail the same way again
            else:  # the store or the lease: left as it is, resumed by the next tick (or the new owner)
                log.warning("twoway.run_interrupted", run=run_id, error=str(exc))
                await trio.sleep(TICK)
        except Exception as exc:
            log.exception("twoway.run_crashed", run=run_id)
            await self._fail(run_id, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._running.pop(run_id, None)
            metrics.twoway_runs_processing.set(len(self._running))

    async def _fail(self, run_id: int, error: str) -> None:
        try:
            await self.store.call(db.set_run_state, run_id, RunState.FAILED, error=error)
        except (FreshdError, db.RunTransitionRefused) as exc:
            log.warning("twoway.run_not_failed", run=run_id, error=str(exc))

    def run_settings(self, options: Mapping[str, Any]) -> RunSettings:
        s = self.settings
        return RunSettings(batch_size=int(options.get("batch_size") or s.batch_size),
                           batch_delay=float(options.get("batch_delay", s.batch_delay)),
                           attempts=s.attempts, backoff=s.backoff, backoff_cap=s.backoff_cap)

    def running(self) -> dict[int, str]:
        return dict(self._running)

    # -- manual resolution ---------------------------------------------------------------------

    async def resolve(self, conflict_id: int, resolution: Resolution) -> dict[str, Any]:
        """Write the chosen values to the side(s) that differ, move the link's base on, and mark
        the conflict resolved (with what was written and by whom).  Refused whole when the values
        do not fit or a provider refuses the write."""
        conflict = await self.store.call(db.get_conflict, conflict_id)
        if conflict is None:
            raise ResolutionRefused(f"no conflict {conflict_id}")
        if conflict["status"] != "unresolved":
            raise ResolutionRefused(f"conflict {conflict_id} is already {conflict['status']}")
        pair = await self.store.call(db.get_pair, conflict["pair"])
        if pair is None:
            raise ResolutionRefused(f"the pair {conflict['pair']} is gone")
        entity = mapping_of(pair).entities.get(conflict["entity"])
        if entity is None:
            raise ResolutionRefused(f"the pair {pair.name} no longer maps {conflict['entity']}")
        names = {f.name for f in entity.fields}
        unknown = sorted(set(resolution.values) - names)
        if unknown:
            raise ResolutionRefused(f"{entity.name} has no field(s) {', '.join(unknown)}; its fields: "
                                    f"{', '.join(sorted(names))}")
        tables = await self._tables(pair, entity)
        link = await self.store.call(_link_for, pair.name, entity.name, conflict["left_id"], conflict["right_id"])
        left_id = link.left_id if link else conflict["left_id"]
        right_id = link.right_id if link else conflict["right_id"]
        records = await self.store.call(_records_for, pair, entity, left_id, right_id)
        common: dict[Side, dict[str, Any] | None] = {}
        for side in Side:
            record = records[side]
            common[side] = None if record is None else entity.common(side, record, tables[side is Side.RIGHT])
        fields = list(conflict["fields"] or []) or sorted(names)
        chosen: dict[str, Any] = {}
        if resolution.take is not None:
            taken = common[Side(resolution.take)]
            if taken is None:
                raise ResolutionRefused(f"the {resolution.take} record of this conflict is gone")
            chosen = {name: taken[name] for name in fields} if link else dict(taken)
        chosen.update(resolution.values)
        if not chosen:
            raise ResolutionRefused("say what to keep: take left or right, or give the field values")
        writes = await self._write_resolution(pair, entity, conflict_id, link=link, left_id=left_id,
                                              right_id=right_id, common=common, chosen=chosen, tables=tables)
        who = resolution.who

        def settle(conn: Any) -> dict[str, Any]:
            if link is not None:
                base = {**link.base, **{k: v for k, v in chosen.items() if k in names}}
                db.save_link(conn, pair.name, entity.name, left_id=link.left_id, right_id=link.right_id, base=base,
                             linked_by="resolution")
            done = db.resolve_conflict(conn, conflict_id, {"take": resolution.take, "values": chosen,
                                                           "writes": writes, "by": who})
            activity.log_activity(conn, "twoway.conflict_resolved",
                                  f"conflict {conflict_id} of {pair.name} resolved by {who}",
                                  run_id=conflict["run_id"], details={"writes": writes, "take": resolution.take})
            return done

        resolved: dict[str, Any] = await self.store.call(settle)
        return resolved

    async def _tables(self, pair: PairRow, entity: EntityMap) -> tuple[Tables, Tables]:
        out: list[dict[str, Mapping[str, str]]] = [{}, {}]
        for index, side in enumerate(Side):
            connection = pair.left if side is Side.LEFT else pair.right
            for name in sorted(entity.tables(side)):
                async def fetch(connector: Connector, name: str = name) -> dict[str, str]:
                    return await connector.reference_table(name)
                try:
                    out[index][name] = await self.with_connector(connection, fetch)
                except ProviderError as exc:
                    raise ResolutionRefused(f"cannot read {name} from {connection}: {exc}") from None
        if entity.linked_entities():
            found = await self.store.call(link_tables, pair.name, entity.linked_entities())
            for table in out:
                table.update(found)
        return out[0], out[1]

    async def _write_resolution(self, pair: PairRow, entity: EntityMap, conflict_id: int, *, link: Link | None,
                                left_id: str | None, right_id: str | None,
                                common: Mapping[Side, dict[str, Any] | None], chosen: dict[str, Any],
                                tables: tuple[Tables, Tables]) -> dict[str, Any]:
        path = WritePath(self, self.budget(pair.tenant))
        writes: dict[str, Any] = {}
        plans: list[PlannedWrite] = []
        if link is not None:
            for side in Side:
                current = common[side] or {}
                differ = {k: v for k, v in chosen.items() if current.get(k) != v}
                if differ:
                    target = link.left_id if side is Side.LEFT else link.right_id
                    source = link.right_id if side is Side.LEFT else link.left_id
                    plans.append(PlannedWrite(f"r_{conflict_id}_{side.value}", side,
                                              Update(target, self._fragment(entity, side, differ, tables)),
                                              differ, source))
        else:
            source_side = Side.LEFT if left_id is not None else Side.RIGHT
            source_id = left_id if source_side is Side.LEFT else right_id
            assert source_id is not None
            target = source_side.other
            values = {**(common[source_side] or {}), **chosen}
            key = reference(pair.name, entity.name, target, source_id)
            plans.append(PlannedWrite(key, target, Create(self._fragment(entity, target, values, tables), key),
                                      values, source_id))
        for planned in plans:
            try:
                outcomes = await path.apply(pair, entity, planned.side, [planned], None)
            except ProviderError as exc:
                raise ResolutionRefused(f"the {planned.side} side refused the write: {exc}") from None
            result = outcomes[0]
            if isinstance(result, ProviderError):
                await self.store.call(db.settle_write, planned.key, applied=False, error=str(result))
                raise ResolutionRefused(f"the {planned.side} side refused the write: {result}")
            target_id = result.external_id if result is not None else None
            work = ItemWork(0, entity, None, None, written={planned.side: result})
            pages = written_pages(pair, [work], events=self.events)
            await self.store.call(_settle_resolution_write, pair.name, entity.name, planned, target_id=target_id,
                                  pages=pages)
            writes[planned.side.value] = {"op": "create" if isinstance(planned.op, Create) else "update",
                                          "id": target_id, "fields": sorted(planned.values)}
        return writes

    @staticmethod
    def _fragment(entity: EntityMap, side: Side, values: Mapping[str, Any],
                  tables: tuple[Tables, Tables]) -> dict[str, Any]:
        try:
            return entity.fragment(side, values, tables[side is Side.RIGHT])
        except ValueError as exc:
            raise ResolutionRefused(f"cannot write that to the {side}: {exc}") from None


def _link_for(conn: Any, pair: str, entity: str, left_id: str | None, right_id: str | None) -> Link | None:
    if left_id is not None:
        found = db.link_of(conn, pair, entity, left_id=left_id)
        if found is not None:
            return found
    return db.link_of(conn, pair, entity, right_id=right_id) if right_id is not None else None


def _records_for(conn: Any, pair: PairRow, entity: EntityMap, left_id: str | None,
                 right_id: str | None) -> dict[Side, dict[str, Any] | None]:
    left = db.records_by_id(conn, pair.left_id, entity.left_stream, [left_id]) if left_id else {}
    right = db.records_by_id(conn, pair.right_id, entity.right_stream, [right_id]) if right_id else {}
    return {Side.LEFT: left.get(left_id or ""), Side.RIGHT: right.get(right_id or "")}


def _settle_resolution_write(conn: Any, pair: str, entity: str, planned: PlannedWrite, *, target_id: str | None,
                             pages: list[records.PageWrite]) -> None:
    db.settle_write(conn, planned.key, applied=True, target_id=target_id)
    for page in pages:
        records.write_page(conn, page)
    if isinstance(planned.op, Create) and target_id is not None and planned.source_id is not None:
        left_id, right_id = ((target_id, planned.source_id) if planned.side is Side.LEFT
                             else (planned.source_id, target_id))
        db.save_link(conn, pair, entity, left_id=left_id, right_id=right_id, base=planned.values,
                     linked_by="resolution")


class ResolutionRefused(FreshdError):
    """A resolution that cannot be applied as asked (bad values, a refused write): nothing changed."""


@dataclass(frozen=True, slots=True)
class Resolution:
    take: str | None  # "left" | "right"
    values: Mapping[str, Any]  # field -> the merged value (with or without take)
    who: str
