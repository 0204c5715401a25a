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

ALLOWED_LABELS = {"provider", "outcome", "entity", "status_class", "state", "version", "le", "reason", "operation",
                  "type",  # type: a two-way conflict type (five values)
                  "direction"}  # a lease handover, given or taken (once an earlier test parked a connection)


@pytest.fixture(autouse=True)
def _no_snapshot() -> Iterator[None]:
    metrics.set_connection_snapshot(None)
    metrics.set_job_counts(None)
    metrics.set_readiness(None)
    yield
    metrics.set_connection_snapshot(None)
    metrics.set_job_counts(None)
    metrics.set_readiness(None)


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
            "freshd_actor_restarts", "freshd_connections_stale", "freshd_token_expiry_timestamp_seconds",
            "freshd_jobs_queued", "freshd_jobs_running", "freshd_provider_request_duration_seconds"} <= names
    for family in families:
        # freshd's own, or the standard process_* names every process dashboard knows
        assert family.name.startswith(("freshd_", "process_")), family.name
        for s in family.samples:
            assert set(s.labels) <= ALLOWED_LABELS, (s.name, s.labels)
    assert GLOBAL.get_sample_value("freshd_store_up") is None  # not on the global registry


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process metrics need /proc (Linux)")
def test_process_metrics_are_on_freshd_registry() -> None:
    get = metrics.REGISTRY.get_sample_value
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                 "process_start_time_seconds"):
        value = get(name)
        assert value is not None and value > 0, name
    start = get("process_start_time_seconds")
    assert start is not None and start <= time.time()


def test_no_created_series() -> None:
    metrics.sync_jobs_total.labels(provider(), "completed").inc()
    metrics.sync_duration_seconds.labels(provider()).observe(1)
    text = metrics_text()
    assert "freshd_sync_jobs_total{" in text
    assert "_created" not in text


async def test_provider_latency_histogram_by_provider_and_operation() -> None:
    """Every completed attempt is timed, labelled with its rate-limit operation (or "default");
    a failed attempt is timed too, so a slow failing provider shows in the latency."""
    from freshd.connectors.http import ProviderClient
    from freshd.errors import PermanentError
    from freshd.policies.retry import RetryPolicy

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404 if request.url.path == "/gone" else 200, json={"ok": True})

    p = provider()
    client = ProviderClient(p, "http://provider.test", transport=httpx.MockTransport(handler),
                            retry=RetryPolicy(attempts=1))
    with trio.fail_after(10):
        await client.get_json("/reports/1", limit="getReport")
        await client.get_json("/reports/2", limit="getReport")
        await client.get_json("/orders")
        with pytest.raises(PermanentError):
            await client.get_json("/gone")
        await client.aclose()
    get = metrics.REGISTRY.get_sample_value
    assert get("freshd_provider_request_duration_seconds_count", {"provider": p, "operation": "getReport"}) == 2
    assert get("freshd_provider_request_duration_seconds_count", {"provider": p, "operation": "default"}) == 2
    assert get("freshd_provider_request_duration_seconds_bucket",
               {"provider": p, "operation": "default", "le": "+Inf"}) == 2


def test_stale_token_expiry_and_job_gauges_computed_at_scrape_time() -> None:
    p = provider()
    now = time.time()
    rows = [
        metrics.ConnectionSample(p, "idle", now - 10, name="a", token_expires_at=now + 3600),
        metrics.ConnectionSample(p, "idle", now - 9000, name="b", token_expires_at=now + 60, stale=True),
        metrics.ConnectionSample(p, "reauth_required", None, name="c"),
    ]
    metrics.set_connection_snapshot(lambda: rows)
    metrics.set_job_counts(lambda: (7, 3))
    get = metrics.REGISTRY.get_sample_value
    assert get("freshd_connections_stale", {"provider": p}) == 1
    assert get("freshd_token_expiry_timestamp_seconds", {"provider": p}) == now + 60  # the earliest
    assert get("freshd_connections", {"provider": p, "state": "reauth_required"}) == 1
    assert get("freshd_jobs_queued") == 7
    assert get("freshd_jobs_running") == 3
    rows[1] = metrics.ConnectionSample(p, "idle", now, name="b")  # synced again: no longer stale
    assert get("freshd_connections_stale", {"provider": p}) == 0  # still reported, as 0
    assert get("freshd_connection_state", {"connection": "a", "provider": p, "state": "idle"}) is None


