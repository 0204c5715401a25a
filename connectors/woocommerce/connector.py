"""WooCommerce REST API v3 (`/wp-json/wc/v3`): customers, orders, products.

Sections, in the order every provider module keeps them: auth, error
classification, streams, sync.

* **Auth**: over HTTPS, HTTP Basic with the consumer key/secret; over plain
  HTTP the real API requires OAuth 1.0a one-legged signing, which we do
  (HMAC-SHA256, parameters in the query string).  Option ``auth`` forces
  ``basic``, ``query`` or ``oauth1``.
* **Pagination**: ``page``/``per_page=100``, driven by ``X-WP-TotalPages``;
  pages after the first are fetched concurrently (option ``page_concurrency``,
  default 4) and committed in order.  The paging headers are checked on every page.
* **Orders, products** (declared listings, run by the listing engine):
  incremental by ``modified_after`` with ``dates_are_gmt=true``,
  ``orderby=modified&order=asc``, inside a closed window
  ``modified_before=<server Date of the first response>`` so nothing can enter
  the listing while we page through it.  If ``X-WP-Total`` changes mid-listing
  (a record left the window, shifting later pages), the window is not
  advanced: the next sync re-reads it, and unchanged records cost nothing.
  Trashed records (``status == "trash"``) are stored and marked deleted.
* **Customers** have no server-side modified filter.  An incremental sync
  fetches only customers newer than the highest stored id (``orderby=id&order=desc``
  down to a known id: usually one request).  At most every ``diff_interval``
  (option, default 6 h) it instead lists ``_fields=id,date_modified_gmt``
  (WordPress' global field filter) for the whole collection, diffs that
  against what is stored, fetches just the changed ids with ``include=``, and
  marks ids missing from a complete listing as deleted.  So new customers are
  as fresh as orders; edits and deletions of existing ones show within diff_interval.
* **Writes** (two-way sync): `WooCommerceWrites` in writes.py, the Writer protocol.
* **Full sync** lists everything and, when the listing completed without
  shifting, marks records it did not see as deleted (force-deleted records
  leave no tombstone in WooCommerce).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
import urllib.parse
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx

from freshd.connectors.base import ConnectionSettings, Connector, Page, SyncContext, SyncMode, missing_credentials
from freshd.connectors.cursors import due, format_cursor
from freshd.connectors.errors import ErrorTable, classify_with
from freshd.connectors.listing import SCHEMA, Fetched, fingerprint, run_listing, since_checkpoint
from freshd.connectors.pagination import LoopGuard, fetch_in_order
from freshd.connectors.paginators import Ask, PageNumberPaging
from freshd.connectors.schema import rules
from freshd.connectors.streams import Incremental, Listing, SoftDelete, StreamSpec, columns
from freshd.connectors.woocommerce.writes import (
    EMAIL_TAKEN,
    KEY_TAKEN_WITH_HOLDER,
    WooCommerceWrites,
    not_an_id,
    record_id,
)
from freshd.errors import (
    ConfigError,
    PermanentError,
    TransientError,
)
from freshd.policies.gate import ConnectionPolicies

API_PREFIX = "/wp-json/wc/v3"
PER_PAGE = 100  # the API's maximum
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"  # dates sent and kept as the API writes them (GMT with dates_are_gmt)
DIFF_INTERVAL = 6 * 3600.0  # seconds between two full customer diffs (option `diff_interval`)


# --- auth --------------------------------------------------------------------------------------


def _pct(value: str) -> str:
    return urllib.parse.quote(value, safe="~-._")


class OAuth1(httpx.Auth):
    """OAuth 1.0a one-legged signing (RFC 5849 §3.4), as WooCommerce accepts over plain HTTP."""

    def __init__(self, consumer_key: str, consumer_secret: str) -> None:
        self._key = consumer_key
        self._secret = consumer_secret

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        oauth = {
            "oauth_consumer_key": self._key,
            "oauth_nonce": secrets.token_hex(16),
            "oauth_signature_method": "HMAC-SHA256",
            "oauth_timestamp": str(int(time.time())),
        }
        query = urllib.parse.parse_qsl(request.url.query.decode(), keep_blank_values=True)
        params = sorted((_pct(k), _pct(v)) for k, v in [*query, *oauth.items()])
        normalized = "&".join(f"{k}={v}" for k, v in params)
        base_uri = str(request.url.copy_with(query=None, fragment=None))
        base = "&".join([request.method.upper(), _pct(base_uri), _pct(normalized)])
        digest = hmac.new(f"{_pct(self._secret)}&".encode(), base.encode(), hashlib.sha256).digest()
        oauth["oauth_signature"] = base64.b64encode(digest).decode()
        request.url = request.url.copy_merge_params(oauth)
        yield request


class QueryKeys(httpx.Auth):
    """consumer_key/consumer_secret in the query string (HTTPS hosts that strip Authorization)."""

    def __init__(self, consumer_key: str, consumer_secret: str) -> None:
        self._params = {"consumer_key": consumer_key, "consumer_secret": consumer_secret}

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.url = request.url.copy_merge_params(self._params)
        yield request


# the `auth` option's kinds: how the consumer key/secret are sent
AUTH: Mapping[str, Callable[[str, str], httpx.Auth]] = {"basic": httpx.BasicAuth, "query": QueryKeys, "oauth1": OAuth1}


def build_auth(settings: ConnectionSettings, kind: str | None) -> httpx.Auth:
    """How requests authenticate: the `auth` option's kind, by default Basic over HTTPS, else OAuth 1.0a."""
    creds = settings.credentials
    missing = missing_credentials(WooCommerceConnector, creds)  # the names it declares, in that order
    if missing:
        raise ConfigError(f"missing credential(s): {', '.join(missing)}", where=f"connection {settings.name}")
    kind = kind or ("basic" if settings.base_url.startswith("https://") else "oauth1")
    return AUTH[kind](creds["consumer_key"], creds["consumer_secret"])


