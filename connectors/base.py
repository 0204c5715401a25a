"""What every connector is: declared streams that push pages to the engine.

A connector never touches the store.  The engine calls
``sync_entity(stream, state, mode, ctx)``; the connector fetches from its
provider and calls ``await ctx.emit(page)`` for each page, in order.  Each page
carries the checkpoint (opaque JSON, owned by the connector) that the engine
commits in the same transaction as the page's records; on resume the last
committed checkpoint comes back as ``state``.

``emit`` applies back-pressure (it returns once the page is queued for
writing), and it is where pause and cancel take effect: at a page boundary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from freshd import logs
from freshd.connectors import registry
from freshd.connectors.http import Classify, ProviderClient, TokenHeader, bearer, classify_http
from freshd.connectors.schema import build
from freshd.connectors.streams import COLUMN_TYPES, VIEW_COLUMNS, Column, StreamSpec, column_problem, columns
from freshd.errors import ConfigError, ConfigErrors, PermanentError, collecting
from freshd.policies.gate import ConnectionPolicies, limits_for
from freshd.policies.ratelimit import Rate
from freshd.policies.tokens import Token

# the streams' declarations live in streams.py; providers import them from here with the rest
__all__ = ["COLUMN_TYPES", "FRAMEWORK_OPTIONS", "VIEW_COLUMNS", "Column", "ConnectionSettings", "Connector", "Page",
           "Problems", "StreamSpec", "SyncContext", "SyncMode", "check_settings", "column_problem", "columns",
           "connector_class", "missing_credentials", "providers"]


# options any connection may carry, read by the framework (rate limits: freshd.policies.gate; entities:
# the actor; page_concurrency: the engine): allowed next to every provider's own
FRAMEWORK_OPTIONS = frozenset({"rate_limit", "rate_burst", "rate_limits", "rate_group", "entities",
                               "page_concurrency"})


class SyncMode(StrEnum):
    FULL = "full"  # list everything; reconcile deletions when the listing completes
    INCREMENTAL = "incremental"  # from the cursor on


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    name: str
    provider: str
    base_url: str
    tenant: str = "default"
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of one stream, as the engine commits it."""

    entity: str
    records: Sequence[Mapping[str, Any]]
    checkpoint: dict[str, Any] | None
    deleted: Sequence[str] = ()
    total: int | None = None  # the listing's size, when the provider says
    # items the connector itself had to skip: (external id or None, reason)
    failures: Sequence[tuple[str | None, str]] = ()
    # pages of a full listing refresh every row's last_seen_at ...
    full_listing: bool = False
    # ... and its last page, if the listing completed, marks unseen rows deleted; the engine
    # checks the evidence first (rows seen against `total`) and holds large deletions
    listing_complete: bool = False
    # ids the connector found missing from a listing it diffed against the store itself
    # (deletions inferred, not reported): checked like a full listing's, from the counts below
    inferred_deleted: Sequence[str] = ()
    listing_seen: int | None = None  # distinct ids that listing returned
    listing_total: int | None = None  # the provider's own count for it


class SyncContext(Protocol):
    async def emit(self, page: Page) -> None: ...

    async def known_versions(self, entity: str, field: str) -> dict[str, str]:
        """external id -> stored value of `field`, for providers without a server-side filter."""
        ...

    def set_total(self, entity: str, total: int | None, *, estimated: bool = False) -> None:
        """The number of items this entity's run will go through, as soon as it is known
        (`estimated`: the provider offers no count, this is a guess, e.g. from the last sync)."""
        ...


