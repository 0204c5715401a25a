"""Circuit breaker: stop calling a provider that keeps failing, probe it, recover.

    closed ──N consecutive transient failures──> open ──cool-down elapsed──> half_open
      ^                                            ^                            │
      └──────────────probe succeeded───────────────┼────────────────────────────┤
                                                   └──probe failed (cool-down x2, up to max)

* Only transient failures count (timeouts, connection errors, 5xx, malformed
  bodies).  429s belong to the rate limiter; other 4xx say nothing about the
  provider's health; any response that is not a transient failure resets the count.
* While open, requests fail at once with `CircuitOpen` (no network call).
* Half-open lets exactly one request through (the probe); others still fail
  fast until it reports.  A probe that is cancelled before it reports frees the
  slot, so the next request probes instead.
* Every transition goes through `_change`, which logs once and updates the gauge.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import structlog
import trio

from freshd import metrics
from freshd.errors import CircuitOpen, ProviderError, RateLimited, TransientError

log = structlog.get_logger(__name__)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_TRANSITIONS = {
    BreakerState.CLOSED: {BreakerState.OPEN},
    BreakerState.OPEN: {BreakerState.HALF_OPEN},
    BreakerState.HALF_OPEN: {BreakerState.OPEN, BreakerState.CLOSED},
}


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = 5
    cooldown: float = 60.0
    max_cooldown: float = 30 * 60.0


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    state: BreakerState
    failures: int
    cooldown: float
    retry_at: float | None  # wall-clock epoch seconds when a probe may go, while open


class CircuitBreaker:
    def __init__(
        self,
        settings: BreakerSettings | None = None,
        *,
        connection: str = "",
        provider: str = "",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings or BreakerSettings()
        self.connection = connection
        self.provider = provider
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.cooldown = self.settings.cooldown
        self.opened_at = 0.0
        self.last_error: str | None = None
        self._clock = clock or trio.current_time
        self._probe_out = False

    def _change(self, new: BreakerState, reason: str | None = None) -> None:
        old = self.state
        if new not in _TRANSITIONS[old]:
            raise RuntimeError(f"breaker {self.connection}: illegal transition {old} -> {new}")
        self.state = new
        if old is BreakerState.CLOSED:
            metrics.circuits_open.labels(self.provider).inc()
        elif new is BreakerState.CLOSED:
            metrics.circuits_open.labels(self.provider).dec()
        metrics.breaker_transitions_total.labels(self.provider, new.value).inc()
        if new is BreakerState.OPEN:
            log.warning("breaker.open", connection=self.connection, failures=self.failures,
                        cooldown=self.cooldown, error=reason)
        elif new is BreakerState.CLOSED:
            log.info("breaker.closed", connection=self.connection)
        else:
            log.info("breaker.half_open", connection=self.connection)

    def remaining(self) -> float:
        """Seconds left of the cool-down (0 when not open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown - self._clock())

    def allow(self) -> None:
        """Called before a request; raises CircuitOpen if it may not go."""
        if self.state is BreakerState.OPEN:
            wait = self.remaining()
            if wait > 0:
                raise CircuitOpen(self._open_message(wait), retry_after=wait)
            self._change(BreakerState.HALF_OPEN)
        if self.state is BreakerState.HALF_OPEN:
            if self._probe_out:
                raise CircuitOpen(f"{self.connection}: circuit half-open, a probe is in flight", retry_after=1.0)
            self._probe_out = True

    def abandon(self) -> None:
        """The request that `allow` admitted never reported (cancelled): let the next one probe."""
        self._probe_out = False

    def record(self, error: ProviderError | None) -> None:
        """Called after each attempt with what came of it."""
        transient = isinstance(error, TransientError) and not isinstance(error, RateLimited | CircuitOpen)
        if self.state is BreakerState.HALF_OPEN and self._probe_out:
            self._probe_out = False
            if transient:
                self.cooldown = min(self.cooldown * 2, self.settings.max_cooldown)
                self._open(str(error))
            else:
                self.failures = 0
                self.cooldown = self.settings.cooldown
                self._change(BreakerState.CLOSED)
            return
        if self.state is not BreakerState.CLOSED:
            return
        if transient:
            self.failures += 1
            self.last_error = str(error)
            if self.failures >= self.settings.failure_threshold:
                self._open(str(error))
        elif not isinstance(error, RateLimited):
            self.failures = 0

    def _open(self, reason: str) -> None:
        self.opened_at = self._clock()
        self.last_error = reason
        self._change(BreakerState.OPEN, reason)

    def _open_message(self, wait: float) -> str:
        return (f"{self.connection}: circuit open after {self.failures} consecutive failures "
                f"(last: {self.last_error}); next probe in {wait:.0f}s")

    def status(self) -> BreakerStatus:
        retry_at = time.time() + self.remaining() if self.state is BreakerState.OPEN else None
        return BreakerStatus(self.state, self.failures, self.cooldown, retry_at)
