"""The progress hub: a watcher that falls behind skips states, never the end of its job."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import trio

from freshd.store.jobs import JobKind, JobRow, JobStatus
from freshd.sync import JobProgress
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
