"""The daemon's periodic sweeps on APScheduler 3.11, inside its nursery, with no thread.

The documented way to run it::

    scheduler = create_scheduler()                      # UTC, real wall clock
    add_sweeps(scheduler, [
        Sweep("sync", sync_sweep, interval=7200, jitter=300),
        Sweep("cleanup", cleanup_sweep, cron="0 2 * * *", jitter=600),
    ])
    await nursery.start(serve_scheduler, scheduler)     # returns once the scheduler is running
    ...
    describe(scheduler)                                 # for `freshctl status` / the admin socket
    await run_now(scheduler, "sync")                    # for `freshctl trigger sync`

Shape of the running thing (all inside `serve_scheduler`'s one nursery)::

    serve_scheduler
      ├── wake-up loop     _process_jobs(), then sleep until the next fire time, or until wakeup()
      └── one task per run  TrioExecutor: `await sweep()`; errors logged, never propagated

Lifetime: cancel the enclosing scope and every running sweep is cancelled with the nursery.
`scheduler.shutdown(wait=True)` from a trio task stops scheduling and lets `serve_scheduler`
return once the running sweeps have finished (a drain); `shutdown(wait=False)` cancels them.
A scheduler is served once: shutting down drops its in-memory jobs (APScheduler's
MemoryJobStore), so serving it again raises; create a new one.

The scheduler and executor on trio, with their clock and failure policy, are
freshd.apscheduler_trio.  The sweeps' own policy:
  * Sweeps default to max_instances=1, coalesce=True and no misfire limit: after a stall or a
    suspend, a late sweep runs once rather than not at all.
  * Jitter keeps daemons (and sweeps) from firing in the same second.  Interval sweeps get a
    random phase, drawn once, in [0, jitter): the period stays exact.  (IntervalTrigger's own
    jitter is added to the previous *jittered* fire time, so the schedule drifts later by
    jitter/2 per run on average; it is not used.)  Cron sweeps use CronTrigger's jitter, a fresh
    delay in [0, jitter) per run, which does not drift.
  * Cron expressions are standard crontab (minute hour day month weekday, weekday 0 or 7 =
    Sunday), evaluated in the scheduler's time zone (UTC unless configured).  APScheduler 3's
    `CronTrigger.from_crontab` counts weekdays from Monday (its issue 286); the weekday field is
    translated to names here so "0 2 * * 0" means Sunday, as in crontab(5).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import structlog
import trio
from apscheduler.executors.base import MaxInstancesReachedError
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import iscoroutinefunction_partial

from freshd.apscheduler_trio import DEFAULT_MAX_SLEEP, Now, TrioExecutor, TrioScheduler, utc_now

__all__ = [
    "Sweep",
    "SweepBusy",
    "add_sweeps",
    "create_scheduler",
    "describe",
    "run_now",
    "serve_scheduler",
]

log = structlog.get_logger(__name__)

SweepFunc = Callable[[], Awaitable[Any]]


class SweepBusy(Exception):
    """`run_now` refused: the sweep already has its maximum number of runs going."""


# -- lifecycle -------------------------------------------------------------------------------------


def create_scheduler(
    *,
    now: Now = utc_now,
    timezone: tzinfo = UTC,
    max_sleep: float = DEFAULT_MAX_SLEEP,
) -> TrioScheduler:
    """A TrioScheduler with an in-memory job store and a TrioExecutor; run it with serve_scheduler."""
    return TrioScheduler(now=now, timezone=timezone, max_sleep=max_sleep)


async def serve_scheduler(
    scheduler: TrioScheduler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run `scheduler` on this trio loop until cancelled (or until `scheduler.shutdown()`).

    Use ``await nursery.start(serve_scheduler, scheduler)``: it returns once the scheduler is
    running (jobs added earlier are scheduled by then).  Cancelling the enclosing scope cancels
    the running sweeps and shuts the scheduler down; no thread is ever started.
    """
    scheduler._claim()
    try:
        scheduler.start()  # schedules the jobs added so far; runs nothing yet
        async with trio.open_nursery() as nursery:
            scheduler._nursery = nursery
            log.info("scheduler.started", jobs=len(scheduler.get_jobs()))
            task_status.started()
            await scheduler._serve_wakeups()
    finally:
        if scheduler.state != STATE_STOPPED:
            scheduler.shutdown(wait=False)
        scheduler._unbind()
        log.info("scheduler.stopped")


# -- sweeps: the declarative layer the daemon uses -----------------------------------------------------


_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _cron_day(token: str) -> int:
    if token in _CRON_DAYS:
        return _CRON_DAYS.index(token)
    day = int(token)
    if not 0 <= day <= 7:
        raise ValueError(f"weekday {token!r} out of range 0-7")
    return day


def _cron_day_of_week(field: str) -> str:
    """A crontab(5) weekday field (0 or 7 = Sunday) as weekday names, which APScheduler 3 reads right."""
    field = field.lower()
    if field == "*":
        return "*"
    days: set[int] = set()
    for term in field.split(","):
        span, _, step_text = term.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            low, high = 0, 6
        elif "-" in span:
            first, last = span.split("-", 1)
            low, high = _cron_day(first), _cron_day(last)
        else:
            low = _cron_day(span)
            high = 6 if step_text else low
        if high < low or step < 1:
            raise ValueError(f"bad weekday term {term!r}")
        days.update(day % 7 for day in range(low, high + 1, step))
    return ",".join(_CRON_DAYS[day] for day in sorted(days))


