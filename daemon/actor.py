"""ConnectionActor: one per connection, the only code that runs its syncs.

The actor owns a bounded mailbox of typed messages (freshd.messages) and a
state machine.  Every state change goes through `change_state`, which checks
the transition, logs it once and updates what status and metrics show:

    idle ──JobQueued──> syncing ──ok──> idle
      ^                   │  │
      │                   │  └─pause──> paused ──resume──> syncing
      │                   ├─failed────> error ──JobQueued──> syncing
      │                   └─creds rejected──> reauth_required
      └──────────────────(new settings)──────────────┘

Jobs live in the store first: at start the actor adopts its connection's live
job (queued or interrupted; a paused one waits for `resume`), so a restart or a
missed nudge loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import structlog
import trio

from freshd.connectors.base import ConnectionSettings, Connector, connector_class
from freshd.messages import (
    ActorMessage,
    CancelJob,
    JobQueued,
    PauseJob,
    ResumeJob,
    Stop,
    UpdateSettings,
)
from freshd.slots import SyncSlots
from freshd.store import Store, connections, jobs
from freshd.store.jobs import JobRow, JobStatus
from freshd.sync import ControlRequest, JobControl, JobProgress, JobRunner
from freshd.watch import ProgressHub

log = structlog.get_logger(__name__)

MAILBOX_SIZE = 64
SHUTDOWN_WRITE_TIMEOUT = 3.0


class ConnectionState(StrEnum):
    IDLE = "idle"
    SYNCING = "syncing"
    PAUSED = "paused"
    ERROR = "error"  # the last sync failed; the next one may succeed
    REAUTH_REQUIRED = "reauth_required"  # credentials rejected: no sync until they change
    RESTARTING = "restarting"  # set by the supervisor while the actor backs off after a crash


_TRANSITIONS: dict[ConnectionState, frozenset[ConnectionState]] = {
    ConnectionState.IDLE: frozenset({ConnectionState.SYNCING, ConnectionState.PAUSED}),
    ConnectionState.SYNCING: frozenset({ConnectionState.IDLE, ConnectionState.PAUSED, ConnectionState.ERROR,
                                        ConnectionState.REAUTH_REQUIRED}),
    ConnectionState.PAUSED: frozenset({ConnectionState.SYNCING, ConnectionState.IDLE, ConnectionState.ERROR}),
    ConnectionState.ERROR: frozenset({ConnectionState.SYNCING, ConnectionState.IDLE, ConnectionState.PAUSED}),
    ConnectionState.REAUTH_REQUIRED: frozenset({ConnectionState.IDLE}),
    ConnectionState.RESTARTING: frozenset(set(ConnectionState)),
}


def _only_cancelled(exc: BaseException) -> bool:
    """True for trio.Cancelled, also when nurseries wrapped it in (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """What `freshctl status` shows for one connection (a frozen record)."""

    name: str
    provider: str
    tenant: str
    state: ConnectionState
    last_success_at: datetime | None
    next_sync_at: datetime | None
    error: str | None
    job_id: int | None
    restarts: int = 0


@dataclass
class ActiveJob:
    job: JobRow
    control: JobControl
    progress: JobProgress | None = None


class ConnectionActor:
    def __init__(
        self,
        store: Store,
        connection_id: int,
        settings: ConnectionSettings,
        *,
        last_success_at: datetime | None,
        last_error: str | None,
        sync_interval: timedelta | None,
        slots: SyncSlots,
        hub: ProgressHub | None = None,
    ) -> None:
        self.store = store
        self.slots = slots
        self.hub = hub
        self.connection_id = connection_id
        self.settings = settings
        self.sync_interval = sync_interval
        self.last_success_at = last_success_at
        self.error = last_error
        self.state = ConnectionState.IDLE
        self.active: ActiveJob | None = None
        self.mailbox_send, self._mailbox = trio.open_memory_channel[ActorMessage](MAILBOX_SIZE)
        self.log = log.bind(connection=settings.name)
        self._wake = trio.Event()

    # -- state ---------------------------------------------------------------------------------

    def change_state(self, new: ConnectionState, *, reason: str | None = None) -> None:
        """The one funnel for state changes: checked, logged once, visible in status."""
        old = self.state
        if new is old:
            return
        if new not in _TRANSITIONS[old]:
            raise RuntimeError(f"connection {self.settings.name}: illegal transition {old} -> {new}")
        self.state = new
        if new in (ConnectionState.ERROR, ConnectionState.REAUTH_REQUIRED):
            self.log.warning("connection.state", old=old.value, new=new.value, reason=reason)
        else:
            self.log.info("connection.state", old=old.value, new=new.value)

    def status(self) -> ConnectionStatus:
        next_sync = None
        if self.sync_interval is not None and self.state is not ConnectionState.REAUTH_REQUIRED:
            base = self.last_success_at or datetime.now(UTC)
            next_sync = base + self.sync_interval if self.last_success_at else base
        return ConnectionStatus(
            name=self.settings.name, provider=self.settings.provider, tenant=self.settings.tenant,
            state=self.state, last_success_at=self.last_success_at, next_sync_at=next_sync,
            error=self.error, job_id=self.active.job.id if self.active else None,
        )

    def job_view(self) -> tuple[JobRow, JobProgress] | None:
        if self.active and self.active.progress:
            return self.active.job, self.active.progress
        return None

    # -- the actor's life ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            live = await self.store.call(jobs.live_job, self.connection_id)
            task_status.started()
            if live is not None:
                if live.status is JobStatus.PAUSED:
                    self.active = ActiveJob(live, JobControl(ControlRequest.PAUSE))
                    self.change_state(ConnectionState.PAUSED)
                else:
                    self._start_job(nursery, live)
            async for message in self._mailbox:
                match message:
                    case JobQueued(job_id):
                        if self.active is None:
                            job = await self.store.call(jobs.get_job, job_id)
                            if job is not None and job.status in (JobStatus.QUEUED, JobStatus.INTERRUPTED):
                                self._start_job(nursery, job)
                    case PauseJob(job_id) if self._is_active(job_id):
                        assert self.active is not None
                        self.active.control.set(ControlRequest.PAUSE)
                    case ResumeJob(job_id) if self._is_active(job_id):
                        assert self.active is not None
                        if self.active.progress is None:  # adopted paused at start: run it now
                            self.active.control.set(ControlRequest.NONE)
                            self._start_job(nursery, self.active.job, self.active.control)
                        else:
                            self.active.control.set(ControlRequest.NONE)
                    case CancelJob(job_id) if self._is_active(job_id):
                        assert self.active is not None
                        if self.active.progress is None:
                            await self.store.call(jobs.set_status, job_id, JobStatus.CANCELLED,
                                                  error="cancelled by request")
                            self.active = None
                            self.change_state(ConnectionState.IDLE)
                        else:
                            self.active.control.set(ControlRequest.CANCEL)
                    case UpdateSettings(settings):
                        self.settings = settings  # the next job builds its connector from these
                        if self.state is ConnectionState.REAUTH_REQUIRED:
                            self.change_state(ConnectionState.IDLE)
                    case Stop():
                        nursery.cancel_scope.cancel()
                    case _:
                        self.log.debug("actor.ignored", message=repr(message))

    def _is_active(self, job_id: int) -> bool:
        return self.active is not None and self.active.job.id == job_id

    def _start_job(self, nursery: trio.Nursery, job: JobRow, control: JobControl | None = None) -> None:
        if self.state is ConnectionState.REAUTH_REQUIRED:
            self.log.info("job.refused_reauth_required", job=job.id)
            return
        self.active = ActiveJob(job, control or JobControl())
        nursery.start_soon(self._run_job, self.active)

    def _on_progress(self, job: JobRow, progress: JobProgress) -> None:
        if self.hub is not None:
            self.hub.publish(job, progress)
        if self.active is not None:
            self.active.job = job
            self.active.progress = progress
            state = ConnectionState.PAUSED if job.status is JobStatus.PAUSED else ConnectionState.SYNCING
            if state is not self.state and job.status in (JobStatus.PAUSED, JobStatus.RUNNING):
                self.change_state(state)

    async def _run_job(self, active: ActiveJob) -> None:
        # the job stays 'queued' until the daemon's and the tenant's caps let it run
        async with self.slots.hold(self.settings.tenant):
            await self._run_held_job(active)

    async def _run_held_job(self, active: ActiveJob) -> None:
        if active.control.request is ControlRequest.CANCEL:  # cancelled while it waited for a slot
            await self.store.call_retrying(jobs.set_status, active.job.id, JobStatus.CANCELLED,
                                           error="cancelled by request")
            self.active = None
            return
        self.change_state(ConnectionState.SYNCING)
        connector: Connector | None = None
        try:
            connector = connector_class(self.settings.provider)(self.settings)
            runner = JobRunner(self.store, connector, self.connection_id, active.job, active.control,
                               on_progress=self._on_progress, entities=self._entities(connector))
            active.progress = runner.progress
            outcome = await runner.run()
        except BaseException as exc:
            if _only_cancelled(exc):
                # shutdown or Stop: the in-flight commit finished (store calls are not abandoned);
                # say so in the job's row so the next start resumes it
                with trio.move_on_after(SHUTDOWN_WRITE_TIMEOUT) as scope:
                    scope.shield = True
                    await self.store.call(self._interrupt, active.job.id)
            raise
        finally:
            if connector is not None:
                with trio.CancelScope(shield=True):
                    await connector.aclose()
        self.active = None
        success = outcome.status in (JobStatus.COMPLETED, JobStatus.PARTIAL)
        await self.store.call_retrying(connections.record_outcome, self.connection_id, success=success,
                                      error=outcome.error)
        if success:
            self.last_success_at = datetime.now(UTC)
            self.error = outcome.error
            self.change_state(ConnectionState.IDLE)
        elif outcome.reauth_required:
            self.error = f"re-authentication required: {outcome.error}. Fix the credentials with " \
                f"`freshctl connections add {self.settings.name} ...` (same name) to resume."
            self.change_state(ConnectionState.REAUTH_REQUIRED, reason=outcome.error)
        elif outcome.status is JobStatus.CANCELLED:
            self.change_state(ConnectionState.IDLE)
        else:
            self.error = outcome.error
            self.change_state(ConnectionState.ERROR, reason=outcome.error)

    def _entities(self, connector: Connector) -> list[str] | None:
        wanted = self.settings.options.get("entities")
        if not wanted:
            return None
        return [s.name for s in connector.streams if s.name in wanted]

    @staticmethod
    def _interrupt(conn: Any, job_id: int) -> None:
        job = jobs.get_job(conn, job_id)
        if job is not None and job.status is JobStatus.RUNNING:
            jobs.set_status(conn, job_id, JobStatus.INTERRUPTED)
