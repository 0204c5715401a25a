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

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from freshd.errors import ConfigError, PermanentError


class SyncMode(StrEnum):
    FULL = "full"  # list everything; reconcile deletions when the listing completes
    INCREMENTAL = "incremental"  # from the cursor on


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A stream declared as data (the generic REST connector reads the same from config)."""

    name: str
    path: str
    primary_key: str = "id"
    cursor_field: str | None = None  # the records' updated-at field
    cursor_param: str | None = None  # the server-side filter for it, if the API has one
    paginator: str = "page_number"
    records_path: str | None = None  # where the list sits in the body (None: the body is the list)
    params: Mapping[str, str] = field(default_factory=dict)


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
    # ... and its last page, if the listing completed, marks unseen rows deleted
    listing_complete: bool = False


class SyncContext(Protocol):
    async def emit(self, page: Page) -> None: ...

    async def known_versions(self, entity: str, field: str) -> dict[str, str]:
        """external id -> stored value of `field`, for providers without a server-side filter."""
        ...

    def set_total(self, entity: str, total: int | None) -> None: ...


class Connector(ABC):
    """Base class: a provider module declares `provider` and `streams` and implements sync_entity."""

    provider: ClassVar[str]
    streams: ClassVar[tuple[StreamSpec, ...]]

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings

    def stream(self, name: str) -> StreamSpec:
        for spec in self.streams:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @abstractmethod
    async def sync_entity(
        self, stream: StreamSpec, state: dict[str, Any] | None, mode: SyncMode, ctx: SyncContext
    ) -> None: ...

    async def fetch_items(self, stream: StreamSpec, ids: Sequence[str], ctx: SyncContext) -> None:
        """Fetch these records again by id (`freshctl retry`); ids gone at the provider go in `deleted`."""
        raise PermanentError(f"{self.provider} cannot fetch {stream.name} by id")

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the connector's HTTP client."""


# provider name -> "module:Class"; imported on first use so the daemon loads only what it runs.
_REGISTRY = {
    "woocommerce": "freshd.connectors.woocommerce.connector:WooCommerceConnector",
}


def providers() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def connector_class(provider: str) -> type[Connector]:
    try:
        target = _REGISTRY[provider]
    except KeyError:
        raise ConfigError(
            f"unknown provider {provider!r}; valid providers: {', '.join(providers())}"
        ) from None
    module, _, name = target.partition(":")
    cls: type[Connector] = getattr(importlib.import_module(module), name)
    return cls
