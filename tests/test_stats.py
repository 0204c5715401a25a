"""Daily statistics (the cleanup sweep), `freshctl stats` and `health`'s record counts, and the sync
sweep: the scheduled-sync switch, stale connections queued, failed connections first."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from freshd.messages import ActorMessage
from freshd.store.stats import error_kind
from tests.helpers import query
from tests.test_daemon import CREDS, Running, connection_block, start_daemon


@pytest.fixture
async def shops(nursery: trio.Nursery) -> AsyncIterator[list[str]]:
    """Two WooCommerce simulators on loopback (their URLs)."""
    urls = []
    for seed in (1, 2):
        sim = WooCommerceSimulator(records=30, seed=seed, credentials=CREDS)
        port = await nursery.start(functools.partial(serve_asgi, sim.app, host="127.0.0.1", port=0))
        urls.append(f"http://127.0.0.1:{port}")
    yield urls


async def synced(nursery: trio.Nursery, tmp_path: Path, database_url: str, urls: list[str]) -> Running:
    body = "".join(connection_block(name, url) for name, url in zip(("eu", "us"), urls, strict=False))
    running = await start_daemon(nursery, tmp_path, database_url, body)
    for job in (await running.ctl_json("jobs"))["jobs"]:
        assert (await running.wait_job(job["id"]))["status"] == "completed"
    return running


def add_finished_job(database_url: str, connection: str, status: str, *, progress: str, error: str | None = None,
                     failed_items: int = 0, seconds: int = 60, days_ago: int = 1) -> None:
    """A job that finished `days_ago` days ago (at noon UTC), as the store would have it."""
    noon = datetime.combine(datetime.now(UTC).date() - timedelta(days=days_ago), time(12), UTC)
    job_id = query(
        database_url,
        "INSERT INTO sync_jobs (connection_id, kind, status, trigger, progress, error, created_at, started_at,"
        " finished_at) SELECT id, 'incremental', %s, 'schedule', %s::jsonb, %s, %s, %s, %s"
        " FROM connections WHERE name = %s RETURNING id",
        status, progress, error, noon, noon, noon + timedelta(seconds=seconds), connection)[0][0]
    for n in range(failed_items):
        query(database_url, "INSERT INTO failed_items (job_id, entity, external_id, reason) VALUES"
              " (%s, 'orders', %s, 'bad') RETURNING 1", job_id, str(n))


async def test_cleanup_sweep_stores_yesterdays_statistics_per_connection_and_freshctl_stats_shows_them(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, shops: list[str],
) -> None:
    with trio.fail_after(60):
        running = await synced(nursery, tmp_path, database_url, shops)
        ok = '{"orders": {"processed": 10, "created": 4, "changed": 5, "deleted": 1, "state": "done"}}'
        add_finished_job(database_url, "eu", "completed", progress=ok, seconds=30)
        add_finished_job(database_url, "eu", "partial", progress=ok, error="some items failed (see freshctl job)",
                         failed_items=2, seconds=90)
        add_finished_job(database_url, "eu", "failed", progress="{}", error="orders: HTTP 429 rate limited")
        add_finished_job(database_url, "us", "failed", progress="{}", error="credentials rejected (401)")
        add_finished_job(database_url, "us", "completed", progress=ok, days_ago=3)  # not yesterday
        # a row past the retention (90 days by default) is dropped by the same sweep
        query(database_url, "INSERT INTO daily_stats (day, connection_id, tenant, syncs, successes)"
              " SELECT current_date - 100, id, tenant, 1, 1 FROM connections WHERE name = 'eu' RETURNING 1")

        with capture_logs() as logs:
            await running.ctl("trigger", "cleanup")  # runs the cleanup sweep through the scheduler
            while not any(e["event"] == "cleanup.done" for e in logs):
                await trio.sleep(0.05)
        summary = [e for e in logs if e["event"] == "stats.daily"]
        assert len(summary) == 1 and summary[0]["connections"] == 2 and summary[0]["syncs"] == 4
        assert summary[0]["successes"] == 2 and summary[0]["success_rate"] == 0.5

        result = await running.ctl_json("stats", "--days", "2")
        by_name = {s["connection"]: s for s in result["stats"]}
        eu = by_name["eu"]
        assert (eu["syncs"], eu["successes"], eu["success_rate"]) == (3, 2, 0.6667)
        assert eu["records"] == {"orders": 20} and (eu["created"], eu["changed"], eu["deleted"]) == (8, 10, 2)
        assert eu["failed_items"] == 2 and eu["errors"] == {"items_failed": 1, "rate_limited": 1}
        assert eu["avg_duration_seconds"] == pytest.approx(60.0, abs=0.01)  # (30 + 90 + 60) / 3
        assert by_name["us"]["errors"] == {"auth": 1} and by_name["us"]["success_rate"] == 0.0
        assert result["retention_days"] == 90
        (default,) = result["tenants"]  # both connections are the default tenant's
        assert (default["connections"], default["syncs"], default["successes"], default["records"]) == (2, 4, 2, 20)
        assert default["errors"] == {"items_failed": 1, "rate_limited": 1, "auth": 1}
        assert query(database_url, "SELECT count(*) FROM daily_stats WHERE day < current_date - 90") == [(0,)]

        table = (await running.ctl("stats", "--days", "2")).stdout
        assert "eu" in table and "66.7%" in table and "rate_limited 1" in table
        # computing the same day again replaces it (the sweep may run twice)
        await running.daemon.daily_stats()
        assert len((await running.ctl_json("stats", "--days", "2"))["stats"]) == 2

        assert (await running.ctl_json("stats", "--connection", "eu"))["stats"][0]["connection"] == "eu"
        bad = await running.ctl("stats", "--connection", "nowhere", check=False)
        assert bad.returncode == 4 and "nowhere" in bad.stderr
        assert (await running.ctl("stats", "--days", "0", check=False)).returncode == 2


def test_error_kinds_group_job_errors_by_what_went_wrong() -> None:
    assert error_kind("completed", None) is None
    assert error_kind("cancelled", "cancelled by request") == "cancelled"
    assert error_kind("partial", "orders: listing incomplete, no deletions inferred") == "incomplete_listing"
    assert error_kind("failed", "orders: HTTP 503 from the provider") == "unavailable"
    assert error_kind("failed", "something odd") == "provider"


async def test_health_shows_live_record_counts_per_entity(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, shops: list[str],
) -> None:
    with trio.fail_after(60):
        running = await synced(nursery, tmp_path, database_url, shops)
        query(database_url, "UPDATE records SET deleted_at = now() WHERE entity = 'orders'"
              " AND external_id = '1' AND connection_id = (SELECT id FROM connections WHERE name = 'eu') RETURNING 1")
        health = await running.ctl_json("health")
        assert health["records"]["eu"] == {"customers": 30, "orders": 29, "products": 3}
        assert "records: eu: customers 30, orders 29, products 3" in (await running.ctl("health")).stdout


def switch_scheduled_sync(running: Running, on: bool) -> None:
    config = running.daemon.config
    running.daemon.config = dataclasses.replace(
        config, schedule=dataclasses.replace(config.schedule, scheduled_sync=on))


async def test_scheduled_sync_false_queues_nothing_on_schedule_and_true_queues_a_stale_connection(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, shops: list[str],
) -> None:
    with trio.fail_after(60):
        running = await synced(nursery, tmp_path, database_url, shops[:1])  # scheduled_sync = false
        query(database_url, "UPDATE connections SET last_success_at = now() - interval '5 hours' RETURNING 1")
        with capture_logs() as logs:
            await running.ctl("trigger", "sync")  # the sweep, as the scheduler runs it
            while not any(e["event"] == "sync.sweep" for e in logs):
                await trio.sleep(0.05)
        assert [e["queued"] for e in logs if e["event"] == "sync.sweep"] == [0]
        assert (await running.ctl_json("jobs"))["total"] == 1  # off: nothing queued

        switch_scheduled_sync(running, True)
        await running.ctl("trigger", "sync")
        while (await running.ctl_json("jobs"))["total"] == 1:
            await trio.sleep(0.05)
        job = (await running.ctl_json("jobs"))["jobs"][0]
        assert job["trigger"] == "schedule" and job["kind"] == "incremental"
        assert (await running.wait_job(job["id"]))["status"] == "completed"


async def test_sync_sweep_queues_stale_connections_and_failed_ones_first(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, shops: list[str],
) -> None:
    with trio.fail_after(60):
        running = await synced(nursery, tmp_path, database_url, shops)
        switch_scheduled_sync(running, True)
        await running.daemon.sync_sweep()
        assert (await running.ctl_json("jobs"))["total"] == 2  # both fresh: nothing due

        # both stale; "us" failed last time, so it is queued (and nudged) first although "eu" sorts first
        query(database_url, "UPDATE connections SET last_success_at = now() - interval '5 hours' RETURNING 1")
        query(database_url, "UPDATE connections SET last_error = 'HTTP 503' WHERE name = 'us' RETURNING 1")
        sent: list[str] = []
        original = running.daemon.supervisor.send_nowait

        def record(name: str, message: ActorMessage) -> bool:
            sent.append(name)
            return original(name, message)

        running.daemon.supervisor.send_nowait = record  # type: ignore[method-assign]
        await running.daemon.sync_sweep()
        assert sent == ["us", "eu"]
        queued = [j for j in (await running.ctl_json("jobs"))["jobs"] if j["trigger"] == "schedule"]
        assert sorted(j["connection"] for j in queued) == ["eu", "us"]
        assert min(queued, key=lambda j: j["id"])["connection"] == "us"
        for job in queued:
            await running.wait_job(job["id"])
