"""The connection policies, each proven by counts a user could check: requests per window,
breaker transitions, token refreshes.

Time-dependent tests run on trio's MockClock (autojump): an hour of traffic takes milliseconds.
Those talk to the provider through httpx.MockTransport (a real network needs the real clock);
the tests at the end run the same policies against a real simulator on loopback.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import trio
import trio.testing

from freshd.connectors.http import ProviderClient
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from freshd.errors import AuthExpired, CircuitOpen, RateLimited, ReauthRequired, TransientError
from freshd.policies.breaker import BreakerSettings, BreakerState, CircuitBreaker
from freshd.policies.gate import ConnectionGate, RateGroups
from freshd.policies.ratelimit import Rate, TokenBucket, read_rate_signal
from freshd.policies.retry import RetryPolicy
from freshd.policies.tokens import Token, TokenRefresher


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def max_in_window(stamps: list[float], window: float) -> int:
    """The most requests that left within any `window` seconds."""
    stamps = sorted(stamps)
    best, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def provider(handler: Callable[[httpx.Request, float], httpx.Response]) -> tuple[httpx.MockTransport, list[float]]:
    """A fake provider that records when each request arrived (trio time)."""
    stamps: list[float] = []

    def respond(request: httpx.Request) -> httpx.Response:
        now = trio.current_time()
        stamps.append(now)
        return handler(request, now)

    return httpx.MockTransport(respond), stamps


def client_for(transport: httpx.MockTransport, gate: ConnectionGate, **kwargs: object) -> ProviderClient:
    client = ProviderClient("test", "http://provider.invalid/", gate=gate, **kwargs)  # type: ignore[arg-type]
    client._client._transport = transport  # the one fake: the provider's side of the wire
    return client


def ok(request: httpx.Request, now: float) -> httpx.Response:
    return httpx.Response(200, json={"ok": True})


# -- rate limits -----------------------------------------------------------------------------------


def test_rate_parsing_and_errors() -> None:
    assert Rate.parse("2/s", 2) == Rate(2.0, 2.0)
    assert Rate.parse("10/min").per_second == pytest.approx(10 / 60)
    assert Rate.parse("100/15m").per_second == pytest.approx(100 / 900)
    for bad in ("fast", "0/s", "10/fortnight", "/s"):
        with pytest.raises(ValueError, match="bad rate"):
            Rate.parse(bad)


def test_rate_signal_reads_every_header_family() -> None:
    assert read_rate_signal({"Retry-After": "7"}, status=429).retry_after == 7
    date = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 <= (read_rate_signal({"Retry-After": date}, status=429).retry_after or 0) <= 30
    ietf = read_rate_signal({"RateLimit": '"default";r=0;t=12', "RateLimit-Policy": '"default";q=100;w=60'})
    assert (ietf.remaining, ietf.reset) == (0, 12)
    old = read_rate_signal({"RateLimit-Remaining": "3", "RateLimit-Reset": "9"})
    assert (old.remaining, old.reset) == (3, 9)
    github = read_rate_signal({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2000000000"}, now=1999999990)
    assert (github.remaining, github.reset) == (0, 10)
    assert read_rate_signal({"x-amzn-RateLimit-Limit": "0.5"}).limit_per_second == 0.5
    assert not read_rate_signal({"content-type": "application/json"})


async def test_a_long_window_never_exceeds_rate_or_burst(autojump_clock: trio.testing.MockClock) -> None:
    """An hour of eager traffic from 8 concurrent callers: at most burst + rate*T in any T seconds."""
    rate = Rate(2.0, 5.0)
    transport, stamps = provider(ok)
    client = client_for(transport, ConnectionGate("test", {"default": rate}))
    deadline = trio.current_time() + 3600

    async def caller() -> None:
        while trio.current_time() < deadline:
            await client.get_json("items")

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(caller)
    assert 7000 <= len(stamps) <= 2 * 3600 + 5 + 8  # it does use the allowance
    assert max_in_window(stamps, 0.001) <= 5  # the burst
    for window in (1.0, 10.0, 60.0, 600.0):
        assert max_in_window(stamps, window) <= 5 + rate.per_second * window + 1e-9


async def test_retry_after_holds_every_request_of_the_connection(autojump_clock: trio.testing.MockClock) -> None:
    """After `429 Retry-After: 30` nothing leaves for 30 s: not the retry, not the other callers."""
    throttled_at: list[float] = []

    def once_429(request: httpx.Request, now: float) -> httpx.Response:
        if not throttled_at:
            throttled_at.append(now)
            return httpx.Response(429, headers={"Retry-After": "30"})
        return httpx.Response(200, json={})

    transport, stamps = provider(once_429)
    client = client_for(transport, ConnectionGate("test", {}))
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(client.get_json, "items")
            await trio.sleep(0.01)
    later = [s for s in stamps if s > throttled_at[0]]
    assert len(later) == 5 and min(later) >= throttled_at[0] + 30


async def test_remaining_zero_waits_for_the_reset(autojump_clock: trio.testing.MockClock) -> None:
    def quota(request: httpx.Request, now: float) -> httpx.Response:
        return httpx.Response(200, json={}, headers={"RateLimit-Remaining": "0", "RateLimit-Reset": "20"})

    transport, stamps = provider(quota)
    client = client_for(transport, ConnectionGate("test", {}))
    for _ in range(3):
        await client.get_json("items")
    assert stamps[1] - stamps[0] >= 20 and stamps[2] - stamps[1] >= 20


async def test_amazon_header_sets_the_operation_rate(autojump_clock: trio.testing.MockClock) -> None:
    def advertised(request: httpx.Request, now: float) -> httpx.Response:
        return httpx.Response(200, json={}, headers={"x-amzn-RateLimit-Limit": "0.5"})

    transport, stamps = provider(advertised)
    gate = ConnectionGate("test", {"getInventorySummaries": Rate(2.0, 1.0), "default": None})
    client = client_for(transport, gate)
    for _ in range(4):
        await client.get_json("x", limit="getInventorySummaries")
    assert gate.bucket("getInventorySummaries").rate == Rate(0.5, 1.0)
    assert stamps[-1] - stamps[-2] >= 2.0  # 0.5/s once the provider said so


async def test_an_operator_override_is_never_raised_by_the_provider(autojump_clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(Rate(1.0, 1.0), pinned=True)
    bucket.observe(read_rate_signal({"x-amzn-RateLimit-Limit": "10"}))
    assert bucket.rate == Rate(1.0, 1.0)


async def test_a_group_limit_is_shared_by_its_connections(autojump_clock: trio.testing.MockClock) -> None:
    """"10 requests per minute per organization": three connections together stay within it."""
    groups = RateGroups({"acme": Rate.parse("10/min")})
    group = groups.bucket("acme")
    assert group is not None
    transport, stamps = provider(ok)
    clients = [client_for(transport, ConnectionGate("test", {}, groups=[group])) for _ in range(3)]
    deadline = trio.current_time() + 600

    async def caller(client: ProviderClient) -> None:
        while trio.current_time() < deadline:
            await client.get_json("items")

    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(caller, client)
    assert max_in_window(stamps, 60.0) <= 11  # burst 1 + 10 per minute
    assert len(stamps) >= 95


# -- retries ---------------------------------------------------------------------------------------


async def test_transient_errors_are_retried_with_backoff_then_raised(autojump_clock: trio.testing.MockClock) -> None:
    transport, stamps = provider(lambda request, now: httpx.Response(503))
    client = client_for(transport, ConnectionGate("test", {}), retry=RetryPolicy(attempts=3, base=1.0, cap=30))
    with pytest.raises(TransientError):
        await client.get_json("items")
    assert len(stamps) == 3


async def test_permanent_errors_are_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    transport, stamps = provider(lambda request, now: httpx.Response(404))
    client = client_for(transport, ConnectionGate("test", {}))
    with pytest.raises(Exception, match="404"):
        await client.get_json("items")
    assert len(stamps) == 1


async def test_a_429_storm_gives_up_after_its_own_budget(autojump_clock: trio.testing.MockClock) -> None:
    transport, stamps = provider(lambda request, now: httpx.Response(429, headers={"Retry-After": "1"}))
    client = client_for(transport, ConnectionGate("test", {}), retry=RetryPolicy(rate_limited_attempts=5))
    with pytest.raises(RateLimited):
        await client.get_json("items")
    assert len(stamps) == 5
    assert all(b - a >= 1 for a, b in itertools.pairwise(stamps))


# -- circuit breaker -------------------------------------------------------------------------------


async def test_breaker_opens_probes_once_and_recovers(autojump_clock: trio.testing.MockClock) -> None:
    healthy = False

    def flaky(request: httpx.Request, now: float) -> httpx.Response:
        return httpx.Response(200, json={}) if healthy else httpx.Response(502)

    transport, stamps = provider(flaky)
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=5, cooldown=60, max_cooldown=1800), connection="c")
    client = client_for(transport, ConnectionGate("test", {}, breaker=breaker), retry=RetryPolicy(attempts=1))
    for _ in range(5):
        with pytest.raises(TransientError):
            await client.get_json("items")
    assert breaker.state is BreakerState.OPEN and len(stamps) == 5
    with pytest.raises(CircuitOpen):  # fails fast: nothing sent
        await client.get_json("items")
    assert len(stamps) == 5

    await trio.sleep(60)  # cool-down over: one probe, and it fails -> open again for twice as long
    with pytest.raises(TransientError):
        await client.get_json("items")
    assert breaker.state is BreakerState.OPEN and breaker.cooldown == 120 and len(stamps) == 6
    await trio.sleep(60)
    with pytest.raises(CircuitOpen):
        await client.get_json("items")

    await trio.sleep(60)
    healthy = True
    results: list[str] = []

    async def call() -> None:
        try:
            await client.get_json("items")
            results.append("ok")
        except CircuitOpen:
            results.append("open")

    async with trio.open_nursery() as nursery:  # half-open: exactly one of these goes out
        for _ in range(10):
            nursery.start_soon(call)
    assert results.count("ok") == 1 and results.count("open") == 9 and len(stamps) == 7
    assert breaker.state is BreakerState.CLOSED and breaker.cooldown == 60
    await client.get_json("items")


async def test_breaker_ignores_429_and_4xx(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=2), connection="c")
    for error in (RateLimited("slow down"), AuthExpired("401"), RateLimited("again")):
        breaker.record(error)
    assert breaker.state is BreakerState.CLOSED and breaker.failures == 0
    transport, _ = provider(lambda request, now: httpx.Response(404))
    client = client_for(transport, ConnectionGate("test", {}, breaker=breaker))
    for _ in range(5):
        with pytest.raises(Exception, match="404"):
            await client.get_json("items")
    assert breaker.state is BreakerState.CLOSED


async def test_cooldown_doubles_up_to_the_maximum(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=1, cooldown=60, max_cooldown=200), connection="c")
    breaker.record(TransientError("down"))
    seen = []
    for _ in range(4):
        await trio.sleep(breaker.remaining())
        breaker.allow()
        breaker.record(TransientError("still down"))
        seen.append(breaker.cooldown)
    assert seen == [120, 200, 200, 200]


# -- token refresh ---------------------------------------------------------------------------------


async def test_one_refresh_for_100_concurrent_expired_calls(autojump_clock: trio.testing.MockClock) -> None:
    issued: list[str] = []
    persisted: list[str] = []

    async def refresh(current: Token | None) -> Token:
        await trio.sleep(0.5)  # the token endpoint takes its time; everyone must wait for this one
        issued.append(f"access-{len(issued) + 1}")
        return Token(issued[-1], expires_at=trio.current_time() + 3600, refresh_token=f"rt-{len(issued)}")

    async def persist(token: Token) -> None:
        persisted.append(token.access_token)

    tokens = TokenRefresher(initial=Token("old", expires_at=trio.current_time() - 1), persist=persist,
                            clock=trio.current_time)
    seen: list[str] = []

    async def call() -> None:
        seen.append((await tokens.valid(refresh)).access_token)

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(call)
    assert issued == ["access-1"] and persisted == ["access-1"] and seen == ["access-1"] * 100


async def test_refresh_happens_before_expiry_with_the_buffer(autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    async def refresh(current: Token | None) -> Token:
        nonlocal calls
        calls += 1
        return Token(f"t{calls}", expires_at=trio.current_time() + 3600)

    tokens = TokenRefresher(initial=Token("t0", expires_at=trio.current_time() + 3600), buffer=600,
                            clock=trio.current_time)
    assert (await tokens.valid(refresh)).access_token == "t0"
    await trio.sleep(3000 - 1)
    assert (await tokens.valid(refresh)).access_token == "t0"
    await trio.sleep(2)  # now within 10 min of expiry
    assert (await tokens.valid(refresh)).access_token == "t1" and calls == 1


async def test_a_401_refreshes_once_and_resends_once(autojump_clock: trio.testing.MockClock) -> None:
    refreshes = 0

    async def refresh(current: Token | None) -> Token:
        nonlocal refreshes
        refreshes += 1
        return Token(f"good-{refreshes}", expires_at=None)

    def auth(request: httpx.Request, now: float) -> httpx.Response:
        token = request.headers["authorization"].removeprefix("Bearer ")
        return httpx.Response(200, json={}) if token.startswith("good") else httpx.Response(401)

    transport, stamps = provider(auth)
    tokens = TokenRefresher(initial=Token("revoked-by-provider"))
    client = client_for(transport, ConnectionGate("test", {}), tokens=tokens, refresh=refresh)
    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(client.get_json, "items")
    assert refreshes == 1 and len(stamps) == 40  # each call: one 401, one resend with the new token

    # a provider that keeps refusing fresh tokens: one refresh per call, never a loop
    transport, stamps = provider(lambda request, now: httpx.Response(401))
    client = client_for(transport, ConnectionGate("test", {}), tokens=tokens, refresh=refresh)
    with pytest.raises(AuthExpired):
        await client.get_json("items")
    assert len(stamps) == 2 and refreshes == 2


async def test_a_refused_grant_is_sticky_reauth_required_not_a_loop(autojump_clock: trio.testing.MockClock) -> None:
    attempts = 0

    async def refresh(current: Token | None) -> Token:
        nonlocal attempts
        attempts += 1
        raise ReauthRequired("invalid_grant: refresh token revoked")

    tokens = TokenRefresher(initial=Token("old", expires_at=0.0), clock=trio.current_time)
    for _ in range(10):
        with pytest.raises(ReauthRequired, match="invalid_grant"):
            await tokens.valid(refresh)
    assert attempts == 1 and tokens.reauth_required is not None


async def test_a_rotated_refresh_token_is_persisted_before_use(autojump_clock: trio.testing.MockClock) -> None:
    events: list[str] = []

    async def refresh(current: Token | None) -> Token:
        events.append(f"refresh with {current.refresh_token if current else None}")
        return Token("a2", expires_at=None, refresh_token="rt2")

    async def persist(token: Token) -> None:
        await trio.sleep(1)
        events.append(f"persisted {token.refresh_token}")

    tokens = TokenRefresher(initial=Token("a1", expires_at=0.0, refresh_token="rt1"), persist=persist,
                            clock=trio.current_time)
    token = await tokens.valid(refresh)
    events.append(f"using {token.access_token}")
    assert events == ["refresh with rt1", "persisted rt2", "using a2"]


# -- against a real simulator (real clock, loopback) ------------------------------------------------


async def test_gate_keeps_a_real_sync_within_the_rate(nursery: trio.Nursery) -> None:
    """Requests the simulator saw, timed on its side: 20/s burst 5 is never exceeded."""
    from freshd.connectors.base import ConnectionSettings
    from freshd.connectors.woocommerce.connector import WooCommerceConnector

    sim = WooCommerceSimulator(records=50, seed=3, credentials={"consumer_key": "k", "consumer_secret": "s"})
    arrivals: list[float] = []
    dispatch = sim.app.dispatch

    async def timed(request):  # type: ignore[no-untyped-def]
        arrivals.append(trio.current_time())
        return await dispatch(request)

    sim.app.dispatch = timed  # type: ignore[method-assign]
    port = await nursery.start(functools.partial(serve_asgi, sim.app, host="127.0.0.1", port=0))
    settings = ConnectionSettings("c", "woocommerce", f"http://127.0.0.1:{port}",
                                  credentials={"consumer_key": "k", "consumer_secret": "s"},
                                  options={"rate_limit": "20/s", "rate_burst": 5})
    connector = WooCommerceConnector(settings)
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as inner:
                for page in range(1, 41):
                    inner.start_soon(functools.partial(connector.client.get_json, "customers",
                                                       params={"per_page": 1, "page": page}))
                inner.start_soon(connector.probe)
    finally:
        await connector.aclose()
    assert len(arrivals) == 41
    assert max_in_window(arrivals, 0.5) <= 5 + 20 * 0.5 + 1  # +1: loopback jitter between our clock and its
    assert arrivals[-1] - arrivals[0] >= (41 - 5) / 20 - 0.1


async def test_a_hung_request_times_out_and_is_retried(nursery: trio.Nursery) -> None:
    """The simulator's timeout fault: the first request never answers; the client gives up and retries."""
    from freshd.connectors.woocommerce.connector import classify

    sim = WooCommerceSimulator(records=5, seed=3, credentials={"consumer_key": "k", "consumer_secret": "s"})
    port = await nursery.start(functools.partial(serve_asgi, sim.app, host="127.0.0.1", port=0))
    sim.app.faults.configure({"timeout": 1})
    breaker = CircuitBreaker(connection="c")
    client = ProviderClient("woocommerce", f"http://127.0.0.1:{port}/wp-json/wc/v3/", classify=classify,
                            auth=httpx.BasicAuth("k", "s"), timeout=0.5, gate=ConnectionGate("woocommerce", {},
                                                                                              breaker=breaker),
                            retry=RetryPolicy(attempts=3, base=0.01))
    try:
        with trio.fail_after(10):
            body, _ = await client.get_json("customers")
    finally:
        await client.aclose()
    assert len(body) == 5 and sim.app.stats["/wp-json/wc/v3/customers"] == 2
    assert breaker.failures == 0  # the success after it reset the count
