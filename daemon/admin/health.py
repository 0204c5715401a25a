"""Admin commands about the daemon itself: health, members, schedule, trigger.

`health` is the figures monitoring wants and a verdict (healthy unless something needs a person:
the database, the scheduler, connections in error, unpublished change events, connections no
member owns); `members` the daemons sharing the database; `schedule` and `trigger` the sweeps.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from freshd import scheduler
from freshd.admin.lookups import CommandGroup, Handler
from freshd.admin.protocol import Caller, ErrorCode
from freshd.admin.views import iso
from freshd.errors import AdminError
from freshd.store import cluster, connections, jobs, outbox, records

EVENTS_LAG_LIMIT = 300.0  # unpublished change events older than this make `health` unhealthy


class HealthCommands(CommandGroup):
    def handlers(self) -> dict[str, Handler]:
        return {"health": self.health, "members": self.members, "schedule": self.schedule, "trigger": self.trigger}

    async def members(self, args: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        """The daemons sharing this database and how many connections each runs."""
        ttl = self.daemon.config.cluster.lease_ttl
        members = await self.daemon.store.call(cluster.members, ttl)
        owners = await self.daemon.store.call(cluster.owners)
        counts: dict[str, int] = {}
        for owner in owners.values():
            if owner is not None:
                counts[owner] = counts.get(owner, 0) + 1
        me = self.daemon.membership.id if self.daemon.membership else None
        return [
            {"id": m.id, "name": m.name, "host": m.host, "pid": m.pid, "version": m.version,
             "started_at": iso(m.started_at), "heartbeat_at": iso(m.heartbeat_at), "alive": m.alive,
             "connections": counts.get(m.id, 0), "self": m.id == me}
            for m in members
        ]

    async def health(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """The figures monitoring wants, and a verdict: healthy unless something needs a person."""
        store_ok = await self.daemon.store.ping()
        scheduler_ok = bool(self.daemon.scheduler is not None and self.daemon.scheduler.running)
        statuses = [s for s in self.daemon.supervisor.statuses() if caller.sees(s.tenant)]
        by_state: dict[str, int] = {}
        for status in statuses:
            by_state[status.state.value] = by_state.get(status.state.value, 0) + 1
        job_stats = await self.daemon.store.call(jobs.job_stats) if store_ok else {}
        now = datetime.now(UTC)
        ages = [(now - s.last_success_at).total_seconds() for s in statuses if s.last_success_at]
        problems = [] if store_ok else ["the database is unavailable"]
        if not scheduler_ok:
            problems.append("the scheduler is not running")
        problems += [f"{s.name}: {s.state.value}" + (f" ({s.error})" if s.error else "") for s in statuses
                     if s.state.value in ("error", "reauth_required", "restarting")]
        events_lag = None
        if store_ok and self.daemon.events is not None:
            events_lag = await self.daemon.store.call(outbox.lag)
            oldest = events_lag.get("oldest_seconds") or 0
            if oldest > EVENTS_LAG_LIMIT:
                problems.append(f"{events_lag['pending']} change event(s) unpublished, the oldest {oldest:.0f} s old "
                                "(is Redis reachable?)")
        if store_ok:
            cfg = self.daemon.config.cluster
            parked = [s.name for s in self.daemon.supervisor.statuses() if self.daemon.supervisor.parked(s.name)]
            orphans = await self.daemon.store.call(cluster.unowned_for, cfg.lease_ttl + cfg.handover, parked)
            if orphans:
                problems.append(f"{orphans} connection(s) without an owner for over "
                                f"{cfg.lease_ttl + cfg.handover:g} s (a member died and nobody took over)")
        total = job_stats.get("total", 0)
        ids = {s.name: s.id for s in await self.daemon.store.call(connections.list_sync_states)} if store_ok else {}
        counts = await self.daemon.store.call(records.count_by_entity, list(ids.values())) if store_ok else {}
        return {
            "healthy": not problems,
            "problems": problems,
            "store": "up" if store_ok else "unavailable",
            "scheduler": "running" if scheduler_ok else "stopped",
            "syncs": {"total": total, "successful": job_stats.get("successful", 0),
                      "success_rate": round(job_stats.get("successful", 0) / total, 4) if total else None,
                      "active": job_stats.get("active", 0)},
            "connections": by_state,
            "oldest_data_age_seconds": round(max(ages)) if ages else None,
            "events": events_lag,  # unpublished change events (None: events are off)
            # live records per connection and entity
            "records": {s.name: counts.get(ids.get(s.name, -1), {}) for s in statuses},
        }

    async def schedule(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {"sweeps": scheduler.describe(self.daemon.scheduler) if self.daemon.scheduler else []}

    async def trigger(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        if caller.tenants is not None:
            raise AdminError(ErrorCode.FORBIDDEN, "sweeps act on every tenant: only administrators may trigger them")
        try:
            await scheduler.run_now(self.daemon.scheduler, args["sweep"])
        except KeyError as exc:
            raise AdminError(ErrorCode.NOT_FOUND, str(exc.args[0])) from None
        except scheduler.SweepBusy:
            raise AdminError(ErrorCode.CONFLICT, f"sweep {args['sweep']!r} is already running") from None
        return {"sweep": args["sweep"], "started": True}
