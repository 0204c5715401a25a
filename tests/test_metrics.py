"""The metrics endpoint as Prometheus sees it: scraped over real HTTP, checked by promtool."""

from __future__ import annotations

import functools
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client import REGISTRY as GLOBAL
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from freshd import __version__, metrics

ALLOWED_LABELS = {"provider", "outcome", "entity", "status_class", "state", "version", "le"}


@pytest.fixture(autouse=True)
def _no_snapshot() -> Iterator[None]:
    metrics.set_connection_snapshot(None)
    yield
    metrics.set_connection_snapshot(None)


def provider() -> str:
    return f"p{uuid.uuid4().hex[:8]}"  # counters are process-wide: a fresh label per test


async def scrape(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(url)


def sample(text: str, name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


async def test_scrape_over_http(tmp_path: Path) -> None:
    p = provider()
    metrics.sync_jobs_total.labels(p, "completed").inc()
    metrics.records_synced_total.labels(p, "orders").inc(250)
    metrics.sync_duration_seconds.labels(p).observe(42)
    metrics.provider_requests_total.labels(p, "2xx").inc(3)
    metrics.db_write_seconds.observe(0.004)
    metrics.actor_restarts_total.labels(p).inc()
    metrics.store_up.set(1)
    metrics.set_connection_snapshot(lambda: [(p, "idle", time.time() - 100), (p, "syncing", None)])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(metrics.serve_metrics, "127.0.0.1:0")
            assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
            assert not url.startswith("http://127.0.0.1:0/")
            response = await scrape(url)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            text = response.text
            assert (await scrape(url.removesuffix("/metrics") + "/other")).status_code == 404
            nursery.cancel_scope.cancel()
    assert sample(text, "freshd_sync_jobs_total", {"provider": p, "outcome": "completed"}) == 1
    assert sample(text, "freshd_records_synced_total", {"provider": p, "entity": "orders"}) == 250
    assert sample(text, "freshd_sync_duration_seconds_count", {"provider": p}) == 1
    assert sample(text, "freshd_sync_duration_seconds_bucket", {"provider": p, "le": "60.0"}) == 1
    assert sample(text, "freshd_provider_requests_total", {"provider": p, "status_class": "2xx"}) == 3
    assert sample(text, "freshd_actor_restarts_total", {"provider": p}) == 1
    assert (sample(text, "freshd_db_write_seconds_count", {}) or 0) >= 1
    assert sample(text, "freshd_store_up", {}) == 1
    assert sample(text, "freshd_build_info", {"version": __version__}) == 1
    assert sample(text, "freshd_connections", {"provider": p, "state": "idle"}) == 1
    assert sample(text, "freshd_connections", {"provider": p, "state": "syncing"}) == 1
    age = sample(text, "freshd_oldest_successful_sync_age_seconds", {"provider": p})
    assert age is not None and 99 <= age < 200
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (apt-get install -y --no-install-recommends prometheus); "
                    "everything but `promtool check metrics` passed")
    result = await trio.run_process(["promtool", "check", "metrics"], stdin=text.encode(),
                                    capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


async def test_port_in_use_fails_where_started() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
                    await nursery.start(metrics.serve_metrics, f"127.0.0.1:{port}")


async def test_malformed_address_refused() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with pytest.raises(ValueError, match="host:port"):
                await nursery.start(functools.partial(metrics.serve_metrics, "localhost"))


async def test_same_port_again_after_stop() -> None:
    """A reload or restart can bind the same address: the listener is closed on cancel."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(metrics.serve_metrics, "127.0.0.1:0")
            nursery.cancel_scope.cancel()
        address = url.removeprefix("http://").removesuffix("/metrics")
        async with trio.open_nursery() as nursery:
            assert await nursery.start(metrics.serve_metrics, address) == url
            assert (await scrape(url)).status_code == 200
            nursery.cancel_scope.cancel()


def test_connection_gauges_keep_series_and_skip_never_synced() -> None:
    p = provider()
    now = time.time()
    rows = [(p, "idle", now - 50), (p, "idle", now - 500), (p, "failed", None)]
    metrics.set_connection_snapshot(lambda: rows)
    get = metrics.REGISTRY.get_sample_value
    assert get("freshd_connections", {"provider": p, "state": "idle"}) == 2
    assert get("freshd_connections", {"provider": p, "state": "failed"}) == 1
    age = get("freshd_oldest_successful_sync_age_seconds", {"provider": p})
    assert age is not None and 499 <= age < 600  # the oldest success, not the newest
    rows[:] = [(p, "syncing", None)]
    assert get("freshd_connections", {"provider": p, "state": "idle"}) == 0  # still reported
    assert get("freshd_connections", {"provider": p, "state": "syncing"}) == 1
    assert get("freshd_oldest_successful_sync_age_seconds", {"provider": p}) is None


def test_failing_snapshot_does_not_break_the_scrape() -> None:
    def broken() -> list[tuple[str, str, float | None]]:
        raise RuntimeError("supervisor gone")

    metrics.set_connection_snapshot(broken)
    text = metrics_text()
    assert "freshd_build_info" in text
    assert "# TYPE freshd_connections gauge" in text


def metrics_text() -> str:
    return generate_latest(metrics.REGISTRY).decode()


def test_dedicated_registry_prefixed_names_and_no_per_connection_labels() -> None:
    metrics.set_connection_snapshot(lambda: [("woocommerce", "idle", time.time())])
    families = list(text_string_to_metric_families(metrics_text()))
    names = {family.name for family in families}
    assert {"freshd_sync_jobs", "freshd_records_synced", "freshd_sync_duration_seconds",
            "freshd_provider_requests", "freshd_db_write_seconds", "freshd_connections",
            "freshd_oldest_successful_sync_age_seconds", "freshd_store_up", "freshd_build_info",
            "freshd_actor_restarts"} <= names
    for family in families:
        assert family.name.startswith("freshd_"), family.name
        for s in family.samples:
            assert set(s.labels) <= ALLOWED_LABELS, (s.name, s.labels)
    assert GLOBAL.get_sample_value("freshd_store_up") is None  # not on the global registry