class Connector(ABC):
    """Base class: a provider module declares `provider` and `streams` and implements sync_entity.

    Policies: the connection's actor passes `policies` (gate: breaker and rate
    limits; tokens: the shared token refresher; retry settings).  Every HTTP
    client a connector uses must come from `http_client()`, so nothing bypasses
    them.  Built without policies (tests, benchmarks), a connector gets its own
    from the provider's `rate_limits` defaults and the connection's options.
    """

    provider: ClassVar[str]
    streams: ClassVar[tuple[StreamSpec, ...]]
    # operation -> usage plan; "default" covers operations without their own (None: unlimited
    # until the provider says otherwise)
    rate_limits: ClassVar[Mapping[str, Rate]] = {}
    # the provider's own options as one dataclass (freshd.connectors.schema: its own schema); read by
    # `read_options` into `self.options`, every problem named at once (None: the provider checks its own)
    options_type: ClassVar[type[Any] | None] = None
    # credential keys a connection must give (non-empty); "a|b" is either of them.  Checked by
    # check_settings before anything is stored; alternatives the options decide stay in validate_settings
    required_credentials: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: ConnectionSettings, *, policies: ConnectionPolicies | None = None) -> None:
        self.settings = settings
        if self.options_type is not None:
            self.options = self.read_options(settings)
        for value in settings.credentials.values():
            logs.register_secret(value)  # masked in logs and in every error text (freshd.logs.scrub)
        self.policies = policies or ConnectionPolicies.standalone(
            self.provider, self.rate_limits, settings.options, name=settings.name)

    @classmethod
    def validate_settings(cls, settings: ConnectionSettings) -> None:
        """Raise ConfigError (naming the option) if `settings` cannot work; called by config load and
        `connections add` before anything is stored, so bad input changes nothing."""
        cls.read_options(settings)

    @classmethod
    def read_options(cls, settings: ConnectionSettings) -> Any:
        """The connection's options as `options_type` (ConfigError, or ConfigErrors naming each key)."""
        if cls.options_type is None:
            return None
        return build(cls.options_type, settings.options, f"connection {settings.name}: options",
                     extra=FRAMEWORK_OPTIONS)

    # streams whose incremental listing can start at a given date (`freshctl sync --since`)
    since_streams: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def streams_for(cls, settings: ConnectionSettings) -> tuple[StreamSpec, ...]:
        """The streams a connection with these settings has (the generic connector reads them from config)."""
        return cls.streams

    @classmethod
    def since_problem(cls, stream: StreamSpec) -> str | None:
        """Why `sync --since` cannot work for `stream` (None: it can; see since_state)."""
        if stream.name in cls.since_streams:
            return None
        return f"{cls.provider} cannot start a {stream.name} listing from a date (its API has no filter for it)"

    def since_state(self, stream: StreamSpec, state: dict[str, Any] | None, since: datetime) -> dict[str, Any]:
        """`sync --since`: the state from which an incremental sync_entity lists `stream` from `since` on.

        It is the stored state rewritten as a listing that starts at `since`; a connector keeps the
        stored cursor's high-water mark in it, so the checkpoint the listing ends with is not behind
        it.  Only the engine's start state changes: nothing is stored until a page commits.
        """
        raise PermanentError(self.since_problem(stream) or f"{self.provider}: no since_state for {stream.name}")

    def catch_up_state(self, stream: StreamSpec, state: dict[str, Any]) -> dict[str, Any]:
        """The stored state rewritten so this incremental listing finds every change since the last
        sync (`JobOptions.catch_up`); the default cursor already does."""
        return state

    @classmethod
    def declared_streams(cls, options: Mapping[str, Any]) -> tuple[StreamSpec, ...]:
        """The streams, with their view columns, of a connection with these stored `options` (the
        views are built from them at store open): no credentials, no network."""
        return cls.streams

    def stream(self, name: str) -> StreamSpec:
        for spec in self.streams:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def http_client(
        self,
        base_url: str,
        *,
        classify: Classify = classify_http,
        auth: Any = None,
        headers: dict[str, str] | None = None,
        token_header: TokenHeader | None = None,
        max_connections: int = 8,
        timeout: float = 30.0,
        max_response_bytes: int | None = None,
    ) -> ProviderClient:
        """An HTTP client behind this connection's policies.

        With `token_header`, requests carry the connection's access token (from
        `refresh_token`, refreshed ahead of expiry) in the header(s) it returns.
        """
        uses_tokens = token_header is not None
        return ProviderClient(
            self.provider, base_url, classify=classify, auth=auth, headers=headers,
            max_connections=max_connections, timeout=timeout,
            retry=self.policies.retry, gate=self.policies.gate, limits=self.policies.limits,
            max_response_bytes=max_response_bytes,
            tokens=self.policies.tokens if uses_tokens else None,
            refresh=self.refresh_token if uses_tokens else None,
            token_header=token_header or bearer,
        )

    @abstractmethod
    async def sync_entity(
        self, stream: StreamSpec, state: dict[str, Any] | None, mode: SyncMode, ctx: SyncContext
    ) -> None: ...

    async def fetch_items(self, stream: StreamSpec, ids: Sequence[str], ctx: SyncContext) -> None:
        """Fetch these records again by id (`freshctl retry`); ids gone at the provider go in `deleted`."""
        raise PermanentError(f"{self.provider} cannot fetch {stream.name} by id")

    async def refresh_token(self, current: Token | None) -> Token:
        """OAuth-style providers: get a new access token (raise ReauthRequired if the grant is refused).

        Called by the connection's TokenRefresher only (single-flight, persisted before use);
        `current` is the token being replaced (its refresh_token may be newer than the credentials').
        """
        raise PermanentError(f"{self.provider} has no token refresh")

    @property
    def uses_tokens(self) -> bool:
        return type(self).refresh_token is not Connector.refresh_token

    async def ensure_token(self) -> bool:
        """The token sweep: refresh if the token expires within the buffer. True if it refreshed."""
        if not self.uses_tokens or not self.policies.tokens.due():
            return False
        before = self.policies.tokens.refreshes
        await self.policies.tokens.valid(self.refresh_token)
        return self.policies.tokens.refreshes > before

    async def reference_table(self, name: str) -> dict[str, str]:
        """A small lookup table two-way mappings translate through (Odoo's "countries": id -> ISO code)."""
        raise PermanentError(f"{self.provider} has no reference table {name!r}")

    async def probe(self) -> None:
        """The health sweep's cheap call (one small request); raises the taxonomy's errors.

        A connector without one raises NotImplementedError; the sweep then skips it.
        """
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release the connector's HTTP client (`self.client`, when it has one)."""
        client: ProviderClient | None = getattr(self, "client", None)
        if client is not None:
            await client.aclose()


