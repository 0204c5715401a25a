"""Paginators: each kind's settings (a dataclass, its own schema) and its state machine.

A `Pager` holds one listing's position.  The connector asks it what to request
(`ask`), hands it each response (`advance`, the one transition: it moves the
position on or sets `done`), and checkpoints `position()` with every page so
an interrupted listing resumes (`restore`) at the next request.  Every pager
feeds its `LoopGuard`: page and offset paging by the ids of each page (the same
page twice is a loop), cursor and link paging by the token or URL (one that
comes back is a loop); either raises PermanentError.

End of a listing, by kind:

    page_number   an empty page; else the total-pages count, else the total records, when the
                  API gives them; else a short page (only if the page size is sent)
    offset        an empty page; else the total records; else a short page
    cursor        no next token (absent, null or "")
    link_header   no rel="next" link
    keyset        an empty or short page
    none          after the first response

Short-page ends trust the server to return `size` records per page: set the size
no larger than the API's maximum, or configure a total.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from freshd.connectors.pagination import LoopGuard
from freshd.connectors.schema import Invalid, Registry, check_dotted, check_header, dig
from freshd.errors import PermanentError

# --- the kinds' settings (declared by providers, or read from the generic connector's options) ---


@dataclass(frozen=True, slots=True)
class PageNumberPaging:
    """``?page=N&per_page=S``.  The listing ends at the total-pages count (header or body path) when
    the API gives one, else at the first empty page, or a short one if `size_param` is sent."""

    page_param: str = "page"
    size_param: str | None = "per_page"
    size: int = 100
    start: int = 1
    total_pages_header: str | None = None
    total_pages_path: str | None = None
    total_header: str | None = None  # total records: progress, and a changed total means the pages shifted
    total_path: str | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise Invalid("size", "must be at least 1")
        if self.start < 0:
            raise Invalid("start", "must be 0 or more")
        for key in ("total_pages_header", "total_header"):
            check_header(key, getattr(self, key))
        for key in ("total_pages_path", "total_path"):
            check_dotted(key, getattr(self, key))


@dataclass(frozen=True, slots=True)
class OffsetPaging:
    """``?offset=N&limit=S``; ends at the total (header or body path) if given and `trust_total`, else
    at a short page.  `verify_overlap`: pages after the first start one row early, and that row must
    be the last one of the page before; if it is not, rows came or went before the offset (or the
    order is unstable), so the listing counts as shifted."""

    offset_param: str = "offset"
    limit_param: str = "limit"
    limit: int = 100
    total_header: str | None = None
    total_path: str | None = None
    trust_total: bool = True
    verify_overlap: bool = False

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise Invalid("limit", "must be at least 1")
        check_header("total_header", self.total_header)
        check_dotted("total_path", self.total_path)


@dataclass(frozen=True, slots=True)
class CursorPaging:
    """The next page's token from a body path (`next_path`) or a response header (`next_header`),
    sent back as `cursor_param`; the listing ends when no token comes back."""

    cursor_param: str = "cursor"
    next_path: str | None = None
    next_header: str | None = None
    size_param: str | None = None
    size: int = 100

    def __post_init__(self) -> None:
        if (self.next_path is None) == (self.next_header is None):
            raise Invalid(None, "cursor paging needs exactly one of 'next_path' (a dotted path into the "
                                "body) or 'next_header'")
        check_dotted("next_path", self.next_path)
        check_header("next_header", self.next_header)
        if self.size < 1:
            raise Invalid("size", "must be at least 1")


@dataclass(frozen=True, slots=True)
class LinkHeaderPaging:
    """RFC 8288 ``Link: <url>; rel="next"``: the next URL is followed as given (same origin only)."""

    rel: str = "next"
    size_param: str | None = None
    size: int = 100

    def __post_init__(self) -> None:
        if self.size < 1:
            raise Invalid("size", "must be at least 1")


@dataclass(frozen=True, slots=True)
class KeysetPaging:
    """Keyset (seek) paging: rows sorted by `fields`, each page asked for after the last row's key
    (`Ask.key`, the values of `fields`); ends at a short page.  The key is a value, not a count, so
    the pages cannot shift: a row seen again was changed since it was read and moved on, and a
    changed total is rows coming and going.  The request is the provider's (a `fetch` hook turns
    the key into its filter), so the generic connector does not offer it.  `total_path`: a count
    the hook puts in the body (progress)."""

    fields: tuple[str, ...] = ("id",)
    size: int = 100
    size_param: str | None = "limit"
    total_path: str | None = None

    def __post_init__(self) -> None:
        if not self.fields:
            raise Invalid("fields", "needs at least one field")
        for name in self.fields:
            check_dotted("fields", name)
        if self.size < 1:
            raise Invalid("size", "must be at least 1")
        check_dotted("total_path", self.total_path)


@dataclass(frozen=True, slots=True)
class NoPaging:
    """One request returns the whole listing."""


PaginatorConfig = PageNumberPaging | OffsetPaging | CursorPaging | LinkHeaderPaging | KeysetPaging | NoPaging
PAGINATORS: Registry[PaginatorConfig] = Registry("paginator", {
    "page_number": PageNumberPaging, "offset": OffsetPaging, "cursor": CursorPaging,
    "link_header": LinkHeaderPaging, "none": NoPaging,
})


# --- the state machines ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ask:
    """The next request: `url` to GET as given (a followed link) or None for the stream's path,
    with the paging `params` (added to the stream's own, unless `url` is given); `key`: keyset
    paging's position, the last row's values of its fields (None: from the start)."""

    url: str | None
    params: dict[str, str]
    key: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True)
class PageRead:
    """One response, as a pager needs it."""

    records: Sequence[Any]
    ids: Sequence[str]
    body: Any
    headers: httpx.Headers
    url: httpx.URL  # where it came from: relative links resolve against it


def _read_int(page: PageRead, header: str | None, path: str | None) -> int | None:
    """A count the API reports (header or body path); None when absent or unreadable."""
    raw: Any = None
    if header is not None:
        raw = page.headers.get(header)
    elif path is not None:
        try:
            raw = dig(page.body, path)
        except KeyError:
            raw = None
    if isinstance(raw, bool) or raw is None:
        return None
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


class Pager(ABC):
    """One listing's position.  `total` is the listing's size when the API says; after `advance`,
    `repeated` rows at the head of the page were the previous page's (an overlap asked for), and
    `shifted` says the pages moved under the listing.  `can_shift`: False for a kind whose pages
    cannot move (keyset), so an id seen again or a changed total says nothing about a shift."""

    can_shift: ClassVar[bool] = True

    def __init__(self, guard: LoopGuard) -> None:
        self.guard = guard
        self.done = False
        self.total: int | None = None
        self.repeated = 0
        self.shifted = False

    @abstractmethod
    def ask(self) -> Ask: ...

    @abstractmethod
    def advance(self, page: PageRead) -> None: ...

    @abstractmethod
    def position(self) -> dict[str, Any]: ...

    @abstractmethod
    def restore(self, position: Mapping[str, Any]) -> None: ...


def _size(param: str | None, size: int) -> dict[str, str]:
    return {param: str(size)} if param else {}


class PageNumberPager(Pager):
    def __init__(self, config: PageNumberPaging, guard: LoopGuard) -> None:
        super().__init__(guard)
        self.config = config
        self.page = config.start

    def ask(self) -> Ask:
        return Ask(None, {self.config.page_param: str(self.page), **_size(self.config.size_param, self.config.size)})

    def advance(self, page: PageRead) -> None:
        c = self.config
        self.guard.page(page.ids)
        pages = _read_int(page, c.total_pages_header, c.total_pages_path)
        self.total = _read_int(page, c.total_header, c.total_path)
        read = self.page - c.start + 1  # pages read so far
        if not page.records:
            self.done = True
        elif pages is not None:
            self.done = read >= pages
        elif self.total is not None and c.size_param:
            self.done = read * c.size >= self.total
        elif c.size_param:
            self.done = len(page.records) < c.size
        if not self.done:
            self.page += 1

    def ask_at(self, number: int) -> Ask:
        """The request for page `number` (the engine fetches ahead once the page count is known)."""
        return Ask(None, {self.config.page_param: str(number), **_size(self.config.size_param, self.config.size)})

    def pages_left(self, page: PageRead) -> range | None:
        """The page numbers after the current one, when the page count is known (None: it is not)."""
        c = self.config
        pages = _read_int(page, c.total_pages_header, c.total_pages_path)
        return None if pages is None or self.done else range(self.page, c.start + pages)

    def position(self) -> dict[str, Any]:
        return {"page": self.page}

    def restore(self, position: Mapping[str, Any]) -> None:
        self.page = int(position["page"])


class OffsetPager(Pager):
    def __init__(self, config: OffsetPaging, guard: LoopGuard) -> None:
        super().__init__(guard)
        self.config = config
        self.offset = 0
        self.last_id: str | None = None  # the last row read: the overlap row of the next page

    def _overlaps(self) -> bool:
        return self.config.verify_overlap and self.offset > 0 and self.last_id is not None

    def ask(self) -> Ask:
        start = self.offset - 1 if self._overlaps() else self.offset
        return Ask(None, {self.config.offset_param: str(start), self.config.limit_param: str(self.config.limit)})

    def advance(self, page: PageRead) -> None:
        self.guard.page(page.ids)
        self.total = _read_int(page, self.config.total_header, self.config.total_path)
        asked = self.offset - 1 if self._overlaps() else self.offset
        self.repeated = 0
        if asked < self.offset:
            if page.ids and page.ids[0] == self.last_id:
                self.repeated = 1
            else:
                self.shifted = True
        if page.ids:
            self.last_id = page.ids[-1]
        # move by what came back, not by the limit asked: a server that caps the limit skips nothing
        self.offset = asked + len(page.records)
        if not page.records:
            self.done = True
        elif self.total is not None and self.config.trust_total:
            self.done = self.offset >= self.total
        else:
            self.done = len(page.records) < self.config.limit

    def position(self) -> dict[str, Any]:
        return {"offset": self.offset, **({"last_id": self.last_id} if self.config.verify_overlap else {})}

    def restore(self, position: Mapping[str, Any]) -> None:
        self.offset = int(position["offset"])
        last = position.get("last_id")
        self.last_id = None if last is None else str(last)


class CursorPager(Pager):
    def __init__(self, config: CursorPaging, guard: LoopGuard) -> None:
        super().__init__(guard)
        self.config = config
        self.token: str | None = None

    def ask(self) -> Ask:
        params = _size(self.config.size_param, self.config.size)
        if self.token is not None:
            params[self.config.cursor_param] = self.token
        return Ask(None, params)

    def advance(self, page: PageRead) -> None:
        raw: Any
        if self.config.next_header is not None:
            raw = page.headers.get(self.config.next_header)
        else:
            assert self.config.next_path is not None
            try:
                raw = dig(page.body, self.config.next_path)
            except KeyError:
                raw = None
        if raw is None or raw == "" or raw is False:
            self.done = True
            return
        token = str(raw)
        self.guard.cursor(token)
        self.token = token

    def position(self) -> dict[str, Any]:
        return {"cursor": self.token}

    def restore(self, position: Mapping[str, Any]) -> None:
        token = position.get("cursor")
        self.token = None if token is None else str(token)


# RFC 8288: `<uri>; param=value; param="value", <uri2>; ...` (commas may sit inside <> and quotes)
_LINK = re.compile(r'<([^>]*)>((?:\s*;\s*[^;,="]+(?:=(?:"[^"]*"|[^;,]*))?)*)')
_LINK_PARAM = re.compile(r';\s*([^;,="\s]+)\s*(?:=\s*(?:"([^"]*)"|([^;,]*)))?')


def links(header: str) -> list[tuple[str, set[str]]]:
    """(target, rel values) for each link of a Link header."""
    found = []
    for match in _LINK.finditer(header):
        rels: set[str] = set()
        for param in _LINK_PARAM.finditer(match.group(2)):
            if param.group(1).lower() == "rel":
                rels.update((param.group(2) or param.group(3) or "").lower().split())
        found.append((match.group(1).strip(), rels))
    return found


class LinkHeaderPager(Pager):
    def __init__(self, config: LinkHeaderPaging, guard: LoopGuard, origin: httpx.URL) -> None:
        super().__init__(guard)
        self.config = config
        self.origin = origin
        self.next_url: str | None = None

    def ask(self) -> Ask:
        if self.next_url is None:
            return Ask(None, _size(self.config.size_param, self.config.size))
        return Ask(self.next_url, {})

    def advance(self, page: PageRead) -> None:
        target = next((url for url, rels in links(page.headers.get("link", ""))
                       if self.config.rel.lower() in rels), None)
        if not target:
            self.done = True
            return
        url = page.url.join(target)
        if (url.scheme, url.host, url.port) != (self.origin.scheme, self.origin.host, self.origin.port):
            # the connection's credentials go to base_url's origin only
            raise PermanentError(f"rel={self.config.rel!r} link points to another origin ({url.scheme}://{url.host})")
        self.guard.cursor(str(url))
        self.next_url = str(url)

    def position(self) -> dict[str, Any]:
        return {"url": self.next_url}

    def restore(self, position: Mapping[str, Any]) -> None:
        url = position.get("url")
        self.next_url = None if url is None else str(url)


class KeysetPager(Pager):
    can_shift = False

    def __init__(self, config: KeysetPaging, guard: LoopGuard) -> None:
        super().__init__(guard)
        self.config = config
        self.key: tuple[Any, ...] | None = None

    def ask(self) -> Ask:
        return Ask(None, _size(self.config.size_param, self.config.size), self.key)

    def advance(self, page: PageRead) -> None:
        self.total = _read_int(page, None, self.config.total_path)
        if page.records:
            last = page.records[-1]
            key = tuple(_field(last, name) for name in self.config.fields)
            self.guard.cursor(key)  # the same key twice: the provider ignores the position
            self.key = key
        self.done = len(page.records) < self.config.size

    def position(self) -> dict[str, Any]:
        return {"key": None if self.key is None else list(self.key)}

    def restore(self, position: Mapping[str, Any]) -> None:
        key = position["key"]
        if key is not None and (not isinstance(key, list) or len(key) != len(self.config.fields)):
            raise ValueError(f"not a key of {self.config.fields}: {key!r}")
        self.key = None if key is None else tuple(key)


def _field(record: Any, path: str) -> Any:
    try:
        return dig(record, path)
    except KeyError:
        raise PermanentError(f"keyset paging: a record has no {path!r}") from None


class SinglePager(Pager):
    def ask(self) -> Ask:
        return Ask(None, {})

    def advance(self, page: PageRead) -> None:
        self.done = True

    def position(self) -> dict[str, Any]:
        return {}

    def restore(self, position: Mapping[str, Any]) -> None:
        pass


def start_pager(config: PaginatorConfig, guard: LoopGuard, *, origin: httpx.URL) -> Pager:
    """A fresh state machine for one listing (`origin`: the only origin links may point to)."""
    match config:
        case PageNumberPaging():
            return PageNumberPager(config, guard)
        case OffsetPaging():
            return OffsetPager(config, guard)
        case CursorPaging():
            return CursorPager(config, guard)
        case LinkHeaderPaging():
            return LinkHeaderPager(config, guard, origin)
        case KeysetPaging():
            return KeysetPager(config, guard)
        case NoPaging():
            return SinglePager(guard)
    raise AssertionError(f"no pager for {config!r}")
