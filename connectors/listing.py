"""The listing engine: one resumable, incremental listing loop for every stream that declares a `Listing`.

A connector hands the engine a declared stream, the stored checkpoint and its
HTTP client; the engine pages through the listing with the stream's paginator
(freshd.connectors.paginators), emits each page with the checkpoint to commit
with it, and owns the rules every provider shares:

* **The checkpoint** (schema 1): ``{"cursor": <high-water mark>, ...}`` between
  listings; while one is under way, also ``"listing": {"v": 1, "since", "pager",
  "max", "total", "started", "full", "shifted", "fingerprint", ["until"]}``, so
  an interrupted listing with the same filter and definition resumes at the next
  request (and starts over if the provider refuses the saved position).  Keys the
  connector keeps of its own (``full_at``, ...) are carried along untouched.
  Checkpoints written before the engine are read by each connector's
  ``upgrade_checkpoint``.
* **The cursor** (`Incremental`): the highest value seen, sent back minus the
  lookback; it moves when a listing completes, or page by page when the records
  come sorted by it.  `until_start` caps it at the listing's start (offset
  paging over a live list); `window` closes the listing at the server's clock
  and moves the cursor to that bound; `at_start` moves it to the listing's start.
* **Shifts**: a total that changes mid-listing, an id that comes back on a later
  page, or an overlap row that is not the previous page's last.  A shifted
  listing keeps the old cursor (the span is read again) and infers nothing.
  Keyset paging cannot shift (its position is a value), so neither sign counts there.
* **When a listing may infer deletions**: it is a full one (nothing filtered
  out), read whole in this run (not resumed), not shifted, and it returned
  records.  The store still checks the rows seen against the provider's total.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from freshd.connectors.base import Page, StreamSpec, SyncContext, SyncMode
from freshd.connectors.cursors import cursor_value, earlier, format_cursor, later, moment, stamp
from freshd.connectors.http import ProviderClient
from freshd.connectors.pagination import LoopGuard, fetch_in_order
from freshd.connectors.paginators import Ask, OffsetPaging, PageNumberPager, PageRead, PaginatorConfig, start_pager
from freshd.connectors.schema import dig
from freshd.connectors.streams import Listing
from freshd.errors import PermanentError

log = structlog.get_logger(__name__)

SCHEMA = 1  # the version of the "listing" part of a checkpoint
STALE_RESUME = (400, 404, 410, 422)  # a saved position refused on a resumed listing's first request


# --- the listing -------------------------------------------------------------------------------------


def fingerprint(stream: StreamSpec, listing: Listing) -> str:
    """What makes a listing the same listing (a saved position means nothing for another one)."""
    shape = repr((stream.path, sorted(stream.params.items()), listing.paginator, listing.records_path,
                  listing.incremental and (listing.incremental.param, listing.incremental.format,
                                           listing.incremental.lookback)))
    return hashlib.blake2b(shape.encode(), digest_size=8).hexdigest()


def read_records(body: Any, stream: StreamSpec, records_path: str | None) -> list[Any]:
    """The page's records at `records_path` (the body itself if none).

    A path that is not in the body is an error, not an empty page: a misconfigured path must not
    look like an empty collection (a complete empty listing would mark everything deleted).
    """
    found = body
    if records_path is not None:
        try:
            found = dig(body, records_path)
        except KeyError:
            raise PermanentError(f"{stream.name}: records_path {records_path!r} is not in the response") from None
    if found is None:
        return []
    if not isinstance(found, list):
        where = f"records_path {records_path!r}" if records_path else "the response body"
        raise PermanentError(f"{stream.name}: expected a list at {where}, got {type(found).__name__}")
    return found


@dataclass(frozen=True, slots=True)
class Fetched:
    """One page as the provider sent it: every listed item (what paging counts), the `records` to
    store among them (None: all of them; the engine records the others it gets as failed items)
    and why the connector set the rest aside, (external id or None, reason)."""

    body: Any
    response: httpx.Response
    items: Sequence[Any]
    records: Sequence[Any] | None = None
    failures: Sequence[tuple[str | None, str]] = ()


# how a connector reads a page (the default: GET the stream's path, records at its records_path)
Fetch = Callable[[Ask, dict[str, str]], Awaitable[Fetched]]


def soft_deleted(listing: Listing | None, primary_key: str, records: Sequence[Any]) -> tuple[list[Any], list[str]]:
    """The records to store, and the ids the stream's soft-delete rule marks deleted (records the
    rule does not keep are left out of the first)."""
    rule = listing.soft_delete if listing is not None else None
    if rule is None:
        return list(records), []
    stored, deleted = [], []
    for record in records:
        if isinstance(record, dict) and record.get(primary_key) is not None:
            value = cursor_value(record, rule.field)
            if value in rule.values if rule.values else value not in (None, False, ""):
                deleted.append(str(record[primary_key]))
                if not rule.keep:
                    continue
        stored.append(record)
    return stored, deleted


class _StaleResume(Exception):
    """The first request of a resumed listing was refused: start the listing over."""


async def run_listing(
    stream: StreamSpec,
    state: Mapping[str, Any] | None,
    mode: SyncMode,
    ctx: SyncContext,
    client: ProviderClient,
    *,
    fetch: Fetch | None = None,
    full: bool | None = None,
    limit: str | None = None,
    origin: httpx.URL | None = None,
    concurrency: int | None = None,
) -> None:
    """List `stream` (which declares a `Listing`) from checkpoint `state`, emitting every page.

    `full`: the connector's decision that this listing reads everything (a full run is due); by
    default a full sync, a first sync, and a stream the API cannot filter are full listings.
    `limit`: the rate-limit bucket of its requests; `concurrency` overrides the declared one.
    """
    listing = stream.listing
    if listing is None:
        raise TypeError(f"stream {stream.name} declares no listing")
    state = dict(state or {})
    incremental = listing.incremental
    cursor = state.get("cursor")
    filtered = incremental is not None and incremental.param is not None and cursor is not None
    if full is None:
        full = mode is SyncMode.FULL or not filtered
    since = format_cursor(cursor, incremental.format, incremental.lookback) \
        if incremental is not None and not full and filtered else None
    saved = state.get("listing")
    resume = saved if isinstance(saved, dict) and isinstance(saved.get("pager"), dict) \
        and saved.get("since") == since and saved.get("full", since is None) == full \
        and saved.get("fingerprint") == fingerprint(stream, listing) else None

    def start() -> _Run:
        return _Run(stream, listing, state, ctx, client, fetch=fetch, full=full, since=since, limit=limit,
                    origin=origin, concurrency=concurrency or listing.concurrency)

    try:
        await start().go(resume)
    except _StaleResume as exc:
        # the server refused the saved position (an expired cursor token): nothing was emitted
        log.info("listing.resume_refused", stream=stream.name, error=str(exc.__cause__))
        await start().go(None)


class _Run:
    """One listing under way: its pager, what it has seen, and the checkpoint each page commits."""

    def __init__(self, stream: StreamSpec, listing: Listing, state: dict[str, Any], ctx: SyncContext,
                 client: ProviderClient, *, fetch: Fetch | None, full: bool, since: str | None,
                 limit: str | None, origin: httpx.URL | None, concurrency: int) -> None:
        self.stream, self.listing, self.ctx, self.client = stream, listing, ctx, client
        self.fetch = fetch or self._get
        self.full, self.since, self.limit, self.concurrency = full, since, limit, concurrency
        self.incremental = listing.incremental
        self.cursor = state.get("cursor")
        self.keep = {k: v for k, v in state.items() if k not in ("cursor", "listing", "floor")}
        self.floor = state.get("floor")  # a `sync --since` listing ends no lower than the cursor before it
        self.params = dict(stream.params)
        if since is not None and self.incremental is not None and self.incremental.param is not None:
            self.params[self.incremental.param] = since
        self.origin = origin or client.origin
        self.pager = start_pager(listing.paginator, LoopGuard(f"{stream.name} ({stream.path})"), origin=self.origin)
        self.high: Any = None
        self.total: int | None = None
        self.started: datetime | None = None
        self.until: str | None = None
        self.shifted = False
        self.resumed = False
        self.any_records = False
        self.seen: set[str] = set()

    async def _get(self, ask: Ask, params: dict[str, str]) -> Fetched:
        if ask.url is None:
            body, response = await self.client.get_json(self.stream.path, params={**params, **ask.params},
                                                        limit=self.limit)
        else:  # a followed link carries its own query
            body, response = await self.client.get_json(ask.url, limit=self.limit)
        return Fetched(body, response, read_records(body, self.stream, self.listing.records_path))

    def _restore(self, saved: Mapping[str, Any]) -> bool:
        try:
            self.pager.restore(saved["pager"])
            started = saved.get("started")
            self.started = datetime.fromisoformat(started) if isinstance(started, str) else None
        except (KeyError, TypeError, ValueError):
            self.pager = start_pager(self.listing.paginator, self.pager.guard, origin=self.origin)
            return False  # an unreadable position: start over
        self.high, self.total = saved.get("max"), saved.get("total")
        self.shifted = bool(saved.get("shifted"))
        self.pager.shifted = self.shifted
        until = saved.get("until")
        self.until = until if isinstance(until, str) else None
        return True

    async def go(self, resume: Mapping[str, Any] | None) -> None:
        self.resumed = resume is not None and self._restore(resume)
        first = True
        while not self.pager.done:
            fetched = await self._request(self.pager.ask(), first=first)
            first = False
            await self._page(fetched)
            ahead = self.pager.pages_left(self._read(fetched)) \
                if isinstance(self.pager, PageNumberPager) and self.concurrency > 1 else None
            if ahead:
                await self._fetch_ahead(ahead)

    def _window_params(self) -> dict[str, str]:
        window = self.incremental.window if self.incremental is not None else None
        return {window: self.until} if window is not None and self.until is not None else {}

    async def _request(self, ask: Ask, *, first: bool) -> Fetched:
        try:
            fetched = await self.fetch(ask, {**self.params, **self._window_params()})
        except PermanentError as exc:
            if self.resumed and first and exc.status in STALE_RESUME:
                raise _StaleResume from exc
            raise
        if self.started is None:
            self.started = self.client.server_time(fetched.response)
        if self.incremental is not None and self.incremental.window is not None and self.until is None:
            # closed at the server's clock (strict bound, whole seconds): nothing enters the listing
            # while it is paged, and client clock skew cannot lose records
            self.until = stamp(self.started + timedelta(seconds=1), self.incremental, self.cursor)
        return fetched

    async def _fetch_ahead(self, numbers: range) -> None:
        """Page-number paging with a known page count: fetch pages ahead, hand them on in order."""
        assert isinstance(self.pager, PageNumberPager)
        pager = self.pager

        async def fetch(number: int) -> Fetched:
            return await self._request(pager.ask_at(number), first=False)

        async def consume(number: int, fetched: Fetched) -> None:
            await self._page(fetched)

        await fetch_in_order(fetch, numbers, consume, concurrency=self.concurrency)

    def _read(self, fetched: Fetched) -> PageRead:
        pk = self.stream.primary_key
        ids = [str(r[pk]) for r in fetched.items if isinstance(r, dict) and r.get(pk) is not None]
        return PageRead(fetched.items, ids, fetched.body, fetched.response.headers, fetched.response.request.url)

    async def _page(self, fetched: Fetched) -> None:
        read = self._read(fetched)
        was_shifted = self.shifted
        self.pager.advance(read)
        repeated = self.pager.repeated  # the overlap row asked for: the previous page's last
        records = list(fetched.items[repeated:] if fetched.records is None else fetched.records[repeated:])
        ids = read.ids[repeated:]
        if self.pager.total is not None:
            if self.total is None:
                self.total = self.pager.total
                self.ctx.set_total(self.stream.name, self.total)
            elif self.pager.total != self.total and self.pager.can_shift:
                self.shifted = True  # records came or went mid-listing: page boundaries moved
        if self.pager.shifted or (self.pager.can_shift and not self.seen.isdisjoint(ids)):
            self.shifted = True  # an id came back on a later page, or the overlap row moved: pages moved
        if self.shifted and not was_shifted:
            log.warning("listing.shifted", stream=self.stream.name, path=self.stream.path,
                        page=self.pager.position(), total=self.total)
        self.seen.update(ids)
        if self.total is None and self.pager.done and not self.resumed and len(self.seen) == len(ids):
            self.ctx.set_total(self.stream.name, len(records))  # the whole listing fit in one page: exact
        self.any_records = self.any_records or bool(records)
        if self.incremental is not None:
            for record in records:
                self.high = later(self.high, cursor_value(record, self.incremental.field))
        stored, deleted = soft_deleted(self.listing, self.stream.primary_key, records)
        complete = self.full and self.pager.done and not self.resumed and not self.shifted and self.any_records
        await self.ctx.emit(Page(self.stream.name, stored, self._checkpoint(), deleted=deleted, total=self.total,
                                 failures=fetched.failures, full_listing=self.full, listing_complete=complete))

    def _checkpoint(self) -> dict[str, Any]:
        if self.pager.done:
            done = {**self.keep, "cursor": later(self._next_cursor(), self.floor)}
            if self.listing.track_full and self.full and not self.resumed and not self.shifted:
                done["full_at"] = stamp(self.started or datetime.now(UTC), None, None)
            return done
        # sorted by the cursor, everything below the highest value seen is stored already
        ascending = self.incremental is not None and self.incremental.ascending
        moving = later(self.cursor, self.high) if ascending and not self.shifted else self.cursor
        position: dict[str, Any] = {
            "v": SCHEMA, "since": self.since, "fingerprint": fingerprint(self.stream, self.listing),
            "pager": self.pager.position(), "max": self.high, "total": self.total, "full": self.full,
            "shifted": self.shifted, "started": (self.started or datetime.now(UTC)).isoformat()}
        if self.until is not None:
            position["until"] = self.until
        floor = {"floor": self.floor} if self.floor is not None else {}
        return {**self.keep, "cursor": moving, **floor, "listing": position}

    def _next_cursor(self) -> Any:
        """Where the next listing starts: a shifted listing may have skipped records, so it keeps
        the old cursor and the span is read again."""
        if self.shifted or self.incremental is None:
            return self.cursor
        started = self.started or datetime.now(UTC)
        if self.incremental.at_start:
            return stamp(started, self.incremental, self.cursor)
        if self.incremental.window is not None and self.until is not None:
            # the bound was the server's clock + 1 s, strict; a record changed in that same second,
            # after its page was read, may be unseen: start a second before the clock (also strict)
            end = moment(self.until)
            return self.cursor if end is None else stamp(end - timedelta(seconds=2), self.incremental, self.until)
        newest = later(self.cursor, self.high)
        if self.incremental.until_start:
            newest = earlier(newest, stamp(started, self.incremental, newest)) if newest is not None \
                else stamp(started, self.incremental, None)
        return newest


def tune(stream: StreamSpec, *, page_size: int | None = None, lookback: float | None = None,
         paginator: PaginatorConfig | None = None) -> StreamSpec:
    """The declared stream with a connection's options applied: its page size and cursor lookback,
    and the `paginator` it chose (Orion's paging = "plain")."""
    listing = stream.listing
    if listing is None:
        return stream
    paginator = paginator or listing.paginator
    if page_size is not None:
        size_field = "limit" if isinstance(paginator, OffsetPaging) else "size"
        if hasattr(paginator, size_field):
            paginator = replace(paginator, **{size_field: page_size})  # type: ignore[arg-type]
    incremental = listing.incremental
    if lookback is not None and incremental is not None:
        incremental = replace(incremental, lookback=lookback)
    return replace(stream, listing=replace(listing, paginator=paginator, incremental=incremental))


def since_checkpoint(stream: StreamSpec, state: Mapping[str, Any] | None, since: datetime) -> dict[str, Any]:
    """`sync --since`: the checkpoint from which an incremental listing of `stream` filters from `since`.

    The stored cursor is kept as the floor of the cursor that listing ends with, so it never moves
    back; only the listing's start changes.
    """
    listing = stream.listing
    incremental = listing.incremental if listing is not None else None
    state = dict(state or {})
    if incremental is None or incremental.param is None:
        raise PermanentError(f"stream {stream.name} has no server-side filter to start from a date")
    cursor = stamp(since + timedelta(seconds=incremental.lookback), incremental, state.get("cursor"))
    floor = later(state.get("cursor"), state.get("floor"))
    keep = {k: v for k, v in state.items() if k not in ("cursor", "listing", "floor")}
    return {**keep, "cursor": cursor, **({"floor": floor} if floor is not None else {})}


async def fetch_by_id(stream: StreamSpec, ids: Sequence[str], ctx: SyncContext, client: ProviderClient, *,
                      item_path: str | None = None, limit: str | None = None, batch: int = 100) -> None:
    """`freshctl retry`: GET each record by id (`item_path`, default "<path>/{id}"), `batch` to a page.

    An id the provider answers 404 or 410 for is gone: a tombstone.  A record the stream's
    soft-delete rule matches is marked deleted (and not stored when the rule says so).
    """
    template = item_path or f"{stream.path}/{{id}}"
    for start in range(0, len(ids), batch):
        chunk = list(ids[start:start + batch])
        found: list[Any] = []
        gone: set[str] = set()
        for external_id in chunk:
            try:
                body, _ = await client.get_json(template.replace("{id}", quote(external_id, safe="")), limit=limit)
            except PermanentError as exc:
                if exc.status not in (404, 410):
                    raise
                gone.add(external_id)
                continue
            found.append(body)
        found, marked = soft_deleted(stream.listing, stream.primary_key, found)
        soft = set(marked)
        deleted = [i for i in chunk if i in gone or i in soft] + sorted(soft - set(chunk))  # in the order asked
        await ctx.emit(Page(stream.name, found, None, deleted=deleted))
