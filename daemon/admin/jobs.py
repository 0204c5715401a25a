"""Admin commands about jobs: sync, ensure, jobs, job, pause, resume, cancel, retry, watch, stats.

`sync` queues one job per connection (a live job is the answer) within the minimum gap unless
forced, its options (--entities, --since, --dry-run) checked against the connection first;
`ensure` queues one only when the data is missing or stale.  `watch` streams progress: from the
supervisor's hub for jobs run here, by polling the row for a job another member runs.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import structlog
import trio

from freshd.admin.lookups import CommandGroup, Handler
from freshd.admin.protocol import Caller, ErrorCode
from freshd.admin.views import iso, job_json
from freshd.connectors.base import connector_class
from freshd.errors import AdminError, ConfigError
from freshd.messages import CancelJob, PauseJob, ResumeJob
from freshd.policies.staleness import Verdict
from freshd.store import activity, connections, jobs, records, stats
from freshd.store.jobs import JobKind, JobOptions, JobRequest, JobRow, JobStatus
from freshd.supervisor import settings_of

log = structlog.get_logger(__name__)

REMOTE_WATCH_POLL = 0.5  # `watch` of a job another member runs reads its row this often


def parse_since(text: str) -> datetime:
    """`sync --since`: a date (midnight UTC) or a time (UTC unless it says otherwise), not in the future."""
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        raise AdminError(ErrorCode.BAD_REQUEST, f"since: expected a date or time in ISO 8601 (2026-01-31 or "
                         f"2026-01-31T12:00:00Z), got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    if moment > datetime.now(UTC):
        raise AdminError(ErrorCode.BAD_REQUEST, f"since: {text!r} is in the future")
    return moment


class JobCommands(CommandGroup):
    def handlers(self) -> dict[str, Handler]:
        return {
            "sync": self.sync,
            "jobs": self.jobs,
            "job": self.job,
            "pause": self.pause,
            "resume": self.resume,
            "cancel": self.cancel,
            "watch": self.watch,
            "retry": self.retry,
            "ensure": self.ensure,
            "stats": self.stats,
        }

    def _run_options(self, row: connections.ConnectionRow, args: dict[str, Any], kind: JobKind) -> JobOptions:
        """`sync --entities/--since/--dry-run`, checked against the connection: bad input raises, changes nothing."""
        if not (args.get("entities") or args.get("since") or args.get("dry_run")):
            return JobOptions()
        try:
            cls = connector_class(row.provider)
            streams = cls.streams_for(settings_of(row))
        except ConfigError as exc:
            raise AdminError(ErrorCode.CONFLICT, f"{row.name}: invalid connection settings: {exc}") from None
        configured = row.options.get("entities")
        valid = [s for s in streams if not configured or s.name in configured]
        by_name = {s.name: s for s in valid}
        wanted = list(dict.fromkeys(args.get("entities") or []))
        unknown = [name for name in wanted if name not in by_name]
        if unknown:
            raise AdminError(ErrorCode.BAD_REQUEST, f"{row.name}: unknown entit{'y' if len(unknown) == 1 else 'ies'} "
                             f"{', '.join(map(repr, unknown))}; valid: {', '.join(by_name) or 'none'}")
        since = None
        if args.get("since"):
            if kind is JobKind.FULL:
                raise AdminError(ErrorCode.BAD_REQUEST, "--since re-reads incrementally from a date; a full sync "
                                 "(--full) lists everything: use one or the other")
            moment = parse_since(args["since"])
            for name in wanted or list(by_name):
                if (problem := cls.since_problem(by_name[name])) is not None:
                    raise AdminError(ErrorCode.BAD_REQUEST, f"--since: {problem}" + (
                        "" if wanted else "; choose entities that support it with --entities"))
            since = moment.isoformat()
        if args.get("dry_run") and args.get("confirm_deletes"):
            raise AdminError(ErrorCode.BAD_REQUEST, "--dry-run applies nothing: --confirm-deletes cannot go with it")
        # in the connector's order, so a job lists its entities as a full one would
        entities = tuple(s.name for s in valid if s.name in wanted) or None
        return JobOptions(entities=entities, since=since, dry_run=bool(args.get("dry_run")))

    async def sync(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        row = await self._row(args["name"], caller)
        self._require_active(row.name)
        kind = JobKind.FULL if args.get("full") else JobKind.INCREMENTAL
        confirm_deletes = bool(args.get("confirm_deletes"))
        if confirm_deletes and kind is not JobKind.FULL:
            raise AdminError(ErrorCode.BAD_REQUEST, "--confirm-deletes applies to a full sync only "
                             "(deletions are inferred from a complete listing): add --full")
        options = self._run_options(row, args, kind)
        live = await self.daemon.store.call(jobs.live_job, row.id)
        if live is not None:  # one sync per connection: the existing job is the answer
            return {"job_id": live.id, "created": False, "status": live.status.value}
        force = bool(args.get("force"))
        last_started = (await self.daemon.store.call(jobs.last_started)).get(row.id)
        decision = self.daemon.staleness.decide(now=datetime.now(UTC), last_success_at=row.last_success_at,
                                                last_started_at=last_started, scheduled=False, force=force)
        if decision.verdict is Verdict.DEFER_GAP:
            raise AdminError(ErrorCode.CONFLICT, f"{row.name}: {decision.reason}; retry after "
                             f"{iso(decision.retry_at)} or use --force")
        if force:
            log.warning("sync.forced", connection=row.name, peer_uid=caller.peer.uid)
            await self.daemon.store.call(activity.log_activity, "sync.forced",
                                         f"sync of {row.name} forced by {caller.who}",
                                         connection_id=row.id)
        if confirm_deletes:
            log.warning("sync.confirm_deletes", connection=row.name, peer_uid=caller.peer.uid)
            await self.daemon.store.call(activity.log_activity, "sync.confirm_deletes",
                                         f"full sync of {row.name} allowed to apply held deletions by "
                                         f"{caller.who}", connection_id=row.id)
        job, created = await self.daemon.queue.queue_job(
            row.name, JobRequest(row.id, kind, options, confirm_deletes=confirm_deletes), "manual")
        return {"job_id": job.id, "created": created, "status": job.status.value, "options": job.options}

    async def ensure(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Make sure the connection's data is there and fresh: queue a sync if it never completed one,
        lacks records of an entity it syncs (that the provider did not report empty), or is stale;
        else answer with the data's age.  Idempotent: a live job is the answer, never a second one."""
        row = await self._row(args["name"], caller)
        now, policy = datetime.now(UTC), self.daemon.staleness
        age = round(policy.age(now, row.last_success_at)) if row.last_success_at else None
        live = await self.daemon.store.call(jobs.live_job, row.id)
        if live is not None:
            return {"job_id": live.id, "queued": False, "reason": f"job {live.id} is already {live.status.value}",
                    "status": live.status.value, "data_age_seconds": age}
        reason, missing = None, []
        kind = JobKind.INCREMENTAL if row.last_success_at else JobKind.INITIAL
        if row.last_success_at is None:
            reason = "it never completed a sync"
        else:
            missing = await self._entities_without_records(row)
            if missing:
                # an incremental listing would not bring back what is older than its cursor: list them whole
                reason, kind = f"no records for {', '.join(missing)}", JobKind.FULL
            elif policy.is_stale(now, row.last_success_at):
                reason = f"the data is stale ({age} s old; stale after {policy.stale_after:g} s)"
        if reason is None:
            return {"job_id": None, "queued": False, "data_age_seconds": age,
                    "reason": f"the data is fresh enough ({age} s old; stale after {policy.stale_after:g} s)"}
        job, created = await self.daemon.queue.queue_job(
            row.name, JobRequest(row.id, kind, JobOptions(entities=tuple(missing) or None)), "ensure")
        log.info("sync.ensure", connection=row.name, job=job.id, queued=created, reason=reason)
        return {"job_id": job.id, "queued": created, "reason": reason, "status": job.status.value,
                "data_age_seconds": age}

    async def _entities_without_records(self, row: connections.ConnectionRow) -> list[str]:
        """Entities the connection syncs with no live record, unless its last sync saw the provider's
        listing of them empty (a total of 0, or done with nothing to process)."""
        try:
            streams = connector_class(row.provider).streams_for(settings_of(row))
        except ConfigError:
            return []
        configured = row.options.get("entities")
        names = [s.name for s in streams if not configured or s.name in configured]
        counts = (await self.daemon.store.call(records.count_by_entity, [row.id])).get(row.id, {})
        last = (await self.daemon.store.call(jobs.last_successful_jobs, [row.id])).get(row.id)
        seen: dict[str, Any] = dict(last.progress) if last is not None else {}

        def empty_at_provider(name: str) -> bool:
            p = seen.get(name) or {}
            return p.get("total") == 0 or (p.get("state") == "done" and not p.get("total") and not p.get("processed"))

        return [n for n in names if not counts.get(n) and not empty_at_provider(n)]

    async def stats(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """The stored daily statistics of the last `days` days (the cleanup sweep computes each day's)."""
        if args.get("connection"):
            await self._row(args["connection"], caller)
        since = datetime.now(UTC).date() - timedelta(days=args.get("days", 7))
        rows = await self.daemon.store.call(stats.list_stats, since=since, connection=args.get("connection"),
                                            tenant=args.get("tenant"), tenants=caller.tenants)
        out = []
        tenants: dict[tuple[str, str], dict[str, Any]] = {}
        for r in rows:
            rate = round(r["successes"] / r["syncs"], 4) if r["syncs"] else None
            out.append({**r, "day": r["day"].isoformat(), "success_rate": rate})
            t = tenants.setdefault((r["day"].isoformat(), r["tenant"]), {
                "day": r["day"].isoformat(), "tenant": r["tenant"], "connections": 0, "syncs": 0, "successes": 0,
                "records": 0, "created": 0, "changed": 0, "deleted": 0, "failed_items": 0, "errors": {}})
            t["connections"] += 1
            for key in ("syncs", "successes", "created", "changed", "deleted", "failed_items"):
                t[key] += r[key]
            t["records"] += sum(r["records"].values())
            for kind, n in r["errors"].items():
                t["errors"][kind] = t["errors"].get(kind, 0) + n
        for t in tenants.values():
            t["success_rate"] = round(t["successes"] / t["syncs"], 4) if t["syncs"] else None
        return {"days": args.get("days", 7), "retention_days": self.daemon.config.sync.stats_retention_days,
                "stats": out, "tenants": list(tenants.values())}

    async def jobs(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        if args.get("connection"):
            await self._row(args["connection"], caller)
        status = args.get("status")
        if status is not None and status not in {s.value for s in JobStatus}:
            raise AdminError(ErrorCode.BAD_REQUEST, f"jobs: unknown status {status!r}; valid: "
                             f"{', '.join(s.value for s in JobStatus)}")
        rows, total = await self.daemon.store.call(
            jobs.list_jobs, connection=args.get("connection"), tenant=args.get("tenant"), tenants=caller.tenants,
            status=JobStatus(status) if status else None, limit=args.get("limit", 50),
            offset=args.get("offset", 0),
        )
        return {"jobs": [job_json(j, self._live_progress(j)) for j in rows], "total": total}

    async def job(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        job = await self._job(args["id"], caller)
        failed = await self.daemon.store.call(jobs.failed_items, job.id)
        return {**job_json(job, self._live_progress(job)),
                "failed_items": [{**f, "created_at": iso(f["created_at"])} for f in failed[:100]],
                "failed_items_total": len(failed)}

    async def _control(
        self, args: dict[str, Any], caller: Caller, message: type[PauseJob | ResumeJob | CancelJob]
    ) -> dict[str, Any]:
        job = await self._job(args["id"], caller)
        if job.status not in jobs.LIVE:
            raise AdminError(ErrorCode.CONFLICT, f"job {job.id} is {job.status.value}")
        if not self.daemon.supervisor.send_nowait(job.connection, message(job.id)):
            raise AdminError(ErrorCode.UNAVAILABLE, f"connection {job.connection!r} is not running")
        return {"job_id": job.id, "requested": message.__name__.removesuffix("Job").lower()}

    async def pause(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return await self._control(args, caller, PauseJob)

    async def resume(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return await self._control(args, caller, ResumeJob)

    async def cancel(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return await self._control(args, caller, CancelJob)

    async def retry(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Queue a job that fetches again, by id, the items `job` recorded as failed."""
        job = await self._job(args["id"], caller)
        self._require_active(job.connection)
        if job.status in jobs.LIVE:
            raise AdminError(ErrorCode.CONFLICT, f"job {job.id} is {job.status.value}: retry it once it has ended")
        failed = await self.daemon.store.call(jobs.failed_items, job.id)
        if not failed:
            raise AdminError(ErrorCode.CONFLICT, f"job {job.id} has no failed items to retry")
        retry, created = await self.daemon.queue.queue_job(
            job.connection, JobRequest(job.connection_id, JobKind.RETRY, retry_of=job.id), "manual")
        if not created:
            raise AdminError(ErrorCode.CONFLICT, f"connection {job.connection!r} already has live job {retry.id}")
        return {"job_id": retry.id, "retry_of": job.id, "items": len(failed)}

    # -- live progress ------------------------------------------------------------------------------

    async def watch(self, args: dict[str, Any], caller: Caller) -> AsyncIterator[dict[str, Any]]:
        """Subscribe to progress: one job until it ends, or (`all`) every job until the client leaves."""
        job_id = args.get("id")
        if job_id is None and not args.get("all"):
            raise AdminError(ErrorCode.BAD_REQUEST, "watch: give a job id or all=true")
        if job_id is not None:
            await self._job(job_id, caller)  # not_found before the stream starts
        return self._watch(job_id, caller)

    async def _watch_remote(self, job: JobRow, caller: Caller) -> AsyncIterator[dict[str, Any]]:
        """A job another member runs: its row, polled, sent whenever its progress or status moves."""
        last: dict[str, Any] | None = None
        for _ in itertools.count():  # until the job ends or the client leaves
            shown = job_json(job)
            if shown != last:
                yield {"job": shown}
                last = shown
            if job.status in jobs.FINISHED:
                return
            await trio.sleep(REMOTE_WATCH_POLL)
            job = await self._job(job.id, caller)

    async def _watch(self, job_id: int | None, caller: Caller) -> AsyncIterator[dict[str, Any]]:
        if job_id is not None:
            job = await self._job(job_id, caller)
            if not self.daemon.supervisor.owns(job.connection) and job.status not in jobs.FINISHED:
                async for event in self._watch_remote(job, caller):
                    yield event
                return
        # subscribe first, then take the snapshot: no update can fall between the two
        with self.daemon.supervisor.hub.subscribe() as updates:
            if job_id is not None:
                snapshot = [await self._job(job_id, caller)]
            else:
                snapshot = [j for j in (await self.daemon.store.call(jobs.list_jobs, tenants=caller.tenants,
                                                                      limit=1000))[0] if j.status in jobs.LIVE]
            for job in snapshot:
                yield {"job": job_json(job, self._live_progress(job))}
                if job_id is not None and job.status in jobs.FINISHED:
                    return
            async for job, progress in updates:
                if (job_id is not None and job.id != job_id) or not caller.sees(job.tenant):
                    continue
                yield {"job": job_json(job, progress)}
                if job_id is not None and job.status in jobs.FINISHED:
                    return
