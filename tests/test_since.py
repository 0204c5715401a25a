"""`sync --since` for every connector: where a connector can start an incremental listing at a date,
a job re-reads the entity from there and leaves the other entities' cursors alone; where it cannot,
the connector says why (and the admin command refuses before anything is queued)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from freshd.connectors.base import connector_class
from freshd.progress import JobControl
from freshd.store import jobs
from freshd.store.jobs import JobKind, JobOptions, JobStatus
from freshd.sync import JobRunner
from tests.helpers import query
from tests.rig import ConformanceCase, Rig, open_rig
from tests.test_conformance import CASES

SINCE = "2000-01-01T00:00:00+00:00"  # before every simulated record: everything is read again


@pytest.fixture(params=CASES, ids=[c.provider for c in CASES])
def case(request: pytest.FixtureRequest) -> ConformanceCase:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def rig(case: ConformanceCase, database_url: str) -> AsyncIterator[Rig]:
    async with open_rig(database_url, case.make_simulator(60, 5), case.settings) as rig:
        yield rig


def cursors(rig: Rig) -> dict[str, object]:
    return {str(e): s for e, s in query(rig.database_url, "SELECT entity, state FROM cursors"
                                        " WHERE connection_id = %s", rig.connection_id)}


async def test_since_rereads_the_entities_that_support_it_and_says_why_for_the_others(
    rig: Rig, case: ConformanceCase,
) -> None:
    cls = connector_class(case.provider)
    streams = cls.streams_for(rig.settings)
    supported = [s.name for s in streams if cls.since_problem(s) is None]
    refused = {s.name: cls.since_problem(s) for s in streams if cls.since_problem(s) is not None}
    assert all(reason and s in reason for s, reason in refused.items())  # each refusal names the entity
    with trio.fail_after(60):
        outcome, _ = await rig.sync(JobKind.INITIAL)
        assert outcome.status is JobStatus.COMPLETED, outcome.error
        if not supported:
            return
        entity = supported[0]
        before = cursors(rig)
        job, _ = await rig.store.call(jobs.create_job, rig.connection_id, JobKind.INCREMENTAL, "test",
                                      options=JobOptions(entities=(entity,), since=SINCE))
        connector = rig.connector()
        try:
            runner = JobRunner(rig.store, connector, rig.connection_id, job, JobControl())
            outcome = await runner.run()
        finally:
            await connector.aclose()
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    assert list(runner.progress.entities) == [entity]
    assert runner.progress.entities[entity].processed >= rig.live(entity) > 0  # read again from the date
    after = cursors(rig)
    assert {e: s for e, s in after.items() if e != entity} == {e: s for e, s in before.items() if e != entity}
