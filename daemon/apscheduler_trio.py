"""APScheduler 3.11 adapted to the trio loop: TrioScheduler (its clock and wake-ups) and TrioExecutor.

The scheduler's wake-ups are one trio task and every run is a task in the nursery
`freshd.scheduler.serve_scheduler` owns; no thread is ever started.  This module is the
adaptation of APScheduler's BaseScheduler and BaseExecutor; the daemon's sweeps, their schedules
and the lifecycle are freshd.scheduler.

Policy, stated once:
  * Job functions must be ``async def``; blocking work belongs in ``trio.to_thread.run_sync``.
    A sweep that raises is logged (``sweep.failed``) and reported as EVENT_JOB_ERROR; the next
    run happens as scheduled.  ``Cancelled`` is never swallowed.
  * max_instances / coalesce / misfire_grace_time keep APScheduler's meaning.  A run skipped
    because the previous one is still going is logged (``sweep.skipped``) and reported as
    EVENT_JOB_MAX_INSTANCES.
  * Time.  APScheduler computes fire times from the wall clock.  Every place it reads the clock
    in the paths used here is overridden to read the injected ``now()`` instead:
    `_process_jobs` (due jobs and the wait), `_real_add_job` (first run time), `reschedule_job`,
    `resume_job`, `_create_trigger` (an ``interval`` trigger's default start_date, a ``date``
    trigger's default run_date) and the executor's misfire check.  Trigger *instances* built by
    a caller read `datetime.now` themselves: give them an explicit start/run date
    (`add_sweeps` does).  Waits are trio sleeps of the same number of seconds, capped at
    `max_sleep` so a jump of the wall clock (NTP, suspend/resume) is noticed within that time.
    Tests pass ``now=lambda: EPOCH + timedelta(seconds=trio.current_time())`` and a MockClock.
  * wakeup() may be called from the trio thread (sets an Event) or any other thread (goes through
    the trio token); it never starts a thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from threading import TIMEOUT_MAX
from traceback import format_tb
from typing import Any

import structlog
import trio
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.executors.base import BaseExecutor, MaxInstancesReachedError
from apscheduler.schedulers.base import STATE_PAUSED, STATE_STOPPED, BaseScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import iscoroutinefunction_partial, ref_to_obj

__all__ = ["DEFAULT_MAX_SLEEP", "Now", "TrioExecutor", "TrioScheduler", "utc_now"]

log = structlog.get_logger("freshd.scheduler")  # the sweeps' log lines keep the scheduler's logger name

Now = Callable[[], datetime]

DEFAULT_MAX_SLEEP = 60.0


def utc_now() -> datetime:
    """The real wall clock, UTC: the scheduler's default `now`."""
    return datetime.now(UTC)


# -- the scheduler -------------------------------------------------------------------------------------


