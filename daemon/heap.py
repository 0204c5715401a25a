"""The cyclic garbage collector and a fleet's long-lived objects.

Ten thousand connections are about 750,000 objects (actors, their mailboxes, cancel scopes,
tasks...) made at start-up and kept for the daemon's life.  Left alone, the collector's
oldest generation is collected each time it grows by a quarter, and each collection walks
every object: building the fleet walked it a dozen times (1.5-2 s of CPU, half of the
start-up), and every later full collection walks it again for nothing.

So: no collections while the start-up builds them (`pause`), then once the daemon answers,
one collection and the survivors frozen (`settle`: `gc.freeze`, out of every later collection).
Frozen objects that become garbage in a cycle would never be freed: whenever long-lived
objects are let go (an actor stopped, restarted, or given new settings; a reload), `release`
puts them back under the collector, which then works as it always did.
"""

from __future__ import annotations

import gc

import structlog
import trio

log = structlog.get_logger(__name__)

SETTLE_AFTER = 1.0  # seconds after ready: the first requests are answered before the one collection


def pause() -> bool:
    """No collections from now on; True if this call turned them off (the caller settles or resumes)."""
    if not gc.isenabled():
        return False  # someone else paused it (another daemon in this process, a test): theirs to resume
    gc.disable()
    return True


def resume(paused: bool) -> None:
    """Collections back on (a start-up that failed): nothing frozen."""
    if paused:
        gc.enable()


async def settle(paused: bool) -> None:
    """Once started: collect the start-up's garbage once, freeze what survives, collections back on."""
    if not paused:
        return
    await trio.sleep(SETTLE_AFTER)
    collected = gc.collect()
    gc.freeze()
    gc.enable()
    log.debug("heap.settled", collected=collected, frozen=gc.get_freeze_count())


def release() -> None:
    """Long-lived objects are being let go: everything frozen is collectable again."""
    if gc.get_freeze_count():
        gc.unfreeze()
