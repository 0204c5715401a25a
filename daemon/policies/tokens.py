"""Token refresh: keep one connection's access token valid, refreshing it at most once at a time.

    TokenRefresher   one per connection actor; shared by its syncs, probes and the token sweep
    Token            an access token, its expiry, and the refresh token that goes with it

Policy:

* `valid(refresh)` returns a token that is good for at least `buffer` seconds
  (default 10 min), refreshing first if needed.  Concurrent callers wait for
  the one refresh in flight (single-flight, a trio.Lock) and then share its
  result: 100 requests that find the token expired cause exactly one refresh.
* `after_rejection(rejected, refresh)` is what a 401 calls: it refreshes only
  if the rejected token is still the current one (another caller may have
  refreshed meanwhile), so one 401 costs at most one refresh.
* A new token is *persisted before it is handed out* (`persist`, which writes
  it in one transaction): providers that rotate single-use refresh tokens
  (Orion, some OAuth servers) would otherwise lose the only valid one on a crash.
* The refresh function raises `ReauthRequired` when the provider rejects the
  refresh token itself (`invalid_grant`, or its equivalent).  That is sticky:
  every later call raises the same error without asking the provider again,
  until the operator sets new credentials (a new TokenRefresher).  No loops.

The provider-specific part (which URL, which grant) is the `refresh` function
the connector passes in; everything here is provider-neutral.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from freshd import metrics
from freshd.errors import ReauthRequired

log = structlog.get_logger(__name__)

DEFAULT_BUFFER = 600.0  # refresh this long before expiry


@dataclass(frozen=True, slots=True)
class Token:
    access_token: str = field(repr=False)
    expires_at: float | None = None  # epoch seconds; None: unknown (used until rejected)
    refresh_token: str | None = field(default=None, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)  # provider fields worth keeping

    def expires_within(self, seconds: float, now: float) -> bool:
        return self.expires_at is not None and self.expires_at - now <= seconds

    def as_json(self) -> dict[str, Any]:
        return {"access_token": self.access_token, "expires_at": self.expires_at,
                "refresh_token": self.refresh_token, "extra": dict(self.extra)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Token:
        return cls(str(data["access_token"]), data.get("expires_at"), data.get("refresh_token"),
                   dict(data.get("extra") or {}))


# the provider's token request: given the current token (None at first), return a new one
Refresh = Callable[[Token | None], Awaitable[Token]]
Persist = Callable[[Token], Awaitable[None]]


class TokenRefresher:
    def __init__(
        self,
        *,
        provider: str = "",
        initial: Token | None = None,
        persist: Persist | None = None,
        buffer: float = DEFAULT_BUFFER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.token = initial
        self.buffer = buffer
        self.refreshes = 0  # successful refreshes, for status and tests
        self._persist = persist
        self._clock = clock
        self._lock: trio.Lock | None = None  # made on the first refresh: a fleet's idle refreshers need none
        self._rejected: ReauthRequired | None = None

    @property
    def reauth_required(self) -> ReauthRequired | None:
        return self._rejected

    def due(self, within: float | None = None) -> bool:
        """True if the token is missing or expires within `within` (default: the buffer)."""
        return self.token is None or self.token.expires_within(
            self.buffer if within is None else within, self._clock())

    async def valid(self, refresh: Refresh) -> Token:
        """A token good for at least `buffer` seconds (refreshing once if not)."""
        token = self.token
        if self._rejected is None and token is not None and not self.due():
            return token
        return await self._refresh(refresh, stale=token, only_if_due=True)

    async def after_rejection(self, rejected: Token, refresh: Refresh) -> Token:
        """The provider refused `rejected` (401): refresh, unless someone already replaced it."""
        return await self._refresh(refresh, stale=rejected, only_if_due=False)

    async def _refresh(self, refresh: Refresh, *, stale: Token | None, only_if_due: bool) -> Token:
        if self._lock is None:
            self._lock = trio.Lock()
        async with self._lock:
            if self._rejected is not None:
                raise self._rejected
            current = self.token
            # whoever held the lock before us may have refreshed already
            if current is not None and (not self.due() if only_if_due else current is not stale):
                return current
            try:
                new = await refresh(current)
            except ReauthRequired as exc:
                self._rejected = exc
                metrics.token_refreshes_total.labels(self.provider, "rejected").inc()
                log.warning("token.refresh_rejected", provider=self.provider, error=str(exc))
                raise
            except BaseException:
                metrics.token_refreshes_total.labels(self.provider, "failed").inc()
                raise
            if new.refresh_token is None and current is not None and current.refresh_token:
                # providers that do not rotate refresh tokens omit them: keep the one we have
                new = Token(new.access_token, new.expires_at, current.refresh_token, new.extra)
            if self._persist is not None:
                # shielded: a rotated refresh token must reach the store once the provider issued it
                with trio.CancelScope(shield=True):
                    await self._persist(new)
            self.token = new
            self.refreshes += 1
            metrics.token_refreshes_total.labels(self.provider, "ok").inc()
            log.info("token.refreshed", provider=self.provider,
                     expires_in=None if new.expires_at is None else round(new.expires_at - self._clock()))
            return new
