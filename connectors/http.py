"""The one door to a provider: every HTTP request a connector makes goes through here.

`ProviderClient.request` is the choke point where the connection's policies
apply: the access token (freshd.policies.tokens), the breaker and rate limits
(`gate`, freshd.policies.gate) and retries,
where request metrics are counted, and where responses are classified into
freshd's error taxonomy by the provider's own `classify` function.

Error handling: timeouts and connection errors become TransientError; a
response goes through `classify` (the provider's one mapping table).
TransientError is retried with exponential backoff and full jitter (3 attempts);
RateLimited waits out Retry-After (the gate holds every request of the
connection back, not just this one) for up to 8 attempts; CircuitOpen, AuthExpired
after its one refresh, and everything else are raised at once.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from typing import Any, Protocol

import httpx
import orjson
import structlog
import trio

from freshd import metrics
from freshd.errors import (
    AuthExpired,
    CircuitOpen,
    PermanentError,
    ProviderError,
    RateLimited,
    TransientError,
)
from freshd.policies.ratelimit import parse_retry_after
from freshd.policies.retry import RetryPolicy
from freshd.policies.tokens import Refresh, Token, TokenRefresher

log = structlog.get_logger(__name__)

Classify = Callable[[httpx.Response], ProviderError | None]


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


class RequestGate(Protocol):
    """What a connection's policies do around each request (breaker, rate limits).

    `limit` names the operation's rate-limit bucket (None: the connection's default).
    """

    async def before_request(self, limit: str | None = None) -> None: ...

    def after_request(
        self, response: httpx.Response | None, error: ProviderError | None, limit: str | None = None
    ) -> None:
        """Called once per attempt: the response (if any) and what `classify` made of it."""
        ...


class OpenGate:
    async def before_request(self, limit: str | None = None) -> None:
        await trio.lowlevel.checkpoint()

    def after_request(
        self, response: httpx.Response | None, error: ProviderError | None, limit: str | None = None
    ) -> None:
        pass


TokenHeader = Callable[[Token], dict[str, str]]


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every client: building one costs milliseconds and ~100 KB,
    which thousands of connections' probes and syncs would otherwise pay each time."""
    return ssl.create_default_context()


def bearer(token: Token) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.access_token}"}


class ProviderClient:
    """An httpx.AsyncClient with the connection's policies wrapped around every request.

    With `refresh` (the provider's token request) each request carries a token
    from `tokens` (refreshed ahead of expiry, single-flight) in `token_header`;
    an AuthExpired answer refreshes once and resends once.
    """

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
        tokens: TokenRefresher | None = None,
        refresh: Refresh | None = None,
        token_header: TokenHeader = bearer,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.provider = provider
        self.classify = classify
        self.retry = retry or RetryPolicy()
        self.gate: RequestGate = gate or OpenGate()
        self.refresh = refresh
        self.tokens = tokens if tokens is not None else (TokenRefresher(provider=provider) if refresh else None)
        self.token_header = token_header
        self._client = httpx.AsyncClient(
            base_url=base_url,
            auth=auth,
            headers={"User-Agent": "freshd/0.1", **(headers or {})},
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            follow_redirects=False,
            verify=_tls_context(),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, url: str, *, limit: str | None = None, **kwargs: Any) -> httpx.Response:
        """Send with retries; return a response `classify` accepted, or raise its error."""
        response, _ = await self._send(method, url, decode=None, limit=limit, **kwargs)
        return response

    async def get_json(self, url: str, *, limit: str | None = None, **kwargs: Any) -> tuple[Any, httpx.Response]:
        """GET and decode JSON; a malformed body counts as transient (retried)."""
        response, body = await self._send("GET", url, decode=orjson.loads, limit=limit, **kwargs)
        return body, response

    async def get_json_if_found(self, url: str, *, limit: str | None = None, **kwargs: Any) -> Any | None:
        """GET one resource by id: its decoded body, or None when the provider says 404 (gone)."""
        try:
            body, _ = await self.get_json(url, limit=limit, **kwargs)
        except PermanentError as exc:
            if exc.status != 404:
                raise
            return None
        return body

    async def request_json(
        self, method: str, url: str, *, limit: str | None = None, **kwargs: Any
    ) -> tuple[Any, httpx.Response]:
        """Any method, JSON body decoded (JSON-RPC POSTs, token requests)."""
        response, body = await self._send(method, url, decode=orjson.loads, limit=limit, **kwargs)
        return body, response

    async def _send(
        self, method: str, url: str, *, decode: Callable[[bytes], Any] | None, limit: str | None, **kwargs: Any
    ) -> tuple[httpx.Response, Any]:
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            token: Token | None = None
            if self.refresh is not None and self.tokens is not None:
                token = await self.tokens.valid(self.refresh)
                kwargs["headers"] = {**(kwargs.get("headers") or {}), **self.token_header(token)}
            await self.gate.before_request(limit)
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
            except BaseException:
                self.gate.after_request(None, None, limit)  # cancelled: the attempt reports nothing bad
                raise
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
            self.gate.after_request(response, error, limit)
            if error is None:
                assert response is not None
                return response, body
            if isinstance(error, AuthExpired) and token is not None and not refreshed:
                # one refresh and one resend per request; a second AuthExpired is raised as is
                assert self.tokens is not None and self.refresh is not None
                refreshed = True
                attempt -= 1
                await self.tokens.after_rejection(token, self.refresh)
                continue
            if not isinstance(error, TransientError) or isinstance(error, CircuitOpen) \
                    or self.retry.gives_up(attempt, error):
                raise error
            delay = self.retry.delay(attempt, error)
            log.info("provider.retry", provider=self.provider, attempt=attempt, delay=round(delay, 2),
                     error=str(error))
            await trio.sleep(delay)