class TrioScheduler(BaseScheduler):  # type: ignore[misc]  # apscheduler is untyped
    """An APScheduler 3 scheduler whose wake-ups are a trio task; run it with `serve_scheduler`.

    Extra options: ``now`` (a callable returning an aware datetime; default `utc_now`) and
    ``max_sleep`` (longest single sleep, seconds; the wall clock is re-read at least this often).
    The time zone defaults to UTC rather than the machine's local zone.
    """

    def __init__(self, *, now: Now = utc_now, max_sleep: float = DEFAULT_MAX_SLEEP, **options: Any) -> None:
        if max_sleep <= 0:
            raise ValueError(f"max_sleep must be positive, got {max_sleep!r}")
        self._now = now
        self.max_sleep = max_sleep
        self._nursery: trio.Nursery | None = None
        self._served = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread_id: int | None = None
        self._wake = trio.Event()
        self._sweeps: dict[str, Any] = {}  # freshd.scheduler.Sweep by name (add_sweeps, describe)
        options.setdefault("timezone", UTC)
        super().__init__(**options)

    # -- the clock ----------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The injected wall clock, in the scheduler's time zone."""
        current = self._now()
        if current.tzinfo is None:
            raise ValueError("the scheduler's now() must return an aware datetime")
        return current.astimezone(self.timezone)

    # -- lifecycle (driven by serve_scheduler) ----------------------------------------------------------

    def start(self, paused: bool = False) -> None:
        if self._token is None:
            raise RuntimeError("a TrioScheduler is started by serve_scheduler(), not by start()")
        super().start(paused)

    def shutdown(self, wait: bool = True) -> None:
        """Stop scheduling.  wait=True: running sweeps finish; wait=False: they are cancelled.

        Call it from the trio thread; `serve_scheduler` then returns (after the drain).
        """
        super().shutdown(wait)
        self.wakeup()

    def wakeup(self) -> None:
        """Make the wake-up loop look at the job stores now (after add/modify/resume)."""
        token = self._token
        if token is None:
            return  # not serving: serve_scheduler's start() looks at the jobs anyway
        if threading.get_ident() == self._thread_id:
            self._wake.set()
        else:
            with contextlib.suppress(trio.RunFinishedError):  # the loop is gone: nothing to wake
                token.run_sync_soon(self._set_wake)

    def _set_wake(self) -> None:
        self._wake.set()

    def _claim(self) -> None:
        """Tie the scheduler to this trio run and thread (serve_scheduler, before start())."""
        if self._served:
            raise RuntimeError("a TrioScheduler is served once (shutdown drops its in-memory jobs); "
                               "create a new one")
        self._served = True
        self._token = trio.lowlevel.current_trio_token()
        self._thread_id = threading.get_ident()
        self._wake = trio.Event()

    def _unbind(self) -> None:
        self._nursery = None
        self._token = None
        self._thread_id = None

    async def _serve_wakeups(self) -> None:
        """Process due jobs, sleep until the next fire time (or a wakeup); until shut down."""
        while self.state != STATE_STOPPED:
            self._wake = trio.Event()  # fresh before processing: a wakeup() during it is kept
            wait_seconds = self._process_jobs()
            timeout = self.max_sleep if wait_seconds is None else min(wait_seconds, self.max_sleep)
            with trio.move_on_after(timeout):
                await self._wake.wait()

    def _create_default_executor(self) -> TrioExecutor:
        return TrioExecutor()

    # -- every clock read, through now() ----------------------------------------------------------------

    def add_job(self, func: Any, trigger: Any = None, *args: Any, **kwargs: Any) -> Any:
        """BaseScheduler.add_job, refusing functions that are not ``async def`` up front."""
        target = ref_to_obj(func) if isinstance(func, str) else func
        if not iscoroutinefunction_partial(target):
            raise TypeError(
                f"{target!r} is not an async function: TrioScheduler runs async jobs only "
                "(put blocking work in trio.to_thread.run_sync)"
            )
        return super().add_job(func, trigger, *args, **kwargs)

    def _create_trigger(self, trigger: Any, trigger_args: dict[str, Any]) -> Any:
        start_given = "start_date" in trigger_args
        run_date_given = "run_date" in trigger_args
        created = super()._create_trigger(trigger, trigger_args)
        if isinstance(trigger, str) or trigger is None:
            # the trigger read datetime.now() for these defaults; redo them with our clock
            if isinstance(created, IntervalTrigger) and not start_given:
                created.start_date = self.now() + created.interval
            elif isinstance(created, DateTrigger) and not run_date_given:
                created.run_date = self.now()
        return created

    def _real_add_job(self, job: Any, jobstore_alias: str, replace_existing: bool) -> None:
        if not hasattr(job, "next_run_time"):
            job._modify(next_run_time=job.trigger.get_next_fire_time(None, self.now()))
        super()._real_add_job(job, jobstore_alias, replace_existing)

    def reschedule_job(self, job_id: str, jobstore: str | None = None, trigger: Any = None,
                       **trigger_args: Any) -> Any:
        trigger = self._create_trigger(trigger, trigger_args)
        next_run_time = trigger.get_next_fire_time(None, self.now())
        return self.modify_job(job_id, jobstore, trigger=trigger, next_run_time=next_run_time)

    def resume_job(self, job_id: str, jobstore: str | None = None) -> Any:
        with self._jobstores_lock:
            job, jobstore = self._lookup_job(job_id, jobstore)
            next_run_time = job.trigger.get_next_fire_time(None, self.now())
            if next_run_time:
                return self.modify_job(job_id, jobstore, next_run_time=next_run_time)
            self.remove_job(job.id, jobstore)
            return None

    def _process_jobs(self) -> float | None:
        """BaseScheduler._process_jobs (3.11) with `now()` for the clock and structured logs.

        Submits every due job (coalesced if asked), reports skipped runs, and returns how long to
        wait for the next one (None: no jobs, or paused).
        """
        if self.state == STATE_PAUSED:
            return None
        now = self.now()
        next_wakeup_time: datetime | None = None
        events: list[Any] = []

        with self._jobstores_lock:
            for jobstore_alias, jobstore in self._jobstores.items():
                try:
                    due_jobs = jobstore.get_due_jobs(now)
                except Exception as exc:
                    log.warning("scheduler.jobstore_failed", jobstore=jobstore_alias, error=str(exc))
                    retry = now + timedelta(seconds=self.jobstore_retry_interval)
                    if next_wakeup_time is None or retry < next_wakeup_time:
                        next_wakeup_time = retry
                    continue

                for job in due_jobs:
                    try:
                        executor = self._lookup_executor(job.executor)
                    except KeyError:
                        log.error("scheduler.no_executor", job=job.id, executor=job.executor)
                        self.remove_job(job.id, jobstore_alias)
                        continue

                    run_times = job._get_run_times(now)
                    run_times = run_times[-1:] if run_times and job.coalesce else run_times
                    if not run_times:
                        continue
                    try:
                        executor.submit_job(job, run_times)
                    except MaxInstancesReachedError:
                        log.warning("sweep.skipped", sweep=job.id, reason="still running",
                                    max_instances=job.max_instances,
                                    scheduled=run_times[-1].isoformat())
                        events.append(JobSubmissionEvent(
                            EVENT_JOB_MAX_INSTANCES, job.id, jobstore_alias, run_times))
                    except Exception:
                        log.exception("sweep.submit_failed", sweep=job.id, executor=job.executor)
                    else:
                        events.append(JobSubmissionEvent(
                            EVENT_JOB_SUBMITTED, job.id, jobstore_alias, run_times))

                    job_next_run = job.trigger.get_next_fire_time(run_times[-1], now)
                    if job_next_run:
                        job._modify(next_run_time=job_next_run)
                        jobstore.update_job(job)
                    else:
                        self.remove_job(job.id, jobstore_alias)

                store_next = jobstore.get_next_run_time()
                if store_next and (next_wakeup_time is None or store_next < next_wakeup_time):
                    next_wakeup_time = store_next.astimezone(self.timezone)

        for event in events:
            self._dispatch_event(event)

        if self.state == STATE_PAUSED or next_wakeup_time is None:
            return None
        wait = next_wakeup_time.timestamp() - self.now().timestamp()
        return float(min(max(wait, 0.0), TIMEOUT_MAX))