@dataclass(frozen=True, slots=True)
class WooCommerceOptions:
    """A connection's own options (the framework's, FRAMEWORK_OPTIONS, are allowed beside them)."""

    auth: str | None = None  # a kind of AUTH (None: basic over HTTPS, oauth1 over plain HTTP)
    # seconds between two full customer diffs; incremental syncs in between fetch only new customers
    diff_interval: float = DIFF_INTERVAL

    def __post_init__(self) -> None:
        rules(("auth", self.auth is None or self.auth in AUTH,
               f"option auth must be one of {', '.join(AUTH)}, got {self.auth!r}"),
              ("diff_interval", self.diff_interval >= 0,
               f"option diff_interval must be a number of seconds >= 0, got {self.diff_interval:g}"))


# --- error classification --------------------------------------------------------------------

ERRORS = ErrorTable(
    "WooCommerce", code=("code",), message=("message",),
    retry_after_headers=("retry-after", "ratelimit-retry-after"),
    transient_statuses=frozenset({408}),
    transient_messages=("nonce",),  # OAuth "nonce already used": a fresh nonce fixes it
    # codes that say "these credentials will not work" (API keys never expire)
    reauth=frozenset({"woocommerce_rest_authentication_error", "woocommerce_rest_cannot_view",
                      "woocommerce_rest_cannot_read"}),
    reauth_statuses=frozenset({401}),
    # a refused batch item (writes.py): the email or SKU taken (API_FACTS_WRITES §A.3), an unknown id
    duplicate=EMAIL_TAKEN | KEY_TAKEN_WITH_HOLDER,
    rejected=frozenset({"wc_user_invalid_id", "woocommerce_rest_*invalid_id"}), rejected_statuses=frozenset({400}),
)
classify = classify_with(ERRORS)


# --- streams -----------------------------------------------------------------------------------

_DATES = ("created_at=date_created_gmt:timestamptz", "updated_at=date_modified_gmt:timestamptz")
CUSTOMERS = StreamSpec("customers", "customers", cursor_field="date_modified_gmt", columns=columns(
    "id:integer", "email", "first_name", "last_name", "username", "role", "is_paying_customer:boolean",
    "billing_company=billing.company", "billing_city=billing.city", "billing_postcode=billing.postcode",
    "billing_country=billing.country", "billing_phone=billing.phone", *_DATES))
