"""run_daemon(): the root nursery, the start-up order, reload, and the designed shutdown.

Start-up, each step only after the one before it is really ready:
  1. the store (the configured URL, or an embedded PostgreSQL), migrations applied;
  2. jobs left 'running' by a daemon that died become 'interrupted' (resumed below);
  3. config connections written to the store; the supervisor starts one actor each;
     never-synced connections get their initial sync queued;
  4. the admin socket, the metrics endpoint, the HTTP API (if configured), the scheduler;
  5. READY=1 to systemd.

SIGHUP reloads the config file: an invalid file is refused whole and the
running configuration stays (the refusal is logged at error and shown in `systemctl status`
by a STATUS= line; the unit runs `freshd check-config` first, so `systemctl reload` fails on
a broken file).  A reload that finds the database unavailable
is deferred and retried with backoff (`config.reload_deferred`) by the reload
task, so signals keep being handled meanwhile; a newer SIGHUP replaces it.

SIGTERM/SIGINT: STOPPING=1, no new work, every actor's in-flight commit
finishes (store calls are never abandoned), running jobs are marked
interrupted, and the process exits 0 within the stop deadline.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
import trio

from freshd import heap, logs, metrics, systemd
from freshd.admin.commands import DaemonAdmin
from freshd.admin.http import serve_http_api, token_authenticator
from freshd.admin.server import AccessRules, prepare_socket_path, serve_admin
from freshd.cluster import ClusterSettings, Membership, default_member_name
from freshd.config import load_config
from freshd.config_model import Config
from freshd.connection_state import ConnectionState, PolicySettings
from freshd.embedded_pg import open_embedded_postgres
from freshd.errors import ConfigError, StoreUnavailable
from freshd.events import Events
from freshd.policies.gate import RateGroups
from freshd.policies.ratelimit import Rate
from freshd.policies.staleness import Staleness
from freshd.queueing import JobQueue
from freshd.scheduler import Sweep, add_sweeps, create_scheduler, serve_scheduler
from freshd.secrets import load_keyring
from freshd.slots import SyncSlots
from freshd.store import Store, activity, cluster, connections, open_store
from freshd.store import twoway as twoway_store
from freshd.supervisor import Supervisor
from freshd.sweeps import Sweeps, staleness_of, sweep_table
from freshd.twoway import service as twoway_pairs
from freshd.twoway.service import TwoWay

log = structlog.get_logger(__name__)

SHUTDOWN_DEADLINE = 8.0  # systemd's TimeoutStopSec is 15 s; the brief promises exit within 10 s
STORE_STOP_DEADLINE = 6.0  # final database writes on shutdown: leaves 2 s to unwind and exit
RELOAD_RETRY_START = 1.0  # a reload deferred by a database outage: 1 s doubling to 30 s
RELOAD_RETRY_MAX = 30.0


def policy_settings(config: Config) -> PolicySettings:
    p = config.policies
    return PolicySettings(
        breaker=p.breaker,
        retry=p.retry,
        token_refresh_buffer=p.token_refresh_buffer,
        limits=p.limits,
        max_delete_share=config.sync.max_delete_share,
        events=config.events.payload if config.events.redis_url else None,
    )


def cluster_settings(config: Config) -> ClusterSettings:
    c = config.cluster
    return ClusterSettings(member_name=c.member_name, lease_ttl=c.lease_ttl, handover=c.handover)


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
        self.http_url: str | None = None  # the HTTP API's base URL, when [http] address is set
        self.scheduler: Any = None
        self.membership: Membership | None = None  # set once the store is open (run_daemon)
        self.events: Events | None = None  # change events, when [events] redis_url is set
        self.twoway: TwoWay | None = None  # two-way runs and resolutions (set in run_daemon)
        self.queue = JobQueue(store, supervisor)  # every job is queued through it (freshd.queueing)
        self.sweep = Sweeps(self)

        self._reload_wanted = trio.Event()  # set by SIGHUP; one pending reload, the newest wins

    async def runnable_ids(self) -> set[int]:
        """Connections a member may lease: every stored one but those parked by this config."""
        names = await self.store.call(connections.names_by_id)
        return {cid for cid, name in names.items() if self.supervisor.parked(name) is None}

    # -- connections from the config file ---------------------------------------------------------

    async def refresh_views(self) -> None:
        """The typed views follow the connections' declarations (a REST connection's own columns):
        nothing runs when they are current."""
        from freshd.store import views

        try:
            await trio.to_thread.run_sync(views.ensure_views, self.store.url)
        except StoreUnavailable as exc:
            log.warning("store.views_not_refreshed", error=str(exc))

    async def apply_config(self, config: Config) -> None:
        """Make the store and the actors match `config` (at start and on reload).

        A connection's data is never deleted by omission: one disabled in the file (`enabled =
        false`) or gone from it (detached) is stopped and parked with every row kept, and resumes
        from its stored cursors when enabled again.  Only `purge = true` on a disabled entry
        deletes it (and says so in the activity log and the daemon log).
        """
        in_file = {spec.name: spec for spec in config.connections}
        heap.release()  # a reload may let actors, settings and the old config go (freshd.heap)
        before = {status.name: status.state for status in self.supervisor.statuses()}
        for spec in config.connections:
            if not spec.enabled and spec.purge:
                await self.supervisor.stop(spec.name)  # no actor writes to rows being deleted

        def write(conn: Any) -> tuple[dict[str, ConnectionState], dict[str, dict[str, Any]]]:
            for spec in config.connections:
                if spec.enabled:
                    connections.upsert_connection(
                        conn, self.store.keyring, name=spec.name, tenant=spec.tenant, provider=spec.provider,
                        base_url=spec.base_url, options=dict(spec.options),
                        credentials=dict(spec.credentials), source="config",
                    )
            parked: dict[str, ConnectionState] = {}
            purged: dict[str, dict[str, Any]] = {}
            for row in connections.list_heads(conn):  # no credentials opened: only names and sources matter here
                entry = in_file.get(row.name)
                if entry is None and row.source == "config":
                    parked[row.name] = ConnectionState.DETACHED
                elif entry is not None and not entry.enabled and entry.purge:
                    counts = connections.purge_connection(conn, row.name) or {}
                    purged[row.name] = {**counts, "provider": row.provider, "tenant": row.tenant}
                    activity.log_activity(conn, "connection.purged",
                                          f"connection {row.name} and its data purged (purge = true in the config)",
                                          details={"name": row.name, "by": "config", **purged[row.name]})
                elif entry is not None and not entry.enabled:
                    parked[row.name] = ConnectionState.DISABLED
                else:
                    continue
                if row.name in parked and before.get(row.name) is not parked[row.name]:  # once, when it happens
                    state = parked[row.name]
                    why = "left the config file" if state is ConnectionState.DETACHED else "is disabled in the config"
                    activity.log_activity(conn, f"connection.{state.value}",
                                          f"connection {row.name} {why}: stopped, its data is kept",
                                          connection_id=row.id)
            for pair in config.pairs:
                problem = twoway_pairs.apply_config_pair(conn, pair)
                if problem:
                    activity.log_activity(conn, "twoway.pair_refused", f"pair {pair.name} not applied: {problem}")
                    log.warning("twoway.pair_refused", pair=pair.name, error=problem)
            enabled = sorted(name for name, spec in in_file.items() if spec.enabled)
            activity.log_activity(conn, "config.applied", f"configuration applied: {len(enabled)} connection(s)",
                                  details={"connections": enabled, "parked": {n: s.value for n, s in parked.items()},
                                           "purged": sorted(purged), "source": str(config.source)})
            return parked, purged

        for secret in config.secret_values():
            logs.register_secret(secret)  # redacted from every log line from now on
        parked, purged = await self.store.call(write)
        await self.refresh_views()
        for name, what in purged.items():
            self.supervisor.forget(name)
            log.warning("connection.purged", connection=name, by="config (purge = true)", **what)
        for name, state in parked.items():
            if before.get(name) is state:
                continue  # said once, when it happened
            if state is ConnectionState.DETACHED:
                log.warning("connection.detached", connection=name,
                            message=f"connection {name} left the config file; its data is kept; "
                                    f"`freshctl connections remove {name} --purge` deletes it")
            else:
                log.info("connection.disabled", connection=name, message="stopped; its data is kept")
        for name, state in before.items():
            if state in (ConnectionState.DISABLED, ConnectionState.DETACHED) and name not in parked \
                    and name not in purged and (entry := in_file.get(name)) is not None and entry.enabled:
                log.info("connection.resumed", connection=name, was=state.value)
        self.config = config
        self.supervisor.policy = policy_settings(config)
        members = len(self.membership.alive_members()) if self.membership else 1
        self.supervisor.rate_groups.configure(rate_groups(config), share=max(1, members))
        rows = await self.store.call(connections.list_connections, self.store.keyring)
        await self.supervisor.apply(rows, parked=parked)
        if self.membership is not None:
            await self.membership.settle()  # leases follow the new config (parked ones given back)
        await self.queue_never_synced()

    def load_for_reload(self) -> Config | None:
        """The config file read afresh, or None (logged) if it is invalid: the running one stays."""
        try:
            return load_config(self.config_path)
        except ConfigError as exc:
            log.error("config.reload_refused", error=str(exc))
            # out of 'reloading', and `systemctl status` says why until the next change
            systemd.notify("READY=1", f"STATUS=reload refused, still running the previous configuration: {exc}")
            return None

    async def reload(self) -> None:
        """One reload attempt; raises StoreUnavailable if the database cannot take it (nothing is lost:
        `apply_config` is idempotent, so the attempt can simply be made again)."""
        systemd.reloading()
        if (config := self.load_for_reload()) is None:
            return  # refused: READY=1 and the reason were sent
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

    def request_reload_nowait(self) -> None:
        """SIGHUP: ask the reload task for a reload (a pending one is replaced by this newer one)."""
        self._reload_wanted.set()

    async def serve_reloads(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Applies requested reloads one at a time, apart from the signal handler, so a database outage
        defers a reload (retried with backoff until the store answers) instead of blocking SIGTERM
        or killing the daemon."""
        task_status.started()
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted = trio.Event()
            systemd.reloading()
            config = self.load_for_reload()
            if config is None:
                continue  # refused: READY=1 and the reason were sent
            delay, attempts = RELOAD_RETRY_START, 0
            while config is not None:
                try:
                    await self.apply_config(config)
                except StoreUnavailable as exc:
                    attempts += 1
                    if attempts == 1:  # once, not at every retry
                        log.warning("config.reload_deferred", retry_in=delay, error=str(exc),
                                    reason="the database is unavailable; the running configuration stays")
                        systemd.ready()  # not stuck 'reloading': the old configuration keeps running
                        systemd.status("degraded: config reload deferred, the database is unavailable")
                    else:
                        log.debug("config.reload_retry_failed", attempts=attempts, retry_in=delay, error=str(exc))
                    with trio.move_on_after(delay):
                        await self._reload_wanted.wait()
                    if self._reload_wanted.is_set():
                        break  # a newer SIGHUP: read the file again instead
                    delay = min(delay * 2, RELOAD_RETRY_MAX)
                else:
                    log.info("config.reloaded", connections=len(config.connections),
                             **({"deferred_attempts": attempts} if attempts else {}))
                    break
            systemd.ready()
            systemd.status(f"running: {len(self.supervisor.names())} connections (configuration reloaded)")

    # -- sweeps (freshd.sweeps) ---------------------------------------------------------------------

    @property
    def staleness(self) -> Staleness:
        return staleness_of(self.config)

    async def queue_never_synced(self, trigger: str = "startup") -> None:
        await self.sweep.queue_never_synced(trigger)

    async def sync_sweep(self) -> None:
        await self.sweep.sync()

    async def health_sweep(self) -> None:
        await self.sweep.health()

    async def token_sweep(self) -> None:
        await self.sweep.tokens()

    async def cleanup_sweep(self) -> None:
        await self.sweep.cleanup()

    async def daily_stats(self, day: date | None = None) -> list[dict[str, Any]]:
        return await self.sweep.daily_stats(day)

    def sweeps(self) -> list[Sweep]:
        return sweep_table(self.config.schedule, sync=self.sync_sweep, health=self.health_sweep,
                           tokens=self.token_sweep, cleanup=self.cleanup_sweep)


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
                daemon.request_reload_nowait()  # applied by serve_reloads: never blocks this loop
                continue
            log.info("signal.shutdown", signal=signal.Signals(signum).name)
            systemd.stopping()
            metrics.set_readiness(None)  # draining: /readyz says so at once
            # the deadline bounds the drain: store calls in flight finish, then everything unwinds;
            # shielded final writes (jobs marked interrupted, outcomes) get until STORE_STOP_DEADLINE,
            # then their statements are cancelled server-side, even behind a lock held forever
            root.deadline = trio.current_time() + SHUTDOWN_DEADLINE
            daemon.store.set_stop_deadline(trio.current_time() + STORE_STOP_DEADLINE)
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
    paused = heap.pause()  # no garbage collections while the fleet's actors are built (freshd.heap)
    async with AsyncExitStack() as stack:
        stack.callback(heap.resume, paused)
        stack.callback(heap.release)  # on the way out everything is let go (a test process lives on)
        systemd.status("starting: opening the store")
        url = config.database_url
        if url is None:
            url = await stack.enter_async_context(open_embedded_postgres(Path(config.state_dir)))
        keyring, key_paths = load_keyring(config.secrets.key_files, config.secrets.credential,
                                          Path(config.state_dir))
        try:
            store = await stack.enter_async_context(
                open_store(url, max_connections=config.sync.db_threads, keyring=keyring,
                           statement_timeout=config.store.statement_timeout,
                           lock_timeout=config.store.lock_timeout))
        except StoreUnavailable as exc:
            raise StoreUnavailable(f"cannot open the store: {exc}") from exc
        resealed = await store.call(connections.reseal_all, keyring)
        if resealed:
            log.info("secrets.resealed", connections=resealed, key=keyring.current.hex(),
                     keys=[str(p) for p in key_paths])
        # jobs left running are not interrupted here: another member may be running them; a job
        # whose owner died is taken over (and resumed) by whoever acquires its connection's lease

        async with trio.open_nursery() as root:
            slots = SyncSlots(max_running=config.sync.max_running,
                              tenant_max_running=config.sync.tenant_max_running, lease_ttl=config.cluster.lease_ttl)
            supervisor = Supervisor(store, slots=slots,
                                    sync_interval=timedelta(seconds=config.schedule.sync_interval)
                                    if config.schedule.scheduled_sync else None,
                                    policy=policy_settings(config), rate_groups=RateGroups(rate_groups(config)))
            await root.start(supervisor.run)
            daemon = Daemon(config, config_path, store, supervisor)
            await daemon.apply_config(config)
            membership = Membership(
                store, cluster_settings(config),
                config.cluster.member_name or default_member_name(str(config.admin.socket)),
                load_ids=daemon.runnable_ids, run_owned=supervisor.own, on_members=supervisor.rate_groups.reshare,
                load_groups=functools.partial(store.call, twoway_store.pair_groups))  # a pair runs on one member
            daemon.membership = membership
            if config.events.redis_url:
                daemon.events = Events(store, config.events, supervisor.fences)
                await root.start(daemon.events.serve, supervisor.hub)
            supervisor.lease_check = membership.owns
            # the first lease round before anything answers: this member's connections are running
            await root.start(membership.serve)
            await daemon.queue_never_synced()
            daemon.twoway = TwoWay(store, supervisor, daemon.queue, config.twoway)
            await root.start(daemon.twoway.serve)

            admin = config.admin
            handler = DaemonAdmin(daemon)
            await root.start(handler.serve_forwarded)  # commands other members forward to this one
            await root.start(
                lambda task_status: serve_admin(
                    Path(admin.socket), handler, mode=admin.socket_mode, group=admin.group,
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
            if config.http.enabled:  # the same handler, over HTTP with tenant-scoped bearer tokens
                daemon.http_url = await root.start(functools.partial(
                    serve_http_api, config.http.address, handler, token_authenticator(store),
                    request_timeout=admin.request_timeout, max_body_bytes=config.http.max_body_bytes))

            scheduler = create_scheduler()
            add_sweeps(scheduler, daemon.sweeps())
            daemon.scheduler = scheduler
            await root.start(serve_scheduler, scheduler)
            await root.start(daemon.serve_reloads)
            metrics.set_readiness(daemon.readiness)
            stack.callback(metrics.set_readiness, None)
            root.start_soon(_handle_signals, daemon, root.cancel_scope)
            root.start_soon(systemd.serve_watchdog)

            systemd.ready()
            systemd.status(f"running: {len(supervisor.names())} connections")
            log.info("daemon.ready", socket=str(admin.socket), metrics=daemon.metrics_url, http=daemon.http_url,
                     connections=len(supervisor.names()))
            task_status.started(daemon)
            root.start_soon(heap.settle, paused)
        # every actor has stopped (its job interrupted at a committed cursor): our leases are
        # free at once, so a restarted or surviving member resumes them without the lease time
        with trio.move_on_after(2.0):
            try:
                await store.call(cluster.leave, membership.id)
                log.info("cluster.left", member=membership.id)
            except StoreUnavailable as exc:
                log.warning("cluster.leave_failed", error=str(exc))
    log.info("daemon.stopped")

