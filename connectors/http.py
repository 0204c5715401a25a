"""The one door to a provider: every HTTP request a connector makes goes through here.

`ProviderClient.request` is the choke point where the connection's policies
apply (retries now; the rate limiter and circuit breaker hook in at `gate`),
where request metrics are counted, and where responses are classified into
freshd's error taxonomy by the provider's own `classify` function.

Error handling: timeouts and connection errors become TransientError; a
response goes through `classify` (the provider's one mapping table).
TransientError (incl. RateLimited) is retried with exponential backoff and full
jitter, honouring Retry-After; everything else is raised at once.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import orjson
import structlog
import trio

from freshd import metrics
from freshd.errors import (
    AuthExpired,
    PermanentError,
    ProviderError,
    RateLimited,
    TransientError,
)

log = structlog.get_logger(__name__)

Classify = Callable[[httpx.Response], ProviderError | None]


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


def classify_http(response: httpx.Response) -> ProviderError | None:
    """The generic mapping by status; providers refine it with their own error codes."""
    status = response.status_code
    if status < 400:
        return None
    message = f"HTTP {status} from {response.request.url.copy_with(query=None)}"
    if status == 429:
        return RateLimited(message, retry_after=parse_retry_after(response.headers.get("retry-after")))
    if status in (408, 425) or status >= 500:
        return TransientError(message, status=status)
    if status == 401:
        return AuthExpired(message, status=status)
    return PermanentError(message, status=status)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    base: float = 1.0
    cap: float = 30.0

    def delay(self, attempt: int, error: TransientError) -> float:
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return error.retry_after
        # full jitter: uniform(0, min(cap, base * 2**attempt))
        return random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


class RequestGate(Protocol):
    """What a connection's policies do around each request (rate limit, breaker)."""

    async def before_request(self) -> None: ...

    def after_request(self, response: httpx.Response | None, error: ProviderError | None) -> None:
        """Called once per attempt: the response (if any) and what `classify` made of it."""
        ...


class OpenGate:
    async def before_request(self) -> None:
        await trio.lowlevel.checkpoint()

    def after_request(self, response: httpx.Response | None, error: ProviderError | None) -> None:
        pass


class ProviderClient:
    """An httpx.AsyncClient with the connection's policies wrapped around every request."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        classify: Classify = classify_http,
        auth: httpx.Auth | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        max_connections: int = 8,
        retry: RetryPolicy | None = None,
        gate: RequestGate | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.provider = provider
        self.classify = classify
        self.retry = retry or RetryPolicy()
        self.gate: RequestGate = gate or OpenGate()
        self._client = httpx.AsyncClient(
            base_url=base_url,
            auth=auth,
            headers={"User-Agent": "freshd/0.1", **(headers or {})},
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send with retries; return a response `classify` accepted, or raise its error."""
        response, _ = await self._send(method, url, decode=None, **kwargs)
        return response

    async def get_json(self, url: str, **kwargs: Any) -> tuple[Any, httpx.Response]:
        """GET and decode JSON; a malformed body counts as transient (retried)."""
        response, body = await self._send("GET", url, decode=orjson.loads, **kwargs)
        return body, response

    async def _send(
        self, method: str, url: str, *, decode: Callable[[bytes], Any] | None, **kwargs: Any
    ) -> tuple[httpx.Response, Any]:
        attempt = 0
        while True:
            attempt += 1
            await self.gate.before_request()
            error: ProviderError | None
            response: httpx.Response | None = None
            try:
                response = await self._client.request(method, url, **kwargs)
            except httpx.TimeoutException as exc:
                error = TransientError(f"timeout talking to {self.provider}: {type(exc).__name__}")
                error.__cause__ = exc
                metrics.provider_requests_total.labels(self.provider, "error").inc()
            except httpx.TransportError as exc:
                error = TransientError(f"cannot reach {self.provider}: {type(exc).__name__}")
                error.__cause__ = exc
                metrics.provider_requests_total.labels(self.provider, "error").inc()
            else:
                metrics.provider_requests_total.labels(self.provider, f"{response.status_code // 100}xx").inc()
                error = self.classify(response)
            body: Any = None
            if error is None and response is not None and decode is not None:
                try:
                    body = decode(response.content)
                except ValueError as exc:
                    error = TransientError(f"malformed JSON from {self.provider}", status=response.status_code)
                    error.__cause__ = exc
            self.gate.after_request(response, error)
            if error is None:
                assert response is not None
                return response, body
            if not isinstance(error, TransientError) or attempt >= self.retry.attempts:
                raise error
            delay = self.retry.delay(attempt, error)
            log.info("provider.retry", provider=self.provider, attempt=attempt, delay=round(delay, 2),
                     error=str(error))
            await trio.sleep(delay)