# -- the executor ----------------------------------------------------------------------------------


class TrioExecutor(BaseExecutor):  # type: ignore[misc]  # apscheduler is untyped
    """Runs async job functions as tasks in the nursery `serve_scheduler` owns.

    Instance counting (max_instances) is BaseExecutor's; each task reports its runs through
    `_run_job_success` with EVENT_JOB_EXECUTED / EVENT_JOB_ERROR / EVENT_JOB_MISSED events, like
    APScheduler's own coroutine runner, except that the misfire check reads the scheduler's
    `now()` and that trio's Cancelled (a BaseException) is never caught as a job failure.
    """

    _trio_scheduler: TrioScheduler | None = None

    def start(self, scheduler: Any, alias: str) -> None:
        if not isinstance(scheduler, TrioScheduler):
            raise TypeError("TrioExecutor runs only under a TrioScheduler")
        super().start(scheduler, alias)
        self._trio_scheduler = scheduler

    def shutdown(self, wait: bool = True) -> None:
        if not wait and self._trio_scheduler is not None and self._trio_scheduler._nursery is not None:
            self._trio_scheduler._nursery.cancel_scope.cancel()

    def _nursery(self) -> trio.Nursery:
        scheduler = self._trio_scheduler
        if scheduler is None or scheduler._nursery is None:
            raise RuntimeError("the scheduler is not being served (see serve_scheduler)")
        return scheduler._nursery

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        if not iscoroutinefunction_partial(job.func):
            raise TypeError(f"job {job.id!r}: {job.func!r} is not an async function")
        self._nursery().start_soon(self._run_job, job, run_times, name=f"sweep:{job.id}")

    async def start_now(self, job: Any, run_time: datetime) -> None:
        """Run `job` once, now, outside its schedule; return once the run has started.

        Raises MaxInstancesReachedError if it already has max_instances runs going.
        """
        nursery = self._nursery()
        assert self._lock is not None
        with self._lock:
            if self._instances[job.id] >= job.max_instances:
                raise MaxInstancesReachedError(job)
            self._instances[job.id] += 1
        self._scheduler._dispatch_event(
            JobSubmissionEvent(EVENT_JOB_SUBMITTED, job.id, job._jobstore_alias, [run_time]))
        entered = False

        async def run(task_status: trio.TaskStatus[None]) -> None:
            nonlocal entered
            entered = True
            await self._run_job(job, [run_time], task_status=task_status)

        try:
            await nursery.start(run)
        except BaseException:
            if not entered:  # never ran: give the instance back (_run_job does it otherwise)
                self._run_job_success(job.id, [])
            raise

    async def _run_job(self, job: Any, run_times: list[datetime], *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self._trio_scheduler is not None
        scheduler = self._trio_scheduler
        alias = job._jobstore_alias
        events: list[Any] = []
        task_status.started()
        try:
            for run_time in run_times:
                bound = log.bind(sweep=job.id, scheduled=run_time.isoformat())
                if job.misfire_grace_time is not None:
                    late = scheduler.now() - run_time
                    if late > timedelta(seconds=job.misfire_grace_time):
                        bound.warning("sweep.missed", late_seconds=late.total_seconds(),
                                      misfire_grace_time=job.misfire_grace_time)
                        events.append(JobExecutionEvent(EVENT_JOB_MISSED, job.id, alias, run_time))
                        continue
                began = trio.current_time()
                bound.info("sweep.started")
                try:
                    retval = await job.func(*job.args, **job.kwargs)
                except Exception as exc:
                    bound.exception("sweep.failed", seconds=round(trio.current_time() - began, 3))
                    events.append(JobExecutionEvent(
                        EVENT_JOB_ERROR, job.id, alias, run_time,
                        exception=exc, traceback="".join(format_tb(exc.__traceback__))))
                else:
                    bound.info("sweep.done", seconds=round(trio.current_time() - began, 3))
                    events.append(JobExecutionEvent(EVENT_JOB_EXECUTED, job.id, alias, run_time,
                                                    retval=retval))
        except BaseException:
            log.info("sweep.cancelled", sweep=job.id)
            raise
        finally:
            # releases the instance (max_instances) and dispatches what did run
            self._run_job_success(job.id, events)

    def running(self, job_id: str) -> int:
        """How many runs of `job_id` are going now."""
        return int(self._instances.get(job_id, 0))
