"""The supervisor: one actor per connection, each in its own cancel scope.

An actor that crashes (an exception that is not a provider's: a bug) is
restarted with exponential backoff (1 s doubling to 60 s, with jitter); its
error and restart count show in status; new settings for it (set-credential,
a reload) end the backoff at once.  The job it was running is marked
failed with the crash, so a poison page cannot spin a crash loop; the next
sweep or `freshctl sync` starts over from the committed cursor.  A crash never
reaches the daemon or the other actors.

`apply(rows)` makes the running actors match the stored connections: starts
new ones, stops removed ones, and hands changed settings to the running actor.
Parked connections (disabled in the config file, or detached: gone from it)
keep their rows and show in status, but run no actor.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import structlog
import trio

from freshd import heap, metrics
from freshd.actor import ConnectionActor
from freshd.connection_state import LOOKUP, ConnectionState, ConnectionStatus, Lookup, PolicySettings
from freshd.connectors.base import ConnectionSettings
from freshd.errors import Fenced, StoreUnavailable
from freshd.messages import ActorMessage, Stop, UpdateSettings
from freshd.policies.gate import RateGroups
from freshd.slots import SyncSlots
from freshd.store import Store, activity, connections, jobs
from freshd.store.connections import ConnectionRow
from freshd.store.db import Fence
from freshd.store.jobs import JobRow, JobStatus
from freshd.watch import ProgressHub

log = structlog.get_logger(__name__)

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
HEALTHY_AFTER = 300.0  # a run this long resets the backoff
STOP_TIMEOUT = 5.0
PROBES_AT_ONCE = 32  # health probes in flight across all connections


def _root_cause(exc: BaseException) -> BaseException:
    """The first real exception inside trio's nursery exception groups (what a person needs to see)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def settings_of(row: ConnectionRow) -> ConnectionSettings:
    return ConnectionSettings(
        name=row.name, provider=row.provider, base_url=row.base_url, tenant=row.tenant,
        credentials=dict(row.credentials), options=dict(row.options),
    )


@dataclass
class _Handle:
    row: ConnectionRow
    settings: ConnectionSettings
    fence: Fence  # the lease epoch its writes are checked against
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    actor: ConnectionActor | None = None
    restarts: int = 0
    crash: str | None = None
    backing_off: bool = False
    wake: trio.Event | None = None  # while backing off after a crash: new settings end the backoff now
    done: trio.Event = field(default_factory=trio.Event)
    live_job: JobRow | Lookup | None = LOOKUP  # known at start; a restarted actor looks again


