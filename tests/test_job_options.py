"""Per-run options of a pull sync (`freshctl sync NAME --entities/--since/--dry-run`), `freshctl ensure`,
and progress that is always useful (pending, totals, a whole-job ETA), from the outside."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from freshd.admin.views import job_json
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from freshd.ctl_output import show_job, watch_lines
from freshd.progress import EntityProgress, JobControl, JobProgress
from freshd.store import jobs
from freshd.store.jobs import JobKind, JobOptions, JobStatus
from freshd.sync import JobRunner
from tests.helpers import query
from tests.test_daemon import CREDS, Running, connection_block, start_daemon


@pytest.fixture
async def shop(nursery: trio.Nursery) -> AsyncIterator[tuple[WooCommerceSimulator, str]]:
    """A WooCommerce simulator (120 customers and orders, 12 products) on loopback, and its URL."""
    sim = WooCommerceSimulator(records=120, seed=1, credentials=CREDS)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, host="127.0.0.1", port=0))
    yield sim, f"http://127.0.0.1:{port}"


def cursors(running: Running) -> dict[str, Any]:
    return {str(e): s for e, s in query(running.database_url, "SELECT entity, state FROM cursors")}


def records_snapshot(running: Running) -> list[tuple[object, ...]]:
    return query(running.database_url, "SELECT entity, external_id, content_hash, deleted_at FROM records"
                 " ORDER BY entity, external_id")


async def synced(nursery: trio.Nursery, tmp_path: Path, database_url: str, url: str) -> Running:
    running = await start_daemon(nursery, tmp_path, database_url, connection_block("eu", url))
    first = (await running.ctl_json("jobs"))["jobs"][0]
    assert (await running.wait_job(first["id"]))["status"] == "completed"
    return running


async def refused(running: Running, *args: str, status: int = 1) -> str:
    """A freshctl call that must fail with the daemon's error (exit 1: bad_request; 4: not_found) and queue
    nothing."""
    before = (await running.ctl_json("jobs"))["total"]
    result = await running.ctl(*args, check=False)
    assert result.returncode == status, (args, result.stdout, result.stderr)
    assert (await running.ctl_json("jobs"))["total"] == before
    return result.stderr


async def test_sync_entities_runs_only_those_and_an_unknown_entity_is_refused_listing_the_valid_ones(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, shop: tuple[WooCommerceSimulator, str],
) -> None:
    with trio.fail_after(60):
        running = await synced(nursery, tmp_path, database_url, shop[1])
        error = await refused(running, "sync", "eu", "--entities", "orders,invoices")
        assert "unknown entity 'invoices'" in error and "valid: customers, orders, products" in error
        assert "not_found" not in error
        await refused(running, "sync", "nowhere", "--entities", "orders", status=4)  # unknown connection

        queued = await running.ctl_json("sync", "eu", "--entities", "orders")
        assert queued["options"] == {"entities": ["orders"]}
        done = await running.wait_job(queued["job_id"])
        assert done["status"] == "completed" and list(done["progress"]) == ["orders"]
        assert done["options"] == {"entities": ["orders"]}
        # persisted on the job row, so a resumed job keeps them
        assert query(database_url, "SELECT options FROM sync_jobs WHERE id = %s", queued["job_id"]) == \
            [({"entities": ["orders"]},)]


async def test_since_rereads_an_entity_from_a_date_and_leaves_the_other_cursors_alone(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, shop: tuple[WooCommerceSimulator, str],
) -> None:
    with trio.fail_after(60):
        running = await synced(nursery, tmp_path, database_url, shop[1])
        before = cursors(running)
        queued = await running.ctl_json("sync", "eu", "--entities", "orders", "--since", "2000-01-01")
        done = await running.wait_job(queued["job_id"])
        assert done["status"] == "completed"
        assert done["progress"]["orders"]["processed"] == 120  # everything modified since 2000, read again
        assert done["progress"]["orders"]["changed"] == 0  # ... and unchanged
        after = cursors(running)
        assert after["customers"] == before["customers"] and after["products"] == before["products"]
        assert after["orders"]["cursor"] >= before["orders"]["cursor"]  # not moved backwards


async def test_since_is_refused_clearly_for_bad_dates_full_syncs_and_entities_without_a_date_filter(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, shop: tuple[WooCommerceSimulator, str],
) -> None:
    with trio.fail_after(60):
        running = await synced(nursery, tmp_path, database_url, shop[1])
        before = cursors(running)
        assert "expected a date or time in ISO 8601" in await refused(running, "sync", "eu", "--since", "yesterday")
        assert "in the future" in await refused(running, "sync", "eu", "--since", "2999-01-01")
        assert "--full" in await refused(running, "sync", "eu", "--full", "--since", "2020-01-01")
        error = await refused(running, "sync", "eu", "--entities", "customers", "--since", "2020-01-01")
        assert "cannot re-read customers from a date" in error
        # without --entities, every entity must support it: the error names the way out
        assert "--entities" in await refused(running, "sync", "eu", "--since", "2020-01-01")
        assert "--confirm-deletes" in await refused(running, "sync", "eu", "--full", "--dry-run", "--confirm-deletes")
        assert cursors(running) == before


async def test_dry_run_counts_what_would_be_created_changed_and_deleted_and_writes_nothing(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, shop: tuple[WooCommerceSimulator, str],
) -> None:
    sim, url = shop
    with trio.fail_after(60):
        running = await synced(nursery, tmp_path, database_url, url)
        sim.mutate("orders")  # one created, one updated, one trashed
        sim.mutate("customers")  # one created, one updated, one removed (seen only by a full listing)
        rows, state = records_snapshot(running), cursors(running)
        last_success = query(database_url, "SELECT last_success_at FROM connections")

        queued = await running.ctl_json("sync", "eu", "--entities", "orders", "--dry-run")
        done = await running.wait_job(queued["job_id"])
        assert done["status"] == "completed" and done["options"] == {"entities": ["orders"], "dry_run": True}
        orders = done["progress"]["orders"]
        assert (orders["created"], orders["changed"], orders["deleted"]) == (1, 2, 1)

        full = await running.wait_job((await running.ctl_json("sync", "eu", "--full", "--dry-run",
                                                               "--entities", "customers"))["job_id"])
        customers = full["progress"]["customers"]
        assert full["status"] == "completed"
        assert (customers["created"], customers["changed"], customers["deleted"]) == (1, 1, 1)

        # nothing written: no record, no cursor, not even the connection's last success
        assert records_snapshot(running) == rows and cursors(running) == state
        assert query(database_url, "SELECT last_success_at FROM connections") == last_success
        table = (await running.ctl("job", str(queued["job_id"]))).stdout
        assert "WOULD CREATE" in table and "dry_run True" in table

        # the real sync afterwards does what the dry run said
        real = await running.wait_job((await running.ctl_json("sync", "eu", "--entities", "orders"))["job_id"])
        assert (real["progress"]["orders"]["created"], real["progress"]["orders"]["changed"],
                real["progress"]["orders"]["deleted"]) == (1, 2, 1)


async def test_a_resumed_job_keeps_its_options(database_url: str) -> None:
    """Options live on the job row: an interrupted job read back by the engine runs with them."""
    from freshd.connectors.base import ConnectionSettings, connector_class
    from freshd.store import connections, open_store

    with trio.fail_after(30):
        async with open_store(database_url) as store:
            row, _ = await store.call(
                connections.upsert_connection, store.keyring, name="eu", tenant="default", provider="woocommerce",
                base_url="http://127.0.0.1:9", options={}, credentials={"consumer_key": "k", "consumer_secret": "s"},
                source="admin")
            job, _ = await store.call(jobs.create_job, row.id, JobKind.INCREMENTAL, "manual",
                                      options=JobOptions(entities=("orders",), since="2020-01-01T00:00:00+00:00",
                                                         dry_run=True))
            await store.call(jobs.set_status, job.id, JobStatus.RUNNING)
            await store.call(jobs.interrupt_running)
            resumed = await store.call(jobs.get_job, job.id)
            assert resumed is not None and resumed.status is JobStatus.INTERRUPTED
            settings = ConnectionSettings("eu", "woocommerce", "http://127.0.0.1:9",
                                          credentials={"consumer_key": "k", "consumer_secret": "s"})
            connector = connector_class("woocommerce")(settings)
            try:
                runner = JobRunner(store, connector, row.id, resumed, JobControl())
                assert list(runner.progress.entities) == ["orders"]
                assert runner.dry_run and runner.options.since == "2020-01-01T00:00:00+00:00"
            finally:
                await connector.aclose()


async def test_ensure_queues_a_sync_only_when_data_is_missing_or_stale_and_is_idempotent(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, shop: tuple[WooCommerceSimulator, str],
) -> None:
    sim, url = shop
    with trio.fail_after(60):
        sim.app.faults.latency = 0.5  # the initial sync stays live while we ask
        running = await start_daemon(nursery, tmp_path, database_url, connection_block("eu", url))
        # never synced: the initial sync queued at start is the answer, never a second job
        first = await running.ctl_json("ensure", "eu")
        again = await running.ctl_json("ensure", "eu")
        assert first["queued"] is False and first["job_id"] is not None and again["job_id"] == first["job_id"]
        sim.app.faults.latency = 0
        await running.wait_job(first["job_id"])

        fresh = await running.ctl_json("ensure", "eu")
        assert fresh["queued"] is False and fresh["job_id"] is None and fresh["data_age_seconds"] is not None
        assert (await running.ctl_json("jobs"))["total"] == 1
        assert "fresh" in (await running.ctl("ensure", "eu")).stdout

        # an entity without records: queued once, then the live job is the answer
        query(database_url, "DELETE FROM records WHERE entity = 'products' RETURNING 1")
        sim.app.faults.latency = 0.5
        missing = await running.ctl_json("ensure", "eu")
        assert missing["queued"] is True and "no records for products" in missing["reason"]
        assert (await running.ctl_json("ensure", "eu"))["job_id"] == missing["job_id"]
        sim.app.faults.latency = 0
        refill = await running.wait_job(missing["job_id"])
        assert refill["kind"] == "full" and list(refill["progress"]) == ["products"]  # listed whole, only them
        assert query(database_url, "SELECT count(*) FROM records WHERE entity = 'products'") == [(12,)]

        # stale data (older than stale_after, 4 h by default)
        query(database_url, "UPDATE connections SET last_success_at = now() - interval '5 hours' RETURNING 1")
        stale = await running.ctl_json("ensure", "eu")
        assert stale["queued"] is True and "stale" in stale["reason"]
        await running.wait_job(stale["job_id"])

        result = await running.ctl("ensure", "nowhere", check=False)
        assert result.returncode == 4 and "nowhere" in result.stderr


async def test_health_sweep_requeues_a_connection_whose_last_sync_stored_nothing_of_a_nonzero_total(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, shop: tuple[WooCommerceSimulator, str],
) -> None:
    with trio.fail_after(60):
        running = await synced(nursery, tmp_path, database_url, shop[1])
        await running.daemon.health_sweep()
        assert (await running.ctl_json("jobs"))["total"] == 1  # it stored records: nothing to do
        # the last completed sync reported 120 orders and stored none
        query(database_url, "UPDATE sync_jobs SET progress = '{\"orders\": {\"total\": 120, \"processed\": 0,"
              " \"failed\": 0, \"skipped\": 0, \"state\": \"done\"}}' RETURNING 1")
        await running.daemon.health_sweep()
        jobs_now = (await running.ctl_json("jobs"))["jobs"]
        assert len(jobs_now) == 2 and jobs_now[0]["trigger"] == "health"
        assert (await running.wait_job(jobs_now[0]["id"]))["status"] == "completed"


def test_eta_covers_the_whole_job_before_the_last_entity_runs() -> None:
    progress = JobProgress({
        "customers": EntityProgress(total=100, processed=100, state="done"),
        "orders": EntityProgress(total=1000, processed=200, state="running"),
        "products": EntityProgress(total=300, state="pending"),
    })
    assert progress.eta_seconds() is None  # no rate observed yet
    progress.rate = 100.0  # records/s over the job so far
    assert progress.eta_seconds() == (800 + 300) / 100
    progress.rate_ceiling = 50.0  # the rate limiter allows fewer: it is the bottleneck
    assert progress.eta_seconds() == (800 + 300) / 50
    totals = progress.totals()
    assert totals == {"total": 1400, "processed": 300, "failed": 0, "skipped": 0, "pending": 1100}
    assert progress.entities["products"].pending == 300


def test_job_json_has_pending_per_entity_and_job_totals_and_the_eta_is_shown() -> None:
    from datetime import UTC, datetime

    job = jobs.JobRow(1, 1, "eu", "default", JobKind.INCREMENTAL, JobStatus.RUNNING, "manual", {},
                      datetime.now(UTC), datetime.now(UTC), None, None)
    progress = JobProgress({"orders": EntityProgress(total=50, processed=10, failed=2, skipped=3, state="running",
                                                     estimated=True),
                            "products": EntityProgress(total=40, state="pending")}, rate=5.0)
    out = job_json(job, progress)
    assert out["progress"]["orders"]["pending"] == 35 and out["progress"]["orders"]["estimated"] is True
    assert out["totals"] == {"total": 90, "processed": 10, "failed": 2, "skipped": 3, "pending": 75}
    assert out["eta_seconds"] == 15
    assert "eta 15s" in show_job({**out, "failed_items": []}) and "~50" in show_job({**out, "failed_items": []})
    assert "eta 15s" in watch_lines(out)[0]
