"""What a stream is, declared as data: its path, key, view columns and how it is listed.

A provider module declares its streams with `StreamSpec`; a stream the listing
engine (freshd.connectors.listing) can page through declares a `Listing`: the
paginator, where the records sit in the body, the incremental cursor and the
soft-delete rule.  Only truly bespoke flows (a diff of ids, report documents)
leave `listing` unset and keep code of their own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from freshd.connectors.paginators import PaginatorConfig
from freshd.connectors.schema import Invalid, check_dotted

# what a view column can be (docs/DATA.md: how each is read from JSON; a value that does not fit is NULL)
COLUMN_TYPES = ("text", "integer", "numeric", "boolean", "timestamptz", "jsonb")
# the columns every view has (docs/DATA.md); `id` may be declared, to give the external id a type
VIEW_COLUMNS = ("id", "connection", "tenant", "modified_at", "deleted_at", "version")
_COLUMN_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def column_problem(name: str, path: str, type: str) -> tuple[str, str] | None:
    """What is wrong with a column declaration: (the key at fault, why), or None."""
    if not _COLUMN_NAME.fullmatch(name):
        return "name", f"bad column name {name!r}: lower-case letters, digits and '_' (max 63)"
    if name in VIEW_COLUMNS[1:]:
        return "name", f"column name {name!r} is taken by every view ({', '.join(VIEW_COLUMNS)})"
    if not path or any(not part for part in path.split(".")):
        return "path", f"{path!r} is not a dotted path into the record (e.g. \"billing.city\")"
    if type not in COLUMN_TYPES:
        return "type", f"unknown column type {type!r}; valid types: {', '.join(COLUMN_TYPES)}"
    return None


@dataclass(frozen=True, slots=True)
class Column:
    """A column of the stream's view (freshd.store.views): `path` (dotted) into the record, read as `type`.

    A column named ``id`` gives the view's id (the record's external id) a type instead.
    """

    name: str
    path: str
    type: str = "text"

    def __post_init__(self) -> None:
        if problem := column_problem(self.name, self.path, self.type):
            raise ValueError(f"column {self.name!r}: {problem[1]}")


def columns(*specs: str) -> tuple[Column, ...]:
    """Compact column declarations: ``"name"``, ``"name:type"``, ``"name=dotted.path:type"``
    (the path defaults to the name, the type to text)."""
    found = []
    for spec in specs:
        head, _, type_ = spec.partition(":")
        name, _, path = head.partition("=")
        found.append(Column(name, path or name, type_ or "text"))
    return tuple(found)


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A stream declared as data (the generic REST connector reads the same from config)."""

    name: str
    path: str
    primary_key: str = "id"
    cursor_field: str | None = None  # the records' updated-at field
    cursor_param: str | None = None  # the server-side filter for it, if the API has one
    params: Mapping[str, str] = field(default_factory=dict)
    columns: tuple[Column, ...] = ()  # the typed columns of its view (freshd.store.views, docs/DATA.md)
    listing: Listing | None = None  # how the listing engine pages through it (None: bespoke code)


# --- how a stream is listed ------------------------------------------------------------------------

# how the checkpointed cursor is written into the filter parameter; any other value containing "%"
# is a strftime pattern (applied in UTC)
CURSOR_FORMATS = ("raw", "iso8601", "epoch", "epoch_ms")


@dataclass(frozen=True, slots=True)
class Incremental:
    """The incremental cursor: the records' updated-at `field` (dotted path), sent back as `param`.

    The checkpoint keeps the highest value seen; the next listing sends it, written as `format`
    and minus `lookback` seconds (a numeric cursor: its own units).  Without `param` the API cannot
    filter, so every listing is a full one.  `ascending`: records come sorted by `field`, so the
    cursor moves page by page.  `until_start`: offset paging over a live list can shift rows past
    the listing, so the next one starts no later than this one did (its server's clock).
    `window`: the listing is closed at the server's clock (`window` is the strict upper-bound
    parameter, whole seconds), and the cursor moves to that bound whatever the records say.
    `at_start`: the cursor moves to the listing's start (its server's clock) whatever the records
    say, for an API that filters by a change time its records do not reliably carry (SP-API
    inventory); the lookback is the overlap the next listing reads again.
    """

    field: str
    param: str | None = None
    format: str = "raw"
    lookback: float = 0.0
    ascending: bool = False
    until_start: bool = False
    window: str | None = None
    at_start: bool = False

    def __post_init__(self) -> None:
        check_dotted("field", self.field)
        if self.format not in CURSOR_FORMATS and "%" not in self.format:
            raise Invalid("format", f"unknown cursor format {self.format!r}; "
                                    f"valid: {', '.join(CURSOR_FORMATS)} or a strftime pattern")
        if self.lookback < 0:
            raise Invalid("lookback", "must be 0 or more")


@dataclass(frozen=True, slots=True)
class SoftDelete:
    """Records whose `field` (dotted path) holds one of `values` (none given: any value but null, false
    or "") are marked deleted; `keep`: stored as well (their last state), else only tombstoned."""

    field: str
    values: tuple[Any, ...] = ()
    keep: bool = True

    def __post_init__(self) -> None:
        check_dotted("field", self.field)


@dataclass(frozen=True, slots=True)
class Listing:
    """How the listing engine pages through a stream.

    `records_path`: where the list sits in the body (None: the body is the list).  `concurrency`:
    pages fetched ahead, in order, once the page count is known (page-number paging with a
    total); the connection's `page_concurrency` option overrides it.  `track_full`: the checkpoint
    keeps `full_at`, when the last complete full listing started (for "full every N hours").
    """

    paginator: PaginatorConfig
    records_path: str | None = None
    incremental: Incremental | None = None
    soft_delete: SoftDelete | None = None
    concurrency: int = 1
    track_full: bool = False
