"""Rate limiting: token buckets a request must pass before it leaves, adapted from provider signals.

    Rate              requests per second + burst; parsed from "2/s", "10/min", "0.5/s"
    TokenBucket       one bucket: FIFO waiters, a "not before" barrier for Retry-After
    RateSignal        what one response said: Retry-After, RateLimit*, X-RateLimit-*, x-amzn-RateLimit-Limit
    read_rate_signal  response headers -> RateSignal (every known header family)

Policy:

* A bucket holds up to `burst` tokens and refills at `per_second`.  Waiters are
  served first come, first served (they queue on a trio.Lock), so over any window
  of T seconds at most ``burst + per_second * T`` requests leave.
* A 429's `Retry-After` (seconds or an HTTP date, RFC 9110) empties the bucket
  and sets a barrier: no request leaves before it.  So does a `Remaining: 0`
  with a reset time (IETF RateLimit fields, X-RateLimit-*).  A smaller
  `Remaining` caps the tokens we believe we have.
* `x-amzn-RateLimit-Limit` (SP-API) is the provider's actual sustained rate for
  the operation: the bucket adopts it, except that an operator's explicit
  override is never exceeded (`pinned`).
* Provider `Reset` values are read as delta-seconds (RFC draft, GitHub-style
  epoch values are recognised by their size and converted).
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import trio

_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
          "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")
_EPOCH_THRESHOLD = 1e9  # a "reset" this large is an epoch timestamp, not a delta


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """RFC 9110 Retry-After: delay-seconds or an HTTP-date. None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    burst: float = 1.0

    def __post_init__(self) -> None:
        if self.per_second <= 0:
            raise ValueError(f"a rate must be above zero, got {self.per_second}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst}")

    @classmethod
    def parse(cls, text: str, burst: float | None = None) -> Rate:
        """ "2/s", "10/min", "100/15m", "0.5/s" -> Rate.

        The burst defaults to 1: with burst b a bucket lets ``b + rate * T`` requests through in
        any T seconds, so "10/min" with burst 1 stays within 11 in any minute, 10 on average.
        """
        match = _RATE.match(text.lower())
        if not match or match.group(3) not in _UNITS:
            raise ValueError(f"bad rate {text!r}: write requests per unit, e.g. \"2/s\", \"10/min\", \"100/15m\"")
        count, window = float(match.group(1)), float(match.group(2) or 1) * _UNITS[match.group(3)]
        if count <= 0:
            raise ValueError(f"bad rate {text!r}: the count must be above zero")
        return cls(count / window, 1.0 if burst is None else burst)

    def describe(self) -> str:
        if self.per_second >= 1:
            return f"{self.per_second:g}/s burst {self.burst:g}"
        return f"{self.per_second * 60:g}/min burst {self.burst:g}"


@dataclass(frozen=True, slots=True)
class RateSignal:
    retry_after: float | None = None  # seconds to wait before any request
    remaining: float | None = None  # requests left in the current window
    reset: float | None = None  # seconds until the window resets
    limit_per_second: float | None = None  # the provider's sustained rate (x-amzn-RateLimit-Limit)

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.retry_after, self.remaining, self.reset, self.limit_per_second))


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip().split(",")[0].split(";")[0])
    except ValueError:
        return None
    return number if number >= 0 else None


def _reset_seconds(value: float | None, now: float) -> float | None:
    if value is None:
        return None
    return max(0.0, value - now) if value > _EPOCH_THRESHOLD else value


def _structured_ratelimit(value: str) -> tuple[float | None, float | None]:
    """IETF draft-ietf-httpapi-ratelimit-headers (v7+): `RateLimit: "default";r=50;t=30` -> (r, t)."""
    remaining = reset = None
    for param in value.split(";")[1:]:
        key, _, raw = param.strip().partition("=")
        if key == "r":
            remaining = _number(raw)
        elif key == "t":
            reset = _number(raw)
    return remaining, reset


