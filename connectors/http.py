"""The one door to a provider: every HTTP request a connector makes goes through here.

`ProviderClient.request` is the choke point where the connection's policies
apply: the access token (freshd.policies.tokens), the breaker and rate limits
(`gate`, freshd.policies.gate) and retries,
where request metrics are counted (requests by status class; the duration of each
completed attempt by operation: the `limit` name, or "default"), and where responses are classified into
freshd's error taxonomy by the provider's own `classify` function.

Error handling: timeouts and connection errors become TransientError; a
response goes through `classify` (the provider's one mapping table).
Every attempt is bounded (freshd.policies.limits): a deadline from sending to the
last body byte (TransientError when it passes), a body size checked as bytes arrive
and once decompressed (ResponseTooLarge), and a Retry-After longer than
`max_retry_after` fails the request (PermanentError "asked to wait N s") instead of
being waited out.  Every wait is a trio checkpoint: cancel and pause interrupt it.
TransientError is retried with exponential backoff and full jitter (3 attempts);
RateLimited waits out Retry-After (the gate holds every request of the
connection back, not just this one) for up to 8 attempts; CircuitOpen, AuthExpired
after its one refresh, and everything else are raised at once.
"""

from __future__ import annotations

import contextvars
import functools
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx
import orjson
import structlog
import trio

from freshd import logs, metrics
from freshd.errors import (
    Ambiguous,
    AuthExpired,
    CircuitOpen,
    PermanentError,
    ProviderError,
    RateLimited,
    ResponseTooLarge,
    TransientError,
)
from freshd.policies.limits import ProviderLimits
from freshd.policies.ratelimit import TokenBucket, parse_retry_after
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


def redirected(response: httpx.Response) -> PermanentError:
    """A 3xx: freshd follows no redirects (credentials must not travel to another host), so a moved
    API is a configuration matter, said as such rather than as a body that is not JSON."""
    location = response.headers.get("location", "")
    target = httpx.URL(location).copy_with(query=None) if location else "nowhere"
    return PermanentError(f"HTTP {response.status_code} redirect to {str(target)[:200]}: freshd does not follow "
                          "redirects; check the connection's base_url (https? trailing path?)",
                          status=response.status_code)


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


