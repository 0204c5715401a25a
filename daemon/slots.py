"""SyncSlots: how many syncs may run at once, in the cluster and per tenant.

Two layers: this daemon's own limiters (first-come first-served among its actors), then a
slot claimed in the database (freshd.store.cluster.claim_slot), so `max_running` and
`tenant_max_running` hold across every member sharing the database.  A claim is serialized
by a transaction-level advisory lock, so the caps are exact; a member that finds the cluster
full polls again (every CLAIM_POLL seconds, with jitter): across members the start order is
not first-come.  A dead member's slots stop counting once its heartbeat is `lease_ttl` old.

A job takes its tenant's slot first, then a global one, so a tenant already at
its cap never holds global slots other tenants could use.  trio's
CapacityLimiter serves waiters first-come first-served, which makes the start
order fair: jobs start in the order they asked.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from freshd.errors import FreshdError, StoreUnavailable

if TYPE_CHECKING:
    from freshd.store import Store
    from freshd.store.db import Fence

CLAIM_POLL = 0.5


class SyncSlots:
    def __init__(self, *, max_running: int, tenant_max_running: int, lease_ttl: float = 10.0) -> None:
        self.max_running = max_running
        self.tenant_max_running = tenant_max_running
        self.lease_ttl = lease_ttl
        self._global = trio.CapacityLimiter(max_running)
        self._tenants: dict[str, trio.CapacityLimiter] = {}

    @asynccontextmanager
    async def hold(self, tenant: str) -> AsyncIterator[None]:
        limiter = self._tenants.setdefault(tenant, trio.CapacityLimiter(self.tenant_max_running))
        async with limiter, self._global:
            yield

    def running(self) -> int:
        return int(self._global.borrowed_tokens)

    def waiting(self) -> int:
        return int(self._global.statistics().tasks_waiting) + sum(
            int(t.statistics().tasks_waiting) for t in self._tenants.values())

    @asynccontextmanager
    async def claim(self, store: Store, fence: Fence | None, tenant: str) -> AsyncIterator[None]:
        """A cluster-wide slot for this connection's job (no-op without a fence: tests, benchmarks)."""
        if fence is None:
            yield
            return
        from freshd.store import cluster

        for _ in itertools.count():  # until claimed or cancelled: the cluster is full meanwhile
            try:
                if await store.call(cluster.claim_slot, fence, tenant, max_running=self.max_running,
                                    tenant_max_running=self.tenant_max_running, ttl=self.lease_ttl):
                    break
            except StoreUnavailable:
                pass  # an outage, a lock timeout or a deadlock victim: try again
            await trio.sleep(CLAIM_POLL * random.uniform(0.5, 1.5))
        try:
            yield
        finally:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                # lease lost or store down: a slot whose lease is gone no longer counts anyway
                with contextlib.suppress(FreshdError):
                    await store.call(cluster.release_slot, fence.connection_id, fence.member)