# orders and products: by modified time ascending, in a window closed at the server's clock
# (modified_before, strict); modified_after is strict too and dates have 1 s resolution, so the next
# window starts 2 s before this one's end (the engine's window rule); trashed records are tombstones
_BY_MODIFIED = Listing(
    PageNumberPaging(size=PER_PAGE, total_pages_header="X-WP-TotalPages", total_header="X-WP-Total"),
    incremental=Incremental("date_modified_gmt", "modified_after", TIME_FORMAT, window="modified_before"),
    soft_delete=SoftDelete("status", ("trash",)), concurrency=4)
_MODIFIED_ASC = {"orderby": "modified", "order": "asc", "dates_are_gmt": "true"}
ORDERS = StreamSpec("orders", "orders", cursor_field="date_modified_gmt", cursor_param="modified_after",
                    params=_MODIFIED_ASC, listing=_BY_MODIFIED, columns=columns(
    "id:integer", "number", "status", "currency", "total:numeric", "total_tax:numeric",
    "shipping_total:numeric", "discount_total:numeric", "customer_id:integer", "billing_email=billing.email",
    "billing_country=billing.country", "payment_method", "line_items:jsonb", *_DATES))
PRODUCTS = StreamSpec("products", "products", cursor_field="date_modified_gmt", cursor_param="modified_after",
                      params=_MODIFIED_ASC, listing=_BY_MODIFIED, columns=columns(
    "id:integer", "name", "sku", "type", "status", "price:numeric", "regular_price:numeric",
    "stock_quantity:integer", "stock_status", "manage_stock:boolean", *_DATES))


@dataclass(frozen=True, slots=True)
class _Listing:
    """One listed page, its paging headers checked (every listing rests on them)."""

    body: list[Any]
    response: httpx.Response
    records: list[dict[str, Any]]
    failures: tuple[tuple[str | None, str], ...]  # items that are no WooCommerce record
    total: int
    total_pages: int


def _split_items(items: list[Any]) -> tuple[list[dict[str, Any]], tuple[tuple[str | None, str], ...]]:
    """Records with a WooCommerce id (a positive integer), and why the other items are not records:
    one bad item is a failed item, never a crash nor a reason to doubt the rest of the page."""
    records: list[dict[str, Any]] = []
    failures: list[tuple[str | None, str]] = []
    for item in items:
        if not isinstance(item, dict):
            failures.append((None, f"item is a JSON {type(item).__name__}, not an object"))
        elif record_id(item) is not None:
            records.append(item)
        elif item.get("id") is None:
            failures.append((None, "record has no 'id'"))
        else:
            failures.append((str(item["id"])[:100], f"id {not_an_id(str(item['id']))}"))
    return records, tuple(failures)


