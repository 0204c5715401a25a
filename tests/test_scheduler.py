"""The scheduler from the outside: sweeps fire when a user would expect, on trio, with no thread.

Time is trio's MockClock (autojump); the scheduler's wall clock is derived from it, starting
at EPOCH, far from the real date, so any stray `datetime.now()` shows up as a missed or
never-due run.
"""

from __future__ import annotations

import random
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
import trio.testing
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
)
from apscheduler.schedulers.base import STATE_STOPPED
from structlog.testing import capture_logs

from freshd.apscheduler_trio import TrioScheduler
from freshd.scheduler import (
    Sweep,
    SweepBusy,
    add_sweeps,
    create_scheduler,
    describe,
    run_now,
    serve_scheduler,
)

EPOCH = datetime(2001, 1, 1, tzinfo=UTC)  # a Monday, 00:00 UTC
CEILING = 10 * 86400  # simulated seconds (fail_after reads the MockClock); the longest window is 8 days


def mock_now() -> datetime:
    return EPOCH + timedelta(seconds=trio.current_time())


def elapsed(when: datetime) -> float:
    return (when - EPOCH).total_seconds()


def make_scheduler(**options: Any) -> TrioScheduler:
    return create_scheduler(now=mock_now, **options)


def all_tasks() -> set[trio.lowlevel.Task]:
    tasks: set[trio.lowlevel.Task] = set()
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        assert task is not None
        tasks.add(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return tasks


@asynccontextmanager
async def serving(scheduler: TrioScheduler) -> AsyncIterator[trio.Nursery]:
    """serve_scheduler in a nursery; cancelled on exit; asserts no thread and no task is left."""
    threads = set(threading.enumerate())  # other tests' idle worker threads may end meanwhile: not ours
    tasks = all_tasks()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_scheduler, scheduler)
        yield nursery
        nursery.cancel_scope.cancel()
    assert scheduler.state == STATE_STOPPED
    assert not set(threading.enumerate()) - threads, "the scheduler left a thread behind"
    assert all_tasks() == tasks


class Recorder:
    """An async sweep that records the simulated time of each call."""

    def __init__(self, *, duration: float = 0.0, fail_first: int = 0) -> None:
        self.calls: list[float] = []
        self.finished: list[float] = []
        self.cancelled = 0
        self.duration = duration
        self.fail_first = fail_first

    async def __call__(self) -> None:
        self.calls.append(elapsed(mock_now()))
        if len(self.calls) <= self.fail_first:
            raise RuntimeError(f"boom {len(self.calls)}")
        try:
            await trio.sleep(self.duration)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        self.finished.append(elapsed(mock_now()))


def recorder(**kwargs: Any) -> Any:
    """A Recorder behind a real `async def` (Sweep and add_job want coroutine functions)."""
    rec = Recorder(**kwargs)

    async def sweep() -> None:
        await rec()

    sweep.rec = rec  # type: ignore[attr-defined]
    return sweep


def approx_list(values: list[float]) -> Any:
    return pytest.approx(values, abs=1e-3)


# -- schedules ----------------------------------------------------------------------------------------


async def test_interval_sweep_fires_exactly_on_schedule(autojump_clock: trio.testing.MockClock) -> None:
    sweep = recorder()
    scheduler = make_scheduler()
    add_sweeps(scheduler, [Sweep("health", sweep, interval=900)])
    with trio.fail_after(CEILING):
        async with serving(scheduler):
            await trio.sleep_until(10 * 900 + 1)
    assert sweep.rec.calls == approx_list([900.0 * k for k in range(1, 11)])


async def test_cron_sweep_fires_at_0200(autojump_clock: trio.testing.MockClock) -> None:
    sweep = recorder()
    scheduler = make_scheduler()
    add_sweeps(scheduler, [Sweep("cleanup", sweep, cron="0 2 * * *")])
    with trio.fail_after(CEILING):
        async with serving(scheduler):
            await trio.sleep_until(2 * 86400 + 1)
    assert sweep.rec.calls == approx_list([2 * 3600.0, 86400 + 2 * 3600.0])


