"""Every Prometheus metric freshd exports, on one registry, and `serve_metrics()`.

    freshd_sync_jobs_total{provider,outcome}              counter  outcome: completed, partial,
                                                                   failed, cancelled, interrupted
    freshd_records_synced_total{provider,entity}          counter
    freshd_sync_duration_seconds{provider}                histogram  1 s .. 4 h
    freshd_provider_requests_total{provider,status_class} counter  "2xx", "4xx", "5xx", "error"
    freshd_db_write_seconds                               histogram  1 ms .. 5 s
    freshd_sync_writer_seconds_total{provider,state}      counter  a sync's writer: committing batches, or
                                                                   waiting for pages (fetched, encoded); the
                                                                   committing share near 1: PostgreSQL sets the
                                                                   pace, near 0: the provider (or its limit)
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
    freshd_events_published_total                         counter  change events XADDed to Redis
    freshd_event_relay_seconds                            histogram  one XADD pipeline
    freshd_event_relay_lag_seconds                        gauge    age of the oldest event just published
    freshd_twoway_runs_total{state}                       counter  two-way runs ended: done, partial, failed,
                                                                   cancelled
    freshd_twoway_runs_processing                         gauge    two-way runs processing in this daemon
    freshd_twoway_items_total{outcome}                    counter  queue items settled: done, conflict,
                                                                   failed, skipped
    freshd_twoway_writes_total{provider}                  counter  provider writes made by two-way sync
    freshd_twoway_conflicts_total{type}                   counter  DataMismatch, DuplicateKey, ValidationError,
                                                                   AuthError, RetryExhausted (settled by a rule too)
    freshd_twoway_batch_seconds                           histogram  one batch, decide to settle
    freshd_cluster_members_alive                          gauge    daemons heart-beating on this database
    freshd_cluster_leases_held                            gauge    connections this member runs
    freshd_cluster_leases_lost_total                      counter  leases this member could not renew
    freshd_cluster_fencing_rejections_total               counter  writes refused: the lease was gone
    freshd_cluster_handovers_total{direction}             counter  given (to a member that joined), taken
    freshd_cluster_takeover_seconds                       histogram  lease expiry to take-over (dead owner)
    freshd_provider_request_duration_seconds{provider,operation} histogram  one attempt, sent to last body
                                                                   byte; operation: the rate-limit name
                                                                   (`limit=`, SP-API operations) or "default"
    freshd_connections_stale{provider}                    gauge    at scrape time: synced once, now older than
                                                                   [staleness] stale_after
    freshd_token_expiry_timestamp_seconds{provider}       gauge    at scrape time: the earliest access-token
                                                                   expiry (epoch seconds) of a provider
    freshd_jobs_queued                                    gauge    at scrape time: sync jobs waiting for a slot
    freshd_jobs_running                                   gauge    at scrape time: sync jobs holding a slot
    process_*                                             the standard process metrics (resident memory,
                                                          CPU seconds, open fds, start time), Linux only

Only with ``[metrics] per_connection = true`` (never by default):

    freshd_connection_state{connection,provider,state}    gauge    1, for each connection's current state
    freshd_connection_last_success_age_seconds{connection,provider}  gauge

Otherwise labels never name a connection: a fleet of thousands of connections must not mean
thousands of series.  Per-connection detail is the admin socket's job (``freshctl status``).
No ``*_created`` series (`disable_created_metrics`): they double the series count for nothing.

The connection gauges are computed when Prometheus scrapes, from the callback the daemon
registers with `set_connection_snapshot` (`ConnectionSample` records, or plain
``(provider, state, last_success_epoch)`` tuples); the job gauges from `set_job_counts`.
A (provider, state) pair once seen keeps being reported (as 0 when empty), so series do not
vanish; connections that never synced are left out of the age and staleness gauges.

The endpoint also answers ``/healthz`` (liveness: 200 while the process serves) and
``/readyz`` (200 when the check registered with `set_readiness` passes, else 503 with a
JSON reason; the verdict is cached for a second, so probes cannot hammer the store).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass

import structlog
import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Scope,
)
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    make_asgi_app,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from freshd import __version__
from freshd.addresses import split_host_port
from freshd.asgi import acknowledge_lifespan, serve_asgi
from freshd.logs import scrub

__all__ = [
    "REGISTRY",
    "ConnectionSample",
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
    "event_relay_lag_seconds",
    "event_relay_seconds",
    "events_published_total",
    "fencing_rejections_total",
    "provider_clock_skew_total",
    "provider_request_seconds",
    "provider_requests_total",
    "provider_responses_refused_total",
    "rate_limit_wait_seconds_total",
    "rate_limited_total",
    "reconciliations_refused_total",
    "records_synced_total",
    "serve_metrics",
    "set_connection_snapshot",
    "set_job_counts",
    "set_readiness",
    "store_up",
    "sync_duration_seconds",
    "sync_jobs_total",
    "sync_writer_seconds_total",
    "token_refreshes_total",
]

log = structlog.get_logger(__name__)

disable_created_metrics()  # type: ignore[no-untyped-call]  # process-wide in prometheus_client; freshd owns its process
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

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
sync_writer_seconds_total = Counter(
    "freshd_sync_writer_seconds_total", "Time sync writers spent committing batches or waiting for pages.",
    ["provider", "state"], registry=REGISTRY,
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
provider_request_seconds = Histogram(
    "freshd_provider_request_duration_seconds",
    "Time of one completed attempt at a provider request, sending to the last body byte.",
    ["provider", "operation"], registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
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

events_published_total = Counter("freshd_events_published_total", "Change events XADDed to Redis Streams.",
                                 registry=REGISTRY)
event_relay_seconds = Histogram("freshd_event_relay_seconds", "Time of one XADD pipeline (a batch of events).",
                                registry=REGISTRY, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
event_relay_lag_seconds = Gauge("freshd_event_relay_lag_seconds",
                                "Age of the oldest event in the last batch the relay published.", registry=REGISTRY)

twoway_runs_total = Counter("freshd_twoway_runs_total", "Two-way runs ended, by final state.", ["state"],
                            registry=REGISTRY)
twoway_runs_processing = Gauge("freshd_twoway_runs_processing", "Two-way runs processing in this daemon.",
                               registry=REGISTRY)
twoway_items_total = Counter("freshd_twoway_items_total", "Two-way queue items settled, by outcome.", ["outcome"],
                             registry=REGISTRY)
twoway_writes_total = Counter("freshd_twoway_writes_total", "Provider writes two-way sync made, by target provider.",
                              ["provider"], registry=REGISTRY)
twoway_conflicts_total = Counter("freshd_twoway_conflicts_total", "Two-way conflicts recorded, by type.", ["type"],
                                 registry=REGISTRY)
twoway_batch_seconds = Histogram("freshd_twoway_batch_seconds", "Wall time of one two-way batch, decide to settle.",
                                 registry=REGISTRY, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))

# -- computed at scrape time -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ConnectionSample:
    """One connection as the scrape-time gauges see it."""

    provider: str
    state: str
    last_success: float | None  # epoch seconds of the last successful sync
    name: str = ""  # only exported with per_connection
    token_expires_at: float | None = None  # epoch seconds
    stale: bool = False  # synced once, now older than its staleness limit


ConnectionSnapshot = Callable[[], Iterable[ConnectionSample | tuple[str, str, float | None]]]
JobCounts = Callable[[], tuple[int, int]]  # (queued, running)


def _sample(row: ConnectionSample | tuple[str, str, float | None]) -> ConnectionSample:
    return row if isinstance(row, ConnectionSample) else ConnectionSample(*row)


class _ConnectionCollector(Collector):
    def __init__(self) -> None:
        self.snapshot: ConnectionSnapshot | None = None
        self.job_counts: JobCounts | None = None
        self.per_connection = False
        self.seen: set[tuple[str, str]] = set()
        self.clock: Callable[[], float] = time.time

    def _rows(self) -> list[ConnectionSample]:
        if self.snapshot is None:
            return []
        try:
            return [_sample(row) for row in self.snapshot()]
        except Exception as exc:  # a scrape must never take the daemon's data down with it
            log.warning("metrics.snapshot_failed", error=repr(exc))
            return []

    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "freshd_connections", "Connections by provider and state.", labels=["provider", "state"]
        )
        oldest = GaugeMetricFamily(
            "freshd_oldest_successful_sync_age_seconds",
            "Seconds since the least recently successful connection of a provider last synced.",
            labels=["provider"],
        )
        stale = GaugeMetricFamily(
            "freshd_connections_stale",
            "Connections whose data (synced at least once) is older than [staleness] stale_after.",
            labels=["provider"],
        )
        expiry = GaugeMetricFamily(
            "freshd_token_expiry_timestamp_seconds",
            "The earliest access-token expiry (epoch seconds) among a provider's connections.",
            labels=["provider"],
        )
        rows = self._rows()
        now = self.clock()
        counts: dict[tuple[str, str], int] = dict.fromkeys(self.seen, 0)
        stale_counts: dict[str, int] = {provider: 0 for provider, _ in self.seen}
        last_success: dict[str, float] = {}
        earliest: dict[str, float] = {}
        for row in rows:
            provider = row.provider
            counts[(provider, row.state)] = counts.get((provider, row.state), 0) + 1
            stale_counts[provider] = stale_counts.get(provider, 0) + (1 if row.stale else 0)
            if row.last_success is not None:
                last_success[provider] = min(row.last_success, last_success.get(provider, row.last_success))
            if row.token_expires_at is not None:
                earliest[provider] = min(row.token_expires_at, earliest.get(provider, row.token_expires_at))
        self.seen.update(counts)
        for (provider, state), count in sorted(counts.items()):
            connections.add_metric([provider, state], count)
        for provider, success in sorted(last_success.items()):
            oldest.add_metric([provider], max(0.0, now - success))
        for provider, count in sorted(stale_counts.items()):
            stale.add_metric([provider], count)
        for provider, expires in sorted(earliest.items()):
            expiry.add_metric([provider], expires)
        yield from (connections, oldest, stale, expiry)

        queued, running = 0, 0
        if self.job_counts is not None:
            try:
                queued, running = self.job_counts()
            except Exception as exc:
                log.warning("metrics.job_counts_failed", error=repr(exc))
        yield GaugeMetricFamily("freshd_jobs_queued", "Sync jobs waiting for a free sync slot (daemon or tenant cap).",
                                value=queued)
        yield GaugeMetricFamily("freshd_jobs_running", "Sync jobs running (holding a sync slot).", value=running)

        if self.per_connection:
            states = GaugeMetricFamily(
                "freshd_connection_state", "1 for each connection's current state ([metrics] per_connection).",
                labels=["connection", "provider", "state"],
            )
            age = GaugeMetricFamily(
                "freshd_connection_last_success_age_seconds",
                "Seconds since a connection last synced successfully ([metrics] per_connection).",
                labels=["connection", "provider"],
            )
            for row in sorted(rows, key=lambda r: r.name):
                states.add_metric([row.name, row.provider, row.state], 1)
                if row.last_success is not None:
                    age.add_metric([row.name, row.provider], max(0.0, now - row.last_success))
            yield states
            yield age

    def describe(self) -> Iterator[Metric]:
        return self.collect()


_connections = _ConnectionCollector()
REGISTRY.register(_connections)


def set_connection_snapshot(fn: ConnectionSnapshot | None, *, per_connection: bool = False) -> None:
    """Register the callback the connection gauges read at scrape time (None: no connections).

    It runs on the trio thread (the endpoint is served there), so it may read daemon state
    without locks; it must be quick and must not block.  `per_connection` adds the gauges
    labelled by connection name (one series per connection: opt-in, for small fleets).
    """
    _connections.snapshot = fn
    _connections.per_connection = per_connection
    _connections.seen.clear()


def set_job_counts(fn: JobCounts | None) -> None:
    """Register the callback giving ``(queued, running)`` sync jobs at scrape time (None: zeros)."""
    _connections.job_counts = fn


# -- readiness -------------------------------------------------------------------------------------------

Readiness = Callable[[], Awaitable[str | None]]  # None: ready; else why not (one line)
READINESS_CACHE = 1.0  # seconds a verdict is reused: probes from anywhere must not hammer the store


class _Readiness:
    def __init__(self) -> None:
        self.check: Readiness | None = None
        self.verdict: tuple[float, str | None] | None = None  # (trio time, reason)
        self.lock = trio.Lock()

    async def reason(self) -> str | None:
        if self.check is None:
            return "the daemon is not running (starting up or shutting down)"
        async with self.lock:  # one check at a time; the others reuse its verdict
            now = trio.current_time()
            if self.verdict is not None and now - self.verdict[0] < READINESS_CACHE:
                return self.verdict[1]
            try:
                reason = await self.check()
            except Exception as exc:
                reason = scrub(f"readiness check failed: {exc!r}")  # anyone reaching the port reads it
            self.verdict = (trio.current_time(), reason)
            return reason


_readiness = _Readiness()


def set_readiness(check: Readiness | None) -> None:
    """Register what ``/readyz`` asks (None: not ready, e.g. before start-up or after shutdown)."""
    _readiness.check = check
    _readiness.verdict = None


# -- the endpoint ----------------------------------------------------------------------------------------

_prometheus_app = make_asgi_app(REGISTRY)


async def _app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """`/metrics` from prometheus_client, `/healthz`, `/readyz`; 404 elsewhere; lifespan acknowledged,
    so hypercorn is quiet."""
    if scope["type"] == "lifespan":
        await acknowledge_lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/metrics":
        await _prometheus_app(scope, receive, send)
        return
    await receive()
    if path == "/healthz":
        await _respond(send, 200, {"status": "alive"})
    elif path == "/readyz":
        reason = await _readiness.reason()
        if reason is None:
            await _respond(send, 200, {"status": "ready"})
        else:
            await _respond(send, 503, {"status": "unavailable", "reason": reason})
    else:
        await _respond(send, 404, {"status": "not_found", "reason": "metrics are at /metrics; also /healthz, /readyz"})


async def _respond(send: ASGISendCallable, status: int, payload: dict[str, str]) -> None:
    start: HTTPResponseStartEvent = {
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"), (b"cache-control", b"no-store")],
    }
    body: HTTPResponseBodyEvent = {
        "type": "http.response.body", "body": json.dumps(payload).encode() + b"\n", "more_body": False
    }
    await send(start)
    await send(body)


async def serve_metrics(
    address: str, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` over HTTP at `address` (``host:port``; port 0: any).

    Runs on the trio loop with hypercorn (no threads) until cancelled.  The socket is bound
    here, before hypercorn starts, so a bad address (ValueError) or a port in use (OSError)
    raises plainly where the task was started; hypercorn gets the bound socket as an
    ``fd://`` bind.  Reports the URL it really listens on (``http://127.0.0.1:9464/metrics``)
    through `task_status`.  Hypercorn logs through stdlib logging (WARNING+ reaches the
    output, see freshd.logs); no access log.
    """
    host, port = split_host_port(address)

    def url(bound: int) -> str:
        where = f"http://{host if ':' not in host else f'[{host}]'}:{bound}/metrics"
        log.info("metrics.listening", url=where)
        return where

    await serve_asgi(_app, host, port, report=url, task_status=task_status)
