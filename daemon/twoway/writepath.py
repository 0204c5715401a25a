"""The write path (intent, provider call, outcome): the one way two-way sync writes to a provider.

Runs and manual resolutions both write through WritePath.  Every write's intent is committed
first (the idempotency log, checked against the target connection's lease fence), then sent
through the connection's actor under the tenant's write budget.  A create whose intent was
committed but never settled is looked up at the provider by its reference
(`Writer.find_created`) before it is sent again, so it is never made twice.  The records the
providers answer are stored like pulled pages (written_pages).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from freshd.batches import encode_record
from freshd.connectors.base import Connector, StreamSpec, connector_class
from freshd.connectors.http import write_budget
from freshd.connectors.writes import Create, Update, WriteOp, Writer, Written
from freshd.errors import PermanentError, ProviderError, TransientError
from freshd.policies.ratelimit import TokenBucket
from freshd.queueing import Queued
from freshd.store import Store, jobs, records
from freshd.store import twoway as db
from freshd.store.db import Connection, Fence, check_fence
from freshd.store.twoway import Link, PairRow
from freshd.twoway.mapping import EntityMap, Side
from freshd.twoway.merge import Decision

T = TypeVar("T")


class Gateway(Protocol):
    """What a run needs from the daemon: the store, the connections' actors and their fences."""

    store: Store

    def fence(self, connection: str) -> Fence | None: ...

    async def with_connector(self, connection: str, call: Callable[[Connector], Awaitable[T]]) -> T: ...

    async def queue_jobs(self, wanted: Mapping[str, jobs.JobRequest], trigger: str) -> dict[str, Queued]: ...

    @property
    def events(self) -> str | None: ...



def reference(pair: str, entity: str, side: Side, source_id: str) -> str:
    """A create's idempotency key, the same for every attempt: the created record carries it."""
    digest = hashlib.sha256(f"{pair}|{entity}|{side}|{source_id}".encode()).hexdigest()
    return f"fd_{digest[:24]}"


@dataclass(slots=True)
class PlannedWrite:
    key: str
    side: Side
    op: WriteOp
    values: dict[str, Any]  # the common values it sets
    source_id: str | None


@dataclass(slots=True)
class ItemWork:
    """One queued item in the batch being written, and what became of it."""

    seq: int
    entity: EntityMap
    left_id: str | None
    right_id: str | None
    link: Link | None = None
    decision: Decision | None = None
    writes: dict[Side, PlannedWrite] = field(default_factory=dict)
    written: dict[Side, Written | None] = field(default_factory=dict)  # None: applied before (a retry)
    errors: dict[Side, ProviderError] = field(default_factory=dict)
    attempts: int = 0
    skip_reason: str | None = None
    outcome: str | None = None  # the item's status once settled (metrics)


class WritePath:
    """Intent, provider call, outcome: the one way two-way sync writes to a provider."""

    def __init__(self, gateway: Gateway, budget: TokenBucket) -> None:
        self.gateway = gateway
        self.budget = budget

    async def apply(self, pair: PairRow, entity: EntityMap, side: Side, writes: Sequence[PlannedWrite],
                    run_id: int | None) -> list[Written | ProviderError | None]:
        """Each write's outcome, in order (None: this key was applied before).  Raises the error of
        a call that failed whole."""
        connection = pair.left if side is Side.LEFT else pair.right
        stream = entity.stream(side)

        def intend(conn: Connection) -> list[str]:
            self._check(conn, connection)
            known = db.write_states(conn, [w.key for w in writes])
            states = []
            for w in writes:
                previous = known.get(w.key, "new")
                if previous != "applied":
                    target = w.op.external_id if isinstance(w.op, Update) else None
                    db.intend(conn, key=w.key, run_id=run_id, pair=pair.name, entity=entity.name, side=side.value,
                              op="create" if isinstance(w.op, Create) else "update", source_id=w.source_id,
                              target_id=target, fields=w.values)
                states.append(previous)
            return states

        states = await self.gateway.store.call(intend)
        outcomes: list[Written | ProviderError | None] = [None] * len(writes)
        retried = [(i, w) for i, w in enumerate(writes)
                   if states[i] == "intended" and isinstance(w.op, Create)]
        found: dict[str, Written] = {}
        if retried:
            creates = [w.op for _, w in retried if isinstance(w.op, Create)]

            async def find(connector: Connector) -> dict[str, Written]:
                return await _writer(connector).find_created(stream, creates)

            found = await self._call(connection, find)
        todo = []
        for i, w in enumerate(writes):
            if states[i] == "applied":
                continue
            if w.key in found:
                outcomes[i] = found[w.key]
            else:
                todo.append(i)
        if todo:
            ops = [writes[i].op for i in todo]

            async def write(connector: Connector) -> list[Written | ProviderError]:
                return await _writer(connector).write(stream, ops)

            results = await self._call(connection, write)
            for i, result in zip(todo, results, strict=True):
                outcomes[i] = result
        return outcomes

    async def _call(self, connection: str, call: Callable[[Connector], Awaitable[T]]) -> T:
        budget = self.budget

        async def budgeted(connector: Connector) -> T:
            token = write_budget.set(budget)
            try:
                return await call(connector)
            finally:
                write_budget.reset(token)

        return await self.gateway.with_connector(connection, budgeted)

    def _check(self, conn: Connection, connection: str) -> None:
        fence = self.gateway.fence(connection)
        if fence is None:
            raise TransientError(f"connection {connection} is not run by this member: the write waits")
        check_fence(conn, fence)


def _writer(connector: Connector) -> Writer:
    if not isinstance(connector, Writer):
        raise PermanentError(f"{connector.provider} does not accept writes")
    return connector


def written_pages(pair: PairRow, works: Sequence[ItemWork], *, events: str | None) -> list[records.PageWrite]:
    by_stream: dict[tuple[Side, str], list[records.EncodedRecord]] = {}
    for work in works:
        for side, written in work.written.items():
            if written is not None and written.record:
                stream = work.entity.stream(side)
                provider = pair.left_provider if side is Side.LEFT else pair.right_provider
                try:
                    encoded = encode_record(_spec(provider, stream), dict(written.record))
                except ValueError:
                    continue  # not storable as it came back: the next pull brings the record
                by_stream.setdefault((side, stream), []).append(encoded)
    return [records.PageWrite(pair.left_id if side is Side.LEFT else pair.right_id, stream, encoded, (), None,
                              events=events) for (side, stream), encoded in by_stream.items()]


def _spec(provider: str, stream: str) -> StreamSpec:
    for spec in connector_class(provider).streams:
        if spec.name == stream:
            return spec
    raise PermanentError(f"{provider} has no stream {stream}")

