"""Progress that is always useful: every entity of a job shows a total while it runs (the provider's
count, or an estimate marked as such), and the whole job's ETA comes from the totals known so far."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from freshd.connectors.orion.simulator import OrionSimulator
from freshd.connectors.simulator import serve_asgi
from freshd.progress import JobControl, JobProgress
from freshd.store import jobs
from freshd.store.jobs import JobKind, JobRow, JobStatus
from freshd.sync import JobRunner
from tests.rig import Rig, open_rig
from tests.test_orion import settings_fn

Snapshot = dict[str, Any]  # entity -> (total, estimated, state, processed); "eta" -> the job's ETA


@pytest.fixture
async def orion(nursery: trio.Nursery) -> AsyncIterator[tuple[OrionSimulator, str]]:
    sim = OrionSimulator(records=60, seed=3, credentials=settings_fn()("http://x").credentials, history_days=10)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    yield sim, f"http://127.0.0.1:{port}/api"


async def run_watching(rig: Rig, kind: JobKind) -> tuple[list[Snapshot], JobProgress]:
    """Run a job through the engine, keeping what a watcher saw after every update."""
    job, _ = await rig.store.call(jobs.create_job, rig.connection_id, kind, "test")
    connector = rig.connector()
    seen: list[Snapshot] = []

    def on_progress(job: JobRow, progress: JobProgress) -> None:
        seen.append({**{n: (p.total, p.estimated, p.state, p.processed) for n, p in progress.entities.items()},
                     "eta": progress.eta_seconds()})

    try:
        runner = JobRunner(rig.store, connector, rig.connection_id, job, JobControl(), on_progress=on_progress)
        with trio.fail_after(30):
            outcome = await runner.run()
    finally:
        await connector.aclose()
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    return seen, runner.progress


def totals_while_running(seen: list[Snapshot], entity: str) -> list[tuple[int | None, bool]]:
    return [(s[entity][0], s[entity][1]) for s in seen if s[entity][2] == "running" and s[entity][3] > 0]


async def test_orion_entities_show_a_total_while_they_run_exact_or_marked_estimated(
    database_url: str, orion: tuple[OrionSimulator, str],
) -> None:
    sim, _ = orion
    async with open_rig(database_url, sim, settings_fn()) as rig:
        seen, progress = await run_watching(rig, JobKind.INITIAL)
        for entity in ("clients", "accounts", "aum_history"):
            running = totals_while_running(seen, entity)
            assert running and all(total is not None for total, _ in running), (entity, running)
            assert all(estimated for _, estimated in running), (entity, running)  # Orion gives no count
            final = progress.entities[entity]
            assert final.total == final.processed + final.failed + final.skipped and not final.estimated
        # the next (incremental) run starts with a guess from what is stored or last processed
        seen, progress = await run_watching(rig, JobKind.INCREMENTAL)
        assert all(s["clients"][0] is not None for s in seen if s["clients"][2] == "running")
        assert progress.entities["clients"].total == progress.entities["clients"].processed == 60
        # the whole job's ETA is there while the first entity runs, not only once the last one does
        first_running = [s for s in seen if s["clients"][2] == "running" and s["clients"][3] > 0]
        assert first_running and all(s["accounts"][0] is not None for s in first_running)
        assert any(s["eta"] is not None for s in first_running)


async def test_an_estimated_total_is_never_evidence_for_deletions(
    database_url: str, orion: tuple[OrionSimulator, str],
) -> None:
    """A full listing of AUM points checks deletions against the provider's own count only: with none,
    the estimate must not make a complete listing look incomplete (or the reverse)."""
    sim, _ = orion
    async with open_rig(database_url, sim, settings_fn()) as rig:
        await run_watching(rig, JobKind.INITIAL)
        _, progress = await run_watching(rig, JobKind.FULL)
        assert progress.entities["aum_history"].state == "done"


def test_totals_count_a_finished_entity_without_a_total_by_what_it_went_through() -> None:
    progress = JobProgress.from_json(["a", "b"], {"a": {"processed": 5, "state": "done"},
                                                  "b": {"total": 10, "processed": 4, "state": "running"}})
    totals: dict[str, Any] = progress.totals()
    assert totals == {"total": 15, "processed": 9, "failed": 0, "skipped": 0, "pending": 6}


async def test_the_eta_uses_the_rate_limit_when_the_limiter_is_the_bottleneck() -> None:
    """A connection limited to 2 requests/s with pages of 100 records cannot go faster than 200
    records/s, whatever a first burst suggests: the ETA is computed from the limit."""
    from datetime import UTC, datetime

    from freshd.connectors.base import ConnectionSettings, connector_class

    settings = ConnectionSettings("eu", "woocommerce", "http://127.0.0.1:9", options={"rate_limit": "2/s"},
                                  credentials={"consumer_key": "k", "consumer_secret": "s"})
    connector = connector_class("woocommerce")(settings)
    job = JobRow(1, 1, "eu", "default", JobKind.INCREMENTAL, JobStatus.RUNNING, "manual", {},
                 datetime.now(UTC), datetime.now(UTC), None, None)
    try:
        runner = JobRunner(None, connector, 1, job, JobControl())  # type: ignore[arg-type]
        orders = runner.progress.entities["orders"]
        orders.total, orders.processed, orders.state = 2000, 1000, "running"
        runner._pages, runner._page_records = 10, 1000
        runner._run_started -= 1.0  # 1000 records in 1 s: the burst looks like 1000 records/s
        runner._update_job_rate(runner._run_started + 1.0)
        assert runner.progress.rate == pytest.approx(1000.0)
        assert runner.progress.rate_ceiling == pytest.approx(200.0)
        assert runner.progress.eta_seconds() == 1000 / 200
    finally:
        await connector.aclose()
