"""Retries: which failures are tried again, how often, and how long to wait in between.

* Transient errors (timeouts, connection errors, 5xx, malformed bodies): `attempts` tries in
  all (default 3), waiting with exponential backoff and full jitter,
  ``uniform(0, min(cap, base * 2**(attempt-1)))`` (base 1 s, cap 30 s).
* RateLimited (429, quota errors): the provider's Retry-After when it gives one (the
  connection's gate holds every request back until then), for up to
  `rate_limited_attempts` tries (default 8): a 429 storm gives up rather than wait forever.
* Everything else, CircuitOpen included, is not retried.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from freshd.errors import RateLimited, TransientError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    base: float = 1.0
    cap: float = 30.0
    rate_limited_attempts: int = 8

    def gives_up(self, attempt: int, error: TransientError) -> bool:
        limit = self.rate_limited_attempts if isinstance(error, RateLimited) else self.attempts
        return attempt >= limit

    def delay(self, attempt: int, error: TransientError) -> float:
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return error.retry_after
        return random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))