def test_per_connection_gauges_only_when_opted_in() -> None:
    p = provider()
    now = time.time()
    rows = [metrics.ConnectionSample(p, "idle", now - 30, name="shop-eu"),
            metrics.ConnectionSample(p, "error", None, name="shop-us")]
    metrics.set_connection_snapshot(lambda: rows)
    text = metrics_text()
    assert "shop-eu" not in text and "freshd_connection_state" not in text
    metrics.set_connection_snapshot(lambda: rows, per_connection=True)
    get = metrics.REGISTRY.get_sample_value
    assert get("freshd_connection_state", {"connection": "shop-eu", "provider": p, "state": "idle"}) == 1
    assert get("freshd_connection_state", {"connection": "shop-us", "provider": p, "state": "error"}) == 1
    age = get("freshd_connection_last_success_age_seconds", {"connection": "shop-eu", "provider": p})
    assert age is not None and 29 <= age < 100
    assert get("freshd_connection_last_success_age_seconds", {"connection": "shop-us", "provider": p}) is None


def test_per_connection_is_off_by_default_in_the_config(tmp_path: Path) -> None:
    from freshd.config import ConfigError, load_config

    path = tmp_path / "freshd.toml"
    path.write_text("")
    assert load_config(path, env={}).metrics.per_connection is False
    path.write_text("[metrics]\nper_connection = true\n")
    assert load_config(path, env={}).metrics.per_connection is True
    path.write_text('[metrics]\nper_connection = "yes"\n')
    with pytest.raises(ConfigError, match="per_connection"):
        load_config(path, env={})


# -- /healthz and /readyz ----------------------------------------------------------------------------------


async def test_health_and_ready_endpoints_over_http() -> None:
    verdict: list[str | None] = ["store: the database does not answer"]
    calls = 0

    async def check() -> str | None:
        nonlocal calls
        calls += 1
        return verdict[0]

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = (await nursery.start(metrics.serve_metrics, "127.0.0.1:0")).removesuffix("/metrics")
            live = await scrape(base + "/healthz")
            assert live.status_code == 200 and live.json() == {"status": "alive"}
            starting = await scrape(base + "/readyz")  # no daemon registered yet
            assert starting.status_code == 503 and "not running" in starting.json()["reason"]

            metrics.set_readiness(check)
            down = await scrape(base + "/readyz")
            assert down.status_code == 503
            assert down.headers["content-type"] == "application/json"
            assert down.json() == {"status": "unavailable", "reason": "store: the database does not answer"}
            verdict[0] = None
            metrics.set_readiness(check)  # drops the cached verdict
            ready = await scrape(base + "/readyz")
            assert ready.status_code == 200 and ready.json() == {"status": "ready"}
            before = calls
            for _ in range(5):
                assert (await scrape(base + "/readyz")).status_code == 200
            assert calls == before  # cached for a second: probes cannot hammer the store
            assert (await scrape(base + "/healthz")).status_code == 200  # liveness never asks the check
            nursery.cancel_scope.cancel()


async def test_failing_readiness_check_is_a_503_not_a_crash() -> None:
    from freshd.logs import register_secret

    secret = f"pw-{uuid.uuid4().hex}"
    register_secret(secret)

    async def broken() -> str | None:
        raise RuntimeError(f"boom: postgresql://freshd:{secret}@db/freshd")

    metrics.set_readiness(broken)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            base = (await nursery.start(metrics.serve_metrics, "127.0.0.1:0")).removesuffix("/metrics")
            response = await scrape(base + "/readyz")
            assert response.status_code == 503 and "boom" in response.json()["reason"]
            assert secret not in response.text  # whoever reaches the port reads the reason
            assert (await scrape(base + "/metrics")).status_code == 200
            nursery.cancel_scope.cancel()
