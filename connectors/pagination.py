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

from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

import trio
import trio.lowlevel

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
    numbers = list(numbers)
    if not numbers:
        return
    window = trio.Semaphore(max(1, concurrency))
    slots: dict[int, _Slot[T]] = {}
    failure: BaseException | None = None

    async def fetch_into(number: int, slot: _Slot[T]) -> None:
        try:
            slot.value = await fetch(number)
        except Exception as exc:  # kept for the consumer: earlier pages still get consumed
            slot.error = exc
        finally:
            slot.done.set()

    async def start_fetches(nursery: trio.Nursery) -> None:
        for number in numbers:
            await window.acquire()
            slots[number] = slot = _Slot[T]()
            nursery.start_soon(fetch_into, number, slot)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start_fetches, nursery)
        try:
            for number in numbers:
                while number not in slots:
                    await trio.lowlevel.checkpoint()  # the starter has not reached it yet
                slot = slots[number]
                await slot.done.wait()
                del slots[number]
                if slot.error is not None:
                    raise slot.error
                await consume(number, slot.value)  # type: ignore[arg-type]
                window.release()
        except Exception as exc:
            failure = exc
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
