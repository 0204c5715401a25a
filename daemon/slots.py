"""SyncSlots: how many syncs may run at once, in the daemon and per tenant.

A job takes its tenant's slot first, then a global one, so a tenant already at
its cap never holds global slots other tenants could use.  trio's
CapacityLimiter serves waiters first-come first-served, which makes the start
order fair: jobs start in the order they asked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class SyncSlots:
    def __init__(self, *, max_running: int, tenant_max_running: int) -> None:
        self.tenant_max_running = tenant_max_running
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