def cron_trigger(expr: str, *, timezone: tzinfo = UTC, jitter: float = 0.0) -> Any:
    """A CronTrigger from a standard 5-field crontab expression (weekday 0/7 = Sunday)."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {expr!r}: expected 5 fields, got {len(fields)}")
    minute, hour, day, month, weekday = fields
    return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                       day_of_week=_cron_day_of_week(weekday), timezone=timezone, jitter=jitter or None)


@dataclass(frozen=True, slots=True)
class Sweep:
    """A periodic sweep: exactly one of `interval` (seconds) or `cron` (crontab expression).

    `jitter` (seconds) spreads firing: a fixed random phase for interval sweeps, a fresh random
    delay per run for cron sweeps.  Runs never overlap unless `max_instances` says so; a run
    later than `misfire_grace_time` seconds is skipped (None: never too late).
    """

    name: str
    func: SweepFunc
    _: KW_ONLY
    interval: float | None = None
    cron: str | None = None
    jitter: float = 0.0
    max_instances: int = 1
    misfire_grace_time: float | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"sweep name {self.name!r}: use letters, digits, '-' and '_'")
        if not iscoroutinefunction_partial(self.func):
            raise TypeError(f"sweep {self.name!r}: {self.func!r} is not an async function")
        if (self.interval is None) == (self.cron is None):
            raise ValueError(f"sweep {self.name!r}: give exactly one of interval= or cron=")
        if self.interval is not None and self.interval <= 0:
            raise ValueError(f"sweep {self.name!r}: interval must be positive, got {self.interval!r}")
        if self.cron is not None:
            cron_trigger(self.cron)  # raises ValueError on a bad expression
        if self.jitter < 0:
            raise ValueError(f"sweep {self.name!r}: jitter must be >= 0, got {self.jitter!r}")
        if self.max_instances < 1:
            raise ValueError(f"sweep {self.name!r}: max_instances must be >= 1")

    @property
    def schedule(self) -> str:
        """The schedule as a person wrote it: ``every 7200s`` or ``cron 0 2 * * *`` (+ jitter)."""
        text = f"every {self.interval:g}s" if self.interval is not None else f"cron {self.cron}"
        return f"{text} (jitter {self.jitter:g}s)" if self.jitter else text


def add_sweeps(scheduler: TrioScheduler, sweeps: Iterable[Sweep], *,
               rng: random.Random | None = None) -> None:
    """Schedule `sweeps` (job id = sweep name; an existing sweep of the same name is replaced).

    May be called before or while `serve_scheduler` runs.  `rng` draws the interval phases.
    """
    sweeps = list(sweeps)
    names = [sweep.name for sweep in sweeps]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate sweep names: {', '.join(duplicates)}")
    draw = rng or random.Random()
    for sweep in sweeps:
        if sweep.interval is not None:
            phase = draw.uniform(0, sweep.jitter) if sweep.jitter else 0.0
            trigger = IntervalTrigger(
                seconds=sweep.interval, timezone=scheduler.timezone,
                start_date=scheduler.now() + timedelta(seconds=sweep.interval + phase))
        else:
            assert sweep.cron is not None
            trigger = cron_trigger(sweep.cron, timezone=scheduler.timezone, jitter=sweep.jitter)
        scheduler.add_job(sweep.func, trigger, id=sweep.name, name=sweep.name,
                          max_instances=sweep.max_instances, coalesce=True,
                          misfire_grace_time=sweep.misfire_grace_time, replace_existing=True)
        scheduler._sweeps[sweep.name] = sweep


def describe(scheduler: TrioScheduler) -> list[dict[str, Any]]:
    """One JSON-ready record per job, by id: what `freshctl` shows.

    Keys: id, name, trigger (the sweep's schedule, or APScheduler's trigger text), next_run_time
    (ISO 8601 UTC; None when paused or not yet scheduled), paused, running (runs going now).
    """
    executor = scheduler._executors.get("default")
    records = []
    for job in sorted(scheduler.get_jobs(), key=lambda job: str(job.id)):
        scheduled = hasattr(job, "next_run_time")
        next_run: datetime | None = job.next_run_time if scheduled else None
        sweep = scheduler._sweeps.get(job.id)
        records.append({
            "id": job.id,
            "name": job.name,
            "trigger": sweep.schedule if sweep is not None else str(job.trigger),
            "next_run_time": next_run.astimezone(UTC).isoformat() if next_run else None,
            "paused": scheduled and next_run is None,
            "running": executor.running(job.id) if isinstance(executor, TrioExecutor) else 0,
        })
    return records


async def run_now(scheduler: TrioScheduler, name: str) -> None:
    """Start sweep `name` now, outside its schedule (its schedule is unchanged).

    Returns once the run has started; it goes on in the scheduler's nursery and is logged and
    reported like a scheduled run.  Raises KeyError naming the valid sweeps for an unknown name,
    SweepBusy if it already has max_instances runs going, RuntimeError if not being served.
    """
    job = scheduler.get_job(name)
    if job is None:
        valid = ", ".join(sorted(str(job.id) for job in scheduler.get_jobs())) or "(none)"
        raise KeyError(f"unknown sweep {name!r}; valid sweeps: {valid}")
    executor = scheduler._lookup_executor(job.executor)
    if not isinstance(executor, TrioExecutor):
        raise TypeError(f"sweep {name!r} does not run on a TrioExecutor")
    try:
        await executor.start_now(job, scheduler.now())
    except MaxInstancesReachedError as exc:
        raise SweepBusy(f"sweep {name!r} is already running ({job.max_instances} at most)") from exc