# Two-way sync's per-tenant write rate ([twoway] write_rate_per_minute): set around a write call
# (freshd.twoway), every request sent while it is set, retries included, first takes a token from it.
write_budget: contextvars.ContextVar[TokenBucket | None] = contextvars.ContextVar("write_budget", default=None)


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
        limits: ProviderLimits | None = None,
        max_response_bytes: int | None = None,
    ) -> None:
        self.provider = provider
        self.origin = httpx.URL(base_url)  # followed links may point here only
        self.classify = classify
        self.retry = retry or RetryPolicy()
        self.limits = limits or ProviderLimits()
        self.max_response_bytes = max_response_bytes or self.limits.max_response_bytes
        self._clock_skewed = False
        self.gate: RequestGate = gate or OpenGate()
        self.refresh = refresh
        self.tokens = tokens if tokens is not None else (TokenRefresher(provider=provider) if refresh else None)
        self.token_header = token_header
        self._client = httpx.AsyncClient(
            base_url=base_url,
            auth=auth,
            # only encodings _read_body can inflate with a bound on the output
            headers={"User-Agent": "freshd/0.1", "Accept-Encoding": "gzip, deflate", **(headers or {})},
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            follow_redirects=False,
            verify=_tls_context(),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def server_time(self, response: httpx.Response) -> datetime:
        """The provider's clock from its Date header, to bound a listing window; our clock when the
        header is missing, unreadable, or further from ours than `max_clock_skew` (logged once, counted)."""
        now = datetime.now(UTC)
        header = response.headers.get("date")
        try:
            stated = parsedate_to_datetime(header).astimezone(UTC) if header else None
        except (TypeError, ValueError):
            stated = None
        if stated is None:
            return now
        skew = (stated - now).total_seconds()
        if abs(skew) > self.limits.max_clock_skew:
            metrics.provider_clock_skew_total.labels(self.provider).inc()
            if not self._clock_skewed:
                self._clock_skewed = True
                log.warning("provider.clock_skew", provider=self.provider, date=header[:40] if header else None,
                            skew_seconds=round(skew), limit=self.limits.max_clock_skew)
            return now
        if self._clock_skewed:
            self._clock_skewed = False
            log.info("provider.clock_recovered", provider=self.provider)
        return stated

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
        self, method: str, url: str, *, limit: str | None = None, replay_safe: bool = True, **kwargs: Any
    ) -> tuple[Any, httpx.Response]:
        """Any method, JSON body decoded (JSON-RPC POSTs, token requests).

        `replay_safe=False` (a create, anything not idempotent): a failure after which the provider
        may have applied the request (a timeout, a dropped connection, a 5xx) is raised as
        `Ambiguous`, never resent; the caller finds out what happened first.  Failures that prove
        nothing was applied (429, a refused connection, an open breaker) are still retried."""
        response, body = await self._send(method, url, decode=orjson.loads, limit=limit,
                                          replay_safe=replay_safe, **kwargs)
        return body, response

    async def _attempt(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request, its body read whole, within the deadline and the size limit."""
        deadline = self.limits.request_deadline
        with trio.move_on_after(deadline):
            async with self._client.stream(method, url, **kwargs) as streamed:
                body = await _read_body(streamed, self.max_response_bytes, self.provider)
            headers = [(k, v) for k, v in streamed.headers.multi_items()
                       if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
            return httpx.Response(streamed.status_code, headers=headers, content=body, request=streamed.request)
        metrics.provider_responses_refused_total.labels(self.provider, "deadline").inc()
        raise TransientError(f"no complete response from {self.provider} within {deadline:g} s "
                             "(policies.limits.request_deadline)")

    def _refuse_long_wait(
        self, response: httpx.Response | None, error: RateLimited
    ) -> tuple[tuple[httpx.Response | None, ProviderError], ProviderError]:
        """A Retry-After beyond max_retry_after: the connection holds back for max_retry_after at
        most (what the gate is told), and this request fails rather than wait."""
        cap = self.limits.max_retry_after
        metrics.provider_responses_refused_total.labels(self.provider, "retry_after_too_long").inc()
        capped = None if response is None else httpx.Response(response.status_code, request=response.request, headers=[
            *((k, v) for k, v in response.headers.multi_items() if k.lower() != "retry-after"),
            ("retry-after", str(int(cap))),
        ])
        refused = PermanentError(
            f"{self.provider} asked to wait {error.retry_after or 0:.0f} s before the next request (more than "
            f"policies.limits.max_retry_after, {cap:g} s): not waited out", status=429, code=error.code)
        return (capped, RateLimited(str(error), retry_after=cap, code=error.code)), refused

    async def _send(
        self, method: str, url: str, *, decode: Callable[[bytes], Any] | None, limit: str | None,
        replay_safe: bool = True, **kwargs: Any
    ) -> tuple[httpx.Response, Any]:
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            token: Token | None = None
            if self.refresh is not None and self.tokens is not None:
                token = await self.tokens.valid(self.refresh)
                kwargs["headers"] = {**(kwargs.get("headers") or {}), **self.token_header(token)}
            budget = write_budget.get()
            if budget is not None:
                await budget.acquire()
            await self.gate.before_request(limit)
            error: ProviderError | None
            response: httpx.Response | None = None
            sent = time.monotonic()
            try:
                response = await self._attempt(method, url, **kwargs)
            except ResponseTooLarge as exc:
                error = exc
                metrics.provider_responses_refused_total.labels(self.provider, "too_large").inc()
            except TransientError as exc:  # the request deadline passed
                error = exc
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
                if error is None and 300 <= response.status_code < 400:
                    error = redirected(response)
            # the attempt completed (a response or an error; a cancelled one is not timed)
            metrics.provider_request_seconds.labels(self.provider, limit or "default").observe(
                time.monotonic() - sent)
            # what the gate learns from this attempt: a Retry-After beyond the limit is capped there
            told: tuple[httpx.Response | None, ProviderError | None] = (response, error)
            if isinstance(error, RateLimited) and (error.retry_after or 0) > self.limits.max_retry_after:
                told, error = self._refuse_long_wait(response, error)
            body: Any = None
            if error is None and response is not None and decode is not None:
                try:
                    body = decode(response.content)
                except ValueError as exc:
                    error = TransientError(f"malformed JSON from {self.provider}", status=response.status_code)
                    error.__cause__ = exc
            self.gate.after_request(*told, limit)
            if error is None:
                assert response is not None
                return response, body
            # error texts quote what the provider said, which may echo our credentials (query-string
            # auth in an echoed URL): scrubbed here, before anything stores, logs or returns them
            error.args = (logs.scrub(str(error)),)
            if isinstance(error, AuthExpired) and token is not None and not refreshed:
                # one refresh and one resend per request; a second AuthExpired is raised as is
                assert self.tokens is not None and self.refresh is not None
                refreshed = True
                attempt -= 1
                await self.tokens.after_rejection(token, self.refresh)
                continue
            if not replay_safe and isinstance(error, TransientError) and not _nothing_applied(error):
                raise Ambiguous(str(error), status=error.status, code=error.code) from error
            if not isinstance(error, TransientError) or isinstance(error, CircuitOpen) \
                    or self.retry.gives_up(attempt, error):
                raise error
            delay = self.retry.delay(attempt, error)
            log.info("provider.retry", provider=self.provider, attempt=attempt, delay=round(delay, 2),
                     error=str(error))
            await trio.sleep(delay)


def _nothing_applied(error: TransientError) -> bool:
    """Errors that prove the provider did not act on the request: resending is safe."""
    if isinstance(error, RateLimited | CircuitOpen):
        return True
    return isinstance(error.__cause__, httpx.ConnectError | httpx.ConnectTimeout)


async def _read_body(response: httpx.Response, limit: int, provider: str) -> bytes:
    """The body, inflated (gzip, deflate) with the output bounded at every step: an endless body
    or a gzip bomb is refused as it arrives, never held whole."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ResponseTooLarge(f"{provider} response declares {int(declared)} bytes, more than "
                               f"policies.limits.max_response_bytes ({limit})", status=response.status_code)
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
        raise PermanentError(f"{provider} sent Content-Encoding {encoding[:30]!r}, which was not asked for",
                             status=response.status_code)
    inflate = None if encoding in ("identity", "") else zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib
    body = bytearray()
    received = 0
    async for chunk in _raw_chunks(response):
        received += len(chunk)
        if received > limit:
            raise ResponseTooLarge(f"{provider} response larger than policies.limits.max_response_bytes "
                                   f"({limit} bytes): refused", status=response.status_code)
        if inflate is None:
            body += chunk
            continue
        pending = chunk
        try:
            while pending:
                body += inflate.decompress(pending, limit + 1 - len(body))
                if len(body) > limit:
                    raise ResponseTooLarge(f"{provider} response inflates past policies.limits.max_response_bytes "
                                           f"({limit} bytes): refused", status=response.status_code)
                pending = inflate.unconsumed_tail
        except zlib.error as exc:
            raise TransientError(f"{provider} sent a corrupt {encoding} body", status=response.status_code) from exc
    return bytes(body)


async def _raw_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    if response.is_stream_consumed:  # built in memory (httpx.MockTransport in tests): already whole
        yield response.content
        return
    async for chunk in response.aiter_raw():
        yield chunk
