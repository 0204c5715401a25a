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

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import outcome
import structlog
import trio

from freshd import logs
from freshd.connection_state import (
    LOOKUP,
    TRANSITIONS,
    ConnectionState,
    ConnectionStatus,
    Lookup,
    PolicySettings,
)
from freshd.connectors.base import ConnectionSettings, Connector, check_settings, connector_class
from freshd.errors import CircuitOpen, ConfigError, Fenced, ProviderError, ReauthRequired, StoreUnavailable
from freshd.messages import (
    ActorMessage,
    CancelJob,
    JobQueued,
    PauseJob,
    Probe,
    RefreshToken,
    ResumeJob,
    Stop,
    UpdateSettings,
    WithConnector,
)
from freshd.policies.breaker import CircuitBreaker
from freshd.policies.gate import ConnectionGate, ConnectionPolicies, RateGroups, limits_for
from freshd.policies.tokens import Token, TokenRefresher
from freshd.progress import ControlRequest, JobControl, JobOutcome, JobProgress
from freshd.slots import SyncSlots
from freshd.store import Store, connections, jobs
from freshd.store.db import Fence
from freshd.store.jobs import JobRow, JobStatus
from freshd.sync import JobRunner
from freshd.watch import ProgressHub

log = structlog.get_logger(__name__)

MAILBOX_SIZE = 64
SHUTDOWN_WRITE_TIMEOUT = 3.0


