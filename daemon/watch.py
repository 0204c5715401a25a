"""ProgressHub: job progress pushed to whoever watches (`freshctl watch`), never polled.

Actors publish on every committed page; each subscriber has a small bounded
channel.  A subscriber that falls behind loses intermediate updates, never the
daemon's time: publishing never blocks, and only the newest state of a job
matters to a progress bar.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

from freshd.store.jobs import JobRow
from freshd.sync import JobProgress

Update = tuple[JobRow, JobProgress]
BUFFER = 64


class ProgressHub:
    def __init__(self) -> None:
        self._subscribers: set[trio.MemorySendChannel[Update]] = set()

    def publish(self, job: JobRow, progress: JobProgress) -> None:
        for channel in list(self._subscribers):
            try:
                channel.send_nowait((job, progress))
            except trio.WouldBlock:
                pass  # a slow watcher skips an intermediate state
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(channel)

    @contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel[Update]]:
        send, receive = trio.open_memory_channel[Update](BUFFER)
        self._subscribers.add(send)
        try:
            yield receive
        finally:
            self._subscribers.discard(send)
            send.close()

    def watchers(self) -> int:
        return len(self._subscribers)
