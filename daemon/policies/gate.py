"""The gate every request of one connection passes: its breaker, then its rate limits.

    ConnectionPolicies   what an actor hands its connector: gate, token refresher, retry policy
    ConnectionGate       breaker + per-operation buckets + shared group buckets
    RateGroups           the daemon's shared buckets ("10 requests per minute per organization")
    limits_for           provider defaults + a connection's overrides -> buckets

A request acquires, in order: the breaker's permission (fails fast when open),
the bucket of its operation (`limit=`, e.g. SP-API ``getInventorySummaries``;
operations without their own plan share ``default``), then each group bucket the
connection belongs to.  After the response the gate feeds what the provider
said (Retry-After, RateLimit headers, x-amzn-RateLimit-Limit) back into the
same buckets, and the outcome into the breaker.

Connection options read here (all optional):

    rate_limit = "5/s"            the connection's default bucket (overrides the provider's)
    rate_burst = 5
    rate_limits = {getInventorySummaries = "1/s"}    per operation
    rate_group = "acme"           share a [rate_limits.groups.acme] bucket
                                  (default: the group named like the connection's tenant, if any)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from freshd import metrics
from freshd.errors import CircuitOpen, ConfigError, Fenced, ProviderError, RateLimited
from freshd.policies.breaker import BreakerSettings, CircuitBreaker
from freshd.policies.limits import ProviderLimits
from freshd.policies.ratelimit import Rate, TokenBucket, read_rate_signal
from freshd.policies.retry import RetryPolicy
from freshd.policies.tokens import TokenRefresher

DEFAULT = "default"


class RateGroups:
    """Named buckets shared by every connection that joins them (one per daemon)."""

    def __init__(self, rates: Mapping[str, Rate] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self._clock = clock
        self._configured = dict(rates or {})
        self._share = 1
        self._rates = dict(rates or {})
        self._buckets: dict[str, TokenBucket] = {}

    def configure(self, rates: Mapping[str, Rate], *, share: int = 1) -> None:
        """On reload, and when the cluster's membership changes: each group's rate is split evenly
        among `share` live members (the burst too, at least 1); removed groups stop limiting."""
        self._configured = dict(rates)
        self._share = max(1, share)
        self._rates = {name: _split(rate, self._share) for name, rate in rates.items()}
        for name in list(self._buckets):
            if name not in self._rates:
                del self._buckets[name]
            else:
                self._buckets[name].rate = self._buckets[name].configured = self._rates[name]

    def reshare(self, share: int) -> None:
        """The cluster now has `share` live members."""
        if max(1, share) != self._share:
            self.configure(self._configured, share=share)

    def bucket(self, name: str) -> TokenBucket | None:
        rate = self._rates.get(name)
        if rate is None:
            return None
        if name not in self._buckets:
            self._buckets[name] = TokenBucket(rate, pinned=True, name=f"group:{name}", clock=self._clock)
        return self._buckets[name]

    def __contains__(self, name: object) -> bool:
        return name in self._rates


def _split(rate: Rate, share: int) -> Rate:
    return rate if share == 1 else Rate(rate.per_second / share, max(1.0, rate.burst / share))


def limits_for(
    defaults: Mapping[str, Rate], options: Mapping[str, Any], *, where: str = "options"
) -> tuple[dict[str, Rate | None], set[str]]:
    """Provider defaults overlaid with a connection's options -> (operation -> rate, pinned ops).

    Raises ConfigError naming the option, so `connections add` and config reload refuse bad values.
    """
    rates: dict[str, Rate | None] = {DEFAULT: defaults.get(DEFAULT)}
    rates.update({op: rate for op, rate in defaults.items()})
    pinned: set[str] = set()

    def parse(value: Any, burst: Any, key: str) -> Rate:
        if not isinstance(value, str):
            raise ConfigError(f"expected a rate like \"2/s\" or \"10/min\", got {value!r}", where=f"{where}.{key}")
        if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int | float) or burst < 1):
            raise ConfigError(f"expected a number >= 1, got {burst!r}", where=f"{where}.rate_burst")
        try:
            return Rate.parse(value, None if burst is None else float(burst))
        except ValueError as exc:
            raise ConfigError(str(exc), where=f"{where}.{key}") from None

    if "rate_limit" in options:
        rates[DEFAULT] = parse(options["rate_limit"], options.get("rate_burst"), "rate_limit")
        pinned.add(DEFAULT)
    per_op = options.get("rate_limits") or {}
    if not isinstance(per_op, Mapping):
        raise ConfigError("expected a table of operation = \"rate\"", where=f"{where}.rate_limits")
    for op, value in per_op.items():
        rates[str(op)] = parse(value, None, f"rate_limits.{op}")
        pinned.add(str(op))
    return rates, pinned


class ConnectionGate:
    """Implements freshd.connectors.http.RequestGate for one connection."""

    def __init__(
        self,
        provider: str,
        rates: Mapping[str, Rate | None],
        *,
        pinned: set[str] | frozenset[str] = frozenset(),
        groups: Sequence[TokenBucket] = (),
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] | None = None,
        lease_valid: Callable[[], bool] | None = None,
    ) -> None:
        self.provider = provider
        self.lease_valid = lease_valid  # scale-out: does this member still hold the connection?
        self.breaker = breaker or CircuitBreaker(provider=provider)
        self.groups = tuple(groups)
        self._clock = clock
        self.buckets: dict[str, TokenBucket] = {
            op: TokenBucket(rate, pinned=op in pinned, name=op, clock=clock) for op, rate in rates.items()
        }
        self.buckets.setdefault(DEFAULT, TokenBucket(None, name=DEFAULT, clock=clock))

    def bucket(self, limit: str | None) -> TokenBucket:
        return self.buckets.get(limit or DEFAULT) or self.buckets[DEFAULT]

    async def before_request(self, limit: str | None = None) -> None:
        if self.lease_valid is not None and not self.lease_valid():
            # scale-out: past this member's lease deadline nothing more is sent for the connection
            raise Fenced(f"{self.provider}: this member's lease on the connection has run out; no request sent")
        self.breaker.allow()
        bucket = self.bucket(limit)
        try:
            for step in (bucket, *self.groups):
                before = step.waited
                await step.acquire()
                if step.waited > before:
                    metrics.rate_limit_wait_seconds_total.labels(self.provider).inc(step.waited - before)
        except BaseException:
            self.breaker.abandon()  # a probe that never left frees the half-open slot
            raise

    def after_request(
        self, response: httpx.Response | None, error: ProviderError | None, limit: str | None = None
    ) -> None:
        if response is not None:
            signal = read_rate_signal(response.headers, status=response.status_code)
            if isinstance(error, RateLimited) and error.retry_after is not None:
                signal = type(signal)(error.retry_after, signal.remaining, signal.reset, signal.limit_per_second)
            if signal:
                self.bucket(limit).observe(signal)
                if signal.retry_after is not None:
                    for group in self.groups:  # a 429 means the shared quota is spent too
                        group.block_for(signal.retry_after)
        if isinstance(error, RateLimited):
            metrics.rate_limited_total.labels(self.provider).inc()
            if response is None and error.retry_after is not None:
                self.bucket(limit).block_for(error.retry_after)
        if not isinstance(error, CircuitOpen):
            self.breaker.record(error)


@dataclass
class ConnectionPolicies:
    """Everything policy-shaped a connector's requests go through; owned by the connection's actor."""

    gate: ConnectionGate
    tokens: TokenRefresher
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limits: ProviderLimits = field(default_factory=ProviderLimits)

    @classmethod
    def standalone(
        cls,
        provider: str,
        defaults: Mapping[str, Rate],
        options: Mapping[str, Any],
        *,
        name: str = "",
        breaker: BreakerSettings | None = None,
        groups: Sequence[TokenBucket] = (),
        tokens: TokenRefresher | None = None,
        clock: Callable[[], float] | None = None,
    ) -> ConnectionPolicies:
        rates, pinned = limits_for(defaults, options)
        gate = ConnectionGate(
            provider, rates, pinned=pinned, groups=groups, clock=clock,
            breaker=CircuitBreaker(breaker, connection=name, provider=provider,
                                   **({"clock": clock} if clock else {})),
        )
        return cls(gate, tokens or TokenRefresher(provider=provider))