def _only_cancelled(exc: BaseException) -> bool:
    """True for trio.Cancelled, also when nurseries wrapped it in (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_cancelled(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


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
        policy: PolicySettings | None = None,
        rate_groups: RateGroups | None = None,
        tokens: dict[str, Any] | None = None,
        probe_limiter: trio.CapacityLimiter | None = None,
        live_job: JobRow | Lookup | None = LOOKUP,
        fence: Fence | None = None,
        lease_valid: Callable[[], bool] | None = None,
    ) -> None:
        self._live_job = live_job
        self.store = store
        self.fence = fence  # the lease this actor runs under (scale-out); its store checks it on every write
        self.lease_valid = lease_valid
        self.slots = slots
        self.hub = hub
        self.policy = policy or PolicySettings()
        self.rate_groups = rate_groups or RateGroups()
        self.probe_limiter = probe_limiter or trio.CapacityLimiter(1)
        self.connection_id = connection_id
        self.settings = settings
        self.sync_interval = sync_interval
        self.last_success_at = last_success_at
        self.error = last_error
        self.state = ConnectionState.IDLE
        self.active: ActiveJob | None = None
        self.mailbox_send, self._mailbox = trio.open_memory_channel[ActorMessage](MAILBOX_SIZE)
        self.log = log.bind(connection=settings.name)
        self.health: str | None = None
        self.probed_at: datetime | None = None
        self._probing = False
        self._refreshing = False
        self.policies = self._build_policies(
            TokenRefresher(provider=settings.provider, initial=Token.from_json(tokens) if tokens else None,
                           persist=self._persist_token, buffer=self.policy.token_refresh_buffer),
            CircuitBreaker(self.policy.breaker, connection=settings.name, provider=settings.provider))

    # -- policies --------------------------------------------------------------------------------

    def _build_policies(self, tokens: TokenRefresher, breaker: CircuitBreaker) -> ConnectionPolicies:
        """The gate (breaker, rate limits) and token refresher every request of this connection passes."""
        settings = self.settings
        for value in settings.credentials.values():
            logs.register_secret(value)
        rates, pinned = limits_for(connector_class(settings.provider).rate_limits, settings.options)
        group_name = settings.options.get("rate_group") or settings.tenant
        group = self.rate_groups.bucket(str(group_name))
        gate = ConnectionGate(settings.provider, rates, pinned=pinned, groups=[group] if group else [],
                              breaker=breaker, lease_valid=self.lease_valid)
        return ConnectionPolicies(gate, tokens, self.policy.retry, self.policy.limits)

    async def _persist_token(self, token: Token) -> None:
        # before the new token is used: a rotated single-use refresh token must not be lost
        logs.register_secret(token.access_token)
        if token.refresh_token:
            logs.register_secret(token.refresh_token)
        await self.store.call_retrying(connections.save_tokens, self.store.keyring, self.connection_id,
                                       token.as_json())

    def _new_settings(self, settings: ConnectionSettings) -> None:
        credentials_changed = settings.credentials != self.settings.credentials
        self.settings = settings
        tokens = self.policies.tokens
        if credentials_changed:  # new credentials: the old token (and a refused grant) are forgotten
            tokens = TokenRefresher(provider=settings.provider, persist=self._persist_token,
                                    buffer=self.policy.token_refresh_buffer)
        self.policies = self._build_policies(tokens, self.policies.gate.breaker)

    # -- state ---------------------------------------------------------------------------------

    def change_state(self, new: ConnectionState, *, reason: str | None = None) -> None:
        """The one funnel for state changes: checked, logged once, visible in status."""
        old = self.state
        if new is old:
            return
        if new not in TRANSITIONS[old]:
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
        breaker = self.policies.gate.breaker.status()
        rate = self.policies.gate.bucket(None).rate
        token = self.policies.tokens.token
        return ConnectionStatus(
            name=self.settings.name, provider=self.settings.provider, tenant=self.settings.tenant,
            state=self.state, last_success_at=self.last_success_at, next_sync_at=next_sync,
            error=self.error, job_id=self.active.job.id if self.active else None,
            breaker=breaker.state, breaker_retry_at=breaker.retry_at,
            rate_limit=rate.describe() if rate else None,
            token_expires_at=token.expires_at if token else None,
            health=self.health, probed_at=self.probed_at,
        )

    def job_view(self) -> tuple[JobRow, JobProgress] | None:
        if self.active and self.active.progress:
            return self.active.job, self.active.progress
        return None

    # -- the actor's life ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            live = self._live_job
            if isinstance(live, Lookup):
                live = await self.store.call(jobs.live_job, self.connection_id)
            if live is not None and live.status is JobStatus.RUNNING:
                # left running by a member that died (its lease is ours now: it writes nothing more),
                # or by this daemon's previous process: resumed from its committed cursor
                live = await self.store.call(jobs.set_status, live.id, JobStatus.INTERRUPTED)
                self.log.warning("job.taken_over", job=live.id)
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
                        self._new_settings(settings)  # the next job builds its connector from these
                        if self.state is ConnectionState.REAUTH_REQUIRED:
                            self.error = None
                            self.change_state(ConnectionState.IDLE)
                    case RefreshToken():
                        if not self._refreshing and self.policies.tokens.reauth_required is None:
                            self._refreshing = True
                            nursery.start_soon(self._refresh_token)
                    case Probe():
                        if not self._probing and self.active is None \
                                and self.state is not ConnectionState.REAUTH_REQUIRED:
                            self._probing = True
                            nursery.start_soon(self._probe)
                    case WithConnector(call, reply):
                        nursery.start_soon(self._with_connector, call, reply)
                    case Stop():
                        nursery.cancel_scope.cancel()
                    case _:
                        self.log.debug("actor.ignored", message=repr(message))

    def _connector(self) -> Connector:
        return connector_class(self.settings.provider)(self.settings, policies=self.policies)

    async def _refresh_token(self) -> None:
        """The token sweep: refresh ahead of expiry, through the same single-flight refresher as syncs."""
        try:
            cls = connector_class(self.settings.provider)
            if cls.refresh_token is Connector.refresh_token or not self.policies.tokens.due():
                return  # the common case, decided without building a connector
            connector = self._connector()
            try:
                if await connector.ensure_token():
                    self.log.info("token.sweep_refreshed")
            finally:
                with trio.CancelScope(shield=True):
                    await connector.aclose()
        except ReauthRequired as exc:
            self._needs_reauth(str(exc))
        except ProviderError as exc:
            self.log.warning("token.sweep_failed", error=str(exc))  # retried by the next sweep or sync
        finally:
            self._refreshing = False

    async def _probe(self) -> None:
        """The health sweep's cheap call; through the gate, so an open breaker gets its one probe."""
        try:
            async with self.probe_limiter:
                connector = self._connector()
                try:
                    await connector.probe()
                finally:
                    with trio.CancelScope(shield=True):
                        await connector.aclose()
        except NotImplementedError:
            self.health = None
        except CircuitOpen as exc:
            self.health = f"circuit open: {exc}"
        except ReauthRequired as exc:
            self.health = f"credentials rejected: {exc}"
            self._needs_reauth(str(exc))
        except ProviderError as exc:
            if self.health is None or self.health == "ok":
                self.log.warning("connection.unhealthy", error=str(exc))  # once, not every sweep
            self.health = f"unhealthy: {exc}"
        else:
            if self.health not in (None, "ok"):
                self.log.info("connection.healthy_again")
            self.health = "ok"
        finally:
            self.probed_at = datetime.now(UTC)
            self._probing = False

    async def _with_connector(self, call: Callable[[Connector], Awaitable[Any]],
                              reply: trio.MemorySendChannel[outcome.Outcome[Any]]) -> None:
        """A two-way write or lookup under this connection's policies; its outcome goes to `reply`."""
        async with reply:
            if self.state is ConnectionState.REAUTH_REQUIRED:
                result: outcome.Outcome[Any] = outcome.Error(ReauthRequired(self.error or "re-authentication required"))
            else:
                connector = self._connector()
                try:
                    result = await outcome.acapture(call, connector)
                finally:
                    with trio.CancelScope(shield=True):
                        await connector.aclose()
                if isinstance(result, outcome.Error) and isinstance(result.error, ReauthRequired):
                    self._needs_reauth(str(result.error))
            with contextlib.suppress(trio.BrokenResourceError):
                reply.send_nowait(result)

    def _needs_reauth(self, reason: str) -> None:
        if self.state is ConnectionState.REAUTH_REQUIRED or self.active is not None:
            return
        self.error = self._reauth_message(reason)
        self.change_state(ConnectionState.REAUTH_REQUIRED, reason=reason)

    def _reauth_message(self, reason: str) -> str:
        return (f"re-authentication required: {reason}. Fix it with `freshctl connections set-credential "
                f"{self.settings.name} KEY=VALUE ...`; syncs resume once the credentials change.")

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
        async with self.slots.hold(self.settings.tenant), \
                self.slots.claim(self.store, self.fence, self.settings.tenant):
            await self._run_held_job(active)

    async def _run_held_job(self, active: ActiveJob) -> None:
        if active.control.request is ControlRequest.CANCEL:  # cancelled while it waited for a slot
            await self.store.call_retrying(jobs.set_status, active.job.id, JobStatus.CANCELLED,
                                           error="cancelled by request")
            self.active = None
            await self._next_job()
            return
        self.change_state(ConnectionState.SYNCING)
        connector: Connector | None = None
        try:
            try:
                check_settings(self.settings)
                connector = self._connector()
            except ConfigError as exc:
                # settings stored by an older version (or edited in the database) that cannot work:
                # the job fails saying so, instead of the actor crash-looping with the job queued
                outcome = JobOutcome(JobStatus.FAILED, f"invalid connection settings: {exc}")
                await self.store.call_retrying(jobs.set_status, active.job.id, JobStatus.FAILED, error=outcome.error)
                self.log.error("connection.invalid_settings", error=str(exc))
                return await self._after_job(outcome)
            runner = JobRunner(self.store, connector, self.connection_id, active.job, active.control,
                               on_progress=self._on_progress, entities=self._entities(connector),
                               max_delete_share=self.policy.max_delete_share, events=self.policy.events)
            active.progress = runner.progress
            outcome = await runner.run()
            options = active.job.run_options
            # a dry run stored nothing, and a run of some entities says nothing of the others' age
            counts_as_sync = not options.dry_run and not options.entities
        except BaseException as exc:
            if _only_cancelled(exc):
                # shutdown or Stop: the in-flight commit finished (store calls are not abandoned);
                # say so in the job's row so the next start resumes it
                # (bounded: Store.call cancels the statement at this deadline, e.g. behind a row lock)
                problem: str | None = None
                with trio.move_on_after(SHUTDOWN_WRITE_TIMEOUT) as scope:
                    scope.shield = True
                    try:
                        await self.store.call(self._interrupt, active.job.id)
                    except StoreUnavailable as store_exc:
                        problem = str(store_exc)
                    except Fenced:
                        # the lease is gone: its new owner takes the job over from its cursor
                        problem = "this member's lease on the connection was lost"
                if scope.cancelled_caught:
                    problem = f"the database did not answer within {SHUTDOWN_WRITE_TIMEOUT:g} s"
                if problem is not None:
                    # the next start marks the job interrupted and resumes it all the same
                    self.log.warning("job.interrupt_not_recorded", job=active.job.id, error=problem,
                                     detail="the final write did not complete; the job stays 'running' "
                                            "in the store until the next start interrupts it")
            raise
        finally:
            if connector is not None:
                with trio.CancelScope(shield=True):
                    await connector.aclose()
        await self._after_job(outcome, counts_as_sync=counts_as_sync)

    async def _after_job(self, outcome: JobOutcome, *, counts_as_sync: bool = True) -> None:
        self.active = None
        success = outcome.status in (JobStatus.COMPLETED, JobStatus.PARTIAL)
        if counts_as_sync or not success:
            await self.store.call_retrying(connections.record_outcome, self.connection_id, success=success,
                                          error=outcome.error)
        if success and not counts_as_sync:
            self.change_state(ConnectionState.IDLE)
        elif success:
            self.last_success_at = datetime.now(UTC)
            self.error = outcome.error
            self.health = "ok"  # a sync that went through says as much as a probe
            self.change_state(ConnectionState.IDLE)
        elif outcome.reauth_required:
            self.error = self._reauth_message(outcome.error or "credentials rejected")
            self.change_state(ConnectionState.REAUTH_REQUIRED, reason=outcome.error)
        elif outcome.status is JobStatus.CANCELLED:
            self.change_state(ConnectionState.IDLE)
        else:
            self.error = outcome.error
            self.change_state(ConnectionState.ERROR, reason=outcome.error)
        await self._next_job()  # last: the job it nudges starts after this one's outcome is shown

    async def _next_job(self) -> None:
        """A job queued while this one was ending (its row already final, the actor still busy) had
        its JobQueued ignored: look for it, so it does not wait for the next sweep (or forever)."""
        try:
            live = await self.store.call(jobs.live_job, self.connection_id)
        except StoreUnavailable:
            return  # the sync sweep queues and nudges again
        if live is not None and live.status in (JobStatus.QUEUED, JobStatus.INTERRUPTED):
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self.mailbox_send.send_nowait(JobQueued(live.id))

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
