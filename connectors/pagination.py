"""Paginators shared by connectors.

`fetch_in_order` fetches numbered pages (page numbers or offsets) with bounded
concurrency but hands them on strictly in order, so a checkpoint after page k
always means "pages 1..k are stored".  At most `concurrency` pages are in
memory at once: a slot is freed only when its page has been consumed.

Error handling: a failed fetch is kept in its slot and raised when the
consumer reaches it, after every earlier page was consumed; the error leaves
this function as itself, not wrapped in an ExceptionGroup, so policy code can
look at its class.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

import trio

from freshd.errors import PermanentError

T = TypeVar("T")


class _Slot(Generic[T]):
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: T | None = None
        self.error: BaseException | None = None


async def fetch_in_order(
    fetch: Callable[[int], Awaitable[T]],
    numbers: Iterable[int],
    consume: Callable[[int, T], Awaitable[None]],
    *,
    concurrency: int = 4,
) -> None:
    # the numbers are never listed up front: a provider claiming ten million pages costs nothing
    # until they are fetched, one window at a time
    window = trio.Semaphore(max(1, concurrency))
    # fetches in the order they started (at most `concurrency` at once): the consumer's queue
    send, receive = trio.open_memory_channel[tuple[int, _Slot[T]]](math.inf)
    failure: BaseException | None = None

    async def fetch_into(number: int, slot: _Slot[T]) -> None:
        try:
            slot.value = await fetch(number)
        except Exception as exc:  # kept for the consumer: earlier pages still get consumed
            slot.error = exc
        finally:
            slot.done.set()

    async def start_fetches(nursery: trio.Nursery) -> None:
        async with send:
            for number in numbers:
                await window.acquire()
                slot = _Slot[T]()
                send.send_nowait((number, slot))
                nursery.start_soon(fetch_into, number, slot)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start_fetches, nursery)
        try:
            async with receive:
                async for number, slot in receive:
                    await slot.done.wait()
                    if slot.error is not None:
                        raise slot.error
                    await consume(number, slot.value)  # type: ignore[arg-type]
                    window.release()
        except Exception as exc:
            failure = exc
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


class LoopGuard:
    """Stops a listing whose provider keeps handing back a cursor (or a page) it already gave.

    `cursor(token)` for next-token/next-link paging; `page(ids)` for offset paging,
    where a loop shows as the same non-empty page of ids twice.  Raises
    PermanentError: retrying the same listing would loop again.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._cursors: set[Hashable] = set()
        self._pages: set[tuple[str, ...]] = set()

    def cursor(self, token: Hashable) -> None:
        if token in self._cursors:
            raise PermanentError(f"{self.what}: pagination loop (cursor {str(token)[:40]!r} came back)")
        self._cursors.add(token)

    def page(self, ids: Sequence[object]) -> None:
        # items without an id say nothing about a loop (they are failed items of their own)
        key = tuple(str(i) for i in ids if i is not None)
        if not key:
            return
        if key in self._pages:
            raise PermanentError(f"{self.what}: pagination loop (the same page of {len(ids)} records came back)")
        self._pages.add(key)
