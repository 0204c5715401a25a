"""ProgressHub: job progress pushed to whoever watches (`freshctl watch`), never polled.

Actors publish on every committed page; each subscriber has a small bounded
channel.  A subscriber that falls behind loses intermediate updates, never the
daemon's time: publishing never blocks, and only the newest state of a job
matters to a progress bar.  A job's *last* update (it ended) is never lost: kept
aside when the channel is full, it is delivered once the subscriber has read what
was queued before it (a watcher would otherwise wait for an end that never comes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import trio

from freshd.progress import JobProgress
from freshd.store.jobs import FINISHED, JobRow

Update = tuple[JobRow, JobProgress]
BUFFER = 64


class Subscription:
    """One subscriber: its bounded channel, and the ended jobs' last updates that did not fit."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[Update](BUFFER)
        self.ended: dict[int, Update] = {}  # job id -> its last update, waiting for room

    def offer(self, update: Update) -> None:
        try:
            self.send.send_nowait(update)
        except trio.WouldBlock:
            if update[0].status in FINISHED:
                self.ended[update[0].id] = update  # never dropped: the watcher waits for it
            # else: a slow watcher skips an intermediate state

    async def __aiter__(self) -> AsyncIterator[Update]:
        while True:
            # the channel is only full when something is set aside, so this never waits on a
            # receive while an ended job's update waits here
            if self.ended and self.receive.statistics().current_buffer_used == 0:
                yield self.ended.pop(next(iter(self.ended)))
                continue
            try:
                yield await self.receive.receive()
            except trio.EndOfChannel:
                return


class ProgressHub:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def publish(self, job: JobRow, progress: JobProgress) -> None:
        for subscription in list(self._subscribers):
            try:
                subscription.offer((job, progress))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(subscription)

    @contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        subscription = Subscription()
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)
            subscription.send.close()

    def watchers(self) -> int:
        return len(self._subscribers)
