"""SyncSlots: caps hold, and waiting jobs start first-come first-served."""

from __future__ import annotations

import trio
import trio.testing

from freshd.slots import SyncSlots


async def test_jobs_start_in_the_order_they_asked_and_caps_hold(autojump_clock: trio.testing.MockClock) -> None:
    slots = SyncSlots(max_running=2, tenant_max_running=1)
    started: list[str] = []
    running: dict[str, int] = {}
    peak: dict[str, int] = {}

    async def job(name: str, tenant: str) -> None:
        async with slots.hold(tenant):
            started.append(name)
            running[tenant] = running.get(tenant, 0) + 1
            peak[tenant] = max(peak.get(tenant, 0), running[tenant])
            assert sum(running.values()) <= 2  # the global cap
            await trio.sleep(1)
            running[tenant] -= 1

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(job, f"acme-{i}", "acme")
                await trio.sleep(0.01)  # a clear order of arrival
            nursery.start_soon(job, "globex-0", "globex")
    assert [n for n in started if n.startswith("acme")] == ["acme-0", "acme-1", "acme-2", "acme-3"]
    assert peak == {"acme": 1, "globex": 1}  # the per-tenant cap
    assert started.index("globex-0") == 1  # another tenant is not stuck behind acme's queue
