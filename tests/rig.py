"""A connector under test: its simulator on loopback, a real store, and jobs run through the engine.

    async with open_rig(database_url, case, records=50) as rig:
        outcome, runner = await rig.sync(JobKind.INITIAL)
        assert rig.live("customers") == rig.sim.count("customers")

`ConformanceCase` is what each provider contributes to the shared conformance
suite (tests/test_conformance.py): how to build its simulator and settings, and
which entities to check.  Simulators follow one small contract (see
`SimulatorUnderTest`), so the suite drives every provider the same way.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from freshd.connectors.base import ConnectionSettings, Connector, Page, connector_class
from freshd.connectors.simulator import Simulator, serve_asgi
from freshd.policies.gate import ConnectionPolicies
from freshd.progress import JobControl, JobOutcome
from freshd.store import Store, connections, jobs, open_store
from freshd.store.jobs import JobKind
from freshd.sync import JobRunner
from tests.helpers import query

# What every provider simulator offers the tests (besides its real HTTP API on `.app`): count, mutate,
# corrupt, token_requests.  The package states it once, for `freshd simulate` and the registry too.
SimulatorUnderTest = Simulator


@dataclass(frozen=True)
class ConformanceCase:
    provider: str
    make_simulator: Callable[[int, int], SimulatorUnderTest]  # (records, seed) -> simulator
    settings: Callable[[str], ConnectionSettings]  # base URL -> settings the simulator accepts
    entities: tuple[str, ...]  # entities the suite checks (mutate/corrupt act on entities[0])
    uses_tokens: bool = False  # OAuth-style: expire_tokens must cause exactly one refresh
    # how deletions reach freshd: "tombstone" (incremental sync sees them), "reconcile" (full sync)
    deletes: str = "reconcile"
    options: dict[str, Any] = field(default_factory=dict)
    records: int = 250  # per entity: more than one page, so paging and loops are exercised


@dataclass
class Rig:
    sim: Any
    url: str
    store: Store
    database_url: str
    connection_id: int
    settings: ConnectionSettings
    policies: ConnectionPolicies | None = None

    def connector(self, **options: Any) -> Connector:
        settings = self.settings
        if options:
            settings = ConnectionSettings(settings.name, settings.provider, settings.base_url, settings.tenant,
                                          settings.credentials, {**settings.options, **options})
        cls = connector_class(settings.provider)
        return cls(settings, policies=self.policies)

    async def sync(self, kind: JobKind = JobKind.INCREMENTAL, control: JobControl | None = None,
                   **options: Any) -> tuple[JobOutcome, JobRunner]:
        job, created = await self.store.call(jobs.create_job, self.connection_id, kind, "test")
        assert created
        connector = self.connector(**options)
        try:
            runner = JobRunner(self.store, connector, self.connection_id, job, control or JobControl())
            return await runner.run(), runner
        finally:
            await connector.aclose()

    def live(self, entity: str) -> int:
        return int(query(self.database_url, "SELECT count(*) FROM records WHERE connection_id = %s"
                         " AND entity = %s AND deleted_at IS NULL", self.connection_id, entity)[0][0])

    def record(self, entity: str, external_id: str) -> tuple[dict[str, Any], Any] | None:
        """(payload, deleted_at) of one stored record, or None."""
        rows = query(self.database_url, "SELECT payload, deleted_at FROM records WHERE connection_id = %s"
                     " AND entity = %s AND external_id = %s", self.connection_id, entity, external_id)
        return (rows[0][0], rows[0][1]) if rows else None  # type: ignore[return-value]

    def failed_items(self, job_id: int) -> list[tuple[str, str | None, str]]:
        return [(str(e), None if i is None else str(i), str(r)) for e, i, r in query(
            self.database_url, "SELECT entity, external_id, reason FROM failed_items WHERE job_id = %s", job_id)]


@asynccontextmanager
async def open_rig(
    database_url: str,
    sim: Any,
    settings: Callable[[str], ConnectionSettings],
    *,
    policies: ConnectionPolicies | None = None,
) -> AsyncIterator[Rig]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(serve_asgi, sim.app, host="127.0.0.1", port=0))
        url = f"http://127.0.0.1:{port}"
        built = settings(url)
        async with open_store(database_url) as store:
            row, _ = await store.call(
                connections.upsert_connection, store.keyring, name=built.name, tenant=built.tenant,
                provider=built.provider, base_url=built.base_url, options=dict(built.options),
                credentials=dict(built.credentials), source="admin",
            )
            yield Rig(sim, url, store, database_url, row.id, built, policies)
        nursery.cancel_scope.cancel()


class CollectPages:
    """A SyncContext for calling a connector directly: keeps the pages, knows no stored versions."""

    def __init__(self) -> None:
        self.pages: list[Page] = []

    async def emit(self, page: Page) -> None:
        self.pages.append(page)

    async def known_versions(self, entity: str, field: str) -> dict[str, str]:
        return {}

    def set_total(self, entity: str, total: int | None, *, estimated: bool = False) -> None:
        pass
