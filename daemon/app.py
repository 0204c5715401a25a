"""run_daemon(): the root nursery, the start-up order, reload, and the designed shutdown.

Start-up, each step only after the one before it is really ready:
  1. the store (the configured URL, or an embedded PostgreSQL), migrations applied;
  2. jobs left 'running' by a daemon that died become 'interrupted' (resumed below);
  3. config connections written to the store; the supervisor starts one actor each;
     never-synced connections get their initial sync queued;
  4. the admin socket, the metrics endpoint, the scheduler;
  5. READY=1 to systemd.

SIGHUP reloads the config file: an invalid file is refused whole and the
running configuration stays; the refusal is logged at error and shown in
``systemctl status`` (STATUS=).  The unit runs ``freshd check-config`` before the
SIGHUP, so ``systemctl reload`` itself fails on a broken file.  SIGTERM/SIGINT: STOPPING=1, no new work, every
actor's in-flight commit finishes (store calls are never abandoned), running
jobs are marked interrupted, and the process exits 0 within the stop deadline.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
import trio

from freshd import logs, metrics, systemd
from freshd.actor import ConnectionState, PolicySettings
from freshd.admin.commands import DaemonAdmin
from freshd.admin.server import AccessRules, prepare_socket_path, serve_admin
from freshd.config import Config, load_config
from freshd.embedded_pg import open_embedded_postgres
from freshd.errors import ConfigError, StoreUnavailable
from freshd.messages import JobQueued, Probe, RefreshToken
from freshd.policies.breaker import BreakerState
from freshd.policies.gate import RateGroups
from freshd.policies.ratelimit import Rate
from freshd.policies.staleness import Staleness, Verdict
from freshd.scheduler import Sweep, add_sweeps, create_scheduler, serve_scheduler
from freshd.secrets import load_keyring
from freshd.slots import SyncSlots
from freshd.store import Store, activity, connections, jobs, open_store
from freshd.store.jobs import JobKind
from freshd.supervisor import Supervisor

log = structlog.get_logger(__name__)

SHUTDOWN_DEADLINE = 8.0  # systemd's TimeoutStopSec is 15 s; the brief promises exit within 10 s


def policy_settings(config: Config) -> PolicySettings:
    p = config.policies
    return PolicySettings(
        breaker=p.breaker,
        retry=p.retry,
        token_refresh_buffer=p.token_refresh_buffer,
        limits=p.limits,
        max_delete_share=config.sync.max_delete_share,
    )


def rate_groups(config: Config) -> dict[str, Rate]:
    return {name: Rate.parse(group.rate, group.burst) for name, group in config.policies.rate_groups.items()}


class Daemon:
    """The running daemon's shared parts, as the admin handler and the sweeps see them."""

    def __init__(self, config: Config, config_path: Path | None, store: Store, supervisor: Supervisor) -> None:
        self.config = config
        self.config_path = config_path
        self.store = store
        self.supervisor = supervisor
        self.started_at = datetime.now(UTC)
        self.metrics_url: str | None = None
        self.scheduler: Any = None

    # -- connections from the config file ---------------------------------------------------------

    async def apply_config(self, config: Config) -> None:
        """Make the store and the actors match `config` (at start and on reload)."""

        def write(conn: Any) -> None:
            wanted = {c.name for c in config.connections if c.enabled}
            for spec in config.connections:
                if spec.enabled:
                    connections.upsert_connection(
                        conn, self.store.keyring, name=spec.name, tenant=spec.tenant, provider=spec.provider,
                        base_url=spec.base_url, options=dict(spec.options),
                        credentials=dict(spec.credentials), source="config",
                    )
            for row in connections.list_connections(conn, self.store.keyring):
                if row.source == "config" and row.name not in wanted:
                    connections.delete_connection(conn, row.name)
                    activity.log_activity(conn, "connection.removed", f"connection {row.name} left the config file")
            activity.log_activity(conn, "config.applied", f"configuration applied: {len(wanted)} connection(s)",
                                  details={"connections": sorted(wanted), "source": str(config.source)})

        for secret in config.secret_values():
            logs.register_secret(secret)  # redacted from every log line from now on
        await self.store.call(write)
        self.config = config
        self.supervisor.policy = policy_settings(config)
        self.supervisor.rate_groups.configure(rate_groups(config))
        rows = await self.store.call(connections.list_connections, self.store.keyring)
        await self.supervisor.apply(rows)
        await self.queue_never_synced()

    async def queue_never_synced(self, trigger: str = "startup") -> None:
        """A connection that never completed a sync gets one queued: nobody has to remember."""
        states = await self.store.call(connections.list_sync_states)
        never = {s.id: s.name for s in states if s.last_success_at is None}
        queued = await self.store.call(jobs.create_jobs, [(cid, JobKind.INITIAL) for cid in never], trigger)
        for cid, job_id in queued.items():
            self.supervisor.send_nowait(never[cid], JobQueued(job_id))

    async def reload(self) -> None:
        """Re-read the config file; a broken one is refused whole, loudly: an error line, and a
        STATUS= line that `systemctl status` shows until the next change."""
        systemd.reloading()
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("config.reload_refused", error=str(exc))
            systemd.notify("READY=1", f"STATUS=reload refused, still running the previous configuration: {exc}")
            return
        try:
            await self.apply_config(config)
        finally:
            systemd.ready()
        log.info("config.reloaded", connections=len(config.connections))
        systemd.status(f"running: {len(self.supervisor.names())} connections (configuration reloaded)")

    async def readiness(self) -> str | None:
        """What `/readyz` asks: None when the store answers and the scheduler runs, else why not."""
        if not await self.store.ping():
            return "store: the database does not answer"
        if self.scheduler is None or not self.scheduler.running:
            return "scheduler: not running"
        return None

    # -- sweeps -------------------------------------------------------------------------------------

    @property
    def staleness(self) -> Staleness:
        s = self.config.staleness
        return Staleness(fresh_below=s.fresh_below, stale_after=s.stale_after, min_gap=s.min_gap)

    async def sync_sweep(self) -> None:
        """Queue a sync for every connection whose data is no longer fresh (and past the minimum gap).

        One read and one write transaction for the whole fleet; the queued jobs then start as the
        daemon's and tenants' caps allow, so 10,000 due connections never start in the same second.
        """
        if not self.config.schedule.scheduled_sync:
            return
        policy = self.staleness
        now = datetime.now(UTC)
        started = await self.store.call(jobs.last_started)
        due: dict[int, tuple[str, JobKind]] = {}
        for state in await self.store.call(connections.list_sync_states):
            decision = policy.decide(now=now, last_success_at=state.last_success_at,
                                     last_started_at=started.get(state.id), scheduled=True)
            if decision.verdict is Verdict.SYNC:
                due[state.id] = (state.name, JobKind.INCREMENTAL if state.last_success_at else JobKind.INITIAL)
        queued = await self.store.call(jobs.create_jobs, [(cid, kind) for cid, (_, kind) in due.items()],
                                       "schedule")
        for cid, job_id in queued.items():
            self.supervisor.send_nowait(due[cid][0], JobQueued(job_id))
        log.info("sync.sweep", due=len(due), queued=len(queued))

    async def health_sweep(self) -> None:
        """Cheap checks, for a fleet of thousands: the store answers; connections that never
        completed a sync get one; and only connections with a sign of trouble (an error, a breaker
        not closed, stale data, a failed probe) make their provider's cheap call.  A connection
        whose last sync succeeded within the staleness window is healthy by that sync."""
        if await self.store.ping():
            await self.queue_never_synced("health")
        policy, now = self.staleness, datetime.now(UTC)
        probed = 0
        for status in self.supervisor.statuses():
            troubled = (status.state is ConnectionState.ERROR or status.breaker is not BreakerState.CLOSED
                        or status.health not in (None, "ok") or policy.is_stale(now, status.last_success_at))
            if troubled and status.state in (ConnectionState.IDLE, ConnectionState.ERROR):
                probed += self.supervisor.send_nowait(status.name, Probe())
        log.info("health.sweep", connections=len(self.supervisor.names()), probed=probed)
        systemd.status(f"running: {len(self.supervisor.names())} connections, store "
                       f"{'up' if self.store.available else 'unavailable'}")

    async def token_sweep(self) -> None:
        """Every actor refreshes its access token if it expires within the buffer (single-flight)."""
        sent = self.supervisor.broadcast_nowait(RefreshToken())
        log.debug("tokens.sweep", connections=sent)

    async def cleanup_sweep(self) -> None:
        sync = self.config.sync
        pruned = await self.store.call(
            jobs.prune_jobs, keep_per_connection=sync.job_history,
            max_age=timedelta(seconds=sync.job_max_age),
        )
        await self.store.call(activity.prune_activity, max_age=timedelta(seconds=sync.job_max_age))
        log.info("cleanup.done", jobs_pruned=pruned)

    def sweeps(self) -> list[Sweep]:
        schedule = self.config.schedule
        return [
            Sweep("sync", self.sync_sweep, interval=schedule.sync_interval, jitter=schedule.jitter),
            Sweep("health", self.health_sweep, interval=schedule.health_interval, jitter=schedule.jitter),
            Sweep("tokens", self.token_sweep, interval=schedule.token_interval, jitter=schedule.jitter),
            Sweep("cleanup", self.cleanup_sweep, cron=schedule.cleanup_cron, jitter=schedule.jitter),
        ]