class Supervisor:
    def __init__(
        self,
        store: Store,
        *,
        sync_interval: timedelta | None,
        slots: SyncSlots | None = None,
        hub: ProgressHub | None = None,
        policy: PolicySettings | None = None,
        rate_groups: RateGroups | None = None,
    ) -> None:
        self.store = store
        self.slots = slots or SyncSlots(max_running=20, tenant_max_running=5)
        self.hub = hub or ProgressHub()
        self.policy = policy or PolicySettings()  # for actors started from now on
        self.rate_groups = rate_groups or RateGroups()
        self.probe_limiter = trio.CapacityLimiter(PROBES_AT_ONCE)
        self.sync_interval = sync_interval
        self._handles: dict[str, _Handle] = {}
        self._rows: dict[int, ConnectionRow] = {}  # every stored connection, by id
        self._owned: dict[int, Fence] = {}  # the leases this member holds
        self._reconciling = trio.Lock()
        # does this member still hold a connection's lease (its local deadline not passed)?
        self.lease_check: Callable[[int], bool] | None = None
        self._parked: dict[str, tuple[ConnectionRow, ConnectionState]] = {}  # no actor, rows kept
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- membership ------------------------------------------------------------------------------

    async def apply(self, rows: list[ConnectionRow], *, parked: Mapping[str, ConnectionState] | None = None) -> None:
        """The stored connections: an actor runs for each row this member holds the lease of
        (`own`), but the parked ones (`parked`: name -> DISABLED or DETACHED; None keeps the names
        parked so far, for callers that only changed a row)."""
        if parked is None:
            parked = {name: state for name, (_, state) in self._parked.items()}
        self._parked = {row.name: (row, parked[row.name]) for row in rows if row.name in parked}
        self._rows = {row.id: row for row in rows}
        await self._reconcile(set())

    def know(self, row: ConnectionRow) -> None:
        """A connection just stored (added here): runs once its lease is ours."""
        self._rows[row.id] = row

    def runnable(self) -> set[int]:
        """Connection ids this member may lease: every stored one but the parked."""
        return {cid for cid, row in self._rows.items() if row.name not in self._parked}

    async def own(self, fences: Mapping[int, Fence], abrupt: set[int]) -> None:
        """The leases this member holds now (freshd.cluster): their actors run, each writing through
        the store fenced by its epoch; actors of connections in `abrupt` (lease lost) are cancelled
        at once rather than stopped at a committed cursor."""
        self._owned = dict(fences)
        if any(cid not in self._rows for cid in fences):  # added on another member
            self._rows = {row.id: row for row in await self.store.call(connections.list_connections,
                                                                         self.store.keyring)}
        await self._reconcile(abrupt)

    def owns(self, name: str) -> bool:
        return name in self._handles

    def fences(self) -> dict[int, Fence]:
        """connection id -> the fence of the actor running it here."""
        return {handle.row.id: handle.fence for handle in self._handles.values()}

    def fence_of(self, name: str) -> Fence | None:
        """The fence of the actor running `name` here (None: not run by this member)."""
        handle = self._handles.get(name)
        return handle.fence if handle else None

    def fenced_store(self, name: str) -> Store | None:
        """The store as the actor of `name` writes to it (None: not run by this member)."""
        handle = self._handles.get(name)
        return self.store.fenced(handle.fence) if handle else None

    async def _reconcile(self, abrupt: set[int]) -> None:
        async with self._reconciling:
            wanted = {row.name: (row, self._owned[cid]) for cid, row in self._rows.items()
                      if cid in self._owned and row.name not in self._parked}
            going = [name for name, handle in self._handles.items()
                     if name not in wanted or wanted[name][1] != handle.fence]

            async with trio.open_nursery() as nursery:  # stops in parallel: a hand-over of many is quick
                for name in going:
                    nursery.start_soon(self.stop, name, self._handles[name].row.id in abrupt)
            # new actors get their live job from one query, not one each (a fleet starts in one go)
            live = await self.store.call(jobs.live_jobs) if any(n not in self._handles for n in wanted) else {}
            for name, (row, fence) in wanted.items():
                handle = self._handles.get(name)
                if handle is None:
                    self.start(row, fence, live_job=live.get(row.id))
                elif settings_of(row) != handle.settings:
                    heap.release()  # the old settings and policies are let go (freshd.heap)
                    handle.row, handle.settings = row, settings_of(row)
                    if handle.backing_off and handle.wake is not None:  # crash-looping: restart it at once
                        log.info("actor.restart_now", connection=name, reason="settings changed")
                        handle.wake.set()
                    else:
                        self.send_nowait(name, UpdateSettings(handle.settings))

    def parked(self, name: str) -> ConnectionState | None:
        """DISABLED or DETACHED if `name` is kept without an actor, else None."""
        entry = self._parked.get(name)
        return entry[1] if entry else None

    def forget(self, name: str) -> None:
        """A purged connection: no longer shown."""
        self._parked.pop(name, None)

    def start(self, row: ConnectionRow, fence: Fence, *, live_job: JobRow | Lookup | None = LOOKUP) -> None:
        assert self._nursery is not None, "supervisor is not running"
        handle = _Handle(row, settings_of(row), fence, live_job=live_job)
        self._handles[row.name] = handle
        self._nursery.start_soon(self._supervise, handle, name=f"actor:{row.name}")

    async def stop(self, name: str, abrupt: bool = False) -> None:
        handle = self._handles.pop(name, None)
        if handle is None:
            return
        heap.release()  # the actor is let go: collectable again (freshd.heap)
        if handle.actor is not None and not handle.backing_off and not abrupt:
            try:
                handle.actor.mailbox_send.send_nowait(Stop())
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                handle.scope.cancel()
        else:
            handle.scope.cancel()
        with trio.move_on_after(STOP_TIMEOUT):
            await handle.done.wait()
        handle.scope.cancel()

    # -- messages and views ------------------------------------------------------------------------

    def send_nowait(self, name: str, message: ActorMessage) -> bool:
        """Nudge an actor. False if it is not running or its mailbox is full (the store still has it)."""
        handle = self._handles.get(name)
        if handle is None or handle.actor is None or handle.backing_off:
            return False
        try:
            handle.actor.mailbox_send.send_nowait(message)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def actor(self, name: str) -> ConnectionActor | None:
        handle = self._handles.get(name)
        return handle.actor if handle else None

    def broadcast_nowait(self, message: ActorMessage) -> int:
        """The same nudge to every running actor; returns how many took it."""
        return sum(self.send_nowait(name, message) for name in list(self._handles))

    def names(self) -> list[str]:
        return sorted(self._handles)

    def statuses(self) -> list[ConnectionStatus]:
        out = []
        for name in sorted([*self._handles, *self._parked]):
            if name in self._parked:
                row, state = self._parked[name]
                hint = (f"left the config file; its data is kept; `freshctl connections remove {name} --purge` "
                        "deletes it") if state is ConnectionState.DETACHED else None
                out.append(ConnectionStatus(
                    name=row.name, provider=row.provider, tenant=row.tenant, state=state,
                    last_success_at=row.last_success_at, next_sync_at=None, error=hint, job_id=None,
                ))
                continue
            handle = self._handles[name]
            if handle.actor is not None and not handle.backing_off:
                status = handle.actor.status()
            else:
                row = handle.row
                status = ConnectionStatus(
                    name=row.name, provider=row.provider, tenant=row.tenant, state=ConnectionState.RESTARTING,
                    last_success_at=row.last_success_at, next_sync_at=None, error=row.last_error, job_id=None,
                )
            if handle.crash and (handle.backing_off or status.error is None):
                status = replace(status, error=handle.crash)
            out.append(replace(status, restarts=handle.restarts))
        return out

    # -- supervision -------------------------------------------------------------------------------

    async def _supervise(self, handle: _Handle) -> None:
        delay = BACKOFF_START
        try:
            with handle.scope:
                while True:
                    row = handle.row
                    actor = ConnectionActor(
                        self.store.fenced(handle.fence), row.id, handle.settings, last_success_at=row.last_success_at,
                        last_error=row.last_error, sync_interval=self.sync_interval, slots=self.slots,
                        hub=self.hub, policy=self.policy, rate_groups=self.rate_groups, tokens=row.tokens,
                        probe_limiter=self.probe_limiter, live_job=handle.live_job, fence=handle.fence,
                        lease_valid=functools.partial(self.lease_check, row.id) if self.lease_check else None,
                    )
                    handle.live_job = LOOKUP
                    handle.actor, handle.backing_off = actor, False
                    started = trio.current_time()
                    try:
                        await actor.run()
                        return  # a clean exit: Stop
                    except Exception as exc:
                        root = _root_cause(exc)
                        if isinstance(root, Fenced):
                            # not a crash: another member holds the lease now; the membership
                            # stops this handle (or starts it again under a new epoch)
                            log.warning("actor.fenced", connection=row.name, error=str(root))
                            return
                        heap.release()  # the crashed actor is let go
                        handle.restarts += 1
                        handle.crash = f"actor crashed: {type(root).__name__}: {root}"
                        wake = handle.wake = trio.Event()  # before backing_off: settings from now on end it
                        handle.backing_off = True
                        metrics.actor_restarts_total.labels(row.provider).inc()
                        log.error("actor.crashed", connection=row.name, restarts=handle.restarts, exc_info=exc)
                        if not isinstance(root, StoreUnavailable):
                            # a bug: fail the job so a poison page cannot loop; a database outage
                            # leaves it running, and the restarted actor resumes it from its cursor
                            await self._fail_running_job(handle, handle.crash)
                        if trio.current_time() - started > HEALTHY_AFTER:
                            delay = BACKOFF_START
                        with trio.move_on_after(delay * random.uniform(0.5, 1.0)):
                            await wake.wait()  # new settings (set-credential, reload) end it early
                        # new settings start afresh; another crash on the same ones waits longer
                        delay = BACKOFF_START if wake.is_set() else min(delay * 2, BACKOFF_MAX)
                        handle.wake = None
                        # pick up what the store knows now (last success, error)
                        handle.row = replace(handle.row, last_success_at=actor.last_success_at)
        except* Fenced as fenced:
            # stopped abruptly (its lease lost) while a write was refused: the scope strips the
            # Cancelled from the actor's group and leaves the Fenced, which is no crash either
            log.warning("actor.fenced", connection=handle.row.name, error=str(fenced.exceptions[0]))
        except* Exception as failed:
            # anything else left when a stopping actor's Cancelled is stripped: the actor is gone
            # all the same; the daemon and every other actor must not go with it
            log.error("actor.failed_while_stopping", connection=handle.row.name, exc_info=failed)
        finally:
            handle.done.set()

    async def _fail_running_job(self, handle: _Handle, error: str) -> None:
        connection_id = handle.row.id
        try:
            def record(conn: Any) -> None:
                live = jobs.live_job(conn, connection_id)
                failed = live is not None and live.status is JobStatus.RUNNING
                if failed and live is not None:
                    jobs.set_status(conn, live.id, JobStatus.FAILED, error=error)
                activity.log_activity(conn, "actor.crashed", error, connection_id=connection_id,
                                      job_id=live.id if failed and live is not None else None)

            await self.store.fenced(handle.fence).call(record)
        except Exception as exc:  # the store may be the reason for the crash: keep supervising
            log.warning("actor.crash_bookkeeping_failed", error=str(exc))
