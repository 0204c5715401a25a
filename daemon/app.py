"""run_daemon(): the root nursery, the start-up order, reload, and the designed shutdown.

Start-up, each step only after the one before it is really ready:
  1. the store (the configured URL, or an embedded PostgreSQL), migrations applied;
  2. jobs left 'running' by a daemon that died become 'interrupted' (resumed below);
  3. config connections written to the store; the supervisor starts one actor each;
     never-synced connections get their initial sync queued;
  4. the admin socket, the metrics endpoint, the scheduler;
  5. READY=1 to systemd.

SIGHUP reloads the config file: an invalid file is refused whole and the
running configuration stays.  SIGTERM/SIGINT: STOPPING=1, no new work, every
actor's in-flight commit finishes (store calls are never abandoned), running
jobs are marked interrupted, and the process exits 0 within the stop deadline.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, date, datetime, timedelta
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
from freshd.store import Store, activity, connections, jobs, open_store, stats
from freshd.store.jobs import JobKind
from freshd.supervisor import Supervisor
from freshd.sync import stored_nothing_of_something

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

    async def queue_stored_nothing(self) -> None:
        """Re-queue connections whose last completed sync stored zero records while the provider
        reported a non-zero total (past the minimum gap): their data is missing, not empty."""
        last = await self.store.call(jobs.last_successful_jobs)
        suspects = {cid: job for cid, job in last.items() if stored_nothing_of_something(job)}
        if not suspects:
            return
        started, now = await self.store.call(jobs.last_started), datetime.now(UTC)
        wanted = [(cid, JobKind.INCREMENTAL) for cid in suspects if self.staleness.decide(
            now=now, last_success_at=None, last_started_at=started.get(cid), scheduled=False).verdict is Verdict.SYNC]
        queued = await self.store.call(jobs.create_jobs, wanted, "health")
        for cid, job_id in queued.items():
            log.warning("health.stored_nothing", connection=suspects[cid].connection, last_job=suspects[cid].id,
                        job=job_id)
            self.supervisor.send_nowait(suspects[cid].connection, JobQueued(job_id))

    async def reload(self) -> None:
        systemd.reloading()
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("config.reload_refused", error=str(exc))
        else:
            await self.apply_config(config)
            log.info("config.reloaded", connections=len(config.connections))
        finally:
            systemd.ready()

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
            log.debug("sync.sweep", scheduled_sync=False, queued=0)
            return
        policy = self.staleness
        now = datetime.now(UTC)
        started = await self.store.call(jobs.last_started)
        due: dict[int, tuple[str, JobKind]] = {}
        # failed connections come first (list_sync_states' order), so they take the first free slots
        for state in await self.store.call(connections.list_sync_states):
            decision = policy.decide(now=now, last_success_at=state.last_success_at,
                                     last_started_at=started.get(state.id), scheduled=True)
            if decision.verdict is Verdict.SYNC:
                due[state.id] = (state.name, JobKind.INCREMENTAL if state.last_success_at else JobKind.INITIAL)
        queued = await self.store.call(jobs.create_jobs, [(cid, kind) for cid, (_, kind) in due.items()],
                                       "schedule")
        for cid, (name, _) in due.items():  # in due's order: the slots serve first come first
            if cid in queued:
                self.supervisor.send_nowait(name, JobQueued(queued[cid]))
        log.info("sync.sweep", due=len(due), queued=len(queued))

    async def health_sweep(self) -> None:
        """Cheap checks, for a fleet of thousands: the store answers; connections that never
        completed a sync get one; and only connections with a sign of trouble (an error, a breaker
        not closed, stale data, a failed probe) make their provider's cheap call.  A connection
        whose last sync succeeded within the staleness window is healthy by that sync."""
        if await self.store.ping():
            await self.queue_never_synced("health")
            await self.queue_stored_nothing()
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

    async def daily_stats(self, day: date | None = None) -> list[dict[str, Any]]:
        """Compute and store `day`'s statistics (default: yesterday, UTC), drop those past the
        retention, and log one summary line."""
        today = datetime.now(UTC).date()
        day = day or today - timedelta(days=1)
        retention = self.config.sync.stats_retention_days

        def compute(conn: Any) -> list[dict[str, Any]]:
            rows = stats.compute_day(conn, day)
            stats.prune_stats(conn, keep_days=retention, today=today)
            return rows

        rows = await self.store.call(compute)
        syncs = sum(r["syncs"] for r in rows)
        successes = sum(r["successes"] for r in rows)
        log.info("stats.daily", day=day.isoformat(), connections=len(rows), syncs=syncs, successes=successes,
                 success_rate=round(successes / syncs, 4) if syncs else None,
                 records=sum(sum(r["records"].values()) for r in rows),
                 failed_items=sum(r["failed_items"] for r in rows))
        return rows

    async def cleanup_sweep(self) -> None:
        sync = self.config.sync
        await self.daily_stats()  # before pruning: yesterday's jobs are still all there
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


def _connection_snapshot(daemon: Daemon) -> Callable[[], list[tuple[str, str, float | None]]]:
    def snapshot() -> list[tuple[str, str, float | None]]:
        return [
            (s.provider, s.state.value, s.last_success_at.timestamp() if s.last_success_at else None)
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
                metrics.set_connection_snapshot(_connection_snapshot(daemon))
                daemon.metrics_url = await root.start(metrics.serve_metrics, config.metrics.address)

            scheduler = create_scheduler()
            add_sweeps(scheduler, daemon.sweeps())
            daemon.scheduler = scheduler
            await root.start(serve_scheduler, scheduler)
            root.start_soon(_handle_signals, daemon, root.cancel_scope)
            root.start_soon(systemd.serve_watchdog)

            systemd.ready()
            systemd.status(f"running: {len(supervisor.names())} connections")
            log.info("daemon.ready", socket=str(admin.socket), metrics=daemon.metrics_url,
                     connections=len(supervisor.names()))
            task_status.started(daemon)
    log.info("daemon.stopped")