providers = registry.providers  # the registered provider names, sorted


def connector_class(provider: str) -> type[Connector]:
    """The connector class of `provider` (freshd.connectors.registry; imported on first use, so the
    daemon loads only what it runs).  An unknown name is a ConfigError listing the valid ones."""
    cls = registry.load(registry.provider(provider).connector)
    if not issubclass(cls, Connector):
        raise TypeError(f"provider {provider!r}: {cls.__qualname__} is not a Connector")
    return cls


class Problems:
    """A check that goes on after the first problem: `validate_settings` adds each one, then `check()`
    raises them together (one ConfigError, or ConfigErrors for several)."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def add(self, message: str, *, where: str | None = None) -> None:
        self.errors.append(ConfigError(message, where=where))

    def collect(self) -> AbstractContextManager[None]:
        """Record a ConfigError (or each of ConfigErrors) raised inside, and go on."""
        return collecting(self.errors)

    def check(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors)


def missing_credentials(cls: type[Connector], credentials: Mapping[str, str]) -> list[str]:
    """The declared `required_credentials` not given (non-empty): "a|b" is satisfied by either."""
    return [key for key in cls.required_credentials
            if not any(credentials.get(alternative) for alternative in key.split("|"))]


def check_settings(settings: ConnectionSettings) -> None:
    """Everything that can be checked before a connection is stored, all at once: raises ConfigError
    naming the option (ConfigErrors, one message, when there are several problems)."""
    cls = connector_class(settings.provider)  # an unknown provider: nothing else can be checked
    problems = Problems()
    missing = missing_credentials(cls, settings.credentials)
    if missing:
        def say(key: str) -> str:
            return " (or ".join(key.split("|")) + ")" * key.count("|")

        problems.add(f"missing credential(s): {', '.join(map(say, missing))} ({cls.provider} needs "
                     f"{', '.join(map(say, cls.required_credentials))})", where="credentials")
    with problems.collect():
        limits_for(cls.rate_limits, settings.options)
    concurrency = settings.options.get("page_concurrency")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                    or not 1 <= concurrency <= 32):
        problems.add(f"option page_concurrency must be an integer from 1 to 32, got {concurrency!r}",
                     where=f"connection {settings.name}")
    # the provider's own checks, with the missing credentials stood in for (already reported above),
    # so its option errors show too
    stand_in = {key.split("|")[0]: "-" for key in missing}
    with problems.collect():
        cls.validate_settings(replace(settings, credentials={**settings.credentials, **stand_in}))
    problems.check()