async def test_cron_weekday_0_is_sunday_as_in_crontab(autojump_clock: trio.testing.MockClock) -> None:
    # APScheduler 3's own from_crontab would read 0 as Monday (its issue 286): EPOCH is a Monday.
    sweep = recorder()
    scheduler = make_scheduler(max_sleep=3600)
    add_sweeps(scheduler, [Sweep("weekly", sweep, cron="0 2 * * 0")])
    with trio.fail_after(CEILING):
        async with serving(scheduler):
            await trio.sleep_until(8 * 86400)
    fired = [EPOCH + timedelta(seconds=round(t)) for t in sweep.rec.calls]
    assert fired == [datetime(2001, 1, 7, 2, 0, tzinfo=UTC)]
    assert fired[0].strftime("%A") == "Sunday"


async def test_adding_a_job_while_the_loop_sleeps_wakes_it(autojump_clock: trio.testing.MockClock) -> None:
    slow, fast = recorder(), recorder()
    scheduler = make_scheduler(max_sleep=3000)  # the loop would otherwise sleep until t=3000
    add_sweeps(scheduler, [Sweep("hourly", slow, interval=3600)])
    with trio.fail_after(CEILING):
        async with serving(scheduler):
            await trio.sleep_until(10)
            add_sweeps(scheduler, [Sweep("soon", fast, interval=5)])
            await trio.sleep_until(21)
    assert fast.rec.calls == approx_list([15.0, 20.0])
    assert slow.rec.calls == []


async def test_a_job_added_from_another_thread_wakes_the_loop(autojump_clock: trio.testing.MockClock) -> None:
    fast = recorder()
    # this now() must work off the trio thread too (as the default, real clock does)
    scheduler = create_scheduler(
        now=lambda: EPOCH + timedelta(seconds=autojump_clock.current_time()), max_sleep=3000)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(CEILING):
            await nursery.start(serve_scheduler, scheduler)
            await trio.sleep_until(10)
            # a worker thread: wakeup() must go through the trio token, not touch trio directly
            autojump_clock.autojump_threshold = float("inf")
            await trio.to_thread.run_sync(
                lambda: scheduler.add_job(fast, "date", run_date=EPOCH + timedelta(seconds=12), id="t"))
            autojump_clock.autojump_threshold = 0
            await trio.sleep_until(13)
            assert fast.rec.calls == approx_list([12.0])
            nursery.cancel_scope.cancel()


