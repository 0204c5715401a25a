"""Progress and control hand-offs: a watcher that falls behind skips states, never the end of its job;
a pause or cancel request is never lost between the writer's awaits."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import trio
import trio.lowlevel

from freshd.progress import JobProgress
from freshd.store.jobs import JobKind, JobRow, JobStatus
from freshd.watch import BUFFER, ProgressHub

RUNNING = JobRow(7, 1, "shop", "default", JobKind.FULL, JobStatus.RUNNING, "test", {}, datetime.now(UTC), None,
                 None, None)


async def test_a_watcher_whose_buffer_filled_still_receives_the_end_of_its_job() -> None:
    hub = ProgressHub()
    progress = JobProgress({})
    with hub.subscribe() as updates:
        for _ in range(BUFFER + 50):  # a slow watcher: its channel fills, intermediate states drop
            hub.publish(RUNNING, progress)
        hub.publish(dataclasses.replace(RUNNING, status=JobStatus.COMPLETED), progress)
        seen = []
        with trio.fail_after(5):
            async for job, _ in updates:
                seen.append(job.status)
                if job.status is JobStatus.COMPLETED:
                    break
    assert seen[-1] is JobStatus.COMPLETED and len(seen) == BUFFER + 1


async def test_a_watcher_keeping_up_sees_every_state_in_order() -> None:
    hub = ProgressHub()
    progress = JobProgress({})
    with hub.subscribe() as updates:
        hub.publish(RUNNING, progress)
        hub.publish(dataclasses.replace(RUNNING, status=JobStatus.COMPLETED), progress)
        seen = []
        async for job, _ in updates:
            seen.append(job.status)
            if len(seen) == 2:
                break
    assert seen == [JobStatus.RUNNING, JobStatus.COMPLETED]


async def test_a_cancel_sent_while_the_paused_status_is_written_is_not_lost() -> None:
    """The writer took JobControl.changed after writing the paused status: a cancel sent meanwhile
    set the old event and the writer waited on the new one forever (a hang seen in the suite)."""
    import types

    import pytest

    from freshd.progress import ControlRequest, JobControl
    from freshd.sync import JobRunner, _Cancelled

    control = JobControl()
    control.set(ControlRequest.PAUSE)

    async def write_status(fn: object, job_id: int, status: JobStatus) -> JobRow:
        control.set(ControlRequest.CANCEL)  # the operator cancels while the status is being written
        await trio.lowlevel.checkpoint()
        return dataclasses.replace(RUNNING, status=status)

    runner = types.SimpleNamespace(control=control, job=RUNNING,
                                   store=types.SimpleNamespace(call_retrying=write_status),
                                   log=types.SimpleNamespace(info=lambda *a, **k: None), _notify=lambda: None)
    with trio.fail_after(5), pytest.raises(_Cancelled):
        await JobRunner._wait_while_paused(runner)  # type: ignore[arg-type]
