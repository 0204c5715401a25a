"""Every Prometheus metric freshd exports, on one registry, and `serve_metrics()`.

    freshd_sync_jobs_total{provider,outcome}              counter  outcome: completed, partial,
                                                                   failed, cancelled, interrupted
    freshd_records_synced_total{provider,entity}          counter
    freshd_sync_duration_seconds{provider}                histogram  1 s .. 4 h
    freshd_provider_requests_total{provider,status_class} counter  "2xx", "4xx", "5xx", "error"
    freshd_db_write_seconds                               histogram  1 ms .. 5 s
    freshd_connections{provider,state}                    gauge    at scrape time, from the snapshot
    freshd_oldest_successful_sync_age_seconds{provider}   gauge    at scrape time, from the snapshot
    freshd_store_up                                       gauge    1 when PostgreSQL answers
    freshd_build_info{version}                            gauge    always 1
    freshd_actor_restarts_total{provider}                 counter
    freshd_rate_limit_wait_seconds_total{provider}        counter  time requests waited for a token
    freshd_rate_limited_total{provider}                   counter  429s / quota errors received
    freshd_circuit_breaker_transitions_total{provider,state} counter
    freshd_circuits_open{provider}                        gauge    breakers open or half-open
    freshd_token_refreshes_total{provider,outcome}        counter  outcome: ok, failed, rejected
    freshd_reconciliations_refused_total{provider,reason} counter  reason: incomplete (the listing did not
                                                                   account for the provider's total), held
                                                                   (too large a share, needs confirmation)
    freshd_provider_clock_skew_total{provider}            counter  provider clocks refused as a cursor source
    freshd_provider_responses_refused_total{provider,reason} counter  too_large, retry_after_too_long, deadline
    freshd_cluster_members_alive                          gauge    daemons heart-beating on this database
    freshd_cluster_leases_held                            gauge    connections this member runs
    freshd_cluster_leases_lost_total                      counter  leases this member could not renew
    freshd_cluster_fencing_rejections_total               counter  writes refused: the lease was gone
    freshd_cluster_handovers_total{direction}             counter  given (to a member that joined), taken
    freshd_cluster_takeover_seconds                       histogram  lease expiry to take-over (dead owner)

Labels never name a connection: a fleet of thousands of connections must not mean thousands
of series.  Per-connection detail is the admin socket's job (``freshctl status``).

The two connection gauges are computed when Prometheus scrapes, from the callback the daemon
registers with `set_connection_snapshot` (a list of ``(provider, state, last_success_epoch)``).
A (provider, state) pair once seen keeps being reported (as 0 when empty), so series do not
vanish; connections that never synced are left out of the age gauge.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import structlog
import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Scope,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from freshd import __version__
from freshd.asgi import acknowledge_lifespan, serve_asgi

__all__ = [
    "REGISTRY",
    "ConnectionSnapshot",
    "actor_restarts_total",
    "breaker_transitions_total",
    "build_info",
    "circuits_open",
    "cluster_handovers_total",
    "cluster_leases_held",
    "cluster_leases_lost_total",
    "cluster_members_alive",
    "cluster_takeover_seconds",
    "db_write_seconds",
    "fencing_rejections_total",
    "provider_clock_skew_total",
    "provider_requests_total",
    "provider_responses_refused_total",
    "rate_limit_wait_seconds_total",
    "rate_limited_total",
    "reconciliations_refused_total",
    "records_synced_total",
    "serve_metrics",
    "set_connection_snapshot",
    "store_up",
    "sync_duration_seconds",
    "sync_jobs_total",
    "token_refreshes_total",
]

log = structlog.get_logger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

sync_jobs_total = Counter(
    "freshd_sync_jobs_total", "Sync jobs finished, by outcome.",
    ["provider", "outcome"], registry=REGISTRY,
)
records_synced_total = Counter(
    "freshd_records_synced_total", "Records written to the store.",
    ["provider", "entity"], registry=REGISTRY,
)
sync_duration_seconds = Histogram(
    "freshd_sync_duration_seconds", "Wall time of a sync job, start to outcome.",
    ["provider"], registry=REGISTRY,
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
)
provider_requests_total = Counter(
    "freshd_provider_requests_total", "HTTP requests to providers, by status class (or error).",
    ["provider", "status_class"], registry=REGISTRY,
)
db_write_seconds = Histogram(
    "freshd_db_write_seconds", "Time of one store transaction.", registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
store_up = Gauge("freshd_store_up", "1 when the store (PostgreSQL) answers, else 0.", registry=REGISTRY)
build_info = Gauge(
    "freshd_build_info", "Always 1; the version is in the label.", ["version"], registry=REGISTRY
)
build_info.labels(__version__).set(1)
actor_restarts_total = Counter(
    "freshd_actor_restarts_total", "Connection actors restarted by the supervisor after a crash.",
    ["provider"], registry=REGISTRY,
)

rate_limit_wait_seconds_total = Counter(
    "freshd_rate_limit_wait_seconds_total", "Seconds requests spent waiting for the rate limiter.",
    ["provider"], registry=REGISTRY,
)
rate_limited_total = Counter(
    "freshd_rate_limited_total", "Responses that said slow down (429, quota errors).",
    ["provider"], registry=REGISTRY,
)
breaker_transitions_total = Counter(
    "freshd_circuit_breaker_transitions_total", "Circuit breaker state changes, by the state entered.",
    ["provider", "state"], registry=REGISTRY,
)
circuits_open = Gauge(
    "freshd_circuits_open", "Connections whose circuit breaker is open or half-open.",
    ["provider"], registry=REGISTRY,
)
token_refreshes_total = Counter(
    "freshd_token_refreshes_total", "Access token refreshes, by outcome (ok, failed, rejected).",
    ["provider", "outcome"], registry=REGISTRY,
)

reconciliations_refused_total = Counter(
    "freshd_reconciliations_refused_total",
    "Deletions not inferred from a listing: incomplete evidence, or held for confirmation.",
    ["provider", "reason"], registry=REGISTRY,
)
provider_clock_skew_total = Counter(
    "freshd_provider_clock_skew_total",
    "Provider Date headers too far from our clock to bound a cursor (our clock was used).",
    ["provider"], registry=REGISTRY,
)
provider_responses_refused_total = Counter(
    "freshd_provider_responses_refused_total",
    "Provider responses refused: body too large, Retry-After too long, request deadline passed.",
    ["provider", "reason"], registry=REGISTRY,
)

cluster_members_alive = Gauge("freshd_cluster_members_alive", "Daemons heart-beating on this database.",
                              registry=REGISTRY)
cluster_leases_held = Gauge("freshd_cluster_leases_held", "Connections whose lease this member holds.",
                            registry=REGISTRY)
cluster_leases_lost_total = Counter("freshd_cluster_leases_lost_total",
                                    "Leases this member could not renew (expired or taken over).", registry=REGISTRY)
fencing_rejections_total = Counter("freshd_cluster_fencing_rejections_total",
                                   "Writes refused because the writer no longer held the lease.", registry=REGISTRY)
cluster_handovers_total = Counter("freshd_cluster_handovers_total",
                                  "Connections handed over: given to a member that should run them, or taken.",
                                  ["direction"], registry=REGISTRY)
cluster_takeover_seconds = Histogram(
    "freshd_cluster_takeover_seconds", "From a dead owner's lease expiry to its take-over by this member.",
    registry=REGISTRY, buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120))

# -- computed at scrape time -----------------------------------------------------------------------------

ConnectionSnapshot = Callable[[], Iterable[tuple[str, str, float | None]]]


class _ConnectionCollector(Collector):
    def __init__(self) -> None:
        self.snapshot: ConnectionSnapshot | None = None
        self.seen: set[tuple[str, str]] = set()
        self.clock: Callable[[], float] = time.time

    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "freshd_connections", "Connections by provider and state.", labels=["provider", "state"]
        )
        oldest = GaugeMetricFamily(
            "freshd_oldest_successful_sync_age_seconds",
            "Seconds since the least recently successful connection of a provider last synced.",
            labels=["provider"],
        )
        rows: list[tuple[str, str, float | None]] = []
        if self.snapshot is not None:
            try:
                rows = list(self.snapshot())
            except Exception as exc:  # a scrape must never take the daemon's data down with it
                log.warning("metrics.snapshot_failed", error=repr(exc))
        counts: dict[tuple[str, str], int] = dict.fromkeys(self.seen, 0)
        last_success: dict[str, float] = {}
        for provider, state, success in rows:
            counts[(provider, state)] = counts.get((provider, state), 0) + 1
            if success is not None:
                last_success[provider] = min(success, last_success.get(provider, success))
        self.seen.update(counts)
        for (provider, state), count in sorted(counts.items()):
            connections.add_metric([provider, state], count)
        now = self.clock()
        for provider, success in sorted(last_success.items()):
            oldest.add_metric([provider], max(0.0, now - success))
        yield connections
        yield oldest

    def describe(self) -> Iterator[Metric]:
        return self.collect()


_connections = _ConnectionCollector()
REGISTRY.register(_connections)


def set_connection_snapshot(fn: ConnectionSnapshot | None) -> None:
    """Register the callback the connection gauges read at scrape time (None: no connections).

    It runs on the trio thread (the endpoint is served there), so it may read daemon state
    without locks; it must be quick and must not block.
    """
    _connections.snapshot = fn
    _connections.seen.clear()


# -- the endpoint ----------------------------------------------------------------------------------------

_prometheus_app = make_asgi_app(REGISTRY)


async def _app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """`/metrics` from prometheus_client; 404 elsewhere; lifespan acknowledged, so hypercorn is quiet."""
    if scope["type"] == "lifespan":
        await acknowledge_lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/metrics":
        await _prometheus_app(scope, receive, send)
        return
    await receive()
    start: HTTPResponseStartEvent = {
        "type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]
    }
    body: HTTPResponseBodyEvent = {
        "type": "http.response.body", "body": b"not found: metrics are at /metrics\n", "more_body": False
    }
    await send(start)
    await send(body)


async def serve_metrics(
    address: str, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``/metrics`` over HTTP at `address` (``host:port``; port 0 picks a free one).

    Runs on the trio loop with hypercorn (no threads) until cancelled.  The socket is bound
    here, before hypercorn starts, so a bad address (ValueError) or a port in use (OSError)
    raises plainly where the task was started; hypercorn gets the bound socket as an
    ``fd://`` bind.  Reports the URL it really listens on (``http://127.0.0.1:9464/metrics``)
    through `task_status`.  Hypercorn logs through stdlib logging (WARNING+ reaches the
    output, see freshd.logs); no access log.
    """
    from freshd.config import split_host_port  # config imports the policies, which import metrics

    host, port = split_host_port(address)

    def url(bound: int) -> str:
        where = f"http://{host if ':' not in host else f'[{host}]'}:{bound}/metrics"
        log.info("metrics.listening", url=where)
        return where

    await serve_asgi(_app, host, port, report=url, task_status=task_status)
