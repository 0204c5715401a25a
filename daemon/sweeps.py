"""The daemon's periodic sweeps, and the jobs they queue (through freshd.queueing).

    sync      a sync for every connection whose data is no longer fresh (past the minimum gap)
    health    the store answers; never-synced and stored-nothing connections get a sync; only
              troubled connections probe their provider
    tokens    every actor refreshes its access token if it expires within the buffer
    cleanup   yesterday's statistics, then old jobs, activity and published events pruned

`sweep_table` says which runs when ([schedule] in the config); freshd.scheduler runs them.  The
sweeps read the daemon's current configuration at every run, so a reload applies at the next one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import structlog

from freshd import systemd
from freshd.config_model import Config, ScheduleConfig
from freshd.connection_state import ConnectionState
from freshd.messages import Probe, RefreshToken
from freshd.policies.breaker import BreakerState
from freshd.policies.staleness import Staleness, Verdict
from freshd.progress import stored_nothing_of_something
from freshd.queueing import JobQueue, JobRequest
from freshd.scheduler import Sweep
from freshd.store import Store, activity, connections, jobs, outbox, stats
from freshd.store.jobs import JobKind
from freshd.supervisor import Supervisor

log = structlog.get_logger(__name__)


class SweepHost(Protocol):
    """What the sweeps use of the running daemon (freshd.app.Daemon)."""

    @property
    def config(self) -> Config: ...

    @property
    def store(self) -> Store: ...

    @property
    def supervisor(self) -> Supervisor: ...

    @property
    def queue(self) -> JobQueue: ...


def staleness_of(config: Config) -> Staleness:
    s = config.staleness
    return Staleness(fresh_below=s.fresh_below, stale_after=s.stale_after, min_gap=s.min_gap)


def sweep_table(
    schedule: ScheduleConfig, *, sync: Callable[[], Awaitable[None]], health: Callable[[], Awaitable[None]],
    tokens: Callable[[], Awaitable[None]], cleanup: Callable[[], Awaitable[None]],
) -> list[Sweep]:
    return [
        Sweep("sync", sync, interval=schedule.sync_interval, jitter=schedule.jitter),
        Sweep("health", health, interval=schedule.health_interval, jitter=schedule.jitter),
        Sweep("tokens", tokens, interval=schedule.token_interval, jitter=schedule.jitter),
        Sweep("cleanup", cleanup, cron=schedule.cleanup_cron, jitter=schedule.jitter),
    ]


class Sweeps:
    """The sweeps of one daemon; each reads its current config, store and supervisor."""

    def __init__(self, daemon: SweepHost) -> None:
        self.daemon = daemon

    async def sync(self) -> None:
        """Queue a sync for every connection whose data is no longer fresh (and past the minimum gap).

        One read and one write transaction for the whole fleet; the queued jobs then start as the
        daemon's and tenants' caps allow, so 10,000 due connections never start in the same second.
        """
        d = self.daemon
        if not d.config.schedule.scheduled_sync:
            log.debug("sync.sweep", scheduled_sync=False, queued=0)
            return
        policy = staleness_of(d.config)
        now = datetime.now(UTC)
        started = await d.store.call(jobs.last_started)
        due: dict[str, JobRequest] = {}
        # failed connections come first (list_sync_states' order), so they take the first free slots
        for state in await d.store.call(connections.list_sync_states):
            if d.supervisor.parked(state.name):
                continue  # disabled or detached: kept, not synced
            decision = policy.decide(now=now, last_success_at=state.last_success_at,
                                     last_started_at=started.get(state.id), scheduled=True)
            if decision.verdict is Verdict.SYNC:
                due[state.name] = JobRequest(state.id,
                                             JobKind.INCREMENTAL if state.last_success_at else JobKind.INITIAL)
        queued = await d.queue.queue_jobs(due, "schedule", owned_only=True)
        log.info("sync.sweep", due=len(due), queued=len(queued))

    async def health(self) -> None:
        """Cheap checks, for a fleet of thousands: the store answers; connections that never
        completed a sync get one; and only connections with a sign of trouble (an error, a breaker
        not closed, stale data, a failed probe) make their provider's cheap call.  A connection
        whose last sync succeeded within the staleness window is healthy by that sync."""
        d = self.daemon
        if await d.store.ping():
            await self.queue_never_synced("health")
            await self.queue_stored_nothing()
        policy, now = staleness_of(d.config), datetime.now(UTC)
        probed = 0
        for status in d.supervisor.statuses():
            troubled = (status.state is ConnectionState.ERROR or status.breaker is not BreakerState.CLOSED
                        or status.health not in (None, "ok") or policy.is_stale(now, status.last_success_at))
            if troubled and status.state in (ConnectionState.IDLE, ConnectionState.ERROR):
                probed += d.supervisor.send_nowait(status.name, Probe())
        log.info("health.sweep", connections=len(d.supervisor.names()), probed=probed)
        systemd.status(f"running: {len(d.supervisor.names())} connections, store "
                       f"{'up' if d.store.available else 'unavailable'}")

    async def tokens(self) -> None:
        """Every actor refreshes its access token if it expires within the buffer (single-flight)."""
        sent = self.daemon.supervisor.broadcast_nowait(RefreshToken())
        log.debug("tokens.sweep", connections=sent)

    async def cleanup(self) -> None:
        d = self.daemon
        sync = d.config.sync
        await self.daily_stats()  # before pruning: yesterday's jobs are still all there
        pruned = await d.store.call(
            jobs.prune_jobs, keep_per_connection=sync.job_history,
            max_age=timedelta(seconds=sync.job_max_age),
        )
        await d.store.call(activity.prune_activity, max_age=timedelta(seconds=sync.job_max_age))
        published = await d.store.call(outbox.prune, timedelta(seconds=d.config.events.retention))
        log.info("cleanup.done", jobs_pruned=pruned, events_pruned=published)

    async def daily_stats(self, day: date | None = None) -> list[dict[str, Any]]:
        """Compute and store `day`'s statistics (default: yesterday, UTC), drop those past the
        retention, and log one summary line."""
        today = datetime.now(UTC).date()
        day = day or today - timedelta(days=1)
        retention = self.daemon.config.sync.stats_retention_days

        def compute(conn: Any) -> list[dict[str, Any]]:
            rows = stats.compute_day(conn, day)
            stats.prune_stats(conn, keep_days=retention, today=today)
            return rows

        rows = await self.daemon.store.call(compute)
        syncs = sum(r["syncs"] for r in rows)
        successes = sum(r["successes"] for r in rows)
        log.info("stats.daily", day=day.isoformat(), connections=len(rows), syncs=syncs, successes=successes,
                 success_rate=round(successes / syncs, 4) if syncs else None,
                 records=sum(sum(r["records"].values()) for r in rows),
                 failed_items=sum(r["failed_items"] for r in rows))
        return rows

    # -- jobs the sweeps queue besides the scheduled ones ---------------------------------------------

    async def queue_never_synced(self, trigger: str = "startup") -> None:
        """A connection that never completed a sync gets one queued: nobody has to remember."""
        d = self.daemon
        states = await d.store.call(connections.list_sync_states)
        never = {s.id: s.name for s in states if s.last_success_at is None and not d.supervisor.parked(s.name)}
        for cid in await d.store.call(jobs.ever_succeeded, list(never)):
            never.pop(cid)  # its outcome is being written: not a connection that never synced
        await d.queue.queue_jobs({name: JobRequest(cid, JobKind.INITIAL) for cid, name in never.items()}, trigger,
                                 owned_only=True)

    async def queue_stored_nothing(self) -> None:
        """Re-queue connections whose last completed sync stored zero records while the provider
        reported a non-zero total (past the minimum gap): their data is missing, not empty."""
        d = self.daemon
        last = await d.store.call(jobs.last_successful_jobs)
        suspects = {job.connection: job for job in last.values() if stored_nothing_of_something(job)}
        if not suspects:
            return
        started, now, policy = await d.store.call(jobs.last_started), datetime.now(UTC), staleness_of(d.config)
        wanted = {name: JobRequest(job.connection_id, JobKind.INCREMENTAL) for name, job in suspects.items()
                  if policy.decide(now=now, last_success_at=None, last_started_at=started.get(job.connection_id),
                                   scheduled=False).verdict is Verdict.SYNC}
        for name, entry in (await d.queue.queue_jobs(wanted, "health", owned_only=True)).items():
            log.warning("health.stored_nothing", connection=name, last_job=suspects[name].id, job=entry.job.id)
