"""One suite, every connector: the same promises checked against each provider's simulator.

Each provider contributes `tests/cases_<provider>.py` with a `CASE` (tests/rig.py).  What is
checked: full sync, incremental sync after changes, deletes, auth expiry and refresh, 429 with
Retry-After, 5xx retry, a malformed body (retried) and a malformed item (skipped and
recorded), and pagination loop detection.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from freshd.store.jobs import JobKind, JobStatus
from tests.rig import ConformanceCase, Rig, open_rig


def _cases() -> list[ConformanceCase]:
    here = Path(__file__).parent
    found = []
    for module in pkgutil.iter_modules([str(here)]):
        if module.name.startswith("cases_"):
            found.append(importlib.import_module(f"tests.{module.name}").CASE)
    return sorted(found, key=lambda c: c.provider)


CASES = _cases()


@pytest.fixture(params=CASES, ids=[c.provider for c in CASES])
def case(request: pytest.FixtureRequest) -> ConformanceCase:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def rig(case: ConformanceCase, database_url: str) -> AsyncIterator[Rig]:
    sim = case.make_simulator(case.records, 11)
    async with open_rig(database_url, sim, case.settings) as rig:
        yield rig


async def initial(rig: Rig) -> None:
    with trio.fail_after(60):
        outcome, _ = await rig.sync(JobKind.INITIAL)
    assert outcome.status is JobStatus.COMPLETED, outcome.error


def assert_complete(rig: Rig, case: ConformanceCase) -> None:
    for entity in case.entities:
        assert rig.live(entity) == rig.sim.count(entity), entity


async def test_full_sync(rig: Rig, case: ConformanceCase) -> None:
    await initial(rig)
    assert_complete(rig, case)
    assert all(rig.live(e) > 0 for e in case.entities)


async def test_incremental_sync_after_changes_and_deletes(rig: Rig, case: ConformanceCase) -> None:
    await initial(rig)
    entity = case.entities[0]
    changed = rig.sim.mutate(entity)
    before = rig.record(entity, str(changed["updated"]))
    assert before is not None
    with trio.fail_after(60):
        outcome, _ = await rig.sync(JobKind.INCREMENTAL if case.deletes == "tombstone" else JobKind.FULL)
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    created = rig.record(entity, str(changed["created"]))
    assert created is not None and created[1] is None, "the new record is stored"
    after = rig.record(entity, str(changed["updated"]))
    assert after is not None and after[0] != before[0], "the change is stored"
    if changed["deleted"] is not None:
        gone = rig.record(entity, str(changed["deleted"]))
        assert gone is not None and gone[1] is not None, "the deleted record is marked deleted"
    assert_complete(rig, case)


async def test_auth_expiry_refreshes_once(rig: Rig, case: ConformanceCase) -> None:
    if not case.uses_tokens:
        pytest.skip(f"{case.provider} authenticates with static keys: nothing expires")
    await initial(rig)
    before = rig.sim.token_requests
    rig.sim.app.actions["expire_tokens"]()
    with trio.fail_after(60):
        outcome, _ = await rig.sync(JobKind.FULL)
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    assert rig.sim.token_requests == before + 1


async def test_429_with_retry_after_is_waited_out(rig: Rig, case: ConformanceCase) -> None:
    rig.sim.app.faults.configure({"status": 429, "count": 2, "retry_after": 1})
    started = time.monotonic()
    await initial(rig)
    assert time.monotonic() - started >= 1.0
    assert_complete(rig, case)


async def test_5xx_burst_is_retried(rig: Rig, case: ConformanceCase) -> None:
    rig.sim.app.faults.configure({"status": 503, "count": 2})
    await initial(rig)
    assert_complete(rig, case)


async def test_malformed_body_is_retried(rig: Rig, case: ConformanceCase) -> None:
    rig.sim.app.faults.configure({"malformed": 1})
    await initial(rig)
    assert_complete(rig, case)


async def test_malformed_item_is_skipped_and_recorded(rig: Rig, case: ConformanceCase) -> None:
    entity = case.entities[0]
    bad = rig.sim.corrupt(entity)
    with trio.fail_after(60):
        outcome, runner = await rig.sync(JobKind.INITIAL)
    assert outcome.status is JobStatus.PARTIAL, outcome.error
    failed = rig.failed_items(runner.job.id)
    assert [(e, i) for e, i, _ in failed] == [(entity, bad)]
    assert "NUL" in failed[0][2]
    assert rig.live(entity) == rig.sim.count(entity) - 1


async def test_pagination_loop_is_detected(rig: Rig, case: ConformanceCase) -> None:
    rig.sim.app.faults.configure({"loop": True})
    with trio.fail_after(60):
        outcome, _ = await rig.sync(JobKind.INITIAL)
    assert outcome.status in (JobStatus.FAILED, JobStatus.PARTIAL)
    assert "pagination loop" in (outcome.error or "")