async def test_interval_jitter_is_a_fixed_phase_and_does_not_drift(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sweep = recorder()
    scheduler = make_scheduler()
    add_sweeps(scheduler, [Sweep("sync", sweep, interval=600, jitter=120)], rng=random.Random(7))
    phase = random.Random(7).uniform(0, 120)
    assert 0 < phase < 120
    with trio.fail_after(CEILING):
        async with serving(scheduler):
            await trio.sleep_until(6 * 600 + 121)
    assert sweep.rec.calls == approx_list([600.0 * k + phase for k in range(1, 7)])


async def test_cron_jitter_delays_each_run_within_the_window(autojump_clock: trio.testing.MockClock) -> None:
    sweep = recorder()
    scheduler = make_scheduler()
    add_sweeps(scheduler, [Sweep("cleanup", sweep, cron="0 2 * * *", jitter=600)])
    with trio.fail_after(CEILING):
        async with serving(scheduler):
            await trio.sleep_until(3 * 86400)
    assert len(sweep.rec.calls) == 3
    for day, call in enumerate(sweep.rec.calls):
        assert day * 86400 + 7200 <= call < day * 86400 + 7200 + 600


# -- failures, overlap, misfires -------------------------------------------------------------------------


async def test_a_raising_sweep_is_logged_and_the_next_run_still_happens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sweep = recorder(fail_first=1)
    scheduler = make_scheduler()
    add_sweeps(scheduler, [Sweep("sync", sweep, interval=60)])
    events: list[Any] = []
    scheduler.add_listener(events.append, EVENT_JOB_ERROR | EVENT_JOB_EXECUTED)
    with capture_logs() as logs, trio.fail_after(CEILING):
        async with serving(scheduler):
            await trio.sleep_until(121)
    assert sweep.rec.calls == approx_list([60.0, 120.0])
    failed = [entry for entry in logs if entry["event"] == "sweep.failed"]
    assert len(failed) == 1
    assert failed[0]["sweep"] == "sync" and failed[0]["log_level"] == "error" and failed[0]["exc_info"]
    assert [event.code for event in events] == [EVENT_JOB_ERROR, EVENT_JOB_EXECUTED]
    assert str(events[0].exception) == "boom 1"


async def test_max_instances_1_skips_a_run_while_the_slow_one_is_going(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sweep = recorder(duration=90)
    scheduler = make_scheduler()
    add_sweeps(scheduler, [Sweep("sync", sweep, interval=60)])
    skipped: list[float] = []
    scheduler.add_listener(
        lambda event: skipped.extend(elapsed(t) for t in event.scheduled_run_times), EVENT_JOB_MAX_INSTANCES)
    with capture_logs() as logs, trio.fail_after(CEILING):
        async with serving(scheduler):
            await trio.sleep_until(250)
    assert sweep.rec.calls == approx_list([60.0, 180.0])
    assert sweep.rec.finished == approx_list([150.0])
    assert skipped == approx_list([120.0, 240.0])
    assert [entry["event"] for entry in logs].count("sweep.skipped") == 2


async def test_a_run_later_than_its_misfire_grace_time_is_missed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sweep = recorder()
    scheduler = make_scheduler()
    add_sweeps(scheduler, [Sweep("sync", sweep, interval=60, misfire_grace_time=2)])
    missed: list[Any] = []
    scheduler.add_listener(missed.append, EVENT_JOB_MISSED)
    with trio.fail_after(CEILING):
        async with serving(scheduler):
            await trio.sleep_until(50)
            autojump_clock.jump(15)  # the loop was stalled past t=60 (a suspend, a blocked loop)
            await trio.sleep_until(121)
    assert sweep.rec.calls == approx_list([120.0])
    assert [elapsed(event.scheduled_run_time) for event in missed] == approx_list([60.0])


# -- run_now, describe ---------------------------------------------------------------------------------


async def test_run_now_starts_a_sweep_immediately_and_keeps_its_schedule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sweep = recorder(duration=30)
    scheduler = make_scheduler()
    add_sweeps(scheduler, [
        Sweep("sync", sweep, interval=3600),
        Sweep("cleanup", recorder(), cron="0 2 * * *"),
    ])
    with trio.fail_after(CEILING):
        async with serving(scheduler):
            await trio.sleep_until(100)
            await run_now(scheduler, "sync")
            assert sweep.rec.calls == approx_list([100.0])  # started, no simulated time passed
            assert trio.current_time() == pytest.approx(100.0)
            with pytest.raises(SweepBusy, match="already running"):
                await run_now(scheduler, "sync")
            with pytest.raises(KeyError, match="valid sweeps: cleanup, sync"):
                await run_now(scheduler, "nope")
            [sync_record] = [r for r in describe(scheduler) if r["id"] == "sync"]
            assert sync_record["running"] == 1
            assert sync_record["next_run_time"] == (EPOCH + timedelta(seconds=3600)).isoformat()
            await trio.sleep_until(3601)
    assert sweep.rec.calls == approx_list([100.0, 3600.0])
    assert sweep.rec.finished == approx_list([130.0])


async def test_describe_lists_every_job_with_its_schedule(autojump_clock: trio.testing.MockClock) -> None:
    scheduler = make_scheduler()
    add_sweeps(scheduler, [
        Sweep("sync", recorder(), interval=7200),
        Sweep("cleanup", recorder(), cron="0 2 * * *", jitter=60),
    ])
    with trio.fail_after(CEILING):
        async with serving(scheduler):
            scheduler.pause_job("sync")
            records = describe(scheduler)
    assert records == [
        {"id": "cleanup", "name": "cleanup", "trigger": "cron 0 2 * * * (jitter 60s)",
         "next_run_time": records[0]["next_run_time"], "paused": False, "running": 0},
        {"id": "sync", "name": "sync", "trigger": "every 7200s",
         "next_run_time": None, "paused": True, "running": 0},
    ]
    next_cleanup = datetime.fromisoformat(records[0]["next_run_time"])
    assert next_cleanup.utcoffset() == timedelta(0)
    assert EPOCH + timedelta(hours=2) <= next_cleanup < EPOCH + timedelta(hours=2, seconds=60)


# -- lifecycle ----------------------------------------------------------------------------------------


async def test_cancelling_the_nursery_cancels_running_sweeps_and_leaves_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sweep = recorder(duration=1000)
    scheduler = make_scheduler()
    add_sweeps(scheduler, [Sweep("sync", sweep, interval=60)])
    with capture_logs() as logs, trio.fail_after(CEILING):
        async with serving(scheduler):  # asserts: no thread, no task left, scheduler stopped
            await trio.sleep_until(61)
            assert sweep.rec.calls == approx_list([60.0])
    assert sweep.rec.cancelled == 1
    assert sweep.rec.finished == []
    assert "sweep.cancelled" in [entry["event"] for entry in logs]
    assert scheduler._lookup_executor("default").running("sync") == 0  # the instance was given back
    with pytest.raises(RuntimeError, match="served once"):
        await serve_scheduler(scheduler)


async def test_shutdown_wait_drains_running_sweeps_then_serve_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sweep = recorder(duration=40)
    scheduler = make_scheduler()
    add_sweeps(scheduler, [Sweep("sync", sweep, interval=60)])
    with trio.fail_after(CEILING):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_scheduler, scheduler)
            await trio.sleep_until(70)
            scheduler.shutdown(wait=True)
        # the nursery closed by itself: serve_scheduler returned once the sweep finished
        assert trio.current_time() == pytest.approx(100.0, abs=1e-3)
    assert sweep.rec.finished == approx_list([100.0])


async def test_the_scheduler_refuses_to_start_outside_serve_scheduler() -> None:
    with pytest.raises(RuntimeError, match="serve_scheduler"):
        make_scheduler().start()


# -- the declarations ---------------------------------------------------------------------------------


def test_sweep_declarations_are_validated() -> None:
    async def ok() -> None:
        pass

    def blocking() -> None:
        pass

    with pytest.raises(ValueError, match="exactly one"):
        Sweep("x", ok)
    with pytest.raises(ValueError, match="exactly one"):
        Sweep("x", ok, interval=60, cron="0 2 * * *")
    with pytest.raises(ValueError, match="5 fields"):
        Sweep("x", ok, cron="0 2 * *")
    with pytest.raises(ValueError, match="positive"):
        Sweep("x", ok, interval=0)
    with pytest.raises(TypeError, match="not an async function"):
        Sweep("x", blocking, interval=60)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicate sweep names: x"):
        add_sweeps(make_scheduler(), [Sweep("x", ok, interval=1), Sweep("x", ok, interval=2)])
    with pytest.raises(TypeError, match="not an async function"):
        make_scheduler().add_job(blocking, "interval", seconds=5)


async def test_the_daemons_sweeps_run_on_their_configured_schedule(autojump_clock: trio.testing.MockClock) -> None:
    """The daemon's own sweep table (Daemon.sweeps) from a config: one simulated day."""
    from freshd.app import Daemon
    from freshd.config_model import Config, ScheduleConfig

    calls: dict[str, list[float]] = {"sync": [], "health": [], "tokens": [], "cleanup": []}

    class Recording(Daemon):
        async def sync_sweep(self) -> None:
            calls["sync"].append(elapsed(mock_now()))

        async def health_sweep(self) -> None:
            calls["health"].append(elapsed(mock_now()))

        async def token_sweep(self) -> None:
            calls["tokens"].append(elapsed(mock_now()))

        async def cleanup_sweep(self) -> None:
            calls["cleanup"].append(elapsed(mock_now()))

    config = Config(schedule=ScheduleConfig(jitter=0.0))  # the defaults: 2 h, 15 min, 1 h, 02:00
    daemon = Recording(config, None, None, None)  # type: ignore[arg-type]
    scheduler = make_scheduler()
    add_sweeps(scheduler, daemon.sweeps())
    with trio.fail_after(CEILING):
        async with serving(scheduler):
            await trio.sleep_until(86400 + 1)
    assert calls["sync"] == approx_list([7200.0 * k for k in range(1, 13)])
    assert len(calls["health"]) == 96 and calls["health"][0] == pytest.approx(900.0)
    assert calls["tokens"] == approx_list([3600.0 * k for k in range(1, 25)])
    assert calls["cleanup"] == approx_list([2 * 3600.0])