def _paging_headers(response: httpx.Response, per_page: int) -> tuple[int, int]:
    """X-WP-Total and X-WP-TotalPages, checked: paging (and any deletion inferred from it) rests on them.

    Missing headers (a proxy that strips them) would make every listing look like one page; a
    page count that cannot come from the total (0 or negative pages for records, millions of
    pages for a few records) is refused before anything is paged.  A page count lower than the
    total implies is let through: the engine then sees the listing fall short of the total.
    """
    raw_total, raw_pages = response.headers.get("x-wp-total"), response.headers.get("x-wp-totalpages")
    if raw_total is None or raw_pages is None:
        raise PermanentError("WooCommerce sent no X-WP-Total/X-WP-TotalPages headers, so its listings cannot be "
                             "paged reliably (does a proxy strip them?)")
    try:
        total, pages = int(raw_total), int(raw_pages)
    except ValueError:
        raise TransientError(f"WooCommerce: unreadable paging headers X-WP-Total {raw_total[:20]!r}, "
                             f"X-WP-TotalPages {raw_pages[:20]!r}") from None
    implied = -(-total // per_page) if total > 0 else 0
    if total < 0 or pages < 0 or (total > 0 and pages == 0) or pages > implied + 1:
        raise TransientError(f"WooCommerce paging headers disagree: X-WP-Total {total} at {per_page} per page "
                             f"is {implied} page(s), X-WP-TotalPages says {pages}")
    return total, pages


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat()


def _stored_max_id(state: dict[str, Any]) -> int:
    """The highest customer id stored (0: unknown); a checkpoint another version wrote oddly is 0."""
    try:
        return max(0, int(state.get("max_id", 0)))
    except (TypeError, ValueError):
        return 0


# --- sync --------------------------------------------------------------------------------------


class WooCommerceConnector(WooCommerceWrites, Connector):
    error_table = ERRORS
    provider = "woocommerce"
    options_type = WooCommerceOptions
    options: WooCommerceOptions
    required_credentials = ("consumer_key", "consumer_secret")
    streams = (CUSTOMERS, ORDERS, PRODUCTS)
    since_streams = frozenset({ORDERS.name, PRODUCTS.name})  # customers have no modified filter

    @classmethod
    def since_problem(cls, stream: StreamSpec) -> str | None:
        if stream.cursor_param is None:
            return (f"woocommerce cannot re-read {stream.name} from a date: the API has no modified filter "
                    f"for them (a full sync, --full, lists them whole)")
        return super().since_problem(stream)

    def since_state(self, stream: StreamSpec, state: dict[str, Any] | None, since: datetime) -> dict[str, Any]:
        """A window from `since` (modified_after) to the server's clock, the stored cursor kept as its floor."""
        if self.since_problem(stream):
            return super().since_state(stream, state, since)
        return since_checkpoint(stream, upgrade_checkpoint(stream, state), since)

    def __init__(
        self, settings: ConnectionSettings, *, policies: ConnectionPolicies | None = None,
    ) -> None:
        super().__init__(settings, policies=policies)
        base = settings.base_url.rstrip("/")
        if not base.endswith(API_PREFIX):
            base += API_PREFIX
        # page_concurrency is a framework option (FRAMEWORK_OPTIONS), checked by check_settings
        self.concurrency = int(settings.options.get("page_concurrency", _BY_MODIFIED.concurrency))
        self.client = self.http_client(base + "/", classify=classify, auth=build_auth(settings, self.options.auth),
                                       max_connections=max(self.concurrency, 1) + 1)

    async def probe(self) -> None:
        await self.client.get_json("customers", params={"per_page": 1, "_fields": "id"})

    async def _list(self, stream: StreamSpec, params: Mapping[str, str | int]) -> _Listing:
        body, response = await self.client.get_json(stream.path, params={"per_page": PER_PAGE, **params})
        if not isinstance(body, list):
            raise TransientError(f"WooCommerce {stream.path}: expected a JSON list, got {type(body).__name__}")
        total, total_pages = _paging_headers(response, PER_PAGE)
        return _Listing(body, response, *_split_items(body), total, total_pages)

    async def _by_ids(self, stream: StreamSpec, ids: Sequence[str]) -> _Listing:
        """These records (at most PER_PAGE ids), in the order asked: `include=`."""
        return await self._list(stream, {"include": ",".join(ids), "orderby": "include", "page": 1})

    async def _fetch(self, stream: StreamSpec, ask: Ask, params: dict[str, str]) -> Fetched:
        """The engine's request for an orders/products page: checked as every listed page is."""
        page = await self._list(stream, {**params, **ask.params})
        return Fetched(page.body, page.response, page.body, page.records, page.failures)

    async def sync_entity(
        self, stream: StreamSpec, state: dict[str, Any] | None, mode: SyncMode, ctx: SyncContext
    ) -> None:
        if stream.listing is not None:
            await run_listing(stream, upgrade_checkpoint(stream, state), mode, ctx, self.client,
                              fetch=partial(self._fetch, stream), concurrency=self.concurrency)
        elif mode is SyncMode.FULL or not state or state.get("phase") == "full":
            await self._full_by_id(stream, state, ctx)
        elif self._diff_due(state):
            await self._diff_by_id(stream, state, ctx)
        else:
            await self._new_ids(stream, state, ctx)

    async def _paged(
        self,
        stream: StreamSpec,
        params: dict[str, str | int],
        first: _Listing,
        start_page: int,
        on_page: Any,
    ) -> bool:
        """Hand pages start_page..N to on_page in order; return False if the listing shifted."""
        shifted = False
        guard = LoopGuard(f"WooCommerce {stream.path}")

        async def fetch(number: int) -> _Listing:
            return first if number == 1 else await self._list(stream, {**params, "page": number})

        async def consume(number: int, listing: _Listing) -> None:
            nonlocal shifted
            guard.page([r.get("id") for r in listing.records])
            if listing.total != first.total:
                shifted = True
            await on_page(number, listing, shifted)

        await fetch_in_order(fetch, range(start_page, first.total_pages + 1), consume,
                             concurrency=self.concurrency)
        return not shifted

    async def _full_by_id(self, stream: StreamSpec, state: dict[str, Any] | None, ctx: SyncContext) -> None:
        """Everything, ordered by id; resumable by page; reconciles deletions if it completes cleanly."""
        params: dict[str, str | int] = {"orderby": "id", "order": "asc"}
        resume = state if state and state.get("phase") == "full" else None
        start_page = int(resume["page"]) + 1 if resume else 1
        first = await self._list(stream, {**params, "page": 1})
        ctx.set_total(stream.name, first.total)
        started = resume["started"] if resume else _iso(self.client.server_time(first.response))
        if first.total_pages < start_page or first.total == 0:
            await ctx.emit(Page(stream.name, [], {"phase": "done", "full_at": started}, total=first.total))
            return

        max_id = int(resume.get("max_id", 0)) if resume else 0

        async def on_page(number: int, listing: _Listing, shifted: bool) -> None:
            nonlocal max_id
            max_id = max([max_id, *(r["id"] for r in listing.records)])
            last = number == first.total_pages
            checkpoint = (
                {"phase": "done", "full_at": started, "diffed_at": started, "max_id": max_id} if last
                else {"phase": "full", "page": number, "started": started, "max_id": max_id}
            )
            # reconciliation needs the whole listing in this run: a resumed one is partial
            await ctx.emit(Page(stream.name, listing.records, checkpoint, total=first.total, failures=listing.failures,
                                full_listing=True, listing_complete=last and not shifted and not resume))

        await self._paged(stream, params, first, start_page, on_page)

    async def _diff_by_id(self, stream: StreamSpec, state: dict[str, Any], ctx: SyncContext) -> None:
        """Light listing of (id, modified) for the whole collection, then fetch only what changed."""
        cursor_field = stream.cursor_field or "date_modified_gmt"
        params: dict[str, str | int] = {"orderby": "id", "order": "asc", "_fields": f"id,{cursor_field}"}
        first = await self._list(stream, {**params, "page": 1})
        seen: dict[str, str] = {}
        unusable: list[tuple[str | None, str]] = []  # items listed that are no record (still in the total)

        async def on_page(number: int, listing: _Listing, shifted: bool) -> None:
            unusable.extend(listing.failures)
            for item in listing.records:
                seen[str(item["id"])] = str(item.get(cursor_field))

        complete = await self._paged(stream, params, first, 1, on_page)
        known = await ctx.known_versions(stream.name, cursor_field)
        changed = [eid for eid, version in seen.items() if known.get(eid) != version]
        # a listing that shifted under us may have skipped live ids: never infer deletions from it;
        # the engine checks the others against the listing's total
        gone = sorted(set(known) - set(seen)) if complete else []
        ctx.set_total(stream.name, len(changed))
        checkpoint = {"phase": "done", "diffed_at": _iso(self.client.server_time(first.response)),
                      "max_id": max((int(i) for i in seen), default=_stored_max_id(state))}
        chunks = [changed[i:i + PER_PAGE] for i in range(0, len(changed), PER_PAGE)]

        async def fetch(index: int) -> _Listing:
            return await self._by_ids(stream, chunks[index])

        async def consume(index: int, listing: _Listing) -> None:
            last = index == len(chunks) - 1
            await ctx.emit(Page(stream.name, listing.records, checkpoint if last else None,
                                failures=(*listing.failures, *unusable) if last else listing.failures,
                                **(inferred if last else {})))

        inferred: dict[str, Any] = {"inferred_deleted": gone, "listing_seen": len(seen) + len(unusable),
                                    "listing_total": first.total}
        if chunks:
            await fetch_in_order(fetch, range(len(chunks)), consume, concurrency=self.concurrency)
        else:
            await ctx.emit(Page(stream.name, [], checkpoint, failures=unusable, **inferred))

    def catch_up_state(self, stream: StreamSpec, state: dict[str, Any]) -> dict[str, Any]:
        """Customers have no modified filter: changes to existing ones show only in the diff, so
        catching up means diffing now."""
        if stream.cursor_param is None and state.get("phase") != "full":
            return {**state, "diff_now": True}  # the diff's checkpoint drops it
        return state

    def _diff_due(self, state: dict[str, Any]) -> bool:
        if state.get("diff_now"):
            return True
        last = state.get("diffed_at") or state.get("full_at")
        return _stored_max_id(state) == 0 or due(last, self.options.diff_interval)

    async def _new_ids(self, stream: StreamSpec, state: dict[str, Any], ctx: SyncContext) -> None:
        """Between two diffs: only customers created since, newest first, down to a known id."""
        max_id = _stored_max_id(state)
        newest = max_id
        page = 1
        while True:
            listing = await self._list(stream, {"orderby": "id", "order": "desc", "page": page})
            fresh = [r for r in listing.records if r["id"] > max_id]
            newest = max([newest, *(r["id"] for r in fresh)])
            done = len(fresh) < len(listing.records) or page >= listing.total_pages
            if page == 1:  # exact when the first page holds them all, else at least a page more
                ctx.set_total(stream.name, len(fresh) if done else len(fresh) + 1, estimated=not done)
            # the watermark moves only once every new id is stored (the listing runs downwards)
            checkpoint = {**state, "max_id": newest} if done else None
            await ctx.emit(Page(stream.name, fresh, checkpoint))  # bad items: reported by full listings and diffs
            if done:
                return
            page += 1

    async def fetch_items(self, stream: StreamSpec, ids: Sequence[str], ctx: SyncContext) -> None:
        """By id, 100 at a time (`include=`); ids the shop no longer returns become tombstones."""
        for start in range(0, len(ids), PER_PAGE):
            chunk = list(ids[start:start + PER_PAGE])
            listing = await self._by_ids(stream, chunk)
            found = {str(r["id"]) for r in listing.records}
            await ctx.emit(Page(stream.name, listing.records, None, deleted=[i for i in chunk if i not in found],
                                failures=listing.failures))


def upgrade_checkpoint(stream: StreamSpec, state: Mapping[str, Any] | None) -> dict[str, Any]:
    """An orders/products checkpoint written before the listing engine, as the engine's schema.

    ``{"phase": "done", "since"}``: ``since`` is the cursor.  A window under way (``{"phase":
    "window", "mode", "since", "until", "page"}``, `page` the last one committed) resumes at the
    next page of the same window: the same ``modified_after`` and ``modified_before``.
    """
    if not state or "phase" not in state:
        return dict(state or {})
    since = state.get("since")
    cursor = {"cursor": since} if since else {}
    listing, until = stream.listing, state.get("until")
    if state.get("phase") != "window" or listing is None or listing.incremental is None or not until:
        return cursor
    sent = format_cursor(since, listing.incremental.format, listing.incremental.lookback) if since else None
    return {**cursor, "listing": {
        "v": SCHEMA, "since": sent, "full": sent is None, "fingerprint": fingerprint(stream, listing),
        "pager": {"page": int(state.get("page", 0)) + 1}, "max": None, "total": None, "shifted": False,
        "until": until}}