def _connection_snapshot(daemon: Daemon) -> Callable[[], list[metrics.ConnectionSample]]:
    def snapshot() -> list[metrics.ConnectionSample]:
        policy, now = daemon.staleness, datetime.now(UTC)
        return [
            metrics.ConnectionSample(
                provider=s.provider, state=s.state.value, name=s.name,
                last_success=s.last_success_at.timestamp() if s.last_success_at else None,
                token_expires_at=s.token_expires_at,
                stale=s.last_success_at is not None and policy.is_stale(now, s.last_success_at),
            )
            for s in daemon.supervisor.statuses()
        ]
    return snapshot


async def _handle_signals(daemon: Daemon, root: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("signal.reload")
                await daemon.reload()
                continue
            log.info("signal.shutdown", signal=signal.Signals(signum).name)
            systemd.stopping()
            metrics.set_readiness(None)  # draining: /readyz says so at once
            # the deadline bounds the drain: store calls in flight finish, then everything unwinds
            root.deadline = trio.current_time() + SHUTDOWN_DEADLINE
            root.cancel()
            return


async def run_daemon(
    config: Config,
    *,
    config_path: Path | None = None,
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The daemon's whole life. Returns when shut down by a signal (or cancelled)."""
    # an unusable socket path is refused before anything starts (no store change, no sync)
    prepare_socket_path(Path(config.admin.socket))
    async with AsyncExitStack() as stack:
        systemd.status("starting: opening the store")
        url = config.database_url
        if url is None:
            url = await stack.enter_async_context(open_embedded_postgres(Path(config.state_dir)))
        keyring, key_paths = load_keyring(config.secrets.key_files, config.secrets.credential,
                                          Path(config.state_dir))
        try:
            store = await stack.enter_async_context(
                open_store(url, max_connections=config.sync.db_threads, keyring=keyring))
        except StoreUnavailable as exc:
            raise StoreUnavailable(f"cannot open the store: {exc}") from exc
        resealed = await store.call(connections.reseal_all, keyring)
        if resealed:
            log.info("secrets.resealed", connections=resealed, key=keyring.current.hex(),
                     keys=[str(p) for p in key_paths])
        interrupted = await store.call(jobs.interrupt_running)
        if interrupted:
            log.warning("jobs.interrupted", jobs=interrupted)

        async with trio.open_nursery() as root:
            slots = SyncSlots(max_running=config.sync.max_running,
                              tenant_max_running=config.sync.tenant_max_running)
            supervisor = Supervisor(store, slots=slots,
                                    sync_interval=timedelta(seconds=config.schedule.sync_interval)
                                    if config.schedule.scheduled_sync else None,
                                    policy=policy_settings(config), rate_groups=RateGroups(rate_groups(config)))
            await root.start(supervisor.run)
            daemon = Daemon(config, config_path, store, supervisor)
            await daemon.apply_config(config)

            admin = config.admin
            await root.start(
                lambda task_status: serve_admin(
                    Path(admin.socket), DaemonAdmin(daemon), mode=admin.socket_mode, group=admin.group,
                    rules=AccessRules.from_config(admin.group, admin.tenants),
                    request_timeout=admin.request_timeout, idle_timeout=admin.idle_timeout,
                    max_connections=admin.max_connections,
                    max_connections_per_uid=admin.max_connections_per_uid, task_status=task_status,
                )
            )
            if config.metrics.enabled:
                metrics.set_connection_snapshot(_connection_snapshot(daemon),
                                                per_connection=config.metrics.per_connection)
                metrics.set_job_counts(lambda: (slots.waiting(), slots.running()))
                daemon.metrics_url = await root.start(metrics.serve_metrics, config.metrics.address)

            scheduler = create_scheduler()
            add_sweeps(scheduler, daemon.sweeps())
            daemon.scheduler = scheduler
            await root.start(serve_scheduler, scheduler)
            metrics.set_readiness(daemon.readiness)
            stack.callback(metrics.set_readiness, None)
            root.start_soon(_handle_signals, daemon, root.cancel_scope)
            root.start_soon(systemd.serve_watchdog)

            systemd.ready()
            systemd.status(f"running: {len(supervisor.names())} connections")
            log.info("daemon.ready", socket=str(admin.socket), metrics=daemon.metrics_url,
                     connections=len(supervisor.names()))
            task_status.started(daemon)
    log.info("daemon.stopped")

