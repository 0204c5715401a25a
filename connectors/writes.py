"""The write side of a connector, used by two-way sync (freshd.twoway).

A connector that accepts writes implements `Writer` next to its listing.  Writes go through the
same `ProviderClient` as reads (rate limits, breaker, token refresh); a create is sent with
``replay_safe=False`` so a failure that leaves open whether it was applied is raised as
`Ambiguous` instead of being resent blindly.

Idempotency is shared between the two sides of the door:
- the engine commits an intent row, with a `reference` (its idempotency key), before it calls
  `write`, and records the outcome after;
- the connector makes the record it creates carry that reference *in the same request* (a
  WooCommerce ``meta_data`` entry, an Odoo field), so that after a crash `find_created` can tell
  whether the create happened, and the engine links the record instead of creating it again.

Per-item refusals come back as outcomes, in the order of the operations (`DuplicateKey`,
`Rejected`, `ItemError`); a failure of the whole call (reauth, rate limit exhausted, breaker open,
`Ambiguous`) is raised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from freshd.errors import ProviderError

# the meta_data key (WooCommerce) or field convention that carries freshd's reference
REFERENCE_KEY = "_freshd_ref"


@dataclass(frozen=True, slots=True)
class Create:
    values: Mapping[str, Any]  # provider-shaped fields, nested as the provider takes them
    reference: str  # the idempotency key; the created record carries it


@dataclass(frozen=True, slots=True)
class Update:
    external_id: str
    values: Mapping[str, Any]  # only the fields to change, provider-shaped


WriteOp = Create | Update


@dataclass(frozen=True, slots=True)
class Written:
    """A write the provider applied: the record's id and the record as it answered (the same shape
    a listing returns, so the engine can store it like a pulled record)."""

    external_id: str
    record: Mapping[str, Any]


WriteOutcome = Written | ProviderError


@runtime_checkable
class Writer(Protocol):
    # stream name -> what can be written to it ("create", "update", "archive")
    writable: ClassVar[Mapping[str, frozenset[str]]]

    async def write(self, entity: str, ops: Sequence[WriteOp]) -> list[WriteOutcome]:
        """Apply `ops` to `entity` (a stream name), batched as the provider allows; one outcome per
        op, in order.  Raises for a failure of the whole call."""
        ...

    async def find_created(self, entity: str, creates: Sequence[Create]) -> dict[str, Written]:
        """reference -> the record an earlier attempt of that create made, for those that exist."""
        ...

    async def archive(self, entity: str, external_id: str) -> WriteOutcome:
        """Retire a record the way the provider keeps history (Odoo: active=False; WooCommerce:
        trash)."""
        ...