def read_rate_signal(
    headers: Mapping[str, str], *, status: int | None = None, now: float | None = None
) -> RateSignal:
    """Every rate-limit header family we know, from one response's headers (case-insensitive)."""
    h = {k.lower(): v for k, v in headers.items()}
    wall = time.time() if now is None else now
    retry_after = None
    if status in (429, 503) or "retry-after" in h:
        retry_after = parse_retry_after(h.get("retry-after") or h.get("ratelimit-retry-after"))
    remaining = reset = None
    if "ratelimit" in h and ";" in h["ratelimit"]:
        remaining, reset = _structured_ratelimit(h["ratelimit"])
    for prefix in ("ratelimit-", "x-ratelimit-", "x-rate-limit-"):
        if remaining is None:
            remaining = _number(h.get(prefix + "remaining"))
        if reset is None:
            reset = _reset_seconds(_number(h.get(prefix + "reset")), wall)
    limit = _number(h.get("x-amzn-ratelimit-limit"))
    return RateSignal(retry_after=retry_after, remaining=remaining, reset=reset,
                      limit_per_second=limit if limit else None)


class TokenBucket:
    """One rate: `acquire()` waits for a token (FIFO) and for any Retry-After barrier.

    With `rate=None` the bucket only enforces the provider's barriers (Retry-After,
    Remaining: 0): providers without a published limit are not slowed down
    until they say so.
    """

    def __init__(self, rate: Rate | None, *, pinned: bool = False, name: str = "default",
                 clock: Callable[[], float] | None = None) -> None:
        self.name = name
        self.rate = rate
        self.configured = rate
        self.pinned = pinned  # an operator's override: provider signals may lower it, never raise it
        self._clock = clock or trio.current_time
        self.tokens = rate.burst if rate else 1.0
        self.stamp: float | None = None
        self.not_before = 0.0
        self.granted = 0
        self.waited = 0.0  # total seconds requests spent waiting here, for metrics
        self._lock: trio.Lock | None = None  # made on the first acquire: a fleet's idle buckets need none

    def _refill(self, now: float) -> None:
        if self.stamp is None:
            self.stamp = now
        if self.rate is None:
            self.tokens = 1.0
        else:
            self.tokens = min(self.rate.burst, self.tokens + (now - self.stamp) * self.rate.per_second)
        self.stamp = now

    def delay(self) -> float:
        """Seconds until a request could leave (0 if one could now)."""
        now = self._clock()
        self._refill(now)
        wait = self.not_before - now
        if self.tokens < 1 and self.rate is not None:
            wait = max(wait, (1 - self.tokens) / self.rate.per_second)
        return max(0.0, wait)

    async def acquire(self) -> None:
        start = self._clock()
        if self._lock is None:
            self._lock = trio.Lock()
        async with self._lock:
            while (wait := self.delay()) > 0:  # noqa: ASYNC110 - the wait is computed, not signalled
                await trio.sleep(wait)
            self.tokens -= 1
            self.granted += 1
        self.waited += self._clock() - start

    def block_for(self, seconds: float) -> None:
        """Nothing leaves for `seconds` (Retry-After); the bucket restarts empty."""
        now = self._clock()
        self._refill(now)
        self.not_before = max(self.not_before, now + seconds)
        self.tokens = min(self.tokens, 0.0)

    def observe(self, signal: RateSignal) -> None:
        if signal.retry_after is not None:
            self.block_for(signal.retry_after)
        if signal.remaining is not None:
            self._refill(self._clock())
            if signal.remaining < 1 and signal.reset is not None:
                self.block_for(signal.reset)
            elif self.rate is not None:
                self.tokens = min(self.tokens, signal.remaining)
        if signal.limit_per_second is not None:
            advertised = signal.limit_per_second
            if self.pinned and self.configured is not None:
                advertised = min(advertised, self.configured.per_second)
            if self.rate is None or abs(advertised - self.rate.per_second) > 1e-9:
                self._refill(self._clock())
                self.rate = Rate(advertised, self.rate.burst if self.rate else 1.0)
