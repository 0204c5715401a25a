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

from freshd.connectors.base import Connector, connector_class
from freshd.errors import FreshdError, ProviderError, TransientError
from freshd.messages import JobQueued, WithConnector
from freshd.policies.ratelimit import Rate, TokenBucket
from freshd.store import Store
from freshd.store import twoway as db
from freshd.store.db import Fence
from freshd.store.twoway import PairRow, RunState
from freshd.supervisor import Supervisor
from freshd.twoway.mapping import Pair, build_pair
from freshd.twoway.runner import Runner, RunSettings

log = structlog.get_logger(__name__)
T = TypeVar("T")

MAX_BATCH_SIZE = 200
MAX_WRITE_RATE = 50.0  # requests per minute per tenant, the contract's ceiling
TICK = 1.0


@dataclass(frozen=True, slots=True)
class TwoWaySettings:
    """[twoway] in the config."""

    batch_size: int = 50
    batch_delay: float = 0.0  # seconds between batches
    write_rate_per_minute: float = 10.0  # per tenant, at most MAX_WRITE_RATE
    max_runs_per_tenant: int = 5
    attempts: int = 3  # per item
    backoff: float = 1.0  # seconds before the second attempt, doubling ...
    backoff_cap: float = 16.0  # ... up to this


def mapping_of(pair: PairRow) -> Pair:
    """The pair's entities, built from its stored declaration (raises ConfigError)."""
    streams = tuple(frozenset(s.name for s in connector_class(p).streams)
                    for p in (pair.left_provider, pair.right_provider))
    return build_pair(pair.name, pair.left, pair.right, pair.spec,
                      providers=(pair.left_provider, pair.right_provider), streams=(streams[0], streams[1]))


class TwoWay:
    def __init__(self, store: Store, supervisor: Supervisor, settings: TwoWaySettings | None = None) -> None:
        self.store = store
        self.supervisor = supervisor
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

    def nudge_job(self, connection: str, job_id: int) -> None:
        self.supervisor.send_nowait(connection, JobQueued(job_id))

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
            nursery.start_soon(self._execute, run, pair)

    async def _execute(self, run: Mapping[str, Any], pair: PairRow) -> None:
        run_id = int(run["id"])
        try:
            settings = self.run_settings(run["options"])
            runner = Runner(self, run, pair, mapping_of(pair), settings=settings, budget=self.budget(pair.tenant))
            await runner.execute()
        except (TransientError, FreshdError) as exc:
            if isinstance(exc, ProviderError) and not isinstance(exc, TransientError):
                await self._fail(run_id, str(exc))
            else:  # the store or the lease: left as it is, resumed by the next tick (or the new owner)
                log.warning("twoway.run_interrupted", run=run_id, error=str(exc))
                await trio.sleep(TICK)
        except Exception as exc:
            log.exception("twoway.run_crashed", run=run_id)
            await self._fail(run_id, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._running.pop(run_id, None)

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
